//go:build linux

package overlay

import (
	"errors"
	"fmt"
	"log/slog"
	"net"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// AttachEndpoint connects a container netns to the bridge. It equals:
//
//	ip netns exec NS sysctl -w net.ipv6.conf.{all,default}.disable_ipv6=1
//	ip link add HOSTVETH mtu MTU type veth peer name eth0 address MAC mtu MTU netns NS
//	ip link set HOSTVETH master coat0 up|down
//	ip -n NS addr replace ADDR dev eth0; ip -n NS link set eth0 up
//
// A correct existing pair is kept (only the host side's state follows up); a
// host veth that is not paired with the container's eth0 is recreated. With
// up it returns once the host veth is operational (see waitOperUp).
func (h *Host) AttachEndpoint(ep Endpoint, up bool) error {
	ep = ep.withDefaults()
	if err := ep.validate(); err != nil {
		return fmt.Errorf("endpoint: %w", err)
	}
	if err := disableIPv6(ep.NetNS); err != nil {
		return fmt.Errorf("endpoint %s: %w", ep.HostVeth, err)
	}
	ns, err := netns.GetFromPath(ep.NetNS)
	if err != nil {
		return fmt.Errorf("endpoint %s: open netns: %w", ep.HostVeth, err)
	}
	defer ns.Close()
	cnl, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("endpoint %s: netlink handle: %w", ep.HostVeth, err)
	}
	defer cnl.Close()

	h.mu.Lock()
	defer h.mu.Unlock()
	host, err := h.ensureVeth(ep, ns, cnl)
	if err != nil {
		return fmt.Errorf("endpoint %s: %w", ep.HostVeth, err)
	}
	if err := configureEth0(cnl, ep); err != nil {
		return fmt.Errorf("endpoint %s: container side: %w", ep.HostVeth, err)
	}
	br, err := h.nl.LinkByName(h.cfg.Bridge)
	if err != nil {
		return fmt.Errorf("endpoint %s: find bridge %s: %w", ep.HostVeth, h.cfg.Bridge, err)
	}
	// The hold's qdisc goes on now, open, while nothing flows: adding a
	// root qdisc later would drop what crosses the link meanwhile (see
	// hold_linux.go).
	if err := h.openHold(host); err != nil {
		return fmt.Errorf("endpoint %s: %w", ep.HostVeth, err)
	}
	if err := h.ensurePort(host, br, ep.MTU, up); err != nil {
		return fmt.Errorf("endpoint %s: host side: %w", ep.HostVeth, err)
	}
	if err := h.pinMAC(host, ep.MAC); err != nil {
		return fmt.Errorf("endpoint %s: %w", ep.HostVeth, err)
	}
	if up {
		return waitOperUp(h.nl, ep.HostVeth)
	}
	return nil
}

// SetEndpointUp is "ip link set HOSTVETH up|down". Down cuts the container
// off the overlay: its frames are dropped and nobody answers with a RST. Up
// returns once the kernel reports the link operational (see waitOperUp).
func (h *Host) SetEndpointUp(hostVeth string, up bool) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	link, err := h.nl.LinkByName(hostVeth)
	if err != nil {
		return fmt.Errorf("find %s: %w", hostVeth, err)
	}
	if err := setState(h.nl, link, up); err != nil {
		return fmt.Errorf("%s: %w", hostVeth, err)
	}
	if up {
		return waitOperUp(h.nl, hostVeth)
	}
	return nil
}

// DetachEndpoint is "ip link del HOSTVETH", which also removes the
// container's eth0; an absent veth is not an error.
func (h *Host) DetachEndpoint(hostVeth string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.delLink(hostVeth)
}

// ensureVeth returns the host side of a veth pair whose peer is eth0 in the
// container netns, creating the pair if needed.
func (h *Host) ensureVeth(ep Endpoint, ns netns.NsHandle, cnl *netlink.Handle) (netlink.Link, error) {
	host, err := h.nl.LinkByName(ep.HostVeth)
	if err != nil && !isNotFound(err) {
		return nil, fmt.Errorf("find host veth: %w", err)
	}
	peer, perr := cnl.LinkByName(containerIf)
	if perr != nil && !isNotFound(perr) {
		return nil, fmt.Errorf("find container %s: %w", containerIf, perr)
	}
	if host != nil {
		reason := vethMismatch(host, peer)
		if reason == "" {
			return host, nil
		}
		slog.Info("overlay: recreating endpoint veth", "veth", ep.HostVeth, "reason", reason)
		if err := h.nl.LinkDel(host); err != nil {
			return nil, fmt.Errorf("delete incompatible veth (%s): %w", reason, err)
		}
	}
	// An eth0 left now is not paired with a veth of ours (deleting the host
	// side deleted its peer): delete it to free the name.
	if stale, err := cnl.LinkByName(containerIf); err == nil {
		if err := cnl.LinkDel(stale); err != nil {
			return nil, fmt.Errorf("delete stale container %s: %w", containerIf, err)
		}
	}
	veth := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: ep.HostVeth, MTU: ep.MTU},
		PeerName:         containerIf,
		PeerHardwareAddr: ep.MAC,
		PeerMTU:          uint32(ep.MTU),
		PeerNamespace:    netlink.NsFd(ns),
	}
	if err := h.nl.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("create veth pair: %w", err)
	}
	host, err = h.nl.LinkByName(ep.HostVeth)
	if err != nil {
		return nil, fmt.Errorf("read back host veth: %w", err)
	}
	return host, nil
}

// vethMismatch says why host is not the host side of the pair whose other
// end is peer (the container's eth0, nil if absent), or "" if it is.
// Indexes are compared across the two namespaces: IFLA_LINK of a veth is
// its peer's ifindex.
func vethMismatch(host, peer netlink.Link) string {
	switch {
	case host.Type() != "veth":
		return fmt.Sprintf("type: %s vs veth", host.Type())
	case peer == nil:
		return "container has no " + containerIf
	case peer.Type() != "veth":
		return fmt.Sprintf("container %s type: %s vs veth", containerIf, peer.Type())
	case host.Attrs().ParentIndex != peer.Attrs().Index || peer.Attrs().ParentIndex != host.Attrs().Index:
		return fmt.Sprintf("not paired: host veth peer index %d, %s index %d, %s peer index %d, host veth index %d",
			host.Attrs().ParentIndex, containerIf, peer.Attrs().Index, containerIf, peer.Attrs().ParentIndex, host.Attrs().Index)
	}
	return ""
}

// configureEth0 sets MAC, MTU and the only IPv4 address of the container's
// eth0 and brings it and lo up.
func configureEth0(cnl *netlink.Handle, ep Endpoint) error {
	link, err := cnl.LinkByName(containerIf)
	if err != nil {
		return fmt.Errorf("find %s: %w", containerIf, err)
	}
	if link.Attrs().HardwareAddr.String() != ep.MAC.String() {
		if err := cnl.LinkSetHardwareAddr(link, ep.MAC); err != nil {
			return fmt.Errorf("set mac %s: %w", ep.MAC, err)
		}
	}
	if link.Attrs().MTU != ep.MTU {
		if err := cnl.LinkSetMTU(link, ep.MTU); err != nil {
			return fmt.Errorf("set mtu %d: %w", ep.MTU, err)
		}
	}
	if err := ensureOnlyAddr(cnl, link, ep.Addr); err != nil {
		return err
	}
	// The queue that muzzles the container at a freeze (see
	// muzzle_linux.go) goes on while the link is down, open.
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := openMuzzle(ep.NetNS, link); err != nil {
			return fmt.Errorf("%s queue: %w", containerIf, err)
		}
	}
	if err := setState(cnl, link, true); err != nil {
		return err
	}
	lo, err := cnl.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	return setState(cnl, lo, true)
}

// ensureOnlyAddr is "ip addr replace ADDR dev LINK" plus deleting any other
// IPv4 address on it, so the container answers for one IP only.
func ensureOnlyAddr(nl *netlink.Handle, link netlink.Link, want net.IPNet) error {
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return nl.AddrList(link, netlink.FAMILY_V4) })
	if err != nil {
		return fmt.Errorf("list addrs: %w", err)
	}
	present := false
	for _, a := range addrs {
		if a.IPNet.String() == want.String() {
			present = true
			continue
		}
		if err := nl.AddrDel(link, &a); err != nil {
			return fmt.Errorf("delete stale addr %s: %w", a.IPNet, err)
		}
	}
	if present {
		return nil
	}
	if err := nl.AddrReplace(link, &netlink.Addr{IPNet: &want}); err != nil {
		return fmt.Errorf("set addr %s: %w", &want, err)
	}
	return nil
}

// pinMAC binds the container's MAC to its veth port in the bridge with a
// static, sticky entry ("bridge fdb replace MAC dev HOSTVETH master static
// sticky"): learning never moves it. Without it, the gratuitous ARP the
// destination sends for the container at a migration's freeze taught the
// source's bridge that the MAC now lives behind vxlan0, and every frame a
// peer still sent to the source in the few milliseconds before its
// forwarding followed came in on vxlan0 for vxlan0 and was dropped, instead
// of being held and replayed: each such loss cost its sender a
// retransmission timeout (seen: a 0.9 s stall for 0.3 s of downtime). The
// source unpins it when it takes what it held (TakeHeld), the container's
// frames then going to the destination; PinMAC puts it back on a rollback.
// The entry goes with the port when the veth is deleted.
func (h *Host) pinMAC(port netlink.Link, mac net.HardwareAddr) error {
	err := h.nl.NeighSet(pinEntry(port, mac))
	if err != nil {
		return fmt.Errorf("pin %s to %s in the bridge: %w", mac, port.Attrs().Name, err)
	}
	return nil
}

func pinEntry(port netlink.Link, mac net.HardwareAddr) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex:    port.Attrs().Index,
		Family:       unix.AF_BRIDGE,
		HardwareAddr: mac,
		State:        netlink.NUD_NOARP,
		Flags:        netlink.NTF_MASTER | netlink.NTF_STICKY,
	}
}

// PinMAC binds mac to hostVeth in the bridge (see pinMAC).
func (h *Host) PinMAC(hostVeth string, mac net.HardwareAddr) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	link, err := h.nl.LinkByName(hostVeth)
	if err != nil {
		return fmt.Errorf("pin %s: %w", mac, err)
	}
	return h.pinMAC(link, mac)
}

// UnpinMAC removes PinMAC's entry; an absent one is not an error. The
// bridge then floods the MAC's frames (over vxlan0 too) until it learns
// where the MAC went.
func (h *Host) UnpinMAC(hostVeth string, mac net.HardwareAddr) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	link, err := h.nl.LinkByName(hostVeth)
	if err != nil {
		return fmt.Errorf("unpin %s: %w", mac, err)
	}
	if err := h.nl.NeighDel(pinEntry(link, mac)); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unpin %s from %s: %w", mac, hostVeth, err)
	}
	return nil
}
