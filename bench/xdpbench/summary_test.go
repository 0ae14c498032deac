package xdpbench

import (
	"io"
	"strings"
	"testing"
)

// Medians per path and load, the ratios, and a failure naming what
// measured nothing.
func TestSummarize(t *testing.T) {
	var results []Result
	for _, path := range Paths {
		for r, f := range []float64{1, 3, 2} { // median 2
			for _, load := range Loads {
				scale := map[string]float64{"xdp": 3, "xdp-sealed": 1.5, "userspace": 1, "kernel-forward": 2}[path]
				res := Result{Path: path, Load: load, Mpps: f * scale, Gbps: float64(r)}
				if load != "tcp" {
					res.Offered = 2 * f * scale
				}
				if path == "xdp" && load == "64" {
					res.ProgNs, res.StatsNs = 100*f, 10*f // medians 200, 20
				}
				results = append(results, res)
			}
		}
	}
	var out strings.Builder
	if err := Summarize(results, nil, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"xdp: path=xdp pkt=64 mpps=6.00 gbps=1.00 offered=12.00 prog_ns=200 stats_ns=20\n",
		"xdp: path=xdp pkt=1400 mpps=6.00 gbps=1.00 offered=12.00\n",
		"xdp: path=userspace pkt=1420 mpps=2.00 gbps=1.00\n",
		"xdp: ratio tcp: xdp/kernel-forward=1.50 xdp/userspace=3.00 xdp-sealed/xdp=0.50",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, out.String())
		}
	}
	err := Summarize([]Result{{Path: "xdp", Load: "64", Mpps: 1, Gbps: 1}, {Path: "xdp", Load: "tcp"}}, nil, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "xdp tcp") || !strings.Contains(err.Error(), "userspace 64") {
		t.Errorf("missing results: %v", err)
	}
	// One path asked for: only its lines, and no ratios.
	out.Reset()
	if err := Summarize(results, []string{"userspace"}, &out); err != nil || strings.Contains(out.String(), "path=xdp") || strings.Contains(out.String(), "ratio") {
		t.Errorf("userspace only: %v\n%s", err, out.String())
	}
}
