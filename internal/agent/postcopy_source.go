package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/coat-project/coat/internal/api"
	"github.com/coat-project/coat/internal/overlay"
	"github.com/coat-project/coat/internal/runtime"
	"github.com/coat-project/coat/internal/store"
)

// Post-copy, the source's part. The checkpoint leaves the container's
// memory in CRIU, which serves it on a loopback page server that only the
// destination's agent may reach (through its page tunnel). After the
// restore the source waits until the destination holds every page; only
// then does the migration commit. Until then neither copy is complete: if
// the destination or the source fails, the destination stops the
// container and the record says it failed, with why. A failure before the
// destination's restore began rolls back as usual: the source restores
// lazily from its own page server.

// postcopyMarker sits beside an image without memory: recovery must not
// restore from it.
const postcopyMarker = ".postcopy"

func (o *outgoing) checkpointLazy(ctx context.Context, opts runtime.CheckpointOpts) error {
	// CRIU dumps from inside the container's network namespace (see
	// internal/runtime's package note), so its page server listens on
	// that namespace's loopback, reached from there (dialIn).
	ns := o.a.netnsPath(o.c.Name)
	port, err := freePort(ns)
	if err != nil {
		return err
	}
	o.pageAddr = fmt.Sprintf("127.0.0.1:%d", port)
	opts.PageServer = o.pageAddr
	if err := os.WriteFile(o.ckptDir+postcopyMarker, nil, 0o600); err != nil {
		return err
	}
	o.untunnel = o.a.allowTunnel(o.c.Name, "lazy", o.dest.Name, o.pageAddr, ns)
	o.lazy, err = o.a.rt.CheckpointLazy(ctx, o.c.Name, opts)
	if err != nil {
		o.untunnel()
		_ = os.Remove(o.ckptDir + postcopyMarker)
	}
	return err
}

// freePort finds an unused loopback port for CRIU's page server in the
// network namespace at netns.
func freePort(netns string) (int, error) {
	port := 0
	err := overlay.InNetNS(netns, func() error {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		defer ln.Close()
		port = ln.Addr().(*net.TCPAddr).Port
		return nil
	})
	return port, err
}

// fetchStall is how long the memory may stop moving before the
// post-copy counts as failed (the destination's daemon asks for pages
// continuously until it has them all).
const fetchStall = 30 * time.Second

// Fetch waits until the destination holds every page and the source's
// CRIU has served them, as long as pages keep moving.
func (o *outgoing) Fetch(ctx context.Context) error {
	if o.lazy == nil {
		return nil
	}
	defer o.untunnel()
	err := o.waitFetched(ctx)
	if err == nil {
		select {
		case <-o.lazy.Done():
			if err = o.lazy.Err(); err != nil {
				err = fmt.Errorf("the source's page server: %w", err)
			}
		case <-time.After(10 * time.Second):
			err = errors.New("the source's page server did not end within 10s of the last page")
		}
	}
	if err != nil {
		return o.fetchFailed(ctx, err)
	}
	_ = os.Remove(o.ckptDir + postcopyMarker)
	return nil
}

// waitFetched asks the destination to answer once it holds every page,
// and gives up when no byte moved for fetchStall (or after an hour).
func (o *outgoing) waitFetched(ctx context.Context) error {
	fctx, cancel := context.WithTimeout(ctx, time.Hour)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		var rep api.FetchReply
		err := o.peer.JSON(fctx, http.MethodPost, o.incoming("fetched"), nil, &rep)
		o.pageBytes, o.onDemand = rep.Bytes, rep.PagesOnDemand
		done <- err
	}()
	last, since := int64(-1), time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			return err
		case <-tick.C:
			if n := o.a.tunnelMoved(o.c.Name, "lazy"); n != last {
				last, since = n, time.Now()
			} else if time.Since(since) > fetchStall {
				cancel()
				<-done
				return fmt.Errorf("no memory moved to %s for %v (%d bytes so far)", o.dest.Name, fetchStall, last)
			}
		}
	}
}

// fetchFailed ends a post-copy that cannot finish. First CRIU is made to
// take its failure path (a reset of its page server's connection), which
// resumes the processes it kept frozen with all their memory: the
// container runs on the source again. Only then does the destination's
// copy go: killed, its processes end the lazy-pages daemon's work, and
// the daemon closes its page-server session in order (PS_IOV_CLOSE),
// which CRIU would take for success and end the source's processes (seen
// when the budget ran out: both copies gone). The reset comes first so
// that close never reaches CRIU; the destination's relay, losing the
// source, stops its copy before its daemon hears (guardPages). Only if the
// source's processes are gone is the container reported failed.
func (o *outgoing) fetchFailed(ctx context.Context, cause error) error {
	bg := context.WithoutCancel(ctx)
	o.a.resetTunnel(o.c.Name, "lazy")
	if aerr := o.Abort(bg); aerr != nil {
		o.a.log.Error("post-copy: stop the destination's copy", "container", o.c.Name, "err", aerr)
	}
	select {
	case <-o.lazy.Done():
	case <-time.After(30 * time.Second):
		o.a.log.Error("post-copy: CRIU did not end within 30s of its connection's reset", "container", o.c.Name)
	}
	switch st := o.a.rt.Status(bg, o.c.Name); st {
	case "paused":
		// Ended, but left in the frozen cgroup: thaw it.
		if err := o.a.rt.Thaw(o.c.Name); err != nil {
			o.a.log.Warn("thaw", "container", o.c.Name, "err", err)
		}
	}
	if st := o.a.rt.Status(bg, o.c.Name); st == "running" {
		err := fmt.Errorf("%w; rolled back: the container runs again on %s as it was at the freeze (what it did on %s is lost, and its connections may reset)", cause, o.a.cfg.Name, o.dest.Name)
		// A post-copy destination never commits itself: this swap wins.
		if _, derr := o.RollBack(bg, err); derr != nil {
			o.a.log.Warn("post-copy rollback: record", "container", o.c.Name, "err", derr)
		}
		if rerr := o.Resume(bg); rerr != nil {
			o.a.log.Warn("post-copy rollback", "container", o.c.Name, "err", rerr)
		}
		_ = o.Unlock(bg, err)
		return err
	} else if st != "" && st != "stopped" {
		// Its processes exist but do not run: never tear those down.
		err := fmt.Errorf("%w; the container is %s on %s with its memory: recovery resumes it", cause, st, o.a.cfg.Name)
		if o.lock != nil {
			_ = o.lock.Unlock(bg) // recovery takes it from here
		}
		o.a.unlock(o.c.Name)
		return err
	}
	o.lazy.Kill()
	o.failPostCopy(ctx, cause)
	return fmt.Errorf("%w; memory was still missing on %s and the source's copy is gone: the container is stopped rather than run on with pages missing (`coat rm %s` removes it)", cause, o.dest.Name, o.c.Name)
}

// failPostCopy records a post-copy that lost memory: the container is
// stopped, on the destination, and failed.
func (o *outgoing) failPostCopy(ctx context.Context, cause error) {
	ctx = context.WithoutCancel(ctx)
	defer o.a.unlock(o.c.Name)
	if o.lock != nil {
		defer o.lock.Unlock(ctx)
	}
	c, err := o.a.st.Container(ctx, o.c.Name)
	if err != nil {
		return
	}
	c.Host, c.Status, c.MigratingTo, c.SwitchedTo = o.dest.Name, store.StatusFailed, "", ""
	c.Error = fmt.Sprintf("post-copy migration from %s to %s failed before every page arrived (%v): the container was stopped rather than run on with memory missing", o.a.cfg.Name, o.dest.Name, cause)
	if _, err := o.a.st.FinishMigration(ctx, c); err != nil {
		o.a.log.Warn("record failed post-copy", "container", o.c.Name, "err", err)
	}
	o.a.wg.Add(1)
	go func() {
		defer o.a.wg.Done()
		o.a.teardown(ctx, o.c)
		o.cleanup()
		_ = os.Remove(o.ckptDir + postcopyMarker)
	}()
}

// endLazyDump ends a lazy dump that is still serving, so that CRIU takes
// its failure path: it resumes the processes it kept frozen, takes their
// sockets out of repair mode, and exits. (Killing CRIU instead would leave
// the sockets in repair mode, their connections dead; an orderly close
// would tell it the transfer succeeded, and it would kill them.) A reset
// of the page server's connection does it: the tunnel resets it when the
// destination's side ends; if the destination never connected, one is
// made and reset here.
func (o *outgoing) endLazyDump() error {
	if !o.a.tunnelUsed(o.c.Name, "lazy") {
		if c, err := net.DialTimeout("tcp", o.pageAddr, time.Second); err == nil {
			_ = c.(*net.TCPConn).SetLinger(0)
			c.Close()
		}
	}
	select {
	case <-o.lazy.Done():
	case <-time.After(10 * time.Second):
		o.lazy.Kill()
		return errors.New("the lazy dump did not end within 10s of its page server's close")
	}
	if st := o.a.rt.Status(context.Background(), o.c.Name); st != "running" {
		return fmt.Errorf("after the lazy dump ended the container is %q, not running", st)
	}
	_ = os.Remove(o.ckptDir + postcopyMarker)
	return nil
}
