package flowhash

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
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
}

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
	hasher    Hasher
	key       Key
	tableSize uint32
	pins      *Pins
	snap      atomic.Pointer[Snapshot]

	mu      sync.Mutex // serializes SetLanes
	nextGen uint32
}

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
	s := &Selector{
		hasher:    NewHasher(cfg.Key, cfg.Mode, cfg.Symmetric),
		key:       cfg.Key,
		tableSize: cfg.TableSize,
		pins:      pins,
	}
	empty, _ := BuildTable(nil, cfg.TableSize, cfg.Key)
	s.snap.Store(&Snapshot{Table: empty})
	return s, nil
}

// Hasher returns the selector's hasher.
func (s *Selector) Hasher() Hasher { return s.hasher }

// Pins returns the selector's flow pin table.
func (s *Selector) Pins() *Pins { return s.pins }

// Snapshot returns the current lane set.
func (s *Selector) Snapshot() *Snapshot { return s.snap.Load() }

// SetLanes replaces the lane set. It validates the whole set first and
// changes nothing on error. A lane that comes up (new, or back from down)
// gets a fresh pin generation, so stale pins to it stay void; a lane that
// goes down, or leaves the set, voids its pins; up <-> draining keeps them.
func (s *Selector) SetLanes(lanes []Lane) error {
	s.mu.Lock()
	defer s.mu.Unlock()

	lanes = slices.Clone(lanes)
	slices.SortFunc(lanes, func(a, b Lane) int { return int(a.ID) - int(b.ID) })
	var up []WeightedLane
	for i := range lanes {
		l := &lanes[i]
		if l.Weight == 0 {
			l.Weight = 1
		}
		if l.State > LaneDown {
			return fmt.Errorf("lane %d: unknown state %d", l.ID, l.State)
		}
		if l.ID == 0 || l.ID > MaxLaneID {
			return fmt.Errorf("lane id %d: must be 1..%d", l.ID, MaxLaneID)
		}
		if i > 0 && lanes[i-1].ID == l.ID {
			return fmt.Errorf("lane id %d: listed twice", l.ID)
		}
		if l.State == LaneUp {
			up = append(up, WeightedLane{l.ID, l.Weight})
		}
	}
	if err := CheckTableSize(s.tableSize, len(lanes)); err != nil {
		return err
	}
	table, err := BuildTable(up, s.tableSize, s.key)
	if err != nil {
		return err
	}

	old := s.snap.Load()
	next := &Snapshot{Version: old.Version + 1, Lanes: lanes, Table: table}
	for _, l := range lanes {
		if l.State == LaneDown {
			continue
		}
		if g := old.gens[l.ID]; g != 0 {
			next.gens[l.ID] = g
			continue
		}
		s.nextGen = s.nextGen%pinGenMask + 1 // 1..pinGenMask
		next.gens[l.ID] = s.nextGen
	}
	s.snap.Store(next)
	return nil
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
	w := s.hasher.Words(t)
	sum := s.hasher.sumWords(&w)
	snap := s.snap.Load()
	if lane, gen, ok := s.pins.Lookup(&w, sum, now); ok && snap.gens[lane] == gen {
		return lane, DropNone
	}
	lane := snap.Table.Lookup(sum)
	if lane == 0 {
		return 0, DropNoLane
	}
	s.pins.Insert(&w, sum, lane, snap.gens[lane], t.Proto == ProtoTCP, now)
	return lane, DropNone
}
