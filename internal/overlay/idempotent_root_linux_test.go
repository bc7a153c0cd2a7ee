//go:build linux

package overlay_test

import (
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/coat-project/coat/internal/nstest"
	"github.com/coat-project/coat/internal/overlay"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestEnsureIdempotent(t *testing.T) {
	nstest.RequireRoot(t)
	t.Parallel()
	l := newLab(t)
	nl := nstest.Handle(t, l.ns1)
	before := link(t, nl, "vxlan0")
	must(t, l.h1.Ensure(l.cfg1))
	must(t, l.h1.Ensure(l.cfg1))
	vx := link(t, nl, "vxlan0").(*netlink.Vxlan)
	br := link(t, nl, "coat0")
	if vx.Attrs().Index != before.Attrs().Index {
		t.Fatal("Ensure with the same config recreated vxlan0")
	}
	if vx.VxlanId != 42 || vx.Port != 4789 || !vx.Learning || !vx.SrcAddr.Equal(ip1) ||
		vx.MTU != 1450 || br.Attrs().MTU != 1450 || vx.MasterIndex != br.Attrs().Index ||
		vx.Flags&net.FlagUp == 0 || br.Attrs().Flags&net.FlagUp == 0 {
		t.Fatalf("vxlan0 %+v / coat0 %+v not as configured", vx, br.Attrs())
	}

	// A changed VNI is incompatible: recreated, and its FDB starts empty.
	cfg := l.cfg1
	cfg.VNI = 43
	must(t, l.h1.Ensure(cfg))
	vx = link(t, nl, "vxlan0").(*netlink.Vxlan)
	if vx.VxlanId != 43 || vx.Attrs().Index == before.Attrs().Index || vx.MasterIndex != br.Attrs().Index {
		t.Fatalf("vxlan0 after VNI change: %+v", vx)
	}
	checkPeers(t, nl)
	must(t, l.h1.Ensure(l.cfg1))

	// A foreign link under the bridge's name is replaced.
	must(t, l.h1.Teardown())
	must(t, nl.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "coat0"}, PeerName: "coat0p"})) // no dummy driver here
	must(t, l.h1.Ensure(l.cfg1))
	if typ := link(t, nl, "coat0").Type(); typ != "bridge" {
		t.Fatalf("coat0 is a %s after Ensure", typ)
	}

	must(t, l.h1.Teardown())
	must(t, l.h1.Teardown())
	for _, name := range []string{"coat0", "vxlan0"} {
		if _, err := nl.LinkByName(name); err == nil {
			t.Errorf("%s survived Teardown", name)
		}
	}
}

func TestFDBIdempotent(t *testing.T) {
	nstest.RequireRoot(t)
	t.Parallel()
	l := newLab(t)
	nl := nstest.Handle(t, l.ns1)
	ip3, ip4 := net.IPv4(10, 99, 0, 3).To4(), net.IPv4(10, 99, 0, 4).To4()

	must(t, l.h1.SetPeers([]net.IP{ip2, ip3, ip4}))
	must(t, l.h1.SetPeers([]net.IP{ip4, ip2, ip3, ip3}))
	checkPeers(t, nl, ip2, ip3, ip4)
	must(t, l.h1.SetPeers([]net.IP{ip3}))
	checkPeers(t, nl, ip3)
	must(t, l.h1.SetPeers(nil))
	checkPeers(t, nl)

	must(t, l.h1.SetRemoteMAC(macB, ip3))
	must(t, l.h1.SetRemoteMAC(macB, ip4)) // replaces, not appends
	must(t, l.h1.SetRemoteMAC(macA, ip2))
	checkRemoteMACs(t, l.h1, map[string]net.IP{macB.String(): ip4, macA.String(): ip2})
	if n := len(fdbFor(t, nl, macB)); n != 1 {
		t.Fatalf("%d entries for %s after two SetRemoteMAC, want 1", n, macB)
	}
	must(t, l.h1.DelRemoteMAC(macB))
	must(t, l.h1.DelRemoteMAC(macB))
	checkRemoteMACs(t, l.h1, map[string]net.IP{macA.String(): ip2})
	if err := l.h1.SetRemoteMAC(net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, ip2); err == nil {
		t.Fatal("SetRemoteMAC accepted the broadcast address")
	}
}

// checkPeers asserts the flood list of vxlan0 is exactly want.
func checkPeers(t *testing.T, nl *netlink.Handle, want ...net.IP) {
	t.Helper()
	var got, wantS []string
	for _, e := range vxlanFDB(t, nl) {
		if e.HardwareAddr.String() == "00:00:00:00:00:00" {
			got = append(got, e.IP.String())
		}
	}
	for _, ip := range want {
		wantS = append(wantS, ip.String())
	}
	slices.Sort(got)
	slices.Sort(wantS)
	if !slices.Equal(got, wantS) {
		t.Fatalf("flood list %v, want %v", got, wantS)
	}
}

func TestAttachEndpointIdempotent(t *testing.T) {
	nstest.RequireRoot(t)
	t.Parallel()
	l := newLab(t)
	ctr := nstest.NewNetNS(t, "ovt-c-")
	hnl, cnl := nstest.Handle(t, l.ns1), nstest.Handle(t, ctr)
	ep := endpoint(ctr, "cva", ipA, macA)

	must(t, l.h1.AttachEndpoint(ep, true))
	first, firstEth0 := link(t, hnl, "cva"), link(t, cnl, "eth0")
	must(t, l.h1.AttachEndpoint(ep, true))
	if link(t, hnl, "cva").Attrs().Index != first.Attrs().Index || link(t, cnl, "eth0").Attrs().Index != firstEth0.Attrs().Index {
		t.Fatal("second AttachEndpoint recreated the veth pair")
	}
	checkEth0(t, cnl, ep)
	checkIPv6Off(t, ctr)
	if first.Attrs().MasterIndex != link(t, hnl, "coat0").Attrs().Index || first.Attrs().MTU != 1450 {
		t.Fatalf("host veth %+v not a 1450-MTU port of coat0", first.Attrs())
	}

	// A new address replaces the old one; the pair stays.
	ep.Addr.IP = net.IPv4(10, 200, 0, 99).To4()
	must(t, l.h1.AttachEndpoint(ep, true))
	checkEth0(t, cnl, ep)

	must(t, l.h1.SetEndpointUp("cva", false))
	must(t, l.h1.AttachEndpoint(ep, false))
	if link(t, hnl, "cva").Attrs().Flags&net.FlagUp != 0 {
		t.Fatal("host veth up after SetEndpointUp(false) and AttachEndpoint(up=false)")
	}
	must(t, l.h1.SetEndpointUp("cva", true))
	if link(t, hnl, "cva").Attrs().Flags&net.FlagUp == 0 {
		t.Fatal("host veth down after SetEndpointUp(true)")
	}

	// A stray eth0 that is not our peer is replaced.
	must(t, l.h1.DetachEndpoint("cva"))
	must(t, cnl.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "stray0"}))
	must(t, l.h1.AttachEndpoint(ep, true))
	checkEth0(t, cnl, ep)

	// A host veth of our name paired with something else is recreated.
	must(t, l.h1.DetachEndpoint("cva"))
	must(t, hnl.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "cva"}, PeerName: "cvstray"}))
	must(t, l.h1.AttachEndpoint(ep, true))
	checkEth0(t, cnl, ep)
	if _, err := hnl.LinkByName("cvstray"); err == nil {
		t.Fatal("stray peer survived the recreate")
	}

	must(t, l.h1.DetachEndpoint("cva"))
	must(t, l.h1.DetachEndpoint("cva"))
	if _, err := cnl.LinkByName("eth0"); err == nil {
		t.Fatal("container eth0 survived DetachEndpoint")
	}
}

func checkEth0(t *testing.T, cnl *netlink.Handle, ep overlay.Endpoint) {
	t.Helper()
	eth0 := link(t, cnl, "eth0")
	a := eth0.Attrs()
	if eth0.Type() != "veth" || a.HardwareAddr.String() != ep.MAC.String() || a.MTU != 1450 || a.Flags&net.FlagUp == 0 {
		t.Fatalf("eth0 %s %+v, want veth %s mtu 1450 up", eth0.Type(), a, ep.MAC)
	}
	addrs, err := cnl.AddrList(eth0, netlink.FAMILY_ALL)
	must(t, err)
	if len(addrs) != 1 || addrs[0].IPNet.String() != ep.Addr.String() {
		t.Fatalf("eth0 addresses %v, want only %s", addrs, &ep.Addr)
	}
}

func checkIPv6Off(t *testing.T, ns string) {
	t.Helper()
	err := nstest.Run(ns, func() error {
		for _, conf := range []string{"all", "default", "eth0"} {
			b, err := os.ReadFile("/proc/sys/net/ipv6/conf/" + conf + "/disable_ipv6")
			if err != nil {
				return err
			}
			if strings.TrimSpace(string(b)) != "1" {
				t.Errorf("ipv6 conf %s disable_ipv6 = %q", conf, b)
			}
		}
		return nil
	})
	must(t, err)
}

func TestNetNSCreateDelete(t *testing.T) {
	nstest.RequireRoot(t)
	t.Parallel()
	path := filepath.Join(t.TempDir(), "a", "b", "ns")
	t.Cleanup(func() { _ = overlay.DeleteNetNS(path) })
	must(t, overlay.CreateNetNS(path))
	ino := nsInode(t, path)
	must(t, overlay.CreateNetNS(path))
	if nsInode(t, path) != ino {
		t.Fatal("second CreateNetNS made a new namespace")
	}
	if st, err := os.Stat(filepath.Dir(path)); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("parent dir %v, %v; want mode 0700", st.Mode(), err)
	}
	if self := nsInode(t, "/proc/thread-self/ns/net"); self == ino {
		t.Fatal("the new netns is the test's own")
	}
	if lo := link(t, nstest.Handle(t, path), "lo"); lo.Attrs().Flags&net.FlagUp == 0 {
		t.Fatal("lo is down in the new netns")
	}
	must(t, overlay.DeleteNetNS(path))
	must(t, overlay.DeleteNetNS(path))
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("%s still there: %v", path, err)
	}

	// A leftover plain file (a crash between create and mount) is reused.
	must(t, os.WriteFile(path, nil, 0o444))
	must(t, overlay.CreateNetNS(path))
	if nsInode(t, path) == nsInode(t, "/proc/thread-self/ns/net") {
		t.Fatal("leftover file not turned into a netns")
	}
	must(t, overlay.DeleteNetNS(path))
}

func nsInode(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	must(t, unix.Stat(path, &st))
	return st.Ino
}

func link(t *testing.T, nl *netlink.Handle, name string) netlink.Link {
	t.Helper()
	l, err := nl.LinkByName(name)
	must(t, err)
	return l
}

// A handover: a new underlay address changes the VXLAN device's source in
// place (same device, its FDB and the bridge's neighbour entries kept),
// and a fixed bridge MAC stays whatever happens to the ports.
func TestEnsureNewLocalInPlace(t *testing.T) {
	nstest.RequireRoot(t)
	t.Parallel()
	l := newLab(t)
	nl := nstest.Handle(t, l.ns2)
	mac := net.HardwareAddr{0x02, 0xc0, 10, 200, 0, 2}
	cfg := l.cfg2
	cfg.BridgeMAC = mac
	must(t, l.h2.Ensure(cfg))
	before := link(t, nl, "vxlan0")
	if got := link(t, nl, "coat0").Attrs().HardwareAddr.String(); got != mac.String() {
		t.Fatalf("coat0's MAC %s, want %s", got, mac)
	}
	u2 := link(t, nl, "u2")
	moved := net.IPv4(10, 99, 0, 12).To4()
	must(t, nl.AddrAdd(u2, &netlink.Addr{IPNet: &net.IPNet{IP: moved, Mask: net.CIDRMask(24, 32)}}))
	cfg.LocalIP = moved
	must(t, l.h2.Ensure(cfg))
	vx := link(t, nl, "vxlan0").(*netlink.Vxlan)
	if vx.Attrs().Index != before.Attrs().Index || !vx.SrcAddr.Equal(moved) {
		t.Fatalf("vxlan0 after a new local address: index %d (was %d), local %s; want it changed in place to %s",
			vx.Attrs().Index, before.Attrs().Index, vx.SrcAddr, moved)
	}
	checkPeers(t, nl, ip1)
	if got := link(t, nl, "coat0").Attrs().HardwareAddr.String(); got != mac.String() {
		t.Fatalf("coat0's MAC %s after the change, want %s", got, mac)
	}
	// Anything else incompatible still recreates it.
	cfg.VNI = 43
	must(t, l.h2.Ensure(cfg))
	if vx := link(t, nl, "vxlan0").(*netlink.Vxlan); vx.VxlanId != 43 || !vx.SrcAddr.Equal(moved) {
		t.Fatalf("vxlan0 after a VNI change too: %+v", vx)
	}
}
