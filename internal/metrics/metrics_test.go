package metrics

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestObserveMigration(t *testing.T) {
	m := New("edge-1")
	m.ObserveMigration(Migration{Outcome: OutcomeCommitted, Strategy: "stop-and-copy", Downtime: 120 * time.Millisecond, Bytes: 1000, Held: 3})
	m.ObserveMigration(Migration{Outcome: OutcomeCommitted, Strategy: "stop-and-copy", Downtime: 80 * time.Millisecond, Bytes: 500})
	m.ObserveMigration(Migration{Outcome: OutcomeRolledBack, Strategy: "pre-copy", Bytes: 99999})
	m.ObservePhase("checkpointed", 50*time.Millisecond)
	m.Replayed(2)

	if got := testutil.ToFloat64(m.Migrations.WithLabelValues(OutcomeCommitted, "stop-and-copy")); got != 2 {
		t.Errorf("committed stop-and-copy migrations = %v, want 2", got)
	}
	if got := testutil.ToFloat64(m.Migrations.WithLabelValues(OutcomeRolledBack, "pre-copy")); got != 1 {
		t.Errorf("rolled-back migrations = %v, want 1", got)
	}
	// Only committed migrations moved bytes and had a downtime.
	if got := testutil.ToFloat64(m.BytesMoved); got != 1500 {
		t.Errorf("bytes = %v, want 1500", got)
	}
	if got := testutil.ToFloat64(m.FramesHeld); got != 3 {
		t.Errorf("frames held = %v, want 3", got)
	}
	if got := testutil.ToFloat64(m.FramesReplayed); got != 2 {
		t.Errorf("frames replayed = %v, want 2", got)
	}
	want := `
# HELP coat_migration_downtime_seconds How long a committed migration's container was frozen (from the freeze to the restore on the destination).
# TYPE coat_migration_downtime_seconds histogram
coat_migration_downtime_seconds_bucket{host="edge-1",strategy="stop-and-copy",le="0.01"} 0
coat_migration_downtime_seconds_bucket{host="edge-1",strategy="stop-and-copy",le="0.025"} 0
coat_migration_downtime_seconds_bucket{host="edge-1",strategy="stop-and-copy",le="0.05"} 0
coat_migration_downtime_seconds_bucket{host="edge-1",strategy="stop-and-copy",le="0.1"} 1
coat_migration_downtime_seconds_bucket{host="edge-1",strategy="stop-and-copy",le="0.15"} 2
coat_migration_downtime_seconds_bucket{host="edge-1",strategy="stop-and-copy",le="0.2"} 2
coat_migration_downtime_seconds_bucket{host="edge-1",strategy="stop-and-copy",le="0.3"} 2
coat_migration_downtime_seconds_bucket{host="edge-1",strategy="stop-and-copy",le="0.5"} 2
coat_migration_downtime_seconds_bucket{host="edge-1",strategy="stop-and-copy",le="0.75"} 2
coat_migration_downtime_seconds_bucket{host="edge-1",strategy="stop-and-copy",le="1"} 2
coat_migration_downtime_seconds_bucket{host="edge-1",strategy="stop-and-copy",le="2"} 2
coat_migration_downtime_seconds_bucket{host="edge-1",strategy="stop-and-copy",le="5"} 2
coat_migration_downtime_seconds_bucket{host="edge-1",strategy="stop-and-copy",le="10"} 2
coat_migration_downtime_seconds_bucket{host="edge-1",strategy="stop-and-copy",le="30"} 2
coat_migration_downtime_seconds_bucket{host="edge-1",strategy="stop-and-copy",le="+Inf"} 2
coat_migration_downtime_seconds_sum{host="edge-1",strategy="stop-and-copy"} 0.2
coat_migration_downtime_seconds_count{host="edge-1",strategy="stop-and-copy"} 2
`
	if err := testutil.GatherAndCompare(m.Registry, strings.NewReader(want), "coat_migration_downtime_seconds"); err != nil {
		t.Error(err)
	}
	if n, err := testutil.GatherAndCount(m.Registry, "coat_migration_phase_duration_seconds"); err != nil || n != 1 {
		t.Errorf("phase histograms = %d (%v), want 1", n, err)
	}
}

func TestNilMetrics(t *testing.T) {
	var m *Metrics // an agent without --metrics-addr
	m.ObserveMigration(Migration{Outcome: OutcomeFailed})
	m.ObservePhase("locked", time.Second)
	m.Replayed(1)
	m.Held(1)
	m.Recover(OutcomeCommitted)
	m.SetContainers(map[string]int{"running": 1})
}

func TestContainersAndBuildInfo(t *testing.T) {
	m := New("edge-2")
	m.SetContainers(map[string]int{"running": 2, "migrating": 1})
	m.SetContainers(map[string]int{"running": 3})
	if got := testutil.ToFloat64(m.Containers.WithLabelValues("running")); got != 3 {
		t.Errorf("running = %v, want 3", got)
	}
	if n := testutil.CollectAndCount(m.Containers); n != 1 {
		t.Errorf("container series = %d, want 1 (the gauge is replaced, not merged)", n)
	}
	if n := testutil.CollectAndCount(m.BuildInfo); n != 1 {
		t.Errorf("build info series = %d, want 1", n)
	}
}

func TestServe(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	m := New("edge-1")
	m.ObserveMigration(Migration{Outcome: OutcomeCommitted, Strategy: "stop-and-copy", Downtime: time.Millisecond})
	done, err := m.Serve(ctx, "127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := m.Serve(context.Background(), "not-an-address", nil); err == nil || !strings.Contains(err.Error(), "--metrics-addr") {
		t.Errorf("bad address: %v, want an error that names --metrics-addr", err)
	}
}

func TestHandler(t *testing.T) {
	m := New("edge-1")
	m.ObserveMigration(Migration{Outcome: OutcomeCommitted, Strategy: "stop-and-copy", Downtime: time.Millisecond})
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{
		`coat_migrations_total{host="edge-1",outcome="committed",strategy="stop-and-copy"} 1`,
		`coat_build_info{`, `go_goroutines`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
