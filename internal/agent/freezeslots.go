package agent

import (
	"context"
	"fmt"
	goruntime "runtime"
	"sync"
)

// Freeze slots. A host that sends many containers away at once (a drain
// with --parallel, a follow-me storm: every service of a roaming client
// leaving together) froze them all together, and their checkpoints and
// restores shared its CPUs: each stayed frozen for most of the storm (20
// services of one host: downtime p50 3.2 s where one alone has ~0.3 s).
// A migration now waits for a slot before its container is frozen and
// gives it back once the destination's restore has answered, so at most
// Config.MaxFrozen of this host's containers are frozen at once. The wait
// is part of the prepare phase: it counts against --timeout, not against
// --freeze-budget, and the container serves meanwhile. A group move takes
// no slot (its members are frozen together by design, and taking one
// each could deadlock).

// defaultMaxFrozen is the host's CPUs, at least 2.
func defaultMaxFrozen() int { return max(2, goruntime.NumCPU()) }

// freezeSlots makes the slots for cfg (nil: no limit).
func freezeSlots(n int) chan struct{} {
	switch {
	case n < 0:
		return nil
	case n == 0:
		n = defaultMaxFrozen()
	}
	return make(chan struct{}, n)
}

// freezeSlot waits for a slot; release (idempotent) gives it back.
func (a *Agent) freezeSlot(ctx context.Context) (release func(), err error) {
	if a.frozen == nil {
		return func() {}, nil
	}
	select {
	case a.frozen <- struct{}{}:
		var once sync.Once
		return func() { once.Do(func() { <-a.frozen }) }, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for one of %s's %d freeze slots (containers it may have frozen at once: --max-frozen): %w",
			a.cfg.Name, cap(a.frozen), context.Cause(ctx))
	}
}
