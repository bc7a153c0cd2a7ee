//go:build linux

package overlay_test

import (
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/coat-project/coat/internal/nstest"
	"github.com/coat-project/coat/internal/overlay"
)

// While held, nothing reaches the container (data waits, a connection to a
// closed port gets no reset); on release the waiting data arrives at once.
func TestHoldRelease(t *testing.T) {
	nstest.RequireRoot(t)
	hc := newHoldConn(t, "ovt-hold", "cvh")
	h, host, client, server := hc.h, hc.host, hc.client, hc.server

	must(t, h.Hold("cvh", 1450))
	if _, err := client.Write([]byte("held")); err != nil {
		t.Fatal(err)
	}
	_ = server.SetReadDeadline(time.Now().Add(400 * time.Millisecond))
	buf := make([]byte, 16)
	if n, err := server.Read(buf); err == nil {
		t.Fatalf("data passed a held link: %q", buf[:n])
	}
	// A connection to a port nobody listens on: held, so no reset comes back.
	_, err := nstest.Dial(host, "tcp4", ipA.String()+":1", 300*time.Millisecond)
	if errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatal("a held container answered with a reset")
	}
	start := time.Now()
	must(t, h.Release("cvh"))
	_ = server.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(server, buf[:4]); err != nil || string(buf[:4]) != "held" {
		t.Fatalf("after release: %v %q", err, buf[:4])
	}
	// The client's first retransmission may be what arrives; it must not
	// wait for a second, backed-off one.
	if d := time.Since(start); d > 900*time.Millisecond {
		t.Logf("held data arrived %s after release", d)
	}
	// The qdisc stays, open: traffic flows normally.
	if _, err := client.Write([]byte("free")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(server, buf[:4]); err != nil || string(buf[:4]) != "free" {
		t.Fatalf("after release, normal traffic: %v %q", err, buf[:4])
	}
}

// holdConn is a host with one container endpoint (veth, ipA, macA) and a
// TCP connection from the host to a listener in the container.
type holdConn struct {
	h              *overlay.Host
	host, ctr      string // netns paths
	ep             overlay.Endpoint
	client, server net.Conn
}

func newHoldConn(t *testing.T, prefix, veth string) holdConn {
	t.Helper()
	hc := holdConn{host: nstest.NewNetNS(t, prefix+"-"), ctr: nstest.NewNetNS(t, prefix+"c-")}
	hc.h = openHost(t, hc.host)
	must(t, hc.h.Ensure(overlay.Config{VNI: 42, Port: 4789, LocalIP: net.IPv4(10, 98, 0, 1), UnderlayDev: "lo",
		BridgeAddr: &net.IPNet{IP: net.IPv4(10, 200, 0, 2), Mask: overlayMask}}))
	hc.ep = endpoint(hc.ctr, veth, ipA, macA)
	must(t, hc.h.AttachEndpoint(hc.ep, true))

	ln := nstest.Listen(t, hc.ctr, "tcp4", ipA.String()+":"+echoPort)
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	var err error
	hc.client, err = nstest.Dial(hc.host, "tcp4", ipA.String()+":"+echoPort, 3*time.Second)
	must(t, err)
	t.Cleanup(func() { hc.client.Close() })
	select {
	case hc.server = <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("no connection accepted")
	}
	t.Cleanup(func() { hc.server.Close() })
	return hc
}
