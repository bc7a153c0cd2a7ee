package bench

import (
	"cmp"
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

const (
	plotW   = 8 * vg.Inch
	plotH   = 4.5 * vg.Inch
	plotDPI = 150
)

// Okabe-Ito colours (colour-blind safe).
var (
	modeColors = map[string]color.RGBA{
		"coat":        {0, 114, 178, 255},  // blue
		"coat-nohold": {230, 159, 0, 255},  // orange
		"traditional": {213, 94, 0, 255},   // vermillion
		"reference":   {0, 158, 115, 255},  // green
		"podman":      {120, 94, 240, 255}, // violet
	}
	extraColors = []color.RGBA{{204, 121, 167, 255}, {86, 180, 233, 255}, {0, 0, 0, 255}, {240, 228, 66, 255}}
	phaseColors = []color.RGBA{{86, 180, 233, 255}, {0, 158, 115, 255}, {230, 159, 0, 255}, {170, 170, 170, 255}}
	phaseNames  = []string{"checkpoint", "transfer", "restore", "other"}
)

func modeColor(mode string, i int) color.RGBA {
	if c, ok := modeColors[mode]; ok {
		return c
	}
	return extraColors[i%len(extraColors)]
}

// timelineFile is the name of the timeline plot of a workload.
func timelineFile(workload string) string {
	safe := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '-'
	}, workload)
	return "timeline-" + safe + ".png"
}

// WritePlots writes phases.png and one timeline-<workload>.png per
// workload that has runs with a Timeline into dir, and returns the file
// names written (relative to dir). It writes nothing for no runs.
func WritePlots(dir string, runs []Run) ([]string, error) {
	if len(runs) == 0 {
		return nil, nil
	}
	var written []string
	p, err := phasesPlot(runs)
	if err != nil {
		return written, fmt.Errorf("phases plot: %w", err)
	}
	if err := savePNG(p, filepath.Join(dir, "phases.png")); err != nil {
		return written, err
	}
	written = append(written, "phases.png")

	workloads, modes, groups := byWorkloadMode(runs)
	for _, w := range workloads {
		var reps []Run
		for _, m := range modes[w] {
			if r, ok := representative(groups[[2]string{w, m}]); ok {
				reps = append(reps, r)
			}
		}
		if len(reps) == 0 {
			continue
		}
		p, err := timelinePlot(w, reps)
		if err != nil {
			return written, fmt.Errorf("timeline plot %s: %w", w, err)
		}
		name := timelineFile(w)
		if err := savePNG(p, filepath.Join(dir, name)); err != nil {
			return written, err
		}
		written = append(written, name)
	}
	return written, nil
}

func savePNG(p *plot.Plot, path string) error {
	c := vgimg.NewWith(vgimg.UseWH(plotW, plotH), vgimg.UseDPI(plotDPI))
	p.Draw(draw.New(c))
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: c}).WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}

// representative picks the run with a timeline whose TotalMS is closest
// to the median TotalMS of its group (lowest index on ties).
func representative(group []Run) (Run, bool) {
	med := median(collect(group, func(r Run) float64 { return r.TotalMS }, false))
	best, found := Run{}, false
	for _, r := range group {
		if len(r.Timeline) == 0 {
			continue
		}
		d, bd := math.Abs(r.TotalMS-med), math.Abs(best.TotalMS-med)
		if !found || d < bd || d == bd && r.Index < best.Index {
			best, found = r, true
		}
	}
	return best, found
}

func phasesPlot(runs []Run) (*plot.Plot, error) {
	s := Summarize(runs)
	// Rows top to bottom, a blank row between workloads.
	var labels []string
	var vals [4][]float64
	var totals []float64
	for i, ws := range s.Workloads {
		if i > 0 {
			labels = append(labels, "")
			for k := range vals {
				vals[k] = append(vals[k], 0)
			}
			totals = append(totals, math.NaN())
		}
		for _, g := range ws.Groups {
			labels = append(labels, ws.Workload+" / "+g.Mode)
			ck, tr, rs := g.Checkpoint.Median, g.Transfer.Median, g.Restore.Median
			other := math.Max(0, g.Total.Median-ck-tr-rs)
			for k, v := range []float64{ck, tr, rs, other} {
				vals[k] = append(vals[k], v)
			}
			totals = append(totals, g.Total.Median)
		}
	}
	// Bar charts put category 0 at the bottom: reverse.
	n := len(labels)
	rev := func(v []float64) []float64 {
		out := make([]float64, n)
		for i := range v {
			out[n-1-i] = v[i]
		}
		return out
	}
	revLabels := make([]string, n)
	for i := range labels {
		revLabels[n-1-i] = labels[i]
	}

	p := plot.New()
	p.Title.Text = "Migration duration by phase (median)"
	grid := plotter.NewGrid()
	grid.Horizontal.Color = nil // only vertical lines, behind the bars
	p.Add(grid)
	p.X.Label.Text = "time (ms)"
	p.Y.Label.Text = "workload / mode"
	width := vg.Length(math.Min(float64(0.35*vg.Inch), float64(3.2*vg.Inch)/float64(n)*0.75))
	var prev *plotter.BarChart
	maxEnd := 0.0
	for k := range vals {
		b, err := plotter.NewBarChart(plotter.Values(rev(vals[k])), width)
		if err != nil {
			return nil, err
		}
		b.Horizontal = true
		b.Color = phaseColors[k]
		b.LineStyle.Width = 0
		if prev != nil {
			b.StackOn(prev)
		}
		p.Add(b)
		p.Legend.Add(phaseNames[k], b)
		prev = b
	}
	var lxy plotter.XYs
	var ltxt []string
	for i, t := range rev(totals) {
		if math.IsNaN(t) {
			continue
		}
		end := prev.BarHeight(i)
		maxEnd = math.Max(maxEnd, end)
		lxy = append(lxy, plotter.XY{X: end, Y: float64(i)})
		ltxt = append(ltxt, fmt.Sprintf("%.0f ms", t))
	}
	if len(lxy) > 0 {
		l, err := plotter.NewLabels(plotter.XYLabels{XYs: lxy, Labels: ltxt})
		if err != nil {
			return nil, err
		}
		for i := range l.TextStyle {
			l.TextStyle[i].YAlign = text.YCenter
			l.TextStyle[i].Font.Size = vg.Points(8)
		}
		l.Offset = vg.Point{X: vg.Points(3)}
		p.Add(l)
	}
	p.NominalY(revLabels...)
	p.X.Min = 0
	// Room for the end labels and the legend; avoid an empty range.
	p.X.Max = math.Max(maxEnd*1.35, 1)
	p.Legend.Top = true
	p.Legend.TextStyle.Font.Size = vg.Points(9)
	p.Title.Padding = vg.Points(6)
	return p, nil
}

// yLabel is the unit of a workload's timeline values (after scaleV).
func yLabel(workload string) string {
	switch workload {
	case "sample":
		return "echoed KB per 10 ms"
	case "sockperf":
		return "replies per 10 ms"
	case "iperf3":
		return "Mbit/s"
	}
	return "value"
}

func scaleV(workload string, v float64) float64 {
	if workload == "sample" {
		return v / 1000 // bytes -> KB
	}
	return v
}

// timelinePlot draws the representative run of each mode around its
// migration, with x = ms relative to the migration start.
func timelinePlot(workload string, reps []Run) (*plot.Plot, error) {
	maxDur, dt := 0.0, 0.0
	for _, r := range reps {
		maxDur = math.Max(maxDur, r.MigEndMS-r.MigStartMS)
		for i := 1; i < len(r.Timeline); i++ {
			dt = math.Max(dt, r.Timeline[i].T-r.Timeline[i-1].T)
		}
	}
	lo := -math.Max(math.Max(1000, maxDur), 5*dt)
	hi := maxDur + math.Max(math.Max(1500, maxDur), 10*dt)

	p := plot.New()
	p.Title.Text = fmt.Sprintf("%s: client view around one representative migration per mode", workload)
	p.X.Label.Text = "time relative to migration start (ms)"
	p.Y.Label.Text = yLabel(workload)
	p.Title.Padding = vg.Points(6)
	ymax := 0.0
	lines := make([]plotter.XYs, len(reps))
	for i, r := range reps {
		for _, pt := range r.Timeline {
			x := pt.T - r.MigStartMS
			if x >= lo && x <= hi {
				y := scaleV(workload, pt.V)
				lines[i] = append(lines[i], plotter.XY{X: x, Y: y})
				ymax = math.Max(ymax, y)
			}
		}
	}
	ymax = math.Max(ymax*1.45, 1) // headroom for the legend; never an empty range
	p.Add(plotter.NewGrid())
	var firstShade *plotter.Polygon
	for i, r := range reps {
		c := modeColor(r.Mode, i)
		end := r.MigEndMS - r.MigStartMS
		shade, err := plotter.NewPolygon(plotter.XYs{{X: 0, Y: 0}, {X: end, Y: 0}, {X: end, Y: ymax}, {X: 0, Y: ymax}})
		if err != nil {
			return nil, err
		}
		shade.Color = color.NRGBA{0, 0, 0, 16} // darker where more modes migrate
		shade.LineStyle.Width = 0
		p.Add(shade)
		if i == 0 {
			firstShade = shade
		}
		if err := addVLine(p, end, ymax, c, []vg.Length{vg.Points(4), vg.Points(3)}); err != nil {
			return nil, err
		}
	}
	if err := addVLine(p, 0, ymax, color.RGBA{0, 0, 0, 255}, nil); err != nil {
		return nil, err
	}
	// Draw in reverse so the first mode (coat) is on top; legend in order.
	ls := make([]*plotter.Line, len(reps))
	for i := len(reps) - 1; i >= 0; i-- {
		if len(lines[i]) == 0 {
			continue
		}
		l, err := plotter.NewLine(lines[i])
		if err != nil {
			return nil, err
		}
		l.Color = modeColor(reps[i].Mode, i)
		l.Width = vg.Points(1.3)
		p.Add(l)
		ls[i] = l
	}
	for i, r := range reps {
		if ls[i] != nil {
			p.Legend.Add(fmt.Sprintf("%s (run %d): migration %.0f ms, client stall %.0f ms", r.Mode, r.Index, r.MigEndMS-r.MigStartMS, r.StallMS), ls[i])
		}
	}
	p.Legend.Add("migrating (start: black line; end: dashed, mode colour)", firstShade)
	p.Legend.Top = true
	p.Legend.TextStyle.Font.Size = vg.Points(8)
	p.X.Min, p.X.Max = lo, hi
	p.Y.Min, p.Y.Max = 0, ymax
	return p, nil
}

func addVLine(p *plot.Plot, x, ymax float64, c color.RGBA, dashes []vg.Length) error {
	l, err := plotter.NewLine(plotter.XYs{{X: x, Y: 0}, {X: x, Y: ymax}})
	if err != nil {
		return err
	}
	l.Color = c
	l.Width = vg.Points(1)
	l.Dashes = dashes
	p.Add(l)
	return nil
}

// orderedKeys returns the distinct keys, known ones first in the given
// order, then the rest alphabetically.
func orderedKeys(keys []string, order []string) []string {
	rank := func(k string) int {
		if i := slices.Index(order, k); i >= 0 {
			return i
		}
		return len(order)
	}
	out := slices.Clone(keys)
	slices.SortFunc(out, func(a, b string) int { return cmp.Or(rank(a)-rank(b), strings.Compare(a, b)) })
	return slices.Compact(out)
}

var (
	workloadOrder = []string{"sample", "sockperf", "iperf3"}
	modeOrder     = []string{"coat", "coat-nohold", "traditional", "reference", "podman"}
)

// byWorkloadMode groups runs, keeping input order inside a group.
func byWorkloadMode(runs []Run) (workloads []string, modes map[string][]string, groups map[[2]string][]Run) {
	var ws []string
	ms := map[string][]string{}
	groups = map[[2]string][]Run{}
	for _, r := range runs {
		ws = append(ws, r.Workload)
		ms[r.Workload] = append(ms[r.Workload], r.Mode)
		k := [2]string{r.Workload, r.Mode}
		groups[k] = append(groups[k], r)
	}
	workloads = orderedKeys(ws, workloadOrder)
	for w, m := range ms {
		ms[w] = orderedKeys(m, modeOrder)
	}
	return workloads, ms, groups
}
