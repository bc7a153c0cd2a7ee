package agent

import (
	"maps"
	"slices"
	"testing"

	"github.com/coat-project/coat/internal/store"
)

// Only containers that run here as their records say, and let traffic
// in, skip the per-container checks of collectLeftovers.
func TestSettledNames(t *testing.T) {
	cs := []store.Container{
		{Name: "ok", Host: "edge-1", Status: store.StatusRunning},
		{Name: "elsewhere", Host: "edge-2", Status: store.StatusRunning},
		{Name: "migrating", Host: "edge-1", Status: store.StatusMigrating, MigratingTo: "edge-2"},
		{Name: "paused", Host: "edge-1", Status: store.StatusRunning},
		{Name: "stopped", Host: "edge-1", Status: store.StatusRunning},
		{Name: "held", Host: "edge-1", Status: store.StatusRunning},
		{Name: "failed", Host: "edge-1", Status: store.StatusFailed},
		{Name: "norunc", Host: "edge-1", Status: store.StatusRunning},
	}
	runc := map[string]string{"ok": "running", "elsewhere": "running", "migrating": "running", "paused": "paused",
		"stopped": "stopped", "held": "running", "failed": "running"}
	got := settledNames("edge-1", cs, runc, func(n string) bool { return n != "held" })
	if names := slices.Sorted(maps.Keys(got)); !slices.Equal(names, []string{"ok"}) {
		t.Fatalf("settled = %v, want [ok]", names)
	}
}
