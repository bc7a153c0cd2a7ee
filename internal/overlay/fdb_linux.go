//go:build linux

package overlay

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// SetPeers makes the flood list exactly peers: for each missing peer
// "bridge fdb append 00:00:00:00:00:00 dev vxlan0 dst PEER", for each stale
// one "bridge fdb del 00:00:00:00:00:00 dev vxlan0 dst PEER".
func (h *Host) SetPeers(peers []net.IP) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	vx, entries, err := h.vxlanFDB()
	if err != nil {
		return err
	}
	var have []net.IP
	for _, e := range entries {
		if isZeroMAC(e.HardwareAddr) && e.IP != nil {
			have = append(have, e.IP)
		}
	}
	add, del := diffPeers(have, peers)
	for _, ip := range add {
		if err := h.nl.NeighAppend(fdbEntry(vx, zeroMAC, ip)); err != nil {
			return fmt.Errorf("add flood entry for %s: %w", ip, err)
		}
	}
	for _, ip := range del {
		if err := h.nl.NeighDel(fdbEntry(vx, zeroMAC, ip)); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("delete flood entry for %s: %w", ip, err)
		}
	}
	return nil
}

// SetRemoteMAC points mac at the VTEP vtep with a static entry, replacing a
// learned or older one: "bridge fdb replace MAC dev vxlan0 dst VTEP".
func (h *Host) SetRemoteMAC(mac net.HardwareAddr, vtep net.IP) error {
	if len(mac) != 6 || isZeroMAC(mac) || mac[0]&1 != 0 {
		return fmt.Errorf("remote mac %q is not a unicast mac", mac)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	vx, err := h.nl.LinkByName(h.cfg.VXLAN)
	if err != nil {
		return fmt.Errorf("find vxlan %s: %w", h.cfg.VXLAN, err)
	}
	if err := h.nl.NeighSet(fdbEntry(vx, mac, vtep)); err != nil {
		return fmt.Errorf("set fdb %s dst %s: %w", mac, vtep, err)
	}
	return nil
}

// DelRemoteMAC removes every VXLAN FDB entry for mac, static or learned
// ("bridge fdb del MAC dev vxlan0 dst VTEP"), and the bridge's own entry for
// mac on the VXLAN port ("bridge fdb del MAC dev vxlan0 master"), so that a
// container that has just arrived on this host is found by flooding rather
// than sent back over the overlay. Absent entries are not an error.
func (h *Host) DelRemoteMAC(mac net.HardwareAddr) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	_, entries, err := h.vxlanFDB()
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.HardwareAddr.String() != mac.String() {
			continue
		}
		if err := h.nl.NeighDel(&e); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("delete fdb %s dst %s: %w", mac, e.IP, err)
		}
	}
	return nil
}

// RemoteMACs returns the static MAC -> VTEP entries of the VXLAN device
// ("bridge fdb show dev vxlan0 self", permanent or static ones), without flood entries and
// without learned ones.
func (h *Host) RemoteMACs() (map[string]net.IP, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	_, entries, err := h.vxlanFDB()
	if err != nil {
		return nil, err
	}
	macs := make(map[string]net.IP)
	for _, e := range entries {
		if e.Flags&netlink.NTF_SELF != 0 && e.State&(netlink.NUD_PERMANENT|netlink.NUD_NOARP) != 0 &&
			e.IP != nil && !isZeroMAC(e.HardwareAddr) {
			macs[e.HardwareAddr.String()] = e.IP
		}
	}
	return macs, nil
}

// FlushNeigh deletes every neighbour entry for ip in the netns at nsPath, on
// all links: "ip -n NS neigh del IP dev LINK" for each.
func FlushNeigh(nsPath string, ip net.IP) error {
	family := netlink.FAMILY_V4
	if ip.To4() == nil {
		family = netlink.FAMILY_V6
	}
	return withHandle(nsPath, func(nl *netlink.Handle) error {
		neighs, err := retryDump(func() ([]netlink.Neigh, error) { return nl.NeighList(0, family) })
		if err != nil {
			return fmt.Errorf("list neighbours: %w", err)
		}
		for _, n := range neighs {
			if !n.IP.Equal(ip) {
				continue
			}
			if err := nl.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("delete neighbour %s: %w", ip, err)
			}
		}
		return nil
	})
}

// vxlanFDB lists the bridge-family entries on the VXLAN device: its own
// (NTF_SELF) and the bridge's for that port (NTF_MASTER).
func (h *Host) vxlanFDB() (netlink.Link, []netlink.Neigh, error) {
	vx, err := h.nl.LinkByName(h.cfg.VXLAN)
	if err != nil {
		return nil, nil, fmt.Errorf("find vxlan %s: %w", h.cfg.VXLAN, err)
	}
	idx := vx.Attrs().Index
	entries, err := retryDump(func() ([]netlink.Neigh, error) { return h.nl.NeighList(idx, unix.AF_BRIDGE) })
	if err != nil {
		return nil, nil, fmt.Errorf("list fdb of %s: %w", h.cfg.VXLAN, err)
	}
	return vx, entries, nil
}

// fdbEntry is a static VXLAN FDB entry as "bridge fdb ... dev VX dst IP"
// writes it: NTF_SELF, NUD_PERMANENT.
func fdbEntry(vx netlink.Link, mac net.HardwareAddr, dst net.IP) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex:    vx.Attrs().Index,
		Family:       unix.AF_BRIDGE,
		State:        netlink.NUD_PERMANENT | netlink.NUD_NOARP,
		Flags:        netlink.NTF_SELF,
		IP:           dst,
		HardwareAddr: mac,
	}
}

// retryDump retries a netlink dump that the kernel interrupted because the
// table changed under it (netlink.ErrDumpInterrupted).
func retryDump[T any](dump func() ([]T, error)) ([]T, error) {
	var err error
	for range 5 {
		var out []T
		out, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
	}
	return nil, err
}
