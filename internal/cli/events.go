package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/coat-project/coat/internal/store"
)

// event is one line of `coat events`; its JSON keys are stable (every key
// is always there, empty when it does not apply).
type event struct {
	Type   string    `json:"type"`
	Name   string    `json:"name"`
	Host   string    `json:"host"`
	From   string    `json:"from"`
	To     string    `json:"to"`
	Phase  string    `json:"phase"`
	Status string    `json:"status"`
	Time   time.Time `json:"time"`
}

// Event types.
const (
	evContainerCreated = "container-created"
	evContainerStatus  = "container-status"
	evContainerMoved   = "container-moved"
	evContainerRemoved = "container-removed"
	evMigration        = "migration"
	evHostJoined       = "host-joined"
	evHostLeft         = "host-left"
	evHostGone         = "host-declared-gone"
)

func newEventsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "events [--json]",
		Short: "Follow the cluster live: containers created, moved and removed, migrations by phase, hosts joining and leaving",
		Long: `Follow the cluster's records in the store (etcd's watch) from now until
Ctrl-C: one line per event, or with --json one JSON object per line with
the keys type, name, host, from, to, phase, status and time.

Types: container-created, container-status, container-moved,
container-removed, migration (phase locked, prepared, then committed or
rolled-back: the phases in between run while the container is frozen and
are not written to the store; ` + "`coat migrate`" + ` shows them), host-joined,
host-left (its agent stopped, or its lease expired) and host-declared-gone.`,
		Args: cobra.NoArgs,
		RunE: withSession(func(ctx context.Context, cmd *cobra.Command, s *session, _ []string) error {
			evs, errc, rev, err := s.st.WatchCluster(ctx)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "coat events: following the cluster from revision %d (Ctrl-C stops)\n", rev)
			out := cmd.OutOrStdout()
			for ce := range evs {
				for _, e := range clusterEvents(ce, time.Now().UTC()) {
					if err := writeEvent(out, e, asJSON); err != nil {
						return err
					}
				}
			}
			if err := <-errc; err != nil {
				return fmt.Errorf("%w (run `coat events` again to follow on; events meanwhile are not shown)", err)
			}
			return nil // Ctrl-C
		}),
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "one JSON object per line")
	return cmd
}

// clusterEvents is what a change to the store's records shows: none, one
// or (a committed migration) two events.
func clusterEvents(ce store.ClusterEvent, now time.Time) []event {
	e := event{Name: ce.Name, Time: now}
	switch ce.Kind {
	case store.KindContainer:
		c, prev := ce.Container, ce.PrevContainer
		e.Host, e.Status = c.Host, string(c.Status)
		switch {
		case ce.Deleted:
			e.Type, e.Status = evContainerRemoved, ""
		case prev == nil:
			e.Type = evContainerCreated
		case prev.Status == store.StatusMigrating && c.Status != store.StatusMigrating:
			// The migration's end: the record names its new host, or
			// the old one again.
			m := e
			m.Type, m.From, m.To, m.Host = evMigration, prev.Host, prev.MigratingTo, ""
			if c.Host != prev.Host {
				m.Phase, m.To = "committed", c.Host
				moved := e
				moved.Type, moved.From, moved.To = evContainerMoved, prev.Host, c.Host
				return []event{m, moved}
			}
			m.Phase = "rolled-back"
			return []event{m}
		case prev.Status != c.Status:
			e.Type = evContainerStatus
		default:
			return nil
		}
	case store.KindMigration:
		if ce.Deleted {
			return nil // its end shows on the container's record
		}
		m := ce.Migration
		if prev := ce.PrevMigration; prev != nil && prev.Phase == m.Phase {
			return nil
		}
		e.Type, e.From, e.To, e.Phase = evMigration, m.From, m.To, m.Phase
	case store.KindHost:
		e.Host = ce.Name
		switch {
		case ce.Deleted:
			e.Type = evHostLeft
		case ce.PrevHost == nil:
			e.Type = evHostJoined
		default:
			return nil
		}
	case store.KindGone:
		if ce.Deleted {
			return nil
		}
		e.Type, e.Host = evHostGone, ce.Name
	default:
		return nil
	}
	return []event{e}
}

// writeEvent prints e as a line of text or of JSON.
func writeEvent(w io.Writer, e event, asJSON bool) error {
	if asJSON {
		return json.NewEncoder(w).Encode(e)
	}
	_, err := fmt.Fprintln(w, formatEvent(e))
	return err
}

// formatEvent is e as one line of text.
func formatEvent(e event) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %-18s %s", e.Time.Format("15:04:05.000"), e.Type, e.Name)
	switch e.Type {
	case evMigration:
		fmt.Fprintf(&b, " %s -> %s: %s", e.From, e.To, e.Phase)
		if e.Status != "" {
			fmt.Fprintf(&b, " (%s)", e.Status)
		}
	case evContainerMoved:
		fmt.Fprintf(&b, " %s -> %s", e.From, e.To)
	case evContainerCreated, evContainerStatus:
		fmt.Fprintf(&b, " on %s: %s", e.Host, e.Status)
	case evContainerRemoved:
		fmt.Fprintf(&b, " from %s", e.Host)
	}
	return b.String()
}
