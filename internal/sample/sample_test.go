package sample

import (
	"bytes"
	"context"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"
)

func TestPattern(t *testing.T) {
	for _, off := range []int64{0, 1, 250, 251, 252, 1 << 20, 1<<40 + 3} {
		want := byte((off*7 + 13) % 251)
		if got := PatternByte(off); got != want {
			t.Errorf("PatternByte(%d) = %d, want %d", off, got, want)
		}
	}
	b := make([]byte, 1000)
	FillPattern(b, 12345)
	for i, c := range b {
		if c != PatternByte(12345+int64(i)) {
			t.Fatalf("FillPattern mismatch at %d", i)
		}
	}
	if n, first := CheckPattern(b, 12345); n != 0 || first != -1 {
		t.Fatalf("CheckPattern clean = %d, %d", n, first)
	}
	b[17] ^= 0xff
	if n, first := CheckPattern(b, 12345); n != 1 || first != 17 {
		t.Fatalf("CheckPattern corrupted = %d, %d; want 1, 17", n, first)
	}
	// A dropped byte shifts everything after it.
	if n, first := CheckPattern(append(b[:5:5], b[6:]...), 12345); first != 5 || n < 900 {
		t.Fatalf("CheckPattern dropped = %d, %d", n, first)
	}
}

func TestParseRate(t *testing.T) {
	cases := map[string]int64{
		"1000": 1000, "0": 0, "1MB/s": 1e6, "1mb": 1e6, "500KB/s": 500e3,
		"2MiB/s": 2 << 20, "1.5MB/s": 1.5e6, "8bit/s": 1, "10Mbit/s": 1.25e6, "1G": 1e9,
	}
	for in, want := range cases {
		got, err := ParseRate(in)
		if err != nil || got != want {
			t.Errorf("ParseRate(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "fast", "-1", "1XB/s", "MB/s"} {
		if _, err := ParseRate(in); err == nil {
			t.Errorf("ParseRate(%q) succeeded, want error", in)
		}
	}
}

// startServer runs a server on random ports for the test's lifetime and
// returns it with its loopback stream and control addresses.
func startServer(t *testing.T) (*Server, string, string) {
	t.Helper()
	logBuf := &syncBuffer{}
	s, err := NewServer(ServerConfig{DataDir: t.TempDir(), Log: logBuf})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Serve did not return after cancel")
		}
		if t.Failed() {
			t.Logf("server log:\n%s", logBuf.String())
		}
	})
	return s, loopback(s.Addr()), loopback(s.CtlAddr())
}

func loopback(a net.Addr) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(a.(*net.TCPAddr).Port))
}

// syncBuffer is a goroutine-safe bytes.Buffer for the server log.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
