//go:build linux

package overlay_test

import (
	"io"
	"testing"
	"time"

	"github.com/coat-project/coat/internal/nstest"
	"github.com/coat-project/coat/internal/overlay"
)

// Muzzled, nothing the container sends leaves its namespace; unmuzzled,
// what it sent meanwhile arrives at once, then traffic flows as before.
func TestMuzzleUnmuzzle(t *testing.T) {
	nstest.RequireRoot(t)
	hc := newHoldConn(t, "ovt-muz", "cvm")
	if m, err := overlay.Muzzled(hc.ctr); err != nil || m {
		t.Fatalf("a new endpoint: muzzled %v, %v; want open", m, err)
	}
	done, err := overlay.Muzzle(hc.ctr, 1450)
	if err != nil || !done {
		t.Fatalf("muzzle: %v, %v", done, err)
	}
	if m, err := overlay.Muzzled(hc.ctr); err != nil || !m {
		t.Fatalf("after Muzzle: muzzled %v, %v", m, err)
	}
	if _, err := hc.server.Write([]byte("quiet")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	_ = hc.client.SetReadDeadline(time.Now().Add(400 * time.Millisecond))
	if n, err := hc.client.Read(buf); err == nil {
		t.Fatalf("data left a muzzled container: %q", buf[:n])
	}
	must(t, overlay.Unmuzzle(hc.ctr))
	_ = hc.client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(hc.client, buf[:5]); err != nil || string(buf[:5]) != "quiet" {
		t.Fatalf("after unmuzzle: %v %q", err, buf[:5])
	}
	if _, err := hc.server.Write([]byte("loud")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(hc.client, buf[:4]); err != nil || string(buf[:4]) != "loud" {
		t.Fatalf("after unmuzzle, normal traffic: %v %q", err, buf[:4])
	}
	// Unmuzzling an open container changes nothing.
	must(t, overlay.Unmuzzle(hc.ctr))
	if m, _ := overlay.Muzzled(hc.ctr); m {
		t.Fatal("Unmuzzle of an open container muzzled it")
	}
}
