package report

import (
	"fmt"
	"image/color"
	"math"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// WriteChart draws the reference design's chart for test ("tcp"): Gbit/s
// against the number of gateways, one line per profile, the line rate as a
// dashed line, and each profile's plain wireguard-go tunnel as a hollow
// mark at one gateway. The format follows the file name (.png, .svg).
func (r *Report) WriteChart(path, test string) error {
	legendRoom := 0.12 + 0.045*float64(len(r.Profiles))
	p := plot.New()
	p.Title.Text = fmt.Sprintf("clusterpeer %s throughput against gateways (%s, %d CPUs)", test, r.Env.CPUModel, r.Env.CPUs)
	p.X.Label.Text = "gateways (lanes)"
	p.Y.Label.Text = "Gbit/s"
	// The legend goes top left, in room kept free above the line rate:
	// wherever else it goes, some profile's line runs through it.
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.XOffs, p.Legend.YOffs = vg.Points(8), -vg.Points(4)
	p.Add(plotter.NewGrid())
	maxN, minY, maxY := 1, math.Inf(1), 0.0
	for i, pr := range r.Profiles {
		var xys plotter.XYs
		for _, n := range r.Settings.Lanes {
			if c := r.Find(Clusterpeer, n, pr.Name, test); c != nil {
				xys = append(xys, plotter.XY{X: float64(n), Y: c.MedianBps / 1e9})
				maxN, minY, maxY = max(maxN, n), min(minY, c.MedianBps/1e9), max(maxY, c.MedianBps/1e9)
			}
		}
		if len(xys) == 0 {
			continue
		}
		line, points, err := plotter.NewLinePoints(xys)
		if err != nil {
			return err
		}
		line.Color, points.Color = plotutil.Color(i), plotutil.Color(i)
		line.Width = vg.Points(1.5)
		points.Shape = plotutil.Shape(i)
		p.Add(line, points)
		p.Legend.Add(pr.Name, line, points)
		if w := r.Find(WireGuardGo, 1, pr.Name, test); w != nil {
			s, err := plotter.NewScatter(plotter.XYs{{X: 1, Y: w.MedianBps / 1e9}})
			if err != nil {
				return err
			}
			s.Color, s.Shape, s.Radius = plotutil.Color(i), draw.RingGlyph{}, vg.Points(5)
			p.Add(s)
			minY, maxY = min(minY, w.MedianBps/1e9), max(maxY, w.MedianBps/1e9)
		}
	}
	rate := r.LineRateBps / 1e9
	lr := plotter.NewFunction(func(float64) float64 { return rate })
	lr.Color = color.RGBA{R: 200, A: 255}
	lr.Dashes = []vg.Length{vg.Points(6), vg.Points(4)}
	lr.Width = vg.Points(1.5)
	p.Add(lr)
	p.Legend.Add(fmt.Sprintf("line rate (%.2f Gbit/s)", rate), lr)
	ring, _ := plotter.NewScatter(plotter.XYs{{}})
	ring.Shape, ring.Radius = draw.RingGlyph{}, vg.Points(5)
	p.Legend.Add("wireguard-go, 1 tunnel", ring)
	p.X.Min, p.X.Max = 0.5, float64(maxN)+0.5
	// The top legendRoom of the axis is the legend's (a row per profile
	// and two more).
	top := max(maxY, rate)
	p.Y.Min, p.Y.Max = 0, top/(1-legendRoom)
	if rate > 3*maxY && minY > 0 {
		// The line rate is out of this host's reach: a linear axis up
		// to it would flatten every line, so the axis is logarithmic.
		p.Y.Scale, p.Y.Tick.Marker = plot.LogScale{}, plot.LogTicks{Prec: -1}
		p.Y.Min = minY / 2
		p.Y.Max = top * math.Pow(top/p.Y.Min, legendRoom/(1-legendRoom))
		p.Y.Label.Text = "Gbit/s (log scale)"
	}
	p.X.Tick.Marker = integerTicks{}
	return p.Save(8*vg.Inch, 5*vg.Inch, path)
}

// integerTicks marks every whole number of gateways.
type integerTicks struct{}

func (integerTicks) Ticks(min, max float64) []plot.Tick {
	var t []plot.Tick
	for n := int(min + 0.5); float64(n) <= max; n++ {
		if n >= 1 {
			t = append(t, plot.Tick{Value: float64(n), Label: fmt.Sprint(n)})
		}
	}
	return t
}
