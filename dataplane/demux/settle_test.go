package demux

import (
	"encoding/binary"
	"sync"
	"testing"
	"time"

	"github.com/clusterpeer/clusterpeer/dataplane/packet"
	"github.com/clusterpeer/clusterpeer/flowhash"
	"github.com/clusterpeer/clusterpeer/tunnel/probe"
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

// TestLaneDownFencesTheBatchInFlight: a loop selects a batch's lanes
// before it sends; packets it gave a lane just before that lane failed
// must be in the socket before LaneHealth returns, because the prober
// sends its settle probe then and the probe's reply, crossing the lane
// behind them, is what ends the window.
func TestLaneDownFencesTheBatchInFlight(t *testing.T) {
	d := managedDemux(t, &fakeProber{})
	d.ApplyLanes(specs(1, 2, 3))
	for id := flowhash.LaneID(1); id <= 3; id++ {
		d.LaneHealth(probe.Change{Lane: id, Up: true, Reason: "up"})
	}
	bind := d.bind.(*fakeBind)
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	bind.block = func() {
		once.Do(func() { close(entered) })
		<-release
	}
	var pkts [][]byte
	for f := range 32 {
		pkts = append(pkts, udp4(t, uint16(5000+f), 0, 200))
	}
	bufs, sizes := load(d, pkts)
	forwarded := make(chan struct{})
	go func() { d.Forward(bufs, sizes, 0); close(forwarded) }()
	<-entered // the loop is sending its batch
	if d.fence(10 * time.Millisecond) {
		t.Error("fence passed while a loop was inside a batch")
	}
	returned := make(chan struct{})
	go func() {
		d.LaneHealth(probe.Change{Lane: 2, Reason: "administratively down", Delivers: true, Settle: time.Second})
		close(returned)
	}()
	select {
	case <-returned:
		t.Fatal("LaneHealth returned while a batch selected before the failure was still being sent")
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	<-forwarded
	select {
	case <-returned:
	case <-time.After(5 * time.Second):
		t.Fatal("LaneHealth still waiting after the batch was sent")
	}
	if !d.fence(time.Second) {
		t.Error("fence timed out with no loop inside a batch")
	}
}

// TestFinishedAfterTheSend: what the demux tells the XDP hand-over ledger
// (SetFinished). Each packet it read is told once, when the demux is done
// with it: a sent one after the send that carried it returned, a dropped
// one when dropped, a held one when it leaves after its lane's window,
// not before. The ledger lets the program send a flow's packets again
// only then, so a packet told early could be overtaken.
func TestFinishedAfterTheSend(t *testing.T) {
	d, _, bind := newTestDemux(t, 3)
	sel := d.cfg.Selector
	told := map[string]int{}
	d.SetFinished(func(pkt []byte) {
		bind.mu.Lock()
		defer bind.mu.Unlock()
		told[string(pkt)]++
		if len(pkt) < 28 || pkt[9] != 17 || binary.BigEndian.Uint16(pkt[2:4]) > 1420 {
			return // dropped: garbage, or too big
		}
		for _, frames := range bind.sent {
			for _, f := range frames {
				if _, inner, _ := packet.ParseGeneve(f); string(inner) == string(pkt) {
					return
				}
			}
		}
		t.Errorf("told of packet seq %d of flow %d before it was sent", binary.BigEndian.Uint32(pkt[28:32]), binary.BigEndian.Uint16(pkt[20:22]))
	})
	batch := func(seq int) [][]byte {
		var pkts [][]byte
		for f := range 32 {
			pkts = append(pkts, udp4(t, uint16(5000+f), uint32(seq), 200))
		}
		return pkts
	}
	forward := func(pkts [][]byte) {
		bufs, sizes := load(d, pkts)
		d.Forward(bufs, sizes, 0)
	}
	checkTold := func(when string, pkts [][]byte, want int) {
		t.Helper()
		for _, p := range pkts {
			if got := told[string(p)]; got != want {
				t.Errorf("%s: a packet of %d bytes told %d times, want %d", when, len(p), got, want)
			}
		}
	}

	first := append(batch(0), []byte{0x45, 0, 0}, udp4(t, 1, 0, 1500))
	forward(first)
	checkTold("sent, garbage, too big", first, 1)

	lane2 := map[uint16]bool{}
	for _, f := range bind.sent["10.1.0.22:6081"] {
		_, inner, _ := packet.ParseGeneve(f)
		lane2[binary.BigEndian.Uint16(inner[20:22])] = true
	}
	if err := sel.SetLanes([]flowhash.Lane{{ID: 1}, {ID: 2, State: flowhash.LaneDown, Settle: 100 * time.Millisecond}, {ID: 3}}); err != nil {
		t.Fatal(err)
	}
	during := batch(1)
	forward(during)
	var held, passed [][]byte
	for _, p := range during {
		if lane2[binary.BigEndian.Uint16(p[20:22])] {
			held = append(held, p)
		} else {
			passed = append(passed, p)
		}
	}
	if len(held) == 0 {
		t.Fatal("no flow on lane 2")
	}
	checkTold("during the window, other lanes' flows", passed, 1)
	checkTold("during the window, held", held, 0)
	time.Sleep(110 * time.Millisecond)
	forward(batch(2))
	checkTold("after the window, the held", held, 1)
}

// TestLaneDownFencesTheFastPath: a failed lane that may still deliver is
// probed (to end its settle window) only once the XDP maps no longer
// send into it: LaneHealth waits on the fast path's fence, with the
// window as its limit, before it returns, and says so in the lane-down
// line if the fence timed out. A lane that cannot deliver is not fenced.
func TestLaneDownFencesTheFastPath(t *testing.T) {
	d, _, _ := newTestDemux(t, 0)
	var limits []time.Duration
	var selVersion uint64
	d.UseLanes(LaneConfig{Prober: &fakeProber{}, DrainTimeout: time.Minute, DrainIdle: time.Second,
		FastPathFence: func(limit time.Duration) bool {
			limits = append(limits, limit)
			selVersion = d.cfg.Selector.Snapshot().Version
			return true
		}})
	d.ApplyLanes(specs(1, 2, 3))
	for id := flowhash.LaneID(1); id <= 3; id++ {
		d.LaneHealth(probe.Change{Lane: id, Up: true, Reason: "up"})
	}
	before := d.cfg.Selector.Snapshot().Version
	d.LaneHealth(probe.Change{Lane: 2, Reason: "administratively down", Delivers: true, Settle: 300 * time.Millisecond})
	if len(limits) != 1 || limits[0] != 300*time.Millisecond {
		t.Fatalf("fast path fenced with limits %v, want once with the window (300ms)", limits)
	}
	if selVersion <= before {
		t.Errorf("fenced at snapshot %d, before the failure's (%d was the one before)", selVersion, before)
	}
	d.LaneHealth(probe.Change{Lane: 3, Reason: "ICMP port unreachable: gateway gone", Settle: time.Millisecond})
	if len(limits) != 1 {
		t.Errorf("a lane that cannot deliver was fenced too: limits %v", limits)
	}
}
