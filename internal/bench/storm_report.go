package bench

import (
	"fmt"
	"image/color"
	"io"
	"maps"
	"math"
	"path/filepath"
	"slices"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// FigStorm is the storm workload's figure.
const FigStorm = "storm-distributions.png"

// stallTargetMS is the target: a client stalls at most its
// service's downtime + 50 ms.
const stallTargetMS = 50

// StormSummary summarises the runs (one per service and roam) of one
// storm size.
type StormSummary struct {
	Size     int
	Roams    int
	Services int // service-roams measured
	Survived int // of them, streams intact with a logged move
	Within   int // of them, stall <= downtime + 50 ms
	// Storm is the time from the roam until every service ran next to
	// the client, over the roams.
	Storm Stat
	// Over the service-roams: downtime, the client's longest stall, and
	// stall minus downtime.
	Downtime, Stall, Over Dist
}

// SummarizeStorm groups storm runs by size, smallest first.
func SummarizeStorm(runs []Run) []StormSummary {
	by := map[int64][]Run{}
	for _, r := range runs {
		if r.Workload == WorkloadStorm {
			by[r.Param] = append(by[r.Param], r)
		}
	}
	var out []StormSummary
	for _, size := range slices.Sorted(maps.Keys(by)) {
		g := by[size]
		s := StormSummary{Size: int(size), Services: len(g)}
		storms := map[int]float64{}
		var down, stall, over []float64
		for _, r := range g {
			storms[r.Index] = r.StormMS
			if r.Survived {
				s.Survived++
			}
			down, stall = append(down, r.DowntimeMS), append(stall, r.StallMS)
			over = append(over, r.StallMS-r.DowntimeMS)
			if r.Survived && r.StallMS <= r.DowntimeMS+stallTargetMS {
				s.Within++
			}
		}
		var st []float64
		for _, v := range storms {
			st = append(st, v)
		}
		s.Roams, s.Storm = len(storms), stat(st)
		s.Downtime, s.Stall, s.Over = Distribution(down), Distribution(stall), Distribution(over)
		out = append(out, s)
	}
	return out
}

// StormGoals are the targets for the storm, per size: every
// connection survives; every stall within its service's downtime + 50 ms.
// A size that produced no runs is NOT MEASURED.
func StormGoals(sums []StormSummary, failures []Failure) []Goal {
	var goals []Goal
	for _, s := range sums {
		where := fmt.Sprintf("storm of %d services (%d roams)", s.Size, s.Roams)
		goals = append(goals, Goal{Figure: FigStorm, Target: where + ": every connection survives", Measured: true,
			Value: fmt.Sprintf("%d/%d streams intact", s.Survived, s.Services), Pass: s.Survived == s.Services})
		goals = append(goals, Goal{Figure: FigStorm, Target: where + ": every client stalls at most its service's downtime + 50 ms", Measured: true,
			Value: fmt.Sprintf("%d/%d within; stall - downtime %s", s.Within, s.Services, s.Over), Pass: s.Within == s.Services})
	}
	for _, f := range failures {
		if f.Workload == WorkloadStorm && !slices.ContainsFunc(sums, func(s StormSummary) bool { return int64(s.Size) == f.Param }) {
			goals = append(goals, Goal{Figure: FigStorm, Target: fmt.Sprintf("storm of %d services", f.Param), Value: "failed: see Failed storms"})
		}
	}
	return goals
}

// WriteStormMarkdown writes the storm workload's section of the report.
func WriteStormMarkdown(w io.Writer, runs []Run, failures []Failure, plots []string, rate string) error {
	sums := SummarizeStorm(runs)
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("\n## Workload `storm` (handover storms through follow-me)\n\n")
	p("K sample services on edge-1 follow the lab's client (`coat follow NAME --client client`); the client streams to every one of them (%s each, one process, one connection per service) and roams to the other edge host (`coat lab roam`), so that all K migrate at once through follow-me; each roam is one run, back and forth. ", rate)
	p("Storm = from the roam until every service ran next to the client; downtime = each migration's (the source agent's follow-me log); stall = that service's client's longest wait for its echo. Times in ms; p50/p90/max over every service of every roam.\n\n")
	p("| services | roams | storm median | storm max | downtime p50 | downtime p90 | downtime max | stall p50 | stall p90 | stall max | stall - downtime p50 | p90 | max | within +50 ms | streams intact |\n")
	p("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, s := range sums {
		p("| %d | %d | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %+.0f | %+.0f | %+.0f | %d/%d | %d/%d |\n",
			s.Size, s.Roams, s.Storm.Median, s.Storm.Max, s.Downtime.P50, s.Downtime.P90, s.Downtime.Max,
			s.Stall.P50, s.Stall.P90, s.Stall.Max, s.Over.P50, s.Over.P90, s.Over.Max, s.Within, s.Services, s.Survived, s.Services)
	}
	p("\n### Downtime and stall distributions\n\n")
	if slices.Contains(plots, FigStorm) {
		p("![Downtime and stall distributions of the storms](%s)\n\n", FigStorm)
	} else {
		p("(no plot: no storm runs)\n\n")
	}
	for _, g := range StormGoals(sums, failures) {
		p("- %s\n", g)
	}
	n := 0
	for _, f := range failures {
		if f.Workload != WorkloadStorm {
			continue
		}
		if n == 0 {
			p("\n### Failed storms\n\n| services | roam | error |\n|---:|---:|---|\n")
		}
		n++
		p("| %d | %d | %s |\n", f.Param, f.Index, mdCell(f.Error))
	}
	for _, r := range runs {
		if r.Workload != WorkloadStorm || r.Survived {
			continue
		}
		if n == 0 {
			p("\n### Failed storms\n\n| services | roam | error |\n|---:|---:|---|\n")
		}
		n++
		p("| %d | %d | a service's client: %s |\n", r.Param, r.Index, mdCell(r.ClientError))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteStormPlots writes the storm figure into dir if there are storm
// runs: per size, the distributions (CDFs) of downtime (solid) and of
// the client's stall (dashed).
func WriteStormPlots(dir string, runs []Run) ([]string, error) {
	p, err := stormPlot(runs)
	if err != nil || p == nil {
		return nil, err
	}
	if err := savePNG(p, filepath.Join(dir, FigStorm)); err != nil {
		return nil, err
	}
	return []string{FigStorm}, nil
}

func stormPlot(runs []Run) (*plot.Plot, error) {
	by := map[int64][]Run{}
	for _, r := range runs {
		if r.Workload == WorkloadStorm {
			by[r.Param] = append(by[r.Param], r)
		}
	}
	if len(by) == 0 {
		return nil, nil
	}
	sizes := slices.Sorted(maps.Keys(by))
	p := plot.New()
	p.Title.Text = "Handover storms: downtime (solid) and client stall (dashed), per storm size"
	p.Title.Padding = vg.Points(6)
	p.X.Label.Text = "ms (log scale)"
	p.Y.Label.Text = "fraction of services at or below"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Add(plotter.NewGrid())
	lo, hi := math.Inf(1), 0.0
	for i, size := range sizes {
		c := extraColors[i%len(extraColors)]
		if i == 0 {
			c = modeColors["coat"]
		}
		for _, m := range []struct {
			name   string
			f      func(Run) float64
			dashes []vg.Length
		}{
			{"downtime", func(r Run) float64 { return r.DowntimeMS }, nil},
			{"stall", func(r Run) float64 { return r.StallMS }, []vg.Length{vg.Points(5), vg.Points(3)}},
		} {
			xy := cdf(collect(by[size], m.f, false))
			for _, pt := range xy {
				lo, hi = math.Min(lo, pt.X), math.Max(hi, pt.X)
			}
			l, err := plotter.NewLine(xy)
			if err != nil {
				return nil, err
			}
			l.Color, l.Width, l.Dashes = color.Color(c), vg.Points(1.5), m.dashes
			p.Add(l)
			p.Legend.Add(fmt.Sprintf("%d services: %s", size, m.name), l)
		}
	}
	p.X.Min = math.Pow(10, math.Floor(math.Log10(lo)))
	p.X.Max = math.Pow(10, math.Ceil(math.Log10(hi)))
	p.Y.Min, p.Y.Max = 0, 1.05
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.TextStyle.Font.Size = vg.Points(8)
	return p, nil
}

// cdf is the empirical distribution of v as a step line: x the value
// (at least 1 ms, for the log axis), y the fraction at or below it.
func cdf(v []float64) plotter.XYs {
	s := slices.Sorted(slices.Values(v))
	xy := make(plotter.XYs, 0, 2*len(s))
	for i, x := range s {
		x = math.Max(x, 1)
		xy = append(xy, plotter.XY{X: x, Y: float64(i) / float64(len(s))}, plotter.XY{X: x, Y: float64(i+1) / float64(len(s))})
	}
	return xy
}
