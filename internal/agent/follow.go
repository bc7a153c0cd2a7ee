package agent

import (
	"context"
	"errors"
	"sort"
	"time"

	"github.com/coat-project/coat/internal/api"
	"github.com/coat-project/coat/internal/store"
)

// Follow-me (`coat follow NAME --client CLIENT`). The agent that runs a
// following container moves it: it sees the client's record change (its
// watch, or the next check), claims the roam in the container's policy
// with a compare-and-swap (so each roam is acted on once, whoever looks),
// and migrates the container to the host the client is attached to, on
// the same path and under the same lock as `coat migrate`. A container
// that is migrating when its client roams is left alone until it runs
// again: the host it then runs on acts on the roam. A roam is claimed
// even when there is nothing to move (the client came next to the
// container's host, or next to no host this cluster knows), and a
// migration that fails is not tried again for the same roam: follow-me
// moves a container once per roam, and the agent's log says why not.

// followStep is what planFollow decided for one policy: claim Roam and,
// if To is set, move the container there.
type followStep struct {
	Follow store.Follow
	Roam   int64
	To     string
	Why    string // when To is empty: why nothing moves
}

// planFollow decides what this host (self) does about the follow-me
// policies of the containers it runs, given the records.
func planFollow(self string, follows []store.Follow, cs []store.Container, clients map[string]store.Client, hosts []store.Host) []followStep {
	byName := map[string]store.Container{}
	for _, c := range cs {
		byName[c.Name] = c
	}
	live := map[string]bool{}
	for _, h := range hosts {
		live[h.Name] = true
	}
	var out []followStep
	for _, f := range follows {
		c, ok := byName[f.Container]
		if !ok || c.Host != self || c.Status != store.StatusRunning {
			continue // another host's, gone, or not movable now: later
		}
		cl, ok := clients[f.Client]
		if !ok || cl.Roams <= f.Handled {
			continue
		}
		st := followStep{Follow: f, Roam: cl.Roams}
		switch to := cl.AttachedTo; {
		case to == "":
			st.Why = "the client is attached next to no host"
		case to == self:
			st.Why = "it already runs next to the client"
		case !live[to]:
			st.Why = "the client's host " + to + " is not registered"
		default:
			st.To = to
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Follow.Container < out[j].Follow.Container })
	return out
}

// checkFollows acts on the roams of the clients this host's containers
// follow.
func (a *Agent) checkFollows(ctx context.Context) {
	rctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	follows, err := a.st.Follows(rctx)
	if err != nil || len(follows) == 0 {
		if err != nil {
			a.log.Warn("follow policies", "err", err)
		}
		return
	}
	cs, err := a.st.Containers(rctx)
	if err != nil {
		a.log.Warn("follow-me: containers", "err", err)
		return
	}
	hosts, err := a.st.Hosts(rctx)
	if err != nil {
		a.log.Warn("follow-me: hosts", "err", err)
		return
	}
	a.mu.Lock()
	clients := a.clients
	a.mu.Unlock()
	for _, st := range planFollow(a.cfg.Name, follows, cs, clients, hosts) {
		name := st.Follow.Container
		if _, err := a.st.ClaimRoam(rctx, st.Follow, st.Roam); err != nil {
			if !errors.Is(err, store.ErrConflict) {
				a.log.Warn("follow-me: claim roam", "container", name, "client", st.Follow.Client, "roam", st.Roam, "err", err)
			}
			continue // someone else handled it, or will on the next check
		}
		if st.To == "" {
			a.log.Info("follow-me: nothing to move", "container", name, "client", st.Follow.Client, "roam", st.Roam, "why", st.Why)
			continue
		}
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			a.followMove(ctx, name, st.Follow.Client, st.To)
		}()
	}
}

// followMove migrates name to the host its client is now attached to.
// The migration finishes (or rolls back) even if the agent is stopping.
func (a *Agent) followMove(ctx context.Context, name, client, to string) {
	ctx = context.WithoutCancel(ctx)
	start := time.Now()
	log := a.log.With("container", name, "client", client, "to", to)
	out, err := a.newOutgoing(ctx, name, api.MigrateRequest{To: to})
	if err != nil {
		log.Warn("follow-me: cannot migrate", "err", err)
		return
	}
	log.Info("follow-me: migrating to the client's host")
	res, err := a.runOutgoing(ctx, out, func(api.Progress) {})
	if err != nil {
		log.Warn("follow-me: migration failed", "err", err)
		return
	}
	log.Info("follow-me: moved", "downtime_ms", res.DowntimeMS, "total_ms", api.Ms(time.Since(start)))
}
