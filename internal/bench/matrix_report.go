package bench

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strings"
)

// CellSummary summarises the runs of one (workload, profile, param, strategy).
type CellSummary struct {
	Workload, Profile, Strategy string
	Param                       int64
	Runs, Survived              int
	Total, Downtime, Stall      Stat
	// Medians over the runs.
	LazyMS, PagesOnDemand, MemoryBytes float64
	MigLatP50, MigLatP99, MigLatMax    float64
	ConnStallP99                       float64
	Requests, ReqErrors                int64 // sums
	Conns, ConnsSurvived               int   // sums
	First                              Run   // index 0 (the cell's first migration)
}

// SummarizeMatrix groups the matrix runs by (workload, profile, param,
// strategy), in profile, param and strategy order.
func SummarizeMatrix(runs []Run) []CellSummary {
	type key struct {
		w, p, s string
		param   int64
	}
	groups := map[key][]Run{}
	var keys []key
	for _, r := range runs {
		if !IsMatrix(r.Workload) {
			continue
		}
		k := key{r.Workload, r.Profile, r.Mode, r.Param}
		if _, ok := groups[k]; !ok {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], r)
	}
	rank := func(list []string, v string) int {
		if i := slices.Index(list, v); i >= 0 {
			return i
		}
		return len(list)
	}
	var profNames []string
	for _, p := range Profiles {
		profNames = append(profNames, p.Name)
	}
	slices.SortFunc(keys, func(a, b key) int {
		return cmp.Or(cmp.Compare(rank([]string{WorkloadMemory, WorkloadConns}, a.w), rank([]string{WorkloadMemory, WorkloadConns}, b.w)),
			cmp.Compare(rank(profNames, a.p), rank(profNames, b.p)), cmp.Compare(a.param, b.param),
			cmp.Compare(rank(Strategies, a.s), rank(Strategies, b.s)), cmp.Compare(a.s, b.s))
	})
	var out []CellSummary
	for _, k := range keys {
		g := groups[k]
		st := func(f func(Run) float64) Stat { return stat(collect(g, f, false)) }
		med := func(f func(Run) float64) float64 { return median(collect(g, f, false)) }
		c := CellSummary{Workload: k.w, Profile: k.p, Strategy: k.s, Param: k.param, Runs: len(g),
			Total:         st(func(r Run) float64 { return r.TotalMS }),
			Downtime:      st(func(r Run) float64 { return r.DowntimeMS }),
			Stall:         st(func(r Run) float64 { return r.StallMS }),
			LazyMS:        med(func(r Run) float64 { return r.LazyMS }),
			PagesOnDemand: med(func(r Run) float64 { return float64(r.PagesOnDemand) }),
			MemoryBytes:   med(func(r Run) float64 { return float64(r.MemoryBytes) }),
			MigLatP50:     med(func(r Run) float64 { return r.MigLatP50 }),
			MigLatP99:     med(func(r Run) float64 { return r.MigLatP99 }),
			MigLatMax:     med(func(r Run) float64 { return r.MigLatMax }),
			ConnStallP99:  med(func(r Run) float64 { return r.ConnStallP99 }),
		}
		for _, r := range g {
			if r.Survived {
				c.Survived++
			}
			c.Requests += r.Requests
			c.ReqErrors += r.ReqErrors
			c.Conns += r.Conns
			c.ConnsSurvived += r.ConnsSurvived
			if r.Index == 0 {
				c.First = r
			}
		}
		out = append(out, c)
	}
	return out
}

func findCell(cells []CellSummary, w, profile, strategy string, param int64) *CellSummary {
	for i := range cells {
		c := &cells[i]
		if c.Workload == w && c.Profile == profile && c.Strategy == strategy && c.Param == param {
			return c
		}
	}
	return nil
}

// Goal is one target of the report with its verdict.
type Goal struct {
	Figure   string // the figure (or table) it belongs to
	Target   string
	Measured bool
	Value    string
	Pass     bool
}

func (g Goal) String() string {
	switch {
	case !g.Measured && g.Value != "":
		return fmt.Sprintf("%s: NOT MEASURED (%s)", g.Target, g.Value)
	case !g.Measured:
		return g.Target + ": NOT MEASURED"
	}
	return fmt.Sprintf("%s: %s — %s", g.Target, g.Value, verdict(g.Pass))
}

// Figures of the matrix report.
const (
	FigDowntime = "memory-downtime.png"
	FigTotal    = "memory-total.png"
	FigLatency  = "memory-latency.png"
	FigConns    = "conns-downtime.png"
	FigSample   = "sample" // the old suite's sample workload (table)
)

const GiB = 1 << 30

// MatrixGoals evaluates the targets on the matrix cells (and the
// old suite's sample runs). Missing data is NOT MEASURED, never PASS; a
// strategy the agent refused says so.
func MatrixGoals(cells []CellSummary, failures []Failure, sample []Run, freshHost bool) []Goal {
	var goals []Goal
	refusal := func(w, profile, strategy string) string {
		for _, f := range failures {
			if f.Unavailable && f.Workload == w && f.Profile == profile && f.Strategy == strategy {
				return "unavailable on this kernel: " + f.Error
			}
		}
		return ""
	}
	mem := func(profile, strategy string) (*CellSummary, string) {
		return findCell(cells, WorkloadMemory, profile, strategy, GiB), refusal(WorkloadMemory, profile, strategy)
	}
	downtime := func(fig, profile, strategy string, limit float64) {
		c, why := mem(profile, strategy)
		g := Goal{Figure: fig, Target: fmt.Sprintf("1 GiB redis, `%s`: %s downtime median <= %s", profile, strategy, msString(limit)), Value: why}
		if c != nil {
			g.Measured, g.Pass = true, c.Downtime.Median <= limit
			g.Value = fmt.Sprintf("%s (max %s, %d runs)", msString(c.Downtime.Median), msString(c.Downtime.Max), c.Runs)
		}
		goals = append(goals, g)
	}
	downtime(FigDowntime, "lan", "post-copy", 300)
	downtime(FigDowntime, "lan", "stop-and-copy", 4000)
	downtime(FigDowntime, "edge", "post-copy", 500)

	edge, _ := LookupProfile("edge")
	for _, s := range []string{"post-copy", "stop-and-copy"} {
		c, why := mem("edge", s)
		g := Goal{Figure: FigTotal, Target: fmt.Sprintf("1 GiB redis, `edge`: %s total time median <= 1.2 × memory / link rate", s), Value: why}
		if c != nil {
			memB := c.MemoryBytes
			if memB == 0 {
				memB = float64(c.Param)
			}
			limit := 1.2 * memB * 8 / edge.RateBps * 1000
			g.Measured, g.Pass = true, c.Total.Median <= limit
			g.Value = fmt.Sprintf("%s (limit %s for %s at %.0f Mbit/s)", msString(c.Total.Median), msString(limit), humanBytes(memB), edge.RateBps/1e6)
		}
		goals = append(goals, g)
	}

	{
		c, why := mem("lan", "post-copy")
		g := Goal{Figure: FigLatency, Target: "1 GiB redis, `lan`: redis answers every request during post-copy (p99 latency reported)", Value: why}
		if c != nil {
			g.Measured, g.Pass = true, c.Survived == c.Runs && c.ReqErrors == 0
			g.Value = fmt.Sprintf("%d/%d runs clean, %d requests, %d wrong answers; latency in flight during the migration (medians): p50 %s, p99 %s, max %s",
				c.Survived, c.Runs, c.Requests, c.ReqErrors, msString(c.MigLatP50), msString(c.MigLatP99), msString(c.MigLatMax))
		}
		goals = append(goals, g)
	}

	// Connections: every (profile, strategy) that ran 1,000 connections.
	for _, c := range cells {
		if c.Workload != WorkloadConns || c.Param != 1000 {
			continue
		}
		where := fmt.Sprintf("1,000 connections, `%s`, %s", c.Profile, c.Strategy)
		one := findCell(cells, WorkloadConns, c.Profile, c.Strategy, 1)
		g := Goal{Figure: FigConns, Target: where + ": downtime median <= 2 × single-connection downtime median"}
		if one != nil {
			g.Measured, g.Pass = true, c.Downtime.Median <= 2*one.Downtime.Median
			g.Value = fmt.Sprintf("%s (1 connection: %s, limit %s)", msString(c.Downtime.Median), msString(one.Downtime.Median), msString(2*one.Downtime.Median))
		} else {
			g.Value = "no single-connection runs with this profile and strategy"
		}
		goals = append(goals, g)
		lim := c.Downtime.Median + 50
		goals = append(goals, Goal{Figure: FigConns, Target: where + ": max stall (median over runs) <= downtime median + 50 ms", Measured: true,
			Value: fmt.Sprintf("%s (limit %s; p99 of the connections' stalls %s)", msString(c.Stall.Median), msString(lim), msString(c.ConnStallP99)),
			Pass:  c.Stall.Median <= lim})
		goals = append(goals, Goal{Figure: FigConns, Target: where + ": every connection survives", Measured: true,
			Value: fmt.Sprintf("%d/%d connections over %d runs, %d/%d runs clean", c.ConnsSurvived, c.Conns, c.Runs, c.Survived, c.Runs),
			Pass:  c.Survived == c.Runs && c.ConnsSurvived == c.Conns})
	}
	if !slices.ContainsFunc(goals, func(g Goal) bool { return g.Figure == FigConns }) {
		why := ""
		for _, f := range failures {
			if f.Workload == WorkloadConns && f.Param == 1000 {
				why = "every run failed: see Failed runs"
			}
		}
		goals = append(goals, Goal{Figure: FigConns, Target: "1,000 connections: downtime <= 2 × single-connection downtime, max stall <= downtime + 50 ms, all survive", Value: why})
	}

	// The small sample container, from the old suite (mode coat).
	var coat []Run
	for _, r := range sample {
		if r.Workload == "sample" && r.Mode == "coat" {
			coat = append(coat, r)
		}
	}
	g := Goal{Figure: FigSample, Target: "small sample container: coat downtime median <= 80 ms"}
	g2 := Goal{Figure: FigSample, Target: "small sample container: first migration on a fresh host (run 0) within 1.3 × the median downtime"}
	if len(coat) > 0 {
		med := median(collect(coat, func(r Run) float64 { return r.DowntimeMS }, false))
		g.Measured, g.Pass, g.Value = true, med <= 80, fmt.Sprintf("%s (%d runs)", msString(med), len(coat))
		for _, r := range coat {
			if r.Index == 0 {
				g2.Measured, g2.Pass = true, r.DowntimeMS <= 1.3*med
				g2.Value = fmt.Sprintf("%s (limit %s)", msString(r.DowntimeMS), msString(1.3*med))
				if !freshHost {
					g2.Value += "; the lab was already up when the bench started, so its hosts were not fresh"
				}
			}
		}
	}
	return append(goals, g, g2)
}

func msString(v float64) string {
	if v >= 10000 {
		return fmt.Sprintf("%.1f s", v/1000)
	}
	return fmt.Sprintf("%.0f ms", v)
}

// MatrixReportInfo is what the matrix section says about how it ran.
type MatrixReportInfo struct {
	MemRate   float64
	FreshHost bool // the lab was brought up by this bench run
}

// WriteMatrixMarkdown writes the matrix workloads' section of the report:
// per-cell tables, the strategies unavailable here, each figure with its
// goals and PASS/MISS, and the failed runs. sample is the old suite's runs
// (for the small-container goals); plots are the files WriteMatrixPlots
// wrote.
func WriteMatrixMarkdown(w io.Writer, runs []Run, failures []Failure, sample []Run, plots []string, info MatrixReportInfo) error {
	cells := SummarizeMatrix(runs)
	goals := MatrixGoals(cells, failures, sample, info.FreshHost)
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	has := func(w string) bool {
		return slices.ContainsFunc(cells, func(c CellSummary) bool { return c.Workload == w }) ||
			slices.ContainsFunc(failures, func(f Failure) bool { return f.Workload == w })
	}
	if has(WorkloadMemory) {
		p("\n## Workload `memory` (redis, by link profile and strategy)\n\n")
		p("redis-server (Debian 12) filled with 64 KiB values of incompressible bytes; during each migration one client GETs and SETs them at %.0f requests/s, checking every GET against its last SET. ", info.MemRate)
		p("One redis per (profile, size) migrates back and forth between edge-1 and edge-2, every strategy in turn. Link profiles: `lan` unshaped, `1gbit` 1 Gbit/s, `edge` 100 Mbit/s and 10 ms each way. Times in ms; latency = requests in flight during the migration (medians over runs).\n\n")
		p("| profile | size | strategy | runs | total median | total max | downtime median | downtime max | lazy median | pages on demand | latency p50 | latency p99 | latency max | requests | wrong | clean runs |\n")
		p("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, c := range cells {
			if c.Workload != WorkloadMemory {
				continue
			}
			p("| %s | %s | %s | %d | %.1f | %.1f | %.1f | %.1f | %.1f | %.0f | %.1f | %.1f | %.1f | %d | %d | %d/%d |\n",
				c.Profile, humanBytes(float64(c.Param)), c.Strategy, c.Runs, c.Total.Median, c.Total.Max, c.Downtime.Median, c.Downtime.Max,
				c.LazyMS, c.PagesOnDemand, c.MigLatP50, c.MigLatP99, c.MigLatMax, c.Requests, c.ReqErrors, c.Survived, c.Runs)
		}
		writeUnavailable(p, failures, WorkloadMemory)
	}
	if has(WorkloadConns) {
		p("\n## Workload `conns` (many connections, by link profile and strategy)\n\n")
		p("The sample server with N client connections, each sending a 64-byte line of the pattern every 100 ms and checking its echo; a fresh container per migration. Stall = the longest any line waited for its echo. Times in ms.\n\n")
		p("| profile | connections | strategy | runs | total median | downtime median | downtime max | max stall median | max stall max | p99 of stalls | connections surviving | clean runs |\n")
		p("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, c := range cells {
			if c.Workload != WorkloadConns {
				continue
			}
			p("| %s | %d | %s | %d | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %d/%d | %d/%d |\n",
				c.Profile, c.Param, c.Strategy, c.Runs, c.Total.Median, c.Downtime.Median, c.Downtime.Max, c.Stall.Median, c.Stall.Max,
				c.ConnStallP99, c.ConnsSurvived, c.Conns, c.Survived, c.Runs)
		}
		writeUnavailable(p, failures, WorkloadConns)
	}

	p("\n## Figures and goals (issue 8)\n\n")
	p("Each figure with the goals it shows; a goal without data is NOT MEASURED (never PASS). `make bench` runs a reduced set of the matrix; `make bench-full` runs all of it.\n")
	figs := []struct{ file, title string }{
		{FigDowntime, "Downtime against memory size, per strategy and link profile"},
		{FigTotal, "Total migration time against memory size, per strategy and link profile"},
		{FigLatency, "redis client latency over time during post-copy"},
		{FigConns, "Downtime and longest stall against the number of connections"},
		{FigSample, "Small sample container (the `sample` workload above, mode coat)"},
	}
	for _, f := range figs {
		p("\n### %s\n\n", f.title)
		if slices.Contains(plots, f.file) {
			p("![%s](%s)\n\n", f.title, f.file)
		} else if f.file != FigSample {
			p("(no plot: no runs for it)\n\n")
		}
		for _, g := range goals {
			if g.Figure == f.file {
				p("- %s\n", g)
			}
		}
	}

	p("\n## Failed runs\n\n")
	n := 0
	for _, f := range failures {
		if f.Unavailable {
			continue
		}
		if n == 0 {
			p("| workload | profile | size / connections | strategy | run | error |\n|---|---|---:|---|---:|---|\n")
		}
		n++
		p("| %s | %s | %s | %s | %d | %s |\n", f.Workload, f.Profile, paramString(f.Workload, f.Param), f.Strategy, f.Index, mdCell(f.Error))
	}
	for _, r := range runs {
		if !IsMatrix(r.Workload) || r.Survived {
			continue
		}
		if n == 0 {
			p("| workload | profile | size / connections | strategy | run | error |\n|---|---|---:|---|---:|---|\n")
		}
		n++
		p("| %s | %s | %s | %s | %d | migrated (downtime %s), but the client failed: %s |\n", r.Workload, r.Profile, paramString(r.Workload, r.Param),
			r.Mode, r.Index, msString(r.DowntimeMS), mdCell(r.ClientError))
	}
	if n == 0 {
		p("None (strategies this kernel cannot run are listed with their workload, not here).\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func writeUnavailable(p func(string, ...any), failures []Failure, w string) {
	seen := map[string]bool{}
	for _, f := range failures {
		if !f.Unavailable || f.Workload != w {
			continue
		}
		k := f.Strategy + "\x00" + f.Error
		if seen[k] {
			continue
		}
		seen[k] = true
		p("\n`%s`: unavailable on this kernel, not run (the agent refused it: %s).\n", f.Strategy, mdCell(f.Error))
	}
}

// mdCell makes text safe for one Markdown table cell.
func mdCell(s string) string {
	s = strings.ReplaceAll(s, "|", "\\|")
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 400 {
		s = s[:400] + "..."
	}
	return s
}
