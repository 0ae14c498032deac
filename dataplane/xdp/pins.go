//go:build linux

package xdp

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/clusterpeer/clusterpeer/flowhash"
)

// The program's pin map is a plain hash the kernel never evicts from
// (demux.c says why): a new flow finding it full goes unpinned and
// follows the table. SweepPins keeps room in it, as the userspace pin
// table's eviction rule does, without ever forgetting a pin whose flow
// that would move:
//
//   - from a quarter full, it deletes idle pins (the program already
//     treats them as absent; below that they cost nothing);
//   - from seven eighths full, also pins the published table agrees with
//     (or whose lane's pins are void) and that have not been seen for
//     pressureIdle: forgetting them moves nothing, and a flow that is
//     still alive pins itself again, to the same lane, at its next packet.
//
// Each call looks at the next 1/256 of the map's capacity, so a full
// pass over a full map takes 256 calls (26 s at the map sync's 100 ms:
// pins idle after 120 s or more), and under pressure up to 8 times that
// until it is below seven eighths again. BenchmarkSweepPins, the default
// million-pin map half full: 1.4 ms a call (chunks of 1/32 took 10.8 ms,
// a tenth of a core at one call per 100 ms).
const (
	sweepChunks    = 256
	pressureChunks = 8
	pressureIdle   = 1 // seconds
)

// pinSweep is SweepPins' state: the Sync goroutine's alone, but for the
// counters, which Status reads.
type pinSweep struct {
	capacity int
	cursor   ebpf.MapBatchCursor
	keys     []demuxWords
	vals     []demuxPin
	doomed   []demuxWords
	deleted  atomic.Uint64 // pins deleted here, idle or agreeing
	expired  atomic.Uint64 // of those, idle
	evicted  atomic.Uint64 // of those, live but agreeing, under pressure
	pressure uint32        // pressureIdle; tests set 0
	// The program's idle times (pin_tcp_idle, pin_other_idle); a test
	// shortens them for the sweep alone.
	tcpIdle, otherIdle uint32
}

func newPinSweep(capacity int) *pinSweep {
	n := max(capacity/sweepChunks, 256)
	return &pinSweep{capacity: capacity, keys: make([]demuxWords, n), vals: make([]demuxPin, n), pressure: pressureIdle,
		tcpIdle: pinTCPIdle, otherIdle: pinOtherIdle}
}

// PinStats are the program's pin counters.
type PinStats struct {
	Held     int    `json:"held"` // pins in the map, idle ones until swept
	Capacity int    `json:"capacity"`
	Inserts  uint64 `json:"inserts"`  // pins written for new flows
	Unpinned uint64 `json:"unpinned"` // new flows the full map could not pin (they follow the table)
	Expired  uint64 `json:"expired"`  // idle pins the sweep deleted
	Evicted  uint64 `json:"evicted"`  // live pins the table agrees with, deleted under pressure: none of their flows moved
}

// PinStats reads the pin counters (two per-CPU lookups).
func (p *Program) PinStats() (PinStats, error) {
	st := PinStats{Capacity: p.pins.capacity, Expired: p.pins.expired.Load(), Evicted: p.pins.evicted.Load()}
	var per []uint64
	for i, v := range []*uint64{&st.Inserts, &st.Unpinned} {
		if err := p.objs.PinStats.Lookup(uint32(i), &per); err != nil {
			return st, fmt.Errorf("xdp: read pin counters: %w", err)
		}
		for _, n := range per {
			*v += n
		}
	}
	st.Held = int(st.Inserts - p.pins.deleted.Load())
	return st, nil
}

// SweepPins makes room in the pin map (see pinSweep), judging agreement
// by the snapshot last published. Called by Sync on its ticks; not safe
// for concurrent use.
func (p *Program) SweepPins() error {
	st, err := p.PinStats()
	if err != nil {
		return err
	}
	s := p.pins
	if st.Held < s.capacity/4 {
		return nil
	}
	p.mu.Lock()
	snap := p.snap
	p.mu.Unlock()
	held := st.Held
	for range pressureChunks {
		if held, err = p.sweepChunk(snap, held); err != nil || held <= s.capacity/8*7 {
			return err
		}
	}
	return nil
}

// sweepChunk sweeps the next chunk of the map, given that it holds held
// pins; it returns how many it holds after.
func (p *Program) sweepChunk(snap *flowhash.Snapshot, held int) (int, error) {
	s := p.pins
	n, err := p.objs.Pins.BatchLookup(&s.cursor, s.keys, s.vals, nil)
	end := errors.Is(err, ebpf.ErrKeyNotExist)
	if err != nil && !end {
		s.cursor = ebpf.MapBatchCursor{}
		return held, fmt.Errorf("xdp: read pins: %w", err)
	}
	if end {
		s.cursor = ebpf.MapBatchCursor{} // the next chunk starts a new pass
	}
	now := monotonicSeconds()
	s.doomed = s.doomed[:0]
	var expired uint64
	for i := range n {
		v := &s.vals[i]
		idle := s.otherIdle
		if v.Tcp != 0 {
			idle = s.tcpIdle
		}
		age := int32(now - v.LastSeen)
		switch {
		case age > int32(idle):
			expired++
		case held > s.capacity/8*7 && age >= int32(s.pressure) && snap != nil &&
			snap.PinAgrees((*flowhash.Words)(&s.keys[i].W), flowhash.LaneID(v.Lane), v.Gen):
		default:
			continue
		}
		s.doomed = append(s.doomed, s.keys[i])
		held--
	}
	deleted := p.deletePins(s.doomed)
	s.deleted.Add(uint64(deleted))
	s.expired.Add(min(expired, uint64(deleted)))
	s.evicted.Add(uint64(deleted) - min(expired, uint64(deleted)))
	return held + len(s.doomed) - deleted, nil
}

// deletePins deletes keys, in one batch; a key gone meanwhile ends a
// batch early, so the rest are then deleted one by one.
func (p *Program) deletePins(keys []demuxWords) int {
	if len(keys) == 0 {
		return 0
	}
	n, err := p.objs.Pins.BatchDelete(keys, nil)
	if err == nil || n == len(keys) {
		return n
	}
	for _, k := range keys[n:] {
		if p.objs.Pins.Delete(k) == nil {
			n++
		}
	}
	return n
}

// The program's idle times, in its seconds.
var (
	pinTCPIdle   = uint32(flowhash.DefaultTCPIdle.Seconds())
	pinOtherIdle = uint32(flowhash.DefaultOtherIdle.Seconds())
)

// monotonicSeconds is the program's clock (bpf_ktime_get_coarse_ns in
// seconds).
func monotonicSeconds() uint32 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &ts)
	return uint32(ts.Sec)
}

// FlowPin is a live pin of the program's map, for operators' commands.
type FlowPin struct {
	flowhash.Pin // LastSeen on the program's clock (CLOCK_MONOTONIC seconds)
	Idle         time.Duration
}

func (p *Program) flowPin(w flowhash.Words, v *demuxPin, now uint32) (FlowPin, bool) {
	idle := int32(now - v.LastSeen)
	limit := p.pins.otherIdle
	if v.Tcp != 0 {
		limit = p.pins.tcpIdle
	}
	if idle > int32(limit) {
		return FlowPin{}, false // the program treats it as absent
	}
	return FlowPin{Pin: flowhash.Pin{Words: w, Lane: flowhash.LaneID(v.Lane), Gen: v.Gen, LastSeen: v.LastSeen, Packets: v.Packets},
		Idle: time.Duration(max(idle, 0)) * time.Second}, true
}

// Pin is the program's live pin of the flow with canonical words w.
func (p *Program) Pin(w flowhash.Words) (FlowPin, bool) {
	var v demuxPin
	if err := p.objs.Pins.Lookup(demuxWords{W: w}, &v); err != nil {
		return FlowPin{}, false
	}
	return p.flowPin(w, &v, monotonicSeconds())
}

// EachPin calls fn with every live pin of the program's map, read in
// batches (a cursor of its own: the sweep's is not disturbed).
func (p *Program) EachPin(fn func(FlowPin)) error {
	var cursor ebpf.MapBatchCursor
	keys, vals := make([]demuxWords, 4096), make([]demuxPin, 4096)
	now := monotonicSeconds()
	for {
		n, err := p.objs.Pins.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			if fp, ok := p.flowPin(keys[i].W, &vals[i], now); ok {
				fn(fp)
			}
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("xdp: read pins: %w", err)
		}
	}
}
