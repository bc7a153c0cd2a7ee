package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/coat-project/coat/internal/api"
)

// The matrix workloads: each runs under every link profile and every
// migration strategy.
const (
	WorkloadMemory = "memory" // redis filled to a size, a checking GET/SET client
	WorkloadConns  = "conns"  // the sample server with N connections, a line every 100 ms each
)

// IsMatrix reports whether workload is one of the matrix workloads.
func IsMatrix(workload string) bool { return workload == WorkloadMemory || workload == WorkloadConns }

// Profile is a link profile of the lab: every node's underlay link.
type Profile struct {
	Name    string
	RateBps float64       // bits per second; 0 is unshaped
	Delay   time.Duration // added to every frame a node sends
}

// Profiles are the link profiles the matrix knows.
var Profiles = []Profile{
	{Name: "lan"},
	{Name: "1gbit", RateBps: 1e9},
	{Name: "edge", RateBps: 100e6, Delay: 10 * time.Millisecond},
}

// LookupProfile finds a profile by name.
func LookupProfile(name string) (Profile, error) {
	for _, p := range Profiles {
		if p.Name == name {
			return p, nil
		}
	}
	return Profile{}, fmt.Errorf("unknown link profile %q: want lan, 1gbit or edge", name)
}

// Strategies are the migration strategies the matrix runs.
var Strategies = []string{"stop-and-copy", "post-copy", "pre-copy"}

// MigResult is a migration's result as the matrix reads it: the agent's
// reply, with the strategy fields.
type MigResult struct {
	api.MigrateResult
	Strategy       string  `json:"strategy"`
	StrategyReason string  `json:"strategy_reason"`
	MemoryBytes    int64   `json:"memory_bytes"`
	LazyMS         float64 `json:"lazy_ms"`
	PagesOnDemand  int     `json:"pages_on_demand"`
}

// MatrixOps is what the matrix needs besides Ops.
type MatrixOps interface {
	Ops
	// SetProfile gives every node of the lab the profile's link.
	SetProfile(ctx context.Context, p Profile) error
	// MigrateStrategy moves the container to host `to` with a strategy.
	MigrateStrategy(ctx context.Context, name, to, strategy string) (*MigResult, error)
	// Host is where the container runs now.
	Host(ctx context.Context, name string) (string, error)
}

// Failure is a matrix run that produced no measurement.
type Failure struct {
	Workload string `json:"workload"`
	Mode     string `json:"mode,omitempty"` // the paper's workloads: the mode that failed
	Profile  string `json:"profile"`
	Strategy string `json:"strategy"`
	Param    int64  `json:"param"` // memory bytes or connections
	Index    int    `json:"index"`
	Error    string `json:"error"`
	// Unavailable: the agent refused the strategy on this kernel (e.g.
	// pre-copy without soft-dirty tracking); not a failure of COAT.
	Unavailable bool `json:"unavailable"`
}

// MatrixConfig is the matrix part of a bench invocation.
type MatrixConfig struct {
	Workloads  []string // memory, conns
	Profiles   []string
	Strategies []string
	MemSizes   []int64 // bytes
	ConnCounts []int
	Runs       int     // per (workload, profile, param, strategy)
	MemRate    float64 // redis requests per second
	MigrateAt  time.Duration
	Tail       time.Duration // client time after the migration returns
	OutDir     string
	SampleBin  string
	Progress   io.Writer
}

// unavailable reports whether a migration error says the strategy cannot
// run here (as opposed to a failed migration).
func unavailable(strategy, msg string) bool {
	m := strings.ToLower(msg)
	return strings.Contains(m, strategy) && (strings.Contains(m, "soft-dirty") || strings.Contains(m, "not built into") ||
		strings.Contains(m, "unavailable") || strings.Contains(m, "not supported"))
}

func (c MatrixConfig) params(w string) []int64 {
	if w == WorkloadMemory {
		return c.MemSizes
	}
	var out []int64
	for _, n := range c.ConnCounts {
		out = append(out, int64(n))
	}
	return out
}

// BenchMatrix runs the matrix workloads: for each profile, each workload,
// each size or connection count, Runs rounds of every strategy.
func BenchMatrix(ctx context.Context, ops MatrixOps, cfg MatrixConfig) ([]Run, []Failure, error) {
	for _, w := range cfg.Workloads {
		if !IsMatrix(w) {
			return nil, nil, fmt.Errorf("unknown matrix workload %q", w)
		}
	}
	var profiles []Profile
	for _, n := range cfg.Profiles {
		p, err := LookupProfile(n)
		if err != nil {
			return nil, nil, err
		}
		profiles = append(profiles, p)
	}
	if cfg.Runs < 1 {
		cfg.Runs = 1
	}
	m := &matrix{ops: ops, cfg: cfg, refused: map[string]string{}}
	for _, p := range profiles {
		if err := ops.SetProfile(ctx, p); err != nil {
			return m.runs, m.failures, fmt.Errorf("link profile %s: %w", p.Name, err)
		}
		m.say("link profile %s", p.Name)
		for _, w := range cfg.Workloads {
			for _, param := range cfg.params(w) {
				if err := m.cell(ctx, w, p, param); err != nil {
					return m.runs, m.failures, err
				}
			}
		}
	}
	return m.runs, m.failures, nil
}

type matrix struct {
	ops      MatrixOps
	cfg      MatrixConfig
	runs     []Run
	failures []Failure
	refused  map[string]string // strategy -> the agent's refusal
}

func (m *matrix) say(format string, a ...any) {
	if m.cfg.Progress != nil {
		fmt.Fprintf(m.cfg.Progress, format+"\n", a...)
	}
}

// cell runs every round of one (workload, profile, param). A memory cell
// keeps one redis (filled once) across its migrations, back and forth,
// and starts afresh after a failed run; a conns cell starts a fresh
// sample container for every migration.
func (m *matrix) cell(ctx context.Context, w string, p Profile, param int64) error {
	var c *container
	defer func() {
		if c != nil {
			c.remove(ctx)
		}
	}()
	for i := 0; i < m.cfg.Runs; i++ {
		for _, s := range m.cfg.Strategies {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			f := Failure{Workload: w, Profile: p.Name, Strategy: s, Param: param, Index: i}
			if why, ok := m.refused[s]; ok {
				if i == 0 {
					f.Error, f.Unavailable = why, true
					m.failures = append(m.failures, f)
				}
				continue
			}
			if c == nil || w == WorkloadConns {
				if c != nil {
					c.remove(ctx)
				}
				var err error
				if c, err = m.start(ctx, w, p, param); err != nil {
					f.Error = "set-up: " + err.Error()
					m.failures = append(m.failures, f)
					m.say("%-6s %-6s %-10s %-13s #%d FAILED: %s", w, p.Name, paramString(w, param), s, i, f.Error)
					c = nil
					continue
				}
			}
			r, err := m.one(ctx, c, w, p, param, s, i)
			if err != nil {
				f.Error = err.Error()
				if unavailable(s, f.Error) {
					f.Unavailable = true
					m.refused[s] = f.Error
					m.say("%-6s %-6s %-10s %-13s unavailable here: %s", w, p.Name, paramString(w, param), s, f.Error)
				} else {
					m.say("%-6s %-6s %-10s %-13s #%d FAILED: %s", w, p.Name, paramString(w, param), s, i, f.Error)
					c.remove(ctx)
					c = nil
				}
				m.failures = append(m.failures, f)
				continue
			}
			if !r.Survived && w == WorkloadMemory {
				// The data set's versions are unknown now: fill afresh.
				c.remove(ctx)
				c = nil
			}
			m.runs = append(m.runs, r)
			m.say("%-6s %-6s %-10s %-13s #%d total %7.0f ms  downtime %6.0f ms  stall %6.0f ms  %s",
				w, p.Name, paramString(w, param), s, i, r.TotalMS, r.DowntimeMS, r.StallMS, survivedWord(r))
		}
	}
	return nil
}

func survivedWord(r Run) string {
	if r.Survived {
		return "ok"
	}
	return "FAILED: " + r.ClientError
}

func paramString(w string, v int64) string {
	if w == WorkloadMemory {
		return humanBytes(float64(v))
	}
	return fmt.Sprintf("%d conns", v)
}

type container struct {
	ops   MatrixOps
	name  string
	ip    string
	port  int
	state string // redis-load --state file
}

func (c *container) remove(ctx context.Context) {
	_ = c.ops.Remove(context.WithoutCancel(ctx), c.name)
	if c.state != "" {
		os.Remove(c.state)
	}
}

const redisSeed = "7"

func (m *matrix) rawFile(format string, a ...any) (string, error) {
	p := filepath.Join(m.cfg.OutDir, "raw", fmt.Sprintf(format, a...))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return "", err
	}
	os.Remove(p)
	return p, nil
}

// start runs a fresh container for the cell on edge-1 and, for memory,
// fills it.
func (m *matrix) start(ctx context.Context, w string, p Profile, param int64) (*container, error) {
	c := &container{ops: m.ops, name: fmt.Sprintf("bench-%s-%d", w, time.Now().UnixNano()%1_000_000)}
	req := api.RunRequest{Name: c.name, Image: "sample", Args: []string{"/bin/coat-sample", "server"}}
	c.port = 7000
	if w == WorkloadMemory {
		req = api.RunRequest{Name: c.name, Image: "redis", Args: []string{"/usr/bin/redis-server", "--port", "6379",
			"--save", "", "--appendonly", "no", "--protected-mode", "no"}}
		c.port = 6379
	}
	ip, err := m.ops.Run(ctx, "edge-1", req)
	if err != nil {
		return nil, err
	}
	c.ip = ip
	if err := m.ops.WaitListen(ctx, c.name, c.port); err != nil {
		c.remove(ctx)
		return nil, err
	}
	if w != WorkloadMemory {
		return c, nil
	}
	if c.state, err = m.rawFile("memory-%s-%s.state", p.Name, sizeName(param)); err != nil {
		c.remove(ctx)
		return nil, err
	}
	// Filling takes memory / link rate, and redis no less than 50 MB/s.
	limit := 2*time.Minute + time.Duration(float64(param)/50e6*float64(time.Second))
	if p.RateBps > 0 {
		limit += time.Duration(float64(param) * 8 / p.RateBps * 2 * float64(time.Second))
	}
	fctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	t := time.Now()
	cmd := m.ops.ClientCommand(fctx, m.cfg.SampleBin, "redis-load", "--addr", fmt.Sprintf("%s:%d", c.ip, c.port),
		"--fill", fmt.Sprint(param), "--seed", redisSeed, "--fill-only", "--state", c.state, "--json")
	out := &limitedBuffer{max: 1 << 16}
	cmd.Stdout, cmd.Stderr = out, out
	if err := m.ops.StartClient(cmd); err != nil {
		c.remove(ctx)
		return nil, err
	}
	if err := cmd.Wait(); err != nil {
		c.remove(ctx)
		return nil, fmt.Errorf("fill %s: %v: %s", humanBytes(float64(param)), err, bytes.TrimSpace(tail(out.Bytes(), 300)))
	}
	m.say("%-6s %-6s %-10s filled in %s", w, p.Name, paramString(w, param), time.Since(t).Round(time.Millisecond))
	return c, nil
}

func sizeName(b int64) string {
	return strings.ReplaceAll(strings.ReplaceAll(humanBytes(float64(b)), " ", ""), ".0", "")
}

// one is one migration of the cell's container with its client running.
func (m *matrix) one(ctx context.Context, c *container, w string, p Profile, param int64, strategy string, i int) (Run, error) {
	r := Run{Workload: w, Mode: strategy, Strategy: strategy, Profile: p.Name, Param: param, Index: i}
	from, err := m.ops.Host(ctx, c.name)
	if err != nil {
		return r, err
	}
	to := "edge-2"
	if from == "edge-2" {
		to = "edge-1"
	}
	addr := fmt.Sprintf("%s:%d", c.ip, c.port)
	var argv []string
	logFile := ""
	if w == WorkloadMemory {
		if logFile, err = m.rawFile("memory-%s-%s-%s-%02d.csv", p.Name, sizeName(param), strategy, i); err != nil {
			return r, err
		}
		argv = []string{m.cfg.SampleBin, "redis-load", "--addr", addr, "--fill", fmt.Sprint(param), "--seed", redisSeed,
			"--no-fill", "--state", c.state, "--duration", "0", "--rate", fmt.Sprint(m.cfg.MemRate), "--json", "--timeline", logFile}
	} else {
		argv = []string{m.cfg.SampleBin, "conns", "--addr", addr, "--conns", fmt.Sprint(param), "--interval", "100ms",
			"--duration", "0", "--json"}
	}
	// The client stops on SIGTERM; the context only bounds a client that hangs.
	cctx, cancel := context.WithTimeout(ctx, migrateTimeout+10*time.Minute)
	defer cancel()
	cmd := m.ops.ClientCommand(cctx, argv...)
	stdout, stderr := &lockedBuffer{max: 4 << 20}, &lockedBuffer{max: 1 << 16}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	t0 := time.Now()
	if err := m.ops.StartClient(cmd); err != nil {
		return r, err
	}
	stopClient := func() error {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		return cmd.Wait()
	}
	if err := waitReady(ctx, stderr, 60*time.Second); err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return r, fmt.Errorf("client: %w: %s", err, bytes.TrimSpace(tail(stderr.Bytes(), 300)))
	}
	readyAt := time.Since(t0)
	sleepCtx(ctx, m.cfg.MigrateAt)
	migStart := time.Since(t0)
	mctx, mcancel := context.WithTimeout(ctx, migrateTimeout+m.transferBound(p, param))
	res, err := m.ops.MigrateStrategy(mctx, c.name, to, strategy)
	mcancel()
	migEnd := time.Since(t0)
	if err != nil {
		stopClient()
		return r, err
	}
	sleepCtx(ctx, m.cfg.Tail)
	werr := stopClient()
	r.CheckpointMS, r.TransferMS, r.RestoreMS = res.CheckpointMS, res.TransferMS, res.RestoreMS
	r.TotalMS, r.DowntimeMS, r.Bytes = res.TotalMS, res.DowntimeMS, res.Bytes
	r.MemoryBytes, r.LazyMS, r.PagesOnDemand = res.MemoryBytes, res.LazyMS, res.PagesOnDemand
	if res.Strategy != "" {
		r.Strategy = res.Strategy
	}
	r.MigStartMS, r.MigEndMS = ms(migStart), ms(migEnd)
	var perr error
	if w == WorkloadMemory {
		// The client's clock starts when it is ready (its load starts).
		perr = parseRedisLoad(&r, werr, stdout.Bytes(), logFile, ms(readyAt))
	} else {
		perr = parseConns(&r, werr, stdout.Bytes(), ms(readyAt))
	}
	if r.Mode != "post-copy" {
		r.Timeline = nil // only post-copy's is plotted
	}
	if perr != nil {
		return r, fmt.Errorf("parse client output: %w: %s", perr, bytes.TrimSpace(tail(stderr.Bytes(), 300)))
	}
	return r, nil
}

// transferBound is extra time a migration may take to move memory over
// the profile's link (twice the ideal).
func (m *matrix) transferBound(p Profile, param int64) time.Duration {
	if p.RateBps <= 0 {
		return 0
	}
	return time.Duration(float64(param) * 8 / p.RateBps * 2 * float64(time.Second))
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// waitReady waits for the client's "ready" line on stderr.
func waitReady(ctx context.Context, b *lockedBuffer, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for !bytes.Contains(b.Bytes(), []byte("ready")) {
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %s", limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// lockedBuffer keeps the first max bytes written to it; it may be read
// while a command writes to it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf []byte
	max int
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := b.max - len(b.buf); room > 0 {
		b.buf = append(b.buf, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (b *lockedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]byte(nil), b.buf...)
}
