package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/coat-project/coat/internal/api"
	"github.com/coat-project/coat/internal/migrate"
	"github.com/coat-project/coat/internal/store"
)

// drainTTL is the lease of a drain's record: a drain killed without
// cleaning up (SIGKILL, a lost machine) stops showing within this.
const drainTTL = 15 * time.Second

// drainReport is `coat drain --json`'s shape. Both lists are sorted by
// name and never null.
type drainReport struct {
	Host   string       `json:"host"`
	Moved  []drainMoved `json:"moved"`
	Failed []drainFail  `json:"failed"`
}

type drainMoved struct {
	Name       string  `json:"name"`
	To         string  `json:"to"`
	DowntimeMS float64 `json:"downtime_ms"`
	TotalMS    float64 `json:"total_ms"`
}

type drainFail struct {
	Name  string `json:"name"`
	To    string `json:"to,omitempty"` // "" when no host had room
	Error string `json:"error"`
}

// planDrain assigns each container (in name order) to the least loaded
// target, counting the containers already assigned; ties go to the first
// target by name. maxPer > 0 caps a target's load: containers for which
// no target has room are returned in noRoom.
func planDrain(ctrs []string, load map[string]int, targets []string, maxPer int) (plan map[string]string, noRoom []string) {
	ctrs, targets = slices.Clone(ctrs), slices.Clone(targets)
	sort.Strings(ctrs)
	sort.Strings(targets)
	l := map[string]int{}
	for _, t := range targets {
		l[t] = load[t]
	}
	plan = map[string]string{}
	for _, c := range ctrs {
		best := ""
		for _, t := range targets {
			if maxPer > 0 && l[t] >= maxPer {
				continue
			}
			if best == "" || l[t] < l[best] {
				best = t
			}
		}
		if best == "" {
			noRoom = append(noRoom, c)
			continue
		}
		plan[c] = best
		l[best]++
	}
	return plan, noRoom
}

// hostLoad counts the container records on each host, those on their way
// to it included: what placement weighs.
func hostLoad(cs []store.Container) map[string]int {
	load := map[string]int{}
	for _, c := range cs {
		load[c.Host]++
		if c.MigratingTo != "" {
			load[c.MigratingTo]++
		}
	}
	return load
}

func newDrainCmd() *cobra.Command {
	var parallel, maxPer int
	var asJSON bool
	var strategy string
	var timeout time.Duration
	var failRestore []string
	cmd := &cobra.Command{
		Use:   "drain HOST [--parallel N] [--max-per-host N] [--strategy S] [--timeout D] [--json]",
		Short: "Live-migrate every container off a host to the others (least loaded first)",
		Long: `Live-migrate every container off HOST to the other live hosts, keeping
their TCP connections. Each container goes to the least loaded host (the
one with the fewest containers in the store, counting those already
planned) that has room: with --max-per-host N, a host with N containers
has none; without it, every host has room. The plan is made once, at the
start, and recorded in the store: ` + "`coat ps`" + ` shows where each container
is going and ` + "`coat hosts`" + ` shows HOST as draining (and ` + "`coat run`" + ` refuses
it) until the drain ends, also when it is interrupted.

--parallel N containers move at once. A container whose migration fails
is rolled back (it keeps running on HOST) and the drain goes on with the
others; the summary lists what failed and why, and the exit status is 1.
Containers that are not running (stopped, failed, or migrating already)
cannot be moved and count as failed.`,
		Args: hostArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			host := args[0]
			if parallel < 1 {
				return fmt.Errorf("--parallel %d: give how many containers move at once, 1 or more", parallel)
			}
			if maxPer < 0 {
				return fmt.Errorf("--max-per-host %d: give a positive cap on the containers a host may hold, or 0 for none", maxPer)
			}
			if _, err := migrate.ParseStrategy(strategy); err != nil {
				return err
			}
			if timeout < 0 || (cmd.Flags().Changed("timeout") && timeout == 0) {
				return fmt.Errorf("--timeout takes a positive duration, e.g. 30s or 2m")
			}
			ctx := cmd.Context()
			s, err := connect(ctx)
			if err != nil {
				return err
			}
			defer s.Close()
			return s.drain(ctx, cmd.OutOrStdout(), host, drainOpts{parallel: parallel, maxPer: maxPer, json: asJSON,
				req: api.MigrateRequest{Strategy: strategy, TimeoutMS: timeout.Milliseconds()}, timeout: timeout, failRestore: failRestore})
		},
	}
	f := cmd.Flags()
	f.IntVar(&parallel, "parallel", 1, "how many containers move at once")
	f.IntVar(&maxPer, "max-per-host", 0, "a destination holding this many containers has no room (0: no cap)")
	f.StringVar(&strategy, "strategy", "auto", "how memory moves, as for `coat migrate`")
	f.DurationVar(&timeout, "timeout", 0, "bound on each migration, as for `coat migrate` (default: the agent's, from the container's memory and the link)")
	f.StringArrayVar(&failRestore, "fail-restore", nil, "test hook: make the destination's restore of this container fail (agents need COAT_TEST_HOOKS=1)")
	_ = f.MarkHidden("fail-restore")
	f.BoolVar(&asJSON, "json", false, `print one JSON object: {"host", "moved": [{"name", "to", "downtime_ms", "total_ms"}], "failed": [{"name", "to", "error"}]}`)
	return cmd
}

type drainOpts struct {
	parallel, maxPer int
	json             bool
	req              api.MigrateRequest
	timeout          time.Duration
	failRestore      []string // test hook: containers whose restore fails
}

// migrateCeiling bounds one migration call from the CLI's side when no
// --timeout is given; the agent enforces its own, tighter, budget.
const migrateCeiling = 15 * time.Minute

func (s *session) drain(ctx context.Context, out io.Writer, host string, o drainOpts) error {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	hosts, err := s.st.Hosts(rctx)
	if err != nil {
		return err
	}
	cs, err := s.st.Containers(rctx)
	if err != nil {
		return err
	}
	drains, err := s.st.Drains(rctx)
	if err != nil {
		return err
	}
	alive := false
	var targets []string
	for _, h := range hosts {
		switch _, draining := drains[h.Name]; {
		case h.Name == host:
			alive = true
		case !draining:
			targets = append(targets, h.Name)
		}
	}
	var mine []store.Container
	for _, c := range cs {
		if c.Host == host {
			mine = append(mine, c)
		}
	}
	switch {
	case !alive && len(mine) > 0:
		return fmt.Errorf("host %s is not alive (its agent does not renew its record): its containers cannot be migrated off it; start its agent again, or declare it gone with `coat hosts forget %s`", host, host)
	case !alive:
		return fmt.Errorf("unknown host %q: `coat hosts` lists the hosts", host)
	}
	if d, ok := drains[host]; ok {
		return fmt.Errorf("host %s is already being drained (since %s): wait for that drain to end", host, d.Started.Format(time.RFC3339))
	}
	if len(targets) == 0 {
		if len(hosts) == 1 {
			return fmt.Errorf("host %s is the only host: there is nowhere to move its containers; start another host's agent first (`coat hosts` lists them)", host)
		}
		return fmt.Errorf("every other host is being drained too: there is nowhere to move %s's containers; wait for those drains to end", host)
	}
	rep := drainReport{Host: host, Moved: []drainMoved{}, Failed: []drainFail{}}
	var movable []string
	for _, c := range mine {
		switch c.Status {
		case store.StatusRunning:
			movable = append(movable, c.Name)
		case store.StatusMigrating:
			rep.Failed = append(rep.Failed, drainFail{Name: c.Name, Error: fmt.Sprintf("already migrating to %s: drain again once that migration ended", c.MigratingTo)})
		default:
			rep.Failed = append(rep.Failed, drainFail{Name: c.Name, Error: fmt.Sprintf("status %s: only a running container can be migrated (`coat rm %s` removes it)", c.Status, c.Name)})
		}
	}
	plan, noRoom := planDrain(movable, hostLoad(cs), targets, o.maxPer)
	for _, n := range noRoom {
		rep.Failed = append(rep.Failed, drainFail{Name: n, Error: fmt.Sprintf("no host has room: all of %s hold %d containers (--max-per-host)", strings.Join(targets, ", "), o.maxPer)})
	}
	var pmu sync.Mutex // serializes the progress lines
	say := func(format string, a ...any) {
		if !o.json {
			pmu.Lock()
			fmt.Fprintf(out, format, a...)
			pmu.Unlock()
		}
	}
	if len(mine) == 0 {
		if o.json {
			return json.NewEncoder(out).Encode(rep)
		}
		say("host %s has no containers: nothing to drain\n", host)
		return nil
	}
	order := make([]string, 0, len(plan))
	for n := range plan {
		order = append(order, n)
	}
	sort.Strings(order)
	if len(order) > 0 {
		d, err := s.st.StartDrain(ctx, store.Drain{Host: host, Started: time.Now().UTC(), Plan: plan}, drainTTL)
		if errors.Is(err, store.ErrDraining) {
			return fmt.Errorf("host %s is already being drained: wait for that drain to end", host)
		}
		if err != nil {
			return err
		}
		defer func() {
			if err := d.End(); err != nil {
				say("warning: %v\n", err)
			}
		}()
		say("draining %s: %d container(s) to %s, %d at a time\n", host, len(order), strings.Join(targets, ", "), o.parallel)
	}
	var mu sync.Mutex // guards rep
	work := make(chan string)
	var wg sync.WaitGroup
	for range min(o.parallel, max(len(order), 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for name := range work {
				to := plan[name]
				say("  %-20s %s -> %s  started\n", name, host, to)
				res, err := s.moveOne(ctx, name, host, to, o)
				mu.Lock()
				if err != nil {
					rep.Failed = append(rep.Failed, drainFail{Name: name, To: to, Error: err.Error()})
					say("  %-20s %s -> %s  FAILED: %v\n", name, host, to, err)
				} else {
					rep.Moved = append(rep.Moved, drainMoved{Name: name, To: to, DowntimeMS: res.DowntimeMS, TotalMS: res.TotalMS})
					say("  %-20s %s -> %s  moved, downtime %.1f ms (total %.1f ms)\n", name, host, to, res.DowntimeMS, res.TotalMS)
				}
				mu.Unlock()
			}
		}()
	}
dispatch:
	for i, name := range order {
		if ctx.Err() == nil {
			select {
			case work <- name:
				continue
			case <-ctx.Done():
			}
		}
		mu.Lock()
		for _, n := range order[i:] {
			rep.Failed = append(rep.Failed, drainFail{Name: n, To: plan[n], Error: "not started: the drain was interrupted"})
		}
		mu.Unlock()
		break dispatch
	}
	close(work)
	wg.Wait()
	sort.Slice(rep.Moved, func(i, j int) bool { return rep.Moved[i].Name < rep.Moved[j].Name })
	sort.Slice(rep.Failed, func(i, j int) bool { return rep.Failed[i].Name < rep.Failed[j].Name })
	if o.json {
		if err := json.NewEncoder(out).Encode(rep); err != nil {
			return err
		}
	} else {
		what := "drained " + host
		if ctx.Err() != nil {
			what = "drain of " + host + " interrupted"
		}
		say("%s: %d moved, %d failed\n", what, len(rep.Moved), len(rep.Failed))
		for _, f := range rep.Failed {
			say("  failed %s: %s\n", f.Name, f.Error)
		}
	}
	if len(rep.Failed) > 0 {
		names := make([]string, len(rep.Failed))
		for i, f := range rep.Failed {
			names[i] = f.Name
		}
		return fmt.Errorf("drain of %s: %d of %d container(s) did not move (%s); see why above, fix it and run the drain again",
			host, len(rep.Failed), len(mine), strings.Join(names, ", "))
	}
	return nil
}

// moveOne migrates name to to; on failure it says where the container is
// now (a failed migration rolls back to the source).
func (s *session) moveOne(ctx context.Context, name, from, to string, o drainOpts) (*api.MigrateResult, error) {
	ceiling := migrateCeiling
	if o.timeout > 0 {
		ceiling = o.timeout + time.Minute
	}
	mctx, cancel := context.WithTimeout(ctx, ceiling)
	defer cancel()
	_, cl, err := s.container(mctx, name)
	if err != nil {
		return nil, err
	}
	req := o.req
	req.To = to
	req.FailRestore = slices.Contains(o.failRestore, name)
	res, err := cl.Migrate(mctx, name, req, nil)
	if err == nil {
		return res, nil
	}
	if mctx.Err() != nil {
		// The source agent finishes the migration, or rolls it back, on
		// its own when its caller goes.
		why := "interrupted"
		if ctx.Err() == nil {
			why = fmt.Sprintf("no answer within %v", ceiling)
		}
		return nil, fmt.Errorf("%s while migrating to %s: the agents finish or roll the migration back on their own; `coat ps` shows where it ends up", why, to)
	}
	// Where is it now? Read with a deadline of its own: ctx may be done.
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer rcancel()
	if c, gerr := s.st.Container(rctx, name); gerr == nil {
		switch {
		case c.Status == store.StatusRunning && c.Host == from:
			err = fmt.Errorf("%w (rolled back: running on %s)", err, c.Host)
		default:
			err = fmt.Errorf("%w (now %s on %s)", err, c.Status, c.Host)
		}
	}
	return nil, err
}
