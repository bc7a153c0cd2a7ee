package agent

// Page tunnels: CRIU's page-server protocol, carried between two agents
// over their mutual TLS.
//
// CRIU speaks plain TCP to its page server. It never leaves a host here:
// on each side it talks to 127.0.0.1 of the agent's own namespace, and the
// agents carry the bytes between them on a TLS connection of their own
// (the same certificates as the API: an HTTP/1.1 upgrade on the API's
// port). The side whose CRIU is the page-server client listens on a
// loopback port for exactly one connection; the other side's agent, asked
// through the upgrade, dials its own CRIU's port, which it registered for
// that container's migration with that peer. Nothing else can be dialled.
//
// A peer that dies resets the connection; a peer cut off by a partition is
// found by TCP keepalive (about 5 s), so a tunnel never waits forever.

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coat-project/coat/internal/overlay"
	"github.com/coat-project/coat/internal/store"
)

// keepalive finds a peer lost to a partition within about 5 s.
var keepalive = net.KeepAliveConfig{Enable: true, Idle: time.Second, Interval: time.Second, Count: 4}

// tunnelTarget is a loopback port this agent lets one peer reach.
type tunnelTarget struct {
	peer string // the peer host's name
	addr string // 127.0.0.1:PORT
	// netns is the network namespace addr is in (the container's, where
	// its dump runs); "" for the agent's own.
	netns string
	used  bool // the peer dialled it
	// moved counts the bytes from CRIU to the peer; local is CRIU's
	// connection once dialled (closing it resets it).
	moved *atomic.Int64
	local net.Conn
}

func tunnelKey(name, kind string) string { return name + "/" + kind }

// allowTunnel lets peer reach addr as (name, kind) until the returned
// function is called.
func (a *Agent) allowTunnel(name, kind, peer, addr, netns string) func() {
	a.mu.Lock()
	if a.tunnels == nil {
		a.tunnels = map[string]tunnelTarget{}
	}
	a.tunnels[tunnelKey(name, kind)] = tunnelTarget{peer: peer, addr: addr, netns: netns, moved: &atomic.Int64{}}
	a.mu.Unlock()
	return func() {
		a.mu.Lock()
		delete(a.tunnels, tunnelKey(name, kind))
		a.mu.Unlock()
	}
}

// tunnelUsed reports whether the peer has dialled (name, kind).
func (a *Agent) tunnelUsed(name, kind string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.tunnels[tunnelKey(name, kind)].used
}

// peerName is the common name of the caller's certificate (a host's name).
func peerName(r *http.Request) string {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return ""
	}
	return r.TLS.PeerCertificates[0].Subject.CommonName
}

// handleTunnel upgrades the request's connection to a raw byte pipe to a
// registered loopback port.
func (a *Agent) handleTunnel(w http.ResponseWriter, r *http.Request) {
	key := tunnelKey(r.PathValue("name"), r.PathValue("kind"))
	a.mu.Lock()
	t, ok := a.tunnels[key]
	if ok && !t.used && peerName(r) == t.peer {
		t.used = true
		a.tunnels[key] = t
	} else {
		ok = false
	}
	a.mu.Unlock()
	if !ok {
		// Not registered, not for this peer, or already used once.
		httpError(w, fmt.Errorf("no page tunnel %s is open here for %s: %w", key, peerName(r), store.ErrNotFound))
		return
	}
	if r.Header.Get("Upgrade") != tunnelProto {
		httpError(w, badRequest("a tunnel needs Upgrade: %s", tunnelProto))
		return
	}
	local, err := dialIn(t.netns, t.addr)
	if err != nil {
		httpError(w, fmt.Errorf("dial CRIU at %s: %w", t.addr, err))
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		local.Close()
		a.log.Warn("tunnel hijack", "err", err)
		return
	}
	_ = conn.SetDeadline(time.Time{})
	if tc, ok := conn.(*tls.Conn); ok {
		if nc, ok := tc.NetConn().(*net.TCPConn); ok {
			_ = nc.SetKeepAliveConfig(keepalive)
		}
	}
	if _, err := io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "+tunnelProto+"\r\n\r\n"); err != nil {
		conn.Close()
		local.Close()
		return
	}
	remote := &bufConn{Conn: conn, r: brw.Reader}
	// CRIU's page server takes an orderly end of its connection for the
	// end of a successful lazy transfer, and kills the processes it kept
	// frozen. The peer's end (or this agent's death) must reach it as a
	// reset instead, which it takes for a failure: it resumes them.
	if tc, ok := local.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
		local = &resetOnEnd{TCPConn: tc}
	}
	a.mu.Lock()
	t.local = local
	a.tunnels[key] = t
	a.mu.Unlock()
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		_, _ = splice(remote, local, t.moved, nil)
	}()
}

// tunnelMoved is what CRIU sent through (name, kind) so far.
func (a *Agent) tunnelMoved(name, kind string) int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	if m := a.tunnels[tunnelKey(name, kind)].moved; m != nil {
		return m.Load()
	}
	return 0
}

// resetTunnel resets CRIU's side of (name, kind), if it was dialled.
func (a *Agent) resetTunnel(name, kind string) {
	a.mu.Lock()
	c := a.tunnels[tunnelKey(name, kind)].local
	a.mu.Unlock()
	if c != nil {
		_ = c.Close()
	}
}

const tunnelProto = "coat-pages"

// dialTunnel opens the peer's tunnel (name, kind).
func (a *Agent) dialTunnel(ctx context.Context, h store.Host, name, kind string) (net.Conn, error) {
	cfg := a.peerTLS(h.Name)
	cfg.NextProtos = []string{"http/1.1"}
	d := &tls.Dialer{NetDialer: a.peerDialer(), Config: cfg}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", h.API)
	if err != nil {
		return nil, fmt.Errorf("tunnel to %s: %w", h.Name, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	path := "/v1/tunnel/" + url.PathEscape(name) + "/" + url.PathEscape(kind)
	req := "POST " + path + " HTTP/1.1\r\nHost: " + h.API + "\r\nConnection: Upgrade\r\nUpgrade: " + tunnelProto + "\r\nContent-Length: 0\r\n\r\n"
	br := bufio.NewReader(c)
	if _, err := io.WriteString(c, req); err != nil {
		c.Close()
		return nil, fmt.Errorf("tunnel to %s: %w", h.Name, err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("tunnel to %s: %w", h.Name, err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		c.Close()
		return nil, fmt.Errorf("tunnel to %s: %s: %s", h.Name, resp.Status, b)
	}
	_ = c.SetDeadline(time.Time{})
	return &bufConn{Conn: c, r: br}, nil
}

// bufConn is a connection whose first bytes may sit in a reader.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// relay is a loopback listener for one CRIU connection, carried to the
// peer's tunnel.
type relay struct {
	ln    net.Listener
	port  int
	moved atomic.Int64 // bytes from the peer to CRIU
	done  chan error   // the relayed connection's end
	// beforeEOF, if set, runs when the peer's side ends, before CRIU
	// hears of it.
	beforeEOF func()
	// images, if set, is the lazy restore's image directory: the relay
	// then fetches pages ahead of CRIU's lazy-pages daemon (prefetch.go).
	images    string
	begin     chan struct{} // closed by Begin
	beginOnce sync.Once
}

// Begin lets a lazy relay start fetching ahead (after the restore).
func (rl *relay) Begin() { rl.beginOnce.Do(func() { close(rl.begin) }) }

// openRelay listens on 127.0.0.1 for CRIU; its one connection goes to the
// peer's tunnel (name, kind). With images set, the connection is the
// lazy-pages daemon's and the relay prefetches from that image's pagemaps.
func (a *Agent) openRelay(ctx context.Context, h store.Host, name, kind string, beforeEOF func(), images string) (*relay, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	rl := &relay{ln: ln, port: ln.Addr().(*net.TCPAddr).Port, done: make(chan error, 1), beforeEOF: beforeEOF, images: images, begin: make(chan struct{})}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		local, err := ln.Accept()
		ln.Close()
		if err != nil {
			rl.done <- err
			return
		}
		remote, err := a.dialTunnel(ctx, h, name, kind)
		if err != nil {
			local.Close()
			rl.done <- err
			return
		}
		if rl.images != "" {
			p := newPageProxy(local, remote, rl.images, &rl.moved, rl.beforeEOF)
			go func() {
				select {
				case <-rl.begin:
					close(p.begin)
				case <-p.stop:
				}
			}()
			p.noted = func(id uint64, ranges int, err error) {
				a.log.Info("lazy pages: prefetch", "container", name, "image", id, "lazy_ranges", ranges, "err", err)
			}
			p.noteStuck = func(q psIov, inFlight, reasked, outstanding int) {
				a.log.Warn("lazy pages: an answer waited long", "container", name, "image", q.img, "vaddr", fmt.Sprintf("%#x", q.vaddr),
					"pages", q.nr, "in_flight", inFlight, "asked_again", reasked, "outstanding_requests", outstanding)
			}
			err = p.run()
			a.log.Info("lazy pages relayed", "container", name, "bytes", rl.moved.Load(), "prefetched_bytes", p.prefetched.Load(),
				"answered_here", p.local.Load(), "forwarded", p.forwarded.Load(), "clamped", p.clamped.Load(), "asked_again_pages", p.repeated.Load(),
				"longest_wait_ms", time.Duration(p.longestWait.Load()).Milliseconds(), "err", err)
		} else {
			_, err = splice(local, remote, &rl.moved, rl.beforeEOF)
		}
		rl.done <- err
	}()
	return rl, nil
}

// Close stops waiting for CRIU's connection (a relayed connection goes on).
func (rl *relay) Close() { rl.ln.Close() }

// splice copies both ways until both directions end, and returns the
// first error that was not an orderly end. fromB counts b's bytes to a;
// bEnded, if set, runs when b's side ends, before a hears of it.
func splice(a, b net.Conn, fromB *atomic.Int64, bEnded func()) (int64, error) {
	var wg sync.WaitGroup
	errs := make([]error, 2)
	var n int64
	cp := func(i int, dst, src net.Conn, count *atomic.Int64, ended func()) {
		defer wg.Done()
		buf := make([]byte, 256<<10)
		for {
			m, rerr := src.Read(buf)
			if m > 0 {
				if _, werr := dst.Write(buf[:m]); werr != nil {
					errs[i] = werr
					break
				}
				if count != nil {
					count.Add(int64(m))
				}
			}
			if rerr != nil {
				if !errors.Is(rerr, io.EOF) {
					errs[i] = rerr
				}
				break
			}
		}
		if ended != nil {
			ended()
		}
		closeWrite(dst)
		if errs[i] != nil {
			// Tear the other direction down too.
			a.Close()
			b.Close()
		}
	}
	wg.Add(2)
	go cp(0, b, a, nil, nil)
	go cp(1, a, b, fromB, bEnded)
	wg.Wait()
	a.Close()
	b.Close()
	if fromB != nil {
		n = fromB.Load()
	}
	return n, errors.Join(errs[0], errs[1])
}

// resetOnEnd is the connection to CRIU's page server. Its end is a reset
// (SO_LINGER 0), unless the lazy-pages daemon's last request, PS_IOV_CLOSE
// (or FORCE_CLOSE), went through it: then CRIU has answered that all is
// done and waits for an orderly close, which it gets. Requests are
// CRIU's struct page_server_iov: a u32 command (little-endian), padding,
// three u64s: 32 bytes.
type resetOnEnd struct {
	*net.TCPConn
	req    [psIovSize]byte
	n      int
	closed bool // the last request was a close
}

const (
	psIovSize       = 32
	psIovClose      = 0x1023
	psIovForceClose = 0x1024
)

func (c *resetOnEnd) Write(p []byte) (int, error) {
	for _, b := range p {
		c.req[c.n] = b
		if c.n++; c.n == psIovSize {
			cmd := binary.LittleEndian.Uint32(c.req[:4])
			c.closed = cmd == psIovClose || cmd == psIovForceClose
			c.n = 0
		}
	}
	return c.TCPConn.Write(p)
}

func closeWrite(c net.Conn) {
	switch c := c.(type) {
	case *resetOnEnd:
		if c.closed && c.n == 0 {
			_ = c.CloseWrite()
			return
		}
		_ = c.Close()
	case *net.TCPConn:
		_ = c.CloseWrite()
	case *bufConn:
		closeWrite(c.Conn)
	case *tls.Conn:
		_ = c.CloseWrite()
	}
}

// dialIn connects to addr from inside the network namespace at netns (the
// agent's own if ""); the connection stays in that namespace.
func dialIn(netns, addr string) (net.Conn, error) {
	if netns == "" {
		return net.DialTimeout("tcp", addr, 5*time.Second)
	}
	var c net.Conn
	err := overlay.InNetNS(netns, func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr, 5*time.Second)
		return err
	})
	return c, err
}
