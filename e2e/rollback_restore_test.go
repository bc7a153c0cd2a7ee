package e2e

import (
	"strings"
	"testing"
	"time"
)

// A migration whose freeze budget runs out while the destination is
// still restoring rolls back, and the destination's copy, restored or
// half-restored, goes without a word to the client: its stream lives on
// on the source's copy. (Killed with its veth attached, the copy's
// restored socket closed and its FIN reached the client: "connection
// closed by peer". Found by TestStorm, whose 20 migrations at once ran
// out of their budgets.) The budget is tuned from a plain migration's
// phases so that it runs out during the restore; a run that never lands
// there says so.
func TestRollbackDuringRestoreKeepsStream(t *testing.T) {
	l := newLab(t, 2)
	c := l.runSample("rr", "edge-1")
	streams := l.startStreams([]string{c.IP}, "20KB/s")
	time.Sleep(time.Second)
	r := l.migrate("rr", "edge-2")
	// Out of budget after the transfer and before the restore's end.
	budget := time.Duration((r.CheckpointMS + r.TransferMS + r.RestoreMS/2) * float64(time.Millisecond))
	other := map[string]string{"edge-1": "edge-2", "edge-2": "edge-1"}
	inRestore := 0
	for i := 0; i < 10 && inRestore < 3; i++ {
		from, b := l.get("rr").Host, budget.Round(time.Millisecond)
		res, err := l.coat("migrate", "rr", "--to", other[from], "--freeze-budget", b.String())
		switch {
		case err == nil:
			budget = budget * 3 / 4 // done in time: less
		case strings.Contains(res, "restore on destination") && strings.Contains(res, "budget"):
			inRestore++
		case strings.Contains(res, "budget"):
			budget = budget * 5 / 4 // ran out before the restore: more
		default:
			t.Fatalf("migrate with --freeze-budget %v: %v\n%s", b, err, res)
		}
		t.Logf("--freeze-budget %v: %v", b, firstLine(res, err))
		// Exactly one copy, and nothing of the other outcome left (the
		// destination removes its part once it reads the rollback).
		waitFor(t, 15*time.Second, func() string { return l.invariants("rr", l.get("rr").Host, "edge-1", "edge-2") })
	}
	if inRestore == 0 {
		t.Logf("no budget ran out during a destination's restore: the path was not exercised this time")
	}
	rep := streams.stop()[0]
	if rep.ConnectionError != "" || rep.Errors != 0 || rep.Received != rep.Sent {
		t.Fatalf("client side after %d rollbacks during the restore: %+v", inRestore, rep)
	}
	if s := l.stats(c.IP); s.Connections != 1 || s.Errors != 0 || s.Bytes != rep.Sent {
		t.Fatalf("server side: %+v, want 1 connection, 0 errors, %d bytes", s, rep.Sent)
	}
	t.Logf("%d rollbacks during the destination's restore; stream intact, %d bytes, longest stall %.0f ms", inRestore, rep.Received, rep.MaxGapMS)
}

func firstLine(out string, err error) string {
	if err == nil {
		return "moved"
	}
	if i := strings.LastIndex(strings.TrimSpace(out), "\n"); i >= 0 {
		out = strings.TrimSpace(out)[i+1:]
	}
	if len(out) > 160 {
		out = out[:160] + "..."
	}
	return out
}
