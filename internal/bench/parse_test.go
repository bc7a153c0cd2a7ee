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

// iperfLog writes iperf3 -J output with 100 ms intervals from 0 to 3 s at
// 100 Mbit/s, receiving nothing from gapFrom to gapTo (seconds).
func iperfLog(t *testing.T, gapFrom, gapTo float64) string {
	t.Helper()
	var b strings.Builder
	b.WriteString(`{"intervals": [`)
	for i := 0; i < 30; i++ {
		start, end := float64(i)/10, float64(i+1)/10
		got := 0.1 // seconds of the interval that received
		if lo, hi := max(start, gapFrom), min(end, gapTo); hi > lo {
			got -= hi - lo
		}
		bytes := got * 100e6 / 8
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `{"sum": {"start": %.1f, "end": %.1f, "bytes": %.0f, "bits_per_second": %.0f}}`, start, end, bytes, bytes*8/0.1)
	}
	b.WriteString(`]}`)
	f := filepath.Join(t.TempDir(), "iperf3.json")
	if err := os.WriteFile(f, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// iperf3's stall is counted in whole receive intervals: a stall of 270 ms
// may cover two (read as 200 ms), one of 250 ms only one (100 ms), one of
// 80 ms none (0). A stall over most of the run is measured against the
// rate before the migration (the whole run's median interval is empty),
// and a stream that never resumes before the client ends is not counted as
// kept.
func TestParseIperfStallInIntervals(t *testing.T) {
	for _, c := range []struct {
		from, to float64
		want     float64
		kept     bool
	}{
		{1.25, 1.52, 200, true}, {1.23, 1.48, 100, true}, {1.31, 1.39, 0, true}, {1.0, 1.6, 600, true},
		{1.0, 2.7, 1700, true}, // 17 of 30 intervals empty
		{1.0, 9, 2000, false},  // nothing after the migration
	} {
		r := Run{MigStartMS: 1000, MigEndMS: 1700}
		if err := parseIperf(&r, nil, nil, iperfLog(t, c.from, c.to), time.Time{}); err != nil {
			t.Fatal(err)
		}
		if r.StallMS < c.want-1 || r.StallMS > c.want+1 || r.Survived != c.kept {
			t.Errorf("received nothing %.2f-%.2f s: stall %.1f ms, kept %v (%s); want %.0f ms, kept %v",
				c.from, c.to, r.StallMS, r.Survived, r.ClientError, c.want, c.kept)
		}
	}
}
