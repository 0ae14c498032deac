package report

import (
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/clusterpeer/clusterpeer/bench/iperf"
	"github.com/clusterpeer/clusterpeer/bench/profile"
)

// sample is a run of two profiles over 1..4 lanes: "small" scales until
// the 1 Gbit/s line rate, "big" is capped by it from the start.
func sample() *Report {
	r := &Report{
		Command: "bench --quick", LineRateBps: 1e9,
		Env:      Env{CPUModel: "Test CPU", CPUs: 2, Kernel: "6.18", Cgroup: "v1"},
		Profiles: []profile.Profile{{Name: "small", VCPUs: 2, NetworkGbps: 0.5}, {Name: "big", VCPUs: 36, NetworkGbps: 10}},
		Settings: Settings{Lanes: []int{1, 2, 3, 4}, Tests: []string{"tcp", "udp"}, Reps: 3, DurationSec: 2, Streams: 4},
		Limits:   map[string]profile.Limits{"small": {CPUs: 0.1, RateBitsPS: 5e8}, "big": {CPUs: 1.8, RateBitsPS: 1e10}},
	}
	add := func(path string, lanes int, prof, test string, gbps ...float64) {
		c := &Cell{Path: path, Lanes: lanes, Profile: prof, Test: test}
		for _, g := range gbps {
			run := Run{Result: iperf.Result{Seconds: 2, Bps: g * 1e9, LostPercent: 1}, CPU: map[string]float64{"gw-a": 0.1, "demux-a": 0.3}, Throttled: map[string]float64{"gw-a": 0.5}, HostBusy: 0.8}
			if path == Clusterpeer {
				run.Work = &Work{Seconds: 2, DemuxPackets: g * 1e5, GatewayPackets: g * 1e5}
			}
			c.Runs = append(c.Runs, run)
		}
		c.Finish()
		r.Cells = append(r.Cells, c)
	}
	for _, t := range []string{"tcp", "udp"} {
		add(Kernel, 1, "small", t, 0.5, 0.5, 0.5)
		add(WireGuardGo, 1, "small", t, 0.2, 0.25, 0.3)
		add(Clusterpeer, 1, "small", t, 0.3, 0.3, 0.3)
		add(Clusterpeer, 2, "small", t, 0.55, 0.6, 0.5)
		add(Clusterpeer, 3, "small", t, 0.8, 0.81, 0.79)
		add(Clusterpeer, 4, "small", t, 0.95, 0.95, 0.95)
		add(Kernel, 1, "big", t, 1, 1, 1)
		add(WireGuardGo, 1, "big", t, 0.9, 0.9, 0.9)
		add(Clusterpeer, 1, "big", t, 0.9, 0.9, 0.9)
		add(Clusterpeer, 2, "big", t, 0.97, 0.97, 0.97)
		add(Clusterpeer, 3, "big", t, 0.98, 0.98, 0.98)
		add(Clusterpeer, 4, "big", t, 0.96, 0.96, 0.96)
	}
	return r
}

func TestMedian(t *testing.T) {
	if m := Median([]float64{3, 1, 2}); m != 2 {
		t.Error(m)
	}
	if m := Median([]float64{4, 1, 3, 2}); m != 2.5 {
		t.Error(m)
	}
	if !math.IsNaN(Median(nil)) {
		t.Error("median of nothing")
	}
}

func TestSummary(t *testing.T) {
	r := sample()
	if err := r.Summarize(); err != nil {
		t.Fatal(err)
	}
	s := r.Summary
	// Best: big at 3 lanes, 0.98. Ratio for big: 0.9/0.9. Efficiency: 2 x
	// 0.9 > 1 Gbit/s line rate already, so N = 1.
	if got := s.Line(); got != "bench: lanes=3 gbps=0.98 wgo_gbps=0.90 ratio=1.00 efficiency=1.00" {
		t.Errorf("big: %s", got)
	}
	// Without "big", the best is small at 4 lanes; 3 x 0.3 < 1 but 4 x
	// 0.3 > 1, so efficiency is at N = 3: 0.8 / 0.9.
	r.Cells = filter(r.Cells, func(c *Cell) bool { return c.Profile == "small" })
	r.Summarize()
	if got := r.Summary.Line(); got != "bench: lanes=4 gbps=0.95 wgo_gbps=0.25 ratio=1.20 efficiency=0.89" || r.Summary.EffLanes != 3 {
		t.Errorf("small: %s at N=%d", got, r.Summary.EffLanes)
	}
	r.Cells = filter(r.Cells, func(c *Cell) bool { return c.Path != WireGuardGo })
	if err := r.Summarize(); err == nil {
		t.Error("a summary without the wireguard-go baseline")
	}
}

func filter(cs []*Cell, keep func(*Cell) bool) []*Cell {
	var out []*Cell
	for _, c := range cs {
		if keep(c) {
			out = append(out, c)
		}
	}
	return out
}

func TestWriteAndCheck(t *testing.T) {
	r := sample()
	r.Summarize()
	dir := t.TempDir()
	js, md, pngPath := filepath.Join(dir, "r.json"), filepath.Join(dir, "r.md"), filepath.Join(dir, "r.png")
	if err := r.WriteJSON(js); err != nil {
		t.Fatal(err)
	}
	back, err := Load(js)
	if err != nil {
		t.Fatal(err)
	}
	if err := back.Check(); err != nil {
		t.Errorf("a complete report fails its check: %v", err)
	}
	if back.Summary.Line() != r.Summary.Line() || len(back.Cells) != len(r.Cells) {
		t.Error("JSON round trip lost figures")
	}
	if err := r.WriteMarkdown(md); err != nil {
		t.Fatal(err)
	}
	text, _ := os.ReadFile(md)
	for _, want := range []string{
		"| small | 0.10 | 0.50 | 0.50 | 0.25 | 0.30 | 0.55 | 0.80 | 0.95 | 3.80x | 0.89 at 3 |",
		"0.30 (1.0%)", "| clusterpeer | small | 1 | 0.30 | 0.10 (50%) | - | 0.30 |", r.Summary.Line(),
	} {
		if !strings.Contains(string(text), want) {
			t.Errorf("markdown lacks %q:\n%s", want, text)
		}
	}
	if err := r.WriteChart(pngPath, "tcp"); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(pngPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil || img.Bounds().Dx() < 500 {
		t.Errorf("chart: %v %v", err, img)
	}
}

func TestCheckFindsProblems(t *testing.T) {
	r := sample()
	r.Summarize()
	r.Cells[2].Runs = r.Cells[2].Runs[:2]
	r.Cells[3].Error = "iperf3: unable to connect"
	r.Cells[4].Runs[1].Bps = 0
	r.Cells[5].CPU = nil
	r.Cells[4].Runs[2].Work = nil // cells 2-5: clusterpeer, small, tcp
	err := r.Check()
	for _, want := range []string{"2 runs, want 3", "unable to connect", "a run measured 0 bit/s", "no CPU accounted", "no packet counts"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("check: %v, want %q", err, want)
		}
	}
	r.Summary = nil
	if err := r.Check(); err == nil || !strings.Contains(err.Error(), "no summary") {
		t.Errorf("no summary: %v", err)
	}
}

// TestCost: CPU per packet counts the demux's XDP program beside its
// process, and the summary takes the best cell's medians.
func TestCost(t *testing.T) {
	run := Run{CPU: map[string]float64{"demux-a": 0.1, "gw-a": 1.0},
		Work: &Work{Seconds: 2, DemuxPackets: 1e6, DemuxXDPSeconds: 0.1, GatewayPackets: 2e6}}
	d, g, share, ok := run.Cost()
	// demux: 0.1 CPU x 2 s + 0.1 s of XDP = 0.3 s for 1e6 packets; gateways: 2 s for 2e6.
	if !ok || math.Abs(d-300) > 1e-9 || math.Abs(g-1000) > 1e-9 || math.Abs(share-0.15) > 1e-9 {
		t.Errorf("cost %v %v %v %v", d, g, share, ok)
	}
	if _, _, _, ok := (Run{CPU: run.CPU}).Cost(); ok {
		t.Error("a run without counters has a cost")
	}
	s := &Summary{DemuxNsPerPkt: d, GatewayNsPerPkt: g, DemuxShare: share}
	if got := s.CPULine(); got != "bench-cpu: demux_ns_per_pkt=300 gateway_ns_per_pkt=1000 demux_share=0.15" {
		t.Errorf("line %q", got)
	}
	if (&Summary{}).CPULine() != "" {
		t.Error("a summary without costs prints a cost line")
	}
}
