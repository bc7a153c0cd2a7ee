// Package migrate drives one live migration of a container from its source
// agent to a destination agent, as an explicit sequence of phases:
//
//	locked -> image-ready -> prepared -> checkpointed -> transferred -> restored -> committed
//	                                                \______________\___________\-> rolled-back
//
// locked:       the cluster record says "migrating" (compare-and-swap on the
//
//	record, so a second migration of the same container fails).
//
// image-ready:  the destination holds the container's image: it had it, or
//
//	copied it from the source (verified against the digest in the
//	image's record) while the container still ran. Never inside
//	the downtime.
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
// The commit point is one compare-and-swap on the container's record in
// etcd, and exactly one side wins it. A stop-and-copy destination makes it
// itself, after its restore and before it lets any packet in (so the
// container never answers from two hosts): the record moves from
// "migrating from S to D" to "running on D". A source that gives up makes
// the opposite swap, "running on S", before it restores its own copy. If
// the destination's answer is lost, the source's swap fails and tells it
// that the destination won: the migration is committed after all. A
// destination whose swap fails kills its copy. Without etcd nobody can
// decide, and the container waits (stopped, its image kept) until etcd
// answers again: never two copies. Post-copy commits on the source, once
// every page is on the destination (see Steps.Fetch).
//
// Any failure before the commit rolls back: the source decides so in the
// record (RollBack), restores the container from its own local image into
// the namespace it never tore down (so the clients' connections survive a
// failed migration too), and the destination discards what it has.
// Downtime is measured from the start of the checkpoint to the end of the
// restore.
//
// Every migration is bounded (Budget): an overall timeout, and a freeze
// budget from the freeze to the end of the restore. When either runs out,
// the step under way is cancelled and the migration rolls back.
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
	PhaseImageReady   Phase = "image-ready"
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
	// Image makes sure the destination holds the container's image,
	// before the freeze, and returns the bytes copied (0: it had it).
	Image(ctx context.Context) (int64, error)
	Prepare(ctx context.Context) error
	Checkpoint(ctx context.Context) error
	// Transfer streams the image and returns the bytes moved.
	Transfer(ctx context.Context) (int64, error)
	// Restore restores the container on the destination, which commits
	// a stop-and-copy migration itself before it lets packets in.
	Restore(ctx context.Context) error
	// Fetch waits until the destination holds all the container's memory
	// (post-copy; a no-op otherwise). A failure there cannot roll back:
	// the source's image lacks the memory the destination already
	// changed; Fetch must stop the container and say so.
	Fetch(ctx context.Context) error
	// Commit makes sure the record names the destination (post-copy
	// moves it here) and releases the source's copy.
	Commit(ctx context.Context) error
	// RollBack records that the migration rolls back, unless the
	// destination committed first: then it returns committed. An error
	// means the store could not say either way.
	RollBack(ctx context.Context, cause error) (committed bool, err error)
	// Resume restores the container on the source after a checkpoint.
	Resume(ctx context.Context) error
	// Abort undoes the destination's part.
	Abort(ctx context.Context) error
	// Unlock releases the migration's locks; cause says why it rolled
	// back (and whether the resume failed, for the record).
	Unlock(ctx context.Context, cause error) error
}

// Budget bounds a migration. Zero values mean no bound.
type Budget struct {
	// Timeout bounds the whole migration, from the lock to the commit.
	Timeout time.Duration
	// Freeze bounds the time from the freeze to the end of the restore.
	Freeze time.Duration
}

// Report is what a finished migration measured.
type Report struct {
	Checkpoint, Transfer, Restore, Total, Downtime time.Duration
	// Lazy is from the restore until the last page arrived (post-copy).
	Lazy  time.Duration
	Bytes int64
	// Image is the image-ready step (before the freeze, outside the
	// downtime) and ImageBytes what it copied to the destination.
	Image      time.Duration
	ImageBytes int64
	Phase      Phase
	// ReplyLost: the destination committed but its answer to the restore
	// was lost; the record told the source.
	ReplyLost bool
}

// Observer hears about each phase reached, with the time the step took.
type Observer func(p Phase, took time.Duration)

// ErrBudget is the cause of a migration stopped by its budget.
var ErrBudget = errors.New("migration budget exhausted")

// Run performs the migration without a budget.
func Run(ctx context.Context, s Steps, obs Observer) (Report, error) {
	return RunBudget(ctx, s, obs, Budget{})
}

// RunBudget performs the migration within b. On error the returned
// report's Phase is rolled-back (or the last phase reached, when the
// container runs on the destination), and the error says which step
// failed and what rollback did.
func RunBudget(ctx context.Context, s Steps, obs Observer, b Budget) (Report, error) {
	if obs == nil {
		obs = func(Phase, time.Duration) {}
	}
	var r Report
	start := time.Now()
	if b.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, b.Timeout, fmt.Errorf("%w: --timeout %v", ErrBudget, b.Timeout))
		defer cancel()
	}
	step := func(ctx context.Context, p Phase, f func(context.Context) error) (time.Duration, error) {
		t := time.Now()
		err := f(ctx)
		if err == nil {
			err = context.Cause(ctx) // a step that ignored its deadline
		}
		if err != nil {
			if c := context.Cause(ctx); c != nil && errors.Is(c, ErrBudget) && !errors.Is(err, ErrBudget) {
				err = fmt.Errorf("%w (%w)", c, err)
			}
			return 0, err
		}
		d := time.Since(t)
		r.Phase = p
		obs(p, d)
		return d, nil
	}
	if _, err := step(ctx, PhaseLocked, s.Lock); err != nil {
		return r, err // nothing to undo: the record was not ours
	}
	var err error
	if r.Image, err = step(ctx, PhaseImageReady, func(ctx context.Context) error {
		n, err := s.Image(ctx)
		r.ImageBytes = n
		return err
	}); err != nil {
		_, err = rollback(ctx, s, &r, false, fmt.Errorf("image on destination: %w", err))
		return r, err
	}
	if _, err := step(ctx, PhasePrepared, s.Prepare); err != nil {
		_, err = rollback(ctx, s, &r, false, fmt.Errorf("prepare destination: %w", err))
		return r, err
	}
	freeze := time.Now()
	fctx := ctx
	if b.Freeze > 0 {
		var cancel context.CancelFunc
		fctx, cancel = context.WithDeadlineCause(ctx, freeze.Add(b.Freeze), fmt.Errorf("%w: the container was frozen for --freeze-budget %v", ErrBudget, b.Freeze))
		defer cancel()
	}
	if r.Checkpoint, err = step(fctx, PhaseCheckpointed, s.Checkpoint); err != nil {
		// runc leaves the container running when a dump fails, but make
		// sure: Resume is a no-op for a running container.
		_, err = rollback(ctx, s, &r, true, fmt.Errorf("checkpoint: %w", err))
		return r, err
	}
	if r.Transfer, err = step(fctx, PhaseTransferred, func(ctx context.Context) error {
		n, err := s.Transfer(ctx)
		r.Bytes = n
		return err
	}); err != nil {
		_, err = rollback(ctx, s, &r, true, fmt.Errorf("transfer: %w", err))
		return r, err
	}
	tRestore := time.Now()
	if r.Restore, err = step(fctx, PhaseRestored, s.Restore); err != nil {
		committed, rerr := rollback(ctx, s, &r, true, fmt.Errorf("restore on destination: %w", err))
		if !committed {
			return r, rerr
		}
		// The destination restored and committed; only its answer was
		// lost (or came after the budget): the migration stands.
		r.ReplyLost = true
		r.Restore = time.Since(tRestore)
		r.Phase = PhaseRestored
		obs(PhaseRestored, r.Restore)
	}
	r.Downtime = time.Since(freeze)
	lazyStart := time.Now()
	if _, err := step(ctx, PhaseFetched, s.Fetch); err != nil {
		r.Total = time.Since(start)
		return r, fmt.Errorf("post-copy: %w", err)
	}
	r.Lazy = time.Since(lazyStart)
	// The commit's bookkeeping must not be cut short by the budget: the
	// container already runs on the destination.
	if _, err := step(context.WithoutCancel(ctx), PhaseCommitted, s.Commit); err != nil {
		// The container runs on the destination; the record could not be
		// moved. Report it: rolling back now would kill a live container.
		r.Total = time.Since(start)
		return r, fmt.Errorf("commit: %w (the container runs on the destination; re-run the migration or fix the store)", err)
	}
	r.Total = time.Since(start)
	return r, nil
}

// rollbackBound bounds a rollback's calls: the source's own restore gets
// what it needs, but a lost destination costs at most this.
const rollbackBound = 10 * time.Second

// rollback undoes a failed migration: it records the decision first (a
// destination that committed wins, and then committed is true), restores
// the container on the source, and has the destination discard its part.
// It uses a fresh context so that a cancelled migration still rolls back.
func rollback(ctx context.Context, s Steps, r *Report, checkpointed bool, cause error) (committed bool, err error) {
	bg := context.WithoutCancel(ctx)
	committed, derr := s.RollBack(bg, cause)
	if derr == nil && committed {
		return true, nil
	}
	var errs []error
	if derr != nil {
		// Nobody can tell whether the destination committed: restoring
		// here could make a second copy. The container stays stopped,
		// its image kept, until recovery can ask the store.
		errs = append(errs, fmt.Errorf("record the rollback: %w (the outcome is undecided: the container stays stopped with its image kept until the store answers; recovery then finishes it)", derr))
	} else if checkpointed {
		if err := s.Resume(bg); err != nil {
			errs = append(errs, fmt.Errorf("resume on source: %w", err))
		}
	}
	// The destination's part goes last: once the rollback is recorded it
	// can no longer commit, and a lost destination must not keep the
	// container down. If it cannot be told, its recovery discards its
	// part when it can read the record again.
	var abortErr error
	if derr == nil {
		actx, cancel := context.WithTimeout(bg, rollbackBound)
		if err := s.Abort(actx); err != nil {
			abortErr = fmt.Errorf("abort on destination: %w", err)
		}
		cancel()
	}
	if err := s.Unlock(bg, errors.Join(append([]error{cause}, errs...)...)); err != nil {
		errs = append(errs, fmt.Errorf("unlock record: %w", err))
	}
	r.Phase = PhaseRolledBack
	if len(errs) > 0 {
		return false, fmt.Errorf("%w; rollback incomplete: %w", cause, errors.Join(append(errs, abortErr)...))
	}
	where := "the container still runs on the source"
	if checkpointed {
		where = "the container runs again on the source"
	}
	if abortErr != nil {
		return false, fmt.Errorf("%w; rolled back: %s (%w; the destination discards its part once it can read the record)", cause, where, abortErr)
	}
	return false, fmt.Errorf("%w; rolled back: %s", cause, where)
}
