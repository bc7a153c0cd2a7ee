//go:build linux

package overlay

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Host is one host's overlay, bound to a network namespace. Its methods are
// safe for concurrent use.
type Host struct {
	mu  sync.Mutex
	ns  netns.NsHandle
	nl  *netlink.Handle
	cfg Config // device names; set by Ensure, defaults before
	// pkt is an AF_PACKET socket in ns for the hold's frames, opened once:
	// closing one waits for an RCU grace period (synchronize_net, ~10 ms
	// here), which would sit in every hold and release.
	pkt int
}

// Open binds a Host to the netns at nsPath ("" means the current netns, else
// e.g. /run/netns/x). It changes nothing in the kernel.
func Open(nsPath string) (*Host, error) {
	var ns netns.NsHandle
	var err error
	if nsPath == "" {
		ns, err = netns.Get()
	} else {
		ns, err = netns.GetFromPath(nsPath)
	}
	if err != nil {
		return nil, fmt.Errorf("open netns %q: %w", nsPath, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("netlink handle in %q: %w", nsPath, err)
	}
	return &Host{ns: ns, nl: h, cfg: Config{}.withDefaults()}, nil
}

// Close releases the netlink handle and the netns handle; the overlay stays.
func (h *Host) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.nl.Close()
	if h.pkt > 0 {
		closeAsync(h.pkt)
		h.pkt = 0
	}
	return h.ns.Close()
}

// Ensure makes the bridge and the VXLAN device match cfg, both up, VXLAN
// enslaved to the bridge. It equals:
//
//	ip link add coat0 mtu 1450 type bridge
//	ip link add vxlan0 mtu 1450 type vxlan id VNI dstport 4789 local LOCALIP dev UNDERLAY learning
//	ip link set vxlan0 master coat0 up; ip link set coat0 up
//	ip addr replace BRIDGEADDR dev coat0   # only if cfg.BridgeAddr is set
//	ip link set coat0 address BRIDGEMAC    # only if cfg.BridgeMAC is set
func (h *Host) Ensure(cfg Config) error {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return fmt.Errorf("overlay config: %w", err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cfg = cfg
	br, err := h.ensureBridge(cfg)
	if err != nil {
		return err
	}
	vx, err := h.ensureVXLAN(cfg)
	if err != nil {
		return err
	}
	if err := h.ensurePort(vx, br, cfg.MTU, true); err != nil {
		return fmt.Errorf("vxlan %s: %w", cfg.VXLAN, err)
	}
	if cfg.BridgeAddr != nil {
		if err := h.nl.AddrReplace(br, &netlink.Addr{IPNet: cfg.BridgeAddr}); err != nil {
			return fmt.Errorf("bridge %s addr %s: %w", cfg.Bridge, cfg.BridgeAddr, err)
		}
	}
	return nil
}

// Teardown deletes the VXLAN device and the bridge ("ip link del vxlan0;
// ip link del coat0"); absent devices are not an error. Veths stay.
func (h *Host) Teardown() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, name := range []string{h.cfg.VXLAN, h.cfg.Bridge} {
		if err := h.delLink(name); err != nil {
			return err
		}
	}
	return nil
}

func (h *Host) ensureBridge(cfg Config) (netlink.Link, error) {
	want := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: cfg.Bridge, MTU: cfg.MTU}}
	br, err := h.ensureLink(want, func(have netlink.Link) string {
		if have.Type() != "bridge" {
			return fmt.Sprintf("type: %s vs bridge", have.Type())
		}
		return ""
	})
	if err != nil {
		return nil, fmt.Errorf("bridge %s: %w", cfg.Bridge, err)
	}
	if cfg.BridgeMAC != nil && br.Attrs().HardwareAddr.String() != cfg.BridgeMAC.String() {
		if err := h.nl.LinkSetHardwareAddr(br, cfg.BridgeMAC); err != nil {
			return nil, fmt.Errorf("bridge %s: set mac %s: %w", cfg.Bridge, cfg.BridgeMAC, err)
		}
	}
	if err := h.ensureMTUUp(br, cfg.MTU, true); err != nil {
		return nil, fmt.Errorf("bridge %s: %w", cfg.Bridge, err)
	}
	return br, nil
}

func (h *Host) ensureVXLAN(cfg Config) (netlink.Link, error) {
	under, err := h.nl.LinkByName(cfg.UnderlayDev)
	if err != nil {
		return nil, fmt.Errorf("underlay dev %s: %w", cfg.UnderlayDev, err)
	}
	want := &netlink.Vxlan{
		LinkAttrs:    netlink.LinkAttrs{Name: cfg.VXLAN, MTU: cfg.MTU},
		VxlanId:      cfg.VNI,
		VtepDevIndex: under.Attrs().Index,
		SrcAddr:      cfg.LocalIP.To4(),
		Port:         cfg.Port,
		Learning:     true,
	}
	if have, err := h.nl.LinkByName(cfg.VXLAN); err == nil && onlyLocalDiffers(want, have) {
		if err := h.setVXLANLocal(have, want.SrcAddr); err != nil {
			return nil, fmt.Errorf("vxlan %s: %w", cfg.VXLAN, err)
		}
	}
	vx, err := h.ensureLink(want, func(have netlink.Link) string { return vxlanMismatch(want, have) })
	if err != nil {
		return nil, fmt.Errorf("vxlan %s: %w", cfg.VXLAN, err)
	}
	return vx, nil
}

// onlyLocalDiffers tells whether have would serve as want but for its
// source address.
func onlyLocalDiffers(want *netlink.Vxlan, have netlink.Link) bool {
	vx, ok := have.(*netlink.Vxlan)
	if !ok || vx.SrcAddr.Equal(want.SrcAddr) {
		return false
	}
	same := *want
	same.SrcAddr = vx.SrcAddr
	return vxlanMismatch(&same, have) == ""
}

// setVXLANLocal changes a VXLAN device's source address in place: "ip
// link set vxlan0 type vxlan local IP" (a handover: the host's underlay
// address changed). Recreating the device instead would leave the bridge
// without its only port for a moment: the bridge loses its carrier, and
// the kernel flushes the host's neighbour entries on it, so each of the
// host's own connections waits for ARP again (retried once a second).
func (h *Host) setVXLANLocal(vx netlink.Link, ip net.IP) error {
	sock, err := nl.GetNetlinkSocketAt(h.ns, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	defer sock.Close()
	if err := sock.SetReceiveTimeout(&unix.Timeval{Sec: 5}); err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	req := &nl.NetlinkRequest{
		NlMsghdr: unix.NlMsghdr{Len: unix.SizeofNlMsghdr, Type: unix.RTM_NEWLINK, Flags: unix.NLM_F_REQUEST | unix.NLM_F_ACK},
		Sockets:  map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: {Socket: sock}},
	}
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(vx.Attrs().Index)
	req.AddData(msg)
	info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("vxlan"))
	data := info.AddRtAttr(nl.IFLA_INFO_DATA, nil)
	data.AddRtAttr(nl.IFLA_VXLAN_LOCAL, []byte(ip.To4()))
	req.AddData(info)
	if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil {
		return fmt.Errorf("set local %s: %w", ip, err)
	}
	return nil
}

// ensureLink creates want ("ip link add"); if a link of that name exists and
// mismatch gives a reason, it is deleted and created again (a recreated
// VXLAN device has an empty FDB: callers re-run SetPeers and SetRemoteMAC).
func (h *Host) ensureLink(want netlink.Link, mismatch func(netlink.Link) string) (netlink.Link, error) {
	name := want.Attrs().Name
	err := h.nl.LinkAdd(want)
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("create: %w", err)
	}
	have, err := h.nl.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("read back: %w", err)
	}
	reason := mismatch(have)
	if reason == "" {
		return have, nil
	}
	slog.Info("overlay: recreating incompatible link", "link", name, "reason", reason)
	if err := h.nl.LinkDel(have); err != nil {
		return nil, fmt.Errorf("delete incompatible (%s): %w", reason, err)
	}
	if err := h.nl.LinkAdd(want); err != nil {
		return nil, fmt.Errorf("recreate (%s): %w", reason, err)
	}
	if have, err = h.nl.LinkByName(name); err != nil {
		return nil, fmt.Errorf("read back: %w", err)
	}
	return have, nil
}

// ensurePort enslaves link to br ("ip link set LINK master BR") and sets its
// MTU and state.
func (h *Host) ensurePort(link, br netlink.Link, mtu int, up bool) error {
	if link.Attrs().MasterIndex != br.Attrs().Index {
		if err := h.nl.LinkSetMaster(link, br); err != nil {
			return fmt.Errorf("set master %s: %w", br.Attrs().Name, err)
		}
	}
	return h.ensureMTUUp(link, mtu, up)
}

// ensureMTUUp is "ip link set LINK mtu MTU up|down", skipping no-op writes.
func (h *Host) ensureMTUUp(link netlink.Link, mtu int, up bool) error {
	if link.Attrs().MTU != mtu {
		if err := h.nl.LinkSetMTU(link, mtu); err != nil {
			return fmt.Errorf("set mtu %d: %w", mtu, err)
		}
	}
	return setState(h.nl, link, up)
}

func setState(nl *netlink.Handle, link netlink.Link, up bool) error {
	isUp := link.Attrs().Flags&net.FlagUp != 0
	switch {
	case up && !isUp:
		if err := nl.LinkSetUp(link); err != nil {
			return fmt.Errorf("set up: %w", err)
		}
	case !up && isUp:
		if err := nl.LinkSetDown(link); err != nil {
			return fmt.Errorf("set down: %w", err)
		}
	}
	return nil
}

// operUpTimeout bounds waitOperUp. The kernel normally gets there within
// milliseconds; the bound only turns a stuck link into an error.
const operUpTimeout = 3 * time.Second

// waitOperUp waits until the kernel reports link name operationally up
// ("ip link show NAME" says "state UP"). Setting IFF_UP is not enough to
// send: the carrier, the qdisc (noop, i.e. drop, until then) and a bridge
// port's forwarding state follow asynchronously, from the kernel's
// linkwatch worker.
func waitOperUp(nl *netlink.Handle, name string) error {
	deadline := time.Now().Add(operUpTimeout)
	for {
		link, err := nl.LinkByName(name)
		if err != nil {
			return fmt.Errorf("find %s: %w", name, err)
		}
		state := link.Attrs().OperState
		if state == netlink.OperUp {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not operational after %s: state %s", name, operUpTimeout, state)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// delLink is "ip link del NAME"; an absent link is not an error.
func (h *Host) delLink(name string) error {
	link, err := h.nl.LinkByName(name)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	if err := h.nl.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}

// vxlanMismatch says why have cannot serve as want, or "" if it can. MTU,
// master and state are fixed in place, so they are not compared here.
func vxlanMismatch(want *netlink.Vxlan, have netlink.Link) string {
	vx, ok := have.(*netlink.Vxlan)
	if !ok {
		return fmt.Sprintf("type: %s vs vxlan", have.Type())
	}
	switch {
	case vx.VxlanId != want.VxlanId:
		return fmt.Sprintf("vni: %d vs %d", vx.VxlanId, want.VxlanId)
	case vx.Port != want.Port:
		return fmt.Sprintf("port: %d vs %d", vx.Port, want.Port)
	case !vx.SrcAddr.Equal(want.SrcAddr):
		return fmt.Sprintf("local: %s vs %s", vx.SrcAddr, want.SrcAddr)
	case vx.VtepDevIndex != want.VtepDevIndex:
		return fmt.Sprintf("dev index: %d vs %d", vx.VtepDevIndex, want.VtepDevIndex)
	case vx.Learning != want.Learning:
		return fmt.Sprintf("learning: %t vs %t", vx.Learning, want.Learning)
	case len(vx.Group) > 0 && !vx.Group.IsUnspecified():
		return fmt.Sprintf("group: %s vs none", vx.Group)
	case vx.FlowBased:
		return "external: true vs false"
	}
	return ""
}
