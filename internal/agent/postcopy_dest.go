package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/coat-project/coat/internal/api"
	"github.com/coat-project/coat/internal/runtime"
	"github.com/coat-project/coat/internal/store"
)

// Post-copy, the destination's part. The restore runs with CRIU's
// lazy-pages daemon beside it; the daemon reaches the source's page server
// through a loopback relay and the agents' tunnel. It exits 0 once it
// holds every page.
//
// A daemon that loses its page server gives up, and the kernel then
// fills the pages still missing with zeros: the container would run on
// with memory silently gone. So the relay never lets the daemon see the
// source go: when the tunnel ends, it first waits (briefly) for the daemon
// to finish on its own, which it does once it has every page; if it does
// not, the container is killed before the daemon hears anything.

// fetch is one post-copy restore whose memory is still arriving.
type fetch struct {
	daemon *runtime.LazyDaemon
	relay  *relay
	start  time.Time
	done   chan struct{}
	mu     sync.Mutex
	err    error
	reply  api.FetchReply
}

func (f *fetch) finish(err error, rep api.FetchReply) {
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-f.done:
		return
	default:
	}
	f.err, f.reply = err, rep
	close(f.done)
}

// restoreLazy restores c from ckpt with its memory left on the source.
func (a *Agent) restoreLazy(ctx context.Context, c store.Container, ckpt, work string) error {
	src, err := a.st.Host(ctx, c.Host)
	if err != nil {
		return fmt.Errorf("post-copy source %s: %w", c.Host, err)
	}
	f := &fetch{start: time.Now(), done: make(chan struct{})}
	// Before the daemon hears that the source went, the container stops.
	f.relay, err = a.openRelay(context.WithoutCancel(ctx), src, c.Name, "lazy", func() { a.guardPages(c, f) }, ckpt)
	if err != nil {
		return err
	}
	f.daemon, err = a.rt.StartLazyPages(ckpt, work, "127.0.0.1", f.relay.port)
	if err != nil {
		f.relay.Close()
		return err
	}
	if err := a.rt.Restore(ctx, a.spec(c), runtime.RestoreOpts{ImageDir: ckpt, WorkDir: work, Lazy: true}); err != nil {
		f.daemon.Kill()
		f.relay.Close()
		return err
	}
	// The restore's own faults are served; the relay fetches ahead now.
	f.relay.Begin()
	a.mu.Lock()
	a.fetching[c.Name] = f
	a.mu.Unlock()
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.watchFetch(c, f)
	}()
	return nil
}

// watchFetch waits for the daemon's end: all pages, or a failure that
// stops the container.
func (a *Agent) watchFetch(c store.Container, f *fetch) {
	err := f.daemon.Wait()
	if err == nil {
		f.finish(nil, api.FetchReply{LazyMS: api.Ms(time.Since(f.start)), PagesOnDemand: f.daemon.PagesOnDemand(), Bytes: f.relay.moved.Load()})
	} else {
		a.stopIncomplete(c, fmt.Errorf("memory transfer: %w", err))
		f.finish(err, api.FetchReply{})
	}
	f.relay.Close()
	// The image is no longer read: it goes.
	if err := a.trash(a.incomingDir(c.Name)); err != nil {
		a.log.Warn("remove post-copy image", "container", c.Name, "err", err)
	}
	a.emptyTrash()
	a.mu.Lock()
	delete(a.fetching, c.Name)
	a.mu.Unlock()
}

// guardPages runs when the tunnel to the source ends: a daemon with every
// page exits within moments; one still waiting for pages will never get
// them, and the container must stop before the daemon gives up.
func (a *Agent) guardPages(c store.Container, f *fetch) {
	select {
	case <-f.done:
		return
	default:
	}
	select {
	case <-f.daemon.Done():
		return
	case <-time.After(2 * time.Second):
	}
	a.stopIncomplete(c, errors.New("the source was lost before every page arrived"))
	f.daemon.Kill()
}

// stopIncomplete kills a container whose memory is incomplete, before
// anything else, and records why (unless the coordinator already has).
func (a *Agent) stopIncomplete(c store.Container, cause error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.rt.Kill(ctx, c.Name); err != nil {
		a.log.Error("stop container with missing memory", "container", c.Name, "err", err)
	}
	a.log.Error("post-copy failed: container stopped", "container", c.Name, "err", cause)
	// A live coordinator records the outcome itself (and may find the
	// source's copy running again: CRIU resumes it when its lazy dump
	// fails); only an orphaned migration is recorded from here.
	if held, err := a.st.Locked(ctx, c.Name); err != nil || held {
		return
	}
	cur, err := a.st.Container(ctx, c.Name)
	if err != nil || cur.Status != store.StatusMigrating || cur.MigratingTo != a.cfg.Name {
		return
	}
	cur.Host, cur.Status, cur.MigratingTo, cur.SwitchedTo = a.cfg.Name, store.StatusFailed, "", ""
	cur.Error = fmt.Sprintf("post-copy migration from %s to %s failed before every page arrived (%v): the container was stopped rather than run on with memory missing (`coat rm %s` removes it)", c.Host, a.cfg.Name, cause, c.Name)
	if _, err := a.st.FinishMigration(ctx, cur); err != nil {
		a.log.Warn("record failed post-copy", "container", c.Name, "err", err)
	}
}

// isFetching says whether c's memory is still arriving here.
func (a *Agent) isFetching(name string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.fetching[name] != nil
}

// handleFetched answers once the container's memory is all here.
func (a *Agent) handleFetched(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	a.mu.Lock()
	f := a.fetching[name]
	a.mu.Unlock()
	if f == nil {
		httpError(w, fmt.Errorf("no post-copy of %s is fetching memory here: %w", name, store.ErrNotFound))
		return
	}
	select {
	case <-f.done:
	case <-r.Context().Done():
		return
	}
	if f.err != nil {
		httpError(w, fmt.Errorf("on %s: %w", a.cfg.Name, f.err))
		return
	}
	writeJSON(w, http.StatusOK, f.reply)
}

// abortFetch stops a post-copy still fetching (the coordinator gave up).
func (a *Agent) abortFetch(name string) {
	a.mu.Lock()
	f := a.fetching[name]
	a.mu.Unlock()
	if f == nil {
		return
	}
	select {
	case <-f.done:
		return
	default:
	}
	_ = a.rt.Kill(context.Background(), name)
	f.daemon.Kill()
	<-f.done
}
