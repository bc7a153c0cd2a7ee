package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	runc "github.com/containerd/go-runc"
	"github.com/spf13/cobra"

	"github.com/coat-project/coat/internal/api"
	"github.com/coat-project/coat/internal/chaos"
	"github.com/coat-project/coat/internal/lab"
	"github.com/coat-project/coat/internal/store"
)

func newChaosCmd() *cobra.Command {
	var migrations, containers int
	var seed uint64
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "chaos [--migrations N] [--seed S] [--containers K] [--json]",
		Short: "On the lab: migrate containers back and forth while killing agents, partitioning hosts and killing etcd members; then check that every container runs exactly once, intact",
		Long: `On the lab (` + "`coat lab up`" + ` first, with 2 hosts or more): K sample containers
migrate back and forth between random hosts while, at random times drawn
from the seed, an agent is killed (and restarted), a host is cut off the
underlay (and reconnected), or an etcd member is killed (and restarted).
After N migrations every fault is repaired and the cluster settles; then
each container must run on exactly one host (the one its record names),
answer through the overlay with its memory intact, and leave nothing
behind anywhere else. The report counts faults, migrations committed and
rolled back, and violations; the exit status is 1 if there is any.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if migrations < 1 || containers < 1 || containers > 20 {
				return fmt.Errorf("--migrations must be at least 1 and --containers 1 to 20")
			}
			if os.Geteuid() != 0 {
				return fmt.Errorf("coat chaos kills and restarts the lab's processes: run it as root")
			}
			st, err := lab.Load(g.lab)
			if err != nil {
				return fmt.Errorf("%w (`coat lab up --hosts 3` first)", err)
			}
			if st.Hosts < 2 {
				return fmt.Errorf("lab %s has %d host: chaos needs 2 or more (`coat lab down`, then `coat lab up --hosts 3`)", st.Name, st.Hosts)
			}
			if !cmd.Flags().Changed("seed") {
				seed = uint64(time.Now().UnixNano())
			}
			rep, err := runChaos(cmd.Context(), st, seed, migrations, containers, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if asJSON {
				if rep.Violations == nil {
					rep.Violations = []string{}
				}
				if err := json.NewEncoder(cmd.OutOrStdout()).Encode(rep); err != nil {
					return err
				}
			} else {
				fmt.Fprint(cmd.OutOrStdout(), rep.String())
			}
			if len(rep.Violations) > 0 {
				return exitError{code: 1}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&migrations, "migrations", 200, "migrations to run (those refused before they began do not count)")
	f.Uint64Var(&seed, "seed", 0, "seed of the random choices (default: the time); the report prints it")
	f.IntVar(&containers, "containers", 4, "sample containers migrating at once")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}

// chaosRun is one chaos run on a lab.
type chaosRun struct {
	st     *lab.State
	s      *session
	plan   *chaos.Plan
	mu     sync.Mutex // guards plan, rep, acked, st
	rep    chaos.Report
	acked  map[string]int
	start  time.Time
	log    io.Writer
	sample string // the coat-sample binary
}

func runChaos(ctx context.Context, st *lab.State, seed uint64, n, k int, log io.Writer) (*chaos.Report, error) {
	s, err := connect(ctx)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	var hosts []string
	for i := 1; i <= st.Hosts; i++ {
		hosts = append(hosts, lab.EdgeName(i))
	}
	r := &chaosRun{
		st: st, s: s, plan: chaos.NewPlan(seed, hosts, st.EtcdPidKeys()), acked: map[string]int{},
		log: log, sample: filepath.Join(filepath.Dir(self()), "coat-sample"),
	}
	r.rep = chaos.Report{Seed: seed, Hosts: st.Hosts, Containers: k, FaultCounts: map[string]int{}, Outcomes: map[string]int{}}
	names := make([]string, k)
	for i := range names {
		names[i] = fmt.Sprintf("chaos-%d", i+1)
		if err := r.runContainer(ctx, names[i], hosts[i%len(hosts)]); err != nil {
			return nil, err
		}
	}
	r.start = time.Now()
	fmt.Fprintf(log, "chaos: seed %d, %d containers on %d hosts, %d migrations\n", seed, k, st.Hosts, n)
	wctx, stop := context.WithCancel(ctx)
	var faults sync.WaitGroup
	faults.Add(1)
	go func() { defer faults.Done(); r.inject(wctx) }()
	var workers sync.WaitGroup
	for _, name := range names {
		workers.Add(1)
		go func() { defer workers.Done(); r.migrate(wctx, name, n) }()
	}
	workers.Wait()
	stop()
	faults.Wait()
	r.rep.DurationS = time.Since(r.start).Seconds()
	settled := time.Now()
	fmt.Fprintf(log, "chaos: %d migrations in %.0f s; repairing everything and letting the cluster settle\n", r.rep.Migrations, r.rep.DurationS)
	r.repairAll(ctx)
	r.settle(ctx, names)
	r.rep.SettleS = time.Since(settled).Seconds()
	for _, name := range names {
		r.rep.Violations = append(r.rep.Violations, chaos.Check(r.observe(ctx, name))...)
	}
	if len(r.rep.Violations) == 0 {
		// Leave the lab as it was found.
		for _, name := range names {
			if c, cl, err := s.container(ctx, name); err == nil && c.Status == store.StatusRunning {
				rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				_ = cl.Remove(rctx, name)
				cancel()
			}
		}
	}
	return &r.rep, nil
}

// runContainer starts a sample container (replacing one left by an
// earlier run) and waits until it answers.
func (r *chaosRun) runContainer(ctx context.Context, name, host string) error {
	if c, cl, err := r.s.container(ctx, name); err == nil {
		if err := cl.Remove(ctx, name); err != nil {
			return fmt.Errorf("remove %s left by an earlier run (on %s): %w", name, c.Host, err)
		}
	}
	cl, err := r.s.agent(ctx, host)
	if err != nil {
		return err
	}
	c, err := cl.Run(ctx, api.RunRequest{Name: name, Image: "sample", Args: []string{"/bin/coat-sample", "server"}})
	if err != nil {
		return fmt.Errorf("run %s on %s: %w (the lab needs its images: `coat lab up`)", name, host, err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if v, err := r.incr(ctx, c.IP); err == nil {
			r.acked[name] = v
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s does not answer on %s", name, c.IP)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// incr bumps a container's memory counter through the overlay, from the
// client node, and returns its new value.
func (r *chaosRun) incr(ctx context.Context, ip string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c := exec.CommandContext(ctx, r.sample, "ctl", "--addr", ip+":7001", "incr")
	var out strings.Builder
	c.Stdout = &out
	if err := lab.InNetNS(r.st.NetNSPath(lab.ClientNode), c.Start); err != nil {
		return 0, err
	}
	if err := c.Wait(); err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(out.String()))
}

// migrate moves one container back and forth until the run has n
// migrations.
func (r *chaosRun) migrate(ctx context.Context, name string, n int) {
	for ctx.Err() == nil {
		r.mu.Lock()
		done := r.rep.Migrations >= n
		r.mu.Unlock()
		if done {
			return
		}
		c, err := r.s.st.Container(ctx, name)
		if err != nil || c.Status == store.StatusMigrating {
			time.Sleep(500 * time.Millisecond)
			continue
		}
		if c.Status == store.StatusFailed {
			fmt.Fprintf(r.log, "chaos: %s failed (%s); it stays out of the run\n", name, c.Error)
			return
		}
		r.mu.Lock()
		to, pause := r.plan.Destination(c.Host), r.plan.Pause()
		r.mu.Unlock()
		outcome := chaos.Refused
		if cl, err := r.s.agent(ctx, c.Host); err == nil {
			mctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
			_, err = cl.Migrate(mctx, name, api.MigrateRequest{To: to, Strategy: "stop-and-copy"}, nil)
			cancel()
			outcome = chaos.Classify(err)
			if outcome == chaos.Unknown {
				fmt.Fprintf(r.log, "chaos: %s %s -> %s: %v (the record decides)\n", name, c.Host, to, err)
			}
		}
		r.mu.Lock()
		if outcome != chaos.Refused || ctx.Err() == nil {
			r.rep.Count(outcome)
		}
		r.mu.Unlock()
		if outcome == chaos.Refused {
			time.Sleep(500 * time.Millisecond)
			continue
		}
		if v, err := r.incr(ctx, c.IP); err == nil {
			r.mu.Lock()
			r.acked[name] = max(r.acked[name], v)
			r.mu.Unlock()
		}
		time.Sleep(pause)
	}
}

// inject draws faults and applies them, one at a time, until ctx ends;
// each is repaired before the next.
func (r *chaosRun) inject(ctx context.Context) {
	for {
		r.mu.Lock()
		f := r.plan.NextFault()
		r.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-time.After(f.After):
		}
		f.At, f.For = time.Since(r.start).Seconds(), f.Repair.Seconds()
		if err := r.apply(f); err != nil {
			fmt.Fprintf(r.log, "chaos: %s %s: %v\n", f.Kind, f.Node, err)
			continue
		}
		r.mu.Lock()
		r.rep.Faults = append(r.rep.Faults, f)
		r.rep.FaultCounts[f.Kind]++
		r.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-time.After(f.Repair):
		}
		if err := r.repair(context.WithoutCancel(ctx), f); err != nil {
			fmt.Fprintf(r.log, "chaos: repair %s %s: %v\n", f.Kind, f.Node, err)
		}
	}
}

func (r *chaosRun) apply(f chaos.Fault) error {
	switch f.Kind {
	case chaos.Partition:
		return r.st.Partition(f.Node, true)
	default: // an agent or an etcd member: killed outright
		st, err := lab.Load(r.st.Name)
		if err != nil {
			return err
		}
		pid := st.Pids[f.Node]
		if pid <= 0 {
			return fmt.Errorf("no pid recorded for %s", f.Node)
		}
		return syscall.Kill(pid, syscall.SIGKILL)
	}
}

func (r *chaosRun) repair(ctx context.Context, f chaos.Fault) error {
	if f.Kind == chaos.Partition {
		return r.st.Partition(f.Node, false)
	}
	return r.labUp(ctx)
}

// labUp restarts whatever of the lab is dead (lab up is idempotent).
func (r *chaosRun) labUp(ctx context.Context) error {
	st, err := lab.Up(ctx, lab.Options{Name: r.st.Name, Hosts: r.st.Hosts, Self: self(), Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.st = st
	r.mu.Unlock()
	return nil
}

func (r *chaosRun) repairAll(ctx context.Context) {
	for _, n := range r.st.Partitioned() {
		_ = r.st.Partition(n, false)
	}
	if err := r.labUp(ctx); err != nil {
		fmt.Fprintf(r.log, "chaos: lab up: %v\n", err)
	}
}

// settle waits (up to two minutes) until no container is migrating, no
// migration record or lock is left, and every host is registered.
func (r *chaosRun) settle(ctx context.Context, names []string) {
	deadline := time.Now().Add(2 * time.Minute)
	said := time.Now()
	for time.Now().Before(deadline) {
		why := r.unsettled(ctx, names)
		if why == "" {
			// The recovery loops run every 2 s: give them one more pass
			// to remove what the last decisions left behind.
			time.Sleep(5 * time.Second)
			return
		}
		if time.Since(said) >= 20*time.Second {
			fmt.Fprintf(r.log, "chaos: still settling: %s\n", why)
			said = time.Now()
		}
		time.Sleep(time.Second)
	}
	fmt.Fprintf(r.log, "chaos: not settled after 2 minutes: %s\n", r.unsettled(ctx, names))
}

// unsettled says what the cluster still has under way ("" once nothing).
func (r *chaosRun) unsettled(ctx context.Context, names []string) string {
	hosts, err := r.s.st.Hosts(ctx)
	if err != nil {
		return "hosts: " + err.Error()
	}
	if len(hosts) < r.st.Hosts {
		return fmt.Sprintf("%d of %d hosts registered", len(hosts), r.st.Hosts)
	}
	ms, err := r.s.st.Migrations(ctx)
	if err != nil {
		return "migrations: " + err.Error()
	}
	if len(ms) > 0 {
		return fmt.Sprintf("migration record of %s (%s -> %s, %s)", ms[0].Name, ms[0].From, ms[0].To, ms[0].Phase)
	}
	for _, n := range names {
		c, err := r.s.st.Container(ctx, n)
		if err != nil {
			return n + ": " + err.Error()
		}
		if c.Status == store.StatusMigrating {
			return n + " migrating"
		}
		locked, err := r.s.st.Locked(ctx, n)
		if err != nil {
			return n + ": lock: " + err.Error()
		}
		if locked {
			return n + " locked"
		}
	}
	return ""
}

// observe gathers a container's end state from the store, runc on every
// host, the hosts' state directories, and the container itself.
func (r *chaosRun) observe(ctx context.Context, name string) chaos.Observed {
	o := chaos.Observed{Name: name, Runc: map[string]string{}, Counter: -1, Acked: r.acked[name]}
	c, err := r.s.st.Container(ctx, name)
	if err != nil {
		o.Status, o.Error = "missing", err.Error()
		return o
	}
	o.Host, o.Status, o.Error, o.Migrating = c.Host, string(c.Status), c.Error, c.MigratingTo != ""
	if ms, err := r.s.st.Migrations(ctx); err == nil {
		for _, m := range ms {
			o.Migrating = o.Migrating || m.Name == name
		}
	}
	o.Locked, _ = r.s.st.Locked(ctx, name)
	for i := 1; i <= r.st.Hosts; i++ {
		h := lab.EdgeName(i)
		dir := filepath.Join(r.st.Dir, h)
		o.Runc[h] = runcStatus(ctx, filepath.Join(dir, "runc"), name)
		paths := []string{filepath.Join(dir, "incoming", name)}
		if h != c.Host {
			paths = append(paths, filepath.Join(dir, "netns", name), filepath.Join(dir, "containers", name))
		}
		imgs, _ := filepath.Glob(filepath.Join(dir, "checkpoints", name+"-*"))
		for _, p := range append(paths, imgs...) {
			if _, err := os.Stat(p); err == nil {
				o.Leftovers = append(o.Leftovers, p)
			}
		}
	}
	if v, err := r.incr(ctx, c.IP); err == nil {
		o.Counter = v
	}
	return o
}

// runcStatus is runc's view of a container ("" when it has none).
func runcStatus(ctx context.Context, root, name string) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := (&runc.Runc{Root: root}).State(ctx, name)
	if err != nil {
		return ""
	}
	return c.Status
}
