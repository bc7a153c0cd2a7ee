package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/coat-project/coat/internal/api"
	"github.com/coat-project/coat/internal/bench"
	"github.com/coat-project/coat/internal/images"
	"github.com/coat-project/coat/internal/lab"
	"github.com/coat-project/coat/internal/linkspec"
	"github.com/coat-project/coat/internal/sample"
)

func newBenchCmd() *cobra.Command {
	var cfg bench.Config
	var mcfg bench.MatrixConfig
	var scfg bench.StormConfig
	var workloads, modes, profiles, strategies, sizes, counts, stormSizes string
	var hosts int
	cmd := &cobra.Command{
		Use:   "bench [--workloads sample,sockperf,iperf3,memory,conns,storm] [--runs N] [--modes coat,traditional,...] [--profiles lan,1gbit,edge] [--strategies ...] [--out DIR]",
		Short: "Reproduce the paper's evaluation on the lab, and the memory and connection-count workloads by link profile and strategy",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			storm := false
			for _, w := range splitList(workloads) {
				if w == bench.WorkloadStorm {
					storm = true
				} else if bench.IsMatrix(w) {
					mcfg.Workloads = append(mcfg.Workloads, w)
				} else {
					cfg.Workloads = append(cfg.Workloads, w)
				}
			}
			cfg.Modes = splitList(modes)
			podmanNote := ""
			if slices.Contains(cfg.Modes, bench.ModePodman) && len(cfg.Workloads) > 0 {
				v, err := podmanAvailable()
				switch {
				case err != nil && cmd.Flags().Changed("modes"):
					return fmt.Errorf("--modes %s: %w", modes, err)
				case err != nil:
					podmanNote = "not run: " + err.Error()
					cfg.Modes = slices.DeleteFunc(cfg.Modes, func(m string) bool { return m == bench.ModePodman })
				default:
					podmanNote = v + " (runtime runc, --cgroup-manager cgroupfs)"
				}
			}
			if cfg.Runs < 1 {
				return fmt.Errorf("--runs %d: want at least 1", cfg.Runs)
			}
			if cfg.RefRuns < 1 {
				cfg.RefRuns = cfg.Runs
			}
			if err := matrixFlags(&mcfg, profiles, strategies, sizes, counts); err != nil {
				return err
			}
			if storm {
				var err error
				if scfg.Sizes, err = bench.ParseStormSizes(stormSizes); err != nil {
					return err
				}
				if _, err := sample.ParseRate(scfg.Rate); err != nil {
					return fmt.Errorf("--storm-rate: %w", err)
				}
			}
			cfg.SampleBin = filepath.Join(filepath.Dir(self()), "coat-sample")
			cfg.Progress = cmd.OutOrStdout()
			mcfg.SampleBin, mcfg.Progress, mcfg.OutDir, mcfg.MigrateAt = cfg.SampleBin, cfg.Progress, cfg.OutDir, cfg.MigrateAt
			scfg.SampleBin, scfg.Progress = cfg.SampleBin, cfg.Progress
			ctx := cmd.Context()
			_, lerr := lab.Load(g.lab)
			fresh := lerr != nil
			st, err := lab.Up(ctx, lab.Options{Name: g.lab, Hosts: hosts, Self: self()})
			if err != nil {
				return err
			}
			if err := labImages(cmd, st); err != nil {
				return err
			}
			s, err := connect(ctx)
			if err != nil {
				return err
			}
			defer s.Close()
			if slices.Contains(mcfg.Workloads, bench.WorkloadMemory) {
				if err := redisImage(cmd, s, st); err != nil {
					return err
				}
			}
			if err := os.MkdirAll(cfg.OutDir, 0o755); err != nil {
				return err
			}
			started := time.Now()
			ops := &benchOps{s: s, st: st, hosts: hosts}
			ops.podmanBench = &podmanBench{st: st, ips: func(ctx context.Context) (map[string]bool, error) {
				cs, err := s.st.Containers(ctx)
				used := map[string]bool{}
				for _, c := range cs {
					used[c.IP] = true
				}
				return used, err
			}}
			defer ops.podmanBench.close()
			var runs []bench.Run
			var runFailures []bench.Failure
			if len(cfg.Workloads) > 0 {
				runs, runFailures, err = bench.Bench(ctx, ops, cfg)
			}
			var mruns []bench.Run
			var failures []bench.Failure
			if err == nil && len(mcfg.Workloads) > 0 {
				before := maps.Clone(st.Links)
				mruns, failures, err = bench.BenchMatrix(ctx, ops, mcfg)
				// Give the lab back the links it had.
				if _, lerr := lab.Up(context.WithoutCancel(ctx), lab.Options{Name: g.lab, Hosts: hosts, Self: self(), Links: allLinks(hosts, before)}); lerr != nil {
					err = errors.Join(err, fmt.Errorf("restore the lab's links: %w", lerr))
				}
			}
			var sruns []bench.Run
			var sfailures []bench.Failure
			if err == nil && storm {
				sruns, sfailures, err = bench.BenchStorm(ctx, ops, scfg)
			}
			if len(runs)+len(mruns)+len(failures)+len(runFailures)+len(sruns)+len(sfailures) > 0 {
				info := bench.MatrixReportInfo{MemRate: mcfg.MemRate, FreshHost: fresh}
				st := stormResults{runs: sruns, failures: sfailures, rate: scfg.Rate}
				if werr := writeBench(cfg, runs, mruns, runFailures, failures, st, info, started, podmanNote); werr != nil {
					return errors.Join(err, werr)
				}
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%d runs in %s; report: %s\n", len(runs)+len(mruns)+len(sruns), time.Since(started).Round(time.Second), filepath.Join(cfg.OutDir, "README.md"))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&workloads, "workloads", "sample,sockperf,iperf3", "workloads, comma-separated: sample, sockperf, iperf3 (the paper's, by mode), memory and conns (by link profile and strategy), storm (handover storms: services following the roaming client)")
	f.StringVar(&workloads, "workload", "sample,sockperf,iperf3", "the same as --workloads")
	f.StringVar(&modes, "modes", "coat,traditional,reference,coat-nohold,coat-stock,podman", "modes of sample, sockperf and iperf3, comma-separated: coat, traditional (drops connections, the paper's baseline), reference (the hand-run checkpoint-file, copy, restore path), coat-nohold (COAT without holding packets), coat-stock (COAT with runc's stock CRIU freeze and cgroup handling: the before of the profile), podman (the paper artifact's own path with real Podman: checkpoint --export, scp, restore --import; left out, with the reason in the report, where Podman is not installed)")
	f.IntVar(&cfg.RefRuns, "ref-runs", 10, "runs per workload for the other modes")
	f.IntVar(&cfg.Runs, "runs", 20, "runs per workload for coat and traditional")
	f.StringVar(&cfg.OutDir, "out", "docs/bench", "output directory (report, CSV, plots)")
	f.DurationVar(&cfg.ClientTime, "client-time", 3*time.Second, "how long each client runs")
	f.DurationVar(&cfg.MigrateAt, "migrate-at", 1200*time.Millisecond, "when the migration starts in the client's run")
	f.IntVar(&hosts, "hosts", 2, "edge hosts in the lab")
	f.StringVar(&profiles, "profiles", "lan,1gbit,edge", "memory and conns: link profiles, comma-separated: lan (unshaped), 1gbit, edge (100 Mbit/s, 10 ms)")
	f.StringVar(&strategies, "strategies", strings.Join(bench.Strategies, ","), "memory and conns: migration strategies, comma-separated")
	f.StringVar(&sizes, "mem-sizes", "64MiB,256MiB,1GiB", "memory: redis data set sizes, comma-separated")
	f.StringVar(&counts, "conn-counts", "1,100,1000", "conns: connection counts, comma-separated (1 is the single-connection baseline)")
	f.IntVar(&mcfg.Runs, "matrix-runs", 3, "memory and conns: runs per profile, size or count, and strategy")
	f.Float64Var(&mcfg.MemRate, "mem-rate", 50, "memory: the redis client's requests per second (64 KiB each)")
	f.DurationVar(&mcfg.Tail, "tail", 2*time.Second, "memory and conns: client time after the migration returns")
	f.StringVar(&stormSizes, "storm-sizes", "5,20", "storm: services that follow the client and migrate at each of its roams, comma-separated storm sizes")
	f.IntVar(&scfg.Runs, "storm-runs", 3, "storm: roams per storm size (back and forth between edge-1 and edge-2)")
	f.StringVar(&scfg.Rate, "storm-rate", "20KB/s", "storm: each service's client stream rate")
	return cmd
}

func matrixFlags(m *bench.MatrixConfig, profiles, strategies, sizes, counts string) error {
	m.Profiles, m.Strategies = splitList(profiles), splitList(strategies)
	for _, p := range m.Profiles {
		if _, err := bench.LookupProfile(p); err != nil {
			return err
		}
	}
	for _, s := range m.Strategies {
		if !slices.Contains(bench.Strategies, s) {
			return fmt.Errorf("--strategies: unknown strategy %q: want %s", s, strings.Join(bench.Strategies, ", "))
		}
	}
	for _, s := range splitList(sizes) {
		n, err := sample.ParseSize(s)
		if err != nil || n < 64<<10 {
			return fmt.Errorf("--mem-sizes: %q: want a size of at least 64KiB, e.g. 256MiB", s)
		}
		m.MemSizes = append(m.MemSizes, n)
	}
	for _, s := range splitList(counts) {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 20000 {
			return fmt.Errorf("--conn-counts: %q: want a count between 1 and 20000", s)
		}
		m.ConnCounts = append(m.ConnCounts, n)
	}
	return nil
}

// allLinks is every node's link for lab.Options: the given ones, plain
// for the rest.
func allLinks(hosts int, links map[string]linkspec.Link) map[string]linkspec.Link {
	all := map[string]linkspec.Link{}
	for _, n := range (&lab.State{Hosts: hosts}).Nodes() {
		all[n] = links[n]
	}
	return all
}

// redisImage builds the redis image and imports it on every host (the
// lab's own images are sample, sockperf and iperf3).
func redisImage(cmd *cobra.Command, s *session, st *lab.State) error {
	dir := filepath.Join(lab.BaseDir, ".images", "redis")
	if err := images.BuildRedis(dir); err != nil {
		return fmt.Errorf("build image redis (scripts/install-deps.sh installs redis-server): %w", err)
	}
	return importDir(cmd.Context(), nil, s, "redis", dir, images.LabCmd("redis"))
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// stormResults is what the storm workload measured.
type stormResults struct {
	runs     []bench.Run
	failures []bench.Failure
	rate     string
}

func writeBench(cfg bench.Config, runs, mruns []bench.Run, runFailures, failures []bench.Failure, storm stormResults, info bench.MatrixReportInfo, started time.Time, podmanNote string) error {
	allRuns := append(slices.Clone(mruns), storm.runs...) // in runs.csv and runs.json
	allFailures := append(slices.Clone(failures), storm.failures...)
	f, err := os.Create(filepath.Join(cfg.OutDir, "runs.csv"))
	if err != nil {
		return err
	}
	if err := bench.WriteCSV(f, append(slices.Clone(runs), allRuns...)); err != nil {
		f.Close()
		return err
	}
	f.Close()
	b, _ := json.Marshal(append(slices.Clone(runs), allRuns...))
	if err := os.WriteFile(filepath.Join(cfg.OutDir, "runs.json"), b, 0o644); err != nil {
		return err
	}
	if len(allFailures)+len(runFailures) > 0 || len(allRuns) > 0 {
		b, _ := json.Marshal(append(slices.Clone(runFailures), allFailures...))
		if err := os.WriteFile(filepath.Join(cfg.OutDir, "failures.json"), b, 0o644); err != nil {
			return err
		}
	}
	if _, err := bench.WritePlots(cfg.OutDir, runs); err != nil {
		return fmt.Errorf("plots: %w", err)
	}
	plots, err := bench.WriteMatrixPlots(cfg.OutDir, mruns)
	if err != nil {
		return fmt.Errorf("plots: %w", err)
	}
	splots, err := bench.WriteStormPlots(cfg.OutDir, storm.runs)
	if err != nil {
		return fmt.Errorf("plots: %w", err)
	}
	m := machine(started)
	m.Podman = podmanNote
	m.Command = "coat " + strings.Join(os.Args[2:], " ")
	if len(os.Args) > 1 {
		m.Command = "coat " + strings.Join(os.Args[1:], " ")
	}
	md, err := os.Create(filepath.Join(cfg.OutDir, "README.md"))
	if err != nil {
		return err
	}
	defer md.Close()
	if err := bench.WriteMarkdown(md, bench.Summarize(runs), m, bench.Targets{OverheadPct: 5, SampleDowntimeMS: 150, StallOverDowntimeMS: 50}); err != nil {
		return err
	}
	if err := bench.WriteRunFailures(md, runFailures); err != nil {
		return err
	}
	if len(mruns)+len(failures) > 0 || len(runs) == 0 && len(storm.runs)+len(storm.failures) == 0 {
		if err := bench.WriteMatrixMarkdown(md, mruns, failures, runs, plots, info); err != nil {
			return err
		}
	}
	if len(storm.runs)+len(storm.failures) == 0 {
		return nil
	}
	return bench.WriteStormMarkdown(md, storm.runs, storm.failures, splots, storm.rate)
}

func machine(started time.Time) bench.Machine {
	out := func(name string, args ...string) string {
		b, _ := exec.Command(name, args...).CombinedOutput()
		return strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0])
	}
	cpu := "unknown"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				cpu = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	mem := "unknown"
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		mem = strings.Join(strings.Fields(strings.SplitN(string(b), "\n", 2)[0])[1:], " ")
	}
	host, _ := os.Hostname()
	return bench.Machine{
		Host: host, Kernel: out("uname", "-r"), CPU: cpu, Cores: fmt.Sprint(goruntime.NumCPU()), Memory: mem,
		Date: started.UTC().Format(time.RFC3339), Go: goruntime.Version(), CRIU: out("criu", "--version"),
		Runc: out("runc", "--version"),
	}
}

// benchOps drives the lab for the bench.
type benchOps struct {
	s     *session
	st    *lab.State
	hosts int
	*podmanBench
}

// SetProfile gives every node of the lab the profile's link (lab up with
// links; the agents learn their link rate).
func (o *benchOps) SetProfile(ctx context.Context, p bench.Profile) error {
	l := linkspec.Link{Rate: linkspec.Rate(p.RateBps), Delay: p.Delay}
	links := map[string]linkspec.Link{}
	for _, n := range (&lab.State{Hosts: o.hosts}).Nodes() {
		links[n] = l
	}
	st, err := lab.Up(ctx, lab.Options{Name: g.lab, Hosts: o.hosts, Self: self(), Links: links})
	if err != nil {
		return err
	}
	o.st = st
	return nil
}

// MigrateStrategy asks the container's agent for a migration with a
// strategy and reads the result with its strategy fields.
func (o *benchOps) MigrateStrategy(ctx context.Context, name, to, strategy string) (*bench.MigResult, error) {
	_, cl, err := o.s.container(ctx, name)
	if err != nil {
		return nil, err
	}
	body, _ := json.Marshal(map[string]any{"to": to, "strategy": strategy})
	rc, err := cl.Stream(ctx, http.MethodPost, "/v1/containers/"+url.PathEscape(name)+"/migrate", bytes.NewReader(body), "application/json")
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	sc := bufio.NewScanner(rc)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var p struct {
			Result *bench.MigResult `json:"result"`
			Error  string           `json:"error"`
		}
		if err := json.Unmarshal(sc.Bytes(), &p); err != nil {
			return nil, fmt.Errorf("bad progress line %q: %w", sc.Text(), err)
		}
		if p.Error != "" {
			return nil, errors.New(p.Error)
		}
		if p.Result != nil {
			return p.Result, nil
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("migration stream: %w", err)
	}
	return nil, errors.New("migration stream ended without a result: check the source agent's log")
}

// Host is where the container runs now.
func (o *benchOps) Host(ctx context.Context, name string) (string, error) {
	c, err := o.s.st.Container(ctx, name)
	if err != nil {
		return "", err
	}
	return c.Host, nil
}

func (o *benchOps) Run(ctx context.Context, host string, req api.RunRequest) (string, error) {
	cl, err := o.s.agent(ctx, host)
	if err != nil {
		return "", err
	}
	c, err := cl.Run(ctx, req)
	return c.IP, err
}

func (o *benchOps) Migrate(ctx context.Context, name string, req api.MigrateRequest) (*api.MigrateResult, error) {
	_, cl, err := o.s.container(ctx, name)
	if err != nil {
		return nil, err
	}
	return cl.Migrate(ctx, name, req, nil)
}

func (o *benchOps) Remove(ctx context.Context, name string) error {
	_, cl, err := o.s.container(ctx, name)
	if err != nil {
		return err
	}
	return cl.Remove(ctx, name)
}

func (o *benchOps) ClientCommand(ctx context.Context, argv ...string) *exec.Cmd {
	return exec.CommandContext(ctx, argv[0], argv[1:]...)
}

func (o *benchOps) StartClient(cmd *exec.Cmd) error {
	return lab.InNetNS(o.st.NetNSPath(lab.ClientNode), cmd.Start)
}

// WaitListen looks for a listening socket on port in the container's
// network namespace (on the host it runs on).
func (o *benchOps) WaitListen(ctx context.Context, name string, port int) error {
	c, err := o.s.st.Container(ctx, name)
	if err != nil {
		return err
	}
	return waitListenIn(ctx, filepath.Join(o.st.Dir, c.Host, "netns", name), name, port)
}

// waitListenIn waits (up to 20 s) for a listening TCP socket on port in
// the network namespace ns.
func waitListenIn(ctx context.Context, ns, name string, port int) error {
	want := fmt.Sprintf(":%04X ", port)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		found := false
		_ = lab.InNetNS(ns, func() error {
			for _, f := range []string{"/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"} {
				b, _ := os.ReadFile(f)
				for _, l := range strings.Split(string(b), "\n") {
					fs := strings.Fields(l)
					if len(fs) > 3 && strings.HasSuffix(fs[1]+" ", want) && fs[3] == "0A" {
						found = true
					}
				}
			}
			return nil
		})
		if found {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s does not listen on port %d", name, port)
}
