package sample

import (
	"context"
	"net"
	"slices"
	"testing"
	"time"
)

// Streams to three servers at once: each stream is exact, reported in
// the order of the addresses; a server that starts listening only after
// the first dials is still reached (the dial is retried).
func TestStreamsManyServers(t *testing.T) {
	_, a, _ := startServer(t)
	_, b, _ := startServer(t)
	// An address nobody listens on yet: taken, freed, then served late.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	late := ln.Addr().String()
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	dir := t.TempDir()
	go func() {
		time.Sleep(300 * time.Millisecond)
		s, err := NewServer(ServerConfig{Port: port, DataDir: dir})
		if err != nil {
			t.Error(err)
			return
		}
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		go s.Serve(ctx)
	}()
	ready := -1
	rep := Streams(context.Background(), StreamsOptions{Addrs: []string{a, late, b}, Duration: 300 * time.Millisecond,
		Rate: 64 << 10, Wait: 5 * time.Second, Ready: func(n int) { ready = n }})
	if !rep.OK || rep.Connected != 3 || ready != 3 {
		t.Fatalf("report %+v (ready %d), want 3 clean streams", rep, ready)
	}
	for i, want := range []string{a, late, b} {
		if r := rep.Streams[i]; r.Addr != want || !r.OK() || r.Sent == 0 {
			t.Errorf("stream %d: %+v, want a clean one to %s", i, r, want)
		}
	}
}

// A server that never comes is reported as a dial failure after Wait,
// and the run is not OK; the other streams still run.
func TestStreamsDialFailure(t *testing.T) {
	_, a, _ := startServer(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	rep := Streams(context.Background(), StreamsOptions{Addrs: []string{a, dead}, Duration: 100 * time.Millisecond, Wait: 400 * time.Millisecond})
	if rep.OK || rep.Connected != 1 || rep.Streams[1].ConnectionError == "" || !rep.Streams[0].OK() {
		t.Fatalf("report %+v, want stream 0 clean and stream 1 failed to dial", rep)
	}
}

func TestParseAddrs(t *testing.T) {
	got, err := ParseAddrs("10.0.0.1, 10.0.0.2:7001\n10.0.0.3\n", 7000)
	if want := []string{"10.0.0.1:7000", "10.0.0.2:7001", "10.0.0.3:7000"}; err != nil || !slices.Equal(got, want) {
		t.Errorf("ParseAddrs = %v, %v; want %v", got, err, want)
	}
	for _, bad := range []string{"", " , ", "host.example", "10.0.0.1:x:y"} {
		if got, err := ParseAddrs(bad, 7000); err == nil {
			t.Errorf("ParseAddrs(%q) = %v, want an error", bad, got)
		}
	}
}
