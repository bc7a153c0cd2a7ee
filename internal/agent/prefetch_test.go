package agent

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

// writePagemap writes a CRIU pagemap image with the given entries, as
// CRIU 4 does (the page count in field 5, compat_nr_pages 0), except
// entries with old set, written as older CRIUs did (field 2 only).
func writePagemap(t *testing.T, dir string, id uint64, entries []testEntry) {
	t.Helper()
	var b bytes.Buffer
	_ = binary.Write(&b, binary.LittleEndian, uint32(imgCommonMagic))
	_ = binary.Write(&b, binary.LittleEndian, uint32(pagemapMagic))
	put := func(raw []byte) {
		_ = binary.Write(&b, binary.LittleEndian, uint32(len(raw)))
		b.Write(raw)
	}
	put(protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 1)) // pagemap_head
	for _, e := range entries {
		var m []byte
		m = protowire.AppendVarint(protowire.AppendTag(m, 1, protowire.VarintType), e.vaddr)
		if e.old {
			m = protowire.AppendVarint(protowire.AppendTag(m, 2, protowire.VarintType), e.pages)
		} else {
			m = protowire.AppendVarint(protowire.AppendTag(m, 2, protowire.VarintType), 0)
		}
		m = protowire.AppendVarint(protowire.AppendTag(m, 4, protowire.VarintType), uint64(e.flags))
		if !e.old {
			m = protowire.AppendVarint(protowire.AppendTag(m, 5, protowire.VarintType), e.pages)
		}
		put(m)
	}
	if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("pagemap-%d.img", id)), b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

type testEntry struct {
	vaddr, pages uint64
	flags        uint32
	old          bool
}

func entry(vaddr, pages uint64, flags uint32) testEntry {
	return testEntry{vaddr: vaddr, pages: pages, flags: flags}
}

// pageContent is what the fake page server holds at addr: distinct per page.
func pageContent(id, addr uint64) []byte {
	p := make([]byte, pageBytes)
	for i := 0; i < pageBytes; i += 16 {
		binary.LittleEndian.PutUint64(p[i:], addr)
		binary.LittleEndian.PutUint64(p[i+8:], id)
	}
	return p
}

// fakePageServer answers CRIU page-server requests in order, as CRIU's
// lazy dump does: pages of the lazy ranges only, clamped at every
// clamp-page boundary (its pipe buffers), a 4-byte status for a close.
// It counts how often each page was sent.
type fakePageServer struct {
	ranges map[uint64][]pageRange
	clamp  uint64
	mu     sync.Mutex
	sent   map[[2]uint64]int
	bad    error
}

func (s *fakePageServer) serve(c net.Conn) {
	defer c.Close()
	buf := make([]byte, psIovSize)
	for {
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		q := parsePsIov(buf)
		if q.cmd == psIovClose {
			_, _ = c.Write([]byte{0, 0, 0, 0})
			return
		}
		if q.cmd != psIovGet {
			s.fail(fmt.Errorf("command %#x", q.cmd))
			return
		}
		var in *pageRange
		for i, r := range s.ranges[q.img] {
			if q.vaddr >= r.start && q.vaddr < r.end {
				in = &s.ranges[q.img][i]
			}
		}
		if in == nil || q.nr == 0 {
			s.fail(fmt.Errorf("request of %d pages at %#x, outside the lazy ranges", q.nr, q.vaddr))
			return
		}
		n := min(q.nr, (in.end-q.vaddr)/pageBytes)
		if s.clamp > 0 {
			next := (q.vaddr/pageBytes/s.clamp + 1) * s.clamp * pageBytes
			n = min(n, (next-q.vaddr)/pageBytes)
		}
		out := psIov{cmd: pePresent<<psCmdBits | psIovAddF, nr: n, vaddr: q.vaddr, img: q.img}.marshal()
		s.mu.Lock()
		for i := uint64(0); i < n; i++ {
			a := q.vaddr + i*pageBytes
			out = append(out, pageContent(q.img, a)...)
			s.sent[[2]uint64{q.img, a}]++
		}
		s.mu.Unlock()
		if _, err := c.Write(out); err != nil {
			return
		}
	}
}

func (s *fakePageServer) fail(err error) {
	s.mu.Lock()
	if s.bad == nil {
		s.bad = err
	}
	s.mu.Unlock()
}

// tcpPair is a connected pair of loopback TCP connections.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-ch
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

// TestPageProxyPrefetch: a daemon that faults at random pages and walks
// the rest in growing requests (as CRIU's does) gets every page exactly
// as the page server has it, in order; the page server sends each page
// once (the relay fetched ahead and never asked twice), including when it
// clamps its answers; the relay asked only inside lazy ranges.
func TestPageProxyPrefetch(t *testing.T) {
	for _, clamp := range []uint64{0, 7} {
		t.Run(fmt.Sprintf("clamp%d", clamp), func(t *testing.T) {
			dir := t.TempDir()
			// Process 1: three lazy ranges and a non-lazy one between.
			writePagemap(t, dir, 1, []testEntry{
				entry(0x10000, 300, peLazy|pePresent),
				entry(0x200000, 5, pePresent),
				entry(0x300000, 1000, peLazy|pePresent),
				entry(0x800000, 1, peLazy|pePresent),
			})
			srv := &fakePageServer{
				ranges: map[uint64][]pageRange{1: {{0x10000, 0x10000 + 300*pageBytes}, {0x300000, 0x300000 + 1000*pageBytes}, {0x800000, 0x800000 + pageBytes}}},
				clamp:  clamp, sent: map[[2]uint64]int{},
			}
			daemonSide, relayLocal := tcpPair(t)
			relaySource, serverSide := tcpPair(t)
			go srv.serve(serverSide)
			var moved atomic.Int64
			var ended atomic.Bool
			p := newPageProxy(relayLocal, relaySource, dir, &moved, func() { ended.Store(true) })
			close(p.begin)
			done := make(chan error, 1)
			go func() { done <- p.run() }()

			// The daemon: its ranges, minus what it got.
			type want struct{ addr uint64 }
			missing := map[uint64]bool{}
			for _, r := range srv.ranges[1] {
				for a := r.start; a < r.end; a += pageBytes {
					missing[a] = true
				}
			}
			rng := rand.New(rand.NewSource(1))
			ask := func(addr, n uint64) {
				if _, err := daemonSide.Write(psIov{cmd: psIovGet, nr: n, vaddr: addr, img: 1}.marshal()); err != nil {
					t.Fatal(err)
				}
				hdr := make([]byte, psIovSize)
				if _, err := io.ReadFull(daemonSide, hdr); err != nil {
					t.Fatal(err)
				}
				a := parsePsIov(hdr)
				if a.vaddr != addr || a.nr != n || a.img != 1 {
					t.Fatalf("asked %d at %#x, answered %d at %#x (image %d)", n, addr, a.nr, a.vaddr, a.img)
				}
				data := make([]byte, a.nr*pageBytes)
				if _, err := io.ReadFull(daemonSide, data); err != nil {
					t.Fatal(err)
				}
				for i := uint64(0); i < a.nr; i++ {
					pa := addr + i*pageBytes
					if !bytes.Equal(data[i*pageBytes:(i+1)*pageBytes], pageContent(1, pa)) {
						t.Fatalf("page %#x: wrong content", pa)
					}
					if !missing[pa] {
						t.Fatalf("page %#x delivered twice", pa)
					}
					delete(missing, pa)
				}
			}
			// A few faults first (single pages anywhere), then the walk.
			for i := 0; i < 20; i++ {
				r := srv.ranges[1][rng.Intn(len(srv.ranges[1]))]
				a := r.start + uint64(rng.Int63n(int64((r.end-r.start)/pageBytes)))*pageBytes
				if missing[a] {
					ask(a, 1)
				}
			}
			time.Sleep(50 * time.Millisecond) // let the relay fetch ahead
			xfer := uint64(16)
			for _, r := range srv.ranges[1] {
				for a := r.start; a < r.end; {
					if !missing[a] {
						a += pageBytes
						continue
					}
					n := uint64(0)
					for a+n*pageBytes < r.end && missing[a+n*pageBytes] && n < xfer {
						n++
					}
					ask(a, n)
					xfer = min(xfer+16, 1024)
				}
			}
			if len(missing) != 0 {
				t.Fatalf("%d pages never delivered", len(missing))
			}
			closeAndCheckOnce(t, daemonSide, done, srv)
			if p.prefetched.Load() == 0 {
				t.Error("the relay fetched nothing ahead")
			}
			if !ended.Load() {
				t.Error("the source's end was not reported")
			}
			t.Logf("prefetched %d of %d bytes", p.prefetched.Load(), 1301*pageBytes)
		})
	}
}

// TestPageProxySourceLost: when the page server goes mid-way, the guard
// runs before the daemon's connection ends, and the relay fails.
func TestPageProxySourceLost(t *testing.T) {
	dir := t.TempDir()
	writePagemap(t, dir, 1, []testEntry{entry(0x10000, 100, peLazy|pePresent)})
	daemonSide, relayLocal := tcpPair(t)
	relaySource, serverSide := tcpPair(t)
	var moved atomic.Int64
	guarded := make(chan struct{})
	p := newPageProxy(relayLocal, relaySource, dir, &moved, func() {
		// The daemon must not have heard yet.
		_ = daemonSide.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if _, err := daemonSide.Read(make([]byte, 1)); err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("the daemon heard before the guard ran: %v", err)
		}
		_ = daemonSide.SetReadDeadline(time.Time{})
		close(guarded)
	})
	done := make(chan error, 1)
	go func() { done <- p.run() }()
	if _, err := daemonSide.Write(psIov{cmd: psIovGet, nr: 1, vaddr: 0x10000 + 50*pageBytes, img: 1}.marshal()); err != nil {
		t.Fatal(err)
	}
	// The server reads the request, then dies without answering.
	if _, err := io.ReadFull(serverSide, make([]byte, psIovSize)); err != nil {
		t.Fatal(err)
	}
	_ = serverSide.SetLinger(0)
	serverSide.Close()
	select {
	case <-guarded:
	case <-time.After(10 * time.Second):
		t.Fatal("guard never ran")
	}
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("relay reported success after losing the page server")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("relay did not end")
	}
	if _, err := io.ReadAll(daemonSide); err == nil {
		// An orderly end is fine too, as long as no answer came.
	}
}

// TestLazyRanges reads only the lazy entries of a pagemap image.
func TestLazyRanges(t *testing.T) {
	dir := t.TempDir()
	writePagemap(t, dir, 7, []testEntry{entry(0x1000, 2, peLazy|pePresent), entry(0x9000, 1, pePresent), entry(0x20000, 3, peLazy|pePresent), {vaddr: 0x40000, pages: 4, flags: peLazy, old: true}})
	r, err := lazyRanges(dir, 7)
	if err != nil {
		t.Fatal(err)
	}
	want := []pageRange{{0x1000, 0x3000}, {0x20000, 0x23000}, {0x40000, 0x44000}}
	if fmt.Sprint(r) != fmt.Sprint(want) {
		t.Fatalf("got %v, want %v", r, want)
	}
	if err := os.WriteFile(filepath.Join(dir, "pagemap-8.img"), []byte("not an image"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := lazyRanges(dir, 8); err == nil {
		t.Fatal("a file that is no pagemap image was read")
	}
}

// TestPageProxyReasks: a page marked on its way with no request for it
// (a mistake the design rules out) does not stall the daemon for good:
// after stuckAfter it is asked for again, delivered, and reported.
func TestPageProxyReasks(t *testing.T) {
	old := stuckAfter
	stuckAfter = 200 * time.Millisecond
	t.Cleanup(func() { stuckAfter = old })
	dir := t.TempDir()
	writePagemap(t, dir, 1, []testEntry{entry(0x10000, 8, peLazy)})
	srv := &fakePageServer{ranges: map[uint64][]pageRange{1: {{0x10000, 0x10000 + 8*pageBytes}}}, sent: map[[2]uint64]int{}}
	daemonSide, relayLocal := tcpPair(t)
	relaySource, serverSide := tcpPair(t)
	go srv.serve(serverSide)
	var moved atomic.Int64
	p := newPageProxy(relayLocal, relaySource, dir, &moved, nil)
	var stuck atomic.Int64
	p.noteStuck = func(q psIov, inFlight, reasked, outstanding int) { stuck.Add(int64(reasked)) }
	p.mu.Lock()
	ip := p.image(1)
	ip.state[0x10000+3*pageBytes] = pageInFlight // the mistake: nobody asked
	p.mu.Unlock()
	done := make(chan error, 1)
	go func() { done <- p.run() }()
	if _, err := daemonSide.Write(psIov{cmd: psIovGet, nr: 8, vaddr: 0x10000, img: 1}.marshal()); err != nil {
		t.Fatal(err)
	}
	_ = daemonSide.SetReadDeadline(time.Now().Add(10 * time.Second))
	hdr := make([]byte, psIovSize)
	if _, err := io.ReadFull(daemonSide, hdr); err != nil {
		t.Fatalf("no answer: %v", err)
	}
	if a := parsePsIov(hdr); a.nr != 8 {
		t.Fatalf("answered %d pages, want 8", a.nr)
	}
	data := make([]byte, 8*pageBytes)
	if _, err := io.ReadFull(daemonSide, data); err != nil {
		t.Fatal(err)
	}
	for i := uint64(0); i < 8; i++ {
		if !bytes.Equal(data[i*pageBytes:(i+1)*pageBytes], pageContent(1, 0x10000+i*pageBytes)) {
			t.Fatalf("page %d wrong", i)
		}
	}
	if stuck.Load() != 1 {
		t.Fatalf("%d pages reported asked again, want 1", stuck.Load())
	}
	_, _ = daemonSide.Write(psIov{cmd: psIovClose}.marshal())
	_, _ = io.ReadFull(daemonSide, make([]byte, 4))
	_ = daemonSide.CloseWrite()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("relay did not end")
	}
}

// TestPageProxyAskedAgain: the daemon asks again for pages it was given
// (its copy into the process failed with EAGAIN, as when the process's
// memory map was changing); the relay answers from what it kept, and the
// source sends each page once.
func TestPageProxyAskedAgain(t *testing.T) {
	dir := t.TempDir()
	const pages = 64
	writePagemap(t, dir, 1, []testEntry{entry(0x10000, pages, peLazy|pePresent)})
	srv := &fakePageServer{ranges: map[uint64][]pageRange{1: {{0x10000, 0x10000 + pages*pageBytes}}}, sent: map[[2]uint64]int{}}
	daemonSide, relayLocal := tcpPair(t)
	relaySource, serverSide := tcpPair(t)
	go srv.serve(serverSide)
	var moved atomic.Int64
	p := newPageProxy(relayLocal, relaySource, dir, &moved, func() {})
	close(p.begin)
	done := make(chan error, 1)
	go func() { done <- p.run() }()
	ask := func(addr, n uint64) {
		t.Helper()
		if _, err := daemonSide.Write(psIov{cmd: psIovGet, nr: n, vaddr: addr, img: 1}.marshal()); err != nil {
			t.Fatal(err)
		}
		hdr := make([]byte, psIovSize)
		if _, err := io.ReadFull(daemonSide, hdr); err != nil {
			t.Fatal(err)
		}
		if a := parsePsIov(hdr); a.vaddr != addr || a.nr != n {
			t.Fatalf("asked %d at %#x, answered %d at %#x", n, addr, a.nr, a.vaddr)
		}
		data := make([]byte, n*pageBytes)
		if _, err := io.ReadFull(daemonSide, data); err != nil {
			t.Fatal(err)
		}
		for i := uint64(0); i < n; i++ {
			if !bytes.Equal(data[i*pageBytes:(i+1)*pageBytes], pageContent(1, addr+i*pageBytes)) {
				t.Fatalf("page %#x: wrong content", addr+i*pageBytes)
			}
		}
	}
	for a := uint64(0x10000); a < 0x10000+pages*pageBytes; a += 8 * pageBytes {
		ask(a, 8)
		ask(a, 8)             // the whole answer again
		ask(a+2*pageBytes, 3) // and a part of it
	}
	ask(0x10000, pages) // all of it, once more
	closeAndCheckOnce(t, daemonSide, done, srv)
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if len(srv.sent) != pages {
		t.Errorf("the source sent %d pages, want %d", len(srv.sent), pages)
	}
	if p.repeated.Load() == 0 {
		t.Error("no page was counted as asked again")
	}
}

// closeAndCheckOnce sends the daemon's close, checks its answer and the
// relay's orderly end, and that the page server sent each page once.
func closeAndCheckOnce(t *testing.T, daemonSide *net.TCPConn, done <-chan error, srv *fakePageServer) {
	t.Helper()
	if _, err := daemonSide.Write(psIov{cmd: psIovClose}.marshal()); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(daemonSide, make([]byte, 4)); err != nil {
		t.Fatalf("close answer: %v", err)
	}
	_ = daemonSide.CloseWrite()
	if _, err := daemonSide.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("after the close the relay's side should end in order, got %v", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("relay: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("relay did not end")
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if srv.bad != nil {
		t.Fatalf("page server: %v", srv.bad)
	}
	for k, n := range srv.sent {
		if n != 1 {
			t.Errorf("page %#x sent %d times", k[1], n)
		}
	}
}
