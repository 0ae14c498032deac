package flowhash

import (
	"fmt"
	"math/big"
	"slices"
)

// LaneID names a lane stably: removing lane 3 renumbers nothing. 0 means
// "no lane" in tables and maps, so IDs run from 1 to MaxLaneID.
type LaneID uint16

// MaxLaneID is the largest lane ID; it keeps per-lane arrays small (and
// fits the 12 bits a flow pin has for it).
const MaxLaneID = 4095

// Table sizes. The Maglev paper's balance bound needs M much larger than
// the number of lanes; 100 slots per lane keeps max/mean load within 1%.
const (
	DefaultTableSize = 65537
	MinSlotsPerLane  = 100
	MaxTableSize     = 1 << 24
	MaxWeight        = 65535
)

// WeightedLane is a lane as the table sees it. Weight is relative: a lane
// of weight 2 gets twice the slots of a lane of weight 1 (mixed instance
// sizes).
type WeightedLane struct {
	ID     LaneID `json:"id"`
	Weight uint32 `json:"weight"`
}

// Table is a Maglev lookup table: slot i holds the lane for hashes with
// hash % Size == i. It is immutable once built.
type Table struct {
	slots []LaneID
}

// Lookup returns the lane for a flow hash, or 0 when the table is empty.
func (t *Table) Lookup(sum uint64) LaneID {
	return t.slots[sum%uint64(len(t.slots))]
}

// Size is the number of slots (a prime).
func (t *Table) Size() int { return len(t.slots) }

// Slots returns the table's contents, for the XDP map and for tests. The
// caller must not modify it.
func (t *Table) Slots() []LaneID { return t.slots }

// CheckTableSize says why size cannot be a table for n lanes, or nil.
func CheckTableSize(size uint32, n int) error {
	switch {
	case size > MaxTableSize:
		return fmt.Errorf("table size %d is above the maximum %d", size, MaxTableSize)
	case !big.NewInt(int64(size)).ProbablyPrime(0): // exact below 2^64
		return fmt.Errorf("table size %d is not prime (Maglev needs a prime; the default is %d)", size, DefaultTableSize)
	}
	return checkSlots(size, n)
}

// checkSlots is CheckTableSize's rule for the number of lanes alone, for
// a size already checked (the primality test allocates).
func checkSlots(size uint32, n int) error {
	if uint64(size) < uint64(n)*MinSlotsPerLane {
		return fmt.Errorf("table size %d is below %d x %d lanes = %d (too few slots to balance; use a larger prime such as %d)",
			size, MinSlotsPerLane, n, n*MinSlotsPerLane, DefaultTableSize)
	}
	return nil
}

// BuildTable builds the Maglev table for the lanes. The result depends only
// on the set of (ID, weight) pairs, the size and the key, not on the order
// of lanes, so two demuxes with the same config build identical tables.
//
// Each lane walks its own permutation of the slots, offset + j*skip mod M,
// with offset and skip drawn from the keyed hash of its ID. Lanes take turns
// claiming their next free slot; a lane of weight w takes a turn in w of
// every maxWeight rounds (katran's weighted variant), so shares follow the
// weights and, with equal weights, every lane gets floor or ceil of M/N.
func BuildTable(lanes []WeightedLane, size uint32, key Key) (*Table, error) {
	if err := CheckTableSize(size, len(lanes)); err != nil {
		return nil, err
	}
	sorted := slices.Clone(lanes)
	slices.SortFunc(sorted, func(a, b WeightedLane) int { return int(a.ID) - int(b.ID) })
	var maxWeight uint32
	for i, l := range sorted {
		switch {
		case l.ID == 0 || l.ID > MaxLaneID:
			return nil, fmt.Errorf("lane id %d: must be 1..%d", l.ID, MaxLaneID)
		case i > 0 && sorted[i-1].ID == l.ID:
			return nil, fmt.Errorf("lane id %d: listed twice", l.ID)
		case l.Weight == 0 || l.Weight > MaxWeight:
			return nil, fmt.Errorf("lane %d: weight %d must be 1..%d (drain a lane rather than weigh it 0)", l.ID, l.Weight, MaxWeight)
		}
		maxWeight = max(maxWeight, l.Weight)
	}

	t := &Table{slots: make([]LaneID, size)}
	if len(sorted) == 0 {
		return t, nil
	}
	m := uint64(size)
	h := NewHasher(key, Mode5Tuple, false)
	pos := make([]uint64, len(sorted))  // each lane's current place in its permutation
	skip := make([]uint64, len(sorted)) // and its stride
	credit := make([]uint32, len(sorted))
	for i, l := range sorted {
		pos[i] = h.sumWords(&Words{uint64(l.ID), 1}) % m
		skip[i] = h.sumWords(&Words{uint64(l.ID), 2})%(m-1) + 1
	}
	for filled := uint64(0); ; {
		for i, l := range sorted {
			credit[i] += l.Weight
			if credit[i] < maxWeight {
				continue
			}
			credit[i] -= maxWeight
			for t.slots[pos[i]] != 0 {
				pos[i] += skip[i]
				if pos[i] >= m {
					pos[i] -= m
				}
			}
			t.slots[pos[i]] = l.ID
			if filled++; filled == m {
				return t, nil
			}
		}
	}
}
