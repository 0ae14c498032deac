package main

import (
	"slices"
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
