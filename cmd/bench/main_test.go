package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
)

func TestParseLanes(t *testing.T) {
	for in, want := range map[string][]int{"1-6": {1, 2, 3, 4, 5, 6}, "1,2,4": {1, 2, 4}, "2": {2}, "1-2,5-6": {1, 2, 5, 6}} {
		if got, err := parseLanes(in); err != nil || !slices.Equal(got, want) {
			t.Errorf("%q: %v %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "0", "3-1", "1,1", "2,1", "1-17", "a", "1-"} {
		if got, err := parseLanes(bad); err == nil {
			t.Errorf("%q accepted as %v", bad, got)
		}
	}
}

func TestParseRate(t *testing.T) {
	for in, want := range map[string]uint64{"500M": 5e8, "1.5G": 15e8, "800k": 8e5, "2000000": 2e6} {
		if got, err := parseRate(in); err != nil || got != want {
			t.Errorf("%q: %v %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "fast", "-1M", "0", "10", "2000G"} {
		if _, err := parseRate(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestSummarizeXDP: medians per path and load, the ratios, and a failure
// naming what measured nothing.
func TestSummarizeXDP(t *testing.T) {
	var lines []string
	for _, path := range xdpPaths {
		for r, f := range []float64{1, 3, 2} { // median 2
			for _, load := range xdpLoads {
				scale := map[string]float64{"xdp": 3, "userspace": 1, "kernel-forward": 2}[path]
				lines = append(lines, fmt.Sprintf("%s %s %.4f %.4f", path, load, f*scale, float64(r)))
			}
		}
	}
	var out strings.Builder
	if err := summarizeXDP(strings.NewReader(strings.Join(lines, "\n")), &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"xdp: path=xdp pkt=64 mpps=6.00 gbps=1.00",
		"xdp: path=userspace pkt=1420 mpps=2.00",
		"xdp: ratio tcp: xdp/kernel-forward=1.50 xdp/userspace=3.00",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, out.String())
		}
	}
	err := summarizeXDP(strings.NewReader("xdp 64 1 1\nxdp tcp 0 0\n"), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "xdp tcp") || !strings.Contains(err.Error(), "userspace 64") {
		t.Errorf("missing results: %v", err)
	}
	if err := summarizeXDP(strings.NewReader("xdp 64 one 1\n"), io.Discard); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("a bad line: %v", err)
	}
}
