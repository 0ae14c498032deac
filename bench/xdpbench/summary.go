package xdpbench

import (
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/clusterpeer/clusterpeer/bench/report"
)

// Summarize prints the medians per path and load and the fast path's
// ratios; it fails, naming them, if one of paths (nil: all) measured
// nothing under a load.
func Summarize(results []Result, paths []string, out io.Writer) error {
	if paths == nil {
		paths = Paths
	}
	type key struct{ path, load string }
	runs := map[key][5][]float64{}
	for _, r := range results {
		k := key{r.Path, r.Load}
		x := runs[k]
		x[0], x[1] = append(x[0], r.Mpps), append(x[1], r.Gbps)
		if r.ProgNs > 0 {
			x[2] = append(x[2], r.ProgNs)
		}
		if r.StatsNs > 0 {
			x[4] = append(x[4], r.StatsNs)
		}
		if r.Offered > 0 {
			x[3] = append(x[3], r.Offered)
		}
		runs[k] = x
	}
	fmt.Fprintln(out, "bench-xdp: pkt=64 and pkt=1400 are UDP (bench blast, 256 flows; offered= the rate, Mpps, that delivered the most), pkt=1420 is TCP (iperf3, 4 streams of MTU-sized segments)")
	med := map[key]float64{}
	var missing []string
	for _, path := range paths {
		for _, load := range Loads {
			k := key{path, load}
			var mpps, gbps float64
			if len(runs[k][0]) > 0 {
				mpps, gbps = report.Median(runs[k][0]), report.Median(runs[k][1])
			}
			med[k] = mpps
			pkt := load
			if load == "tcp" {
				pkt = fmt.Sprint(tcpBytes)
			}
			fmt.Fprintf(out, "xdp: path=%s pkt=%s mpps=%.2f gbps=%.2f", path, pkt, mpps, gbps)
			if o := runs[k][3]; len(o) > 0 {
				fmt.Fprintf(out, " offered=%.2f", report.Median(o))
			}
			if ns := runs[k][2]; len(ns) > 0 {
				fmt.Fprintf(out, " prog_ns=%.0f", report.Median(ns))
			}
			if ns := runs[k][4]; len(ns) > 0 {
				fmt.Fprintf(out, " stats_ns=%.0f", report.Median(ns))
			}
			fmt.Fprintln(out)
			if !(mpps > 0) {
				missing = append(missing, path+" "+load)
			}
		}
	}
	ratio := func(a, b float64) float64 {
		if b == 0 {
			return 0
		}
		return a / b
	}
	for _, load := range Loads {
		if !slices.Contains(paths, "xdp") {
			break
		}
		x, u, k := med[key{"xdp", load}], med[key{"userspace", load}], med[key{"kernel-forward", load}]
		s := med[key{"xdp-sealed", load}]
		fmt.Fprintf(out, "xdp: ratio %s: xdp/kernel-forward=%.2f xdp/userspace=%.2f xdp-sealed/xdp=%.2f\n", load, ratio(x, k), ratio(x, u), ratio(s, x))
	}
	if len(missing) > 0 {
		return fmt.Errorf("bench-xdp: no result for %s (the lines above the summary say why)", strings.Join(missing, ", "))
	}
	return nil
}
