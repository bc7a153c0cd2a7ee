package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/coat-project/coat/internal/api"
	"github.com/coat-project/coat/internal/bench"
	"github.com/coat-project/coat/internal/lab"
)

func newBenchCmd() *cobra.Command {
	var cfg bench.Config
	var workloads, modes string
	var hosts int
	cmd := &cobra.Command{
		Use:   "bench [--workload sample,sockperf,iperf3] [--runs N] [--modes coat,traditional,...] [--out DIR]",
		Short: "Reproduce the paper's evaluation on the lab: COAT against traditional migration",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Workloads = splitList(workloads)
			cfg.Modes = splitList(modes)
			if cfg.Runs < 1 {
				return fmt.Errorf("--runs %d: want at least 1", cfg.Runs)
			}
			if cfg.RefRuns < 1 {
				cfg.RefRuns = cfg.Runs
			}
			cfg.SampleBin = filepath.Join(filepath.Dir(self()), "coat-sample")
			cfg.Progress = cmd.OutOrStdout()
			ctx := cmd.Context()
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
			if err := os.MkdirAll(cfg.OutDir, 0o755); err != nil {
				return err
			}
			started := time.Now()
			runs, err := bench.Bench(ctx, &benchOps{s: s, st: st}, cfg)
			if len(runs) > 0 {
				if werr := writeBench(cfg, runs, started); werr != nil {
					return werr
				}
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%d runs in %s; report: %s\n", len(runs), time.Since(started).Round(time.Second), filepath.Join(cfg.OutDir, "README.md"))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&workloads, "workload", "sample,sockperf,iperf3", "workloads, comma-separated")
	f.StringVar(&modes, "modes", "coat,traditional,reference,coat-nohold,coat-stock", "modes, comma-separated: coat, traditional (drops connections, the paper's baseline), reference (the hand-run checkpoint-file, copy, restore path), coat-nohold (COAT without holding packets), coat-stock (COAT with runc's stock CRIU freeze and cgroup handling: the before of the profile)")
	f.IntVar(&cfg.RefRuns, "ref-runs", 10, "runs per workload for the other modes")
	f.IntVar(&cfg.Runs, "runs", 20, "runs per workload for coat and traditional")
	f.StringVar(&cfg.OutDir, "out", "docs/bench", "output directory (report, CSV, plots)")
	f.DurationVar(&cfg.ClientTime, "client-time", 3*time.Second, "how long each client runs")
	f.DurationVar(&cfg.MigrateAt, "migrate-at", 1200*time.Millisecond, "when the migration starts in the client's run")
	f.IntVar(&hosts, "hosts", 2, "edge hosts in the lab")
	return cmd
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

func writeBench(cfg bench.Config, runs []bench.Run, started time.Time) error {
	f, err := os.Create(filepath.Join(cfg.OutDir, "runs.csv"))
	if err != nil {
		return err
	}
	if err := bench.WriteCSV(f, runs); err != nil {
		f.Close()
		return err
	}
	f.Close()
	b, _ := json.Marshal(runs)
	if err := os.WriteFile(filepath.Join(cfg.OutDir, "runs.json"), b, 0o644); err != nil {
		return err
	}
	if _, err := bench.WritePlots(cfg.OutDir, runs); err != nil {
		return fmt.Errorf("plots: %w", err)
	}
	m := machine(started)
	m.Command = "coat " + strings.Join(os.Args[2:], " ")
	if len(os.Args) > 1 {
		m.Command = "coat " + strings.Join(os.Args[1:], " ")
	}
	md, err := os.Create(filepath.Join(cfg.OutDir, "README.md"))
	if err != nil {
		return err
	}
	defer md.Close()
	return bench.WriteMarkdown(md, bench.Summarize(runs), m, bench.Targets{OverheadPct: 5, SampleDowntimeMS: 150, StallOverDowntimeMS: 50})
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
	s  *session
	st *lab.State
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
	ns := filepath.Join(o.st.Dir, c.Host, "netns", name)
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
