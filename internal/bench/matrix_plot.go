package bench

import (
	"fmt"
	"image/color"
	"math"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

var (
	strategyColors = map[string]color.RGBA{
		"stop-and-copy": {213, 94, 0, 255},  // vermillion
		"post-copy":     {0, 114, 178, 255}, // blue
		"pre-copy":      {0, 158, 115, 255}, // green
	}
	profileDashes = map[string][]vg.Length{
		"lan":   nil,
		"1gbit": {vg.Points(6), vg.Points(3)},
		"edge":  {vg.Points(2), vg.Points(2)},
	}
)

func strategyColor(s string, i int) color.RGBA {
	if c, ok := strategyColors[s]; ok {
		return c
	}
	return extraColors[i%len(extraColors)]
}

// WriteMatrixPlots writes the matrix figures that have data into dir and
// returns their file names.
func WriteMatrixPlots(dir string, runs []Run) ([]string, error) {
	cells := SummarizeMatrix(runs)
	var written []string
	save := func(name string, p *plot.Plot, err error) error {
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if p == nil {
			return nil
		}
		if err := savePNG(p, filepath.Join(dir, name)); err != nil {
			return err
		}
		written = append(written, name)
		return nil
	}
	p, err := cellsPlot(cells, WorkloadMemory, "Downtime against memory size (median)", "redis data set (MiB)", "downtime (ms, log scale)",
		func(c CellSummary) float64 { return c.Downtime.Median }, func(v int64) float64 { return float64(v) / (1 << 20) })
	if err := save(FigDowntime, p, err); err != nil {
		return written, err
	}
	p, err = cellsPlot(cells, WorkloadMemory, "Total migration time against memory size (median)", "redis data set (MiB)", "total time (ms, log scale)",
		func(c CellSummary) float64 { return c.Total.Median }, func(v int64) float64 { return float64(v) / (1 << 20) })
	if err := save(FigTotal, p, err); err != nil {
		return written, err
	}
	p, err = latencyPlot(runs)
	if err := save(FigLatency, p, err); err != nil {
		return written, err
	}
	p, err = cellsPlot(cells, WorkloadConns, "Downtime against connections (median; dots: longest stall)", "connections", "ms (log scale)",
		func(c CellSummary) float64 { return c.Downtime.Median }, func(v int64) float64 { return float64(v) })
	if err == nil && p != nil {
		err = addStallPoints(p, cells)
		var ys []float64
		for _, c := range cells {
			if c.Workload == WorkloadConns {
				ys = append(ys, math.Max(c.Downtime.Median, 1), math.Max(c.Stall.Median, 1))
			}
		}
		decades(p, ys)
	}
	if err := save(FigConns, p, err); err != nil {
		return written, err
	}
	return written, nil
}

// cellsPlot draws one line per (strategy, profile) of workload w: x from
// the cell's param, y from f (log scale). Nil when there is nothing.
func cellsPlot(cells []CellSummary, w, title, xl, yl string, f func(CellSummary) float64, x func(int64) float64) (*plot.Plot, error) {
	type key struct{ s, p string }
	lines := map[key]plotter.XYs{}
	var order []key
	for _, c := range cells {
		if c.Workload != w {
			continue
		}
		k := key{c.Strategy, c.Profile}
		if _, ok := lines[k]; !ok {
			order = append(order, k)
		}
		lines[k] = append(lines[k], plotter.XY{X: x(c.Param), Y: math.Max(f(c), 1)})
	}
	if len(order) == 0 {
		return nil, nil
	}
	p := plot.New()
	p.Title.Text = title
	p.Title.Padding = vg.Points(6)
	p.X.Label.Text = xl
	p.Y.Label.Text = yl
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Add(plotter.NewGrid())
	for i, k := range order {
		l, pts, err := plotter.NewLinePoints(lines[k])
		if err != nil {
			return nil, err
		}
		c := strategyColor(k.s, i)
		l.Color, pts.Color = c, c
		l.Width = vg.Points(1.5)
		l.Dashes = profileDashes[k.p]
		pts.Radius = vg.Points(2.5)
		p.Add(l, pts)
		p.Legend.Add(fmt.Sprintf("%s, %s", k.s, k.p), l, pts)
	}
	decades(p, order2ys(lines))
	p.X.Min = 0
	p.X.Max = math.Max(p.X.Max*1.08, 1)
	p.Legend.Top = true
	p.Legend.Left = true
	p.Legend.TextStyle.Font.Size = vg.Points(8)
	return p, nil
}

func order2ys[K comparable](lines map[K]plotter.XYs) []float64 {
	var ys []float64
	for _, l := range lines {
		for _, pt := range l {
			ys = append(ys, pt.Y)
		}
	}
	return ys
}

// decades gives a log y axis whole decades around ys (log ticks label
// only powers of ten), one more above for the legend.
func decades(p *plot.Plot, ys []float64) {
	lo, hi := math.Inf(1), 0.0
	for _, y := range ys {
		lo, hi = math.Min(lo, y), math.Max(hi, y)
	}
	if hi <= 0 {
		return
	}
	p.Y.Min = math.Pow(10, math.Floor(math.Log10(lo)))
	p.Y.Max = math.Pow(10, math.Ceil(math.Log10(hi))+1)
}

// addStallPoints marks each conns cell's median longest stall.
func addStallPoints(p *plot.Plot, cells []CellSummary) error {
	for i, c := range cells {
		if c.Workload != WorkloadConns {
			continue
		}
		s, err := plotter.NewScatter(plotter.XYs{{X: float64(c.Param), Y: math.Max(c.Stall.Median, 1)}})
		if err != nil {
			return err
		}
		s.Color = strategyColor(c.Strategy, i)
		s.Radius = vg.Points(4)
		p.Add(s)
	}
	return nil
}

// latencyPlot draws, for each profile, the client latency of the
// post-copy run of the largest data set whose total time is the median of
// its cell, around its migration. Nil when no post-copy run has a
// timeline.
func latencyPlot(runs []Run) (*plot.Plot, error) {
	best := map[string][]Run{}
	var profiles []string
	biggest := map[string]int64{}
	for _, r := range runs {
		if r.Workload != WorkloadMemory || r.Mode != "post-copy" || len(r.Timeline) == 0 {
			continue
		}
		if _, ok := biggest[r.Profile]; !ok {
			profiles = append(profiles, r.Profile)
		}
		if r.Param > biggest[r.Profile] {
			biggest[r.Profile] = r.Param
		}
	}
	for _, r := range runs {
		if r.Workload == WorkloadMemory && r.Mode == "post-copy" && len(r.Timeline) > 0 && r.Param == biggest[r.Profile] {
			best[r.Profile] = append(best[r.Profile], r)
		}
	}
	if len(profiles) == 0 {
		return nil, nil
	}
	p := plot.New()
	p.Title.Text = "redis client latency during post-copy (largest data set; one representative run per profile)"
	p.Title.Padding = vg.Points(6)
	p.X.Label.Text = "time relative to migration start (ms); shaded: migrating"
	p.Y.Label.Text = "request latency (ms, log scale)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Add(plotter.NewGrid())
	lo, hi, ymax := 0.0, 0.0, 1.0
	for i, prof := range orderedKeys(profiles, []string{"lan", "1gbit", "edge"}) {
		r, ok := representative(best[prof])
		if !ok {
			continue
		}
		end := r.MigEndMS - r.MigStartMS
		lo, hi = math.Min(lo, -1000), math.Max(hi, end+2000)
		var xy plotter.XYs
		for _, pt := range r.Timeline {
			x := pt.T - r.MigStartMS
			if x >= -1000 && x <= end+2000 {
				xy = append(xy, plotter.XY{X: x, Y: math.Max(pt.V, 0.01)})
				ymax = math.Max(ymax, pt.V)
			}
		}
		if len(xy) == 0 {
			continue
		}
		c := extraColors[(i+1)%len(extraColors)]
		if prof == "lan" {
			c = modeColors["coat"]
		}
		shade, err := plotter.NewPolygon(plotter.XYs{{X: 0, Y: 0.01}, {X: end, Y: 0.01}, {X: end, Y: 1e6}, {X: 0, Y: 1e6}})
		if err != nil {
			return nil, err
		}
		shade.Color = color.NRGBA{c.R, c.G, c.B, 24}
		shade.LineStyle.Width = 0
		p.Add(shade)
		l, pts, err := plotter.NewLinePoints(xy)
		if err != nil {
			return nil, err
		}
		l.Color, pts.Color = c, c
		l.Width = vg.Points(0.8)
		l.Dashes = profileDashes[prof]
		pts.Radius = vg.Points(1.2)
		p.Add(l, pts)
		p.Legend.Add(fmt.Sprintf("%s, %s: migration %s, downtime %s, p99 in flight %s, %d pages on demand",
			prof, humanBytes(float64(r.Param)), msString(end), msString(r.DowntimeMS), msString(r.MigLatP99), r.PagesOnDemand), l, pts)
	}
	p.X.Min, p.X.Max = lo, hi
	p.Y.Min, p.Y.Max = 0.01, math.Pow(10, math.Ceil(math.Log10(ymax))+1)
	p.Legend.Top = true
	p.Legend.TextStyle.Font.Size = vg.Points(8)
	return p, nil
}
