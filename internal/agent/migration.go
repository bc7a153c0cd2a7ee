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
	"time"

	"github.com/coat-project/coat/internal/api"
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
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		httpError(w, badRequest("decode request: %v", err))
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
	send := func(p api.Progress) {
		_ = json.NewEncoder(w).Encode(p)
		if flusher != nil {
			flusher.Flush()
		}
	}
	// The migration must finish (or roll back) even if the caller goes.
	ctx := context.WithoutCancel(r.Context())
	rep, err := migrate.Run(ctx, out, func(p migrate.Phase, d time.Duration) {
		a.log.Info("migration phase", "container", out.c.Name, "phase", p, "duration", d)
		send(api.Progress{Phase: string(p), DurationMS: api.Ms(d)})
		if req.CrashAfter == string(p) && os.Getenv("COAT_TEST_HOOKS") == "1" {
			a.log.Error("test hook: exiting mid-migration", "container", out.c.Name, "after", p)
			os.Exit(3)
		}
	})
	if err != nil {
		a.log.Error("migration failed", "container", out.c.Name, "to", out.dest.Name, "err", err)
		send(api.Progress{Error: err.Error()})
		return
	}
	mode := "coat"
	switch {
	case req.Reference:
		mode = "reference"
	case req.NoTCP:
		mode = "traditional"
	}
	send(api.Progress{Done: true, Result: &api.MigrateResult{
		Name: out.c.Name, From: a.cfg.Name, To: out.dest.Name, Mode: mode, Held: out.hold(),
		CheckpointMS: api.Ms(rep.Checkpoint), TransferMS: api.Ms(rep.Transfer), RestoreMS: api.Ms(rep.Restore),
		TotalMS: api.Ms(rep.Total), DowntimeMS: api.Ms(rep.Downtime),
		Bytes: rep.Bytes, ImageBytes: out.imageBytes, RootfsBytes: out.rootfsBytes,
	}})
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
	// resumeFailed: the rollback could not bring the container back.
	resumeFailed bool
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
	if req.Reference {
		req.Slow = true // the hand-run path is runc's stock one
	}
	id := fmt.Sprintf("%s-%d", name, time.Now().UnixNano())
	return &outgoing{
		a: a, c: c, dest: dest, peer: a.peerClient(dest), req: req,
		ckptDir: filepath.Join(a.cfg.StateDir, "checkpoints", id),
		workDir: filepath.Join(a.cfg.StateDir, "criu-logs", id),
	}, nil
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
	if !o.a.lock(o.c.Name) {
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
	c.Status, c.MigratingTo, c.Error = store.StatusMigrating, o.dest.Name, ""
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

func (o *outgoing) Prepare(ctx context.Context) error {
	if err := o.peer.JSON(ctx, http.MethodPost, o.incoming("prepare"), api.PrepareRequest{Container: o.c, Hold: o.hold()}, nil); err != nil {
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
	if err := os.MkdirAll(filepath.Dir(o.ckptDir), 0o700); err != nil {
		return err
	}
	opts := runtime.CheckpointOpts{ImageDir: o.ckptDir, WorkDir: o.workDir, Slow: o.req.Slow}
	// The switch runs alongside CRIU's dump; only the transfer waits for
	// it.
	switched := make(chan error, 1)
	started := false
	if o.hold() {
		opts.AfterFreeze = func() error {
			started = true
			go func() {
				err := o.peer.JSON(ctx, http.MethodPost, o.incoming("switch"), api.SwitchRequest{Neighbours: o.neigh}, nil)
				if err != nil {
					err = fmt.Errorf("switch to destination: %w", err)
				}
				switched <- err
			}()
			return nil
		}
	}
	t0 := time.Now()
	err = o.a.rt.Checkpoint(ctx, o.c.Name, opts)
	o.a.log.Debug("runc checkpoint", "container", o.c.Name, "duration", time.Since(t0))
	if started {
		if serr := <-switched; err == nil {
			err = serr
		}
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
	n, err := transfer.Pack(tw, o.ckptDir, "checkpoint/")
	o.imageBytes = n
	if err != nil {
		return err
	}
	n, err = transfer.Pack(tw, o.a.rt.UpperDir(o.c.Name), "upper/")
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
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(o.pack(pw)) }()
	rc, err := o.peer.Stream(ctx, http.MethodPut, o.incoming("data"), pr, "application/x-tar")
	pr.CloseWithError(errors.New("transfer ended"))
	<-took
	if err != nil {
		return 0, err
	}
	rc.Close()
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

func (o *outgoing) Restore(ctx context.Context) error {
	return o.peer.JSON(ctx, http.MethodPost, o.incoming("restore"),
		api.RestoreRequest{Name: o.c.Name, NoTCP: o.req.NoTCP, FailRestore: o.req.FailRestore, Slow: o.req.Slow, Replay: o.replay}, nil)
}

// Commit moves the record to the destination, then deletes the source's
// copy: its rootfs, network namespace and checkpoint image.
func (o *outgoing) Commit(ctx context.Context) error {
	c := o.c
	c.Host, c.Status, c.MigratingTo = o.dest.Name, store.StatusRunning, ""
	if _, err := o.a.st.FinishMigration(ctx, c); err != nil {
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
	err := o.peer.JSON(ctx, http.MethodPost, o.incoming("abort"), nil, nil)
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
			err = overlay.RestoreAddr(ep.NetNS, ep.Addr)
		}
		if err != nil {
			return fmt.Errorf("put the address back: %w", err)
		}
	}
	if o.a.rt.Status(ctx, o.c.Name) != "running" {
		if o.req.FailResume && os.Getenv("COAT_TEST_HOOKS") == "1" {
			if err := corruptImage(o.ckptDir); err != nil {
				return err
			}
		}
		err := o.a.rt.Restore(ctx, o.a.spec(o.c), runtime.RestoreOpts{ImageDir: o.ckptDir, WorkDir: o.workDir + "-resume", Slow: o.req.Slow})
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
	}
	o.cleanup()
	if epErr != nil {
		return epErr
	}
	return overlay.GratuitousARP(ep.NetNS, "eth0", ep.Addr.IP, ep.MAC, 3)
}

func (o *outgoing) Unlock(ctx context.Context, cause error) error {
	defer o.a.unlock(o.c.Name)
	if !o.locked {
		return nil
	}
	defer o.lock.Unlock(ctx)
	c, err := o.a.st.Container(ctx, o.c.Name)
	if err != nil {
		return err
	}
	c.Status, c.MigratingTo, c.Error = store.StatusRunning, "", cause.Error()
	if o.resumeFailed {
		// Not running anywhere: say so, and where its image is kept.
		c.Status = store.StatusFailed
		c.Error = fmt.Sprintf("%s; the container is stopped: its checkpoint image is kept on %s in %s (`coat rm %s` removes it)",
			cause, o.a.cfg.Name, o.ckptDir, o.c.Name)
	}
	_, err = o.a.st.FinishMigration(ctx, c)
	return err
}

// --- destination side ---

func (a *Agent) incomingDir(name string) string {
	return filepath.Join(a.cfg.StateDir, "incoming", name)
}

func (a *Agent) handlePrepare(w http.ResponseWriter, r *http.Request) {
	var req api.PrepareRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		httpError(w, badRequest("decode request: %v", err))
		return
	}
	c := req.Container
	if c.Name != r.PathValue("name") || store.ValidName(c.Name) != nil {
		httpError(w, badRequest("bad container name %q", c.Name))
		return
	}
	if !a.rt.HasImage(c.Image) {
		httpError(w, badRequest("image %q is not on host %s: import it with `coat image import`", c.Image, a.cfg.Name))
		return
	}
	if a.rt.Status(r.Context(), c.Name) != "" {
		httpError(w, fmt.Errorf("a container named %s already runs on %s: %w", c.Name, a.cfg.Name, errBusy))
		return
	}
	if !a.lockWait(c.Name, 10*time.Second) {
		httpError(w, fmt.Errorf("container %s: %w", c.Name, errBusy))
		return
	}
	if err := a.prepareIncoming(c, req.Hold); err != nil {
		a.abortIncoming(r.Context(), c.Name)
		httpError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// prepareIncoming builds the container's network namespace with the same
// IP and MAC, its veth down (or, with hold, up with every inbound frame
// queued) until the restore is done, so the destination neither answers
// nor resets anything while the source still owns the connections.
func (a *Agent) prepareIncoming(c store.Container, hold bool) error {
	dir := a.incomingDir(c.Name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	b, _ := json.Marshal(c)
	if err := os.WriteFile(filepath.Join(dir, "container.json"), b, 0o600); err != nil {
		return err
	}
	ep, err := a.endpoint(c)
	if err != nil {
		return err
	}
	if err := overlay.CreateNetNS(ep.NetNS); err != nil {
		return err
	}
	if err := a.ov.AttachEndpoint(ep, false); err != nil {
		return err
	}
	if hold {
		// Up, but everything bound for the container waits in a queue.
		if err := a.ov.Hold(ep.HostVeth, ep.MTU); err != nil {
			return err
		}
	}
	return os.MkdirAll(a.rt.UpperDir(c.Name), 0o755)
}

// handleSwitch takes the container's MAC over: a gratuitous ARP from its
// (still empty, held) namespace makes the client side and the switches
// send its traffic here, where it queues until the restore.
func (a *Agent) handleSwitch(w http.ResponseWriter, r *http.Request) {
	var req api.SwitchRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		httpError(w, badRequest("decode request: %v", err))
		return
	}
	c, err := a.incomingContainer(r.PathValue("name"))
	if err != nil {
		httpError(w, err)
		return
	}
	ep, err := a.endpoint(c)
	if err != nil {
		httpError(w, err)
		return
	}
	if err := overlay.SetNeighbours(ep.NetNS, "eth0", req.Neighbours); err != nil {
		a.log.Warn("set neighbours", "container", c.Name, "err", err)
	}
	if err := overlay.GratuitousARP(ep.NetNS, "eth0", ep.Addr.IP, ep.MAC, 2); err != nil {
		httpError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *Agent) incomingContainer(name string) (store.Container, error) {
	var c store.Container
	b, err := os.ReadFile(filepath.Join(a.incomingDir(name), "container.json"))
	if err != nil {
		return c, fmt.Errorf("no migration of %s is prepared here: %w", name, store.ErrNotFound)
	}
	err = json.Unmarshal(b, &c)
	return c, err
}

func (a *Agent) handleData(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if _, err := a.incomingContainer(name); err != nil {
		httpError(w, err)
		return
	}
	dirs := map[string]string{
		"checkpoint/": filepath.Join(a.incomingDir(name), "checkpoint"),
		"upper/":      a.rt.UpperDir(name),
	}
	var body io.Reader = r.Body
	if r.URL.Query().Get("staged") != "" {
		// The hand-run path: the file lands whole before it is unpacked.
		f, err := os.CreateTemp(a.incomingDir(name), "staged-*.tar")
		if err != nil {
			httpError(w, err)
			return
		}
		defer os.Remove(f.Name())
		defer f.Close()
		if _, err := io.Copy(f, r.Body); err != nil {
			httpError(w, fmt.Errorf("receive %s: %w", name, err))
			return
		}
		if err := f.Sync(); err != nil {
			httpError(w, err)
			return
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			httpError(w, err)
			return
		}
		body = f
	}
	if _, err := transfer.Unpack(tar.NewReader(body), dirs); err != nil {
		httpError(w, fmt.Errorf("receive %s: %w", name, err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *Agent) handleRestore(w http.ResponseWriter, r *http.Request) {
	var req api.RestoreRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		httpError(w, badRequest("decode request: %v", err))
		return
	}
	name := r.PathValue("name")
	c, err := a.incomingContainer(name)
	if err != nil {
		httpError(w, err)
		return
	}
	t := time.Now()
	if err := a.restoreIncoming(r.Context(), c, req); err != nil {
		httpError(w, fmt.Errorf("on %s: %w", a.cfg.Name, err))
		return
	}
	a.unlock(name)
	writeJSON(w, http.StatusOK, api.RestoreReply{RestoreMS: api.Ms(time.Since(t))})
}

func (a *Agent) restoreIncoming(ctx context.Context, c store.Container, req api.RestoreRequest) error {
	ckpt := filepath.Join(a.incomingDir(c.Name), "checkpoint")
	if req.FailRestore {
		// A real CRIU failure: its memory image is gone.
		if err := corruptImage(ckpt); err != nil {
			return err
		}
	}
	// What the source held since the freeze queues here first (the hold
	// is on until the restore is done).
	if err := a.ov.Inject(vethName(c.Name), req.Replay); err != nil {
		a.log.Warn("replay held frames", "container", c.Name, "err", err)
	}
	if err := a.rt.Prepare(a.spec(c)); err != nil {
		return err
	}
	work := filepath.Join(a.cfg.StateDir, "criu-logs", fmt.Sprintf("%s-%d-restore", c.Name, time.Now().UnixNano()))
	// A restore that hangs must not hold the container hostage: the source
	// rolls back once this fails.
	ctx, cancel := context.WithTimeout(ctx, restoreTimeout)
	defer cancel()
	if err := a.rt.Restore(ctx, a.spec(c), runtime.RestoreOpts{ImageDir: ckpt, WorkDir: work, CloseTCP: req.NoTCP, Slow: req.Slow}); err != nil {
		return err
	}
	// Let the held frames in (the clients' retransmissions meet live
	// sockets at once), or bring the link up if nothing was held. This
	// ends the clients' wait; what follows is off their clock.
	if err := a.reopen(c.Name); err != nil {
		return err
	}
	// The image held the container's memory: it goes as soon as it is not
	// needed (rollback uses the source's copy). Moved aside now (a later
	// migration back here reuses the name), deleted in the background.
	if err := a.trash(a.incomingDir(c.Name)); err != nil {
		return err
	}
	ep, err := a.endpoint(c)
	if err != nil {
		return err
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		// Announce the MAC once more from the live container (the switch
		// to this host was announced at freeze time).
		if err := overlay.GratuitousARP(ep.NetNS, "eth0", ep.Addr.IP, ep.MAC, 3); err != nil {
			a.log.Warn("gratuitous arp", "container", c.Name, "err", err)
		}
		a.emptyTrash()
	}()
	return nil
}

// trash moves dir into StateDir/trash, from where emptyTrash deletes it
// (and the agent's start, should it die first).
func (a *Agent) trash(dir string) error {
	t := filepath.Join(a.cfg.StateDir, "trash")
	if err := os.MkdirAll(t, 0o700); err != nil {
		return err
	}
	dst := filepath.Join(t, fmt.Sprintf("%s-%d", filepath.Base(dir), time.Now().UnixNano()))
	if err := os.Rename(dir, dst); err != nil {
		return fmt.Errorf("move %s out of the way: %w", dir, err)
	}
	return nil
}

// emptyTrash deletes what trash moved aside.
func (a *Agent) emptyTrash() {
	t := filepath.Join(a.cfg.StateDir, "trash")
	ents, _ := os.ReadDir(t)
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(t, e.Name())); err != nil {
			a.log.Warn("empty trash", "err", err)
		}
	}
}

// corruptImage empties the process images (core-*.img), which CRIU then
// fails to read. (An empty pages image is no good: CRIU 4.2 retries the
// short read forever.)
func corruptImage(dir string) error {
	m, _ := filepath.Glob(filepath.Join(dir, "core-*.img"))
	if len(m) == 0 {
		return errors.New("no process image to corrupt")
	}
	for _, p := range m {
		if err := os.Truncate(p, 0); err != nil {
			return err
		}
	}
	return nil
}

func (a *Agent) handleAbort(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if _, err := a.incomingContainer(name); err != nil {
		httpError(w, err)
		return
	}
	a.abortIncoming(r.Context(), name)
	w.WriteHeader(http.StatusNoContent)
}

// abortIncoming throws away a half-received container.
func (a *Agent) abortIncoming(ctx context.Context, name string) {
	a.teardown(ctx, store.Container{Name: name})
	if err := os.RemoveAll(a.incomingDir(name)); err != nil {
		a.log.Warn("remove incoming", "container", name, "err", err)
	}
	a.unlock(name)
}
