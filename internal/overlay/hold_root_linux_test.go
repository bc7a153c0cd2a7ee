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
	host := nstest.NewNetNS(t, "ovt-hold-")
	ctr := nstest.NewNetNS(t, "ovt-holdc-")
	h := openHost(t, host)
	must(t, h.Ensure(overlay.Config{VNI: 42, Port: 4789, LocalIP: net.IPv4(10, 98, 0, 1), UnderlayDev: "lo",
		BridgeAddr: &net.IPNet{IP: net.IPv4(10, 200, 0, 2), Mask: overlayMask}}))
	must(t, h.AttachEndpoint(endpoint(ctr, "cvh", ipA, macA), true))

	ln := nstest.Listen(t, ctr, "tcp4", ipA.String()+":"+echoPort)
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	client, err := nstest.Dial(host, "tcp4", ipA.String()+":"+echoPort, 3*time.Second)
	must(t, err)
	defer client.Close()
	server := <-accepted
	defer server.Close()

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
	_, err = nstest.Dial(host, "tcp4", ipA.String()+":1", 300*time.Millisecond)
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
	must(t, h.Unhold("cvh"))
}
