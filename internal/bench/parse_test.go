package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// sockperfLog writes a --full-log with replies every 0.5 ms from 2.4 s
// to end s, with no reply between gapFrom and gapTo.
func sockperfLog(t *testing.T, end, gapFrom, gapTo float64) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("packet, txTime(sec), rxTime(sec), latency(usec)\n")
	i := 0
	for ts := 2.4; ts < end; ts += 0.0005 {
		if ts >= gapFrom && ts < gapTo {
			continue
		}
		fmt.Fprintf(&b, "%d, %.9f, %.9f, 30.0\n", i, ts, ts+0.00003)
		i++
	}
	f := filepath.Join(t.TempDir(), "sockperf.log")
	if err := os.WriteFile(f, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// A run whose replies resume after the migration shows its stall; one
// whose client stopped before the migration ended is not counted as kept
// and its stall runs at least to the migration's end (a metric that can
// fail: before, such a run read as a 9-83 ms stall and a kept connection).
func TestParseSockperfMigrationPastTheRun(t *testing.T) {
	ok := Run{MigStartMS: 3200, MigEndMS: 3500}
	if err := parseSockperf(&ok, nil, nil, sockperfLog(t, 5, 3.25, 3.45), time.Time{}); err != nil {
		t.Fatal(err)
	}
	if !ok.Survived || ok.StallMS < 199 || ok.StallMS > 202 {
		t.Errorf("resumed run: survived %v stall %.1f ms, want kept and 200 ms", ok.Survived, ok.StallMS)
	}
	late := Run{MigStartMS: 3200, MigEndMS: 6000}
	if err := parseSockperf(&late, nil, nil, sockperfLog(t, 5, 3.25, 9), time.Time{}); err != nil {
		t.Fatal(err)
	}
	if late.Survived || late.StallMS < 2749 || !strings.Contains(late.ClientError, "no reply after the migration") {
		t.Errorf("run that ended mid-migration: survived %v stall %.1f ms error %q, want not kept, >= 2750 ms, said why",
			late.Survived, late.StallMS, late.ClientError)
	}
}
