package sample

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

const usage = `usage: coat-sample COMMAND [flags]

commands:
  server [--port 7000] [--ctl-port 7001] [--data /data]
      pattern-verifying TCP echo server with a line-protocol control port
  stream --addr IP:PORT [--duration 10s] [--rate 1MB/s] [--chunk 1024]
         [--json] [--timeline FILE] [--drain-timeout 30s]
      stream the pattern, verify the echo, report stalls (--duration 0: until SIGINT/SIGTERM)
  streams --addrs IP[:PORT],... | --addrs-file FILE [--duration 0] [--rate 20KB/s] [--chunk 1024]
          [--wait 30s] [--drain-timeout 30s] [--json]
      one stream (as stream) to each address at once, from one process; dials are retried
      until --wait; "ready N" goes to stderr once all are connected (--duration 0: until
      SIGINT/SIGTERM); the report has one stream report per address
  conns --addr IP:PORT [--conns 100] [--interval 100ms] [--size 64] [--duration 0] [--json]
      open N connections to the stream port, each sending a line of the pattern every
      interval and checking its echo; report each connection's longest wait and survival
      (--duration 0: until SIGINT/SIGTERM; "ready N" goes to stderr once all are open)
  redis-load --addr IP:PORT --fill SIZE [--value-size 64KiB] [--seed 1] [--no-fill | --fill-only] [--check-all]
         [--duration 30s] [--rate 200] [--conns 1] [--json] [--timeline FILE]
      fill redis with SIZE of incompressible values (SIZE/value-size keys), then GET and
      SET them, checking every GET against the last SET; report errors, p50/p99 latency
      and the longest stall (--duration 0: until SIGINT/SIGTERM; "ready" goes to stderr
      when the load starts; --timeline: t_ms,latency_ms,op,conn per request)
  ctl --addr IP:PORT CMD [ARGS...]
      send one control line (stats | incr | put KEY VALUE | get KEY | ping), print the reply
`

// Main runs the coat-sample command line with args (without the program
// name) and returns the process exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "server":
		return runServer(args[1:], stdout, stderr)
	case "stream":
		return runStream(args[1:], stdout, stderr)
	case "ctl":
		return runCtl(args[1:], stdout, stderr)
	case "streams":
		return runStreams(args[1:], stdout, stderr)
	case "conns":
		return runConns(args[1:], stdout, stderr)
	case "redis-load":
		return runRedisLoad(args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "coat-sample: unknown command %q\n%s", args[0], usage)
		return 2
	}
}

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("coat-sample "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

func runServer(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("server", stderr)
	port := fs.Int("port", 7000, "stream (echo) port")
	ctlPort := fs.Int("ctl-port", 7001, "control port")
	data := fs.String("data", "/data", "data directory for put/get")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	s, err := NewServer(ServerConfig{Port: *port, CtlPort: *ctlPort, DataDir: *data, Log: stdout})
	if err != nil {
		fmt.Fprintf(stderr, "coat-sample server: %v\n", err)
		return 1
	}
	if err := s.Serve(ctx); err != nil {
		fmt.Fprintf(stderr, "coat-sample server: %v\n", err)
		return 1
	}
	return 0
}

func runStream(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("stream", stderr)
	addr := fs.String("addr", "", "server stream address IP:PORT (required)")
	duration := fs.Duration("duration", 10*time.Second, "sending time; 0 runs until SIGINT/SIGTERM")
	rate := fs.String("rate", "1MB/s", "send rate: bytes per second or e.g. 500KB/s, 1MB/s, 10Mbit/s; 0 is unlimited")
	chunk := fs.Int("chunk", 1024, "bytes per write")
	asJSON := fs.Bool("json", false, "print the report as one JSON object")
	timeline := fs.String("timeline", "", "write a CSV of t_ms,bytes_echoed every 10 ms to this file")
	drain := fs.Duration("drain-timeout", 30*time.Second, "max wait for outstanding echo after sending stops")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *addr == "" && fs.NArg() == 1 {
		*addr = fs.Arg(0)
	}
	if *addr == "" {
		fmt.Fprintln(stderr, "coat-sample stream: --addr is required")
		return 2
	}
	r, err := ParseRate(*rate)
	if err != nil {
		fmt.Fprintf(stderr, "coat-sample stream: %v\n", err)
		return 2
	}
	opts := StreamOptions{Addr: *addr, Duration: *duration, Rate: r, Chunk: *chunk, DrainTimeout: *drain}
	var tl *bufio.Writer
	var tlFile *os.File
	if *timeline != "" {
		tlFile, err = os.Create(*timeline)
		if err != nil {
			fmt.Fprintf(stderr, "coat-sample stream: create timeline: %v\n", err)
			return 1
		}
		tl = bufio.NewWriter(tlFile)
		opts.Timeline = tl
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// After the first signal, restore default handling so that a second one
	// aborts a drain that takes too long.
	context.AfterFunc(ctx, stop)
	rep := Stream(ctx, opts)

	code := 0
	if !rep.OK() {
		code = 1
	}
	if tl != nil {
		if err := errors.Join(tl.Flush(), tlFile.Close()); err != nil {
			fmt.Fprintf(stderr, "coat-sample stream: write timeline: %v\n", err)
			code = 1
		}
	}
	if err := printReport(stdout, rep, *asJSON); err != nil {
		fmt.Fprintf(stderr, "coat-sample stream: %v\n", err)
		return 1
	}
	return code
}

func printReport(w io.Writer, r *Report, asJSON bool) error {
	if asJSON {
		b, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("encode report: %w", err)
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	result := "OK"
	if !r.OK() {
		result = "FAIL"
	}
	_, err := fmt.Fprintf(w, `addr:             %s
sent:             %d
received:         %d
errors:           %d
first_error:      %d
max_gap_ms:       %.3f
gap_at:           %.3f
connection_error: %s
duration_ms:      %d
result:           %s
`, r.Addr, r.Sent, r.Received, r.Errors, r.FirstError, r.MaxGapMs, r.GapAt,
		r.ConnectionError, r.DurationMs, result)
	return err
}

func runCtl(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("ctl", stderr)
	addr := fs.String("addr", "", "server control address IP:PORT (required)")
	timeout := fs.Duration("timeout", 10*time.Second, "overall timeout")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *addr == "" || fs.NArg() == 0 {
		fmt.Fprintln(stderr, "usage: coat-sample ctl --addr IP:PORT CMD [ARGS...]")
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	reply, err := Ctl(ctx, *addr, strings.Join(fs.Args(), " "))
	if err != nil {
		fmt.Fprintf(stderr, "coat-sample ctl: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, reply)
	if strings.HasPrefix(reply, "ERR") {
		return 1
	}
	return 0
}
