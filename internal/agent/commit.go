package agent

// The commit point of a migration (see internal/migrate's package note):
// one compare-and-swap on the container's record, from "migrating from S
// to D" to either "running on D" (the destination commits, before it lets
// a packet in) or "running on S" (the source rolls back, before it
// restores its copy). Whoever swaps first decides; the other learns it
// from the record. An answer lost on the way (etcd's or a peer's) is
// resolved by reading the record again, never by guessing.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/coat-project/coat/internal/store"
)

// errUndecided: the store could not be asked; nobody may act yet.
var errUndecided = errors.New("the migration's outcome is undecided: the store does not answer")

// decideBound bounds how long one side tries to reach the store for the
// commit point before it gives the decision to recovery.
const decideBound = 20 * time.Second

// decide makes the commit point's swap for the migration of name from
// `from` to `to`: commit (the destination's) or roll back (the source's,
// with cause for the record). It returns whether the migration committed,
// whoever decided it. An error means the store did not answer within
// decideBound (or ctx): the outcome is unknown.
func (a *Agent) decide(ctx context.Context, name, from, to string, commit bool, cause string) (bool, error) {
	committed, _, err := a.decideMine(ctx, name, from, to, commit, cause)
	return committed, err
}

// decideMine is decide, also saying whether this call made the decision
// (rather than finding it made).
func (a *Agent) decideMine(ctx context.Context, name, from, to string, commit bool, cause string) (committed, mine bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, decideBound)
	defer cancel()
	var last error
	for {
		c, err := a.st.Container(ctx, name)
		switch {
		case err == nil && !(c.Status == store.StatusMigrating && c.Host == from && c.MigratingTo == to):
			// Decided already (or another outcome: the container was
			// removed, failed, or moved on): the record says where it is.
			return c.Host == to, false, nil
		case err == nil:
			if commit {
				c.Host, c.Status, c.MigratingTo, c.SwitchedTo, c.Error = to, store.StatusRunning, "", "", ""
			} else {
				c.Host, c.Status, c.MigratingTo, c.SwitchedTo, c.Error = from, store.StatusRunning, "", "", cause
			}
			_, err = a.st.FinishMigration(ctx, c)
			if err == nil {
				return commit, true, nil
			}
			if errors.Is(err, store.ErrConflict) {
				continue // changed under us: read what it is now
			}
			// The swap's answer was lost: it may have applied. Read again.
		case errors.Is(err, store.ErrNotFound):
			return false, false, fmt.Errorf("container %s has no record: %w", name, err)
		}
		last = err
		select {
		case <-ctx.Done():
			return false, false, fmt.Errorf("%w (%v)", errUndecided, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
