package agent

// Group moves: several containers of one host move to one destination as
// one, so that connections between them (and to their clients) never see
// one of them moved and another not.
//
//   - Source: every member runs the ordinary migration (migrate.RunBudget)
//     concurrently, but none is dumped before all are frozen (a barrier in
//     the freeze hook), and the first member to fail fails the group.
//   - Destination: every member is restored and held; the last one to
//     arrive commits them all in one etcd transaction (the group's commit
//     point), then each is let run. A member that fails to restore, an
//     abort, or a member that does not arrive within groupWait fails the
//     group there: every restored member is dropped before it answered,
//     and every source rolls its member back.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/coat-project/coat/internal/api"
	"github.com/coat-project/coat/internal/metrics"
	"github.com/coat-project/coat/internal/migrate"
	"github.com/coat-project/coat/internal/store"
)

// groupWait bounds how long members wait for each other (to freeze on
// the source, to be restored on the destination).
const groupWait = 30 * time.Second

// groupSync is the source's side of a group.
type groupSync struct {
	id        string
	n         int
	mu        sync.Mutex
	frozen    int
	allFrozen chan struct{}
	failed    chan struct{}
	once      sync.Once
	cause     error
}

func newGroupSync(id string, n int) *groupSync {
	return &groupSync{id: id, n: n, allFrozen: make(chan struct{}), failed: make(chan struct{})}
}

func (g *groupSync) fail(err error) {
	g.once.Do(func() { g.cause = err; close(g.failed) })
}

// waitFrozen counts a member frozen and waits until every member is.
func (g *groupSync) waitFrozen() error {
	g.mu.Lock()
	if g.frozen++; g.frozen == g.n {
		close(g.allFrozen)
	}
	g.mu.Unlock()
	select {
	case <-g.allFrozen:
		return nil
	case <-g.failed:
		return fmt.Errorf("another container of the group failed: %w", g.cause)
	case <-time.After(groupWait):
		err := fmt.Errorf("the group's containers were not all frozen within %v", groupWait)
		g.fail(err)
		return err
	}
}

// migrateGroup moves req.Group together and streams every member's phases.
func (a *Agent) migrateGroup(w http.ResponseWriter, r *http.Request, req api.MigrateRequest) {
	self := r.PathValue("name")
	if !contains(req.Group, self) {
		httpError(w, badRequest("the group %v does not name %s, whose address the request was sent to", req.Group, self))
		return
	}
	if req.Strategy != "" && req.Strategy != "auto" && req.Strategy != string(migrate.StopAndCopy) {
		httpError(w, badRequest("a group moves stop-and-copy (its members are released together): drop --strategy %s", req.Strategy))
		return
	}
	if req.NoHold || req.Reference || req.Slow || req.NoTCP || req.CrashAfter != "" || req.LoseRestoreReply || req.DestCrashBeforeCommit {
		httpError(w, badRequest("a group move takes no --no-hold, --no-tcp or test hooks"))
		return
	}
	// Every member is checked before anything changes.
	var outs []*outgoing
	for _, name := range req.Group {
		m := req
		m.Group, m.Strategy = nil, string(migrate.StopAndCopy)
		o, err := a.newOutgoing(r.Context(), name, m)
		if err != nil {
			httpError(w, fmt.Errorf("%s: %w", name, err))
			return
		}
		outs = append(outs, o)
	}
	g := newGroupSync(fmt.Sprintf("%s-%d", strings.Join(req.Group, "+"), time.Now().UnixNano()), len(outs))
	for _, o := range outs {
		o.group = g
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	var mu sync.Mutex
	send := func(p api.Progress) {
		mu.Lock()
		defer mu.Unlock()
		_ = json.NewEncoder(w).Encode(p)
		if flusher != nil {
			flusher.Flush()
		}
	}
	ctx := context.WithoutCancel(r.Context())
	results := make([]api.MigrateResult, len(outs))
	errs := make([]error, len(outs))
	var wg sync.WaitGroup
	for i, o := range outs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep, err := migrate.RunBudget(ctx, o, func(p migrate.Phase, d time.Duration) {
				a.log.Info("migration phase", "container", o.c.Name, "group", g.id, "phase", p, "duration", d)
				send(api.Progress{Name: o.c.Name, Phase: string(p), DurationMS: api.Ms(d)})
			}, o.budget)
			mg := metrics.Migration{Outcome: outcome(rep, err), Strategy: string(o.strategy), Held: len(o.replay)}
			if err == nil {
				mg.Downtime, mg.Bytes = rep.Downtime, rep.Bytes
			}
			a.metrics.ObserveMigration(mg)
			if err != nil {
				g.fail(fmt.Errorf("%s: %w", o.c.Name, err))
				errs[i] = fmt.Errorf("%s: %w", o.c.Name, err)
				return
			}
			results[i] = *o.result(rep)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		a.log.Error("group migration failed", "group", g.id, "err", err)
		send(api.Progress{Error: err.Error()})
		return
	}
	send(api.Progress{Done: true, Results: results})
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// incomingGroup is the destination's side of a group.
type incomingGroup struct {
	n       int
	members map[string]store.Container // restored and held, with the revision to commit against
	done    chan struct{}
	err     error
	ended   time.Time // kept a while, so late members learn the outcome
}

// group finds or makes the destination's record of group id.
func (a *Agent) group(id string, n int) *incomingGroup {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.groups == nil {
		a.groups = map[string]*incomingGroup{}
	}
	for k, old := range a.groups {
		if !old.ended.IsZero() && time.Since(old.ended) > 10*groupWait {
			delete(a.groups, k)
		}
	}
	g := a.groups[id]
	if g == nil {
		g = &incomingGroup{n: n, members: map[string]store.Container{}, done: make(chan struct{})}
		a.groups[id] = g
	}
	return g
}

// failGroup ends group id with err (if it has not ended): its members
// already restored here are dropped by their own requests.
func (a *Agent) failGroup(id string, err error) {
	a.endGroup(id, a.group(id, 0), err)
}

func (a *Agent) endGroup(id string, g *incomingGroup, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	select {
	case <-g.done:
		return
	default:
	}
	g.err, g.ended = err, time.Now()
	close(g.done)
}

// commitInGroup holds a restored member until every member of its group
// is restored here; the last one commits them all in one transaction. It
// returns nil once the group is committed (the caller lets its member
// run), or the group's failure (its member is dropped).
func (a *Agent) commitInGroup(ctx context.Context, req api.RestoreRequest, c store.Container, rev int64) error {
	g := a.group(req.Group, req.GroupSize)
	c.Revision, c.Host, c.Status, c.MigratingTo, c.SwitchedTo, c.Error = rev, a.cfg.Name, store.StatusRunning, "", "", ""
	a.mu.Lock()
	select {
	case <-g.done: // failed before this member arrived
	default:
		g.members[c.Name] = c
	}
	complete := len(g.members) == g.n && g.ended.IsZero()
	a.mu.Unlock()
	if complete {
		var cs []store.Container
		a.mu.Lock()
		for _, m := range g.members {
			cs = append(cs, m)
		}
		a.mu.Unlock()
		a.endGroup(req.Group, g, a.finishGroup(ctx, cs))
	}
	select {
	case <-g.done:
	case <-time.After(groupWait):
		a.endGroup(req.Group, g, fmt.Errorf("the group's containers were not all restored on %s within %v", a.cfg.Name, groupWait))
		<-g.done
	}
	switch {
	case errors.Is(g.err, errUndecided):
		// The store did not answer: the copy stays held here, and
		// recovery decides it (member by member) once it answers.
		return g.err
	case g.err != nil:
		a.dropIncoming(ctx, c.Name)
		return fmt.Errorf("%w: %w", g.err, store.ErrConflict)
	}
	return nil
}

// finishGroup is the group's commit point: one transaction moves every
// record here. An answer lost on the way is resolved by reading a record
// again (the transaction applied to all or none).
func (a *Agent) finishGroup(ctx context.Context, cs []store.Container) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), decideBound)
	defer cancel()
	for {
		err := a.st.FinishMigrations(ctx, cs)
		if err == nil {
			return nil
		}
		if cur, rerr := a.st.Container(ctx, cs[0].Name); rerr == nil {
			if cur.Host == a.cfg.Name && cur.Status != store.StatusMigrating {
				return nil // it applied
			}
			if errors.Is(err, store.ErrConflict) {
				return fmt.Errorf("commit the group: a source rolled its container back first: %w", err)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("commit the group: %w (%w)", errUndecided, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
