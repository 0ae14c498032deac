package flowhash

import (
	"fmt"
	"math/bits"
	"runtime"
	"sync/atomic"
	"time"
)

// Pin table defaults, as AWS Gateway Load Balancer's idle timeouts.
const (
	DefaultPinCapacity = 1 << 20
	DefaultTCPIdle     = 350 * time.Second
	DefaultOtherIdle   = 120 * time.Second
)

// PinConfig sizes the flow pin table. Zero fields take the defaults.
type PinConfig struct {
	Capacity  int           // flows remembered; rounded up to a power of two
	TCPIdle   time.Duration // a TCP pin unused this long is forgotten
	OtherIdle time.Duration // likewise for every other protocol
}

// Pins remembers which lane each recent flow took, so that a flow stays on
// its lane when lanes are added or come back, even though the Maglev table
// now maps its hash elsewhere.
//
// It is a fixed-capacity hash table of 8-slot buckets, and each flow may
// live in either of two buckets chosen by its hash ("two choices"): with one
// bucket per flow, a few buckets overflow and evict live pins already at a
// third of capacity; with two, that stays negligible past half. Lookups
// (every packet of an established flow) take no lock: each bucket has a
// sequence number that writers make odd while they change the bucket, and
// a reader that saw it change retries. Refreshing a pin's idle timer is a
// CAS, once per second per flow. Inserts (the first packet of a flow, or a
// flow whose lane died) take both buckets by making their sequences odd,
// and use a free or expired slot. With both buckets full of live pins,
// one must go: a pin that the table would give its flow anyway (or whose
// lane's pins are void) goes first, since forgetting it moves nothing;
// only then the least recently used pin, whose flow moves (is reordered)
// at its next packet. A spray of new 5-tuples therefore evicts the pins
// that carry no information before it moves any established flow.
//
// The table counts the slots it holds pins in as it fills and clears
// them, and Sweep clears idle pins a slice of the table at a time, so
// that the count is a load, not a scan of a million slots per scrape.
//
// A pin records the lane's generation; the selector's snapshot says which
// generation of each lane is valid, so invalidating every pin of a dead
// lane is one store, not a scan.
type Pins struct {
	buckets   []pinBucket
	shift     uint // bucket index = sum >> shift
	tcpIdle   uint32
	otherIdle uint32
	start     time.Time

	// sel says whether forgetting a live pin moves nothing (its
	// pinAgrees: the flow's table lane is the pin's, or the pin's
	// generation is void); agrees does instead where sel is nil (tests).
	// Neither: every eviction counts as one that moves a flow. sel is a
	// static call so that the candidate's words stay on the stack.
	sel    *Selector
	agrees func(w *Words, lane LaneID, gen uint32) bool

	inserts   atomic.Uint64
	evictions atomic.Uint64 // live pins pushed out by a full bucket
	moved     atomic.Uint64 // of those, pins the table disagreed with: their flows move
	held      atomic.Int64  // slots holding a pin (idle ones until swept)
	cursor    atomic.Uint64 // next bucket Sweep looks at
}

const pinWays = 8

// A bucket keeps its slots' hash tags together in its first cache line, so
// a lookup reads that line and then only the slot whose tag matches,
// instead of every slot's 40-byte key (the table is far larger than cache).
type pinBucket struct {
	seq   atomic.Uint32
	tags  [pinWays]atomic.Uint32
	slots [pinWays]pinSlot
}

// pinTag is the part of the hash kept as a slot's tag: bits neither bucket
// index uses, so flows sharing a bucket rarely share a tag.
func pinTag(sum uint64) uint32 { return uint32(sum >> 20) }

type pinSlot struct {
	key [5]atomic.Uint64
	val atomic.Uint64 // packed pin; 0 = empty
	// packets the flow sent since it was pinned here (Lookup counts them):
	// `demux flows --top` ranks flows by it. A flow keeps to one TUN
	// queue, so the add is uncontended.
	packets atomic.Uint64
}

// A pin packs into 64 bits: lastSeen(32) | tcp(1) | gen(19) | lane(12).
const (
	pinLaneBits = 12
	pinGenBits  = 19
	pinGenMask  = 1<<pinGenBits - 1
	pinTCPBit   = 1 << (pinLaneBits + pinGenBits)
)

func packPin(lane LaneID, gen uint32, tcp bool, now uint32) uint64 {
	v := uint64(now)<<32 | uint64(gen&pinGenMask)<<pinLaneBits | uint64(lane)
	if tcp {
		v |= pinTCPBit
	}
	return v
}

func unpackPin(v uint64) (lane LaneID, gen, lastSeen uint32, tcp bool) {
	return LaneID(v & MaxLaneID), uint32(v>>pinLaneBits) & pinGenMask, uint32(v >> 32), v&pinTCPBit != 0
}

// NewPins allocates a pin table.
func NewPins(cfg PinConfig) (*Pins, error) {
	if cfg.Capacity == 0 {
		cfg.Capacity = DefaultPinCapacity
	}
	if cfg.TCPIdle == 0 {
		cfg.TCPIdle = DefaultTCPIdle
	}
	if cfg.OtherIdle == 0 {
		cfg.OtherIdle = DefaultOtherIdle
	}
	switch {
	case cfg.Capacity < pinWays || cfg.Capacity > 1<<28:
		return nil, fmt.Errorf("pin capacity %d: must be %d..%d", cfg.Capacity, pinWays, 1<<28)
	case cfg.TCPIdle < time.Second || cfg.OtherIdle < time.Second:
		return nil, fmt.Errorf("pin idle timeouts must be at least 1s (tcp %v, other %v)", cfg.TCPIdle, cfg.OtherIdle)
	}
	nb := 1 << bits.Len(uint(cfg.Capacity-1)) / pinWays
	return &Pins{
		buckets:   make([]pinBucket, nb),
		shift:     uint(64-bits.Len(uint(nb-1))) % 64, // one bucket: shift 0, mask 0
		tcpIdle:   uint32(cfg.TCPIdle / time.Second),
		otherIdle: uint32(cfg.OtherIdle / time.Second),
		start:     time.Now(),
	}, nil
}

// Capacity is the number of pins the table holds at most.
func (p *Pins) Capacity() int { return len(p.buckets) * pinWays }

// Now is the table's clock: whole seconds since it was made. Data paths
// read it once per batch and pass it to Lookup and Insert.
func (p *Pins) Now() uint32 { return uint32(time.Since(p.start) / time.Second) }

// bucketPair returns the indices of the flow's two candidate buckets, from
// the top and the bottom bits of its hash (possibly the same bucket).
func (p *Pins) bucketPair(sum uint64) (int, int) {
	mask := uint64(len(p.buckets) - 1)
	return int(sum >> p.shift & mask), int(sum & mask)
}

func (p *Pins) expired(v uint64, now uint32) bool {
	_, _, seen, tcp := unpackPin(v)
	idle := p.otherIdle
	if tcp {
		idle = p.tcpIdle
	}
	return age(now, seen) > int64(idle)
}

// age is how long ago seen was. Data paths read the clock at different
// moments, so seen may be a second ahead of now: that is age <= 0, fresh.
func age(now, seen uint32) int64 { return int64(int32(now - seen)) }

// Lookup returns the lane and generation pinned for the flow with canonical
// words w and hash sum, refreshing its idle timer and counting the packet.
// ok is false when there is no live pin.
func (p *Pins) Lookup(w *Words, sum uint64, now uint32) (lane LaneID, gen uint32, ok bool) {
	slot, v := p.live(w, sum, now)
	if slot == nil {
		return 0, 0, false
	}
	slot.packets.Add(1)
	lane, gen, seen, _ := unpackPin(v)
	if age(now, seen) > 0 {
		// Best effort: if a writer replaced the slot meanwhile, the CAS
		// fails and the new pin stands.
		slot.val.CompareAndSwap(v, v&(1<<32-1)|uint64(now)<<32)
	}
	return lane, gen, true
}

// Peek is Lookup without refreshing the pin: it also says when the
// flow's last packet was (for `demux which`, which must not keep a pin
// alive by looking at it).
func (p *Pins) Peek(w *Words, sum uint64, now uint32) (lane LaneID, gen, lastSeen uint32, ok bool) {
	slot, v := p.live(w, sum, now)
	if slot == nil {
		return 0, 0, 0, false
	}
	lane, gen, lastSeen, _ = unpackPin(v)
	return lane, gen, lastSeen, true
}

// live finds the flow's live pin in either of its buckets (nil if none).
func (p *Pins) live(w *Words, sum uint64, now uint32) (*pinSlot, uint64) {
	i1, i2 := p.bucketPair(sum)
	b1, b2 := &p.buckets[i1], &p.buckets[i2]
	tag := pinTag(sum)
	slot, v := b1.read(w, tag)
	if slot == nil && b2 != b1 {
		slot, v = b2.read(w, tag)
	}
	if slot == nil || p.expired(v, now) {
		return nil, 0
	}
	return slot, v
}

// read finds w's slot and its value, consistently with writers.
func (b *pinBucket) read(w *Words, tag uint32) (*pinSlot, uint64) {
	for spins := 0; ; spins++ {
		s := b.seq.Load()
		if s&1 == 0 {
			slot, v := b.find(w, tag)
			if b.seq.Load() == s {
				return slot, v
			}
		}
		backoff(spins)
	}
}

// Insert pins the flow to lane (of generation gen), replacing any pin it had.
func (p *Pins) Insert(w *Words, sum uint64, lane LaneID, gen uint32, tcp bool, now uint32) {
	i1, i2 := p.bucketPair(sum)
	b1, b2 := &p.buckets[i1], &p.buckets[i2]
	lo, hi := b1, b2 // lock in index order so two inserts cannot deadlock
	if i2 < i1 {
		lo, hi = hi, lo
	}
	slo := lo.lock()
	shi := slo
	if hi != lo {
		shi = hi.lock()
	}
	tag := pinTag(sum)
	slot, _ := b1.find(w, tag)
	if slot == nil {
		slot, _ = b2.find(w, tag)
	}
	if slot == nil {
		b, k := p.victim(b1, b2, now)
		slot = &b.slots[k]
		if slot.val.Load() == 0 {
			p.held.Add(1)
		}
		slot.val.Store(0) // readers that match the new key early see "empty"
		slot.packets.Store(0)
		b.tags[k].Store(tag)
		for i := range slot.key {
			slot.key[i].Store(w[i])
		}
	}
	slot.val.Store(packPin(lane, gen, tcp, now))
	slot.packets.Add(1) // the packet that pinned it
	if hi != lo {
		hi.seq.Store(shi + 2)
	}
	lo.seq.Store(slo + 2)
	p.inserts.Add(1)
}

// victim picks the slot a new pin goes into: a free (or expired) slot in
// whichever of the two buckets has more of them, which is what keeps
// buckets from overflowing; if both are full, a pin whose loss moves no
// flow (agrees), else the least recently seen pin of the two (counted as
// an eviction, and as moved). Called with both buckets locked.
func (p *Pins) victim(b1, b2 *pinBucket, now uint32) (*pinBucket, int) {
	free1, slot1, old1, age1 := p.scan(b1, now)
	free2, slot2, old2, age2 := p.scan(b2, now)
	switch {
	case free1 > 0 && free1 >= free2:
		return b1, slot1
	case free2 > 0:
		return b2, slot2
	}
	p.evictions.Add(1)
	if p.sel != nil || p.agrees != nil {
		if b, k, ok := p.agreeing(b1, b2, now); ok {
			return b, k
		}
	}
	p.moved.Add(1)
	if age2 > age1 {
		return b2, old2
	}
	return b1, old1
}

// agreeing finds the least recently seen pin of the two (full) buckets
// that the table agrees with.
func (p *Pins) agreeing(b1, b2 *pinBucket, now uint32) (*pinBucket, int, bool) {
	var (
		best    *pinBucket
		bestK   int
		bestAge int64
	)
	for _, b := range [2]*pinBucket{b1, b2} {
		for k := range b.slots {
			v := b.slots[k].val.Load()
			lane, gen, seen, _ := unpackPin(v)
			if best != nil && age(now, seen) <= bestAge {
				continue
			}
			if p.agree(&b.slots[k], lane, gen) {
				best, bestK, bestAge = b, k, age(now, seen)
			}
		}
		if b2 == b1 {
			break
		}
	}
	return best, bestK, best != nil
}

// agree asks sel (or the test's agrees) about the pin in sl.
func (p *Pins) agree(sl *pinSlot, lane LaneID, gen uint32) bool {
	if p.sel != nil {
		var w Words // does not escape: a static call
		for i := range w {
			w[i] = sl.key[i].Load()
		}
		return p.sel.pinAgrees(&w, lane, gen)
	}
	w := new(Words)
	for i := range w {
		w[i] = sl.key[i].Load()
	}
	return p.agrees(w, lane, gen)
}

// scan counts a bucket's free or expired slots, returning one of them, and
// its least recently seen pin with that pin's age.
func (p *Pins) scan(b *pinBucket, now uint32) (free, freeSlot, oldest int, oldestAge int64) {
	oldest = -1
	for k := range b.slots {
		v := b.slots[k].val.Load()
		if v == 0 || p.expired(v, now) {
			free++
			freeSlot = k
			continue
		}
		if _, _, seen, _ := unpackPin(v); oldest < 0 || age(now, seen) > oldestAge {
			oldest, oldestAge = k, age(now, seen)
		}
	}
	return free, freeSlot, oldest, oldestAge
}

// Sweep clears the idle pins of the next n buckets (round the table), so
// that the count of held pins follows the flows that ended. The demux
// calls it on its lane timer tick; a bucket is locked only if it has an
// idle pin to clear.
func (p *Pins) Sweep(now uint32, n int) {
	mask := uint64(len(p.buckets) - 1)
	for range min(n, len(p.buckets)) {
		b := &p.buckets[p.cursor.Add(1)&mask]
		idle := false
		for k := range b.slots {
			if v := b.slots[k].val.Load(); v != 0 && p.expired(v, now) {
				idle = true
				break
			}
		}
		if !idle {
			continue
		}
		s := b.lock()
		for k := range b.slots {
			if v := b.slots[k].val.Load(); v != 0 && p.expired(v, now) {
				b.slots[k].val.Store(0)
				p.held.Add(-1)
			}
		}
		b.seq.Store(s + 2)
	}
}

// Pin is a live pin as Each reads it.
type Pin struct {
	Words    Words
	Lane     LaneID
	Gen      uint32
	LastSeen uint32 // on the table's clock (Now)
	Packets  uint64 // since it was pinned
}

// Each calls fn with every live pin. It takes no lock: a pin being
// written meanwhile is read again, so fn sees each pin whole (once per
// bucket visit). A full scan of a million slots takes milliseconds: for
// operators' commands, not the data path.
func (p *Pins) Each(now uint32, fn func(Pin)) {
	var found [pinWays]Pin
	for i := range p.buckets {
		b := &p.buckets[i]
		for spins := 0; ; spins++ {
			s := b.seq.Load()
			n := 0
			if s&1 == 0 {
				for k := range b.slots {
					sl := &b.slots[k]
					v := sl.val.Load()
					if v == 0 || p.expired(v, now) {
						continue
					}
					pin := &found[n]
					for j := range pin.Words {
						pin.Words[j] = sl.key[j].Load()
					}
					pin.Lane, pin.Gen, pin.LastSeen, _ = unpackPin(v)
					pin.Packets = sl.packets.Load()
					n++
				}
				if b.seq.Load() == s {
					for _, pin := range found[:n] {
						fn(pin)
					}
					break
				}
			}
			backoff(spins)
		}
	}
}

// Buckets is the number of buckets (Sweep's unit).
func (p *Pins) Buckets() int { return len(p.buckets) }

// find returns w's slot in the bucket and its value, or nil.
func (b *pinBucket) find(w *Words, tag uint32) (*pinSlot, uint64) {
	for k := range b.tags {
		if b.tags[k].Load() != tag {
			continue
		}
		sl := &b.slots[k]
		// Word 4 (ports, proto) differs most often between flows; test it first.
		if sl.key[4].Load() == w[4] && sl.key[0].Load() == w[0] && sl.key[1].Load() == w[1] &&
			sl.key[2].Load() == w[2] && sl.key[3].Load() == w[3] {
			if v := sl.val.Load(); v != 0 {
				return sl, v
			}
		}
	}
	return nil, 0
}

// lock makes the bucket's sequence odd and returns the even value it had.
func (b *pinBucket) lock() uint32 {
	for spins := 0; ; spins++ {
		s := b.seq.Load()
		if s&1 == 0 && b.seq.CompareAndSwap(s, s+1) {
			return s
		}
		backoff(spins)
	}
}

// backoff spins briefly, then yields: writers hold a bucket for a few
// dozen nanoseconds, but may be preempted while they do.
func backoff(spins int) {
	if spins > 16 {
		runtime.Gosched()
	}
}

// PinStats are the table's counters, read without a scan.
type PinStats struct {
	Held      int    // pins in the table, idle ones included until Sweep clears them
	Capacity  int    // the most pins it holds
	Inserts   uint64 // pins written
	Evictions uint64 // live pins pushed out because both their buckets were full
	Moved     uint64 // of those, pins the table disagreed with: their flows moved lane
}

// Stats returns the table's counters.
func (p *Pins) Stats() PinStats {
	return PinStats{Held: int(p.held.Load()), Capacity: p.Capacity(), Inserts: p.inserts.Load(),
		Evictions: p.evictions.Load(), Moved: p.moved.Load()}
}

// Live scans the table for pins not yet idle: for tests and tools, not
// for every scrape (a million slots take tens of milliseconds).
func (p *Pins) Live(now uint32) int {
	live := 0
	for i := range p.buckets {
		for j := range p.buckets[i].slots {
			if v := p.buckets[i].slots[j].val.Load(); v != 0 && !p.expired(v, now) {
				live++
			}
		}
	}
	return live
}
