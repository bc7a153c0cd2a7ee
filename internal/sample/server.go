package sample

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ServerConfig configures a Server.
type ServerConfig struct {
	Port    int       // stream (echo) port; 0 picks a free port
	CtlPort int       // control port; 0 picks a free port
	DataDir string    // directory that put/get read and write
	Log     io.Writer // connection log, one line per event; nil discards
}

// Stats is the server's in-memory state, as returned by the stats command.
type Stats struct {
	Connections uint64 `json:"connections"`
	Active      int64  `json:"active"`
	Bytes       uint64 `json:"bytes"`
	Errors      uint64 `json:"errors"`
	Counter     int64  `json:"counter"`
	PID         int    `json:"pid"`
	Started     string `json:"started"`
}

// Server is the pattern-verifying echo server plus its control endpoint.
type Server struct {
	cfg     ServerConfig
	log     *log.Logger
	ln      net.Listener
	ctl     net.Listener
	started time.Time

	connections atomic.Uint64
	bytes       atomic.Uint64
	errors      atomic.Uint64
	active      atomic.Int64
	counter     atomic.Int64
	closing     atomic.Bool

	mu    sync.Mutex // guards conns and serializes put
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// NewServer listens on the stream and control ports (all addresses).
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.DataDir == "" {
		cfg.DataDir = "/data"
	}
	w := cfg.Log
	if w == nil {
		w = io.Discard
	}
	ln, err := net.Listen("tcp", ":"+strconv.Itoa(cfg.Port))
	if err != nil {
		return nil, fmt.Errorf("listen stream port %d: %w", cfg.Port, err)
	}
	ctl, err := net.Listen("tcp", ":"+strconv.Itoa(cfg.CtlPort))
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen control port %d: %w", cfg.CtlPort, err)
	}
	return &Server{
		cfg:     cfg,
		log:     log.New(w, "", log.LstdFlags|log.Lmicroseconds|log.LUTC),
		ln:      ln,
		ctl:     ctl,
		started: time.Now(),
		conns:   make(map[net.Conn]struct{}),
	}, nil
}

// Addr is the stream listener's address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// CtlAddr is the control listener's address.
func (s *Server) CtlAddr() net.Addr { return s.ctl.Addr() }

// Stats returns a snapshot of the server's in-memory state.
func (s *Server) Stats() Stats {
	return Stats{
		Connections: s.connections.Load(),
		Active:      s.active.Load(),
		Bytes:       s.bytes.Load(),
		Errors:      s.errors.Load(),
		Counter:     s.counter.Load(),
		PID:         os.Getpid(),
		Started:     s.started.Format(time.RFC3339),
	}
}

// Serve accepts connections until ctx is cancelled, then closes the
// listeners and every open connection and returns nil once all handlers
// have finished.
func (s *Server) Serve(ctx context.Context) error {
	s.log.Printf("listening stream=%s ctl=%s data=%s pid=%d",
		s.ln.Addr(), s.ctl.Addr(), s.cfg.DataDir, os.Getpid())
	var ids atomic.Uint64
	s.wg.Add(2)
	go s.acceptLoop(s.ln, func(c net.Conn) { s.handleStream(c, ids.Add(1)) })
	go s.acceptLoop(s.ctl, s.handleCtl)
	<-ctx.Done()
	s.closing.Store(true)
	s.ln.Close()
	s.ctl.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	s.log.Printf("shutdown connections=%d bytes=%d errors=%d",
		s.connections.Load(), s.bytes.Load(), s.errors.Load())
	return nil
}

func (s *Server) acceptLoop(ln net.Listener, handle func(net.Conn)) {
	defer s.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || s.closing.Load() {
				return
			}
			s.log.Printf("accept on %s: %v", ln.Addr(), err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if !s.track(c) {
			c.Close()
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.untrack(c)
			handle(c)
		}()
	}
}

// track registers c so that Serve can close it; it reports false when the
// server is already shutting down.
func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing.Load() {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	c.Close()
}

// handleStream verifies and echoes one stream connection.
func (s *Server) handleStream(c net.Conn, id uint64) {
	s.connections.Add(1)
	s.active.Add(1)
	defer s.active.Add(-1)
	start := time.Now()
	s.log.Printf("open conn=%d remote=%s", id, c.RemoteAddr())
	buf := make([]byte, 64<<10)
	var off int64
	firstBad := int64(-1)
	var err error
	for {
		var n int
		n, err = c.Read(buf)
		if n > 0 {
			if firstBad < 0 {
				if _, i := CheckPattern(buf[:n], off); i >= 0 {
					firstBad = off + int64(i)
					s.errors.Add(1)
					s.log.Printf("pattern error conn=%d offset=%d", id, firstBad)
				}
			}
			off += int64(n)
			s.bytes.Add(uint64(n))
			if _, werr := c.Write(buf[:n]); werr != nil && err == nil {
				err = werr
			}
		}
		if err != nil {
			break
		}
	}
	reason := "eof"
	switch {
	case errors.Is(err, io.EOF):
	case s.closing.Load():
		reason = "shutdown"
	default:
		reason = err.Error()
	}
	s.log.Printf("close conn=%d remote=%s bytes=%d first_bad_offset=%d duration=%s reason=%q",
		id, c.RemoteAddr(), off, firstBad, time.Since(start).Round(time.Millisecond), reason)
}

// handleCtl serves the line protocol: one request line, one reply line.
func (s *Server) handleCtl(c net.Conn) {
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 4096), 1<<20)
	w := bufio.NewWriter(c)
	for sc.Scan() {
		reply := s.Command(sc.Text())
		if _, err := w.WriteString(reply + "\n"); err != nil {
			return
		}
		if err := w.Flush(); err != nil {
			return
		}
	}
}

// Command executes one control line and returns the one-line reply.
// Commands: ping, stats, incr, put KEY VALUE, get KEY.
func (s *Server) Command(line string) string {
	cmd, rest, _ := strings.Cut(strings.TrimSpace(line), " ")
	rest = strings.TrimLeft(rest, " \t")
	switch strings.ToLower(cmd) {
	case "ping":
		return "pong"
	case "stats":
		b, err := json.Marshal(s.Stats())
		if err != nil {
			return "ERR " + err.Error()
		}
		return string(b)
	case "incr":
		return strconv.FormatInt(s.counter.Add(1), 10)
	case "put":
		key, value, _ := strings.Cut(rest, " ")
		if err := s.put(key, value); err != nil {
			return "ERR " + err.Error()
		}
		return "ok"
	case "get":
		v, err := s.get(strings.TrimSpace(rest))
		if err != nil {
			return "ERR " + err.Error()
		}
		return v
	case "":
		return "ERR empty command"
	default:
		return fmt.Sprintf("ERR unknown command %q", cmd)
	}
}

func validKey(key string) error {
	if key == "" || key == "." || key == ".." || len(key) > 255 {
		return fmt.Errorf("invalid key %q", key)
	}
	for _, r := range key {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' ||
			r == '.' || r == '_' || r == '-'
		if !ok {
			return fmt.Errorf("invalid key %q: only [A-Za-z0-9._-] allowed", key)
		}
	}
	return nil
}

// put writes DATA/KEY atomically (temp file, fsync, rename).
func (s *Server) put(key, value string) error {
	if err := validKey(key); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := os.MkdirAll(s.cfg.DataDir, 0o755); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	f, err := os.CreateTemp(s.cfg.DataDir, ".put-*")
	if err != nil {
		return fmt.Errorf("create temp file: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if _, err := f.WriteString(value); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", key, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", key, err)
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return fmt.Errorf("chmod %s: %w", key, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", key, err)
	}
	if err := os.Rename(tmp, filepath.Join(s.cfg.DataDir, key)); err != nil {
		return fmt.Errorf("rename %s: %w", key, err)
	}
	return nil
}

// get returns DATA/KEY on one line (newlines are escaped as \n).
func (s *Server) get(key string) (string, error) {
	if err := validKey(key); err != nil {
		return "", err
	}
	b, err := os.ReadFile(filepath.Join(s.cfg.DataDir, key))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", key, err)
	}
	v := strings.TrimRight(string(b), "\r\n")
	return strings.ReplaceAll(v, "\n", `\n`), nil
}
