//go:build linux

package xdp

import (
	"net"
	"testing"
	"time"

	"github.com/clusterpeer/clusterpeer/flowhash"
)

const testPins = 512

// sprayPacket is the i-th packet of a spray: each a new UDP 5-tuple.
func sprayPacket(t testing.TB, i int) []byte {
	f := flow{src: net.IP{10, 1, byte(i >> 8), byte(i)}, dst: net.IP{10, 2, 7, 7}, proto: 17, sport: uint16(1024 + i), dport: 9}
	return f.packet(t, 0, 64)
}

// laneOf runs one packet through the program and returns the lane it
// sent it into.
func laneOf(t testing.TB, p *Program, pkt []byte) flowhash.LaneID {
	t.Helper()
	v, out := run(t, p.DemuxProgram(), eth(pkt))
	if v != xdpTX {
		t.Fatalf("verdict %d, want XDP_TX", v)
	}
	return flowhash.LaneID(decodeEncap(t, out).ip.DstIP.To4()[3] - 20)
}

// TestPinSprayMovesNoEstablishedFlow: established flows, some living on
// their pins alone (a lane was added after they started), keep their
// lanes through a spray of new 5-tuples ten times the pin map's size.
// The map fills and new flows go unpinned (counted) instead of a kernel
// LRU pushing established pins out; the sweep deletes pins the table
// agrees with, whose flows stay where they are, so room comes back.
func TestPinSprayMovesNoEstablishedFlow(t *testing.T) {
	cfg := Config{Key: testKey, Symmetric: true, PinFlows: testPins}
	p := loadTest(t, cfg)
	p.pins.pressure = 0 // the test's flows are all seconds young
	sel := newSelector(t, cfg, 1, 2, 3)
	if err := p.Publish(sel.Snapshot(), testTargets(1, 2, 3, 4)); err != nil {
		t.Fatal(err)
	}
	established := make([][]byte, 40)
	was := make([]flowhash.LaneID, len(established))
	for i := range established {
		established[i] = flow{src: net.IP{10, 1, 200, byte(i)}, dst: net.IP{10, 2, 0, 10}, proto: 6, sport: uint16(40000 + i), dport: 5201}.packet(t, 100, 64)
		was[i] = laneOf(t, p, established[i])
	}
	if err := sel.SetLanes([]flowhash.Lane{{ID: 1}, {ID: 2}, {ID: 3}, {ID: 4}}); err != nil {
		t.Fatal(err)
	}
	if err := p.Publish(sel.Snapshot(), testTargets(1, 2, 3, 4)); err != nil {
		t.Fatal(err)
	}
	onPins := 0
	for i, pkt := range established {
		var tu flowhash.Tuple
		tu.Decode(pkt)
		if sel.Snapshot().Table.Lookup(sel.Hasher().Sum(&tu)) != was[i] {
			onPins++
		}
	}
	if onPins == 0 {
		t.Fatal("no established flow lives on its pin alone: the test shows nothing")
	}

	for i := range 10 * testPins {
		laneOf(t, p, sprayPacket(t, i))
		if i%64 == 63 {
			if err := p.SweepPins(); err != nil {
				t.Fatal(err)
			}
		}
		// The established flows go on, a packet each per four maps'
		// worth of spray flows (with the kernel LRU map the program had,
		// and no sweep, established flow 1 moved at the first check:
		// the LRU had pushed its pin out).
		if i%(4*testPins) == 4*testPins-1 {
			for j, pkt := range established {
				if got := laneOf(t, p, pkt); got != was[j] {
					t.Fatalf("after %d spray flows, established flow %d moved from lane %d to %d", i+1, j, was[j], got)
				}
			}
		}
	}
	st, err := p.PinStats()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d established flows (%d on their pins alone) kept their lanes through %d new flows: %+v", len(established), onPins, 10*testPins, st)
	if st.Unpinned == 0 || st.Evicted == 0 || st.Held > testPins || st.Held < 0 {
		t.Errorf("pins %+v: want the map filled (unpinned > 0), agreeing pins swept (evicted > 0), held within capacity", st)
	}
}

// TestPinSweepDeletesIdle: idle pins go once the map is a quarter full,
// and not before.
func TestPinSweepDeletesIdle(t *testing.T) {
	cfg := Config{Key: testKey, Symmetric: true, PinFlows: testPins}
	p := loadTest(t, cfg)
	sel := newSelector(t, cfg, 1, 2, 3)
	if err := p.Publish(sel.Snapshot(), testTargets(1, 2, 3)); err != nil {
		t.Fatal(err)
	}
	p.pins.otherIdle = 0 // a second without a packet is idle, for the sweep
	sweep := func() PinStats {
		t.Helper()
		for range 2 * sweepChunks {
			if err := p.SweepPins(); err != nil {
				t.Fatal(err)
			}
		}
		st, err := p.PinStats()
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	for i := range testPins/4 - 1 {
		laneOf(t, p, sprayPacket(t, i))
	}
	time.Sleep(1100 * time.Millisecond)
	if st := sweep(); st.Held != testPins/4-1 || st.Expired != 0 {
		t.Fatalf("below a quarter full: %+v, want nothing swept", st)
	}
	for i := testPins / 4; i < testPins/2; i++ {
		laneOf(t, p, sprayPacket(t, i))
	}
	time.Sleep(1100 * time.Millisecond)
	if st := sweep(); st.Held != 0 || st.Expired != testPins/2-1 || st.Evicted != 0 {
		t.Fatalf("half full, all idle: %+v, want all %d swept as idle", st, testPins/2-1)
	}
}

// BenchmarkSweepPins is one sweep call (1/32 of the map) on the default
// million-pin map, half full of live pins: what a 100 ms tick of the map
// sync costs under that load (below a quarter full a tick reads two
// counters and stops).
func BenchmarkSweepPins(b *testing.B) {
	cfg := Config{Key: testKey, Symmetric: true, PinFlows: flowhash.DefaultPinCapacity}
	p := loadTest(b, cfg)
	sel := newSelector(b, cfg, 1, 2, 3)
	if err := p.Publish(sel.Snapshot(), testTargets(1, 2, 3)); err != nil {
		b.Fatal(err)
	}
	n := flowhash.DefaultPinCapacity / 2
	keys, vals := make([]demuxWords, n), make([]demuxPin, n)
	now := monotonicSeconds()
	for i := range keys {
		keys[i].W[0] = uint64(i) + 1
		vals[i] = demuxPin{Gen: 1, LastSeen: now, Lane: uint16(1 + i%3)}
	}
	if _, err := p.objs.Pins.BatchUpdate(keys, vals, nil); err != nil {
		b.Fatal(err)
	}
	// The program's insert count is what says how full the map is.
	var per []uint64
	if err := p.objs.PinStats.Lookup(uint32(0), &per); err != nil {
		b.Fatal(err)
	}
	per[0] = uint64(n)
	if err := p.objs.PinStats.Put(uint32(0), per); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := p.SweepPins(); err != nil {
			b.Fatal(err)
		}
	}
	if st, _ := p.PinStats(); st.Held != n {
		b.Fatalf("the sweep deleted live pins below pressure: %+v", st)
	}
}

// TestPinCountsPackets: the program counts each pinned flow's packets,
// and Pin and EachPin read them by the flow's words.
func TestPinCountsPackets(t *testing.T) {
	cfg := Config{Key: testKey, Symmetric: true, PinFlows: testPins}
	p := loadTest(t, cfg)
	sel := newSelector(t, cfg, 1, 2, 3)
	if err := p.Publish(sel.Snapshot(), testTargets(1, 2, 3)); err != nil {
		t.Fatal(err)
	}
	want := map[flowhash.Words]uint64{}
	for i := range 12 {
		pkt := flow{src: net.IP{10, 1, 0, byte(i)}, dst: net.IP{10, 2, 0, 10}, proto: 6, sport: uint16(40000 + i), dport: 5201}.packet(t, 100, 64)
		lane := laneOf(t, p, pkt)
		for range i {
			if got := laneOf(t, p, pkt); got != lane {
				t.Fatalf("flow %d moved", i)
			}
		}
		var tu flowhash.Tuple
		tu.Decode(pkt)
		w := sel.Hasher().Words(&tu)
		want[w] = uint64(i + 1)
		fp, ok := p.Pin(w)
		if !ok || fp.Packets != uint64(i+1) || fp.Lane != lane || fp.Idle > time.Second {
			t.Errorf("flow %d: pin %+v %v, want %d packets on lane %d", i, fp, ok, i+1, lane)
		}
	}
	seen := 0
	if err := p.EachPin(func(fp FlowPin) {
		seen++
		if fp.Packets != want[fp.Words] {
			t.Errorf("EachPin: %v has %d packets, want %d", fp.Words.Tuple(), fp.Packets, want[fp.Words])
		}
	}); err != nil {
		t.Fatal(err)
	}
	if seen != len(want) {
		t.Errorf("EachPin saw %d pins, want %d", seen, len(want))
	}
}
