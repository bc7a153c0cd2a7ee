package agent

import (
	"testing"
	"time"

	"github.com/coat-project/coat/internal/store"
)

func TestMergeVTEPsKeepsAbsentHosts(t *testing.T) {
	seen := map[string]seenHost{}
	t0 := time.Unix(1000, 0)
	both := []store.Host{{Name: "edge-1", UnderlayIP: "10.0.0.1"}, {Name: "edge-2", UnderlayIP: "10.0.0.2"}}
	if got := mergeVTEPs(both, seen, t0, time.Minute, nil); len(got) != 2 {
		t.Fatalf("both present: %v", got)
	}
	// edge-2's lease expired: its forwarding stays for a while.
	one := both[:1]
	got := mergeVTEPs(one, seen, t0.Add(30*time.Second), time.Minute, nil)
	if got["edge-2"].String() != "10.0.0.2" {
		t.Fatalf("absent for 30s: %v, want edge-2 kept", got)
	}
	// Back with another address: followed at once.
	moved := []store.Host{both[0], {Name: "edge-2", UnderlayIP: "10.0.0.22"}}
	if got := mergeVTEPs(moved, seen, t0.Add(40*time.Second), time.Minute, nil); got["edge-2"].String() != "10.0.0.22" {
		t.Fatalf("back elsewhere: %v", got)
	}
	// Gone for good once absent for goneAfter.
	mergeVTEPs(one, seen, t0.Add(50*time.Second), time.Minute, nil)
	if got := mergeVTEPs(one, seen, t0.Add(101*time.Second), time.Minute, nil); got["edge-2"] != nil || len(got) != 1 {
		t.Fatalf("absent for 61s: %v, want edge-2 gone", got)
	}
}

// A host the operator declared gone loses its forwarding at once; if it
// registers again afterwards, it is back.
func TestMergeVTEPsDeclaredGone(t *testing.T) {
	seen := map[string]seenHost{}
	t0 := time.Unix(1000, 0)
	both := []store.Host{{Name: "edge-1", UnderlayIP: "10.0.0.1", Started: t0}, {Name: "edge-2", UnderlayIP: "10.0.0.2", Started: t0}}
	mergeVTEPs(both, seen, t0, time.Hour, nil)
	gone := map[string]time.Time{"edge-2": t0.Add(10 * time.Second)}
	if got := mergeVTEPs(both[:1], seen, t0.Add(20*time.Second), time.Hour, gone); got["edge-2"] != nil {
		t.Fatalf("declared gone, absent: %v", got)
	}
	// A stale record (registered before the declaration) does not count.
	if got := mergeVTEPs(both, seen, t0.Add(21*time.Second), time.Hour, gone); got["edge-2"] != nil {
		t.Fatalf("declared gone, stale record: %v", got)
	}
	back := []store.Host{both[0], {Name: "edge-2", UnderlayIP: "10.0.0.2", Started: t0.Add(30 * time.Second)}}
	if got := mergeVTEPs(back, seen, t0.Add(31*time.Second), time.Hour, gone); got["edge-2"].String() != "10.0.0.2" {
		t.Fatalf("registered after the declaration: %v, want it back", got)
	}
}
