package soak

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestFlowSourcesAreDistinct(t *testing.T) {
	seen := map[netip.AddrPort]uint32{}
	for f := uint32(0); f < 400_000; f++ {
		a, p := flowSource(f)
		ap := netip.AddrPortFrom(a, p)
		if g, dup := seen[ap]; dup {
			t.Fatalf("flows %d and %d share %s", g, f, ap)
		}
		seen[ap] = f
		if b := a.As4(); b[0] != 10 || b[1] != 1 || b[2] < 200 || p < 1024 {
			t.Fatalf("flow %d from %s: want network A's 10.1.200.0 on, a port from 1024", f, ap)
		}
	}
}

func TestGrowthAfterWarmUp(t *testing.T) {
	at := func(i int) time.Duration { return time.Duration(i) * 10 * time.Second }
	var flat, growing []Sample
	for i := range 12 {
		// Memory rises during warm-up (pins fill), then holds; one node
		// leaks a goroutine and a descriptor a sample after warm-up.
		flat = append(flat, Sample{At: at(i), RSS: uint64(min(i, 3)) * 10 << 20, Goroutines: 20, FDs: 40})
		growing = append(growing, Sample{At: at(i), RSS: 100 << 20, Goroutines: 20 + max(i-3, 0), FDs: 40 + max(i-3, 0)})
	}
	flat[9].Goroutines = 90 // a passing burst (a reload) is not growth
	flat[4].Goroutines = 17 // nor a passing dip just after warm-up
	flat[10].FDs = 41
	r := Result{Samples: map[string][]Sample{"demux-a": flat, "gw-a1": growing}}
	r.growth(30 * time.Second)
	if r.RSSGrowthPct != 0 || r.GoroutineGrowth != 6 || r.FDGrowth != 6 || r.Worst["goroutines"] != "gw-a1" {
		t.Fatalf("growth %+v", r)
	}

	// A heap finding its size: memory rises until the node's second
	// collection (at 60 s, past the 30 s warm-up), then holds; a node
	// that never collects twice is judged from 30 s.
	var sizing, never []Sample
	for i := range 12 {
		gcs := uint64(3 + min(i/3, 2)) // collections at 30 s and 60 s
		sizing = append(sizing, Sample{At: at(i), RSS: uint64(50+10*min(i, 6)) << 20, GCs: gcs, Goroutines: 20, FDs: 40})
		never = append(never, Sample{At: at(i), RSS: uint64(50+10*min(i, 6)) << 20, GCs: 3, Goroutines: 20, FDs: 40})
	}
	r = Result{Samples: map[string][]Sample{"demux-a": sizing}}
	r.growth(30 * time.Second)
	if r.RSSGrowthPct != 0 || r.WarmedUp["demux-a"] != 60*time.Second {
		t.Errorf("a heap finding its size: growth %.1f%%, warmed up at %s; want 0 at 1m0s", r.RSSGrowthPct, r.WarmedUp["demux-a"])
	}
	r = Result{Samples: map[string][]Sample{"demux-a": never}}
	r.growth(30 * time.Second)
	if r.RSSGrowthPct < 10 || r.WarmedUp["demux-a"] != 30*time.Second {
		t.Errorf("no second collection: growth %.1f%% from %s; want it judged from 30s", r.RSSGrowthPct, r.WarmedUp["demux-a"])
	}
	r = Result{Samples: map[string][]Sample{"demux-a": flat, "gw-a1": growing}}
	r.growth(30 * time.Second)
	r.Lost, r.Received = 3, 100
	if p := strings.Join(r.Problems(), "; "); !strings.Contains(p, "3 packets lost") || !strings.Contains(p, "gw-a1 has 6 more goroutines") {
		t.Errorf("problems: %s", p)
	}
	r = Result{Minutes: 10, Flows: 100000, RSSGrowthPct: 1.25, Received: 1}
	if got, want := r.Line(), "soak: minutes=10.0 flows=100000 rss_growth_pct=1.2 goroutine_growth=0 fd_growth=0 lost=0"; got != want {
		t.Errorf("line %q, want %q", got, want)
	}
	if p := r.Problems(); len(p) != 0 {
		t.Errorf("a clean run has problems: %v", p)
	}
}

func TestReceiverCountsLoss(t *testing.T) {
	r := &receiver{got: make([]flowCount, 3)}
	r.got[0] = flowCount{received: 10, next: 10} // all
	r.got[1] = flowCount{received: 7, next: 10}  // 3 missing below the highest
	r.got[2] = flowCount{}                       // never sent
	if got, lost := r.result(); got != 17 || lost != 3 {
		t.Errorf("received %d lost %d, want 17 and 3", got, lost)
	}
}

func TestConfigChecked(t *testing.T) {
	for _, c := range []Config{{Flows: 5, Duration: time.Hour}, {Flows: 1000, Duration: 50 * time.Second}, {Flows: 1000, Duration: time.Hour, Period: time.Microsecond}} {
		if err := c.defaults(); err == nil {
			t.Errorf("%+v: accepted", c)
		}
	}
	c := Config{Flows: 1000, Duration: 10 * time.Minute}
	if err := c.defaults(); err != nil || c.WarmUp != 2*time.Minute || c.Lanes != 3 {
		t.Errorf("defaults: %+v %v", c, err)
	}
}
