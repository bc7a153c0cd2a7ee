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
		if err := a.recoverOnce(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("recovery", "err", err)
		}
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
	c, err := a.st.Container(ctx, m.Name)
	if err != nil {
		return err
	}
	if m.To == a.cfg.Name {
		// Restored here before the coordinator could commit: commit.
		_ = os.RemoveAll(a.incomingDir(m.Name))
		c.Host, c.Status, c.MigratingTo, c.Error = a.cfg.Name, store.StatusRunning, "", ""
		if _, err := a.st.FinishMigration(ctx, c); err != nil {
			return err
		}
		a.log.Info("recovered migration: committed on destination", "container", m.Name, "from", m.From)
		return nil
	}
	// Source: roll back.
	cause := fmt.Sprintf("migration to %s interrupted (its coordinator died in phase %s); rolled back", m.To, m.Phase)
	if !running {
		if err := a.resumeFromCheckpoint(ctx, c); err != nil {
			c.Status, c.Error = store.StatusFailed, cause+": "+err.Error()
			_, _ = a.st.FinishMigration(ctx, c)
			return fmt.Errorf("resume %s: %w", m.Name, err)
		}
	} else if err := a.reattach(c); err != nil {
		return err
	}
	if h, err := a.st.Host(ctx, m.To); err == nil {
		err := a.peerClient(h).JSON(ctx, http.MethodPost, "/v1/incoming/"+m.Name+"/abort", nil, nil)
		var se *api.StatusError
		if err != nil && !(errors.As(err, &se) && se.Code == http.StatusNotFound) {
			a.log.Warn("abort on destination", "container", m.Name, "err", err)
		}
	}
	c.Host, c.Status, c.MigratingTo, c.Error = a.cfg.Name, store.StatusRunning, "", cause
	if _, err := a.st.FinishMigration(ctx, c); err != nil {
		return err
	}
	a.log.Info("recovered migration: rolled back on source", "container", m.Name, "to", m.To, "phase", m.Phase)
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
		if err := overlay.RestoreAddr(ep.NetNS, ep.Addr); err != nil {
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
// source's cleanup), and checkpoint images nobody needs.
func (a *Agent) collectLeftovers(ctx context.Context) error {
	ents, err := os.ReadDir(filepath.Join(a.cfg.StateDir, "containers"))
	if err != nil {
		return nil
	}
	for _, e := range ents {
		name := e.Name()
		if !a.lock(name) {
			continue // something is under way here
		}
		c, err := a.st.Container(ctx, name)
		stale := errors.Is(err, store.ErrNotFound) ||
			(err == nil && c.Host != a.cfg.Name && c.MigratingTo != a.cfg.Name)
		if stale && a.rt.Status(ctx, name) != "running" {
			a.log.Info("removing leftovers of a container that runs elsewhere", "container", name)
			a.teardown(ctx, store.Container{Name: name})
			_ = os.RemoveAll(a.incomingDir(name))
			for _, d := range a.checkpointImages(name) {
				_ = os.RemoveAll(d)
			}
		}
		a.unlock(name)
	}
	return nil
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
	if err := overlay.RestoreAddr(ep.NetNS, ep.Addr); err != nil {
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
	if err := a.ov.Release(vethName(name)); err != nil {
		return err
	}
	return a.ov.SetEndpointUp(vethName(name), true)
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
