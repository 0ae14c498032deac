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
// It is a fixed-capacity, 8-way set-associative hash table indexed by the
// flow hash. Lookups (every packet of an established flow) take no lock:
// each bucket has a sequence number that writers make odd while they change
// the bucket, and a reader that saw it change retries. Refreshing a pin's
// idle timer is a CAS, once per second per flow. Inserts (the first packet
// of a flow, or a flow whose lane died) take the bucket by making its
// sequence odd; a full bucket evicts an expired pin, else its least
// recently used one.
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

	inserts   atomic.Uint64
	evictions atomic.Uint64 // live pins pushed out by a full bucket
}

const pinWays = 8

type pinBucket struct {
	seq   atomic.Uint32
	slots [pinWays]pinSlot
}

type pinSlot struct {
	key [5]atomic.Uint64
	val atomic.Uint64 // packed pin; 0 = empty
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
		shift:     uint(64 - bits.Len(uint(nb-1))),
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

func (p *Pins) bucket(sum uint64) *pinBucket {
	if p.shift == 64 { // one bucket
		return &p.buckets[0]
	}
	return &p.buckets[sum>>p.shift]
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
// words w and hash sum, refreshing its idle timer. ok is false when there
// is no live pin.
func (p *Pins) Lookup(w *Words, sum uint64, now uint32) (lane LaneID, gen uint32, ok bool) {
	b := p.bucket(sum)
	for spins := 0; ; spins++ {
		s := b.seq.Load()
		if s&1 != 0 {
			backoff(spins)
			continue
		}
		var v uint64
		slot := b.find(w)
		if slot != nil {
			v = slot.val.Load()
		}
		if b.seq.Load() != s {
			backoff(spins)
			continue
		}
		if v == 0 || p.expired(v, now) {
			return 0, 0, false
		}
		lane, gen, seen, _ := unpackPin(v)
		if age(now, seen) > 0 {
			// Best effort: if a writer replaced the slot meanwhile, the
			// CAS fails and the new pin stands.
			slot.val.CompareAndSwap(v, v&(1<<32-1)|uint64(now)<<32)
		}
		return lane, gen, true
	}
}

// Insert pins the flow to lane (of generation gen), replacing any pin it had.
func (p *Pins) Insert(w *Words, sum uint64, lane LaneID, gen uint32, tcp bool, now uint32) {
	b := p.bucket(sum)
	s := b.lock()
	slot := b.find(w)
	if slot == nil {
		slot = p.victim(b, now)
		slot.val.Store(0) // readers that match the new key early see "empty"
		for i := range slot.key {
			slot.key[i].Store(w[i])
		}
	}
	slot.val.Store(packPin(lane, gen, tcp, now))
	b.seq.Store(s + 2)
	p.inserts.Add(1)
}

// victim picks the slot a new pin goes into: an empty or expired one, else
// the least recently seen (counted as an eviction). Called with b locked.
func (p *Pins) victim(b *pinBucket, now uint32) *pinSlot {
	var oldest *pinSlot
	var oldestSeen uint32
	for i := range b.slots {
		sl := &b.slots[i]
		v := sl.val.Load()
		if v == 0 || p.expired(v, now) {
			return sl
		}
		if _, _, seen, _ := unpackPin(v); oldest == nil || age(now, seen) > age(now, oldestSeen) {
			oldest, oldestSeen = sl, seen
		}
	}
	p.evictions.Add(1)
	return oldest
}

func (b *pinBucket) find(w *Words) *pinSlot {
	for i := range b.slots {
		sl := &b.slots[i]
		// Word 4 (ports, proto) differs most often between flows; test it first.
		if sl.key[4].Load() == w[4] && sl.key[0].Load() == w[0] && sl.key[1].Load() == w[1] &&
			sl.key[2].Load() == w[2] && sl.key[3].Load() == w[3] && sl.val.Load() != 0 {
			return sl
		}
	}
	return nil
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

// PinStats are the table's counters.
type PinStats struct {
	Live      int    // pins not yet idle (a scan: call it for metrics, not per packet)
	Capacity  int    // the most pins it holds
	Inserts   uint64 // pins written
	Evictions uint64 // live pins pushed out because their bucket was full
}

// Stats scans the table and returns its counters.
func (p *Pins) Stats(now uint32) PinStats {
	st := PinStats{Capacity: p.Capacity(), Inserts: p.inserts.Load(), Evictions: p.evictions.Load()}
	for i := range p.buckets {
		for j := range p.buckets[i].slots {
			if v := p.buckets[i].slots[j].val.Load(); v != 0 && !p.expired(v, now) {
				st.Live++
			}
		}
	}
	return st
}
