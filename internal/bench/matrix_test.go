package bench

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseRedisLoad(t *testing.T) {
	dir := t.TempDir()
	tl := filepath.Join(dir, "tl.csv")
	os.WriteFile(tl, []byte("t_ms,latency_ms,op,conn\n100,1,G,0\n900,50,S,0\n1000,300,G,0\n3000,2,G,0\n"), 0o644)
	r := Run{MigStartMS: 1050, MigEndMS: 1500}
	out := []byte("ready\n" + `{"requests":4,"errors":0,"first_error":"","connection_error":"","max_stall_ms":300}` + "\n")
	if err := parseRedisLoad(&r, nil, out, tl, 50); err != nil {
		t.Fatal(err)
	}
	// Offset 50: requests at 150, 950 (until 1000: not in flight), 1050 (in flight), 3050.
	if !r.Survived || r.Requests != 4 || r.StallMS != 300 || r.MigLatP99 != 300 || r.MigLatMax != 300 || len(r.Timeline) != 4 || r.Timeline[0].T != 150 {
		t.Fatalf("run %+v", r)
	}
	r = Run{}
	out = []byte(`{"requests":4,"errors":2,"first_error":"GET coat:1: wrong","connection_error":""}`)
	if err := parseRedisLoad(&r, errors.New("exit status 1"), out, tl, 0); err != nil || r.Survived || !strings.Contains(r.ClientError, "2 wrong answers") {
		t.Fatalf("wrong answers: %v %+v", err, r)
	}
	if err := parseRedisLoad(&r, nil, []byte("garbage"), tl, 0); err == nil {
		t.Error("garbage report accepted")
	}
}

func TestParseConns(t *testing.T) {
	var r Run
	ok := `{"conns":1000,"opened":1000,"survived":1000,"errors":0,"max_stall_ms":140,"stall_p99_ms":120,"first_error":""}`
	if err := parseConns(&r, nil, []byte(ok), 0); err != nil || !r.Survived || r.Conns != 1000 || r.StallMS != 140 || r.ConnStallP99 != 120 {
		t.Fatalf("%v %+v", err, r)
	}
	r = Run{}
	bad := `{"conns":1000,"opened":1000,"survived":998,"errors":0,"max_stall_ms":140,"first_error":"conn 5: read: EOF"}`
	if err := parseConns(&r, errors.New("exit status 1"), []byte(bad), 0); err != nil || r.Survived || !strings.Contains(r.ClientError, "2 of 1000") {
		t.Fatalf("%v %+v", err, r)
	}
}

func TestUnavailable(t *testing.T) {
	msg := "pre-copy needs the kernel's soft-dirty memory tracking (CONFIG_MEM_SOFT_DIRTY), which the source's kernel lacks"
	if !unavailable("pre-copy", msg) {
		t.Error("soft-dirty refusal not recognised")
	}
	if unavailable("post-copy", "restore on destination: runc did not terminate successfully") {
		t.Error("a failed migration taken as unavailable")
	}
}

func memRun(profile, strategy string, size int64, i int, total, downtime float64) Run {
	return Run{Workload: WorkloadMemory, Mode: strategy, Strategy: strategy, Profile: profile, Param: size, Index: i,
		TotalMS: total, DowntimeMS: downtime, Survived: true, Requests: 100, MigLatP99: 40, MemoryBytes: size + 8<<20,
		MigStartMS: 1000, MigEndMS: 1000 + total, Timeline: []Point{{T: 500, V: 1}, {T: 1100, V: 30}, {T: 2000, V: 1}}}
}

func connRun(profile, strategy string, n, i int, downtime, stall float64) Run {
	return Run{Workload: WorkloadConns, Mode: strategy, Strategy: strategy, Profile: profile, Param: int64(n), Index: i,
		TotalMS: downtime + 20, DowntimeMS: downtime, StallMS: stall, Survived: true, Conns: n, ConnsSurvived: n}
}

func matrixFixture() ([]Run, []Failure, []Run) {
	var runs []Run
	for i := range 3 {
		runs = append(runs,
			memRun("lan", "post-copy", GiB, i, 2500, 200+float64(i)),
			memRun("lan", "stop-and-copy", GiB, i, 5000, 4500),
			memRun("lan", "post-copy", 64<<20, i, 300, 150),
			memRun("edge", "post-copy", GiB, i, 120000, 400),
			connRun("lan", "post-copy", 1, i, 100, 110),
			connRun("lan", "post-copy", 1000, i, 180, 260),
		)
	}
	lost := connRun("lan", "stop-and-copy", 1, 0, 100, 110)
	lost.Survived, lost.ClientError = false, "1 of 1 connections lost; first: conn 0: read: connection reset by peer"
	runs = append(runs, lost)
	fails := []Failure{
		{Workload: WorkloadMemory, Profile: "lan", Strategy: "pre-copy", Param: GiB, Error: "pre-copy needs the kernel's soft-dirty memory tracking", Unavailable: true},
		{Workload: WorkloadConns, Profile: "lan", Strategy: "stop-and-copy", Param: 1000, Index: 1, Error: "restore failed | badly"},
	}
	sample := []Run{{Workload: "sample", Mode: "coat", Index: 0, DowntimeMS: 150}, {Workload: "sample", Mode: "coat", Index: 1, DowntimeMS: 70},
		{Workload: "sample", Mode: "coat", Index: 2, DowntimeMS: 75}}
	return runs, fails, sample
}

func TestMatrixGoals(t *testing.T) {
	runs, fails, sample := matrixFixture()
	goals := MatrixGoals(SummarizeMatrix(runs), fails, sample, true)
	want := map[string]string{
		"1 GiB redis, `lan`: post-copy downtime median <= 300 ms":                                          "PASS",
		"1 GiB redis, `lan`: stop-and-copy downtime median <= 4000 ms":                                     "MISS",
		"1 GiB redis, `edge`: post-copy downtime median <= 500 ms":                                         "PASS",
		"1 GiB redis, `edge`: post-copy total time median <= 1.2 × memory / link rate":                     "MISS", // 120 s > 1.2 * 1032 MiB at 100 Mbit/s
		"1 GiB redis, `edge`: stop-and-copy total time median <= 1.2 × memory / link rate":                 "NOT MEASURED",
		"1,000 connections, `lan`, post-copy: downtime median <= 2 × single-connection downtime median":    "PASS",
		"1,000 connections, `lan`, post-copy: max stall (median over runs) <= downtime median + 50 ms":     "MISS",
		"1,000 connections, `lan`, post-copy: every connection survives":                                   "PASS",
		"small sample container: coat downtime median <= 80 ms":                                            "PASS",
		"small sample container: first migration on a fresh host (run 0) within 1.3 × the median downtime": "MISS",
	}
	got := map[string]string{}
	for _, g := range goals {
		s := g.String()
		switch {
		case !g.Measured:
			got[g.Target] = "NOT MEASURED"
		case strings.HasSuffix(s, "PASS"):
			got[g.Target] = "PASS"
		default:
			got[g.Target] = "MISS"
		}
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: got %q, want %s", k, got[k], v)
		}
	}
	if got["1 GiB redis, `lan`: redis answers every request during post-copy (p99 latency reported)"] != "PASS" {
		t.Errorf("answers goal: %v", got)
	}
}

func TestMatrixGoalsNothingMeasured(t *testing.T) {
	for _, g := range MatrixGoals(nil, nil, nil, false) {
		if g.Measured || !strings.Contains(g.String(), "NOT MEASURED") {
			t.Errorf("goal without data: %s", g)
		}
	}
}

func TestWriteMatrixMarkdownAndPlots(t *testing.T) {
	runs, fails, sample := matrixFixture()
	dir := t.TempDir()
	plots, err := WriteMatrixPlots(dir, runs)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{FigDowntime, FigTotal, FigLatency, FigConns} {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Size() == 0 {
			t.Errorf("plot %s: %v", f, err)
		}
	}
	var b bytes.Buffer
	if err := WriteMatrixMarkdown(&b, runs, fails, sample, plots, MatrixReportInfo{MemRate: 50, FreshHost: true}); err != nil {
		t.Fatal(err)
	}
	md := b.String()
	for _, s := range []string{"## Workload `memory`", "## Workload `conns`", "| lan | 1.0 GiB | post-copy | 3 |",
		"`pre-copy`: unavailable on this kernel", "![Downtime against memory size", "— PASS", "— MISS",
		"## Failed runs", `restore failed \| badly`, "but the client failed: 1 of 1 connections lost"} {
		if !strings.Contains(md, s) {
			t.Errorf("report lacks %q:\n%s", s, md)
		}
	}
	if strings.Count(md, "unavailable on this kernel, not run") != 1 {
		t.Errorf("the unavailable strategy is not listed once")
	}
	if strings.Contains(md, "| memory | lan | 1.0 GiB | pre-copy") {
		t.Error("an unavailable strategy is listed as a failed run")
	}
}

func TestWriteMatrixPlotsNoRuns(t *testing.T) {
	plots, err := WriteMatrixPlots(t.TempDir(), nil)
	if err != nil || len(plots) != 0 {
		t.Fatalf("%v %v", plots, err)
	}
}
