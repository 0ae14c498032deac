package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/clusterpeer/clusterpeer/bench/iperf"
	"github.com/clusterpeer/clusterpeer/bench/report"
)

// bench-xdp's three paths and three loads, in the order it prints them.
var (
	xdpPaths = []string{"xdp", "userspace", "kernel-forward"}
	xdpLoads = []string{"64", "1400", "tcp"}
)

// xdpSummary prints the medians of bench-xdp's runs (lines "PATH LOAD
// MPPS GBPS") and the fast path's ratios; it fails if a path measured
// nothing under a load.
func xdpSummary(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: bench xdp-summary RESULTS")
	}
	f, err := os.Open(args[0])
	if err != nil {
		return err
	}
	defer f.Close()
	return summarizeXDP(f, os.Stdout)
}

func summarizeXDP(in io.Reader, out io.Writer) error {
	type key struct{ path, load string }
	runs := map[key][2][]float64{}
	sc := bufio.NewScanner(in)
	for n := 1; sc.Scan(); n++ {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if len(f) != 4 {
			return fmt.Errorf("results line %d: %q: want PATH LOAD MPPS GBPS", n, sc.Text())
		}
		mpps, err1 := strconv.ParseFloat(f[2], 64)
		gbps, err2 := strconv.ParseFloat(f[3], 64)
		if err := errors.Join(err1, err2); err != nil {
			return fmt.Errorf("results line %d: %w", n, err)
		}
		k := key{f[0], f[1]}
		r := runs[k]
		r[0], r[1] = append(r[0], mpps), append(r[1], gbps)
		runs[k] = r
	}
	if err := sc.Err(); err != nil {
		return err
	}
	fmt.Fprintln(out, "bench-xdp: pkt=64 and pkt=1400 are UDP (bench blast, 256 flows), pkt=1420 is TCP (iperf3, 4 streams of MTU-sized segments)")
	med := map[key]float64{}
	var missing []string
	for _, path := range xdpPaths {
		for _, load := range xdpLoads {
			k := key{path, load}
			var mpps, gbps float64
			if len(runs[k][0]) > 0 {
				mpps, gbps = report.Median(runs[k][0]), report.Median(runs[k][1])
			}
			med[k] = mpps
			pkt := load
			if load == "tcp" {
				pkt = "1420"
			}
			fmt.Fprintf(out, "xdp: path=%s pkt=%s mpps=%.2f gbps=%.2f\n", path, pkt, mpps, gbps)
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
	for _, load := range xdpLoads {
		x, u, k := med[key{"xdp", load}], med[key{"userspace", load}], med[key{"kernel-forward", load}]
		fmt.Fprintf(out, "xdp: ratio %s: xdp/kernel-forward=%.2f xdp/userspace=%.2f\n", load, ratio(x, k), ratio(x, u))
	}
	if len(missing) > 0 {
		return fmt.Errorf("bench-xdp: no result for %s (the lines above the summary say why)", strings.Join(missing, ", "))
	}
	return nil
}

// iperfRate reads an iperf3 -J report on stdin and prints what arrived
// as "MPPS GBPS" (packets of MTU-sized TCP segments); "0 0" and the
// reason on stderr if the run failed.
func iperfRate(args []string) error {
	if len(args) != 0 {
		return errors.New("usage: bench iperf-rate < REPORT.json")
	}
	b, err := io.ReadAll(os.Stdin)
	if err != nil {
		return err
	}
	r, err := iperf.Parse(b)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-xdp: tcp: no result:", err)
		fmt.Println("0 0")
		return nil
	}
	fmt.Printf("%.4f %.4f\n", r.Bps/8/1420/1e6, r.Bps/1e9)
	return nil
}
