package lab

// Client handover in the lab. The client node attaches "next to" an edge
// host by taking that host's access address (ClientIPAt) on its underlay
// link: its VTEP changes, as a real device's does when it joins another
// access network, while its overlay IP and MAC stay. The node's VXLAN
// device is recreated with the new source address (the bridge keeps its
// fixed MAC, and the client's TCP sockets, which live on the bridge's
// address, never notice), then the client's record in etcd says where it
// is now. Every agent watches that record (internal/agent/clients.go):
// their flood lists and their FDB entry for the client's MAC follow it,
// and a container that follows the client (coat follow) moves to
// AttachedTo.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/coat-project/coat/internal/linkspec"
	"github.com/coat-project/coat/internal/overlay"
	"github.com/coat-project/coat/internal/pki"
	"github.com/coat-project/coat/internal/store"
)

// RoamResult is what a roam did.
type RoamResult struct {
	From, To     string // edge hosts ("" for the first attachment)
	FromIP, ToIP net.IP
	Link         linkspec.Link // the client's link after the roam
	Moved        bool          // false: already there, nothing changed
	// Recorded is the time from the start of the roam until the client's
	// record said where it is (the agents follow from there).
	Recorded time.Duration
}

// CheckRoam refuses a roam the lab cannot do, before anything changes.
func (s *State) CheckRoam(client, to string) error {
	if client != ClientNode {
		return fmt.Errorf("unknown client %q: the lab's only client is %q (e.g. `coat lab roam %s --to %s`)", client, ClientNode, ClientNode, EdgeName(1))
	}
	if _, ok := s.EdgeIndex(to); !ok {
		return fmt.Errorf("unknown host %q: the lab has edge-1..edge-%d (`coat lab show` lists them)", to, s.Hosts)
	}
	return nil
}

// Roam re-attaches the lab's client next to edge host to: a new underlay
// address, the link given (nil: the client's link stays as it is), and
// its record in etcd. self is the coat binary (for a link's relay).
func Roam(ctx context.Context, name, client, to string, link *linkspec.Link, self string) (*RoamResult, error) {
	s, err := Load(name)
	if err != nil {
		return nil, err
	}
	if err := s.CheckRoam(client, to); err != nil {
		return nil, err
	}
	start := time.Now()
	res := &RoamResult{From: s.ClientAt, To: to, FromIP: s.UnderlayIP(ClientNode), ToIP: s.ClientIPAt(to), Link: s.Link(ClientNode)}
	if link != nil {
		res.Link = *link
	}
	if to == s.ClientAt && res.Link == s.Link(ClientNode) {
		return res, nil
	}
	res.Moved = true
	if to != s.ClientAt {
		prev := s.ClientAt
		s.ClientAt = to // what the client's overlay is set up from
		if err := s.reattachClient(res.ToIP); err != nil {
			s.ClientAt = prev
			return nil, fmt.Errorf("roam %s to %s: %w (`coat lab up` puts it back where the lab says it is)", client, to, err)
		}
		s.ClientRoams++
	}
	if link != nil && *link != s.Link(ClientNode) {
		if s.Links == nil {
			s.Links = map[string]linkspec.Link{}
		}
		delete(s.Links, ClientNode)
		if !link.Zero() {
			s.Links[ClientNode] = *link
		}
		br, err := netlink.LinkByName(s.bridge())
		if err != nil {
			return nil, fmt.Errorf("lab bridge: %w", err)
		}
		if err := s.ensureLink(br, ClientNode, self); err != nil {
			return nil, fmt.Errorf("link of %s: %w", client, err)
		}
	}
	if err := s.save(); err != nil {
		return nil, err
	}
	if err := s.putClientRecord(ctx); err != nil {
		return nil, fmt.Errorf("%s moved to %s, but its record was not written: %w (`coat lab up` writes it again)", client, to, err)
	}
	res.Recorded = time.Since(start)
	return res, nil
}

// reattachClient moves the client node's underlay address to addr (the
// state's, already): the new address first, then the VXLAN device on it,
// then the old address goes.
func (s *State) reattachClient(addr net.IP) error {
	if err := s.setClientAddr(addr, false); err != nil {
		return err
	}
	if err := s.ensureClientOverlay(); err != nil {
		return fmt.Errorf("overlay: %w", err)
	}
	return s.setClientAddr(addr, true)
}

// setClientAddr puts addr on the client node's eth0 ("ip addr replace
// ADDR/24 dev eth0"); with only, every other IPv4 address of eth0 goes
// ("ip addr del"): what an earlier attachment, or a roam cut short, left.
func (s *State) setClientAddr(addr net.IP, only bool) error {
	ns, err := netns.GetFromPath(s.NetNSPath(ClientNode))
	if err != nil {
		return fmt.Errorf("open netns of %s: %w", ClientNode, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		return err
	}
	if err := h.AddrReplace(eth0, &netlink.Addr{IPNet: &net.IPNet{IP: addr, Mask: net.CIDRMask(24, 32)}}); err != nil {
		return fmt.Errorf("address %s: %w", addr, err)
	}
	if !only {
		return nil
	}
	addrs, err := h.AddrList(eth0, netlink.FAMILY_V4)
	if err != nil {
		return err
	}
	// The old address is eth0's primary one and the new one, in the same
	// /24, a secondary: without promotion the kernel deletes secondaries
	// with their primary, and the client would be left with no address.
	if len(addrs) > 1 {
		if err := InNetNS(s.NetNSPath(ClientNode), func() error {
			return os.WriteFile("/proc/sys/net/ipv4/conf/eth0/promote_secondaries", []byte("1"), 0o644)
		}); err != nil {
			return fmt.Errorf("promote secondary addresses on eth0: %w", err)
		}
	}
	for _, a := range addrs {
		if a.IP.Equal(addr) {
			continue
		}
		if err := h.AddrDel(eth0, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("remove address %s: %w", a.IPNet, err)
		}
	}
	return nil
}

// ClientRecord is the client node's record as the lab state says.
func (s *State) ClientRecord() store.Client {
	ip := s.ClientOverlayIP()
	return store.Client{
		Name: ClientNode, UnderlayIP: s.UnderlayIP(ClientNode).String(),
		OverlayIP: ip.String(), MAC: store.MACFor(ip).String(),
		AttachedTo: s.ClientAt, Roams: s.ClientRoams, Updated: time.Now().UTC(),
	}
}

// putClientRecord writes ClientRecord to the lab's etcd, as the lab's
// admin (hosts may only read client records).
func (s *State) putClientRecord(ctx context.Context) error {
	tc, err := pki.FilesFor(s.PKIDir(), "cli").ClientConfig()
	if err != nil {
		return err
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: strings.Split(s.EtcdURL, ","), TLS: tc, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
	})
	if err != nil {
		return fmt.Errorf("connect to etcd %s: %w", s.EtcdURL, err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return store.NewEtcd(cli, "/coat/", nil).PutClient(ctx, s.ClientRecord())
}

// clientOverlayConfig is the client node's overlay: its VTEP at its
// current attachment, its overlay address on the bridge, and the bridge's
// MAC fixed to the one its record names.
func (s *State) clientOverlayConfig() overlay.Config {
	ip := s.ClientOverlayIP()
	return overlay.Config{
		VNI: VNI, Port: 4789, LocalIP: s.UnderlayIP(ClientNode), UnderlayDev: "eth0",
		BridgeAddr: &net.IPNet{IP: ip, Mask: s.OverlaySubnet().Mask},
		BridgeMAC:  store.MACFor(ip),
	}
}
