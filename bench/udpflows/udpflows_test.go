package udpflows

import (
	"net/netip"
	"testing"
	"time"
)

// TestOutageLeavesOutTheSendersPauses: a sender that pauses makes an
// arrival gap but no outage; lost packets and held-back packets make an
// outage of the time they were missing.
func TestOutageLeavesOutTheSendersPauses(t *testing.T) {
	const iv = time.Millisecond
	t0 := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	from := netip.MustParseAddrPort("10.1.0.10:4000")
	for _, c := range []struct {
		name   string
		send   func(seq int) (sent time.Time, ok bool, delay time.Duration)
		outage time.Duration
		gap    time.Duration
	}{
		{"steady", func(seq int) (time.Time, bool, time.Duration) {
			return t0.Add(time.Duration(seq) * iv), true, 0
		}, iv, iv},
		{"the sender paused 40 ms before packet 50", func(seq int) (time.Time, bool, time.Duration) {
			at := t0.Add(time.Duration(seq) * iv)
			if seq >= 50 {
				at = at.Add(40 * time.Millisecond)
			}
			return at, true, 0
		}, iv, 41 * time.Millisecond},
		{"packets 50-59 lost", func(seq int) (time.Time, bool, time.Duration) {
			return t0.Add(time.Duration(seq) * iv), seq < 50 || seq >= 60, 0
		}, 11 * iv, 11 * iv},
		{"packets 50-59 held 20 ms", func(seq int) (time.Time, bool, time.Duration) {
			d := time.Duration(0)
			if seq >= 50 && seq < 60 {
				d = 20*time.Millisecond - time.Duration(seq-50)*iv // released together
			}
			return t0.Add(time.Duration(seq) * iv), true, d
		}, 21 * iv, 21 * iv},
	} {
		r := &Receiver{flows: map[int]*flowState{}, Interval: iv}
		for seq := range 100 {
			sent, ok, delay := c.send(seq)
			if ok {
				r.add(0, uint64(seq), from, sent.Add(300*time.Microsecond+delay), sent)
			}
		}
		f := r.flows[0]
		if d := f.LongestOutage - c.outage; d < -50*time.Microsecond || d > 50*time.Microsecond {
			t.Errorf("%s: outage %v, want %v", c.name, f.LongestOutage, c.outage)
		}
		if f.LongestGap != c.gap {
			t.Errorf("%s: gap %v, want %v", c.name, f.LongestGap, c.gap)
		}
	}
}
