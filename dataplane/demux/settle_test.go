package demux

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/clusterpeer/clusterpeer/dataplane/packet"
	"github.com/clusterpeer/clusterpeer/flowhash"
)

// TestSettleHoldsAndReleasesInOrder: while a failed lane settles, its
// flows' packets are held, not sent and not lost; when the window ends
// they leave first, in order, on the flows' new lanes; other flows pass.
func TestSettleHoldsAndReleasesInOrder(t *testing.T) {
	d, _, bind := newTestDemux(t, 3)
	sel := d.cfg.Selector
	send := func(seq int) {
		var pkts [][]byte
		for f := range 32 {
			pkts = append(pkts, udp4(t, uint16(5000+f), uint32(seq), 200))
		}
		bufs, sizes := load(d, pkts)
		d.Forward(bufs, sizes, 0)
	}
	send(0)
	lane2 := map[uint16]bool{}
	for _, f := range bind.sent["10.1.0.22:6081"] {
		_, inner, _ := packet.ParseGeneve(f)
		lane2[binary.BigEndian.Uint16(inner[20:22])] = true
	}
	if len(lane2) == 0 {
		t.Fatal("no flow on lane 2")
	}
	clear(bind.sent)
	// Lane 2 fails with a 100 ms window.
	if err := sel.SetLanes([]flowhash.Lane{{ID: 1}, {ID: 2, State: flowhash.LaneDown, Settle: 100 * time.Millisecond}, {ID: 3}}); err != nil {
		t.Fatal(err)
	}
	send(1)
	send(2)
	if n := len(bind.sent["10.1.0.22:6081"]); n != 0 {
		t.Errorf("%d frames sent into the failed lane", n)
	}
	if got, want := d.C.Held.Load(), uint64(2*len(lane2)); got != want {
		t.Errorf("held %d, want %d", got, want)
	}
	for dst, frames := range bind.sent {
		for _, f := range frames {
			_, inner, _ := packet.ParseGeneve(f)
			if lane2[binary.BigEndian.Uint16(inner[20:22])] {
				t.Fatalf("a flow of the failed lane left for %s during its window", dst)
			}
		}
	}
	time.Sleep(110 * time.Millisecond)
	send(3) // the window is over: held packets (seq 1, 2) first, then 3
	next := map[uint16]uint32{}
	for port := range lane2 {
		next[port] = 1
	}
	for dst, frames := range bind.sent {
		for _, f := range frames {
			_, inner, _ := packet.ParseGeneve(f)
			port, seq := binary.BigEndian.Uint16(inner[20:22]), binary.BigEndian.Uint32(inner[28:32])
			if !lane2[port] {
				continue
			}
			if dst == "10.1.0.22:6081" {
				t.Fatalf("flow %d still sent to the failed lane", port)
			}
			if seq != next[port] {
				t.Errorf("flow %d: seq %d, want %d", port, seq, next[port])
			}
			next[port] = seq + 1
		}
	}
	for port, n := range next {
		if n != 4 {
			t.Errorf("flow %d: %d of its 3 packets after the failure arrived", port, n-1)
		}
	}
	if d.C.Drops[flowhash.DropSettling].Load() != 0 {
		t.Errorf("%d dropped while settling", d.C.Drops[flowhash.DropSettling].Load())
	}
}

func TestForwardAllocsNothingWhileSettling(t *testing.T) {
	d, _, bind := newTestDemux(t, 3)
	bind.record = false
	var pkts [][]byte
	for f := range 32 {
		pkts = append(pkts, udp4(t, uint16(5000+f), 0, 200))
	}
	bufs, sizes := load(d, pkts)
	d.Forward(bufs, sizes, 0)
	d.cfg.Selector.SetLanes([]flowhash.Lane{{ID: 1}, {ID: 2, State: flowhash.LaneDown, Settle: time.Hour}, {ID: 3}})
	// The failure's spares are built in the background; AllocsPerRun
	// counts every goroutine's allocations.
	for deadline := time.Now().Add(10 * time.Second); !d.cfg.Selector.SparesReady(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("spares not built in 10 s")
		}
	}
	if n := testing.AllocsPerRun(50, func() {
		bufs, sizes := load(d, pkts)
		d.Forward(bufs, sizes, 0)
		d.held.n.Store(0) // keep room: the window never ends here
	}); n != 0 {
		t.Errorf("%v allocations per batch", n)
	}
}
