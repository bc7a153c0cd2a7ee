package agent

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coat-project/coat/internal/api"
	"github.com/coat-project/coat/internal/linkspec"
	"github.com/coat-project/coat/internal/metrics"
	"github.com/coat-project/coat/internal/migrate"
	"github.com/coat-project/coat/internal/overlay"
	"github.com/coat-project/coat/internal/runtime"
	"github.com/coat-project/coat/internal/store"
	"github.com/coat-project/coat/internal/transfer"
)

func now() time.Time { return time.Now().UTC() }

// restoreTimeout bounds a destination's restore.
const restoreTimeout = 2 * time.Minute

// handleMigrate runs a migration of one of this host's containers and
// streams its phases to the caller as JSON lines.
func (a *Agent) handleMigrate(w http.ResponseWriter, r *http.Request) {
	var req api.MigrateRequest
	if err := decode(r, &req); err != nil {
		httpError(w, err)
		return
	}
	if len(req.Group) > 0 {
		a.migrateGroup(w, r, req)
		return
	}
	out, err := a.newOutgoing(r.Context(), r.PathValue("name"), req)
	if err != nil {
		httpError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	var sendMu sync.Mutex // ticks come from their own goroutine
	send := func(p api.Progress) {
		sendMu.Lock()
		defer sendMu.Unlock()
		_ = json.NewEncoder(w).Encode(p)
		if flusher != nil {
			flusher.Flush()
		}
	}
	// The migration must finish (or roll back) even if the caller goes.
	res, err := a.runOutgoing(context.WithoutCancel(r.Context()), out, send)
	if err != nil {
		send(api.Progress{Error: err.Error()})
		return
	}
	send(api.Progress{Done: true, Result: res})
}

// runOutgoing runs a checked migration (newOutgoing) to its end, sending
// each phase as it ends (the ticks too, once it takes long), logged and
// counted: the one path of `coat migrate` and of follow-me.
func (a *Agent) runOutgoing(ctx context.Context, out *outgoing, send func(api.Progress)) (*api.MigrateResult, error) {
	req := out.req
	log := a.log.With("migration", out.id, "container", out.c.Name, "from", a.cfg.Name, "to", out.dest.Name)
	log.Info("migration started", "strategy", out.strategy, "why", out.why, "memory_bytes", out.memory)
	start := time.Now()
	out.current.Store("locking")
	stopTicks := a.ticks(out, start, send)
	rep, err := migrate.RunBudget(ctx, out, func(p migrate.Phase, d time.Duration) {
		log.Info("migration phase", "phase", p, "duration_ms", api.Ms(d))
		a.metrics.ObservePhase(string(p), d)
		out.current.Store(nextPhase(p, out.strategy))
		send(api.Progress{Phase: string(p), DurationMS: api.Ms(d), Migration: out.id})
		if req.CrashAfter == string(p) && testHooks() {
			log.Error("test hook: exiting mid-migration", "after", p)
			os.Exit(3)
		}
	}, out.budget)
	out.releaseSlot() // a migration that ended before its restore
	stopTicks()
	oc := outcome(rep, err)
	mg := metrics.Migration{Outcome: oc, Strategy: string(out.strategy), Held: len(out.replay)}
	if err == nil {
		mg.Downtime, mg.Bytes = rep.Downtime, rep.Bytes+out.pageBytes
	}
	a.metrics.ObserveMigration(mg)
	if err != nil {
		log.Error("migration ended", "outcome", oc, "phase", rep.Phase, "err", err)
		return nil, err
	}
	log.Info("migration ended", "outcome", oc, "downtime_ms", api.Ms(rep.Downtime), "total_ms", api.Ms(time.Since(start)),
		"bytes", rep.Bytes+out.pageBytes, "held_frames", len(out.replay))
	return out.result(rep), nil
}

// result is what a finished migration reports.
func (o *outgoing) result(rep migrate.Report) *api.MigrateResult {
	mode := "coat"
	switch {
	case o.req.Reference:
		mode = "reference"
	case o.req.NoTCP:
		mode = "traditional"
	}
	return &api.MigrateResult{
		Name: o.c.Name, From: o.a.cfg.Name, To: o.dest.Name, Mode: mode, Held: o.hold(),
		CheckpointMS: api.Ms(rep.Checkpoint), TransferMS: api.Ms(rep.Transfer), RestoreMS: api.Ms(rep.Restore),
		TotalMS: api.Ms(rep.Total), DowntimeMS: api.Ms(rep.Downtime),
		Bytes: rep.Bytes + o.pageBytes, ImageBytes: o.imageBytes + o.pageBytes, RootfsBytes: o.rootfsBytes,
		Strategy: string(o.strategy), StrategyReason: o.why, MemoryBytes: o.memory,
		LazyMS: api.Ms(rep.Lazy), PagesOnDemand: o.onDemand,
		TimeoutMS: api.Ms(o.budget.Timeout), FreezeBudgetMS: api.Ms(o.budget.Freeze), ReplyLost: rep.ReplyLost,
		ImageName: o.c.Image, ImageFetchMS: o.imageCopy.MS, ImageFetchBytes: o.imageCopy.Bytes, ImageFetchedFrom: o.imageCopy.From,
		ImageRegistryError: o.imageCopy.RegistryError,
	}
}

// outgoing implements migrate.Steps on the source agent.
type outgoing struct {
	a                       *Agent
	c                       store.Container
	dest                    store.Host
	peer                    *api.Client
	req                     api.MigrateRequest
	ckptDir, workDir        string
	locked, cut             bool
	lock                    *store.Lock
	neigh                   []overlay.Neighbour
	imageBytes, rootfsBytes int64
	// took: the source's held frames were taken out of its namespace
	// (whose address went with them); replay is what they were.
	took   bool
	replay [][]byte
	// stream carries the image to the destination as CRIU writes it.
	stream *imageStream
	// resumeFailed: the rollback could not bring the container back.
	resumeFailed bool
	// strategy is how memory moves, and why it was picked.
	strategy migrate.Strategy
	why      string
	memory   int64 // the container's memory before the freeze
	// switchedRev is the record's revision after markSwitched (0: not
	// recorded); the destination commits against it.
	switchedRev int64
	// group: the group move this migration belongs to (nil: alone).
	group  *groupSync
	budget migrate.Budget
	// Post-copy: the dump that serves the memory, its loopback address,
	// and the tunnel that lets the destination reach it.
	lazy      *runtime.LazyDump
	pageAddr  string
	untunnel  func()
	pageBytes int64
	onDemand  int
	// imageCopy: how the destination came to hold the image;
	// prepareSent: the destination was asked to prepare (it may hold
	// something to abort).
	imageCopy   api.ImageReply
	prepareSent bool
	// id names the migration in the logs and its progress lines.
	id string
	// unfreeze gives back the freeze slot taken in Prepare (nil: none).
	unfreeze func()
	// current is the phase under way; sent the bytes streamed so far.
	current atomic.Value
	sent    atomic.Int64
}

// newOutgoing checks a migration request before anything changes.
func (a *Agent) newOutgoing(ctx context.Context, name string, req api.MigrateRequest) (*outgoing, error) {
	c, err := a.st.Container(ctx, name)
	if err != nil {
		return nil, err
	}
	if c.Host != a.cfg.Name {
		return nil, badRequest("container %s runs on %s, not on %s", name, c.Host, a.cfg.Name)
	}
	if c.Status == store.StatusMigrating {
		return nil, fmt.Errorf("container %s is already migrating to %s: %w", name, c.MigratingTo, errBusy)
	}
	if c.Status != store.StatusRunning {
		return nil, badRequest("container %s is %s; only a running container can migrate", name, c.Status)
	}
	if req.To == a.cfg.Name {
		return nil, badRequest("container %s already runs on %s: pick another host (`coat hosts` lists them)", name, req.To)
	}
	dest, err := a.st.Host(ctx, req.To)
	if err != nil {
		return nil, badRequest("unknown host %q: `coat hosts` lists the hosts", req.To)
	}
	// What the destination would refuse (a setuid file, a device other
	// than a whiteout...) is found before the container is frozen.
	if err := transfer.CheckTree(a.rt.UpperDir(name), true); err != nil {
		return nil, badRequest("container %s cannot migrate: its rootfs changes hold %v", name, err)
	}
	if req.Reference {
		req.Slow = true // the hand-run path is runc's stock one
	}
	if (req.FailRestore || req.FailResume || req.CrashAfter != "" || req.LoseRestoreReply || req.DestCrashBeforeCommit) && !testHooks() {
		return nil, badRequest("test hooks (--fail-restore, --fail-resume, --crash-after, --lose-restore-reply, --dest-crash-before-commit) are off on %s: they are for agents started with COAT_TEST_HOOKS=1", a.cfg.Name)
	}
	if req.TimeoutMS < 0 || req.FreezeBudgetMS < 0 {
		return nil, badRequest("--timeout and --freeze-budget must be positive durations (e.g. 30s)")
	}
	want, err := migrate.ParseStrategy(req.Strategy)
	if err != nil {
		return nil, badRequest("%v", err)
	}
	if want != migrate.StopAndCopy && want != migrate.Auto && (req.Reference || req.Slow) {
		return nil, badRequest("the reference path is stop-and-copy only")
	}
	mem := a.rt.MemoryBytes(name)
	strategy, why, err := migrate.Choose(migrate.Inputs{
		Requested: want, MemoryBytes: mem, LinkRate: linkRate(a.cfg.LinkRate, dest),
		Features: migrate.Features{LazyPages: dest.LazyPages && a.features.LazyPages, SoftDirty: a.features.SoftDirty},
	})
	if err != nil {
		return nil, badRequest("%v", err)
	}
	if req.Reference || req.Slow {
		strategy, why = migrate.StopAndCopy, "the reference path"
	}
	budget := migrate.DefaultBudget(strategy, mem, linkRate(a.cfg.LinkRate, dest))
	// The destination may have to copy the image first (before the
	// freeze, within the overall timeout): allow for it.
	budget.Timeout += a.imageAllowance(ctx, c.Image, linkRate(a.cfg.LinkRate, dest))
	if req.TimeoutMS > 0 {
		budget.Timeout = time.Duration(req.TimeoutMS) * time.Millisecond
	}
	if req.FreezeBudgetMS > 0 {
		budget.Freeze = time.Duration(req.FreezeBudgetMS) * time.Millisecond
	}
	if budget.Freeze > budget.Timeout {
		if req.FreezeBudgetMS > 0 && req.TimeoutMS > 0 {
			return nil, badRequest("--freeze-budget %v is longer than --timeout %v: the freeze is part of the migration", budget.Freeze, budget.Timeout)
		}
		budget.Freeze = budget.Timeout
	}
	id := fmt.Sprintf("%s-%d", name, time.Now().UnixNano())
	return &outgoing{
		a: a, c: c, dest: dest, peer: a.peerClient(dest), req: req, id: id,
		ckptDir:  filepath.Join(a.cfg.StateDir, "checkpoints", id),
		workDir:  filepath.Join(a.cfg.StateDir, "criu-logs", id),
		strategy: strategy, why: why, memory: mem, budget: budget,
	}, nil
}

// linkRate is the slower of the two hosts' declared link rates (0:
// neither declared one).
func linkRate(self linkspec.Rate, dest store.Host) float64 {
	r, d := float64(self), float64(dest.LinkRate)
	switch {
	case r == 0:
		return d
	case d == 0 || r < d:
		return r
	}
	return d
}

func (o *outgoing) groupID() string {
	if o.group == nil {
		return ""
	}
	return o.group.id
}

func (o *outgoing) groupSize() int {
	if o.group == nil {
		return 0
	}
	return o.group.n
}

// hold says whether the destination holds the clients' packets.
func (o *outgoing) hold() bool { return !o.req.NoHold && !o.req.Reference }

func (o *outgoing) incoming(op string) string {
	return "/v1/incoming/" + url.PathEscape(o.c.Name) + "/" + op
}

// Lock takes the container's leased lock in the store (a second
// migration, from anywhere, fails here), marks it migrating and records
// the migration. If this agent dies, the lease expires and whoever finds
// the record finishes or rolls it back (recover.go).
func (o *outgoing) Lock(ctx context.Context) error {
	// The recovery pass takes each name for a moment: wait that out.
	if !o.a.lockWait(o.c.Name, 5*time.Second) {
		return fmt.Errorf("container %s: an operation is under way: %w", o.c.Name, errBusy)
	}
	lk, err := o.a.st.LockContainer(ctx, o.c.Name, o.a.cfg.Name, lockTTL)
	if err != nil {
		o.a.unlock(o.c.Name)
		if errors.Is(err, store.ErrLocked) {
			return fmt.Errorf("container %s is already migrating: %w", o.c.Name, errBusy)
		}
		return err
	}
	c := o.c
	c.Status, c.MigratingTo, c.SwitchedTo, c.Error = store.StatusMigrating, o.dest.Name, "", ""
	c, err = o.a.st.UpdateContainer(ctx, c)
	if err == nil {
		err = o.a.st.PutMigration(ctx, o.record(string(migrate.PhaseLocked)))
	}
	if err != nil {
		_ = lk.Unlock(ctx)
		o.a.unlock(o.c.Name)
		if errors.Is(err, store.ErrConflict) {
			return fmt.Errorf("container %s changed or is already migrating: %w", o.c.Name, err)
		}
		return err
	}
	o.c, o.locked, o.lock = c, true, lk
	return nil
}

// lockTTL is how long a dead coordinator's lock outlives it.
const lockTTL = 5 * time.Second

func (o *outgoing) record(phase string) store.Migration {
	return store.Migration{
		Name: o.c.Name, From: o.a.cfg.Name, To: o.dest.Name, Phase: phase,
		Coordinator: o.a.cfg.Name, NoTCP: o.req.NoTCP, Started: o.c.Created,
	}
}

// Image has the destination make sure it holds the container's image
// before anything is frozen: lacking it, it copies it from here (see
// images.go) while the container runs on. It returns the bytes copied.
func (o *outgoing) Image(ctx context.Context) (int64, error) {
	if !o.dest.ImageCopy {
		// An older agent: it only checks for the image at prepare.
		return 0, nil
	}
	ctx, cancel := context.WithTimeout(ctx, imageCopyTimeout+callTimeout)
	defer cancel()
	var rep api.ImageReply
	if err := o.peer.JSON(ctx, http.MethodPost, o.incoming("image"), nil, &rep); err != nil {
		return 0, err
	}
	o.imageCopy = rep
	return rep.Bytes, nil
}

// imageAllowance is what a migration's default budget adds for copying
// its image: twice the time the image's recorded size takes over the
// link (nothing if the record says no size).
func (a *Agent) imageAllowance(ctx context.Context, image string, rate float64) time.Duration {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rec, err := a.st.Image(ctx, image)
	if err != nil {
		return 0
	}
	return 2 * migrate.EstimateFreeze(rec.Size, rate)
}

func (o *outgoing) Prepare(ctx context.Context) error {
	if o.group == nil {
		rel, err := o.a.freezeSlot(ctx)
		if err != nil {
			return err
		}
		o.unfreeze = rel
	}
	o.prepareSent = true
	pctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	if err := o.peer.JSON(pctx, http.MethodPost, o.incoming("prepare"), api.PrepareRequest{Hold: o.hold()}, nil); err != nil {
		return err
	}
	// The container's neighbours go to the destination at the switch;
	// read them here, before the freeze window opens.
	ep, err := o.a.endpoint(o.c)
	if err != nil {
		return err
	}
	if o.neigh, err = overlay.Neighbours(ep.NetNS, "eth0"); err != nil {
		o.a.log.Warn("read neighbours", "container", o.c.Name, "err", err)
	}
	// From here on the container may be frozen: recovery must look at
	// both hosts.
	return o.a.st.PutMigration(ctx, o.record(string(migrate.PhasePrepared)))
}

// Checkpoint cuts the container off the overlay, so no packet changes its
// sockets after CRIU has read them, hands its MAC over to the destination
// once it is frozen (which holds what arrives until the restore), then
// dumps it.
//
// With holding, the source holds too rather than taking the link down:
// inbound frames wait (and are dropped with the veth after a commit, or
// delivered after a rollback) while the container's own last packets,
// sent before the freeze, still leave. A reply lost there would cost the
// client the restored socket's first retransmission timeout (1 s: CRIU
// does not restore RTT estimates). The gratuitous ARP waits for the
// freeze: a packet from the source after it would turn the client's
// forwarding back to the source.
func (o *outgoing) Checkpoint(ctx context.Context) error {
	ep, err := o.a.endpoint(o.c)
	if err != nil {
		return err
	}
	if o.hold() {
		err = o.a.ov.Hold(ep.HostVeth, ep.MTU)
	} else {
		err = o.a.ov.SetEndpointUp(ep.HostVeth, false)
	}
	if err != nil {
		return err
	}
	o.cut = true
	if err := os.MkdirAll(o.ckptDir, 0o700); err != nil {
		return err
	}
	opts := runtime.CheckpointOpts{ImageDir: o.ckptDir, WorkDir: o.workDir, Slow: o.req.Slow}
	// The switch runs alongside CRIU's dump; only the transfer waits for
	// it.
	switched := make(chan error, 1)
	marked := make(chan struct{})
	started := false
	if o.hold() {
		opts.AfterFreeze = func() error {
			if o.group != nil {
				// No member is dumped before all are frozen.
				if err := o.group.waitFrozen(); err != nil {
					return err
				}
			}
			// Nothing the frozen container's kernel still sends (TCP
			// retransmissions) leaves after the switch: it would point
			// learning peers back here (overlay.Muzzle).
			if _, err := overlay.Muzzle(ep.NetNS, ep.MTU); err != nil {
				o.a.log.Warn("muzzle", "container", o.c.Name, "err", err)
			}
			if o.req.CrashAfter == "frozen" && testHooks() {
				// Killed during the dump: frozen, muzzled, its address
				// taken, an empty image directory.
				o.a.log.Error("test hook: exiting mid-migration", "after", "frozen")
				os.Exit(3)
			}
			started = true
			go func() {
				defer close(marked)
				o.markSwitched(ctx)
			}()
			go func() {
				sctx, cancel := context.WithTimeout(ctx, callTimeout)
				defer cancel()
				err := o.peer.JSON(sctx, http.MethodPost, o.incoming("switch"), api.SwitchRequest{Neighbours: o.neigh}, nil)
				if err != nil {
					err = fmt.Errorf("switch to destination: %w", err)
				}
				switched <- err
			}()
			return nil
		}
	}
	// The image streams to the destination while CRIU writes it.
	if !o.req.Reference {
		o.startStream(ctx)
	}
	t0 := time.Now()
	if o.strategy == migrate.PostCopy {
		err = o.checkpointLazy(ctx, opts)
	} else {
		// The dump is not cut short by the budget (a runc killed mid-dump
		// could leave the container half-dumped); what follows it is.
		err = o.a.rt.Checkpoint(context.WithoutCancel(ctx), o.c.Name, opts)
	}
	o.a.log.Debug("runc checkpoint", "container", o.c.Name, "duration", time.Since(t0))
	if started {
		if serr := <-switched; err == nil {
			err = serr
		}
		<-marked
	}
	if o.stream != nil {
		o.stream.dumped(err)
	}
	if err != nil {
		return err
	}
	// The emptied namespace must stay silent: its neighbour entries would
	// go on to probe (unicast ARP from the container's MAC, 5 s after the
	// last use) and turn the client's forwarding back to this host.
	if err := overlay.FlushNeighbours(ep.NetNS, "eth0"); err != nil {
		o.a.log.Warn("flush neighbours", "container", o.c.Name, "err", err)
	}
	if o.req.Reference {
		return o.exportFile()
	}
	return nil
}

// markSwitched records, once the container is frozen, that its traffic
// goes to the destination: every other host's forwarding follows at once
// (through its watch) rather than at the commit, so what its peers on
// other edges send during the freeze is held at the destination and
// delivered, not lost at the source. Best effort: without it they follow
// at the commit, as before.
func (o *outgoing) markSwitched(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c := o.c
	c.SwitchedTo = o.dest.Name
	nc, err := o.a.st.UpdateContainer(ctx, c)
	if err != nil {
		o.a.log.Warn("record the switch (peers follow at the commit)", "container", o.c.Name, "err", err)
		return
	}
	o.switchedRev = nc.Revision
}

// exportFile writes image and upper layer to one tar file, as a runtime's
// "checkpoint --export" does on the hand-run path.
func (o *outgoing) exportFile() error {
	f, err := os.OpenFile(o.ckptDir+".tar", os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := o.pack(f); err != nil {
		return err
	}
	return f.Sync()
}

// pack writes the checkpoint image and the rootfs upper layer to w.
func (o *outgoing) pack(w io.Writer) error {
	tw := tar.NewWriter(w)
	n, err := transfer.Pack(tw, o.ckptDir, "checkpoint/", false)
	o.imageBytes = n
	if err != nil {
		return err
	}
	return o.packUpper(tw)
}

// packUpper ends a stream with the rootfs upper layer.
func (o *outgoing) packUpper(tw *tar.Writer) error {
	n, err := transfer.Pack(tw, o.a.rt.UpperDir(o.c.Name), "upper/", true)
	o.rootfsBytes = n
	if err != nil {
		return err
	}
	return tw.Close()
}

// Transfer streams the checkpoint image and the rootfs upper layer as one
// tar stream over mutual TLS.
func (o *outgoing) Transfer(ctx context.Context) (int64, error) {
	if o.req.Reference {
		return o.copyFile(ctx)
	}
	// Alongside the transfer: take what the source held since the freeze,
	// for the destination to replay.
	took := make(chan struct{})
	go func() {
		defer close(took)
		if !o.hold() {
			return
		}
		ep, err := o.a.endpoint(o.c)
		if err == nil {
			o.took = true
			o.replay, err = o.a.ov.TakeHeld(ep.HostVeth, ep.NetNS, ep.MAC)
			o.a.log.Debug("took held frames", "container", o.c.Name, "frames", len(o.replay))
		}
		if err != nil {
			o.a.log.Warn("take held frames (they are lost: their senders retransmit)", "container", o.c.Name, "err", err)
		}
	}()
	t0 := time.Now()
	err := <-o.stream.done
	t1 := time.Now()
	<-took
	o.a.log.Debug("transfer", "container", o.c.Name, "stream", t1.Sub(t0), "take", time.Since(t0), "frames", len(o.replay))
	if err != nil {
		return 0, err
	}
	return o.imageBytes + o.rootfsBytes, nil
}

// copyFile sends the exported file whole; the destination stores it
// before unpacking it, as a copy-then-import would.
func (o *outgoing) copyFile(ctx context.Context) (int64, error) {
	f, err := os.Open(o.ckptDir + ".tar")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	rc, err := o.peer.Stream(ctx, http.MethodPut, o.incoming("data")+"?staged=1", f, "application/x-tar")
	if err != nil {
		return 0, err
	}
	rc.Close()
	return st.Size(), nil
}

// Restore has the destination restore the container; a stop-and-copy
// destination commits the migration in the store before it answers (and
// before it lets a packet in).
func (o *outgoing) Restore(ctx context.Context) error {
	// Answered (restored, or failed), the destination's CPU work of the
	// freeze is done: the next container may be frozen.
	defer o.releaseSlot()
	// The destination bounds its restore (restoreTimeout); this bounds
	// the call, should its answer never come.
	ctx, cancel := context.WithTimeout(ctx, restoreTimeout+callTimeout)
	defer cancel()
	err := o.peer.JSON(ctx, http.MethodPost, o.incoming("restore"),
		api.RestoreRequest{Name: o.c.Name, NoTCP: o.req.NoTCP, FailRestore: o.req.FailRestore, Slow: o.req.Slow, Replay: o.replay,
			Lazy: o.strategy == migrate.PostCopy, CrashBeforeCommit: o.req.DestCrashBeforeCommit, Revision: o.switchedRev,
			Group: o.groupID(), GroupSize: o.groupSize()}, nil)
	if err == nil && o.req.LoseRestoreReply && testHooks() {
		err = errors.New("test hook: the destination's answer to the restore is lost")
	}
	return err
}

// releaseSlot gives back the freeze slot, if one was taken.
func (o *outgoing) releaseSlot() {
	if o.unfreeze != nil {
		o.unfreeze()
	}
}

// RollBack is the source's side of the commit point: the record goes back
// to this host, unless the destination committed first.
func (o *outgoing) RollBack(ctx context.Context, cause error) (bool, error) {
	committed, err := o.a.decide(ctx, o.c.Name, o.a.cfg.Name, o.dest.Name, false, cause.Error())
	if err == nil && committed {
		o.a.log.Warn("rollback: the destination had committed; the migration stands", "container", o.c.Name, "to", o.dest.Name, "cause", cause)
	}
	return committed, err
}

// Commit makes sure the record names the destination (a stop-and-copy
// destination moved it itself; post-copy moves it here, once every page
// is there), then deletes the source's copy: its rootfs, network
// namespace and checkpoint image.
func (o *outgoing) Commit(ctx context.Context) error {
	committed, err := o.a.decide(ctx, o.c.Name, o.a.cfg.Name, o.dest.Name, true, "")
	if err != nil {
		return err
	}
	if !committed {
		return fmt.Errorf("the record of %s says the migration was rolled back", o.c.Name)
	}
	c, err := o.a.st.Container(ctx, o.c.Name)
	if err != nil {
		return err
	}
	_ = o.lock.Unlock(ctx)
	// The container runs on the destination: the source's leftovers go
	// off the migration's clock. The name stays locked here until they
	// are gone, and a migration back waits for that (lockWait).
	o.a.wg.Add(1)
	go func() {
		defer o.a.wg.Done()
		o.a.teardown(context.WithoutCancel(ctx), c)
		o.cleanup()
		o.a.unlock(o.c.Name)
	}()
	return nil
}

func (o *outgoing) cleanup() {
	_ = os.Remove(o.ckptDir + ".tar")
	if err := os.RemoveAll(o.ckptDir); err != nil {
		o.a.log.Warn("remove checkpoint image", "dir", o.ckptDir, "err", err)
	}
}

func (o *outgoing) Abort(ctx context.Context) error {
	if !o.prepareSent {
		// Refused at the image step: the destination kept nothing (and,
		// the record gone, would refuse the call).
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	path := o.incoming("abort")
	if o.group != nil {
		path += "?group=" + url.QueryEscape(o.group.id) // the destination fails the whole group
	}
	err := o.peer.JSON(ctx, http.MethodPost, path, nil, nil)
	var se *api.StatusError
	if errors.As(err, &se) && se.Code == http.StatusNotFound {
		return nil
	}
	return err
}

// Resume brings the container back on the source: from its own checkpoint
// if CRIU stopped it, into the network namespace that was kept.
func (o *outgoing) Resume(ctx context.Context) error {
	ep, epErr := o.a.endpoint(o.c)
	if len(o.neigh) > 0 {
		err := epErr
		if err == nil {
			err = overlay.SetNeighbours(ep.NetNS, "eth0", o.neigh)
		}
		if err != nil {
			o.a.log.Warn("restore neighbours", "container", o.c.Name, "err", err)
		}
	}
	if o.took {
		err := epErr
		if err == nil {
			err = o.a.restoreAddr(ep)
		}
		if err != nil {
			return fmt.Errorf("put the address back: %w", err)
		}
	}
	if o.a.rt.Status(ctx, o.c.Name) != "running" {
		if o.req.FailResume && testHooks() {
			if err := corruptImage(o.ckptDir); err != nil {
				return err
			}
		}
		var err error
		switch {
		case o.lazy != nil:
			err = o.endLazyDump()
		default:
			err = o.a.rt.Restore(ctx, o.a.spec(o.c), runtime.RestoreOpts{ImageDir: o.ckptDir, WorkDir: o.workDir + "-resume", Slow: o.req.Slow})
		}
		if o.untunnel != nil {
			o.untunnel()
		}
		if err != nil {
			o.resumeFailed = true
			return err
		}
	}
	if o.cut {
		if err := o.a.reopen(o.c.Name); err != nil {
			return err
		}
	}
	// What the source held (and took for the destination) goes in here.
	if err := o.a.ov.Inject(vethName(o.c.Name), o.replay); err != nil {
		o.a.log.Warn("replay held frames", "container", o.c.Name, "err", err)
	} else {
		o.a.metrics.Replayed(len(o.replay))
	}
	o.cleanup()
	if epErr != nil {
		return epErr
	}
	return overlay.GratuitousARP(ep.NetNS, "eth0", ep.Addr.IP, ep.MAC, 3)
}

// Unlock ends a rolled-back migration: the record (already back on this
// host, see RollBack) gets the full cause, or says the container is
// stopped if the resume failed, and the locks go.
func (o *outgoing) Unlock(ctx context.Context, cause error) error {
	defer o.a.unlock(o.c.Name)
	if !o.locked {
		return nil
	}
	defer o.lock.Unlock(ctx)
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	c, err := o.a.st.Container(ctx, o.c.Name)
	if err != nil {
		return err
	}
	if c.Host != o.a.cfg.Name || c.Status == store.StatusMigrating {
		// Undecided (the store did not answer the rollback): recovery
		// decides once it can.
		return nil
	}
	c.Error = cause.Error()
	if o.resumeFailed {
		// Not running anywhere: say so, and where its image is kept.
		c.Status = store.StatusFailed
		c.Error = fmt.Sprintf("%s; the container is stopped: its checkpoint image is kept on %s in %s (`coat rm %s` removes it)",
			cause, o.a.cfg.Name, o.ckptDir, o.c.Name)
	}
	_, err = o.a.st.UpdateContainer(ctx, c)
	return err
}

// testHooks says whether this agent honours test hooks (fault injection):
// only when started with COAT_TEST_HOOKS=1, as the tests' labs are.
func testHooks() bool { return os.Getenv("COAT_TEST_HOOKS") == "1" }

// callTimeout bounds a call to the peer agent that moves no image.
const callTimeout = 30 * time.Second
