package flowhash

import (
	"crypto/rand"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// LaneState is what the selector does with a lane.
type LaneState uint8

const (
	// LaneUp: in the table, takes new flows; its pins hold.
	LaneUp LaneState = iota
	// LaneDraining: out of the table, takes no new flows; its pinned flows
	// stay until they go idle (or the lane is set down).
	LaneDraining
	// LaneDown: out of the table and every pin to it is void at once; its
	// flows re-hash onto the lanes that are up.
	LaneDown
)

func (s LaneState) String() string {
	switch s {
	case LaneUp:
		return "up"
	case LaneDraining:
		return "draining"
	case LaneDown:
		return "down"
	}
	return fmt.Sprintf("state-%d", uint8(s))
}

// Lane is one lane's entry in the selector's lane set.
type Lane struct {
	ID     LaneID
	Weight uint32 // relative share of new flows; 1 if zero
	State  LaneState
	// Settle, for a lane that goes from up to down in this SetLanes: how
	// long its flows wait (DropSettling) before their first packet on
	// another lane, so that none of their packets still inside the failed
	// lane can arrive after it. Zero: they move at once.
	Settle time.Duration
}

// Config configures a Selector.
type Config struct {
	Key       Key
	Mode      Mode
	Symmetric bool
	TableSize uint32 // a prime; DefaultTableSize if zero
	Pins      PinConfig
}

// Snapshot is an immutable view of the lane set: the Maglev table of the
// lanes that are up, and which generation of each lane's pins is valid.
// The selector swaps in a new one atomically when lanes change.
type Snapshot struct {
	Version uint64
	Lanes   []Lane // sorted by ID
	Table   *Table
	gens    [MaxLaneID + 1]uint32 // 0: pins to that lane are void
	// hasher is the flow hash Table is looked up with: the flow-hash key
	// is the snapshot's, so that a new key (SetKey) and the table it
	// builds change in one store.
	hasher Hasher
	key    Key

	// A settling snapshot is the one before a lane failed, with that
	// lane's flows told to wait until settleUntil (on the selector's
	// clock); after is the snapshot with the lane down, which takes over
	// then.
	settleLane  LaneID
	settleUntil int64
	after       *Snapshot

	// spares[i] is this snapshot with its i-th up lane down, built off
	// the hot path when the snapshot is published (after a failure, in
	// the background), so that a failure is one pointer store (nil until
	// built).
	spares atomic.Pointer[[]spare]
}

// spare is a snapshot's prebuilt failure of one lane: the snapshot with
// the lane down, and its settling twin (the snapshot before, with the
// lane's flows told to wait; its deadline is set when it is used).
type spare struct {
	lane           LaneID
	down, settling *Snapshot
}

// Settling returns the lane whose flows wait, and until when (zero if
// none).
func (s *Snapshot) Settling() (LaneID, time.Duration) {
	return s.settleLane, time.Duration(s.settleUntil)
}

// Hasher is the flow hasher this snapshot's table is looked up with (its
// key changes with SetKey; the XDP program gets it with the table).
func (s *Snapshot) Hasher() Hasher { return s.hasher }

// Gen is the pin generation of lane id in this snapshot: 0 while pins to
// it are void (down, or not in the set). The XDP program gets the same
// generations, so both paths judge a pin alike.
func (s *Snapshot) Gen(id LaneID) uint32 {
	if id > MaxLaneID {
		return 0
	}
	return s.gens[id]
}

// Selector picks the lane for each packet. Select may be called from any
// number of goroutines while SetLanes runs: readers never wait for a
// rebuild, they keep using the snapshot they loaded.
type Selector struct {
	// pinHasher indexes the pin table: keyed by a secret of this process,
	// not the flow-hash key, so that a new flow-hash key (SetKey) finds
	// every established flow's pin where it was.
	pinHasher Hasher
	tableSize uint32
	pins      *Pins
	snap      atomic.Pointer[Snapshot]

	mu      sync.Mutex // serializes SetLanes
	nextGen uint32
	start   time.Time // the settle clock's zero (monotonic)

	spareBuilds atomic.Uint64 // spare snapshots built, for tests

	// A failure builds the next spares in the background: for the newest
	// snapshot that needs them, by a func value made once (a go statement
	// with arguments would allocate its closure at the failure).
	sparesDue      atomic.Pointer[Snapshot]
	buildDueSpares func()
}

// Clock is the selector's settle clock: monotonic time since New.
func (s *Selector) Clock() time.Duration { return time.Since(s.start) }

// New returns a selector with no lanes (every packet is DropNoLane until
// SetLanes).
func New(cfg Config) (*Selector, error) {
	if cfg.TableSize == 0 {
		cfg.TableSize = DefaultTableSize
	}
	if cfg.Mode > Mode2Tuple {
		return nil, fmt.Errorf("hash mode %d: unknown", cfg.Mode)
	}
	if err := CheckTableSize(cfg.TableSize, 0); err != nil {
		return nil, err
	}
	pins, err := NewPins(cfg.Pins)
	if err != nil {
		return nil, err
	}
	var pinKey Key
	rand.Read(pinKey[:])
	s := &Selector{
		pinHasher: NewHasher(pinKey, cfg.Mode, cfg.Symmetric),
		tableSize: cfg.TableSize,
		pins:      pins,
		start:     time.Now(),
	}
	empty, _ := BuildTable(nil, cfg.TableSize, cfg.Key)
	s.snap.Store(&Snapshot{Table: empty, hasher: NewHasher(cfg.Key, cfg.Mode, cfg.Symmetric), key: cfg.Key})
	pins.sel = s
	s.buildDueSpares = func() {
		if snap := s.sparesDue.Swap(nil); snap != nil {
			s.buildSpares(snap)
		}
	}
	return s, nil
}

// pinAgrees says whether forgetting a pin moves nothing now: its lane's
// pins are void, or the table sends its flow there anyway.
func (s *Selector) pinAgrees(w *Words, lane LaneID, gen uint32) bool {
	return s.snap.Load().PinAgrees(w, lane, gen)
}

// PinAgrees says whether forgetting the pin of the flow with canonical
// words w (to lane, of generation gen) moves nothing under this
// snapshot: the table sends the flow to lane anyway, or the pin is void
// (its lane's generation changed). The XDP program's pin sweep asks it.
func (s *Snapshot) PinAgrees(w *Words, lane LaneID, gen uint32) bool {
	if lane > MaxLaneID {
		return true // no pin the data paths would honour
	}
	return s.gens[lane] != gen || s.Table.Lookup(s.hasher.sumWords(w)) == lane
}

// Hasher returns the flow hasher of the current snapshot.
func (s *Selector) Hasher() Hasher { return s.snap.Load().Hasher() }

// SetKey makes key the flow-hash key (a rotated secret's): new flows
// take the lanes the table keyed by it gives, while every established
// flow keeps the lane it is pinned to (the pin table is not indexed by
// the flow-hash key). Two demuxes that change keys at the same time keep
// choosing alike. The table and its spares are built before the one
// store that makes them current.
func (s *Selector) SetKey(key Key) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.snap.Load()
	if cur.after != nil { // a settle in progress ends now: its lane is down
		cur = cur.after
	}
	if key == cur.key {
		return nil
	}
	table, err := BuildTable(upOf(cur.Lanes), s.tableSize, key)
	if err != nil {
		return err
	}
	h := NewHasher(key, cur.hasher.mode, cur.hasher.symmetric)
	next := &Snapshot{Version: cur.Version + 1, Lanes: cur.Lanes, Table: table, gens: cur.gens, hasher: h, key: key}
	s.buildSpares(next)
	s.snap.Store(next)
	return nil
}

// Pins returns the selector's flow pin table.
func (s *Selector) Pins() *Pins { return s.pins }

// Snapshot returns the current lane set.
func (s *Selector) Snapshot() *Snapshot { return s.snap.Load() }

// SetLanes replaces the lane set. It validates the whole set first and
// changes nothing on error. A lane that comes up (new, or back from down)
// gets a fresh pin generation, so stale pins to it stay void; a lane that
// goes down, or leaves the set, voids its pins; up <-> draining keeps them.
//
// When the only change is one up lane going down, the snapshot for it was
// built in advance (a spare), so the failure costs a pointer store; with
// a Settle, the failed lane's flows wait that long first (see Lane).
func (s *Selector) SetLanes(lanes []Lane) error {
	s.mu.Lock()
	defer s.mu.Unlock()

	// A demux lists its lanes in order: then nothing is copied here, and
	// a failure that finds its spare allocates nothing (an allocation then
	// may be charged the garbage collector's work).
	byID := func(a, b Lane) int { return int(a.ID) - int(b.ID) }
	if !slices.IsSortedFunc(lanes, byID) {
		lanes = slices.Clone(lanes)
		slices.SortFunc(lanes, byID)
	}
	for i := range lanes {
		l := &lanes[i]
		if l.State > LaneDown {
			return fmt.Errorf("lane %d: unknown state %d", l.ID, l.State)
		}
		if l.ID == 0 || l.ID > MaxLaneID {
			return fmt.Errorf("lane id %d: must be 1..%d", l.ID, MaxLaneID)
		}
		if i > 0 && lanes[i-1].ID == l.ID {
			return fmt.Errorf("lane id %d: listed twice", l.ID)
		}
	}
	if err := checkSlots(s.tableSize, len(lanes)); err != nil { // the size itself was checked by New
		return err
	}
	cur := s.snap.Load()
	if cur.after != nil { // a settle in progress ends now: its lane is down
		cur = cur.after
	}
	sp, failed := s.spareFor(cur, lanes)
	var next, final *Snapshot
	settle := time.Duration(0)
	if failed != 0 {
		settle = lanes[slices.IndexFunc(lanes, func(l Lane) bool { return l.ID == failed })].Settle
	}
	switch {
	case sp != nil && settle > 0:
		// Prebuilt, both: the failure allocates nothing (an allocation
		// now may be charged the garbage collector's work).
		final, next = sp.down, sp.settling
		next.settleUntil = int64(s.Clock() + settle)
	case sp != nil:
		final, next = sp.down, sp.down
	default:
		var err error
		// The snapshot keeps its own copy, weights 0 made 1.
		kept := slices.Clone(lanes)
		for i := range kept {
			kept[i].Weight = max(kept[i].Weight, 1)
		}
		if final, err = s.build(cur, kept); err != nil {
			return err
		}
		next = final
		if settle > 0 {
			// The table before the failure, the failed lane's pins still
			// valid so its flows are recognised, and told to wait.
			next = &Snapshot{Version: final.Version, Lanes: final.Lanes, Table: cur.Table, gens: cur.gens,
				hasher: cur.hasher, key: cur.key, settleLane: failed, settleUntil: int64(s.Clock() + settle), after: final}
			final.Version++ // a new version when the wait ends, for those who publish it (XDP)
		}
	}
	s.snap.Store(next)
	up := 0
	for _, l := range final.Lanes {
		if l.State == LaneUp {
			up++
		}
	}
	if failed != 0 || up > syncSpares {
		s.sparesDue.Store(final)
		go s.buildDueSpares() // the failure itself waits for nothing
	} else {
		// Ready before the next change can be a failure: a lane that
		// comes back and fails again at once must find its spare too.
		s.buildSpares(final)
	}
	return nil
}

// syncSpares: up to this many lanes up, SetLanes builds the spares before
// it returns (a table each, about a millisecond); beyond, in the
// background.
const syncSpares = 32

// EndSettle makes a settling lane's snapshot final once its window is
// over (Select already treats it so; this drops the settling snapshot).
// It reports whether a settle is still to come.
func (s *Selector) EndSettle() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.snap.Load()
	if cur.after == nil {
		return false
	}
	if s.Clock() < time.Duration(cur.settleUntil) {
		return true
	}
	s.snap.Store(cur.after)
	return false
}

// EndSettleOf ends lane's settle window now, if it is the one settling
// (the lane showed that nothing sent into it before can still arrive).
func (s *Selector) EndSettleOf(lane LaneID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.snap.Load()
	if cur.after == nil || cur.settleLane != lane {
		return false
	}
	s.snap.Store(cur.after)
	return true
}

// build computes the snapshot for lanes from cur.
func (s *Selector) build(cur *Snapshot, lanes []Lane) (*Snapshot, error) {
	table, err := BuildTable(upOf(lanes), s.tableSize, cur.key)
	if err != nil {
		return nil, err
	}
	next := &Snapshot{Version: cur.Version + 1, Lanes: lanes, Table: table, hasher: cur.hasher, key: cur.key}
	for _, l := range lanes {
		if l.State == LaneDown {
			continue
		}
		if g := cur.gens[l.ID]; g != 0 {
			next.gens[l.ID] = g
			continue
		}
		s.nextGen = s.nextGen%pinGenMask + 1 // 1..pinGenMask
		next.gens[l.ID] = s.nextGen
	}
	return next, nil
}

// upOf lists the lanes that are up, as the Maglev table takes them.
func upOf(lanes []Lane) []WeightedLane {
	var up []WeightedLane
	for _, l := range lanes {
		if l.State == LaneUp {
			up = append(up, WeightedLane{l.ID, l.Weight})
		}
	}
	return up
}

// spareFor returns cur's prebuilt spare for lanes if lanes are cur's with
// exactly one up lane down (and that lane), else nil.
func (s *Selector) spareFor(cur *Snapshot, lanes []Lane) (*spare, LaneID) {
	if len(lanes) != len(cur.Lanes) {
		return nil, 0
	}
	failed := LaneID(0)
	for i, l := range lanes {
		c := cur.Lanes[i]
		if l.ID != c.ID || max(l.Weight, 1) != c.Weight {
			return nil, 0
		}
		if l.State == c.State {
			continue
		}
		if failed != 0 || c.State != LaneUp || l.State != LaneDown {
			return nil, 0
		}
		failed = l.ID
	}
	if failed == 0 {
		return nil, 0
	}
	if spares := cur.spares.Load(); spares != nil {
		for i := range *spares {
			if sp := &(*spares)[i]; sp.lane == failed {
				return sp, failed // used once: cur is never current again
			}
		}
	}
	return nil, failed
}

// SparesReady reports whether the tables that each single-lane failure
// of the current lane set would need are built (after a failure they are
// built in the background; until then a further failure builds its own).
func (s *Selector) SparesReady() bool {
	snap := s.snap.Load()
	if snap.after != nil {
		snap = snap.after
	}
	return snap.spares.Load() != nil
}

// buildSpares builds snap's spares: for each up lane, the snapshot with
// it down (pin generations as snap's with that lane's voided) and the
// settling twin that leads to it.
func (s *Selector) buildSpares(snap *Snapshot) {
	var spares []spare
	for i, l := range snap.Lanes {
		if l.State != LaneUp {
			continue
		}
		lanes := slices.Clone(snap.Lanes)
		lanes[i].State = LaneDown
		table, err := BuildTable(upOf(lanes), s.tableSize, snap.key)
		if err != nil {
			return
		}
		down := &Snapshot{Version: snap.Version + 2, Lanes: lanes, Table: table, gens: snap.gens, hasher: snap.hasher, key: snap.key}
		down.gens[l.ID] = 0
		settling := &Snapshot{Version: snap.Version + 1, Lanes: lanes, Table: snap.Table, gens: snap.gens,
			hasher: snap.hasher, key: snap.key, settleLane: l.ID, after: down}
		spares = append(spares, spare{lane: l.ID, down: down, settling: settling})
		s.spareBuilds.Add(1)
	}
	snap.spares.Store(&spares)
}

// Select returns the lane for an IP packet, or the reason it has none.
// now is the pin table's clock (Pins().Now(), read once per batch).
func (s *Selector) Select(pkt []byte, now uint32) (LaneID, Drop) {
	var t Tuple
	if d := t.Decode(pkt); d != DropNone {
		return 0, d
	}
	return s.SelectTuple(&t, now)
}

// SelectTuple returns the lane for a decoded tuple. A flow keeps the lane
// it is pinned to while that pin's generation is valid; otherwise the
// Maglev table decides and the choice is pinned.
func (s *Selector) SelectTuple(t *Tuple, now uint32) (LaneID, Drop) {
	w := s.pinHasher.Words(t) // the canonical words depend on the mode, not the key
	at := s.pinHasher.sumWords(&w)
	snap := s.snap.Load()
	lane, gen, pinned := s.pins.Lookup(&w, at, now)
	if pinned && snap.gens[lane] == gen {
		if lane != snap.settleLane {
			return lane, DropNone
		}
	} else {
		lane = snap.Table.Lookup(snap.hasher.sumWords(&w))
		if lane == 0 {
			return 0, DropNoLane
		}
	}
	if lane == snap.settleLane {
		if s.Clock() < time.Duration(snap.settleUntil) {
			return 0, DropSettling
		}
		snap = snap.after // the window is over: the lane is down
		if pinned && snap.gens[lane] == gen {
			return lane, DropNone
		}
		if lane = snap.Table.Lookup(snap.hasher.sumWords(&w)); lane == 0 {
			return 0, DropNoLane
		}
	}
	s.pins.Insert(&w, at, lane, snap.gens[lane], t.Proto == ProtoTCP, now)
	return lane, DropNone
}

// Choice is what the selector would do with a flow's next packet, and
// why: `demux which` prints it.
type Choice struct {
	Lane   LaneID // 0: none (no lane up, or held: Settling)
	Table  LaneID // the lane the Maglev table gives the flow
	Pinned bool   // a live pin of a valid generation decides
	// PinnedTo is the lane of a pin that no longer counts (its lane's
	// pins were voided, e.g. the lane failed): the table decides.
	PinnedTo LaneID
	PinIdle  time.Duration // since the pin's last packet
	Settling bool          // the flow's lane just failed: held until the settle window ends
	Words    Words         // the flow's canonical words (the XDP pin map's key)
}

// Explain says which lane t's flow takes and why, without pinning it or
// refreshing its pin.
func (s *Selector) Explain(t *Tuple) Choice {
	w := s.pinHasher.Words(t)
	snap := s.snap.Load()
	c := Choice{Words: w, Table: snap.Table.Lookup(snap.hasher.sumWords(&w))}
	lane, gen, seen, ok := s.pins.Peek(&w, s.pinHasher.sumWords(&w), s.pins.Now())
	switch {
	case ok && snap.gens[lane] == gen:
		c.Lane, c.Pinned = lane, true
	case ok:
		c.Lane, c.PinnedTo = c.Table, lane
	default:
		c.Lane = c.Table
	}
	if ok {
		c.PinIdle = time.Duration(max(age(s.pins.Now(), seen), 0)) * time.Second
	}
	if c.Lane != 0 && c.Lane == snap.settleLane && s.Clock() < time.Duration(snap.settleUntil) {
		c.Lane, c.Settling = 0, true
	}
	return c
}

// LaneOf returns the lane pkt's flow takes now without pinning it: its
// valid pin's lane, else the table's (0 if none or undecodable). For
// checking that a quoted packet is one this demux would have sent there,
// so pkt may be cut short (DecodeTruncated).
func (s *Selector) LaneOf(pkt []byte) LaneID {
	var t Tuple
	if t.DecodeTruncated(pkt) != DropNone {
		return 0
	}
	w := s.pinHasher.Words(&t)
	snap := s.snap.Load()
	if lane, gen, _, ok := s.pins.Peek(&w, s.pinHasher.sumWords(&w), s.pins.Now()); ok && snap.gens[lane] == gen {
		return lane
	}
	return snap.Table.Lookup(snap.hasher.sumWords(&w))
}
