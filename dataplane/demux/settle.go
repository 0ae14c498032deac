package demux

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clusterpeer/clusterpeer/flowhash"
)

// HoldPackets is how many packets of a failed lane's flows the demux holds
// during the lane's settle window (about 3 MiB at the default MTU); past
// that they are dropped and counted as settling.
const HoldPackets = 2048

// holdQueue keeps the packets of a failed lane's flows while the lane
// settles (flowhash.DropSettling) and sends them, in the order they came,
// on the lanes their flows move to when the window is over: so nothing of
// those flows overtakes what was still inside the failed lane, and a
// planned stop loses nothing.
//
// The loop touches the queue's lock only while something is held; the
// settle timer flushes it too, in case no further packet comes to do it.
type holdQueue struct {
	n     atomic.Int32 // packets held; the loop's only look while empty
	mu    sync.Mutex
	bufs  [][]byte // preallocated, Headroom + MTU each
	sizes []int
	out   [flowhash.MaxLaneID + 1][][]byte
	used  []flowhash.LaneID
}

func (q *holdQueue) init(mtu int) {
	q.bufs = make([][]byte, HoldPackets)
	for i := range q.bufs {
		q.bufs[i] = make([]byte, Headroom+mtu)
	}
	q.sizes = make([]int, HoldPackets)
	q.used = make([]flowhash.LaneID, 0, flowhash.MaxLaneID+1)
}

// hold copies pkt into the queue (called with mu held); false when full.
func (q *holdQueue) hold(pkt []byte) bool {
	i := int(q.n.Load())
	if i == len(q.bufs) || Headroom+len(pkt) > len(q.bufs[i]) {
		return false
	}
	q.sizes[i] = copy(q.bufs[i][Headroom:], pkt)
	q.n.Add(1)
	return true
}

// settling handles a packet the selector told to wait: the loop holds it,
// flushing first whatever waited if the window is over meanwhile.
func (d *Demux) settling(pkt []byte) {
	q := &d.held
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.hold(pkt) {
		d.C.Drops[flowhash.DropSettling].Add(1)
		d.finish(pkt)
		return
	}
	d.C.Held.Add(1)
}

// flushHeld sends what the queue holds if the settle window is over; the
// loop calls it before it sends each batch while the queue is not empty
// (held packets came first, so they leave first), the settle timer when
// the window ends. A packet whose flow waits again (another lane failed
// meanwhile) is dropped as settling.
func (d *Demux) flushHeld() {
	q := &d.held
	q.mu.Lock()
	defer q.mu.Unlock()
	n := int(q.n.Load())
	sel := d.cfg.Selector
	if lane, until := sel.Snapshot().Settling(); n == 0 || (lane != 0 && sel.Clock() < until) {
		return
	}
	now := sel.Pins().Now()
	targets := d.targets.Load()
	for i := range n {
		pkt := q.bufs[i][Headroom : Headroom+q.sizes[i]]
		lane, drop := sel.Select(pkt, now)
		if drop == flowhash.DropNone && targets[lane] == nil {
			drop = flowhash.DropNoLane
		}
		if drop != flowhash.DropNone {
			d.C.Drops[drop].Add(1)
			d.finish(pkt)
			continue
		}
		frame := d.encap(q.bufs[i], q.sizes[i], targets[lane])
		if len(q.out[lane]) == 0 {
			q.used = append(q.used, lane)
		}
		q.out[lane] = append(q.out[lane], frame)
	}
	for _, lane := range q.used {
		d.sendFrames(q.out[lane], targets[lane])
		clear(q.out[lane])
		q.out[lane] = q.out[lane][:0]
	}
	q.used = q.used[:0]
	q.n.Store(0)
}

// LaneSettled ends a failed lane's settle window early (the prober's
// OnSettled: a probe sent after the failure came back through the lane,
// so everything sent into it before has come out): its held packets
// leave now.
func (d *Demux) LaneSettled(lane flowhash.LaneID) {
	if !d.cfg.Selector.EndSettleOf(lane) {
		return
	}
	d.flushHeld()
	d.lanes.mu.Lock()
	if cb := d.lanes.cfg.OnPublish; cb != nil {
		cb()
	}
	var waited time.Duration
	if mb := d.lanes.members[lane]; mb != nil {
		waited = time.Since(mb.since)
	}
	d.lanes.mu.Unlock()
	d.cfg.Log.Info("lane settled: a probe sent after it failed came back through it; its flows' held packets leave", "lane", lane,
		"waited", waited.Round(10*time.Microsecond))
}

// settleTimer ends a settle window on time even if no packet comes to
// notice it: the selector drops the settling snapshot and the held
// packets leave.
func (d *Demux) settleTimer(settle time.Duration) {
	time.AfterFunc(settle, func() {
		for d.cfg.Selector.EndSettle() {
			time.Sleep(time.Millisecond) // woken a little early
		}
		d.flushHeld()
		d.lanes.mu.Lock()
		if cb := d.lanes.cfg.OnPublish; cb != nil {
			cb()
		}
		d.lanes.mu.Unlock()
	})
}

// fence waits until every queue's loop has finished the batch it was in
// when fence was called (a grace period, as RCU's), at most limit; false
// if a loop was still inside it then. A loop selects a batch's lanes
// before it sends: packets it gave the failed lane just before the new
// snapshot are sent after it. Fenced, they are in the lane's socket
// before the prober's settle probe, whose reply then crosses the lane
// behind them: so a reply, not a guess, ends the window.
func (d *Demux) fence(limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for _, q := range d.queues {
		b := q.batches.Load()
		for i := 0; b&1 == 1 && q.batches.Load() == b; i++ {
			if time.Now().After(deadline) {
				return false
			}
			if i < 100 {
				runtime.Gosched() // a batch takes microseconds
			} else {
				time.Sleep(100 * time.Microsecond) // its loop was preempted
			}
		}
	}
	return true
}
