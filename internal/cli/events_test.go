package cli

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/coat-project/coat/internal/store"
)

func TestClusterEvents(t *testing.T) {
	now := time.Date(2026, 11, 28, 7, 0, 0, 123e6, time.UTC)
	run := &store.Container{Name: "web", Host: "edge-1", Status: store.StatusRunning}
	mig := &store.Container{Name: "web", Host: "edge-1", Status: store.StatusMigrating, MigratingTo: "edge-2"}
	moved := &store.Container{Name: "web", Host: "edge-2", Status: store.StatusRunning}
	rec := func(phase string) *store.Migration {
		return &store.Migration{Name: "web", From: "edge-1", To: "edge-2", Phase: phase}
	}
	for _, tc := range []struct {
		what string
		ce   store.ClusterEvent
		want []string // formatEvent of each
	}{
		{"created", store.ClusterEvent{Kind: store.KindContainer, Name: "web", Container: run},
			[]string{"07:00:00.123 container-created  web on edge-1: running"}},
		{"migrating", store.ClusterEvent{Kind: store.KindContainer, Name: "web", Container: mig, PrevContainer: run},
			[]string{"07:00:00.123 container-status   web on edge-1: migrating"}},
		{"locked", store.ClusterEvent{Kind: store.KindMigration, Name: "web", Migration: rec("locked")},
			[]string{"07:00:00.123 migration          web edge-1 -> edge-2: locked"}},
		{"prepared", store.ClusterEvent{Kind: store.KindMigration, Name: "web", Migration: rec("prepared"), PrevMigration: rec("locked")},
			[]string{"07:00:00.123 migration          web edge-1 -> edge-2: prepared"}},
		{"same phase again", store.ClusterEvent{Kind: store.KindMigration, Name: "web", Migration: rec("prepared"), PrevMigration: rec("prepared")}, nil},
		{"committed", store.ClusterEvent{Kind: store.KindContainer, Name: "web", Container: moved, PrevContainer: mig},
			[]string{"07:00:00.123 migration          web edge-1 -> edge-2: committed (running)",
				"07:00:00.123 container-moved    web edge-1 -> edge-2"}},
		{"rolled back", store.ClusterEvent{Kind: store.KindContainer, Name: "web", Container: run, PrevContainer: mig},
			[]string{"07:00:00.123 migration          web edge-1 -> edge-2: rolled-back (running)"}},
		{"record deleted", store.ClusterEvent{Kind: store.KindMigration, Name: "web", Deleted: true, Migration: rec("prepared")}, nil},
		{"no change shown", store.ClusterEvent{Kind: store.KindContainer, Name: "web", Container: run, PrevContainer: run}, nil},
		{"removed", store.ClusterEvent{Kind: store.KindContainer, Name: "web", Deleted: true, Container: moved},
			[]string{"07:00:00.123 container-removed  web from edge-2"}},
		{"host joined", store.ClusterEvent{Kind: store.KindHost, Name: "edge-3", Host: &store.Host{Name: "edge-3"}},
			[]string{"07:00:00.123 host-joined        edge-3"}},
		{"host re-registered", store.ClusterEvent{Kind: store.KindHost, Name: "edge-3", Host: &store.Host{Name: "edge-3"}, PrevHost: &store.Host{Name: "edge-3"}}, nil},
		{"host left", store.ClusterEvent{Kind: store.KindHost, Name: "edge-3", Deleted: true, Host: &store.Host{Name: "edge-3"}},
			[]string{"07:00:00.123 host-left          edge-3"}},
		{"host gone", store.ClusterEvent{Kind: store.KindGone, Name: "edge-3"},
			[]string{"07:00:00.123 host-declared-gone edge-3"}},
	} {
		var got []string
		for _, e := range clusterEvents(tc.ce, now) {
			got = append(got, formatEvent(e))
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s:\n got %q\nwant %q", tc.what, got, tc.want)
		}
	}
}

func TestEventJSONKeys(t *testing.T) {
	now := time.Date(2026, 11, 28, 7, 0, 0, 0, time.UTC)
	evs := clusterEvents(store.ClusterEvent{Kind: store.KindContainer, Name: "web",
		Container:     &store.Container{Name: "web", Host: "edge-2", Status: store.StatusRunning},
		PrevContainer: &store.Container{Name: "web", Host: "edge-1", Status: store.StatusMigrating, MigratingTo: "edge-2"},
	}, now)
	var buf bytes.Buffer
	for _, e := range evs {
		if err := writeEvent(&buf, e, true); err != nil {
			t.Fatal(err)
		}
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("--json wrote %q, want two lines", buf.String())
	}
	want := []map[string]any{
		{"type": "migration", "name": "web", "host": "", "from": "edge-1", "to": "edge-2", "phase": "committed", "status": "running", "time": "2026-11-28T07:00:00Z"},
		{"type": "container-moved", "name": "web", "host": "edge-2", "from": "edge-1", "to": "edge-2", "phase": "", "status": "running", "time": "2026-11-28T07:00:00Z"},
	}
	for i, l := range lines {
		var got map[string]any
		if err := json.Unmarshal([]byte(l), &got); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		if !reflect.DeepEqual(got, want[i]) {
			t.Errorf("line %d:\n got %v\nwant %v", i, got, want[i])
		}
	}
}
