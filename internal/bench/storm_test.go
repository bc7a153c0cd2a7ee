package bench

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseStormSizes(t *testing.T) {
	if got, err := ParseStormSizes(" 5, 20 ,"); err != nil || !slices.Equal(got, []int{5, 20}) {
		t.Errorf("ParseStormSizes = %v, %v; want [5 20]", got, err)
	}
	for _, bad := range []string{"", ",", "0", "201", "five", "5,-1"} {
		if got, err := ParseStormSizes(bad); err == nil || !strings.Contains(err.Error(), "--storm-sizes") {
			t.Errorf("ParseStormSizes(%q) = %v, %v; want an error naming --storm-sizes", bad, got, err)
		}
	}
}

func TestDistribution(t *testing.T) {
	d := Distribution([]float64{5, 1, 4, 2, 3, 10, 9, 8, 7, 6})
	if d.N != 10 || d.Min != 1 || d.P50 != 5 || d.P90 != 9 || d.Max != 10 {
		t.Errorf("Distribution = %+v, want n 10, min 1, p50 5, p90 9, max 10", d)
	}
	if got := d.String(); got != "p50 5 ms, p90 9 ms, max 10 ms (min 1 ms, 10 values)" {
		t.Errorf("String = %q", got)
	}
	if d := Distribution(nil); d.N != 0 || d.String() != "no values" {
		t.Errorf("empty: %+v %q", d, d.String())
	}
}

const agentLog = `time=2026-11-28T10:00:00.000Z level=INFO msg="follow-me: moved" host=edge-1 container=old client=client to=edge-2 downtime_ms=999 total_ms=1999
time=2026-11-28T10:00:05.100Z level=INFO msg="follow-me: migrating to the client's host" host=edge-1 container=a client=client to=edge-2
time=2026-11-28T10:00:05.400Z level=INFO msg="follow-me: moved" host=edge-1 container=a client=client to=edge-2 downtime_ms=120.5 total_ms=300.25
time=2026-11-28T10:00:05.500Z level=WARN msg="follow-me: migration failed" host=edge-1 container=b client=client to=edge-2 err="restore on destination: budget \"freeze\" spent"
time=2026-11-28T10:00:05.600Z level=INFO msg="migration ended" host=edge-1 container=c downtime_ms=5
`

func TestParseFollowMoves(t *testing.T) {
	since := time.Date(2026, 11, 28, 10, 0, 5, 0, time.UTC)
	got := ParseFollowMoves([]byte(agentLog), since)
	if len(got) != 2 {
		t.Fatalf("moves %+v, want a and b only (old is before since, c no follow-me)", got)
	}
	if a := got["a"]; !a.Moved || a.DowntimeMS != 120.5 || a.TotalMS != 300.25 || a.To != "edge-2" {
		t.Errorf("a = %+v", a)
	}
	if b := got["b"]; b.Moved || b.Error != `restore on destination: budget "freeze" spent` {
		t.Errorf("b = %+v", b)
	}
}

func TestStormRunsAndSummary(t *testing.T) {
	out := []byte(`{"streams":[{"sent":100,"received":100,"max_gap_ms":150},{"sent":100,"received":100,"max_gap_ms":400},` +
		`{"sent":100,"received":40,"max_gap_ms":900,"connection_error":"read: connection reset by peer"}],"connected":3,"ok":false}` + "\n")
	moves := map[string]FollowMove{"a": {Moved: true, DowntimeMS: 120}, "b": {Moved: true, DowntimeMS: 200}, "c": {Moved: true, DowntimeMS: 300}}
	runs, err := stormRuns([]string{"a", "b", "c"}, out, errors.New("exit status 1"), moves, 2*time.Second, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !runs[0].Survived || !runs[1].Survived || runs[2].Survived || !strings.Contains(runs[2].ClientError, "reset") {
		t.Fatalf("survival: %+v", runs)
	}
	if runs[0].StormMS != 2000 || runs[1].StallMS != 400 || runs[1].DowntimeMS != 200 || runs[0].Param != 3 {
		t.Errorf("run fields: %+v", runs[:2])
	}
	// A second roam of the same size, every service within its target.
	more, err := stormRuns([]string{"a", "b", "c"}, []byte(`{"streams":[{"sent":1,"received":1,"max_gap_ms":100},{"sent":1,"received":1,"max_gap_ms":100},{"sent":1,"received":1,"max_gap_ms":100}]}`),
		nil, map[string]FollowMove{"a": {Moved: true, DowntimeMS: 90}, "b": {Moved: true, DowntimeMS: 90}, "c": {}}, time.Second, 1)
	if err != nil {
		t.Fatal(err)
	}
	if more[2].Survived || !strings.Contains(more[2].ClientError, "no follow-me migration") {
		t.Errorf("a service with no move logged: %+v", more[2])
	}
	sums := SummarizeStorm(append(runs, more...))
	if len(sums) != 1 {
		t.Fatalf("summaries %+v", sums)
	}
	s := sums[0]
	// Within +50 ms: a (150 vs 120), and a, b of the second roam.
	if s.Size != 3 || s.Roams != 2 || s.Services != 6 || s.Survived != 4 || s.Within != 3 || s.Storm.Max != 2000 || s.Downtime.Max != 300 {
		t.Errorf("summary %+v", s)
	}
	goals := StormGoals(sums, []Failure{{Workload: WorkloadStorm, Param: 50, Error: "set-up: no room"}})
	var lines []string
	for _, g := range goals {
		lines = append(lines, g.String())
	}
	all := strings.Join(lines, "\n")
	for _, want := range []string{"storm of 3 services (2 roams): every connection survives: 4/6 streams intact — MISS",
		"every client stalls at most its service's downtime + 50 ms: 3/6 within", "storm of 50 services: NOT MEASURED"} {
		if !strings.Contains(all, want) {
			t.Errorf("goals do not say %q:\n%s", want, all)
		}
	}
}

func TestWriteStormReport(t *testing.T) {
	var runs []Run
	for i, d := range []float64{100, 150, 200, 800} {
		runs = append(runs, Run{Workload: WorkloadStorm, Mode: "follow-me", Param: 4, Index: i / 2, DowntimeMS: d, StallMS: d + 20, Survived: true, StormMS: 900})
	}
	dir := t.TempDir()
	plots, err := WriteStormPlots(dir, runs)
	if err != nil || !slices.Equal(plots, []string{FigStorm}) {
		t.Fatalf("plots %v, %v", plots, err)
	}
	if st, err := os.Stat(filepath.Join(dir, FigStorm)); err != nil || st.Size() < 1000 {
		t.Errorf("plot file: %v", err)
	}
	var b strings.Builder
	if err := WriteStormMarkdown(&b, runs, nil, plots, "20KB/s"); err != nil {
		t.Fatal(err)
	}
	md := b.String()
	for _, want := range []string{"## Workload `storm`", "| 4 | 2 | 900 | 900 | 150 | 800 | 800 |", "![Downtime and stall", "every connection survives: 4/4 streams intact — PASS",
		"within; stall - downtime p50 20 ms", "4/4 within"} {
		if !strings.Contains(md, want) {
			t.Errorf("report does not say %q:\n%s", want, md)
		}
	}
	if plots, err := WriteStormPlots(dir, nil); err != nil || plots != nil {
		t.Errorf("no runs: plots %v, %v", plots, err)
	}
}
