//go:build linux

package overlay

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Neighbour is one resolved IPv4 neighbour of a container.
type Neighbour struct {
	IP  string `json:"ip"`
	MAC string `json:"mac"`
}

// Neighbours lists the resolved IPv4 neighbours on ifname in the netns at
// nsPath ("ip -n NS -4 neigh show dev IFNAME").
func Neighbours(nsPath, ifname string) ([]Neighbour, error) {
	var out []Neighbour
	err := withHandle(nsPath, func(nl *netlink.Handle) error {
		link, err := nl.LinkByName(ifname)
		if err != nil {
			return err
		}
		ns, err := retryDump(func() ([]netlink.Neigh, error) { return nl.NeighList(link.Attrs().Index, unix.AF_INET) })
		if err != nil {
			return err
		}
		for _, n := range ns {
			ok := n.State&(netlink.NUD_REACHABLE|netlink.NUD_STALE|netlink.NUD_DELAY|netlink.NUD_PROBE|netlink.NUD_PERMANENT) != 0
			if ok && n.IP.To4() != nil && len(n.HardwareAddr) == 6 {
				out = append(out, Neighbour{IP: n.IP.String(), MAC: n.HardwareAddr.String()})
			}
		}
		return nil
	})
	return out, err
}

// SetNeighbours installs neighbours as stale entries ("ip -n NS neigh
// replace IP lladdr MAC dev IFNAME nud stale"): a restored container then
// sends its first packets without waiting for ARP, and still re-checks
// the entries as usual.
func SetNeighbours(nsPath, ifname string, ns []Neighbour) error {
	return withHandle(nsPath, func(nl *netlink.Handle) error {
		link, err := nl.LinkByName(ifname)
		if err != nil {
			return err
		}
		for _, n := range ns {
			ip, mac := net.ParseIP(n.IP), parseMAC(n.MAC)
			if ip == nil || mac == nil {
				return fmt.Errorf("bad neighbour %s/%s", n.IP, n.MAC)
			}
			err := nl.NeighSet(&netlink.Neigh{
				LinkIndex: link.Attrs().Index, Family: unix.AF_INET, State: netlink.NUD_STALE,
				IP: ip, HardwareAddr: mac,
			})
			if err != nil {
				return fmt.Errorf("set neighbour %s: %w", n.IP, err)
			}
		}
		return nil
	})
}

func parseMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		return nil
	}
	return m
}

// FlushNeighbours deletes every IPv4 neighbour entry on ifname in the netns
// at nsPath ("ip -n NS -4 neigh flush dev IFNAME"), with one handle and
// one dump.
func FlushNeighbours(nsPath, ifname string) error {
	return withHandle(nsPath, func(nl *netlink.Handle) error {
		link, err := nl.LinkByName(ifname)
		if err != nil {
			return err
		}
		ns, err := retryDump(func() ([]netlink.Neigh, error) { return nl.NeighList(link.Attrs().Index, unix.AF_INET) })
		if err != nil {
			return err
		}
		for _, n := range ns {
			if err := nl.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("delete neighbour %s: %w", n.IP, err)
			}
		}
		return nil
	})
}
