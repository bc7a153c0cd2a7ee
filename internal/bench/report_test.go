package bench

import (
	"bytes"
	"encoding/csv"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// mkRuns builds one run per total, with phases at 40/20/30% of total.
func mkRuns(workload, mode string, survived bool, totals ...float64) []Run {
	var out []Run
	for i, t := range totals {
		out = append(out, Run{
			Workload: workload, Mode: mode, Index: i,
			CheckpointMS: 0.4 * t, TransferMS: 0.2 * t, RestoreMS: 0.3 * t,
			TotalMS: t, DowntimeMS: t / 2, StallMS: t/2 + 10, Bytes: int64(t * 1000),
			Survived: survived,
		})
	}
	return out
}

// withTimeline adds a synthetic client timeline: steady traffic, a
// migration at 2000 ms lasting total ms, no traffic during the stall
// (survived) or for ever after the stall starts (dropped).
func withTimeline(rs []Run, level, binMS float64) []Run {
	for i := range rs {
		r := &rs[i]
		r.MigStartMS, r.MigEndMS = 2000, 2000+r.TotalMS
		stallStart := r.MigEndMS - r.DowntimeMS
		for t := 0.0; t <= 5000; t += binMS {
			v := level * (1 + 0.05*math.Sin(t/70))
			if t >= stallStart && (!r.Survived || t < stallStart+r.StallMS) {
				v = 0
			}
			r.Timeline = append(r.Timeline, Point{T: t, V: v})
		}
	}
	return rs
}

func synthetic() []Run {
	var runs []Run
	runs = append(runs, withTimeline(mkRuns("sample", "coat", true, 300, 100, 500, 200, 400), 50000, 10)...)
	nohold := mkRuns("sample", "coat-nohold", true, 310, 290, 300)
	for i := range nohold {
		nohold[i].StallMS += 250 // no held packets: retransmission backoff
	}
	runs = append(runs, withTimeline(nohold, 50000, 10)...)
	runs = append(runs, withTimeline(mkRuns("sample", "traditional", false, 260, 240, 250, 270), 50000, 10)...)
	runs = append(runs, mkRuns("sample", "reference", false, 150, 150, 150)...)
	sp := withTimeline(mkRuns("sockperf", "coat", true, 400, 420), 900, 10)
	sp[0].LatBeforeP50, sp[0].LatAfterP50 = 20, 30
	sp[1].LatBeforeP50, sp[1].LatAfterP50 = 22, 0 // 0 = not measured, ignored
	runs = append(runs, sp...)
	runs = append(runs, withTimeline(mkRuns("sockperf", "traditional", false, 400, 400), 900, 10)...)
	ip := mkRuns("iperf3", "coat", true, 1000, 1200, 1100)
	ip[0].ThroughputBeforeMbps, ip[1].ThroughputBeforeMbps, ip[2].ThroughputBeforeMbps = 900, 1000, 950
	runs = append(runs, ip...)
	return runs
}

func TestSummarize(t *testing.T) {
	s := Summarize(synthetic())
	if len(s.Workloads) != 3 || s.Workloads[0].Workload != "sample" || s.Workloads[1].Workload != "sockperf" || s.Workloads[2].Workload != "iperf3" {
		t.Fatalf("workload order: %+v", s.Workloads)
	}
	var modes []string
	for _, g := range s.Workloads[0].Groups {
		modes = append(modes, g.Mode)
	}
	if got := strings.Join(modes, ","); got != "coat,coat-nohold,traditional,reference" {
		t.Fatalf("mode order %s", got)
	}
	c := s.Group("sample", "coat")
	if c.Runs != 5 || c.Total != (Stat{Median: 300, P95: 500, Min: 100, Max: 500}) {
		t.Errorf("coat total %+v", c.Total)
	}
	if c.Downtime.Median != 150 || c.Stall.Median != 160 || c.Checkpoint.Median != 120 || c.Bytes.Median != 300000 {
		t.Errorf("coat medians %+v", c)
	}
	tr := s.Group("sample", "traditional") // 240,250,260,270: even count
	if tr.Total.Median != 255 || tr.Total.P95 != 270 || tr.SurvivalPct != 0 || c.SurvivalPct != 100 {
		t.Errorf("trad %+v", tr)
	}
	ws := s.Workloads[0]
	want := (300.0 - 255.0) / 255.0 * 100
	if !ws.HasOverhead || math.Abs(ws.OverheadPct-want) > 1e-9 {
		t.Errorf("overhead %v want %v", ws.OverheadPct, want)
	}
	if len(ws.Ratios) != 4 || ws.Ratios[0].Mode != "coat" || ws.Ratios[0].TotalRatio != 2 || ws.Ratios[0].DowntimeRatio != 2 {
		t.Errorf("ratios %+v", ws.Ratios)
	}
	if ws.TimelinePlot != "timeline-sample.png" || s.Workloads[2].TimelinePlot != "" {
		t.Errorf("timeline plots %q %q", ws.TimelinePlot, s.Workloads[2].TimelinePlot)
	}
	sp := s.Group("sockperf", "coat")
	if sp.LatBeforeP50 != 21 || sp.LatAfterP50 != 30 {
		t.Errorf("sockperf latency %+v", sp)
	}
	if ip := s.Group("iperf3", "coat"); ip.TputBeforeMbps != 950 || s.Workloads[2].HasOverhead {
		t.Errorf("iperf3 %+v", ip)
	}
	// Nearest-rank p95 on 1..20 is the 19th value; on 1..21 the 20th.
	var v []float64
	for i := 1; i <= 20; i++ {
		v = append(v, float64(21-i))
	}
	if st := stat(v); st.P95 != 19 || st.Median != 10.5 {
		t.Errorf("stat 1..20 %+v", st)
	}
	if st := stat(append(v, 21)); st.P95 != 20 || st.Median != 11 {
		t.Errorf("stat 1..21 %+v", st)
	}
}

func TestWriteCSV(t *testing.T) {
	runs := mkRuns("sample", "coat", true, 123.45678, 1)
	runs[1].ClientError = "read: connection reset, peer gone"
	var b bytes.Buffer
	if err := WriteCSV(&b, runs); err != nil {
		t.Fatal(err)
	}
	recs, err := csv.NewReader(&b).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 3 || strings.Join(recs[0], ",") != strings.Join(csvHeader, ",") {
		t.Fatalf("records %v", recs)
	}
	r := recs[1]
	if r[0] != "sample" || r[1] != "coat" || r[2] != "0" || r[6] != "123.457" || r[8] != "123456" || r[10] != "true" {
		t.Errorf("row %v", r)
	}
	if recs[2][11] != runs[1].ClientError || len(recs[2]) != len(csvHeader) {
		t.Errorf("row %v", recs[2])
	}
}

func TestWriteMarkdown(t *testing.T) {
	m := Machine{Host: "h1", Kernel: "6.8", CPU: "Xeon", Cores: "8", Memory: "16 GiB", Date: "2026-01-01",
		Go: "go1.26", CRIU: "4.0", Runc: "1.2", Command: "coat bench --runs 5"}
	// coat 300 vs trad 255: +17.6% overhead -> MISS; sample downtime 150 -> PASS.
	var b bytes.Buffer
	if err := WriteMarkdown(&b, Summarize(synthetic()), m, Targets{}); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"COAT vs traditional: +17.6% median migration duration (paper: up to 14%)",
		"`sample` overhead <= 5%: +17.6% — MISS",
		"`sample` coat downtime median <= 150 ms: 150.0 ms — PASS",
		"`sample` coat stall median <= downtime median + 50 ms: 160.0 ms (limit 200.0 ms) — PASS",
		"`sample` coat survival 100%: 100% (5/5) — PASS",
		"`sample` traditional survival 0% (connection dropped): 0% (0/4) — PASS",
		"`iperf3` overhead <= 5%: NOT MEASURED",
		"| coat-nohold | 3 |",
		"- coat: total 2.00×, downtime 2.00×",
		"coat bench --runs 5", "**CRIU:** 4.0", "**Memory:** 16 GiB",
		"](phases.png)", "](timeline-sample.png)", "](timeline-sockperf.png)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
	if strings.Contains(out, "timeline-iperf3.png") {
		t.Error("links a timeline plot that is not written")
	}

	// Make coat fast and traditional survive: overhead PASS, survival MISS.
	runs := append(mkRuns("sample", "coat", true, 100, 102), mkRuns("sample", "traditional", true, 100, 100)...)
	runs[0].StallMS = 200 // stall median 130.5 vs limit 50.5+50
	b.Reset()
	if err := WriteMarkdown(&b, Summarize(runs), m, Targets{OverheadPct: 5, SampleDowntimeMS: 40, StallOverDowntimeMS: 50}); err != nil {
		t.Fatal(err)
	}
	out = b.String()
	for _, want := range []string{
		"COAT vs traditional: +1.0% median migration duration",
		"`sample` overhead <= 5%: +1.0% — PASS",
		"`sample` coat downtime median <= 40 ms: 50.5 ms — MISS",
		"`sample` coat stall median <= downtime median + 50 ms: 130.5 ms (limit 100.5 ms) — MISS",
		"`sample` traditional survival 0% (connection dropped): 100% (2/2) — MISS",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
}

func TestWritePlots(t *testing.T) {
	dir := t.TempDir()
	if d := os.Getenv("BENCH_PLOT_DIR"); d != "" { // to look at them
		dir = d
	}
	runs := synthetic()
	// A zero-valued group must not break the plots.
	runs = append(runs, withTimeline(mkRuns("zero", "coat", true, 0, 0), 0, 10)...)
	names, err := WritePlots(dir, runs)
	if err != nil {
		t.Fatal(err)
	}
	want := "phases.png,timeline-sample.png,timeline-sockperf.png,timeline-zero.png"
	if got := strings.Join(names, ","); got != want {
		t.Fatalf("wrote %s, want %s", got, want)
	}
	for _, n := range names {
		data, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		if len(data) < 1000 || !bytes.HasPrefix(data, []byte("\x89PNG\r\n\x1a\n")) {
			t.Errorf("%s: not a PNG (%d bytes)", n, len(data))
		}
	}
	if names, err := WritePlots(dir, nil); err != nil || len(names) != 0 {
		t.Errorf("no runs: %v %v", names, err)
	}
}

// The podman mode's runs give every mode a ratio to Podman, printed in
// the report beside the reference's.
func TestPodmanRatios(t *testing.T) {
	runs := append(mkRuns("sample", "coat", true, 300, 300), mkRuns("sample", ModePodman, true, 1500, 1500)...)
	s := Summarize(runs)
	ws := s.Workloads[0]
	if len(ws.Ratios) != 0 {
		t.Errorf("ratios to a reference without reference runs: %+v", ws.Ratios)
	}
	if len(ws.PodmanRatios) != 2 || ws.PodmanRatios[0].Mode != "coat" || ws.PodmanRatios[0].TotalRatio != 0.2 ||
		ws.PodmanRatios[0].DowntimeRatio != 0.2 || ws.PodmanRatios[1].Mode != ModePodman {
		t.Fatalf("podman ratios %+v", ws.PodmanRatios)
	}
	var b bytes.Buffer
	if err := WriteMarkdown(&b, s, Machine{Podman: "podman version 4.3.1"}, Targets{}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"- **Podman:** podman version 4.3.1", "Ratio to Podman", "- coat: total 0.20×, downtime 0.20×"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, b.String())
		}
	}
}
