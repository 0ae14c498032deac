package flowhash

import (
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

func mustPins(t testing.TB, cfg PinConfig) *Pins {
	t.Helper()
	p, err := NewPins(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// flowWords returns the words and hash of a numbered test flow.
func flowWords(i int, proto uint8) (Words, uint64) {
	tu := Tuple{Src: hostA4.As16(), Dst: hostB4.As16(), SrcPort: uint16(i), DstPort: uint16(i >> 16), Proto: proto}
	h := NewHasher(testKey, Mode5Tuple, false)
	w := h.Words(&tu)
	return w, h.sumWords(&w)
}

func TestPinsInsertLookupReplace(t *testing.T) {
	p := mustPins(t, PinConfig{Capacity: 1024})
	w, sum := flowWords(1, ProtoTCP)
	if _, _, ok := p.Lookup(&w, sum, 0); ok {
		t.Fatal("hit in an empty table")
	}
	p.Insert(&w, sum, 3, 77, true, 0)
	if lane, gen, ok := p.Lookup(&w, sum, 1); !ok || lane != 3 || gen != 77 {
		t.Fatalf("Lookup = %d, %d, %v; want 3, 77, true", lane, gen, ok)
	}
	p.Insert(&w, sum, 4095, pinGenMask, true, 2)
	if lane, gen, ok := p.Lookup(&w, sum, 2); !ok || lane != 4095 || gen != pinGenMask {
		t.Fatalf("after replace: %d, %d, %v", lane, gen, ok)
	}
	other, osum := flowWords(2, ProtoTCP)
	if _, _, ok := p.Lookup(&other, osum, 2); ok {
		t.Fatal("another flow hits")
	}
	if st := p.Stats(); st.Held != 1 || p.Live(2) != 1 || st.Inserts != 2 || st.Capacity != 1024 {
		t.Fatalf("Stats = %+v", st)
	}
}

func TestPinsIdleTimeouts(t *testing.T) {
	p := mustPins(t, PinConfig{Capacity: 64})
	tcp, tsum := flowWords(1, ProtoTCP)
	udp, usum := flowWords(1, ProtoUDP)
	p.Insert(&tcp, tsum, 1, 1, true, 1000)
	p.Insert(&udp, usum, 2, 1, false, 1000)
	check := func(w *Words, sum uint64, now uint32, want bool) {
		t.Helper()
		if _, _, ok := p.Lookup(w, sum, now); ok != want {
			t.Errorf("Lookup at %d: live = %v, want %v", now, ok, want)
		}
	}
	check(&udp, usum, 1120, true) // 120 s idle: GWLB keeps it
	check(&udp, usum, 1240, true) // refreshed at 1120
	check(&udp, usum, 1361, false)
	check(&tcp, tsum, 1350, true)
	check(&tcp, tsum, 1701, false) // refreshed at 1350; 351 s later it is gone
	// A reader whose clock lags the pin's by a second still sees it.
	p.Insert(&udp, usum, 2, 1, false, 5000)
	check(&udp, usum, 4999, true)
	if n := p.Live(4999); n != 1 {
		t.Errorf("Live = %d, want 1", n)
	}
}

func TestPinsEvictLeastRecentlySeen(t *testing.T) {
	p := mustPins(t, PinConfig{Capacity: pinWays}) // one bucket
	ws := make([]Words, pinWays+1)
	sums := make([]uint64, pinWays+1)
	for i := range ws {
		ws[i], sums[i] = flowWords(i, ProtoUDP)
	}
	for i := range pinWays {
		p.Insert(&ws[i], sums[i], LaneID(i+1), 1, false, uint32(10+i))
	}
	p.Lookup(&ws[0], sums[0], 30) // flow 0 is now the most recent; flow 1 the least
	p.Insert(&ws[pinWays], sums[pinWays], 9, 1, false, 31)
	for i := range ws {
		_, _, ok := p.Lookup(&ws[i], sums[i], 31)
		if want := i != 1; ok != want {
			t.Errorf("flow %d: live = %v, want %v", i, ok, want)
		}
	}
	if st := p.Stats(); st.Evictions != 1 || st.Moved != 1 || st.Held != pinWays || p.Live(31) != pinWays {
		t.Errorf("Stats = %+v, want 1 eviction (moved), %d held", st, pinWays)
	}
	// An expired pin is reused before a live one is evicted.
	p.Insert(&ws[1], sums[1], 2, 1, false, 152) // all but flow 0 (seen 30) and 8 (31) idle > 120 s
	if st := p.Stats(); st.Evictions != 1 {
		t.Errorf("evicted a live pin while expired ones were free: %+v", st)
	}
}

// TestPinsEvictAgreeingFirst: with both buckets full, a pin whose flow
// the table sends to the same lane (or whose lane's pins are void) is
// evicted before the least recently seen one, even if it is more recent:
// forgetting it moves nothing. Only without such a pin does a flow move.
func TestPinsEvictAgreeingFirst(t *testing.T) {
	p := mustPins(t, PinConfig{Capacity: pinWays}) // one bucket
	agreeing := map[int]bool{5: true}
	var asked []Words
	ws := make([]Words, pinWays+2)
	sums := make([]uint64, pinWays+2)
	for i := range ws {
		ws[i], sums[i] = flowWords(i, ProtoUDP)
	}
	p.agrees = func(w *Words, lane LaneID, gen uint32) bool {
		asked = append(asked, *w)
		return agreeing[int(lane)-1]
	}
	for i := range pinWays {
		p.Insert(&ws[i], sums[i], LaneID(i+1), 1, false, uint32(10+i))
	}
	p.Insert(&ws[pinWays], sums[pinWays], 9, 1, false, 31) // full: flow 5 (seen 15) goes, not flow 0 (seen 10)
	for i := range pinWays + 1 {
		if ok := pinned(p, &ws[i], sums[i]); ok != (i != 5) { // pinned looks at time 0: refreshes nothing
			t.Errorf("flow %d: pinned = %v, want %v", i, ok, i != 5)
		}
	}
	if st := p.Stats(); st.Evictions != 1 || st.Moved != 0 {
		t.Errorf("after evicting an agreeing pin: %+v, want 1 eviction, 0 moved", st)
	}
	found := false
	for _, w := range asked {
		found = found || w == ws[5]
	}
	if !found {
		t.Error("agrees was not asked about flow 5 with its own key")
	}
	clear(agreeing)
	p.Insert(&ws[pinWays+1], sums[pinWays+1], 10, 1, false, 32) // none agrees: the least recent, flow 0
	if pinned(p, &ws[0], sums[0]) {
		t.Error("flow 0, the least recently seen, kept its pin")
	}
	if st := p.Stats(); st.Evictions != 2 || st.Moved != 1 {
		t.Errorf("%+v, want 2 evictions, 1 moved", st)
	}
}

// TestPinsSweep: Sweep clears idle pins round the table, a slice per
// call, so that Held follows the flows that ended without a scan.
func TestPinsSweep(t *testing.T) {
	p := mustPins(t, PinConfig{Capacity: 1 << 12})
	for i := range 1000 {
		w, sum := flowWords(i, ProtoUDP)
		p.Insert(&w, sum, 1, 1, false, 0)
	}
	for i := range 100 {
		w, sum := flowWords(i, ProtoTCP)
		p.Insert(&w, sum, 1, 1, true, 0)
	}
	if st := p.Stats(); st.Held != 1100 {
		t.Fatalf("held %d, want 1100", st.Held)
	}
	p.Sweep(200, p.Buckets()) // UDP idle (120 s), TCP not (350 s)
	if st := p.Stats(); st.Held != 100 || p.Live(200) != 100 {
		t.Fatalf("after a sweep at 200 s: held %d live %d, want 100", st.Held, p.Live(200))
	}
	for range 4 {
		p.Sweep(400, p.Buckets()/4) // a quarter of the table per call
	}
	if st := p.Stats(); st.Held != 0 {
		t.Errorf("after sweeping the whole table in quarters: held %d", st.Held)
	}
	if a := testing.AllocsPerRun(10, func() { p.Sweep(400, 64) }); a != 0 {
		t.Errorf("Sweep allocates %v", a)
	}
}

// Two-choice placement keeps a half-full table free of evictions: every
// pin inserted is still there. (One 8-way bucket per flow evicts live pins
// already at a third of capacity.)
func TestPinsHalfFullEvictNothing(t *testing.T) {
	p := mustPins(t, PinConfig{Capacity: 1 << 16})
	n := p.Capacity() / 2
	for i := range n {
		w, sum := flowWords(i, ProtoUDP)
		p.Insert(&w, sum, 1, 1, false, 0)
	}
	for i := range n {
		if w, sum := flowWords(i, ProtoUDP); !pinned(p, &w, sum) {
			t.Fatalf("flow %d lost at half capacity", i)
		}
	}
	if st := p.Stats(); st.Evictions != 0 || st.Held != n {
		t.Fatalf("half full: %+v", st)
	}
	for i := n; i < p.Capacity()*9/10; i++ {
		w, sum := flowWords(i, ProtoUDP)
		p.Insert(&w, sum, 1, 1, false, 0)
	}
	st := p.Stats()
	t.Logf("at 90%% load: %d evictions of %d inserts", st.Evictions, st.Inserts)
}

func pinned(p *Pins, w *Words, sum uint64) bool {
	_, _, ok := p.Lookup(w, sum, 0)
	return ok
}

func TestNewPinsRejects(t *testing.T) {
	for _, cfg := range []PinConfig{
		{Capacity: 4},
		{Capacity: 1 << 29},
		{TCPIdle: time.Millisecond},
		{OtherIdle: -time.Second},
	} {
		if _, err := NewPins(cfg); err == nil {
			t.Errorf("NewPins(%+v) accepted", cfg)
		}
	}
	p := mustPins(t, PinConfig{})
	if p.Capacity() != DefaultPinCapacity {
		t.Errorf("default capacity %d", p.Capacity())
	}
	if p := mustPins(t, PinConfig{Capacity: 1000}); p.Capacity() != 1024 {
		t.Errorf("capacity 1000 rounds to %d, want 1024", p.Capacity())
	}
}

// Readers and writers hammer a small table (so buckets are shared and
// evictions frequent). Every hit must return the lane that some writer
// stored for exactly that flow: never a torn or foreign pin.
func TestPinsConcurrentReadersWriters(t *testing.T) {
	p := mustPins(t, PinConfig{Capacity: 64})
	const flows = 512
	laneOf := func(i int) LaneID { return LaneID(i%MaxLaneID + 1) }
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 99))
			for range 40000 {
				i := r.IntN(flows)
				w, sum := flowWords(i, ProtoTCP)
				if g%2 == 0 {
					p.Insert(&w, sum, laneOf(i), uint32(i), true, 0)
					continue
				}
				if lane, gen, ok := p.Lookup(&w, sum, 0); ok && (lane != laneOf(i) || gen != uint32(i)) {
					select {
					case errs <- "flow read another flow's pin":
					default:
					}
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
}

func TestPinsCountPacketsForEach(t *testing.T) {
	s := mustSelector(t, upLanes(1, 2)...)
	now := s.Pins().Now()
	sent := map[Words]uint64{}
	for i := range 40 {
		tu := flowTuple(i)
		for range i%5 + 1 {
			if _, d := s.SelectTuple(&tu, now); d != DropNone {
				t.Fatal(d)
			}
		}
		sent[s.pinHasher.Words(&tu)] = uint64(i%5 + 1)
	}
	seen := 0
	s.Pins().Each(now, func(p Pin) {
		seen++
		if want, ok := sent[p.Words]; !ok || p.Packets != want {
			t.Errorf("pin %v: %d packets, want %d (known %v)", p.Words.Tuple(), p.Packets, want, ok)
		}
		tu := p.Words.Tuple()
		if c := s.Explain(&tu); !c.Pinned || c.Lane != p.Lane {
			t.Errorf("pin of %v on lane %d, Explain says %+v", tu, p.Lane, c)
		}
	})
	if seen != len(sent) {
		t.Errorf("Each saw %d pins, want %d", seen, len(sent))
	}
	// Looking (LaneOf, Explain) counts nothing.
	tu := flowTuple(7)
	s.Explain(&tu)
	s.Pins().Each(now, func(p Pin) {
		if p.Words == s.pinHasher.Words(&tu) && p.Packets != 3 {
			t.Errorf("Explain counted a packet: %d", p.Packets)
		}
	})
}
