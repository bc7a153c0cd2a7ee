package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/coat-project/coat/internal/api"
	"github.com/coat-project/coat/internal/metrics"
	"github.com/coat-project/coat/internal/overlay"
	"github.com/coat-project/coat/internal/runtime"
	"github.com/coat-project/coat/internal/store"
)

// recoverLoop finishes or rolls back migrations whose coordinator died,
// and removes what a crash left on this host, at start and every few
// seconds. A migration record whose lock is gone is an orphan:
//
//   - the destination runs the container: its agent commits the move;
//   - otherwise the source's agent rolls back: it restores the container
//     from its own checkpoint image if CRIU had already stopped it, asks
//     the destination to discard its half, and marks it running again.
//
// Whoever acts first takes the container's lock, so only one party does.
func (a *Agent) recoverLoop(ctx context.Context) {
	for {
		// Bounded: a store that stops answering must not stall recovery
		// for good.
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		if err := a.recoverOnce(rctx); err != nil && ctx.Err() == nil {
			a.log.Warn("recovery", "err", err)
		}
		cancel()
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
}

func (a *Agent) recoverOnce(ctx context.Context) error {
	ms, err := a.st.Migrations(ctx)
	if err != nil {
		return err
	}
	for _, m := range ms {
		if m.From != a.cfg.Name && m.To != a.cfg.Name {
			continue
		}
		if held, err := a.st.Locked(ctx, m.Name); err != nil || held {
			continue
		}
		if err := a.recoverMigration(ctx, m); err != nil {
			a.log.Warn("recover migration", "container", m.Name, "err", err)
		}
	}
	return a.collectLeftovers(ctx)
}

func (a *Agent) recoverMigration(ctx context.Context, m store.Migration) error {
	if a.rt.Status(ctx, m.Name) == "paused" && !a.isFetching(m.Name) {
		// Frozen by a migration whose dump died with the freezer set:
		// its processes are intact.
		if err := a.rt.Thaw(m.Name); err != nil {
			a.log.Warn("thaw", "container", m.Name, "err", err)
		}
	}
	running := a.rt.Status(ctx, m.Name) == "running"
	if m.To == a.cfg.Name && !running {
		return nil // the source (alive or when it is back) rolls back
	}
	if m.To == a.cfg.Name && a.isFetching(m.Name) {
		return nil // post-copy: committed once every page is here, or failed
	}
	if !a.lockWait(m.Name, time.Second) {
		return nil // a migration or another recovery is at it here
	}
	defer a.unlock(m.Name)
	lk, err := a.st.LockContainer(ctx, m.Name, a.cfg.Name+" (recovery)", lockTTL)
	if err != nil {
		return nil // someone else is recovering it
	}
	defer lk.Unlock(ctx)
	// The list was read before the lock: the migration may have ended
	// since (its coordinator finished it); then there is nothing to do.
	if ms, err := a.st.Migrations(ctx); err != nil {
		return err
	} else if !hasMigration(ms, m) {
		return nil
	}
	if m.To == a.cfg.Name {
		// Restored here, held, and not committed: the commit point decides
		// (the source may have rolled back first).
		committed, err := a.decide(ctx, m.Name, m.From, a.cfg.Name, true, "")
		if err != nil {
			return err
		}
		if !committed {
			a.log.Warn("recovered migration: the source rolled back; removing the restored copy", "container", m.Name)
			a.dropIncoming(ctx, m.Name)
			return nil
		}
		_ = os.RemoveAll(a.incomingDir(m.Name))
		if c, err := a.st.Container(ctx, m.Name); err == nil {
			if err := a.reattach(c); err != nil {
				return err
			}
		}
		a.log.Info("recovered migration: committed on destination", "container", m.Name, "from", m.From)
		a.metrics.Recover(metrics.OutcomeCommitted)
		return nil
	}
	// Source: roll back, unless the destination committed first.
	cause := fmt.Sprintf("migration to %s interrupted (its coordinator died in phase %s); rolled back", m.To, m.Phase)
	committed, mine, err := a.decideMine(ctx, m.Name, a.cfg.Name, m.To, false, cause)
	if err != nil {
		return err
	}
	if committed {
		a.log.Info("recovered migration: the destination had committed", "container", m.Name, "to", m.To)
		return nil // collectLeftovers removes this host's copy
	}
	if !mine {
		return nil // rolled back by its coordinator (collectLeftovers resumes it if it died first)
	}
	c, err := a.st.Container(ctx, m.Name)
	if err != nil {
		return err
	}
	if !running {
		if err := a.resumeFromCheckpoint(ctx, c); err != nil {
			c.Status, c.Error = store.StatusFailed, cause+": "+err.Error()
			_, _ = a.st.UpdateContainer(ctx, c)
			return fmt.Errorf("resume %s: %w", m.Name, err)
		}
	} else if err := a.reattach(c); err != nil {
		return err
	} else {
		// Never stopped (its coordinator died with it frozen, before or
		// during the dump): the image, whole or not, is of no use.
		a.removeImages(c.Name)
	}
	if h, err := a.st.Host(ctx, m.To); err == nil {
		actx, cancel := context.WithTimeout(ctx, callTimeout)
		err := a.peerClient(h).JSON(actx, http.MethodPost, "/v1/incoming/"+m.Name+"/abort", nil, nil)
		cancel()
		var se *api.StatusError
		if err != nil && !(errors.As(err, &se) && se.Code == http.StatusNotFound) {
			a.log.Warn("abort on destination (its recovery discards its part)", "container", m.Name, "err", err)
		}
	}
	a.log.Info("recovered migration: rolled back on source", "container", m.Name, "to", m.To, "phase", m.Phase)
	a.metrics.Recover(metrics.OutcomeRolledBack)
	return nil
}

// resumeFromCheckpoint restores a container CRIU stopped, from the newest
// checkpoint image this host kept of it.
func (a *Agent) resumeFromCheckpoint(ctx context.Context, c store.Container) error {
	dirs := a.checkpointImages(c.Name)
	var imgs []string
	for _, d := range dirs {
		if st, err := os.Stat(d); err == nil && st.IsDir() && !strings.HasSuffix(d, ".tar") {
			imgs = append(imgs, d)
		}
	}
	if len(imgs) == 0 {
		return errors.New("no checkpoint image on this host")
	}
	sort.Strings(imgs)
	img := imgs[len(imgs)-1]
	if _, err := os.Stat(img + postcopyMarker); err == nil {
		// A post-copy image: its memory was served from CRIU, which died
		// with the migration. Restoring it would run the container with
		// zeros for memory.
		return fmt.Errorf("the image %s was taken for post-copy and holds no memory: the container cannot be restored from it", img)
	}
	work := filepath.Join(a.cfg.StateDir, "criu-logs", fmt.Sprintf("%s-%d-recover", c.Name, time.Now().UnixNano()))
	// The coordinator may have taken the held frames, and the address with
	// them, before it died.
	if ep, err := a.endpoint(c); err == nil {
		if err := a.restoreAddr(ep); err != nil {
			return fmt.Errorf("put the address back: %w", err)
		}
	}
	if err := a.rt.Restore(ctx, a.spec(c), runtime.RestoreOpts{ImageDir: img, WorkDir: work}); err != nil {
		return err
	}
	if err := a.reopen(c.Name); err != nil {
		return err
	}
	ep, err := a.endpoint(c)
	if err != nil {
		return err
	}
	_ = overlay.GratuitousARP(ep.NetNS, "eth0", ep.Addr.IP, ep.MAC, 3)
	for _, d := range imgs {
		_ = os.RemoveAll(d)
		_ = os.Remove(d + ".tar")
	}
	return nil
}

// collectLeftovers removes containers this host still has files for but
// that the cluster says run elsewhere (a crash between commit and the
// source's cleanup, or a copy restored here whose migration the source
// rolled back), incoming migrations nobody sends any more (a source lost
// mid-way), and checkpoint images nobody needs; and lets traffic in to
// containers of this host left held (a crash between commit and release).
func (a *Agent) collectLeftovers(ctx context.Context) error {
	a.collectIncoming(ctx)
	pruneCriuLogs(filepath.Join(a.cfg.StateDir, "criu-logs"), criuLogsKept)
	fine := a.settled(ctx)
	for _, name := range a.localNames() {
		if fine[name] {
			a.dropStaleImages(ctx, name)
			continue
		}
		if !a.lock(name) {
			continue // something is under way here
		}
		c, err := a.st.Container(ctx, name)
		stale := errors.Is(err, store.ErrNotFound) ||
			(err == nil && c.Host != a.cfg.Name && c.MigratingTo != a.cfg.Name)
		status := a.rt.Status(ctx, name)
		switch {
		case stale && status != "running":
			a.log.Info("removing leftovers of a container that runs elsewhere", "container", name)
			a.cutOff(name)
			a.teardown(ctx, store.Container{Name: name})
			_ = os.RemoveAll(a.incomingDir(name))
			a.removeImages(name)
		case stale && err == nil && !a.isFetching(name):
			// Running here, but the record says it runs on c.Host: a
			// copy that lost the commit point. It never let a packet in.
			a.log.Warn("removing a copy that the record says runs elsewhere", "container", name, "host", c.Host)
			a.dropIncoming(ctx, name)
		case err == nil && c.Host == a.cfg.Name && c.Status == store.StatusRunning && status == "paused":
			// Frozen by a migration whose agent died before the dump.
			a.log.Warn("thawing a container of this host left frozen", "container", name)
			if err := a.rt.Thaw(name); err != nil {
				a.log.Warn("thaw", "container", name, "err", err)
			} else if err := a.reattach(c); err != nil {
				a.log.Warn("reattach", "container", name, "err", err)
			}
		case err == nil && c.Host == a.cfg.Name && c.Status == store.StatusRunning && status != "running" && len(a.checkpointImages(name)) > 0:
			// The rollback was recorded, but its agent died before it
			// restored the container: restore it now.
			a.log.Warn("resuming a rolled-back container its agent left stopped", "container", name)
			if err := a.resumeFromCheckpoint(ctx, c); err != nil {
				c.Status, c.Error = store.StatusFailed, fmt.Sprintf("%s; resuming it after its agent died failed: %v", c.Error, err)
				_, _ = a.st.UpdateContainer(ctx, c)
			}
		case err == nil && c.Host == a.cfg.Name && c.Status == store.StatusRunning && status == "running":
			held, herr := a.ov.IsHeld(vethName(name))
			if muzzled, merr := overlay.Muzzled(a.netnsPath(name)); merr == nil && muzzled {
				held, herr = true, nil
			}
			if herr == nil && held {
				a.log.Warn("releasing a held container of this host", "container", name)
				if err := a.reattach(c); err != nil {
					a.log.Warn("release", "container", name, "err", err)
				}
			}
		}
		a.unlock(name)
	}
	return nil
}

// settled names the containers that, by one read of the records and one
// `runc list`, run here as their records say, not held: nothing to
// collect. The per-container checks of collectLeftovers cost a store
// read and a runc exec each, every pass: at a hundred containers that
// was most of a core across a lab's agents, taken from the migrations.
// A snapshot read before the locks may be stale; that only postpones a
// container's check to the next pass (each pass reads afresh), and
// everything else is checked under its lock as before. None on error.
func (a *Agent) settled(ctx context.Context) map[string]bool {
	cs, err := a.st.Containers(ctx)
	if err != nil {
		return nil
	}
	list, err := a.rt.List(ctx)
	if err != nil {
		return nil
	}
	return settledNames(a.cfg.Name, cs, list, func(name string) bool {
		held, err := a.ov.IsHeld(vethName(name))
		return err == nil && !held
	})
}

// settledNames is settled's decision: records of self's running
// containers that runc lists running and released says let traffic in.
func settledNames(self string, cs []store.Container, runc map[string]string, released func(string) bool) map[string]bool {
	out := map[string]bool{}
	for _, c := range cs {
		if c.Host == self && c.Status == store.StatusRunning && c.MigratingTo == "" && runc[c.Name] == "running" && released(c.Name) {
			out[c.Name] = true
		}
	}
	return out
}

// hasMigration says whether ms still holds the migration m.
func hasMigration(ms []store.Migration, m store.Migration) bool {
	for _, x := range ms {
		if x.Name == m.Name && x.From == m.From && x.To == m.To && x.Started.Equal(m.Started) {
			return true
		}
	}
	return false
}

// localNames lists the containers this host keeps anything of: a rootfs,
// a network namespace, or a checkpoint image (a crash in the middle of a
// teardown can leave any of them without the others).
func (a *Agent) localNames() []string {
	seen := map[string]bool{}
	var out []string
	add := func(n string) {
		if n != "" && !strings.HasPrefix(n, ".") && !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	for _, d := range []string{"containers", "netns"} {
		ents, _ := os.ReadDir(filepath.Join(a.cfg.StateDir, d))
		for _, e := range ents {
			add(e.Name())
		}
	}
	ents, _ := os.ReadDir(filepath.Join(a.cfg.StateDir, "checkpoints"))
	for _, e := range ents {
		n := strings.TrimSuffix(e.Name(), ".tar")
		n = strings.TrimSuffix(n, postcopyMarker)
		if i := strings.LastIndexByte(n, '-'); i > 0 && strings.Trim(n[i+1:], "0123456789") == "" {
			add(n[:i])
		}
	}
	sort.Strings(out)
	return out
}

// collectIncoming removes incoming migrations that the record no longer
// sends here: their source rolled back (or was lost and recovered) while
// this host was unreachable, or before it could say so.
func (a *Agent) collectIncoming(ctx context.Context) {
	ents, err := os.ReadDir(filepath.Join(a.cfg.StateDir, "incoming"))
	if err != nil {
		return
	}
	for _, e := range ents {
		name := e.Name()
		if strings.HasPrefix(name, ".") || a.inflight(name) > 0 {
			continue
		}
		c, err := a.st.Container(ctx, name)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			continue // the store does not answer: nothing can be decided
		}
		if err == nil && c.Status == store.StatusMigrating && c.MigratingTo == a.cfg.Name {
			continue // still coming
		}
		if err == nil && c.Host == a.cfg.Name {
			// Committed here; only the image's directory was left.
			_ = os.RemoveAll(a.incomingDir(name))
			continue
		}
		a.log.Info("removing an incoming migration its source gave up", "container", name)
		a.dropIncoming(ctx, name)
		a.unlock(name)
	}
}

// reattach puts a container that never stopped back on the overlay: its
// address (the coordinator may have taken it with the held frames), its
// link, and the forwarding of its peers (gratuitous ARP: they may have
// switched to the destination at the freeze).
func (a *Agent) reattach(c store.Container) error {
	ep, err := a.endpoint(c)
	if err != nil {
		return err
	}
	if err := a.restoreAddr(ep); err != nil {
		return fmt.Errorf("put the address back: %w", err)
	}
	if err := a.reopen(c.Name); err != nil {
		return err
	}
	return overlay.GratuitousARP(ep.NetNS, "eth0", ep.Addr.IP, ep.MAC, 3)
}

// reopen undoes a migration's cut on this host: held frames go in, a
// downed link comes up.
func (a *Agent) reopen(name string) error {
	// What the container sent since its freeze goes out first.
	if err := overlay.Unmuzzle(a.netnsPath(name)); err != nil {
		return err
	}
	if err := a.ov.Release(vethName(name)); err != nil {
		return err
	}
	return a.ov.SetEndpointUp(vethName(name), true)
}

// dropStaleImages removes the checkpoint images of a container that
// runs here as its record says: left by a migration whose agent died
// before it could remove them (the coordinator's own cleanup, or a
// recovery that thawed the container rather than restoring it). A
// migration holds the name's lock until its images are gone or handed to
// a failed record, so under the lock, with the record and runc read
// afresh, an image of a running container is nobody's.
func (a *Agent) dropStaleImages(ctx context.Context, name string) {
	if len(a.checkpointImages(name)) == 0 || !a.lock(name) {
		return
	}
	defer a.unlock(name)
	c, err := a.st.Container(ctx, name)
	if err != nil || c.Host != a.cfg.Name || c.Status != store.StatusRunning || c.MigratingTo != "" {
		return
	}
	if a.rt.Status(ctx, name) != "running" {
		return
	}
	a.log.Info("removing checkpoint images of a container that runs here", "container", name)
	a.removeImages(name)
}

// removeImages removes this host's checkpoint images of the container.
func (a *Agent) removeImages(name string) {
	for _, d := range a.checkpointImages(name) {
		_ = os.RemoveAll(d)
		_ = os.Remove(d + postcopyMarker)
	}
}

// checkpointImages lists this host's checkpoint images of the container
// (StateDir/checkpoints/NAME-UNIXNANO, and its .tar), not those of another
// container whose name merely begins with NAME-.
func (a *Agent) checkpointImages(name string) []string {
	all, _ := filepath.Glob(filepath.Join(a.cfg.StateDir, "checkpoints", name+"-*"))
	var out []string
	for _, p := range all {
		id := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(p), name+"-"), ".tar")
		if id != "" && strings.Trim(id, "0123456789") == "" {
			out = append(out, p)
		}
	}
	return out
}

// restoreAddr undoes what taking the held frames did to a container that
// stays here: its address back on eth0, its MAC pinned to its port.
func (a *Agent) restoreAddr(ep overlay.Endpoint) error {
	if err := overlay.RestoreAddr(ep.NetNS, ep.Addr); err != nil {
		return err
	}
	return a.ov.PinMAC(ep.HostVeth, ep.MAC)
}
