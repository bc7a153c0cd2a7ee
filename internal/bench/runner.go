// Package bench is `coat bench`: the COAT paper's evaluation reproduced on
// the lab. Each run starts a fresh container on edge-1, starts the real
// client on the client node (the sample stream, sockperf ping-pong over
// TCP, or an iperf3 stream), migrates the container to edge-2 in the middle
// of the client's run, and records what the migration reports and what the
// client saw: the longest gap between replies (stall), whether its
// connection survived, latency or throughput before and after.
package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/coat-project/coat/internal/api"
)

// Ops is what the runner needs from the cluster; the CLI provides it.
type Ops interface {
	Run(ctx context.Context, host string, req api.RunRequest) (ip string, err error)
	Migrate(ctx context.Context, name string, req api.MigrateRequest) (*api.MigrateResult, error)
	Remove(ctx context.Context, name string) error
	// ClientCommand returns a command that runs on the client node.
	ClientCommand(ctx context.Context, argv ...string) *exec.Cmd
	// StartClient starts cmd in the client node's network namespace.
	StartClient(cmd *exec.Cmd) error
	// WaitListen waits until the container listens on port.
	WaitListen(ctx context.Context, name string, port int) error
}

// Config is one bench invocation.
type Config struct {
	Workloads  []string
	Modes      []string // coat, traditional, reference, coat-nohold, coat-stock
	Runs       int
	RefRuns    int // runs of the reference and coat-nohold modes
	OutDir     string
	SampleBin  string // coat-sample on the host (the client side)
	ClientTime time.Duration
	MigrateAt  time.Duration
	Progress   io.Writer
}

// modeRequest maps a mode to a migration request.
func modeRequest(mode string) (api.MigrateRequest, error) {
	switch mode {
	case "coat":
		return api.MigrateRequest{To: "edge-2"}, nil
	case "traditional":
		return api.MigrateRequest{To: "edge-2", NoTCP: true}, nil
	case "reference":
		return api.MigrateRequest{To: "edge-2", Reference: true}, nil
	case "coat-nohold":
		return api.MigrateRequest{To: "edge-2", NoHold: true}, nil
	case "coat-stock":
		return api.MigrateRequest{To: "edge-2", Slow: true}, nil
	case ModePodman:
		return api.MigrateRequest{To: "edge-2"}, nil // run by PodmanOps
	}
	return api.MigrateRequest{}, fmt.Errorf("unknown mode %q: want coat, traditional, reference, coat-nohold, coat-stock or podman", mode)
}

// ModePodman is the paper artifact's own path, run for real with Podman:
// `podman container checkpoint --tcp-established --export` on the source
// host, the archive copied to the destination with scp over the lab's
// underlay, `podman container restore --import --tcp-established` there,
// in a network namespace on the same overlay (PodmanOps).
const ModePodman = "podman"

// PodmanOps runs a workload's container with Podman instead of an agent,
// on the same lab hosts and overlay, and migrates it the artifact's way.
type PodmanOps interface {
	RunPodman(ctx context.Context, host, name, image string, args []string) (ip string, err error)
	WaitListenPodman(ctx context.Context, name string, port int) error
	// MigratePodman reports the phases as the artifact's script would
	// time them: checkpoint (freeze, dump, export), transfer (scp) and
	// restore (the namespace on the destination's bridge, import,
	// restore); all of it is downtime.
	MigratePodman(ctx context.Context, name, to string) (*api.MigrateResult, error)
	RemovePodman(ctx context.Context, name string) error
}

// workload knows how to serve and how to drive one benchmark program.
type workload struct {
	// startup is how long the client takes before its first message
	// (sockperf spends about 2 s getting ready); the migration starts
	// MigrateAt after that.
	startup time.Duration
	// extra is how much longer than ClientTime the client runs, in every
	// mode, so that a stall that outlasts the run is still seen to end.
	extra  time.Duration
	image  string
	args   []string
	port   int
	client func(cfg Config, ip, logFile string) []string
	parse  func(r *Run, exitErr error, out []byte, logFile string, t0 time.Time) error
}

var workloads = map[string]workload{
	"sample": {
		image: "sample", args: []string{"/bin/coat-sample", "server"}, port: 7000,
		client: func(cfg Config, ip, logFile string) []string {
			return []string{cfg.SampleBin, "stream", "--addr", ip + ":7000", "--duration", cfg.ClientTime.String(),
				"--rate", "2MB/s", "--json", "--timeline", logFile}
		},
		parse: parseSample,
	},
	"sockperf": {
		startup: 2 * time.Second,
		image:   "sockperf", args: []string{"sockperf", "server", "--tcp", "-i", "0.0.0.0", "-p", "11111"}, port: 11111,
		client: func(cfg Config, ip, logFile string) []string {
			return []string{"sockperf", "ping-pong", "--tcp", "-i", ip, "-p", "11111", "-m", "64",
				"-t", fmt.Sprint(int(cfg.ClientTime.Seconds())), "--mps", "2000", "--full-log", logFile}
		},
		parse: parseSockperf,
	},
	"iperf3": {
		// The receiving client sees a stall end only when the restored
		// sender retransmits: after TCP's back-off (1.1-4.4 s without
		// holding, measured) the 3 s run would often be over.
		extra: 3 * time.Second,
		image: "iperf3", args: []string{"iperf3", "-s"}, port: 5201,
		client: func(cfg Config, ip, logFile string) []string {
			// -R: the container sends and the client receives, so the
			// client's intervals count what arrived. Counted where it
			// leaves (iperf3's default), a freeze hides in the sender's
			// socket buffer and every interval looks full.
			return []string{"iperf3", "-c", ip, "-R", "-t", fmt.Sprint(int(cfg.ClientTime.Seconds())), "-i", "0.1", "-J",
				"-b", "100M", "--logfile", logFile}
		},
		parse: parseIperf,
	},
}

// Bench runs every (workload, mode) RUNS times and returns the runs, and
// the runs that failed.
func Bench(ctx context.Context, ops Ops, cfg Config) ([]Run, []Failure, error) {
	for _, w := range cfg.Workloads {
		if _, ok := workloads[w]; !ok {
			return nil, nil, fmt.Errorf("unknown workload %q: want sample, sockperf or iperf3", w)
		}
	}
	for _, m := range cfg.Modes {
		if _, err := modeRequest(m); err != nil {
			return nil, nil, err
		}
		if _, ok := ops.(PodmanOps); m == ModePodman && !ok {
			return nil, nil, fmt.Errorf("mode %s: this bench cannot run Podman", m)
		}
	}
	total := 0
	for range cfg.Workloads {
		for _, m := range cfg.Modes {
			total += cfg.runsFor(m)
		}
	}
	var runs []Run
	var failures []Failure
	done, failed := 0, 0
	start := time.Now()
	for _, w := range cfg.Workloads {
		// Interleave modes so that drift of the machine hits all alike.
		for i := 0; ; i++ {
			more := false
			for _, m := range cfg.Modes {
				if i >= cfg.runsFor(m) {
					continue
				}
				more = true
				r, err := runOne(ctx, ops, cfg, w, m, i)
				done++
				if err != nil {
					// One bad run does not void the others; too many do
					// (Podman's failures are its own: reported, not fatal).
					failures = append(failures, Failure{Workload: w, Mode: m, Index: i, Error: err.Error()})
					if m != ModePodman {
						failed++
					}
					if cfg.Progress != nil {
						fmt.Fprintf(cfg.Progress, "[%3d/%d] %-8s %-12s #%-2d FAILED: %v\n", done, total, w, m, i, err)
					}
					if ctx.Err() != nil || failed > total/10 {
						return runs, failures, fmt.Errorf("%d runs failed; last: %s %s run %d: %w", failed, w, m, i, err)
					}
					continue
				}
				runs = append(runs, r)
				progress(cfg.Progress, done, total, start, r)
			}
			if !more {
				break
			}
		}
	}
	return runs, failures, nil
}

// WriteRunFailures appends the failed runs of the paper's workloads to a
// report (nothing when none failed).
func WriteRunFailures(w io.Writer, failures []Failure) error {
	if len(failures) == 0 {
		return nil
	}
	var b strings.Builder
	b.WriteString("\n## Failed runs of the paper's workloads\n\n| workload | mode | run | error |\n|---|---|---:|---|\n")
	for _, f := range failures {
		fmt.Fprintf(&b, "| %s | %s | %d | %s |\n", f.Workload, f.Mode, f.Index, mdCell(f.Error))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func (c Config) runsFor(mode string) int {
	if mode != "coat" && mode != "traditional" {
		return c.RefRuns
	}
	return c.Runs
}

func progress(w io.Writer, done, total int, start time.Time, r Run) {
	if w == nil {
		return
	}
	eta := time.Duration(float64(time.Since(start)) / float64(done) * float64(total-done)).Round(time.Second)
	state := "kept"
	if !r.Survived {
		state = "dropped"
	}
	fmt.Fprintf(w, "[%3d/%d eta %6s] %-8s %-12s #%-2d total %6.0f ms  downtime %6.0f ms  stall %6.0f ms  connection %s\n",
		done, total, eta, r.Workload, r.Mode, r.Index, r.TotalMS, r.DowntimeMS, r.StallMS, state)
}

// runOne is one fresh container, one client, one migration.
func runOne(ctx context.Context, ops Ops, cfg Config, wl, mode string, i int) (Run, error) {
	w := workloads[wl]
	name := fmt.Sprintf("bench-%s-%d", wl, time.Now().UnixNano()%1_000_000)
	r := Run{Workload: wl, Mode: mode, Index: i}
	pod, _ := ops.(PodmanOps)
	var ip string
	var err error
	if mode == ModePodman {
		ip, err = pod.RunPodman(ctx, "edge-1", name, w.image, w.args)
		defer func() { _ = pod.RemovePodman(context.WithoutCancel(ctx), name) }()
	} else {
		ip, err = ops.Run(ctx, "edge-1", api.RunRequest{Name: name, Image: w.image, Args: w.args})
		defer func() { _ = ops.Remove(context.WithoutCancel(ctx), name) }()
	}
	if err != nil {
		return r, err
	}
	if mode == ModePodman {
		err = pod.WaitListenPodman(ctx, name, w.port)
	} else {
		err = ops.WaitListen(ctx, name, w.port)
	}
	if err != nil {
		return r, err
	}
	logFile := filepath.Join(cfg.OutDir, "raw", fmt.Sprintf("%s-%s-%02d.log", wl, mode, i))
	if err := os.MkdirAll(filepath.Dir(logFile), 0o755); err != nil {
		return r, err
	}
	// Clients append to their log files (iperf3 --logfile does).
	if err := os.Remove(logFile); err != nil && !os.IsNotExist(err) {
		return r, err
	}
	ccfg := cfg
	ccfg.ClientTime += w.extra
	if mode == ModePodman {
		// Podman's migration takes seconds: the client runs on past it,
		// or a stall still open at its end would not be seen (sockperf
		// only logs replies it got).
		ccfg.ClientTime += podmanClientExtra
	}
	cctx, cancel := context.WithTimeout(ctx, ccfg.ClientTime+60*time.Second)
	defer cancel()
	cmd := ops.ClientCommand(cctx, w.client(ccfg, ip, logFile)...)
	out := &limitedBuffer{max: 1 << 20}
	cmd.Stdout, cmd.Stderr = out, out
	t0 := time.Now()
	if err := ops.StartClient(cmd); err != nil {
		return r, err
	}
	select {
	case <-time.After(w.startup + cfg.MigrateAt):
	case <-ctx.Done():
		return r, ctx.Err()
	}
	req, _ := modeRequest(mode)
	migStart := time.Since(t0)
	// A migration that hangs is a failed run, not a hung benchmark.
	mctx, mcancel := context.WithTimeout(ctx, migrateTimeout)
	var res *api.MigrateResult
	if mode == ModePodman {
		res, err = pod.MigratePodman(mctx, name, req.To)
	} else {
		res, err = ops.Migrate(mctx, name, req)
	}
	mcancel()
	migEnd := time.Since(t0)
	if err != nil {
		_ = cmd.Wait()
		return r, err
	}
	r.CheckpointMS, r.TransferMS, r.RestoreMS = res.CheckpointMS, res.TransferMS, res.RestoreMS
	r.TotalMS, r.DowntimeMS, r.Bytes = res.TotalMS, res.DowntimeMS, res.Bytes
	r.MigStartMS, r.MigEndMS = ms(migStart), ms(migEnd)
	werr := cmd.Wait()
	if err := w.parse(&r, werr, out.Bytes(), logFile, t0); err != nil {
		return r, fmt.Errorf("parse client output: %w (raw output in %s)", err, logFile)
	}
	return r, nil
}

// podmanClientExtra is how much longer the client runs in the podman mode.
const podmanClientExtra = 4 * time.Second

// migrateTimeout bounds one migration in a run (they take well under a
// second here; the destination's restore alone may take two minutes
// before it gives up).
const migrateTimeout = 3 * time.Minute

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// limitedBuffer keeps the first max bytes written to it.
type limitedBuffer struct {
	buf []byte
	max int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.max - len(b.buf); room > 0 {
		if len(p) < room {
			room = len(p)
		}
		b.buf = append(b.buf, p[:room]...)
	}
	return len(p), nil
}

func (b *limitedBuffer) Bytes() []byte { return b.buf }
