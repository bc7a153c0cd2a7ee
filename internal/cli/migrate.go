package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/coat-project/coat/internal/migrate"

	"github.com/spf13/cobra"

	"github.com/coat-project/coat/internal/api"
	"github.com/coat-project/coat/internal/names"
	"github.com/coat-project/coat/internal/store"
)

func newMigrateCmd() *cobra.Command {
	var req api.MigrateRequest
	var asJSON bool
	var timeout, freeze time.Duration
	cmd := &cobra.Command{
		Use:   "migrate NAME [NAME...] --to HOST [--strategy auto|stop-and-copy|post-copy|pre-copy] [--timeout D] [--freeze-budget D] [--json] [--no-tcp]",
		Short: "Live-migrate a container (or a group of containers of one host, together) to another host, keeping its TCP connections",
		Long: `Live-migrate a container to another host, keeping its TCP connections.

With several names, the containers (all on one host) move as a group with
one freeze window: none is dumped before all are frozen, the destination
restores them all, commits them in one transaction and lets them run
together; if one fails, all roll back. A group moves stop-and-copy.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if len(args) > 1 {
				req.Group = args
			}
			if req.To == "" {
				return fmt.Errorf("--to is required: `coat hosts` lists the hosts")
			}
			if err := names.Container(name); err != nil {
				return err
			}
			if err := req.Validate(); err != nil {
				return fmt.Errorf("--to: %w", err)
			}
			if _, err := migrate.ParseStrategy(req.Strategy); err != nil {
				return err
			}
			if timeout < 0 || freeze < 0 || (cmd.Flags().Changed("timeout") && timeout == 0) || (cmd.Flags().Changed("freeze-budget") && freeze == 0) {
				return fmt.Errorf("--timeout and --freeze-budget take a positive duration, e.g. 30s or 2m")
			}
			if timeout > 0 && freeze > timeout {
				return fmt.Errorf("--freeze-budget %v is longer than --timeout %v: the freeze is part of the migration", freeze, timeout)
			}
			req.TimeoutMS, req.FreezeBudgetMS = timeout.Milliseconds(), freeze.Milliseconds()
			ctx := cmd.Context()
			s, err := connect(ctx)
			if err != nil {
				return err
			}
			defer s.Close()
			c, cl, err := s.container(ctx, name)
			if err != nil {
				return err
			}
			if _, err := s.agent(ctx, req.To); err != nil {
				return err
			}
			if len(req.Group) > 0 {
				return migrateGroup(cmd, s, req, c, cl, asJSON)
			}
			if c.Host == req.To {
				return fmt.Errorf("container %s already runs on %s: pick another host", name, req.To)
			}
			if c.Status == store.StatusMigrating {
				return fmt.Errorf("container %s is already migrating to %s", name, c.MigratingTo)
			}
			out := cmd.OutOrStdout()
			if !asJSON {
				fmt.Fprintf(out, "migrating %s: %s -> %s\n", name, c.Host, req.To)
			}
			ticks := !asJSON && isTerminal(out)
			res, err := cl.Migrate(ctx, name, req, func(p api.Progress) {
				switch {
				case asJSON:
				case p.Phase == "": // a tick: the migration has taken a second
					if ticks {
						fmt.Fprintln(out, progressLine(p))
					}
				default:
					fmt.Fprintf(out, "  %-13s %8.1f ms\n", p.Phase, p.DurationMS)
				}
			})
			if err != nil {
				return fmt.Errorf("migrate %s: %w", name, err)
			}
			if asJSON {
				return json.NewEncoder(out).Encode(res)
			}
			fmt.Fprintf(out, "strategy %s (%s); budget %v, frozen at most %v\n", res.Strategy, res.StrategyReason,
				time.Duration(res.TimeoutMS*float64(time.Millisecond)).Round(time.Second), time.Duration(res.FreezeBudgetMS*float64(time.Millisecond)).Round(time.Second))
			if res.ReplyLost {
				fmt.Fprintf(out, "the destination's answer to the restore was lost; the cluster record says it committed\n")
			}
			fmt.Fprintf(out, "done: checkpoint %.1f ms, transfer %.1f ms, restore %.1f ms, total %.1f ms\n",
				res.CheckpointMS, res.TransferMS, res.RestoreMS, res.TotalMS)
			fmt.Fprintf(out, "downtime %.1f ms, %d bytes moved (image %d, rootfs %d)\n",
				res.DowntimeMS, res.Bytes, res.ImageBytes, res.RootfsBytes)
			if line := imageLine(res); line != "" {
				fmt.Fprintln(out, line)
			}
			if res.Strategy == string(migrate.PostCopy) {
				fmt.Fprintf(out, "post-copy: last page arrived %.1f ms after the restore (%d page faults served on demand); committed only then\n",
					res.LazyMS, res.PagesOnDemand)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.To, "to", "", "destination host")
	f.BoolVar(&asJSON, "json", false, "print the result as one JSON object")
	f.StringVar(&req.Strategy, "strategy", "auto", "how memory moves: auto (picks from memory size, link rate and kernel features), stop-and-copy, post-copy (restore first, fetch memory after; if either host fails before the last page arrives, the container is stopped and reported failed), pre-copy (needs soft-dirty tracking)")
	f.DurationVar(&timeout, "timeout", 0, "bound on the whole migration; when it runs out the migration rolls back (default: 30s plus 5x the time the container's memory takes to move over the link)")
	f.DurationVar(&freeze, "freeze-budget", 0, "bound on the time the container stays frozen; when it runs out the migration rolls back (default: 15s plus 4x the time its memory takes to move)")
	f.BoolVar(&req.NoTCP, "no-tcp", false, "traditional migration: established connections are closed at restore")
	f.BoolVar(&req.NoHold, "no-hold", false, "do not hold the clients' packets at the destination during the freeze (for comparison)")
	f.BoolVar(&req.Slow, "slow", false, "runc's stock checkpoint path (CRIU freezes; cgroup properties saved), to compare")
	_ = f.MarkHidden("slow")
	f.StringVar(&req.CrashAfter, "crash-after", "", "test hook: the coordinating agent exits after this phase (agents need COAT_TEST_HOOKS=1)")
	_ = f.MarkHidden("crash-after")
	f.BoolVar(&req.FailRestore, "fail-restore", false, "test hook: make the destination's restore fail (agents need COAT_TEST_HOOKS=1)")
	_ = f.MarkHidden("fail-restore")
	f.BoolVar(&req.FailResume, "fail-resume", false, "test hook: the source's own restore fails too (agents need COAT_TEST_HOOKS=1)")
	_ = f.MarkHidden("fail-resume")
	f.BoolVar(&req.LoseRestoreReply, "lose-restore-reply", false, "test hook: the destination's answer to the restore is lost (agents need COAT_TEST_HOOKS=1)")
	_ = f.MarkHidden("lose-restore-reply")
	f.BoolVar(&req.DestCrashBeforeCommit, "dest-crash-before-commit", false, "test hook: the destination's agent exits after its restore, before the commit (agents need COAT_TEST_HOOKS=1)")
	_ = f.MarkHidden("dest-crash-before-commit")
	return cmd
}

// migrateGroup moves req.Group together (see the command's help).
func migrateGroup(cmd *cobra.Command, s *session, req api.MigrateRequest, first store.Container, cl *api.Client, asJSON bool) error {
	ctx := cmd.Context()
	if req.Strategy != "" && req.Strategy != "auto" && req.Strategy != string(migrate.StopAndCopy) {
		return fmt.Errorf("a group moves stop-and-copy (its members are released together): drop --strategy %s", req.Strategy)
	}
	if req.NoTCP || req.NoHold {
		return fmt.Errorf("a group move takes no --no-tcp or --no-hold")
	}
	seen := map[string]bool{}
	for _, n := range req.Group {
		if err := names.Container(n); err != nil {
			return err
		}
		if seen[n] {
			return fmt.Errorf("container %s is named twice", n)
		}
		seen[n] = true
		c, err := s.st.Container(ctx, n)
		if err != nil {
			return fmt.Errorf("%s: %w (`coat ps` lists the containers)", n, err)
		}
		if c.Host != first.Host {
			return fmt.Errorf("a group moves from one host: %s runs on %s, %s on %s (move them separately, or first bring them to one host)", first.Name, first.Host, n, c.Host)
		}
		if c.Host == req.To {
			return fmt.Errorf("container %s already runs on %s: pick another host", n, req.To)
		}
		if c.Status != store.StatusRunning {
			return fmt.Errorf("container %s is %s; only running containers can move", n, c.Status)
		}
	}
	out := cmd.OutOrStdout()
	if !asJSON {
		fmt.Fprintf(out, "migrating %s together: %s -> %s\n", strings.Join(req.Group, ", "), first.Host, req.To)
	}
	res, err := cl.MigrateGroup(ctx, first.Name, req, func(p api.Progress) {
		if !asJSON {
			fmt.Fprintf(out, "  %-12s %-13s %8.1f ms\n", p.Name, p.Phase, p.DurationMS)
		}
	})
	if err != nil {
		return fmt.Errorf("migrate %s: %w", strings.Join(req.Group, ", "), err)
	}
	if asJSON {
		return json.NewEncoder(out).Encode(struct {
			Group []api.MigrateResult `json:"group"`
		}{res})
	}
	for _, r := range res {
		fmt.Fprintf(out, "%s: downtime %.1f ms, checkpoint %.1f ms, transfer %.1f ms, restore %.1f ms, %d bytes\n",
			r.Name, r.DowntimeMS, r.CheckpointMS, r.TransferMS, r.RestoreMS, r.Bytes)
	}
	return nil
}

// imageLine says how the destination got the container's image, when
// it had to copy it.
func imageLine(r *api.MigrateResult) string {
	if r.ImageFetchedFrom == "" {
		return ""
	}
	s := fmt.Sprintf("image %s copied from %s to %s before the freeze: %s in %.1f ms (not part of the downtime)",
		r.ImageName, r.ImageFetchedFrom, r.To, humanBytes(r.ImageFetchBytes), r.ImageFetchMS)
	if r.ImageRegistryError != "" {
		s += "\n  (not from its registry: " + r.ImageRegistryError + ")"
	}
	return s
}

// progressLine is how a migration's tick is shown: the phase under way,
// the bytes streamed of the bytes expected, and the time so far.
func progressLine(p api.Progress) string {
	moved := humanBytes(p.BytesMoved)
	if p.BytesExpected > 0 {
		pct := 100 * float64(p.BytesMoved) / float64(p.BytesExpected)
		moved = fmt.Sprintf("%s of ~%s (%.0f%%)", moved, humanBytes(p.BytesExpected), pct)
	}
	cur := p.Current
	if cur == "" {
		cur = "migrating"
	}
	return fmt.Sprintf("  ... %-13s %s moved, %.1f s", cur, moved, p.ElapsedMS/1000)
}

// humanBytes is n in B, KiB, MiB or GiB.
func humanBytes(n int64) string {
	const k = 1024
	switch {
	case n < k:
		return fmt.Sprintf("%d B", n)
	case n < k*k:
		return fmt.Sprintf("%.1f KiB", float64(n)/k)
	case n < k*k*k:
		return fmt.Sprintf("%.1f MiB", float64(n)/(k*k))
	}
	return fmt.Sprintf("%.2f GiB", float64(n)/(k*k*k))
}

// isTerminal says whether w is a terminal (a character device).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
