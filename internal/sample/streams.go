package sample

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"
)

// StreamsOptions configures Streams: one stream (as Stream) to each of
// many servers from one process, so that a lab's single client node can
// stream to a hundred containers without a hundred processes.
type StreamsOptions struct {
	Addrs []string // server stream addresses, IP:PORT
	// Duration of the streams once every one is connected; 0 sends until
	// ctx is cancelled.
	Duration     time.Duration
	Rate         int64         // bytes per second, per stream
	Chunk        int           // bytes per write; default 1024
	DrainTimeout time.Duration // per stream; default 30 s
	// Wait bounds the dialling: a refused or failed dial is retried
	// (a container just started may not listen yet) until Wait has
	// passed; default 30 s.
	Wait time.Duration
	// Ready, if set, is called once every stream is connected (or failed
	// to connect), before the first byte is sent.
	Ready func(connected int)
}

// StreamsReport is the result of one Streams run: one Report per address,
// in the order given.
type StreamsReport struct {
	Streams   []*Report `json:"streams"`
	Connected int       `json:"connected"`
	OK        bool      `json:"ok"` // every stream connected and clean
}

// Streams connects to every address (retrying refused dials until
// opts.Wait), then streams to all of them at once until opts.Duration or
// ctx ends, and reports each stream.
func Streams(ctx context.Context, opts StreamsOptions) *StreamsReport {
	if opts.Wait <= 0 {
		opts.Wait = 30 * time.Second
	}
	rep := &StreamsReport{Streams: make([]*Report, len(opts.Addrs))}
	conns := make([]net.Conn, len(opts.Addrs))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	deadline := time.Now().Add(opts.Wait)
	for i, addr := range opts.Addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			c, err := dialRetry(ctx, addr, deadline)
			if err != nil {
				rep.Streams[i] = &Report{Addr: addr, FirstError: -1, ConnectionError: "dial: " + err.Error()}
				return
			}
			conns[i] = c
		}()
	}
	wg.Wait()
	for _, c := range conns {
		if c != nil {
			rep.Connected++
		}
	}
	if opts.Ready != nil {
		opts.Ready(rep.Connected)
	}
	for i, c := range conns {
		if c == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep.Streams[i] = StreamConn(ctx, c, StreamOptions{Addr: opts.Addrs[i], Duration: opts.Duration,
				Rate: opts.Rate, Chunk: opts.Chunk, DrainTimeout: opts.DrainTimeout})
		}()
	}
	wg.Wait()
	rep.OK = rep.Connected == len(opts.Addrs)
	for _, r := range rep.Streams {
		rep.OK = rep.OK && r.OK()
	}
	return rep
}

// dialRetry dials addr until it connects or deadline passes, every
// 100 ms; each attempt is bounded by what is left.
func dialRetry(ctx context.Context, addr string, deadline time.Time) (net.Conn, error) {
	for {
		d := net.Dialer{Deadline: deadline}
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			return c, nil
		}
		if ctx.Err() != nil || time.Until(deadline) < 100*time.Millisecond {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// ParseAddrs splits a comma- or whitespace-separated address list; an
// address without a port gets port.
func ParseAddrs(s string, port int) ([]string, error) {
	var out []string
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\n' || r == '\t' }) {
		if _, _, err := net.SplitHostPort(f); err != nil {
			if net.ParseIP(f) == nil {
				return nil, fmt.Errorf("address %q: want IP or IP:PORT", f)
			}
			f = net.JoinHostPort(f, fmt.Sprint(port))
		}
		out = append(out, f)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no addresses")
	}
	return out, nil
}
