package sample

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestStreamExactEcho(t *testing.T) {
	s, addr, _ := startServer(t)
	var tl bytes.Buffer
	rep := Stream(context.Background(), StreamOptions{
		Addr: addr, Duration: 500 * time.Millisecond, Rate: 4 << 20, Chunk: 1000, Timeline: &tl,
	})
	if !rep.OK() || rep.Sent == 0 || rep.Received != rep.Sent || rep.Errors != 0 || rep.FirstError != -1 {
		t.Fatalf("report = %+v, want clean exact echo", rep)
	}
	// 4 MiB/s for 0.5 s: roughly 2 MiB, allow generous slack for slow CI.
	if rep.Sent < 512<<10 || rep.Sent > 3<<20 {
		t.Errorf("sent %d bytes, want about 2 MiB (rate limiting broken?)", rep.Sent)
	}
	waitFor(t, func() bool { return s.Stats().Active == 0 })
	st := s.Stats()
	if st.Connections != 1 || st.Bytes != uint64(rep.Sent) || st.Errors != 0 {
		t.Errorf("server stats = %+v, want 1 connection, %d bytes, 0 errors", st, rep.Sent)
	}
	lines := strings.Split(strings.TrimSpace(tl.String()), "\n")
	if lines[0] != "t_ms,bytes_echoed" || len(lines) < 10 {
		t.Errorf("timeline has %d lines, header %q", len(lines), lines[0])
	}
	if last := lines[len(lines)-1]; !strings.HasSuffix(last, ","+strconv.FormatInt(rep.Received, 10)) {
		t.Errorf("last timeline row %q, want bytes %d", last, rep.Received)
	}
}

func TestStreamUnlimitedUntilCancel(t *testing.T) {
	_, addr, _ := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	rep := Stream(ctx, StreamOptions{Addr: addr, Duration: 0, Rate: 0, Chunk: 32 << 10})
	if !rep.OK() || rep.Sent == 0 {
		t.Fatalf("report = %+v, want clean run", rep)
	}
}

// flipConn corrupts the byte at stream offset at as it is written.
type flipConn struct {
	net.Conn
	mu  sync.Mutex
	off int64
	at  int64
}

func (c *flipConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.at >= c.off && c.at < c.off+int64(len(p)) {
		q := append([]byte(nil), p...)
		q[c.at-c.off] ^= 0x5a
		p = q
	}
	n, err := c.Conn.Write(p)
	c.off += int64(n)
	return n, err
}

func TestStreamDetectsCorruptedByte(t *testing.T) {
	s, addr, _ := startServer(t)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	const at = 5000
	rep := StreamConn(context.Background(), &flipConn{Conn: c, at: at}, StreamOptions{
		Duration: 300 * time.Millisecond, Rate: 1 << 20, Chunk: 1024,
	})
	if rep.OK() || rep.Errors != 1 || rep.FirstError != at {
		t.Fatalf("report = %+v, want exactly 1 error at offset %d", rep, at)
	}
	if rep.Received != rep.Sent || rep.ConnectionError != "" {
		t.Errorf("report = %+v, want full echo and no connection error", rep)
	}
	waitFor(t, func() bool { return s.Stats().Active == 0 })
	if st := s.Stats(); st.Errors != 1 {
		t.Errorf("server errors = %d, want 1", st.Errors)
	}
}

// stallConn blocks the first Read after delay for stall, like a migration.
type stallConn struct {
	net.Conn
	start        time.Time
	delay, stall time.Duration
	once         sync.Once
}

func (c *stallConn) Read(p []byte) (int, error) {
	if time.Since(c.start) > c.delay {
		c.once.Do(func() { time.Sleep(c.stall) })
	}
	return c.Conn.Read(p)
}

func TestStreamMeasuresGap(t *testing.T) {
	_, addr, _ := startServer(t)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	sc := &stallConn{Conn: c, start: time.Now(), delay: 200 * time.Millisecond, stall: 400 * time.Millisecond}
	rep := StreamConn(context.Background(), sc, StreamOptions{
		Duration: 800 * time.Millisecond, Rate: 1 << 20, Chunk: 1024,
	})
	if !rep.OK() {
		t.Fatalf("report = %+v, want clean run", rep)
	}
	if rep.MaxGapMs < 350 || rep.MaxGapMs > 1500 {
		t.Errorf("max_gap_ms = %v, want about 400", rep.MaxGapMs)
	}
	if rep.GapAt < 0.15 || rep.GapAt > 0.6 {
		t.Errorf("gap_at = %v, want about 0.2", rep.GapAt)
	}
}

func TestStreamConnectionReset(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		buf := make([]byte, 4096)
		c.Read(buf)
		c.(*net.TCPConn).SetLinger(0) // close with RST
		c.Close()
	}()
	rep := Stream(context.Background(), StreamOptions{
		Addr: ln.Addr().String(), Duration: 2 * time.Second, Rate: 1 << 20, DrainTimeout: time.Second,
	})
	if rep.OK() || rep.ConnectionError == "" {
		t.Fatalf("report = %+v, want connection error", rep)
	}
}

func TestStreamDialError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	rep := Stream(context.Background(), StreamOptions{Addr: addr, Duration: time.Second})
	if rep.OK() || !strings.HasPrefix(rep.ConnectionError, "dial:") {
		t.Fatalf("report = %+v, want dial error", rep)
	}
}

func TestCtlCommands(t *testing.T) {
	s, _, ctl := startServer(t)
	ctx := context.Background()
	want := []struct{ line, reply string }{
		{"ping", "pong"},
		{"incr", "1"},
		{"incr", "2"},
		{"put greeting hello  world", "ok"},
		{"get greeting", "hello  world"},
		{"put empty", "ok"},
		{"get empty", ""},
	}
	for _, w := range want {
		got, err := Ctl(ctx, ctl, w.line)
		if err != nil || got != w.reply {
			t.Errorf("Ctl(%q) = %q, %v; want %q", w.line, got, err, w.reply)
		}
	}
	for _, line := range []string{"get missing", "put ../escape x", "put a/b x", "frobnicate", ""} {
		if got, err := Ctl(ctx, ctl, line); err != nil || !strings.HasPrefix(got, "ERR") {
			t.Errorf("Ctl(%q) = %q, %v; want ERR reply", line, got, err)
		}
	}
	got, err := Ctl(ctx, ctl, "stats")
	if err != nil {
		t.Fatal(err)
	}
	var st Stats
	if err := json.Unmarshal([]byte(got), &st); err != nil {
		t.Fatalf("stats reply %q: %v", got, err)
	}
	if st.Counter != 2 || st.PID == 0 || st.Connections != 0 {
		t.Errorf("stats = %+v", st)
	}
	if _, err := time.Parse(time.RFC3339, st.Started); err != nil {
		t.Errorf("started %q: %v", st.Started, err)
	}
	if s.Stats().Counter != 2 {
		t.Errorf("in-memory counter = %d", s.Stats().Counter)
	}
	// Several requests on one connection: one reply line each.
	c, err := net.Dial("tcp", ctl)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("incr\nping\nincr\n"))
	r := bufio.NewReader(c)
	for _, w := range []string{"3", "pong", "4"} {
		line, err := r.ReadString('\n')
		if err != nil || strings.TrimSpace(line) != w {
			t.Errorf("pipelined reply %q, %v; want %q", line, err, w)
		}
	}
}

func TestServerShutdownClosesConnections(t *testing.T) {
	s, err := NewServer(ServerConfig{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	c, err := net.Dial("tcp", loopback(s.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitFor(t, func() bool { return s.Stats().Active == 1 })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
