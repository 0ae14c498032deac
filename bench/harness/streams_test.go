package harness

import (
	"math"
	"testing"

	"github.com/clusterpeer/clusterpeer/bench/report"
)

// TestStreamsFor: streams scale with lanes unless fixed, and 4 a lane
// leave under 2 % of lanes idle on average at every lane count.
func TestStreamsFor(t *testing.T) {
	per := Options{StreamsPerLane: 4}
	fixed := Options{Streams: 8, StreamsPerLane: 4}
	for n := 1; n <= 8; n++ {
		k := per.StreamsFor(n)
		if k != 4*n || fixed.StreamsFor(n) != 8 {
			t.Fatalf("%d lanes: %d streams per lane, %d fixed", n, k, fixed.StreamsFor(n))
		}
		if idle := math.Pow(1-1/float64(n), float64(k)); idle >= 0.02 {
			t.Errorf("%d lanes, %d streams: a lane idle with probability %.3f", n, k, idle)
		}
	}
	if got := (report.Settings{StreamsPerLane: 4}).StreamsText(); got != "4 streams per lane" {
		t.Errorf("per lane: %q", got)
	}
	if got := (report.Settings{Streams: 8}).StreamsText(); got != "8 streams" {
		t.Errorf("fixed: %q", got)
	}
}
