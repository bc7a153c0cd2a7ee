package sample

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"
)

// RedisLoadOptions configures RedisLoad.
type RedisLoadOptions struct {
	Addr      string // redis address, IP:PORT
	Size      int64  // data set size in bytes: Size/ValueSize keys (at least 1)
	ValueSize int    // bytes per value; default 64 KiB
	Seed      uint64 // values are a function of (Seed, key, version)

	Fill bool // SET every key to its version 0 first
	// CheckAll GETs every key once and checks it (instead of the load).
	CheckAll bool
	Load     bool // then GET and SET, checking every GET
	// Duration of the load; 0 runs until ctx is cancelled.
	Duration time.Duration
	// Rate is requests per second over all connections; <= 0 is as fast
	// as redis answers.
	Rate  float64
	Conns int // load connections (each owns a share of the keys); default 1

	DialTimeout    time.Duration // default 10 s
	RequestTimeout time.Duration // one request's bound; default 5 min
	DrainTimeout   time.Duration // wait for requests in flight when stopping; default 30 s
	// Versions, if not nil, holds each key's current version (len Keys())
	// on entry, e.g. from an earlier run, and on return; nil means every
	// key is at version 0 (just filled).
	Versions []uint32
	// Ready, if set, is called when the load's connections are open.
	Ready func()
	// Timeline, if set, gets one CSV row per load request:
	// t_ms (send time since start), latency_ms, op (G or S), conn.
	Timeline io.Writer
}

// RedisReport is the result of one RedisLoad run.
type RedisReport struct {
	Addr      string  `json:"addr"`
	Keys      int     `json:"keys"`
	ValueSize int     `json:"value_size"`
	FillBytes int64   `json:"fill_bytes"`
	FillMs    float64 `json:"fill_ms"`
	Requests  int64   `json:"requests"`
	Gets      int64   `json:"gets"`
	Sets      int64   `json:"sets"`
	// Errors counts GETs whose value differs from the one last SET (or
	// is missing) and error replies.
	Errors     int64  `json:"errors"`
	FirstError string `json:"first_error"`
	// ConnectionError is the first failure of a connection (dial, I/O,
	// timeout, or a request still unanswered when the run stopped).
	ConnectionError string  `json:"connection_error"`
	P50Ms           float64 `json:"p50_ms"`
	P99Ms           float64 `json:"p99_ms"`
	// MaxStallMs is the longest any request waited for its reply (each
	// connection has one request in flight at a time).
	MaxStallMs float64 `json:"max_stall_ms"`
	// StallAtMs is when (ms since the load started) that request was sent.
	StallAtMs  float64 `json:"stall_at_ms"`
	DurationMs int64   `json:"duration_ms"`
}

// OK reports whether every request was answered with the right value.
func (r *RedisReport) OK() bool { return r.ConnectionError == "" && r.Errors == 0 }

// RedisKey is the name of key i.
func RedisKey(i int) string { return fmt.Sprintf("coat:%08d", i) }

// RedisValue fills buf with the value of key i at version v: bytes from a
// ChaCha8 stream seeded with (seed, i, v), i.e. incompressible and
// recomputable by any client that knows the seed.
func RedisValue(buf []byte, seed uint64, i int, v uint32) {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[0:], seed)
	binary.LittleEndian.PutUint64(s[8:], uint64(i))
	binary.LittleEndian.PutUint32(s[16:], v)
	copy(s[20:], "coat-redis-v")
	rand.NewChaCha8(s).Read(buf)
}

func (o *RedisLoadOptions) defaults() {
	if o.ValueSize <= 0 {
		o.ValueSize = 64 << 10
	}
	if o.Conns <= 0 {
		o.Conns = 1
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = 10 * time.Second
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 5 * time.Minute
	}
	if o.DrainTimeout <= 0 {
		o.DrainTimeout = 30 * time.Second
	}
}

// Keys is the number of keys of the data set.
func (o RedisLoadOptions) Keys() int {
	vs := o.ValueSize
	if vs <= 0 {
		vs = 64 << 10
	}
	return max(1, int(o.Size/int64(vs)))
}

// RedisLoad fills redis and/or runs the checking GET/SET load.
func RedisLoad(ctx context.Context, opts RedisLoadOptions) *RedisReport {
	opts.defaults()
	rep := &RedisReport{Addr: opts.Addr, Keys: opts.Keys(), ValueSize: opts.ValueSize}
	start := time.Now()
	defer func() { rep.DurationMs = time.Since(start).Milliseconds() }()
	if opts.Fill {
		t := time.Now()
		n, err := redisFill(ctx, opts, rep.Keys)
		rep.FillBytes, rep.FillMs = n, float64(time.Since(t).Microseconds())/1000
		if err != nil {
			rep.ConnectionError = "fill: " + err.Error()
			return rep
		}
	}
	if opts.CheckAll {
		redisCheckAll(ctx, opts, rep)
		return rep
	}
	if opts.Load {
		redisLoadRun(ctx, opts, rep)
	}
	return rep
}

// redisFill SETs every key to version 0, eight commands in flight.
func redisFill(ctx context.Context, opts RedisLoadOptions, keys int) (int64, error) {
	d := net.Dialer{Timeout: opts.DialTimeout}
	c, err := d.DialContext(ctx, "tcp", opts.Addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	rc := newRespConn(c)
	val := make([]byte, opts.ValueSize)
	var reply []byte
	var n int64
	const batch = 8
	for i := 0; i < keys; i += batch {
		c.SetDeadline(time.Now().Add(opts.RequestTimeout))
		j := min(keys, i+batch)
		for k := i; k < j; k++ {
			RedisValue(val, opts.Seed, k, 0)
			if err := rc.writeCommand([]byte("SET"), []byte(RedisKey(k)), val); err != nil {
				return n, err
			}
		}
		if err := rc.flush(); err != nil {
			return n, err
		}
		for k := i; k < j; k++ {
			if reply, err = rc.readReply(reply); err != nil {
				return n, fmt.Errorf("SET %s: %w", RedisKey(k), err)
			}
			n += int64(opts.ValueSize)
		}
	}
	return n, ctx.Err()
}

// loadStats collects the load's requests from every connection.
type loadStats struct {
	mu        sync.Mutex
	start     time.Time
	lat       []float64
	gets      int64
	sets      int64
	errors    int64
	firstErr  string
	connErr   string
	maxStall  float64
	stallAt   float64
	timeline  io.Writer
	timelineE error
}

func (s *loadStats) request(sent time.Time, lat time.Duration, op byte, conn int) {
	ms := float64(lat.Microseconds()) / 1000
	at := float64(sent.Sub(s.start).Microseconds()) / 1000
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lat = append(s.lat, ms)
	if op == 'G' {
		s.gets++
	} else {
		s.sets++
	}
	if ms > s.maxStall {
		s.maxStall, s.stallAt = ms, at
	}
	if s.timeline != nil && s.timelineE == nil {
		_, s.timelineE = fmt.Fprintf(s.timeline, "%.3f,%.3f,%c,%d\n", at, ms, op, conn)
	}
}

func (s *loadStats) fail(msg string) {
	s.mu.Lock()
	s.errors++
	if s.firstErr == "" {
		s.firstErr = msg
	}
	s.mu.Unlock()
}

func (s *loadStats) connFail(msg string) {
	s.mu.Lock()
	if s.connErr == "" {
		s.connErr = msg
	}
	s.mu.Unlock()
}

// redisLoadRun runs opts.Conns connections, each paced to its share of
// opts.Rate, each GETting or SETting (half and half, at random) keys of
// its own share and checking every GET against its last SET.
func redisLoadRun(ctx context.Context, opts RedisLoadOptions, rep *RedisReport) {
	versions := opts.Versions
	if len(versions) != rep.Keys {
		versions = make([]uint32, rep.Keys)
	}
	st := &loadStats{start: time.Now(), timeline: opts.Timeline}
	if st.timeline != nil {
		fmt.Fprintln(st.timeline, "t_ms,latency_ms,op,conn")
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	if opts.Duration > 0 {
		var c2 context.CancelFunc
		runCtx, c2 = context.WithTimeout(runCtx, opts.Duration)
		defer c2()
	}
	conns := make([]net.Conn, opts.Conns)
	var wg sync.WaitGroup
	for ci := range opts.Conns {
		if ci >= rep.Keys {
			break
		}
		d := net.Dialer{Timeout: opts.DialTimeout}
		c, err := d.DialContext(ctx, "tcp", opts.Addr)
		if err != nil {
			st.connFail(fmt.Sprintf("conn %d: dial: %v", ci, err))
			break
		}
		conns[ci] = c
		wg.Add(1)
		go func() {
			defer wg.Done()
			loadConn(runCtx, opts, st, c, ci, versions)
		}()
	}
	if opts.Ready != nil {
		opts.Ready()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-runCtx.Done():
		// Let the requests in flight finish; one that does not is a failure.
		t := time.NewTimer(opts.DrainTimeout)
		defer t.Stop()
		select {
		case <-done:
		case <-t.C:
			st.connFail(fmt.Sprintf("a request was still unanswered %s after the load stopped", opts.DrainTimeout))
			for _, c := range conns {
				if c != nil {
					c.SetDeadline(time.Now())
				}
			}
			<-done
		}
	}
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
	if opts.Versions != nil {
		copy(opts.Versions, versions)
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	rep.Requests = int64(len(st.lat))
	rep.Gets, rep.Sets = st.gets, st.sets
	rep.Errors, rep.FirstError = st.errors, st.firstErr
	rep.ConnectionError = st.connErr
	if rep.ConnectionError == "" && st.timelineE != nil {
		rep.ConnectionError = "timeline: " + st.timelineE.Error()
	}
	slices.Sort(st.lat)
	rep.P50Ms, rep.P99Ms = nearestRank(st.lat, 50), nearestRank(st.lat, 99)
	rep.MaxStallMs, rep.StallAtMs = st.maxStall, st.stallAt
}

// nearestRank is the p-th percentile of sorted v (nearest rank), 0 for none.
func nearestRank(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	r := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[min(max(r, 1), len(sorted))-1]
}

// loadConn runs one connection on its own keys (ci, ci+Conns, ...): no
// two connections touch the same entry of versions.
func loadConn(ctx context.Context, opts RedisLoadOptions, st *loadStats, c net.Conn, ci int, versions []uint32) {
	keys := len(versions)
	rc := newRespConn(c)
	rng := rand.New(rand.NewPCG(opts.Seed, uint64(ci)+1))
	// This connection's keys: ci, ci+Conns, ci+2*Conns, ...
	mine := (keys - ci + opts.Conns - 1) / opts.Conns
	if mine <= 0 {
		return
	}
	val := make([]byte, opts.ValueSize)
	var reply []byte
	var interval time.Duration
	if opts.Rate > 0 {
		interval = time.Duration(float64(opts.Conns) / opts.Rate * float64(time.Second))
	}
	next := time.Now()
	for {
		if interval > 0 {
			now := time.Now()
			if next.After(now) {
				t := time.NewTimer(next.Sub(now))
				select {
				case <-ctx.Done():
					t.Stop()
					return
				case <-t.C:
				}
			} else if now.Sub(next) > interval {
				next = now // behind (a stall): no burst to catch up
			}
			next = next.Add(interval)
		}
		if ctx.Err() != nil {
			return
		}
		j := rng.IntN(mine)
		k := ci + j*opts.Conns
		key := []byte(RedisKey(k))
		op := byte('G')
		if rng.IntN(2) == 0 {
			op = 'S'
			RedisValue(val, opts.Seed, k, versions[k]+1)
			rc.writeCommand([]byte("SET"), key, val)
		} else {
			rc.writeCommand([]byte("GET"), key)
		}
		sent := time.Now()
		c.SetDeadline(sent.Add(opts.RequestTimeout))
		err := rc.flush()
		if err == nil {
			reply, err = rc.readReply(reply)
		}
		lat := time.Since(sent)
		var re redisError
		switch {
		case err == nil || errors.Is(err, errNil) || errors.As(err, &re):
			st.request(sent, lat, op, ci)
		default:
			st.connFail(fmt.Sprintf("conn %d: %c %s after %s: %v", ci, op, key, lat.Round(time.Millisecond), err))
			return
		}
		switch {
		case errors.As(err, &re):
			st.fail(fmt.Sprintf("%c %s: %v", op, key, err))
		case op == 'S':
			versions[k]++
		case errors.Is(err, errNil):
			st.fail(fmt.Sprintf("GET %s: missing", key))
		default:
			RedisValue(val, opts.Seed, k, versions[k])
			if !bytes.Equal(reply, val) {
				st.fail(fmt.Sprintf("GET %s: %d bytes, not version %d's %d bytes", key, len(reply), versions[k], len(val)))
			}
		}
	}
}

// ParseSize reads a byte count such as 65536, 64KiB, 256MiB or 1GiB.
func ParseSize(s string) (int64, error) {
	if n, err := strconv.ParseInt(s, 10, 64); err == nil && n >= 0 {
		return n, nil
	}
	n, err := ParseRate(s)
	if err != nil {
		return 0, fmt.Errorf("invalid size %q", s)
	}
	return n, nil
}
