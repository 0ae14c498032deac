package flowhash

import (
	"encoding/binary"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func mustSelector(t testing.TB, lanes ...Lane) *Selector {
	t.Helper()
	s, err := New(Config{Key: testKey, Pins: PinConfig{Capacity: 1 << 16}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetLanes(lanes); err != nil {
		t.Fatal(err)
	}
	return s
}

func upLanes(ids ...LaneID) []Lane {
	var ls []Lane
	for _, id := range ids {
		ls = append(ls, Lane{ID: id, Weight: 1})
	}
	return ls
}

func flowTuple(i int) Tuple {
	tu := Tuple{Src: hostA4.As16(), Dst: hostB4.As16(), Proto: ProtoUDP, SrcPort: uint16(i), DstPort: 4000 + uint16(i>>16)}
	binary.BigEndian.PutUint16(tu.Src[14:], uint16(i>>3)) // vary hosts too
	return tu
}

// selectAll returns the lane of each of n flows.
func selectAll(t testing.TB, s *Selector, n int, now uint32) []LaneID {
	t.Helper()
	out := make([]LaneID, n)
	for i := range out {
		tu := flowTuple(i)
		lane, d := s.SelectTuple(&tu, now)
		if d != DropNone {
			t.Fatalf("flow %d: %v", i, d)
		}
		out[i] = lane
	}
	return out
}

const nFlows = 20000

func TestSelectNoLanes(t *testing.T) {
	s := mustSelector(t)
	tu := flowTuple(1)
	if _, d := s.SelectTuple(&tu, 0); d != DropNoLane {
		t.Fatalf("no lanes: %v", d)
	}
	if _, d := s.Select([]byte{0x45}, 0); d != DropTruncated {
		t.Fatalf("garbage: %v", d)
	}
	pkt := namedSpecs()[0].spec.build()
	if err := s.SetLanes(upLanes(4)); err != nil {
		t.Fatal(err)
	}
	if lane, d := s.Select(pkt, 0); lane != 4 || d != DropNone {
		t.Fatalf("Select = %d, %v", lane, d)
	}
}

// A lane dies: exactly its flows move, all onto survivors; nothing else moves.
func TestLaneDownMovesOnlyItsFlows(t *testing.T) {
	s := mustSelector(t, upLanes(1, 2, 3, 4)...)
	before := selectAll(t, s, nFlows, 0)
	lanes := upLanes(1, 2, 3, 4)
	lanes[2].State = LaneDown
	if err := s.SetLanes(lanes); err != nil {
		t.Fatal(err)
	}
	after := selectAll(t, s, nFlows, 1)
	onDead := 0
	for i := range before {
		switch {
		case before[i] == 3:
			onDead++
			if after[i] == 3 {
				t.Fatalf("flow %d still on the dead lane", i)
			}
		case after[i] != before[i]:
			t.Fatalf("flow %d moved from live lane %d to %d", i, before[i], after[i])
		}
	}
	if onDead < nFlows/8 {
		t.Fatalf("only %d of %d flows were on lane 3", onDead, nFlows)
	}
}

// Lanes are added, or come back: pinned flows stay where they are, and new
// flows reach the new lane.
func TestLaneAddedOrBackMovesNoPinnedFlow(t *testing.T) {
	s := mustSelector(t, upLanes(1, 2, 3, 4)...)
	before := selectAll(t, s, nFlows, 0)
	if err := s.SetLanes(upLanes(1, 2, 3, 4, 5)); err != nil {
		t.Fatal(err)
	}
	if after := selectAll(t, s, nFlows, 1); !equalLanes(t, before, after) {
		t.Fatal("adding lane 5 moved pinned flows")
	}
	// Without pins (a standby demux), Maglev alone would have moved some.
	fresh := mustSelector(t, upLanes(1, 2, 3, 4, 5)...)
	newFlows := 0
	for i, l := range selectAll(t, fresh, nFlows, 0) {
		if l == 5 {
			newFlows++
		} else if l != before[i] {
			t.Logf("flow %d: table alone would move it %d -> %d", i, before[i], l)
		}
	}
	if newFlows < nFlows/8 {
		t.Fatalf("lane 5 would take only %d of %d new flows", newFlows, nFlows)
	}

	// Lane 2 dies and comes back: its flows went to survivors and stay there.
	lanes := upLanes(1, 2, 3, 4, 5)
	lanes[1].State = LaneDown
	if err := s.SetLanes(lanes); err != nil {
		t.Fatal(err)
	}
	moved := selectAll(t, s, nFlows, 2)
	if err := s.SetLanes(upLanes(1, 2, 3, 4, 5)); err != nil {
		t.Fatal(err)
	}
	if back := selectAll(t, s, nFlows, 3); !equalLanes(t, moved, back) {
		t.Fatal("lane 2 coming back moved pinned flows")
	}
}

func equalLanes(t *testing.T, a, b []LaneID) bool {
	n := 0
	for i := range a {
		if a[i] != b[i] {
			if n++; n <= 3 {
				t.Logf("flow %d: lane %d -> %d", i, a[i], b[i])
			}
		}
	}
	return n == 0
}

// A draining lane keeps its pinned flows and takes no new ones; set down,
// its flows move.
func TestDrainingLane(t *testing.T) {
	s := mustSelector(t, upLanes(1, 2, 3)...)
	before := selectAll(t, s, nFlows/2, 0)
	lanes := upLanes(1, 2, 3)
	lanes[1].State = LaneDraining
	if err := s.SetLanes(lanes); err != nil {
		t.Fatal(err)
	}
	if after := selectAll(t, s, nFlows/2, 1); !equalLanes(t, before, after) {
		t.Fatal("draining moved pinned flows")
	}
	for i, l := range selectAll(t, s, nFlows, 1)[nFlows/2:] { // new flows
		if l == 2 {
			t.Fatalf("new flow %d went to the draining lane", nFlows/2+i)
		}
	}
	lanes[1].State = LaneDown
	if err := s.SetLanes(lanes); err != nil {
		t.Fatal(err)
	}
	for i, l := range selectAll(t, s, nFlows/2, 2) {
		if l == 2 || before[i] != 2 && l != before[i] {
			t.Fatalf("flow %d: %d -> %d after the drained lane went down", i, before[i], l)
		}
	}
}

// Pins expire: after the idle timeout a flow follows the table again.
func TestPinExpiryReturnsFlowsToTheTable(t *testing.T) {
	s := mustSelector(t, upLanes(1, 2, 3, 4)...)
	before := selectAll(t, s, nFlows, 0)
	if err := s.SetLanes(upLanes(1, 2, 3, 4, 5)); err != nil {
		t.Fatal(err)
	}
	later := selectAll(t, s, nFlows, uint32(DefaultOtherIdle.Seconds())+1)
	want := selectAll(t, mustSelector(t, upLanes(1, 2, 3, 4, 5)...), nFlows, 0)
	if !equalLanes(t, later, want) {
		t.Fatal("idle flows did not return to the table's choice")
	}
	if equalLanes(t, before, later) {
		t.Fatal("test needs some flows that the new table maps elsewhere")
	}
}

// Two demuxes with the same config choose the same lanes for new flows.
func TestTwoSelectorsAgree(t *testing.T) {
	a := mustSelector(t, upLanes(9, 3, 17)...)
	b := mustSelector(t, upLanes(17, 9, 3)...)
	if !equalLanes(t, selectAll(t, a, nFlows, 0), selectAll(t, b, nFlows, 0)) {
		t.Fatal("same config, different choices")
	}
}

func TestSymmetricSelectorBothDirections(t *testing.T) {
	s, err := New(Config{Key: testKey, Symmetric: true, Pins: PinConfig{Capacity: 1 << 12}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetLanes(upLanes(1, 2, 3, 4, 5, 6, 7, 8)); err != nil {
		t.Fatal(err)
	}
	for i := range 2000 {
		fwd := flowTuple(i)
		rev := fwd.Reverse()
		a, _ := s.SelectTuple(&fwd, 0)
		b, _ := s.SelectTuple(&rev, 0)
		if a != b {
			t.Fatalf("flow %d: forward on lane %d, reverse on %d", i, a, b)
		}
	}
}

func TestSetLanesRejectsWholeAndKeepsState(t *testing.T) {
	s := mustSelector(t, upLanes(1, 2)...)
	v := s.Snapshot().Version
	for _, tc := range []struct {
		lanes []Lane
		want  string
	}{
		{[]Lane{{ID: 1}, {ID: 1}}, "listed twice"},
		{[]Lane{{ID: 0}}, "lane id 0"},
		{[]Lane{{ID: 5000}}, "lane id 5000"},
		{[]Lane{{ID: 1, State: 9}}, "unknown state"},
		{[]Lane{{ID: 1, Weight: 1 << 20}}, "weight"},
		{upLanesN(700), "below 100 x 700"},
	} {
		err := s.SetLanes(tc.lanes)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("SetLanes: err = %v, want %q", err, tc.want)
		}
	}
	if s.Snapshot().Version != v || len(s.Snapshot().Lanes) != 2 {
		t.Fatal("a rejected lane set changed the selector")
	}
	for _, cfg := range []Config{{TableSize: 65536}, {Mode: 7}, {Pins: PinConfig{Capacity: 1}}} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}

func upLanesN(n int) []Lane {
	var ls []Lane
	for i := 1; i <= n; i++ {
		ls = append(ls, Lane{ID: LaneID(i)})
	}
	return ls
}

// Readers select while lanes flap: every choice is a lane that was up in
// some snapshot, and readers never block.
func TestSelectWhileLanesChange(t *testing.T) {
	s := mustSelector(t, upLanes(1, 2, 3, 4)...)
	var stop atomic.Bool
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				tu := flowTuple(i%5000 + g*5000)
				lane, d := s.SelectTuple(&tu, uint32(i>>12))
				if d != DropNone || lane < 1 || lane > 4 {
					t.Errorf("lane %d, %v", lane, d)
					return
				}
			}
		}()
	}
	for i := range 200 {
		lanes := upLanes(1, 2, 3, 4)
		lanes[i%4].State = LaneState(i % 3)
		if err := s.SetLanes(lanes); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
}

func TestSelectDoesNotAllocate(t *testing.T) {
	s := mustSelector(t, upLanes(1, 2, 3, 4)...)
	pkts := [][]byte{}
	for _, n := range namedSpecs() {
		pkts = append(pkts, n.spec.build())
	}
	i := 0
	if a := testing.AllocsPerRun(1000, func() {
		s.Select(pkts[i%len(pkts)], uint32(i))
		i++
	}); a != 0 {
		t.Fatalf("Select allocates %.1f times per packet", a)
	}
}

// TestPinSprayMovesNoEstablishedFlow: after a lane is added, the
// established flows the new table would send elsewhere live on their
// pins alone. A spray of new 5-tuples many times the table's capacity
// then evicts pins that agree with the table (its own, and established
// flows' whose lane the table still gives them), never those: no
// established flow changes lane. (Least-recently-seen eviction alone
// moved 26 of 64 such flows.)
func TestPinSprayMovesNoEstablishedFlow(t *testing.T) {
	s, err := New(Config{Key: testKey, Pins: PinConfig{Capacity: 1 << 10}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetLanes(upLanes(1, 2, 3)); err != nil {
		t.Fatal(err)
	}
	const established = 64
	before := selectAll(t, s, established, 0)
	if err := s.SetLanes(upLanes(1, 2, 3, 4)); err != nil {
		t.Fatal(err)
	}
	fresh := mustSelector(t, upLanes(1, 2, 3, 4)...)
	kept := 0
	for i, l := range selectAll(t, fresh, established, 0) {
		if l != before[i] {
			kept++ // on its pin only
		}
	}
	if kept == 0 {
		t.Fatal("no established flow disagrees with the new table: the test proves nothing")
	}
	for now := uint32(1); now <= 20; now++ {
		for i := range 1000 { // 20 x capacity of new flows, while the established ones send
			tu := flowTuple(100000 + int(now)*1000 + i)
			s.SelectTuple(&tu, now)
		}
		for i, l := range selectAll(t, s, established, now) {
			if l != before[i] {
				t.Fatalf("second %d: established flow %d moved from lane %d to %d", now, i, before[i], l)
			}
		}
	}
	st := s.Pins().Stats()
	if st.Evictions == 0 || st.Moved != 0 {
		t.Errorf("%+v: want evictions, none that moved a flow", st)
	}
	t.Logf("%d established flows on their pins only; %d evictions, %d moved", kept, st.Evictions, st.Moved)
}

// TestNewFlowIntoFullTableAllocs: a new flow into a full pin table (the
// eviction that hashes its candidates) allocates nothing.
func TestNewFlowIntoFullTableAllocs(t *testing.T) {
	s, err := New(Config{Key: testKey, Pins: PinConfig{Capacity: 1 << 10}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetLanes(upLanes(1, 2, 3)); err != nil {
		t.Fatal(err)
	}
	for i := range 1 << 12 {
		tu := flowTuple(i)
		s.SelectTuple(&tu, 0)
	}
	before := s.Pins().Stats().Evictions
	i := 1 << 12
	allocs := testing.AllocsPerRun(1000, func() {
		tu := flowTuple(i)
		i++
		s.SelectTuple(&tu, 0)
	})
	if s.Pins().Stats().Evictions == before {
		t.Fatal("no eviction: the table was not full")
	}
	if allocs != 0 {
		t.Errorf("%v allocs per new flow into a full table", allocs)
	}
}

// A new flow-hash key (a rotated secret): every established flow stays on
// its pinned lane; new flows take the lanes the new key's table gives, as
// a selector started with that key chooses them; a lane that dies
// afterwards moves only its own flows, through spares built with the new
// key.
func TestSetKeyMovesOnlyNewFlows(t *testing.T) {
	s := mustSelector(t, upLanes(1, 2, 3, 4)...)
	before := selectAll(t, s, nFlows, 0)
	newKey := Key{0xfe, 0xed}
	if err := s.SetKey(newKey); err != nil {
		t.Fatal(err)
	}
	if !s.SparesReady() {
		t.Fatal("no spares for the new key's table")
	}
	if after := selectAll(t, s, nFlows, 1); !slicesEqual(after, before) {
		t.Fatal("an established flow changed lane with the key")
	}
	fresh, err := New(Config{Key: newKey, Pins: PinConfig{Capacity: 1 << 16}})
	if err != nil {
		t.Fatal(err)
	}
	fresh.SetLanes(upLanes(1, 2, 3, 4))
	old := mustSelector(t, upLanes(1, 2, 3, 4)...)
	differ := 0
	for i := nFlows; i < 2*nFlows; i++ {
		tu := flowTuple(i)
		got, _ := s.SelectTuple(&tu, 1)
		want, _ := fresh.SelectTuple(&tu, 1)
		if got != want {
			t.Fatalf("new flow %d: lane %d, the new key's table gives %d", i, got, want)
		}
		if was, _ := old.SelectTuple(&tu, 1); was != got {
			differ++
		}
	}
	if differ < nFlows/2 {
		t.Fatalf("only %d of %d new flows take another lane under the new key: the key did not change the table", differ, nFlows)
	}
	lanes := upLanes(1, 2, 3, 4)
	lanes[1].State = LaneDown
	if err := s.SetLanes(lanes); err != nil {
		t.Fatal(err)
	}
	after := selectAll(t, s, nFlows, 2)
	for i := range before {
		if before[i] != 2 && after[i] != before[i] {
			t.Fatalf("flow %d moved from live lane %d to %d when lane 2 died", i, before[i], after[i])
		}
		if after[i] == 2 {
			t.Fatalf("flow %d still on the dead lane", i)
		}
	}
	if s.SetKey(newKey) != nil || s.Hasher() != fresh.Hasher() {
		t.Error("the same key again changed the hasher")
	}
}

func TestExplain(t *testing.T) {
	s := mustSelector(t, upLanes(1, 2, 3)...)
	now := s.Pins().Now()
	// A flow never seen: the table decides, and looking pins nothing.
	var fresh Tuple
	for i := 0; ; i++ {
		fresh = flowTuple(i)
		if c := s.Explain(&fresh); c.Lane == 3 {
			if c.Pinned || c.Table != 3 || c.Settling || c.PinnedTo != 0 {
				t.Fatalf("a new flow: %+v", c)
			}
			break
		}
	}
	if c := s.Explain(&fresh); c.Pinned {
		t.Fatalf("Explain pinned the flow: %+v", c)
	}
	// Seen once: pinned to its lane.
	if lane, _ := s.SelectTuple(&fresh, now); lane != 3 {
		t.Fatalf("selected lane %d", lane)
	}
	if c := s.Explain(&fresh); !c.Pinned || c.Lane != 3 || c.PinIdle != 0 {
		t.Fatalf("a pinned flow: %+v", c)
	}
	// Lane 3 fails with a settle window: the flow is held, its pin void.
	lanes := upLanes(1, 2, 3)
	lanes[2].State, lanes[2].Settle = LaneDown, time.Hour
	if err := s.SetLanes(lanes); err != nil {
		t.Fatal(err)
	}
	if c := s.Explain(&fresh); !c.Settling || c.Lane != 0 {
		t.Fatalf("a flow of a lane in its settle window: %+v", c)
	}
	s.EndSettle()
	s.EndSettleOf(3)
	c := s.Explain(&fresh)
	if c.Pinned || c.PinnedTo != 3 || c.Lane == 3 || c.Lane == 0 || c.Lane != c.Table {
		t.Fatalf("a flow whose lane failed: %+v", c)
	}
}
