package harness

import (
	"math"
	"testing"
	"time"

	"github.com/clusterpeer/clusterpeer/bench/cgroup"
)

func TestComponent(t *testing.T) {
	for in, want := range map[string]string{"gw-a1": "gw-a", "gw-b12": "gw-b", "demux-a": "demux-a", "iperf3-client": "iperf3-client", "gw-": "gw-"} {
		if got := component(in); got != want {
			t.Errorf("component(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseProcStat(t *testing.T) {
	h, err := parseProcStat("cpu  100 5 50 800 45 0 0 0 0 0\ncpu0 50 2 25 400 20 0 0 0 0 0\n")
	if err != nil || h.total != 1000 || h.idle != 845 {
		t.Errorf("%+v %v", h, err)
	}
	for _, bad := range []string{"", "intr 1 2 3", "cpu 1 2 x 4 5"} {
		if _, err := parseProcStat(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

// TestUsage: two lane gateways of side a add up as gw-a; a component's
// throttled share is over all its periods; host busy from /proc/stat.
func TestUsage(t *testing.T) {
	t0 := time.Unix(100, 0)
	a := snap{at: t0, host: hostCPU{total: 1000, idle: 800}, groups: map[string]cgroup.Stat{
		"gw-a1":   {Usage: time.Second, Periods: 100, Throttled: 10},
		"gw-a2":   {Usage: 0, Periods: 0, Throttled: 0},
		"demux-a": {Usage: 0},
	}}
	b := snap{at: t0.Add(2 * time.Second), host: hostCPU{total: 1400, idle: 900}, groups: map[string]cgroup.Stat{
		"gw-a1":         {Usage: 1200 * time.Millisecond, Periods: 300, Throttled: 160},
		"gw-a2":         {Usage: 200 * time.Millisecond, Periods: 200, Throttled: 50},
		"demux-a":       {Usage: time.Second},
		"iperf3-client": {Usage: time.Second}, // not in the first snapshot: left out
	}}
	cpus, thr, busy := usage(a, b)
	near := func(x, y float64) bool { return math.Abs(x-y) < 1e-9 }
	if !near(cpus["gw-a"], 0.2) || !near(cpus["demux-a"], 0.5) || len(cpus) != 2 {
		t.Errorf("cpus %v", cpus)
	}
	if !near(thr["gw-a"], 200.0/400) || !near(busy, 0.75) {
		t.Errorf("throttled %v busy %v", thr, busy)
	}
}
