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

// TestMetricSum: every series of one metric is added up, and a metric
// whose name only starts the same is not.
func TestMetricSum(t *testing.T) {
	body := `# HELP clusterpeer_xdp_lane_packets_total Inner packets.
# TYPE clusterpeer_xdp_lane_packets_total counter
clusterpeer_xdp_lane_packets_total{lane="1"} 1000
clusterpeer_xdp_lane_packets_total{lane="2"} 2.5e+03
clusterpeer_xdp_lane_packets_totals 7
clusterpeer_demux_packets_total 42
`
	if got := metricSum(body, "clusterpeer_xdp_lane_packets_total"); got != 3500 {
		t.Errorf("lane packets %v, want 3500", got)
	}
	if got := metricSum(body, "clusterpeer_demux_packets_total"); got != 42 {
		t.Errorf("demux packets %v", got)
	}
	if got := metricSum(body, "clusterpeer_missing_total"); got != 0 {
		t.Errorf("missing %v", got)
	}
}
