package sample

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// signalContext is cancelled by the first SIGINT/SIGTERM; a second one
// gets the default handling (aborts a drain that takes too long).
func signalContext() (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	context.AfterFunc(ctx, stop)
	return ctx, stop
}

func printJSONOr(w io.Writer, v any, asJSON bool, text func() string) error {
	if asJSON {
		b, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("encode report: %w", err)
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	_, err := io.WriteString(w, text())
	return err
}

func result(ok bool) string {
	if ok {
		return "OK"
	}
	return "FAIL"
}

func runConns(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("conns", stderr)
	addr := fs.String("addr", "", "server stream address IP:PORT (required)")
	n := fs.Int("conns", 100, "connections")
	interval := fs.Duration("interval", 100*time.Millisecond, "time between a connection's lines")
	size := fs.Int("size", 64, "bytes per line")
	duration := fs.Duration("duration", 10*time.Second, "run time once all are open; 0 runs until SIGINT/SIGTERM")
	drain := fs.Duration("drain-timeout", 30*time.Second, "max wait for echoes in flight when stopping")
	asJSON := fs.Bool("json", false, "print the report as one JSON object")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *addr == "" || *n < 1 {
		fmt.Fprintln(stderr, "coat-sample conns: --addr is required and --conns must be >= 1")
		return 2
	}
	ctx, stop := signalContext()
	defer stop()
	rep := Conns(ctx, ConnsOptions{Addr: *addr, Conns: *n, Interval: *interval, Size: *size,
		Duration: *duration, DrainTimeout: *drain,
		Ready: func(opened int) { fmt.Fprintf(stderr, "ready %d\n", opened) }})
	err := printJSONOr(stdout, rep, *asJSON, func() string {
		return fmt.Sprintf("addr:         %s\nconns:        %d\nopened:       %d\nsurvived:     %d\nsent:         %d\nreceived:     %d\nerrors:       %d\nmax_stall_ms: %.3f\nstall_p99_ms: %.3f\nfirst_error:  %s\nresult:       %s\n",
			rep.Addr, rep.Conns, rep.Opened, rep.Survived, rep.Sent, rep.Received, rep.Errors,
			rep.MaxStallMs, rep.StallP99Ms, rep.FirstError, result(rep.OK()))
	})
	if err != nil {
		fmt.Fprintf(stderr, "coat-sample conns: %v\n", err)
		return 1
	}
	if !rep.OK() {
		return 1
	}
	return 0
}

func runRedisLoad(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("redis-load", stderr)
	addr := fs.String("addr", "", "redis address IP:PORT (required)")
	fill := fs.String("fill", "64MiB", "data set size, e.g. 64MiB, 1GiB")
	valueSize := fs.String("value-size", "64KiB", "bytes per value")
	seed := fs.Uint64("seed", 1, "seed of the values (a later run must use the same)")
	noFill := fs.Bool("no-fill", false, "the data set is already there (filled by an earlier run with the same --fill, --value-size and --seed)")
	fillOnly := fs.Bool("fill-only", false, "fill and stop")
	duration := fs.Duration("duration", 30*time.Second, "load time; 0 runs until SIGINT/SIGTERM")
	rate := fs.Float64("rate", 200, "requests per second over all connections; 0 is unpaced")
	conns := fs.Int("conns", 1, "load connections")
	reqTimeout := fs.Duration("request-timeout", 5*time.Minute, "bound on one request")
	drain := fs.Duration("drain-timeout", 30*time.Second, "max wait for requests in flight when stopping")
	asJSON := fs.Bool("json", false, "print the report as one JSON object")
	timeline := fs.String("timeline", "", "write t_ms,latency_ms,op,conn per load request to this file")
	checkAll := fs.Bool("check-all", false, "read every value once and check it (with --no-fill: the data set after a migration), instead of the load")
	state := fs.String("state", "", "keep each key's version in this file across runs (read if present, written at the end)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	size, err := ParseSize(*fill)
	vs, verr := ParseSize(*valueSize)
	if err = errors.Join(err, verr); err != nil || *addr == "" || vs < 1 || vs > 512<<20 || *noFill && *fillOnly {
		fmt.Fprintf(stderr, "coat-sample redis-load: want --addr, a --fill size, 1 B <= --value-size <= 512 MiB, not both --no-fill and --fill-only (%v)\n", err)
		return 2
	}
	opts := RedisLoadOptions{Addr: *addr, Size: size, ValueSize: int(vs), Seed: *seed,
		Fill: !*noFill, Load: !*fillOnly && !*checkAll, CheckAll: *checkAll, Duration: *duration, Rate: *rate, Conns: *conns,
		RequestTimeout: *reqTimeout, DrainTimeout: *drain,
		Ready: func() { fmt.Fprintln(stderr, "ready") }}
	var tl *bufio.Writer
	var tlFile *os.File
	if *timeline != "" && opts.Load {
		if tlFile, err = os.Create(*timeline); err != nil {
			fmt.Fprintf(stderr, "coat-sample redis-load: %v\n", err)
			return 1
		}
		tl = bufio.NewWriterSize(tlFile, 256<<10)
		opts.Timeline = tl
	}
	var st *redisState
	if *state != "" {
		if st, err = loadRedisState(*state, opts); err != nil {
			fmt.Fprintf(stderr, "coat-sample redis-load: %v\n", err)
			return 1
		}
		opts.Versions = st.Versions
	}
	ctx, stop := signalContext()
	defer stop()
	rep := RedisLoad(ctx, opts)
	code := 0
	if st != nil {
		if err := st.save(*state); err != nil {
			fmt.Fprintf(stderr, "coat-sample redis-load: %v\n", err)
			code = 1
		}
	}
	if !rep.OK() {
		code = 1
	}
	if tl != nil {
		if err := errors.Join(tl.Flush(), tlFile.Close()); err != nil {
			fmt.Fprintf(stderr, "coat-sample redis-load: write timeline: %v\n", err)
			code = 1
		}
	}
	err = printJSONOr(stdout, rep, *asJSON, func() string {
		return fmt.Sprintf("addr:             %s\nkeys:             %d\nvalue_size:       %d\nfill_bytes:       %d\nfill_ms:          %.1f\nrequests:         %d\nerrors:           %d\nfirst_error:      %s\nconnection_error: %s\np50_ms:           %.3f\np99_ms:           %.3f\nmax_stall_ms:     %.3f\nresult:           %s\n",
			rep.Addr, rep.Keys, rep.ValueSize, rep.FillBytes, rep.FillMs, rep.Requests, rep.Errors, rep.FirstError,
			rep.ConnectionError, rep.P50Ms, rep.P99Ms, rep.MaxStallMs, result(rep.OK()))
	})
	if err != nil {
		fmt.Fprintf(stderr, "coat-sample redis-load: %v\n", err)
		return 1
	}
	return code
}

// redisState is what --state keeps between runs on one data set.
type redisState struct {
	Seed      uint64   `json:"seed"`
	ValueSize int      `json:"value_size"`
	Versions  []uint32 `json:"versions"`
}

// loadRedisState reads path, or starts at version 0 (a fresh fill) when
// path does not exist or this run fills.
func loadRedisState(path string, o RedisLoadOptions) (*redisState, error) {
	st := &redisState{Seed: o.Seed, ValueSize: o.ValueSize, Versions: make([]uint32, o.Keys())}
	if o.ValueSize == 0 {
		st.ValueSize = 64 << 10
	}
	if o.Fill {
		return st, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, err
	}
	var old redisState
	if err := json.Unmarshal(b, &old); err != nil {
		return nil, fmt.Errorf("state %s: %w", path, err)
	}
	if old.Seed != st.Seed || old.ValueSize != st.ValueSize || len(old.Versions) != len(st.Versions) {
		return nil, fmt.Errorf("state %s is of another data set (seed %d, value size %d, %d keys)", path, old.Seed, old.ValueSize, len(old.Versions))
	}
	return &old, nil
}

func (st *redisState) save(path string) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func runStreams(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("streams", stderr)
	addrs := fs.String("addrs", "", "server addresses, IP or IP:PORT (port 7000), comma-separated")
	file := fs.String("addrs-file", "", "read the addresses from this file (one per line, or comma-separated)")
	duration := fs.Duration("duration", 0, "sending time once all are connected; 0 runs until SIGINT/SIGTERM")
	rate := fs.String("rate", "20KB/s", "send rate per stream")
	chunk := fs.Int("chunk", 1024, "bytes per write")
	wait := fs.Duration("wait", 30*time.Second, "how long to retry dials that fail")
	drain := fs.Duration("drain-timeout", 30*time.Second, "max wait for outstanding echo after sending stops, per stream")
	asJSON := fs.Bool("json", false, "print the report as one JSON object")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	list := *addrs
	if *file != "" {
		b, err := os.ReadFile(*file)
		if err != nil {
			fmt.Fprintf(stderr, "coat-sample streams: %v\n", err)
			return 2
		}
		list += "," + string(b)
	}
	as, err := ParseAddrs(list, 7000)
	if err != nil {
		fmt.Fprintf(stderr, "coat-sample streams: --addrs: %v\n", err)
		return 2
	}
	r, err := ParseRate(*rate)
	if err != nil {
		fmt.Fprintf(stderr, "coat-sample streams: %v\n", err)
		return 2
	}
	ctx, stop := signalContext()
	defer stop()
	rep := Streams(ctx, StreamsOptions{Addrs: as, Duration: *duration, Rate: r, Chunk: *chunk, DrainTimeout: *drain, Wait: *wait,
		Ready: func(n int) { fmt.Fprintf(stderr, "ready %d\n", n) }})
	err = printJSONOr(stdout, rep, *asJSON, func() string {
		var b strings.Builder
		for _, s := range rep.Streams {
			fmt.Fprintf(&b, "%-21s sent %d received %d errors %d max_gap_ms %.1f %s\n", s.Addr, s.Sent, s.Received, s.Errors, s.MaxGapMs, s.ConnectionError)
		}
		fmt.Fprintf(&b, "connected: %d/%d\nresult:    %s\n", rep.Connected, len(rep.Streams), result(rep.OK))
		return b.String()
	})
	if err != nil {
		fmt.Fprintf(stderr, "coat-sample streams: %v\n", err)
		return 1
	}
	if !rep.OK {
		return 1
	}
	return 0
}
