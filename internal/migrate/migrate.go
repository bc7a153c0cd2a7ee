// Package migrate drives one live migration of a container from its source
// agent to a destination agent, as an explicit sequence of phases:
//
//	locked -> prepared -> checkpointed -> transferred -> restored -> committed
//	                                  \______________\___________\-> rolled-back
//
// locked:       the cluster record says "migrating" (compare-and-swap on the
//
//	record, so a second migration of the same container fails).
//
// prepared:     the destination built the container's network namespace with
//
//	the same IP and MAC, its veth still down, and its directories.
//
// checkpointed: CRIU dumped the container on the source in TCP repair mode;
//
//	the container is frozen and gone from the source kernel, but
//	its network namespace, rootfs and image stay on the source.
//
// transferred:  the checkpoint image and the rootfs upper layer were streamed
//
//	to the destination over mutual TLS.
//
// restored:     the destination restored the container, brought its veth up
//
//	and announced the MAC (gratuitous ARP).
//
// fetched:      (post-copy only) the destination holds every page of the
//
//	container's memory; until then the source keeps serving them.
//
// committed:    the cluster record names the destination (every agent then
//
//	rewrites its VXLAN FDB from its watch); the source deletes
//	its copy.
//
// Any failure before committed rolls back: the destination discards what it
// has, and if the container was already checkpointed the source restores it
// from its own local image, into the namespace it never tore down, so the
// clients' connections survive a failed migration too. Downtime is measured
// from the start of the checkpoint to the end of the restore.
package migrate

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Phase names a migration state.
type Phase string

// The phases in order, plus the terminal failure state.
const (
	PhaseLocked       Phase = "locked"
	PhasePrepared     Phase = "prepared"
	PhaseCheckpointed Phase = "checkpointed"
	PhaseTransferred  Phase = "transferred"
	PhaseRestored     Phase = "restored"
	PhaseFetched      Phase = "fetched"
	PhaseCommitted    Phase = "committed"
	PhaseRolledBack   Phase = "rolled-back"
)

// Steps are the operations a migration is made of. The agent implements
// them for real; tests implement them to check the phase logic.
type Steps interface {
	Lock(ctx context.Context) error
	Prepare(ctx context.Context) error
	Checkpoint(ctx context.Context) error
	// Transfer streams the image and returns the bytes moved.
	Transfer(ctx context.Context) (int64, error)
	Restore(ctx context.Context) error
	// Fetch waits until the destination holds all the container's memory
	// (post-copy; a no-op otherwise). A failure there cannot roll back:
	// the source's image lacks the memory the destination already
	// changed; Fetch must stop the container and say so.
	Fetch(ctx context.Context) error
	Commit(ctx context.Context) error
	// Abort undoes the destination's part.
	Abort(ctx context.Context) error
	// Resume restores the container on the source after a checkpoint.
	Resume(ctx context.Context) error
	// Unlock returns the record to running on the source.
	Unlock(ctx context.Context, cause error) error
}

// Report is what a finished migration measured.
type Report struct {
	Checkpoint, Transfer, Restore, Total, Downtime time.Duration
	// Lazy is from the restore until the last page arrived (post-copy).
	Lazy  time.Duration
	Bytes int64
	Phase Phase
}

// Observer hears about each phase reached, with the time the step took.
type Observer func(p Phase, took time.Duration)

// Run performs the migration. On error the returned report's Phase is
// rolled-back, and the error says which step failed and what rollback did.
func Run(ctx context.Context, s Steps, obs Observer) (Report, error) {
	if obs == nil {
		obs = func(Phase, time.Duration) {}
	}
	var r Report
	start := time.Now()
	step := func(p Phase, f func(context.Context) error) (time.Duration, error) {
		t := time.Now()
		if err := f(ctx); err != nil {
			return 0, err
		}
		d := time.Since(t)
		r.Phase = p
		obs(p, d)
		return d, nil
	}
	if _, err := step(PhaseLocked, s.Lock); err != nil {
		return r, err // nothing to undo: the record was not ours
	}
	if _, err := step(PhasePrepared, s.Prepare); err != nil {
		return r, rollback(ctx, s, &r, false, fmt.Errorf("prepare destination: %w", err))
	}
	freeze := time.Now()
	var err error
	if r.Checkpoint, err = step(PhaseCheckpointed, s.Checkpoint); err != nil {
		// runc leaves the container running when a dump fails, but make
		// sure: Resume is a no-op for a running container.
		return r, rollback(ctx, s, &r, true, fmt.Errorf("checkpoint: %w", err))
	}
	if r.Transfer, err = step(PhaseTransferred, func(ctx context.Context) error {
		n, err := s.Transfer(ctx)
		r.Bytes = n
		return err
	}); err != nil {
		return r, rollback(ctx, s, &r, true, fmt.Errorf("transfer: %w", err))
	}
	if r.Restore, err = step(PhaseRestored, s.Restore); err != nil {
		return r, rollback(ctx, s, &r, true, fmt.Errorf("restore on destination: %w", err))
	}
	r.Downtime = time.Since(freeze)
	lazyStart := time.Now()
	if _, err := step(PhaseFetched, s.Fetch); err != nil {
		r.Total = time.Since(start)
		return r, fmt.Errorf("post-copy: %w", err)
	}
	r.Lazy = time.Since(lazyStart)
	if _, err := step(PhaseCommitted, s.Commit); err != nil {
		// The container runs on the destination; the record could not be
		// moved. Report it: rolling back now would kill a live container.
		r.Total = time.Since(start)
		return r, fmt.Errorf("commit: %w (the container runs on the destination; re-run the migration or fix the store)", err)
	}
	r.Total = time.Since(start)
	return r, nil
}

// rollback undoes a failed migration. It uses a fresh context so that a
// cancelled migration still rolls back.
func rollback(ctx context.Context, s Steps, r *Report, checkpointed bool, cause error) error {
	bg := context.WithoutCancel(ctx)
	var errs []error
	if err := s.Abort(bg); err != nil {
		errs = append(errs, fmt.Errorf("abort on destination: %w", err))
	}
	if checkpointed {
		if err := s.Resume(bg); err != nil {
			errs = append(errs, fmt.Errorf("resume on source: %w", err))
		}
	}
	if err := s.Unlock(bg, errors.Join(append([]error{cause}, errs...)...)); err != nil {
		errs = append(errs, fmt.Errorf("unlock record: %w", err))
	}
	r.Phase = PhaseRolledBack
	if len(errs) > 0 {
		return fmt.Errorf("%w; rollback incomplete: %w", cause, errors.Join(errs...))
	}
	if checkpointed {
		return fmt.Errorf("%w; rolled back: the container runs again on the source", cause)
	}
	return fmt.Errorf("%w; rolled back: the container still runs on the source", cause)
}
