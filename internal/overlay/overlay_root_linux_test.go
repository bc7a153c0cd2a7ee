//go:build linux

package overlay_test

// Root tests against the real kernel. Each test builds its own lab out of
// fresh, uniquely named network namespaces (every box below), so the tests
// run in parallel and leave nothing behind:
//
//	ctrA                  host1                              host2                  ctrB
//	eth0 10.200.0.10 ─ cva ─ coat0 ─ vxlan0 ─ u1 ═════ u2 ─ vxlan0 ─ coat0 ─ cvb ─ eth0 10.200.0.11
//	                                        10.99.0.1   10.99.0.2        10.200.0.2
//	                                                              (client address, no agent for A)
//
// The migration test moves ctrB (same IP and MAC, new netns) to host1.

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/coat-project/coat/internal/nstest"
	"github.com/coat-project/coat/internal/overlay"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

var (
	ip1         = net.IPv4(10, 99, 0, 1).To4()
	ip2         = net.IPv4(10, 99, 0, 2).To4()
	ipA         = net.IPv4(10, 200, 0, 10).To4()
	ipB         = net.IPv4(10, 200, 0, 11).To4()
	macA        = net.HardwareAddr{0x02, 0xc0, 0xa7, 0, 0, 0x0a}
	macB        = net.HardwareAddr{0x02, 0xc0, 0xa7, 0, 0, 0x0b}
	overlayMask = net.CIDRMask(24, 32)
)

const echoPort = "7007"

type lab struct {
	ns1, ns2   string
	h1, h2     *overlay.Host
	cfg1, cfg2 overlay.Config
}

// newLab builds host1 and host2 with Ensure and SetPeers done.
func newLab(t *testing.T) *lab {
	t.Helper()
	l := &lab{ns1: nstest.NewNetNS(t, "ovt-h1-"), ns2: nstest.NewNetNS(t, "ovt-h2-")}
	nstest.Veth(t,
		nstest.VethEnd{NetNS: l.ns1, Name: "u1", Addr: &net.IPNet{IP: ip1, Mask: net.CIDRMask(24, 32)}},
		nstest.VethEnd{NetNS: l.ns2, Name: "u2", Addr: &net.IPNet{IP: ip2, Mask: net.CIDRMask(24, 32)}})
	l.h1, l.h2 = openHost(t, l.ns1), openHost(t, l.ns2)
	l.cfg1 = overlay.Config{VNI: 42, Port: 4789, LocalIP: ip1, UnderlayDev: "u1"}
	l.cfg2 = overlay.Config{VNI: 42, Port: 4789, LocalIP: ip2, UnderlayDev: "u2",
		BridgeAddr: &net.IPNet{IP: net.IPv4(10, 200, 0, 2), Mask: overlayMask}}
	must(t, l.h1.Ensure(l.cfg1))
	must(t, l.h2.Ensure(l.cfg2))
	must(t, l.h1.SetPeers([]net.IP{ip2}))
	must(t, l.h2.SetPeers([]net.IP{ip1}))
	return l
}

func openHost(t *testing.T, ns string) *overlay.Host {
	t.Helper()
	h, err := overlay.Open(ns)
	must(t, err)
	t.Cleanup(func() { h.Close() })
	return h
}

func endpoint(ns, veth string, ip net.IP, mac net.HardwareAddr) overlay.Endpoint {
	return overlay.Endpoint{NetNS: ns, HostVeth: veth, Addr: net.IPNet{IP: ip, Mask: overlayMask}, MAC: mac}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestTwoHostsAndMigrate(t *testing.T) {
	nstest.RequireRoot(t)
	t.Parallel()
	l := newLab(t)
	ctrA, ctrB := nstest.NewNetNS(t, "ovt-ca-"), nstest.NewNetNS(t, "ovt-cb-")
	must(t, l.h1.AttachEndpoint(endpoint(ctrA, "cva", ipA, macA), true))
	must(t, l.h2.AttachEndpoint(endpoint(ctrB, "cvb", ipB, macB), true))
	must(t, l.h1.SetRemoteMAC(macB, ip2)) // host1's agent knows B; host2 learns A

	// A gratuitous ARP alone teaches host2 (learning, no agent) where A is.
	must(t, overlay.GratuitousARP(ctrA, "eth0", ipA, macA, 3))
	waitLearned(t, l.ns2, macA, ip1)

	serveEcho(t, ctrA, ipA)
	serveEcho(t, ctrB, ipB)
	tx := vxlanTx(t, l.ns1)
	checkTCP(t, ctrA, ipB) // container to container over the VXLAN
	if vxlanTx(t, l.ns1) == tx {
		t.Fatal("A reached B without host1's vxlan0 sending a packet")
	}
	checkTCP(t, l.ns2, ipA) // host2's client address to A over the VXLAN
	checkRemoteMACs(t, l.h1, map[string]net.IP{macB.String(): ip2})
	checkRemoteMACs(t, l.h2, map[string]net.IP{}) // the learned entry is not static

	// Migrate B to host1: cut it off, remove it, recreate it with the same
	// IP and MAC in a new netns there, repoint the FDBs, announce it.
	must(t, l.h2.SetEndpointUp("cvb", false))
	must(t, l.h2.DetachEndpoint("cvb"))
	must(t, overlay.DeleteNetNS(ctrB))
	ctrB2 := t.TempDir() + "/netns/ctrB"
	must(t, overlay.CreateNetNS(ctrB2))
	t.Cleanup(func() { must(t, overlay.DeleteNetNS(ctrB2)) })
	must(t, l.h1.AttachEndpoint(endpoint(ctrB2, "cvb", ipB, macB), false))
	nl1 := nstest.Handle(t, l.ns1)
	if len(fdbFor(t, nl1, macB)) < 1 {
		t.Fatalf("host1 should still have its static entry for %s: %v", macB, vxlanFDB(t, nl1))
	}
	// The bridge has B's MAC pinned to its new port (static, sticky), so
	// no frame learned from vxlan0 can pull it back there.
	cvb, err := nl1.LinkByName("cvb")
	must(t, err)
	pinned, err := nl1.NeighList(cvb.Attrs().Index, unix.AF_BRIDGE)
	must(t, err)
	ok := false
	for _, e := range pinned {
		if e.HardwareAddr.String() == macB.String() && e.Flags&netlink.NTF_STICKY != 0 && e.State&netlink.NUD_NOARP != 0 {
			ok = true
		}
	}
	if !ok {
		t.Fatalf("host1's bridge has no static sticky entry for %s on cvb: %v", macB, pinned)
	}
	must(t, l.h1.DelRemoteMAC(macB))
	if left := fdbFor(t, nl1, macB); len(left) != 0 {
		t.Fatalf("DelRemoteMAC left %v", left)
	}
	must(t, l.h2.SetRemoteMAC(macB, ip1))
	must(t, l.h1.SetEndpointUp("cvb", true))
	must(t, overlay.GratuitousARP(ctrB2, "eth0", ipB, macB, 3))
	must(t, overlay.FlushNeigh(ctrA, ipB))

	serveEcho(t, ctrB2, ipB)
	checkTCP(t, ctrA, ipB)  // now on the same host
	checkTCP(t, l.ns2, ipB) // host2 to B over the VXLAN, the other way round
	checkRemoteMACs(t, l.h1, map[string]net.IP{})
	checkRemoteMACs(t, l.h2, map[string]net.IP{macB.String(): ip1})
}

// serveEcho echoes every TCP connection to ip:echoPort inside ns until the
// test ends.
func serveEcho(t *testing.T, ns string, ip net.IP) {
	t.Helper()
	ln := nstest.Listen(t, ns, "tcp", net.JoinHostPort(ip.String(), echoPort))
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return // listener closed
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() }) // runs before nstest closes ln again
}

// checkTCP connects from ns to ip:echoPort and expects its bytes back.
func checkTCP(t *testing.T, ns string, ip net.IP) {
	t.Helper()
	addr := net.JoinHostPort(ip.String(), echoPort)
	c, err := nstest.Dial(ns, "tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, ns, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "coat"); err != nil {
		t.Fatalf("write to %s: %v", addr, err)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "coat" {
		t.Fatalf("echo from %s = %q, %v; want coat", addr, got, err)
	}
}

func checkRemoteMACs(t *testing.T, h *overlay.Host, want map[string]net.IP) {
	t.Helper()
	got, err := h.RemoteMACs()
	must(t, err)
	if len(got) != len(want) {
		t.Fatalf("RemoteMACs = %v, want %v", got, want)
	}
	for mac, ip := range want {
		if !got[mac].Equal(ip) {
			t.Fatalf("RemoteMACs = %v, want %v", got, want)
		}
	}
}

// waitLearned waits until the vxlan0 of ns has learned (not static) mac at
// VTEP vtep.
func waitLearned(t *testing.T, ns string, mac net.HardwareAddr, vtep net.IP) {
	t.Helper()
	nl := nstest.Handle(t, ns)
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		for _, e := range vxlanFDB(t, nl) {
			if e.HardwareAddr.String() == mac.String() && e.IP.Equal(vtep) &&
				e.Flags&netlink.NTF_SELF != 0 && e.State&netlink.NUD_PERMANENT == 0 {
				return
			}
		}
	}
	t.Fatalf("%s never learned %s at %s; fdb: %v", ns, mac, vtep, vxlanFDB(t, nl))
}

// vxlanFDB is "bridge fdb show dev vxlan0".
func vxlanFDB(t *testing.T, nl *netlink.Handle) []netlink.Neigh {
	t.Helper()
	vx, err := nl.LinkByName(overlay.DefaultVXLAN)
	must(t, err)
	entries, err := nl.NeighList(vx.Attrs().Index, unix.AF_BRIDGE)
	must(t, err)
	return entries
}

func fdbFor(t *testing.T, nl *netlink.Handle, mac net.HardwareAddr) []netlink.Neigh {
	t.Helper()
	var out []netlink.Neigh
	for _, e := range vxlanFDB(t, nl) {
		if e.HardwareAddr.String() == mac.String() {
			out = append(out, e)
		}
	}
	return out
}

// vxlanTx is the packet count vxlan0 in ns has sent.
func vxlanTx(t *testing.T, ns string) uint64 {
	t.Helper()
	vx, err := nstest.Handle(t, ns).LinkByName(overlay.DefaultVXLAN)
	must(t, err)
	return vx.Attrs().Statistics.TxPackets
}
