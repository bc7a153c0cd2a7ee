package store

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestEtcdDrainRecord(t *testing.T) {
	t.Parallel()
	s, ctx := newTestStore(t), testCtx(t)
	d := Drain{Host: "edge-1", Started: time.Now().UTC(), Plan: map[string]string{"a": "edge-2"}}
	h, err := s.StartDrain(ctx, d, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.StartDrain(ctx, d, 5*time.Second); !errors.Is(err, ErrDraining) {
		t.Fatalf("second drain of edge-1: %v, want ErrDraining", err)
	}
	ds, err := s.Drains(ctx)
	if err != nil || len(ds) != 1 || ds["edge-1"].Plan["a"] != "edge-2" {
		t.Fatalf("drains %v %v", ds, err)
	}
	d.Plan["b"] = "edge-3"
	if err := h.Update(ctx, d); err != nil {
		t.Fatal(err)
	}
	if ds, _ := s.Drains(ctx); ds["edge-1"].Plan["b"] != "edge-3" {
		t.Fatalf("after update: %v", ds)
	}
	if err := h.End(); err != nil {
		t.Fatal(err)
	}
	if ds, err := s.Drains(ctx); err != nil || len(ds) != 0 {
		t.Fatalf("after End: %v %v", ds, err)
	}
	// A drain is recorded again after the first one ended.
	h, err = s.StartDrain(ctx, d, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = h.End()
	if _, err := s.StartDrain(ctx, Drain{Host: "../x"}, time.Second); err == nil {
		t.Fatal("drain of a bad host name accepted")
	}
}

// A drain whose process died (its context ended, End never called)
// disappears with its lease.
func TestEtcdDrainExpires(t *testing.T) {
	t.Parallel()
	s, ctx := newTestStore(t), testCtx(t)
	dctx, cancel := context.WithCancel(ctx)
	if _, err := s.StartDrain(dctx, Drain{Host: "edge-1"}, time.Second); err != nil {
		t.Fatal(err)
	}
	cancel()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ds, err := s.Drains(ctx)
		if err == nil && len(ds) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("drain still recorded 10s after its keepalive stopped: %v %v", ds, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
