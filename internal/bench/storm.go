package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/coat-project/coat/internal/api"
)

// The storm workload: handover storms. K sample services follow the
// lab's client (`coat follow NAME --client client`), which streams to
// every one of them from one process (`coat-sample streams`); the client
// roams to the other edge host (`coat lab roam`), so that all K migrate
// at once, through follow-me, to the host now serving it. Each roam is
// one run: the time from the roam until every service runs next to the
// client (the storm's time), and per service its downtime (the source
// agent's follow-me log line) and its client's longest stall. The lab
// has one client node, so "N clients roaming at once" is one client
// followed by N services: the same storm of migrations and of
// forwarding changes, with every service's stall measured on its own
// connection.

// WorkloadStorm is the handover-storm workload.
const WorkloadStorm = "storm"

// StormOps is what the storm needs besides Ops.
type StormOps interface {
	Ops
	// Follow records that the container follows the lab's client.
	Follow(ctx context.Context, name string) error
	// Roam re-attaches the lab's client next to host to.
	Roam(ctx context.Context, to string) error
	// Placement is where each running container runs (migrating ones
	// and others not running are left out).
	Placement(ctx context.Context) (map[string]string, error)
	// AgentLog is the log of host's agent.
	AgentLog(host string) ([]byte, error)
}

// StormConfig is the storm part of a bench invocation.
type StormConfig struct {
	Sizes     []int         // services per roam
	Runs      int           // roams per size
	Rate      string        // each stream's rate, e.g. 20KB/s
	Timeout   time.Duration // from a roam until every service moved; default 2 min
	Settle    time.Duration // streams go on this long after the storm; default 1 s
	SampleBin string
	Progress  io.Writer
}

// ParseStormSizes reads --storm-sizes: services per roam, each 1-200
// (the lab's default overlay holds about 235 containers).
func ParseStormSizes(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 || n > 200 {
			return nil, fmt.Errorf("--storm-sizes: %q: want a number of services from 1 to 200", f)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("--storm-sizes: no sizes in %q", s)
	}
	return out, nil
}

// BenchStorm runs Runs roams for each size. A size whose set-up fails is
// reported as a Failure, and the others go on.
func BenchStorm(ctx context.Context, ops StormOps, cfg StormConfig) ([]Run, []Failure, error) {
	if cfg.Runs < 1 {
		cfg.Runs = 1
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Minute
	}
	if cfg.Settle <= 0 {
		cfg.Settle = time.Second
	}
	if cfg.Rate == "" {
		cfg.Rate = "20KB/s"
	}
	var runs []Run
	var failures []Failure
	say := func(format string, a ...any) {
		if cfg.Progress != nil {
			fmt.Fprintf(cfg.Progress, format+"\n", a...)
		}
	}
	for _, k := range cfg.Sizes {
		if ctx.Err() != nil {
			return runs, failures, ctx.Err()
		}
		rs, fs := stormSize(ctx, ops, cfg, k, say)
		runs, failures = append(runs, rs...), append(failures, fs...)
	}
	return runs, failures, nil
}

// stormSize starts k services on edge-1 next to the client, makes them
// follow it, and roams the client between edge-2 and edge-1 Runs times.
func stormSize(ctx context.Context, ops StormOps, cfg StormConfig, k int, say func(string, ...any)) ([]Run, []Failure) {
	fail := func(i int, err error) Failure {
		say("storm  %3d services #%d FAILED: %v", k, i, err)
		return Failure{Workload: WorkloadStorm, Strategy: "follow-me", Param: int64(k), Index: i, Error: err.Error()}
	}
	names := make([]string, k)
	stamp := time.Now().UnixNano() % 1_000_000
	for i := range names {
		names[i] = fmt.Sprintf("storm-%d-%d-%d", k, stamp, i)
	}
	defer removeAll(context.WithoutCancel(ctx), ops, names)
	if err := ops.Roam(ctx, "edge-1"); err != nil {
		return nil, []Failure{fail(0, fmt.Errorf("roam the client to edge-1: %w", err))}
	}
	ips, err := startServices(ctx, ops, names)
	if err != nil {
		return nil, []Failure{fail(0, err)}
	}
	for _, n := range names {
		if err := ops.Follow(ctx, n); err != nil {
			return nil, []Failure{fail(0, fmt.Errorf("follow %s: %w", n, err))}
		}
	}
	var runs []Run
	var failures []Failure
	from, to := "edge-1", "edge-2"
	for i := 0; i < cfg.Runs; i++ {
		rs, err := stormRoam(ctx, ops, cfg, names, ips, from, to, i)
		if err != nil {
			failures = append(failures, fail(i, err))
			break // where the services are is unknown now
		}
		runs = append(runs, rs...)
		s := SummarizeStorm(rs)[0]
		say("storm  %3d services #%d %s -> %s: all moved in %s; downtime %s; stall - downtime %s; %d/%d streams intact",
			k, i, from, to, msString(s.Storm.Median), s.Downtime, s.Over, s.Survived, s.Services)
		from, to = to, from
	}
	return runs, failures
}

// startServices runs the sample server as each of names on edge-1, ten
// at a time, and returns their IPs.
func startServices(ctx context.Context, ops StormOps, names []string) ([]string, error) {
	ips := make([]string, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 10)
	for i, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			ips[i], errs[i] = ops.Run(ctx, "edge-1", api.RunRequest{Name: n, Image: "sample", Args: []string{"/bin/coat-sample", "server"}})
			if errs[i] == nil {
				errs[i] = ops.WaitListen(ctx, n, 7000)
			}
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return nil, fmt.Errorf("start %s: %w", names[i], err)
		}
	}
	return ips, nil
}

func removeAll(ctx context.Context, ops StormOps, names []string) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 10)
	for _, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			_ = ops.Remove(ctx, n)
		}()
	}
	wg.Wait()
}

// stormRoam is one run: the client streams to every service, roams from
// from to to, and the services follow it there.
func stormRoam(ctx context.Context, ops StormOps, cfg StormConfig, names, ips []string, from, to string, index int) ([]Run, error) {
	cctx, cancel := context.WithTimeout(ctx, cfg.Timeout+5*time.Minute)
	defer cancel()
	cmd := ops.ClientCommand(cctx, cfg.SampleBin, "streams", "--addrs", strings.Join(ips, ","), "--rate", cfg.Rate, "--wait", "30s", "--json")
	stdout, stderr := &lockedBuffer{max: 8 << 20}, &lockedBuffer{max: 1 << 16}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if err := ops.StartClient(cmd); err != nil {
		return nil, err
	}
	stop := func() error {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		return cmd.Wait()
	}
	if err := waitReady(ctx, stderr, 60*time.Second); err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return nil, fmt.Errorf("streams: %w: %s", err, bytes.TrimSpace(tail(stderr.Bytes(), 300)))
	}
	sleepCtx(ctx, time.Second)
	t0 := time.Now()
	if err := ops.Roam(ctx, to); err != nil {
		stop()
		return nil, fmt.Errorf("roam to %s: %w", to, err)
	}
	storm, werr := waitAllOn(ctx, ops, names, to, t0, cfg.Timeout)
	sleepCtx(ctx, cfg.Settle)
	exitErr := stop()
	if werr != nil {
		return nil, werr
	}
	log, err := ops.AgentLog(from)
	if err != nil {
		return nil, err
	}
	moves := ParseFollowMoves(log, t0)
	return stormRuns(names, stdout.Bytes(), exitErr, moves, storm, index)
}

// waitAllOn polls until every name runs on host, and returns how long
// after t0 that was.
func waitAllOn(ctx context.Context, ops StormOps, names []string, host string, t0 time.Time, limit time.Duration) (time.Duration, error) {
	for {
		pl, err := ops.Placement(ctx)
		if err == nil {
			missing := 0
			for _, n := range names {
				if pl[n] != host {
					missing++
				}
			}
			if missing == 0 {
				return time.Since(t0), nil
			}
			if time.Since(t0) > limit {
				return 0, fmt.Errorf("%d of %d services not running on %s %s after the roam", missing, len(names), host, limit)
			}
		} else if time.Since(t0) > limit {
			return 0, err
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stormRuns makes one Run per service from the streams' report (in
// names' order) and the follow-me moves the agent logged.
func stormRuns(names []string, out []byte, exitErr error, moves map[string]FollowMove, storm time.Duration, index int) ([]Run, error) {
	var rep struct {
		Streams []struct {
			Sent            int64   `json:"sent"`
			Received        int64   `json:"received"`
			Errors          int64   `json:"errors"`
			MaxGapMs        float64 `json:"max_gap_ms"`
			ConnectionError string  `json:"connection_error"`
		} `json:"streams"`
	}
	line := lastLine(out)
	if err := json.Unmarshal(line, &rep); err != nil || len(rep.Streams) != len(names) {
		return nil, fmt.Errorf("streams report %q: %v, %d streams for %d services (exit: %v)", truncateBytes(line, 200), err, len(rep.Streams), len(names), exitErr)
	}
	runs := make([]Run, len(names))
	for i, n := range names {
		s, m := rep.Streams[i], moves[n]
		r := Run{Workload: WorkloadStorm, Mode: "follow-me", Strategy: "follow-me", Param: int64(len(names)), Index: index,
			DowntimeMS: m.DowntimeMS, TotalMS: m.TotalMS, StallMS: s.MaxGapMs, StormMS: ms(storm)}
		switch {
		case s.ConnectionError != "":
			r.ClientError = s.ConnectionError
		case s.Errors > 0:
			r.ClientError = fmt.Sprintf("%d echoed bytes differ from what was sent", s.Errors)
		case s.Sent == 0 || s.Received != s.Sent:
			r.ClientError = fmt.Sprintf("%d of %d bytes echoed", s.Received, s.Sent)
		case !m.Moved:
			r.ClientError = "no follow-me migration logged: " + m.Error
		}
		r.Survived = r.ClientError == ""
		runs[i] = r
	}
	return runs, nil
}

// FollowMove is what an agent logged of one follow-me migration.
type FollowMove struct {
	Moved               bool
	DowntimeMS, TotalMS float64
	Error               string // "follow-me: migration failed" or "cannot migrate"
	To                  string
	At                  time.Time
}

// ParseFollowMoves reads an agent's log (slog's text format) for its
// follow-me migrations at or after since, by container; a later line
// about a container replaces an earlier one.
func ParseFollowMoves(log []byte, since time.Time) map[string]FollowMove {
	out := map[string]FollowMove{}
	sc := bufio.NewScanner(bytes.NewReader(log))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		kv := logfmt(sc.Text())
		msg := kv["msg"]
		if !strings.HasPrefix(msg, "follow-me: ") || kv["container"] == "" {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, kv["time"])
		if err != nil || at.Before(since) {
			continue
		}
		m := FollowMove{To: kv["to"], At: at}
		switch msg {
		case "follow-me: moved":
			m.Moved = true
			m.DowntimeMS, _ = strconv.ParseFloat(kv["downtime_ms"], 64)
			m.TotalMS, _ = strconv.ParseFloat(kv["total_ms"], 64)
		case "follow-me: migration failed", "follow-me: cannot migrate":
			m.Error = kv["err"]
		default:
			continue
		}
		out[kv["container"]] = m
	}
	return out
}

// logfmt splits one slog text line into its keys and values (quoted
// values unquoted).
func logfmt(line string) map[string]string {
	kv := map[string]string{}
	for line != "" {
		line = strings.TrimLeft(line, " ")
		eq := strings.IndexByte(line, '=')
		if eq <= 0 {
			break
		}
		key, rest := line[:eq], line[eq+1:]
		var val string
		if strings.HasPrefix(rest, `"`) {
			q, err := strconv.QuotedPrefix(rest)
			if err != nil {
				break
			}
			val, _ = strconv.Unquote(q)
			rest = rest[len(q):]
		} else if sp := strings.IndexByte(rest, ' '); sp >= 0 {
			val, rest = rest[:sp], rest[sp:]
		} else {
			val, rest = rest, ""
		}
		kv[key] = val
		line = rest
	}
	return kv
}
