package agent

import (
	"context"
	"strings"
	"testing"
	"time"
)

// Two slots: a third freeze waits until one is given back, and gives up
// with its context; giving a slot back twice frees it once.
func TestFreezeSlots(t *testing.T) {
	a := &Agent{cfg: Config{Name: "edge-1"}, frozen: freezeSlots(2)}
	r1, err1 := a.freezeSlot(context.Background())
	r2, err2 := a.freezeSlot(context.Background())
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := a.freezeSlot(ctx); err == nil || !strings.Contains(err.Error(), "edge-1's 2 freeze slots") {
		t.Fatalf("third slot with both taken: %v, want a wait that gives up naming the slots", err)
	}
	got := make(chan error, 1)
	go func() {
		_, err := a.freezeSlot(context.Background())
		got <- err
	}()
	time.Sleep(20 * time.Millisecond)
	r1()
	r1() // once only
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if len(a.frozen) != 2 {
		t.Errorf("%d slots taken, want 2 (r2 and the waiter's)", len(a.frozen))
	}
	r2()
	if len(a.frozen) != 1 {
		t.Errorf("%d slots taken after r2, want 1", len(a.frozen))
	}
	// No limit.
	if freezeSlots(-1) != nil || cap(freezeSlots(0)) < 2 || cap(freezeSlots(3)) != 3 {
		t.Errorf("freezeSlots: -1 %v, 0 cap %d, 3 cap %d", freezeSlots(-1), cap(freezeSlots(0)), cap(freezeSlots(3)))
	}
	if release, err := (&Agent{}).freezeSlot(context.Background()); err != nil || release == nil {
		t.Errorf("no limit: %v", err)
	}
}
