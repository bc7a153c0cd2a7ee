//go:build linux

package overlay_test

import (
	"bytes"
	"io"
	"testing"
	"time"

	"github.com/coat-project/coat/internal/nstest"
	"github.com/coat-project/coat/internal/overlay"
)

// What a host held for a container can be taken out of its namespace
// (nothing reaches the sockets there) and injected into a held link
// elsewhere: after the release it reaches the sockets at once, its
// checksum complete, without waiting for the sender's retransmission.
func TestTakeHeldAndReplay(t *testing.T) {
	nstest.RequireRoot(t)
	hc := newHoldConn(t, "ovt-rep", "cvr")
	h, ctr, ep, client, server := hc.h, hc.ctr, hc.ep, hc.client, hc.server

	must(t, h.Hold("cvr", 1450))
	if _, err := client.Write([]byte("replay-me")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	frames, err := h.TakeHeld("cvr", ctr, macA)
	must(t, err)
	found := false
	for _, f := range frames {
		if bytes.Contains(f, []byte("replay-me")) {
			found = true
		}
	}
	if !found {
		t.Fatalf("the held segment is not among the %d frames taken", len(frames))
	}
	buf := make([]byte, 16)
	_ = server.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, err := server.Read(buf); err == nil {
		t.Fatalf("taken data reached the socket anyway: %q", buf[:n])
	}

	// The destination's side: held, the frames injected, then released.
	must(t, overlay.RestoreAddr(ctr, ep.Addr))
	must(t, h.Hold("cvr", 1450))
	must(t, h.Inject("cvr", frames))
	must(t, h.Release("cvr"))
	// The sender's first retransmission comes 200 ms or more after its
	// send; the replayed segment is there before.
	_ = server.SetReadDeadline(time.Now().Add(150 * time.Millisecond))
	if _, err := io.ReadFull(server, buf[:9]); err != nil || string(buf[:9]) != "replay-me" {
		t.Fatalf("replayed segment: %v %q", err, buf[:9])
	}
	// Injecting more than the hold lets go of never blocks (the restore
	// that would release it waits for the injection): it returns, at worst
	// having dropped the excess.
	must(t, h.Hold("cvr", 1450))
	many := make([][]byte, 8000)
	for i := range many {
		f := make([]byte, 1400)
		copy(f[0:6], macA)
		f[12], f[13] = 0x88, 0xb5
		many[i] = f
	}
	done := make(chan error, 1)
	go func() { done <- h.Inject("cvr", many) }()
	select {
	case err := <-done:
		t.Logf("injecting 8000 frames into a held link: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("Inject blocked on a held link")
	}
	must(t, h.Release("cvr"))
	// An open link passes traffic as ever.
	if _, err := client.Write([]byte("after")); err != nil {
		t.Fatal(err)
	}
	_ = server.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(server, buf[:5]); err != nil || string(buf[:5]) != "after" {
		t.Fatalf("after release: %v %q", err, buf[:5])
	}
}
