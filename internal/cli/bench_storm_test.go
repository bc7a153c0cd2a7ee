package cli

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coat-project/coat/internal/bench"
)

// Bad storm flags are refused before the lab is touched.
func TestBenchStormFlagsRefused(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"bench", "--workloads", "storm", "--storm-sizes", "0"}, `--storm-sizes: "0"`},
		{[]string{"bench", "--workloads", "storm", "--storm-sizes", "5,x"}, `--storm-sizes: "x"`},
		{[]string{"bench", "--workloads", "storm", "--storm-rate", "fast"}, "--storm-rate"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			isolate(t)
			var code int
			out := captureStderr(t, func() { code = Main(context.Background(), tc.args) })
			if code == 0 || !strings.Contains(out, tc.want) {
				t.Errorf("exit %d, stderr %q; want an error saying %q", code, out, tc.want)
			}
			if _, err := os.Stat("/var/lib/coat/labs/nosuchlabfortest"); err == nil {
				t.Errorf("a lab was made")
			}
		})
	}
}

// A storm-only bench writes the storm's section, its plot, and its runs
// into runs.json, and no matrix section.
func TestWriteBenchStormOnly(t *testing.T) {
	dir := t.TempDir()
	var runs []bench.Run
	for i, d := range []float64{100, 200, 300} {
		runs = append(runs, bench.Run{Workload: bench.WorkloadStorm, Mode: "follow-me", Param: 3, Index: 0, DowntimeMS: d, StallMS: d + float64(i)*40, Survived: true, StormMS: 500})
	}
	st := stormResults{runs: runs, rate: "20KB/s"}
	if err := writeBench(bench.Config{OutDir: dir}, nil, nil, nil, nil, st, bench.MatrixReportInfo{}, time.Now(), ""); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(filepath.Join(dir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"## Workload `storm`", "storm-distributions.png", "2/3 within"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(string(md), "## Figures and goals (issue 8)") {
		t.Errorf("a storm-only report has the matrix's section:\n%s", md)
	}
	if _, err := os.Stat(filepath.Join(dir, bench.FigStorm)); err != nil {
		t.Errorf("plot: %v", err)
	}
	var got []bench.Run
	b, _ := os.ReadFile(filepath.Join(dir, "runs.json"))
	if err := json.Unmarshal(b, &got); err != nil || len(got) != 3 || got[0].StormMS != 500 {
		t.Errorf("runs.json: %v, %d runs %+v", err, len(got), got)
	}
}
