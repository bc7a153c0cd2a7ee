package agent

import (
	"context"
	"sync"
	"time"

	"github.com/coat-project/coat/internal/api"
	"github.com/coat-project/coat/internal/metrics"
	"github.com/coat-project/coat/internal/migrate"
)

// sampleEvery is how often the agent reads the store for its metrics.
const sampleEvery = 10 * time.Second

// sampleStore reads the container records every sampleEvery until ctx
// ends: the read's round trip is the etcd round-trip time, and the
// records of this host, counted by status, the containers gauge.
func (a *Agent) sampleStore(ctx context.Context) {
	t := time.NewTicker(sampleEvery)
	defer t.Stop()
	for {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		t0 := time.Now()
		cs, err := a.st.Containers(rctx)
		rtt := time.Since(t0)
		cancel()
		if err == nil {
			a.metrics.EtcdRTT.Observe(rtt.Seconds())
			counts := map[string]int{}
			for _, c := range cs {
				if c.Host == a.cfg.Name {
					counts[string(c.Status)]++
				}
			}
			a.metrics.SetContainers(counts)
		} else if ctx.Err() == nil {
			a.log.Debug("metrics: read the store", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// outcome is the metrics' outcome of a migration RunBudget ended with err
// and rep.
func outcome(rep migrate.Report, err error) string {
	switch {
	case err == nil:
		return metrics.OutcomeCommitted
	case rep.Phase == migrate.PhaseRolledBack:
		return metrics.OutcomeRolledBack
	}
	return metrics.OutcomeFailed
}

// tickEvery is how often a migration's progress is sent once it has taken
// that long.
const tickEvery = time.Second

// ticks sends o's progress every tickEvery until the returned function is
// called (which waits for the last tick to be sent).
func (a *Agent) ticks(o *outgoing, start time.Time, send func(api.Progress)) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(tickEvery)
		defer t.Stop()
		var pages int64
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			cur, _ := o.current.Load().(string)
			// Post-copy's pages go through the page server's tunnel
			// (whose count goes with it at the end: keep the most seen).
			if n := a.tunnelMoved(o.c.Name, "lazy"); n > pages {
				pages = n
			}
			send(api.Progress{Current: cur, BytesMoved: o.sent.Load() + pages, BytesExpected: o.memory,
				ElapsedMS: api.Ms(time.Since(start)), Migration: o.id})
		}
	}()
	return func() { close(done); wg.Wait() }
}

// nextPhase is the phase under way once p is done.
func nextPhase(p migrate.Phase, s migrate.Strategy) string {
	switch p {
	case migrate.PhaseLocked:
		return "image"
	case migrate.PhaseImageReady:
		return "preparing"
	case migrate.PhasePrepared:
		return "checkpointing"
	case migrate.PhaseCheckpointed:
		return "transferring"
	case migrate.PhaseTransferred:
		return "restoring"
	case migrate.PhaseRestored:
		if s == migrate.PostCopy {
			return "fetching"
		}
		return "committing"
	case migrate.PhaseFetched:
		return "committing"
	}
	return string(p)
}
