package flowhash

import (
	"runtime"
	"sync"
	"testing"
	"time"
)

// waitSpares waits for the spare snapshots of the current lane set.
func waitSpares(t *testing.T, s *Selector) {
	t.Helper()
	for range 500 {
		if s.Snapshot().spares.Load() != nil {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatal("spare snapshots never built")
}

// TestFailureUsesTheSpareTable: one lane going down takes the snapshot
// built in advance (no Maglev build at failure time), which is exactly
// what a build would give.
func TestFailureUsesTheSpareTable(t *testing.T) {
	s := mustSelector(t, upLanes(1, 2, 3)...)
	waitSpares(t, s)
	spares := *s.Snapshot().spares.Load()
	lanes := upLanes(1, 2, 3)
	lanes[1].State = LaneDown
	start := time.Now()
	if err := s.SetLanes(lanes); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	got := s.Snapshot()
	if got.Table != spares[1].down.Table {
		t.Fatal("the failure built a table instead of taking the spare")
	}
	want := mustSelector(t, lanes...).Snapshot()
	if !slicesEqual(got.Table.Slots(), want.Table.Slots()) {
		t.Error("the spare table differs from a fresh build")
	}
	if got.Gen(2) != 0 || got.Gen(1) == 0 {
		t.Errorf("gens after the failure: lane 1 %d, lane 2 %d", got.Gen(1), got.Gen(2))
	}
	t.Logf("failure swap took %v", took)
}

// TestFailureAllocatesNothing: storing a failure's spare allocates
// nothing, so the garbage collector cannot charge it work at that moment
// (the background build of the next spares aside, which one processor
// keeps from running until the count is taken).
func TestFailureAllocatesNothing(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	// A running demux has ended goroutines for a go statement to reuse;
	// a fresh test binary may not, and would allocate one.
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {})
	}
	wg.Wait()
	s := mustSelector(t, upLanes(1, 2, 3)...)
	lanes := upLanesN(3) // weight 0: 1, as the table has it
	lanes[1].State, lanes[1].Settle = LaneDown, time.Millisecond
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	err := s.SetLanes(lanes)
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	if l, _ := s.Snapshot().Settling(); l != 2 {
		t.Fatalf("settling lane %d, want 2", l)
	}
	if n := after.Mallocs - before.Mallocs; n != 0 {
		t.Errorf("a failure's SetLanes allocated %d times", n)
	}
}

func slicesEqual(a, b []LaneID) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestSettleWindow: a failed lane's flows wait (DropSettling) for the
// window, then take their new lanes; no other flow is held or moves.
func TestSettleWindow(t *testing.T) {
	s := mustSelector(t, upLanes(1, 2, 3)...)
	before := selectAll(t, s, 2000, 0)
	lanes := upLanes(1, 2, 3)
	lanes[1].State, lanes[1].Settle = LaneDown, 50*time.Millisecond
	if err := s.SetLanes(lanes); err != nil {
		t.Fatal(err)
	}
	if l, until := s.Snapshot().Settling(); l != 2 || until <= s.Clock() {
		t.Fatalf("settling %d until %v (clock %v)", l, until, s.Clock())
	}
	held := 0
	for i, was := range before {
		tu := flowTuple(i)
		lane, d := s.SelectTuple(&tu, 0)
		switch {
		case was == 2 && d != DropSettling && s.Clock() < 50*time.Millisecond:
			t.Fatalf("flow %d of the failed lane: lane %d, %v; want it to wait", i, lane, d)
		case was != 2 && (d != DropNone || lane != was):
			t.Fatalf("flow %d of lane %d: lane %d, %v", i, was, lane, d)
		case d == DropSettling:
			held++
		}
	}
	time.Sleep(60 * time.Millisecond)
	for i, was := range before {
		tu := flowTuple(i)
		lane, d := s.SelectTuple(&tu, 0)
		if d != DropNone || lane == 2 || (was != 2 && lane != was) {
			t.Fatalf("after the window, flow %d (was lane %d): lane %d, %v", i, was, lane, d)
		}
	}
	if s.EndSettle() {
		t.Error("EndSettle: window still open after it ended")
	}
	if l, _ := s.Snapshot().Settling(); l != 0 {
		t.Errorf("still settling lane %d", l)
	}
	t.Logf("%d flows of lane 2 waited", held)
}

func TestSelectAllocsNothingWhileSettling(t *testing.T) {
	s := mustSelector(t, upLanes(1, 2, 3)...)
	lanes := upLanes(1, 2, 3)
	lanes[1].State, lanes[1].Settle = LaneDown, time.Hour
	s.SetLanes(lanes)
	tus := make([]Tuple, 64)
	for i := range tus {
		tus[i] = flowTuple(i)
	}
	if n := testing.AllocsPerRun(100, func() {
		for i := range tus {
			s.SelectTuple(&tus[i], 0)
		}
	}); n != 0 {
		t.Errorf("%v allocations per 64 selections", n)
	}
}
