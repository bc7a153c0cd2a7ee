package bench

import (
	"encoding/csv"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
)

// csvHeader is the stable column order of WriteCSV.
var csvHeader = []string{
	"workload", "mode", "index",
	"checkpoint_ms", "transfer_ms", "restore_ms", "total_ms", "downtime_ms", "bytes",
	"stall_ms", "survived", "client_error",
	"lat_before_p50_us", "lat_before_p99_us", "lat_after_p50_us", "lat_after_p99_us",
	"tput_before_mbps", "tput_after_mbps",
	"mig_start_ms", "mig_end_ms",
	"profile", "strategy", "param", "memory_bytes", "lazy_ms", "pages_on_demand",
	"requests", "req_errors", "mig_lat_p50_ms", "mig_lat_p99_ms", "mig_lat_max_ms",
	"conns", "conns_survived", "conn_stall_p99_ms",
}

func f3(v float64) string { return strconv.FormatFloat(v, 'f', 3, 64) }

// WriteCSV writes one row per run (every scalar field of Run, not the
// timeline) after a header row. Floats have 3 decimals.
func WriteCSV(w io.Writer, runs []Run) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(csvHeader); err != nil {
		return err
	}
	for _, r := range runs {
		rec := []string{
			r.Workload, r.Mode, strconv.Itoa(r.Index),
			f3(r.CheckpointMS), f3(r.TransferMS), f3(r.RestoreMS), f3(r.TotalMS), f3(r.DowntimeMS),
			strconv.FormatInt(r.Bytes, 10),
			f3(r.StallMS), strconv.FormatBool(r.Survived), r.ClientError,
			f3(r.LatBeforeP50), f3(r.LatBeforeP99), f3(r.LatAfterP50), f3(r.LatAfterP99),
			f3(r.ThroughputBeforeMbps), f3(r.ThroughputAfterMbps),
			f3(r.MigStartMS), f3(r.MigEndMS),
			r.Profile, r.Strategy, strconv.FormatInt(r.Param, 10), strconv.FormatInt(r.MemoryBytes, 10),
			f3(r.LazyMS), strconv.Itoa(r.PagesOnDemand),
			strconv.FormatInt(r.Requests, 10), strconv.FormatInt(r.ReqErrors, 10),
			f3(r.MigLatP50), f3(r.MigLatP99), f3(r.MigLatMax),
			strconv.Itoa(r.Conns), strconv.Itoa(r.ConnsSurvived), f3(r.ConnStallP99),
		}
		if err := cw.Write(rec); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

// Stat summarises one metric of a group. P95 is nearest-rank on the
// sorted values; Median averages the two middle values for even counts.
type Stat struct {
	Median float64 `json:"median"`
	P95    float64 `json:"p95"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

// GroupSummary summarises all runs of one (workload, mode).
type GroupSummary struct {
	Workload    string  `json:"workload"`
	Mode        string  `json:"mode"`
	Runs        int     `json:"runs"`
	Total       Stat    `json:"total_ms"`
	Downtime    Stat    `json:"downtime_ms"`
	Stall       Stat    `json:"stall_ms"`
	Checkpoint  Stat    `json:"checkpoint_ms"`
	Transfer    Stat    `json:"transfer_ms"`
	Restore     Stat    `json:"restore_ms"`
	Bytes       Stat    `json:"bytes"`
	Survived    int     `json:"survived"`
	SurvivalPct float64 `json:"survival_pct"`
	// Medians of the sockperf latency percentiles (usec) over the runs
	// that reported them (0 = not measured, excluded).
	LatBeforeP50 float64 `json:"lat_before_p50_us"`
	LatBeforeP99 float64 `json:"lat_before_p99_us"`
	LatAfterP50  float64 `json:"lat_after_p50_us"`
	LatAfterP99  float64 `json:"lat_after_p99_us"`
	// Medians of the iperf3 throughput (Mbit/s) over all runs (0 after
	// the migration is a real measurement: the connection was lost).
	TputBeforeMbps float64 `json:"tput_before_mbps"`
	TputAfterMbps  float64 `json:"tput_after_mbps"`
}

// RefRatio is one mode's median total and downtime divided by the
// "reference" mode's (hand-run runc CLI path).
type RefRatio struct {
	Mode          string  `json:"mode"`
	TotalRatio    float64 `json:"total_ratio"`
	DowntimeRatio float64 `json:"downtime_ratio"`
	TotalOK       bool    `json:"total_ok"`    // false if reference total median is 0
	DowntimeOK    bool    `json:"downtime_ok"` // false if reference downtime median is 0
}

// WorkloadSummary holds the groups of one workload and the comparisons.
type WorkloadSummary struct {
	Workload string         `json:"workload"`
	Groups   []GroupSummary `json:"groups"` // ordered by mode (modeOrder)
	// OverheadPct is (coat - traditional) / traditional * 100 on median
	// total duration; valid only if HasOverhead.
	OverheadPct float64    `json:"overhead_pct"`
	HasOverhead bool       `json:"has_overhead"`
	Ratios      []RefRatio `json:"ratios,omitempty"` // empty without a reference mode
	// PodmanRatios: each mode's medians divided by the podman mode's
	// (the artifact's path run for real); empty without podman runs.
	PodmanRatios []RefRatio `json:"podman_ratios,omitempty"`
	// TimelinePlot is the file WritePlots writes for this workload, or ""
	// when no run of it has a timeline.
	TimelinePlot string `json:"timeline_plot,omitempty"`
}

// Summary is the per-workload, per-mode digest of a benchmark.
type Summary struct {
	Workloads []WorkloadSummary `json:"workloads"`
}

// Group returns the summary of (workload, mode), or nil.
func (s Summary) Group(workload, mode string) *GroupSummary {
	for i := range s.Workloads {
		if s.Workloads[i].Workload == workload {
			return s.Workloads[i].group(mode)
		}
	}
	return nil
}

func (w *WorkloadSummary) group(mode string) *GroupSummary {
	for i := range w.Groups {
		if w.Groups[i].Mode == mode {
			return &w.Groups[i]
		}
	}
	return nil
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(v))
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func stat(v []float64) Stat {
	if len(v) == 0 {
		return Stat{}
	}
	s := slices.Sorted(slices.Values(v))
	rank := (95*len(s) + 99) / 100 // ceil(0.95 n), exact in integers
	return Stat{Median: median(s), P95: s[rank-1], Min: s[0], Max: s[len(s)-1]}
}

func collect(runs []Run, f func(Run) float64, skipZero bool) []float64 {
	out := make([]float64, 0, len(runs))
	for _, r := range runs {
		if v := f(r); !skipZero || v != 0 {
			out = append(out, v)
		}
	}
	return out
}

func summarizeGroup(runs []Run) GroupSummary {
	st := func(f func(Run) float64) Stat { return stat(collect(runs, f, false)) }
	med := func(f func(Run) float64, skipZero bool) float64 { return median(collect(runs, f, skipZero)) }
	g := GroupSummary{
		Workload:       runs[0].Workload,
		Mode:           runs[0].Mode,
		Runs:           len(runs),
		Total:          st(func(r Run) float64 { return r.TotalMS }),
		Downtime:       st(func(r Run) float64 { return r.DowntimeMS }),
		Stall:          st(func(r Run) float64 { return r.StallMS }),
		Checkpoint:     st(func(r Run) float64 { return r.CheckpointMS }),
		Transfer:       st(func(r Run) float64 { return r.TransferMS }),
		Restore:        st(func(r Run) float64 { return r.RestoreMS }),
		Bytes:          st(func(r Run) float64 { return float64(r.Bytes) }),
		LatBeforeP50:   med(func(r Run) float64 { return r.LatBeforeP50 }, true),
		LatBeforeP99:   med(func(r Run) float64 { return r.LatBeforeP99 }, true),
		LatAfterP50:    med(func(r Run) float64 { return r.LatAfterP50 }, true),
		LatAfterP99:    med(func(r Run) float64 { return r.LatAfterP99 }, true),
		TputBeforeMbps: med(func(r Run) float64 { return r.ThroughputBeforeMbps }, false),
		TputAfterMbps:  med(func(r Run) float64 { return r.ThroughputAfterMbps }, false),
	}
	for _, r := range runs {
		if r.Survived {
			g.Survived++
		}
	}
	g.SurvivalPct = 100 * float64(g.Survived) / float64(len(runs))
	return g
}

// Summarize groups runs by (workload, mode) and computes the statistics
// and comparisons the report shows.
func Summarize(runs []Run) Summary {
	workloads, modes, groups := byWorkloadMode(runs)
	var s Summary
	for _, w := range workloads {
		ws := WorkloadSummary{Workload: w}
		for _, m := range modes[w] {
			g := groups[[2]string{w, m}]
			ws.Groups = append(ws.Groups, summarizeGroup(g))
			for _, r := range g {
				if len(r.Timeline) > 0 {
					ws.TimelinePlot = timelineFile(w)
				}
			}
		}
		coat, trad := ws.group("coat"), ws.group("traditional")
		if coat != nil && trad != nil && trad.Total.Median != 0 {
			ws.HasOverhead = true
			ws.OverheadPct = (coat.Total.Median - trad.Total.Median) / trad.Total.Median * 100
		}
		ws.Ratios = ratiosTo(ws, "reference")
		ws.PodmanRatios = ratiosTo(ws, ModePodman)
		s.Workloads = append(s.Workloads, ws)
	}
	return s
}

// ratiosTo divides every mode's medians by those of mode base (nil
// without runs of base).
func ratiosTo(ws WorkloadSummary, base string) []RefRatio {
	ref := ws.group(base)
	if ref == nil {
		return nil
	}
	var out []RefRatio
	for _, g := range ws.Groups {
		rr := RefRatio{Mode: g.Mode}
		if ref.Total.Median != 0 {
			rr.TotalRatio, rr.TotalOK = g.Total.Median/ref.Total.Median, true
		}
		if ref.Downtime.Median != 0 {
			rr.DowntimeRatio, rr.DowntimeOK = g.Downtime.Median/ref.Downtime.Median, true
		}
		out = append(out, rr)
	}
	return out
}

// Targets are the thresholds the report checks (see DefaultTargets).
type Targets struct {
	OverheadPct         float64 // max COAT median total overhead vs traditional, %
	SampleDowntimeMS    float64 // max COAT median downtime for the sample workload
	StallOverDowntimeMS float64 // max COAT median stall minus median downtime
}

// DefaultTargets are the thresholds the COAT evaluation aims for.
var DefaultTargets = Targets{OverheadPct: 5, SampleDowntimeMS: 150, StallOverDowntimeMS: 50}

func humanBytes(b float64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	for math.Abs(b) >= 1024 && i < len(units)-1 {
		b /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%.0f B", b)
	}
	return fmt.Sprintf("%.1f %s", b, units[i])
}

func verdict(ok bool) string {
	if ok {
		return "PASS"
	}
	return "MISS"
}

// WriteMarkdown writes the human-readable report: machine, command,
// per-workload tables, comparisons, targets with PASS/MISS, and links to
// the plots WritePlots writes into the same directory. A zero Targets
// means DefaultTargets.
func WriteMarkdown(w io.Writer, s Summary, m Machine, t Targets) error {
	if t == (Targets{}) {
		t = DefaultTargets
	}
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("# COAT benchmark report\n\n")
	p("## Machine\n\n")
	for _, kv := range [][2]string{{"Host", m.Host}, {"Kernel", m.Kernel}, {"CPU", m.CPU}, {"Cores", m.Cores},
		{"Memory", m.Memory}, {"Date", m.Date}, {"Go", m.Go}, {"CRIU", m.CRIU}, {"runc", m.Runc}, {"Podman", m.Podman}} {
		if kv[1] != "" {
			p("- **%s:** %s\n", kv[0], kv[1])
		}
	}
	p("\nCommand:\n\n```sh\n%s\n```\n", m.Command)

	for _, ws := range s.Workloads {
		p("\n## Workload `%s`\n\n", ws.Workload)
		p("Times in ms. Survival = runs whose TCP connection completed without error.\n\n")
		p("| mode | runs | total median | total p95 | total min | total max | downtime median | downtime p95 | stall median | stall p95 | checkpoint median | transfer median | restore median | bytes median | survival |\n")
		p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, g := range ws.Groups {
			p("| %s | %d | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %s | %.0f%% |\n",
				g.Mode, g.Runs, g.Total.Median, g.Total.P95, g.Total.Min, g.Total.Max,
				g.Downtime.Median, g.Downtime.P95, g.Stall.Median, g.Stall.P95,
				g.Checkpoint.Median, g.Transfer.Median, g.Restore.Median, humanBytes(g.Bytes.Median), g.SurvivalPct)
		}
		if ws.Workload == "sockperf" {
			p("\nsockperf ping-pong latency, medians (usec; n/a = not measured):\n\n")
			p("| mode | before p50 | before p99 | after p50 | after p99 |\n|---|---:|---:|---:|---:|\n")
			for _, g := range ws.Groups {
				p("| %s | %s | %s | %s | %s |\n", g.Mode, orNA(g.LatBeforeP50), orNA(g.LatBeforeP99), orNA(g.LatAfterP50), orNA(g.LatAfterP99))
			}
		}
		if ws.Workload == "iperf3" {
			p("\nThe container sends and the client receives (iperf3 -R, 100 Mbit/s). Stall = the longest run of iperf3's %d ms intervals in which the client received almost nothing (under 5%% of the median interval before the migration): a multiple of %d ms, up to %d ms short of the real stall (the intervals at its edges received something), and 0 for a stall that never covers a whole interval.\n", IperfResolutionMS, IperfResolutionMS, 2*IperfResolutionMS)
			p("\niperf3 throughput in the second before / after the migration, medians (Mbit/s):\n\n")
			p("| mode | before | after |\n|---|---:|---:|\n")
			for _, g := range ws.Groups {
				p("| %s | %.1f | %.1f |\n", g.Mode, g.TputBeforeMbps, g.TputAfterMbps)
			}
		}
		p("\n")
		if ws.HasOverhead {
			p("COAT vs traditional: %+.1f%% median migration duration (paper: up to 14%%)\n", ws.OverheadPct)
		} else {
			p("COAT vs traditional: n/a (needs coat and traditional runs with a non-zero median)\n")
		}
		if len(ws.Ratios) > 0 {
			p("\nRatio to the reference (the paper artifact's hand-run path: runc's stock checkpoint to a tar file, copy the file, unpack, restore; nothing held) medians:\n\n")
			for _, r := range ws.Ratios {
				p("- %s: total %s, downtime %s\n", r.Mode, ratio(r.TotalRatio, r.TotalOK), ratio(r.DowntimeRatio, r.DowntimeOK))
			}
		}
		if len(ws.PodmanRatios) > 0 {
			p("\nRatio to Podman (the artifact's own path, run for real in the same lab and run: `podman container checkpoint --tcp-established --export`, scp over the underlay, `podman container restore --import --tcp-established`) medians. Podman's downtime is the artifact script's: from the start of the checkpoint command to the end of the restore command (Podman freezes the container only after its own start-up, so its client's stall can be shorter; its client runs 4 s longer, past the migration):\n\n")
			for _, r := range ws.PodmanRatios {
				p("- %s: total %s, downtime %s\n", r.Mode, ratio(r.TotalRatio, r.TotalOK), ratio(r.DowntimeRatio, r.DowntimeOK))
			}
		}
	}

	p("\n## Targets\n\n")
	for _, line := range targetLines(s, t) {
		p("- %s\n", line)
	}

	if len(s.Workloads) > 0 {
		p("\n## Profile\n\nWhere checkpoint and restore spend their time, what was cut, before and after (coat-stock is the before): [profile.md](profile.md).\n")
		p("\n## Plots\n\n![Migration duration by phase (median)](phases.png)\n")
		for _, ws := range s.Workloads {
			if ws.TimelinePlot != "" {
				p("\n![Client view during a representative migration: %s](%s)\n", ws.Workload, ws.TimelinePlot)
			}
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func orNA(v float64) string {
	if v == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.1f", v)
}

func ratio(v float64, ok bool) string {
	if !ok {
		return "n/a (reference median is 0)"
	}
	return fmt.Sprintf("%.2f×", v)
}

// targetLines evaluates every target; missing data is reported as
// "NOT MEASURED", never as PASS.
func targetLines(s Summary, t Targets) []string {
	var out []string
	add := func(target string, measured bool, value string, pass bool) {
		if !measured {
			out = append(out, target+": NOT MEASURED")
			return
		}
		out = append(out, fmt.Sprintf("%s: %s — %s", target, value, verdict(pass)))
	}
	sampleTarget := fmt.Sprintf("`sample` coat downtime median <= %.0f ms", t.SampleDowntimeMS)
	sawSample := false
	for _, ws := range s.Workloads {
		w := "`" + ws.Workload + "`"
		add(fmt.Sprintf("%s overhead <= %.0f%%", w, t.OverheadPct), ws.HasOverhead,
			fmt.Sprintf("%+.1f%%", ws.OverheadPct), ws.OverheadPct <= t.OverheadPct)
		c, tr := orZero(ws.group("coat")), orZero(ws.group("traditional"))
		if ws.Workload == "sample" {
			sawSample = true
			add(sampleTarget, c.Runs > 0, fmt.Sprintf("%.1f ms", c.Downtime.Median), c.Downtime.Median <= t.SampleDowntimeMS)
		}
		lim := c.Downtime.Median + t.StallOverDowntimeMS
		res := ""
		if ws.Workload == "iperf3" {
			res = fmt.Sprintf("; counted in iperf3's %d ms receive intervals: up to %d ms short", IperfResolutionMS, 2*IperfResolutionMS)
		}
		add(fmt.Sprintf("%s coat stall median <= downtime median + %.0f ms", w, t.StallOverDowntimeMS), c.Runs > 0,
			fmt.Sprintf("%.1f ms (limit %.1f ms%s)", c.Stall.Median, lim, res), c.Stall.Median <= lim)
		add(w+" coat survival 100%", c.Runs > 0,
			fmt.Sprintf("%.0f%% (%d/%d)", c.SurvivalPct, c.Survived, c.Runs), c.Survived == c.Runs)
		add(w+" traditional survival 0% (connection dropped)", tr.Runs > 0,
			fmt.Sprintf("%.0f%% (%d/%d)", tr.SurvivalPct, tr.Survived, tr.Runs), tr.Survived == 0)
	}
	if !sawSample {
		add(sampleTarget, false, "", false)
	}
	return out
}

func orZero(g *GroupSummary) GroupSummary {
	if g == nil {
		return GroupSummary{}
	}
	return *g
}
