//go:build linux

package overlay

import (
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// GratuitousARP sends count gratuitous ARP replies for ip/mac out of ifname
// in the netns at nsPath, back to back ("ip netns exec NS arping -A -c COUNT
// -I IFNAME IP"). Switches and VXLAN devices that flood them re-learn where
// mac lives; hosts that cache ip update their neighbour entry. Only the
// packet socket is opened inside the netns (it stays bound to it), so this
// works while the container's own processes run there. It first waits until
// ifname is operational: frames sent just after "ip link set up" can be
// dropped silently.
func GratuitousARP(nsPath, ifname string, ip net.IP, mac net.HardwareAddr, count int) error {
	frame, err := garpFrame(ip, mac)
	if err != nil {
		return err
	}
	var ifindex int
	err = withHandle(nsPath, func(nl *netlink.Handle) error {
		link, err := nl.LinkByName(ifname)
		if err != nil {
			return fmt.Errorf("find %s: %w", ifname, err)
		}
		ifindex = link.Attrs().Index
		return waitOperUp(nl, ifname) // else the kernel may drop them unsent
	})
	if err != nil {
		return fmt.Errorf("garp: %w", err)
	}
	fd, err := packetSocketIn(nsPath)
	if err != nil {
		return fmt.Errorf("garp: %w", err)
	}
	defer closeAsync(fd)
	to := &unix.SockaddrLinklayer{
		Protocol: htons(etherTypeARP),
		Ifindex:  ifindex,
		Halen:    6,
	}
	copy(to.Addr[:], broadcastMAC)
	for range count {
		if err := unix.Sendto(fd, frame, 0, to); err != nil {
			return fmt.Errorf("garp: send on %s: %w", ifname, err)
		}
	}
	return nil
}

// packetSocketIn opens an AF_PACKET socket inside the netns at nsPath.
// Protocol 0 means it receives nothing; it only sends.
func packetSocketIn(nsPath string) (int, error) {
	fd := -1
	err := inNetNS(nsPath, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		return nil
	})
	if err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return -1, err
	}
	return fd, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// closeAsync closes an AF_PACKET socket without waiting: the kernel's
// release waits for an RCU grace period (synchronize_net, ~10 ms here),
// which must not sit in a migration's freeze.
func closeAsync(fd int) {
	go unix.Close(fd)
}
