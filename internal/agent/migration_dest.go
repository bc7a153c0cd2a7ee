package agent

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/coat-project/coat/internal/api"
	"github.com/coat-project/coat/internal/authz"
	"github.com/coat-project/coat/internal/overlay"
	"github.com/coat-project/coat/internal/runtime"
	"github.com/coat-project/coat/internal/store"
	"github.com/coat-project/coat/internal/transfer"
)

func (a *Agent) incomingDir(name string) string {
	return filepath.Join(a.cfg.StateDir, "incoming", name)
}

func (a *Agent) handlePrepare(w http.ResponseWriter, r *http.Request) {
	defer a.enter(r.PathValue("name"))()
	var req api.PrepareRequest
	if err := decode(r, &req); err != nil {
		httpError(w, err)
		return
	}
	c, err := a.preparable(r.Context(), r.PathValue("name"))
	if err != nil {
		httpError(w, err)
		return
	}
	if !a.rt.HasImage(c.Image) {
		// The image-ready step put it here; it went since (removed).
		httpError(w, badRequest("image %q is not on host %s (removed since the migration checked): try the migration again", c.Image, a.cfg.Name))
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
	a.mu.Lock()
	if a.prepared == nil {
		a.prepared = map[string]int64{}
	}
	a.prepared[c.Name] = c.Revision
	a.mu.Unlock()
	if err := a.prepareIncoming(c, req.Hold); err != nil {
		a.abortIncoming(r.Context(), c.Name)
		httpError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// preparable reads the record of a container the store says is migrating
// here: the destination takes nothing about it (IP, MAC, image, command)
// from the caller.
func (a *Agent) preparable(ctx context.Context, name string) (store.Container, error) {
	if err := store.ValidName(name); err != nil {
		return store.Container{}, badRequest("%v", err)
	}
	c, err := a.st.Container(ctx, name)
	if err != nil {
		return store.Container{}, err
	}
	m, err := a.st.Migration(ctx, name)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return store.Container{}, err
	}
	if err != nil || c.Status != store.StatusMigrating || c.MigratingTo != a.cfg.Name || m.To != a.cfg.Name || m.From != c.Host {
		return store.Container{}, fmt.Errorf("%w: the store records no migration of %s from %s to %s", authz.ErrForbidden, name, c.Host, a.cfg.Name)
	}
	return c, nil
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
	defer a.enter(r.PathValue("name"))()
	var req api.SwitchRequest
	if err := decode(r, &req); err != nil {
		httpError(w, err)
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
	defer a.enter(r.PathValue("name"))()
	name := r.PathValue("name")
	if _, err := a.incomingContainer(name); err != nil {
		httpError(w, err)
		return
	}
	dirs := map[string]transfer.Dest{
		"checkpoint/": {Dir: filepath.Join(a.incomingDir(name), "checkpoint")},
		"upper/":      {Dir: a.rt.UpperDir(name), Upper: true},
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
	if r.URL.Query().Get("zstd") != "" {
		zr, err := zstd.NewReader(body, zstd.WithDecoderConcurrency(1))
		if err != nil {
			httpError(w, err)
			return
		}
		defer zr.Close()
		body = zr
	}
	if _, err := transfer.Unpack(tar.NewReader(body), dirs); err != nil {
		httpError(w, fmt.Errorf("receive %s: %w", name, err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *Agent) handleRestore(w http.ResponseWriter, r *http.Request) {
	defer a.enter(r.PathValue("name"))()
	var req api.RestoreRequest
	if err := decode(r, &req); err != nil {
		httpError(w, err)
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
		if req.Group != "" {
			a.failGroup(req.Group, fmt.Errorf("%s: %w", name, err))
		}
		if errors.Is(err, store.ErrConflict) || errors.Is(err, errUndecided) {
			// Dropped (the source rolled back first), or held for the
			// recovery loop to decide: no abort will come for it.
			a.unlock(name)
		}
		httpError(w, fmt.Errorf("on %s: %w", a.cfg.Name, err))
		return
	}
	a.unlock(name)
	writeJSON(w, http.StatusOK, api.RestoreReply{RestoreMS: api.Ms(time.Since(t))})
}

func (a *Agent) restoreIncoming(ctx context.Context, c store.Container, req api.RestoreRequest) error {
	ckpt := filepath.Join(a.incomingDir(c.Name), "checkpoint")
	if req.FailRestore && testHooks() {
		// A real CRIU failure: its memory image is gone.
		if err := corruptImage(ckpt); err != nil {
			return err
		}
	}
	// What the source held since the freeze queues here first (the hold
	// is on until the restore is done).
	t0 := time.Now()
	defer func() {
		a.log.Debug("restore", "container", c.Name, "took", time.Since(t0), "replayed", len(req.Replay))
	}()
	if err := a.ov.Inject(vethName(c.Name), req.Replay); err != nil {
		a.log.Warn("replay held frames", "container", c.Name, "err", err)
	} else {
		a.metrics.Replayed(len(req.Replay))
	}
	if err := a.rt.Prepare(a.spec(c)); err != nil {
		return err
	}
	work := filepath.Join(a.cfg.StateDir, "criu-logs", fmt.Sprintf("%s-%d-restore", c.Name, time.Now().UnixNano()))
	// A restore that hangs must not hold the container hostage: the source
	// rolls back once this fails. A restore under way is not cut short
	// when the source gives up (its budget spent, its call cancelled):
	// runc killed mid-restore could leave restored sockets to close on a
	// copy still attached to the overlay, and their RST would reach the
	// clients of the copy the source resumes. It finishes, loses the
	// commit, and is cut off before it is killed (dropIncoming).
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), restoreTimeout)
	defer cancel()
	var err error
	if req.Lazy {
		err = a.restoreLazy(ctx, c, ckpt, work)
	} else {
		err = a.rt.Restore(ctx, a.spec(c), runtime.RestoreOpts{ImageDir: ckpt, WorkDir: work, CloseTCP: req.NoTCP, Slow: req.Slow,
			BeforeCleanup: func() { a.cutOff(c.Name) }})
	}
	if err != nil {
		return err
	}
	if req.CrashBeforeCommit && testHooks() {
		a.log.Error("test hook: exiting after the restore, before the commit", "container", c.Name)
		os.Exit(3)
	}
	switch {
	case req.Group != "":
		a.mu.Lock()
		rev := a.prepared[c.Name]
		delete(a.prepared, c.Name)
		a.mu.Unlock()
		if req.Revision > 0 {
			rev = req.Revision
		}
		if err := a.commitInGroup(ctx, req, c, rev); err != nil {
			return err
		}
	case !req.Lazy:
		// The commit point: nothing gets in before the record says the
		// container runs here (a post-copy commits on the source, once
		// every page is here).
		if err := a.commitIncoming(ctx, c, req.Revision); err != nil {
			return err
		}
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
	if !req.Lazy { // a lazy restore's image goes when its memory is in
		if err := a.trash(a.incomingDir(c.Name)); err != nil {
			return err
		}
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

// commitIncoming makes the destination's swap of the commit point for a
// container restored here and still held. If the source rolled back
// first, the copy here is killed before it ever answered. If the store
// does not answer, the copy stays held and the recovery loop decides
// when it can.
func (a *Agent) commitIncoming(ctx context.Context, c store.Container, rev int64) error {
	ctx = context.WithoutCancel(ctx)
	a.mu.Lock()
	if rev <= 0 {
		rev = a.prepared[c.Name]
	}
	delete(a.prepared, c.Name)
	a.mu.Unlock()
	if rev > 0 {
		// The record as prepared, swapped in one round trip (this is
		// inside the downtime); if it changed since, decide reads it.
		nc := c
		nc.Revision, nc.Host, nc.Status, nc.MigratingTo, nc.SwitchedTo, nc.Error = rev, a.cfg.Name, store.StatusRunning, "", "", ""
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		_, err := a.st.FinishMigration(cctx, nc)
		cancel()
		if err == nil {
			return nil
		}
	}
	committed, err := a.decide(ctx, c.Name, c.Host, a.cfg.Name, true, "")
	if err != nil {
		return fmt.Errorf("commit: %w; the restored copy is held here until the store answers", err)
	}
	if !committed {
		a.log.Warn("the source rolled back before the commit: removing the restored copy", "container", c.Name)
		a.dropIncoming(ctx, c.Name)
		return fmt.Errorf("the migration of %s was rolled back by its source before %s could commit it: %w", c.Name, a.cfg.Name, store.ErrConflict)
	}
	return nil
}

// dropIncoming kills a restored copy that must not run (it never let a
// packet in) and removes everything of it.
func (a *Agent) dropIncoming(ctx context.Context, name string) {
	kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	a.cutOff(name)
	if err := a.rt.Kill(kctx, name); err != nil {
		a.log.Warn("kill uncommitted copy", "container", name, "err", err)
	}
	a.teardown(kctx, store.Container{Name: name})
	if err := os.RemoveAll(a.incomingDir(name)); err != nil {
		a.log.Warn("remove incoming", "container", name, "err", err)
	}
}

// trash moves dir aside (".trash-NAME-N" beside it, on the same
// filesystem: images live on a tmpfs), from where emptyTrash deletes it
// (and the agent's start, should it die first).
func (a *Agent) trash(dir string) error {
	dst := filepath.Join(filepath.Dir(dir), fmt.Sprintf(".trash-%s-%d", filepath.Base(dir), time.Now().UnixNano()))
	if err := os.Rename(dir, dst); err != nil {
		return fmt.Errorf("move %s out of the way: %w", dir, err)
	}
	return nil
}

// emptyTrash deletes what trash moved aside.
func (a *Agent) emptyTrash() {
	var all []string
	for _, d := range []string{"incoming", "checkpoints"} {
		m, _ := filepath.Glob(filepath.Join(a.cfg.StateDir, d, ".trash-*"))
		all = append(all, m...)
	}
	// Images being received when the agent stopped.
	m, _ := filepath.Glob(filepath.Join(a.imagesDir(), ".tmp-*"))
	all = append(all, m...)
	m, _ = filepath.Glob(filepath.Join(a.rt.LayersDir(), ".tmp-*"))
	all = append(all, m...)
	// An older agent's trash directory.
	all = append(all, filepath.Join(a.cfg.StateDir, "trash"))
	for _, p := range all {
		if err := os.RemoveAll(p); err != nil {
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

// handleAbort discards this host's part of a migration that will not
// commit: what was received, or the container itself if it was already
// restored here (its image is gone by then, but the record still says it
// is migrating here: an uncommitted copy must not run on beside the
// source's).
func (a *Agent) handleAbort(w http.ResponseWriter, r *http.Request) {
	defer a.enter(r.PathValue("name"))()
	name := r.PathValue("name")
	if id := r.URL.Query().Get("group"); id != "" {
		// A member of a group move failed: the whole group does.
		a.failGroup(id, fmt.Errorf("%s failed on its source", name))
	}
	a.abortFetch(name)
	if _, err := a.incomingContainer(name); err == nil {
		a.abortIncoming(r.Context(), name)
		w.WriteHeader(http.StatusNoContent)
		return
	}
	c, err := a.st.Container(r.Context(), name)
	switch {
	case err != nil:
		httpError(w, err)
	case c.Host == a.cfg.Name:
		httpError(w, fmt.Errorf("container %s was committed to %s: nothing to abort: %w", name, a.cfg.Name, errBusy))
	case c.MigratingTo == a.cfg.Name && a.rt.Status(r.Context(), name) != "":
		if !a.lockWait(name, 10*time.Second) {
			httpError(w, fmt.Errorf("container %s: %w", name, errBusy))
			return
		}
		a.log.Warn("abort: removing an uncommitted copy", "container", name)
		a.abortIncoming(r.Context(), name)
		w.WriteHeader(http.StatusNoContent)
	default:
		httpError(w, fmt.Errorf("no migration of %s is prepared here: %w", name, store.ErrNotFound))
	}
}

// cutOff removes an uncommitted copy's network (its veth pair) before it
// is killed. Killed, its restored sockets would close, and their FIN or
// RST, in sequence, would reach the clients (the hold holds only what
// comes in) and end the connections that the source's copy carries on.
// Seen in a storm of 20 migrations whose freeze budgets ran out while
// their destinations were restoring: 4 of the 20 clients were reset.
func (a *Agent) cutOff(name string) {
	if err := a.ov.DetachEndpoint(vethName(name)); err != nil {
		a.log.Warn("cut off an uncommitted copy", "container", name, "err", err)
	}
}

// abortIncoming throws away a half-received container (cut off first:
// see cutOff).
func (a *Agent) abortIncoming(ctx context.Context, name string) {
	a.cutOff(name)
	a.teardown(ctx, store.Container{Name: name})
	if err := os.RemoveAll(a.incomingDir(name)); err != nil {
		a.log.Warn("remove incoming", "container", name, "err", err)
	}
	a.unlock(name)
}
