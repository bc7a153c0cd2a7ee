package sample

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"time"
)

// ConnsOptions configures Conns: many connections to the echo server,
// each sending a short line of the pattern every Interval.
type ConnsOptions struct {
	Addr     string
	Conns    int           // connections; default 100
	Interval time.Duration // between a connection's lines; default 100 ms
	Size     int           // bytes per line; default 64
	// Duration of the run once every connection is open; 0 runs until
	// ctx is cancelled.
	Duration     time.Duration
	DialTimeout  time.Duration // default 10 s
	DrainTimeout time.Duration // wait for echoes in flight when stopping; default 30 s
	// Ready, if set, is called once every connection is open (or failed
	// to open), before the first line is sent.
	Ready func(opened int)
}

// ConnsReport is the result of one Conns run.
type ConnsReport struct {
	Addr     string `json:"addr"`
	Conns    int    `json:"conns"`
	Opened   int    `json:"opened"`
	Survived int    `json:"survived"` // opened, every line echoed intact, no error
	Sent     int64  `json:"sent"`     // lines
	Received int64  `json:"received"` // lines echoed
	Errors   int64  `json:"errors"`   // echoed lines that differ from the pattern
	// MaxStallMs is the longest any line waited for its echo, over all
	// connections; StallP50Ms/StallP99Ms are percentiles of the
	// connections' own longest waits.
	MaxStallMs float64   `json:"max_stall_ms"`
	StallP50Ms float64   `json:"stall_p50_ms"`
	StallP99Ms float64   `json:"stall_p99_ms"`
	StallAtMs  float64   `json:"stall_at_ms"` // when the longest wait began, ms since the lines started
	StallsMs   []float64 `json:"stalls_ms"`   // each connection's longest wait
	FirstError string    `json:"first_error"`
	Failures   int       `json:"failures"`
	DurationMs int64     `json:"duration_ms"`
}

// OK reports whether every connection opened and survived intact.
func (r *ConnsReport) OK() bool {
	return r.Opened == r.Conns && r.Survived == r.Conns && r.Errors == 0
}

type connResult struct {
	sent, received, errors int64
	stall                  time.Duration
	stallAt                time.Time
	err                    string
}

// Conns opens opts.Conns connections to the sample echo server, then has
// each send opts.Size bytes of the stream pattern every opts.Interval
// (starts spread evenly over one interval) and wait for the echo.
func Conns(ctx context.Context, opts ConnsOptions) *ConnsReport {
	if opts.Conns <= 0 {
		opts.Conns = 100
	}
	if opts.Interval <= 0 {
		opts.Interval = 100 * time.Millisecond
	}
	if opts.Size <= 0 {
		opts.Size = 64
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = 10 * time.Second
	}
	if opts.DrainTimeout <= 0 {
		opts.DrainTimeout = 30 * time.Second
	}
	begin := time.Now()
	rep := &ConnsReport{Addr: opts.Addr, Conns: opts.Conns}
	conns := make([]net.Conn, opts.Conns)
	res := make([]connResult, opts.Conns)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			d := net.Dialer{Timeout: opts.DialTimeout}
			c, err := d.DialContext(ctx, "tcp", opts.Addr)
			if err != nil {
				res[i].err = fmt.Sprintf("conn %d: dial: %v", i, err)
				return
			}
			conns[i] = c
		}()
	}
	wg.Wait()
	for _, c := range conns {
		if c != nil {
			rep.Opened++
		}
	}
	if opts.Ready != nil {
		opts.Ready(rep.Opened)
	}

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	if opts.Duration > 0 {
		var c2 context.CancelFunc
		runCtx, c2 = context.WithTimeout(runCtx, opts.Duration)
		defer c2()
	}
	start := time.Now()
	done := make(chan struct{})
	for i, c := range conns {
		if c == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			offset := opts.Interval * time.Duration(i) / time.Duration(opts.Conns)
			lineLoop(runCtx, c, opts, start.Add(offset), &res[i], i)
		}()
	}
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-runCtx.Done():
		t := time.NewTimer(opts.DrainTimeout)
		select {
		case <-done:
		case <-t.C:
			for _, c := range conns {
				if c != nil {
					c.SetDeadline(time.Now())
				}
			}
			<-done
		}
		t.Stop()
	}
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}

	var stallAt time.Time
	var worst time.Duration
	for i, r := range res {
		rep.Sent += r.sent
		rep.Received += r.received
		rep.Errors += r.errors
		if conns[i] != nil {
			rep.StallsMs = append(rep.StallsMs, float64(r.stall.Microseconds())/1000)
			if r.err == "" && r.errors == 0 && r.sent == r.received {
				rep.Survived++
			}
		}
		if r.err != "" {
			rep.Failures++
			if rep.FirstError == "" {
				rep.FirstError = r.err
			}
		}
		if r.stall > worst {
			worst, stallAt = r.stall, r.stallAt
		}
	}
	sorted := slices.Sorted(slices.Values(rep.StallsMs))
	rep.MaxStallMs = float64(worst.Microseconds()) / 1000
	rep.StallP50Ms, rep.StallP99Ms = nearestRank(sorted, 50), nearestRank(sorted, 99)
	if worst > 0 {
		rep.StallAtMs = float64(stallAt.Sub(start).Microseconds()) / 1000
	}
	rep.DurationMs = time.Since(begin).Milliseconds()
	return rep
}

// lineLoop is one connection: a line every interval from first on, each
// echo read and checked before the next line (a late echo delays the next
// line; there is no burst to catch up).
func lineLoop(ctx context.Context, c net.Conn, opts ConnsOptions, first time.Time, r *connResult, id int) {
	out := make([]byte, opts.Size)
	in := make([]byte, opts.Size)
	var off int64
	next := first
	for {
		if d := time.Until(next); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		if ctx.Err() != nil {
			return
		}
		FillPattern(out, off)
		sent := time.Now()
		if _, err := c.Write(out); err != nil {
			r.err = fmt.Sprintf("conn %d: write: %v", id, err)
			return
		}
		r.sent++
		_, err := io.ReadFull(c, in)
		lat := time.Since(sent)
		if lat > r.stall {
			r.stall, r.stallAt = lat, sent
		}
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				r.err = fmt.Sprintf("conn %d: read: connection closed by peer (EOF)", id)
			} else {
				r.err = fmt.Sprintf("conn %d: read: %v", id, err)
			}
			return
		}
		r.received++
		if bad, _ := CheckPattern(in, off); bad > 0 {
			r.errors++
		}
		off += int64(opts.Size)
		next = next.Add(opts.Interval)
		if now := time.Now(); now.After(next) {
			next = now
		}
	}
}
