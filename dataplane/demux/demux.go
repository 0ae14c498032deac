// Package demux is the demux's userspace data path: the packets the local
// network routes to the remote prefixes come in through a TUN, and each
// leaves inside GENEVE for the local gateway of the lane its flow hashes to.
//
// Stages, per batch read from a TUN queue (one read may be a GSO
// super-packet that the TUN splits into MTU-sized segments):
//
//	TUN queue read -> flowhash select -> too big? ICMP back into the TUN
//	               -> GENEVE header written in the headroom -> per-lane batch
//	               -> batched UDP send (GSO) to the lane's gateway
//
// One goroutine runs each queue's loop, one queue per core (AddQueue): the
// kernel gives each flow to one queue, and a loop sends what it read in
// the order it came, so packets of a flow leave in order. Nothing on the
// way allocates or locks; counters are atomics added once per batch and
// lane. (The rare paths lock: a too-big packet's ICMP budget, packets held
// while a failed lane settles.)
package demux

import (
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/clusterpeer/clusterpeer/dataplane/geneveauth"
	"github.com/clusterpeer/clusterpeer/dataplane/packet"
	"github.com/clusterpeer/clusterpeer/dataplane/ratelog"
	"github.com/clusterpeer/clusterpeer/dataplane/tunlink"
	"github.com/clusterpeer/clusterpeer/flowhash"
)

// Headroom is the space kept in front of each packet read from the TUN:
// the TUN's virtio header (10 bytes) while reading, the GENEVE header
// (8 bytes, 32 sealed) afterwards.
const Headroom = geneveauth.HeaderLen

// Drop reasons of the demux beyond flowhash's.
const (
	DropTooBig    = "too_big"    // over the MTU; ICMP sent back unless rate-limited or not allowed
	DropSendError = "send_error" // the UDP send to the gateway failed
	DropNotRemote = "not_remote" // destination outside the remote network (e.g. the kernel's own MLD)
)

// ICMPPerSecond bounds the ICMP errors the demux sends, as routers do;
// ICMPPerSourcePerSecond bounds those to one source (a bucket of
// icmpBuckets, chosen by a keyed hash of the address), so that one
// sender of oversized packets cannot spend everyone's budget. Path MTU
// discovery needs one error per flow.
const (
	ICMPPerSecond          = 1000
	ICMPPerSourcePerSecond = 50
	icmpBuckets            = 1024
)

// Target is where a lane's packets go: its local gateway's GENEVE address.
type Target struct {
	ID       flowhash.LaneID
	Name     string // the gateway's node name, for logs and status
	Endpoint conn.Endpoint
	Addr     netip.AddrPort
	// Seal, if set, authenticates the lane's frames (the peering's
	// geneve_auth); the prober seals its probes with the same one.
	Seal *geneveauth.Sealer
}

// Config configures a Demux.
type Config struct {
	Selector *flowhash.Selector
	VNI      uint32
	MTU      int            // largest inner packet a lane carries
	Remote   []netip.Prefix // the remote network; other destinations are dropped (none: no check)
	ICMPv4   netip.Addr     // source of ICMP errors; no IPv4 errors if invalid
	ICMPv6   netip.Addr     // likewise for ICMPv6
	Log      *slog.Logger
}

// LaneCounters are one lane's traffic, as sent to its gateway.
type LaneCounters struct {
	Packets, Bytes, SendErrors atomic.Uint64
}

// Counters are the demux's totals.
type Counters struct {
	Packets, Bytes atomic.Uint64 // read from the TUN
	Drops          [flowhash.NumDrops]atomic.Uint64
	TooBig         atomic.Uint64
	NotRemote      atomic.Uint64
	ICMPSent       atomic.Uint64
	ReadErrors     atomic.Uint64 // failed TUN reads, survived
	ICMPLimited    atomic.Uint64 // too-big errors not sent: over the budget, the sender's or everyone's
	SendErrors     atomic.Uint64 // packets lost to failed sends
	Held           atomic.Uint64 // packets held through a failed lane's settle window
	ICMPUnmatched  atomic.Uint64 // ICMP errors about a lane that quote nothing it sent there
	Lanes          [flowhash.MaxLaneID + 1]LaneCounters
}

// Demux forwards from a TUN's queues to lanes.
type Demux struct {
	cfg     Config
	bind    conn.Bind
	sendMax int
	targets atomic.Pointer[[flowhash.MaxLaneID + 1]*Target]
	lanes   lanes
	held    holdQueue
	queues  []*queue
	C       Counters
	// finished, if set, is told of each packet the demux is done with
	// (SetFinished).
	finished func(pkt []byte)

	// The ICMP budget, which every queue's too-big packets spend.
	icmpMu     sync.Mutex
	icmpSecond uint32
	icmpLeft   int
	icmpSeed   maphash.Seed
	icmpSource [icmpBuckets]icmpBucket
}

// queue is one TUN queue and its loop's state, owned by the goroutine
// that runs the loop.
type queue struct {
	d        *Demux
	tun      tun.Device
	ahead    *tunlink.Reader // what else is queued, without waiting (nil: a test's device)
	bufs     [][]byte
	sizes    []int
	pending  [flowhash.MaxLaneID + 1][][]byte
	used     []flowhash.LaneID
	icmpBufs [][]byte
	icmpOut  [][]byte
	readLog  ratelog.Limiter
	// batches is odd while the loop is inside a batch (forward), so that
	// fence can wait for the batch it is in; added to twice per batch.
	batches atomic.Uint64
}

// icmpBucket is the ICMP budget left to the sources hashing to it.
type icmpBucket struct {
	second uint32
	left   uint16
}

// New prepares a demux reading from t and sending through b (opened by
// the caller).
func New(t tun.Device, b conn.Bind, cfg Config) (*Demux, error) {
	if cfg.Selector == nil {
		return nil, errors.New("demux: no selector")
	}
	if cfg.MTU < 576 {
		return nil, fmt.Errorf("demux: mtu %d too small", cfg.MTU)
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	d := &Demux{cfg: cfg, bind: b, sendMax: b.BatchSize()}
	d.icmpSecond = ^uint32(0) // no second yet: the first too-big refills the budget
	d.icmpSeed = maphash.MakeSeed()
	for i := range d.icmpSource {
		d.icmpSource[i].second = ^uint32(0)
	}
	d.targets.Store(new([flowhash.MaxLaneID + 1]*Target))
	d.held.init(cfg.MTU)
	d.AddQueue(t)
	return d, nil
}

// AddQueue has Run read another queue of the TUN (tunlink.Create), with
// a loop of its own. Call it before Run.
func (d *Demux) AddQueue(t tun.Device) {
	q := &queue{d: d, tun: t, ahead: tunlink.NewReader(t)}
	q.readLog.Every = 10 * time.Second
	q.bufs = make([][]byte, t.BatchSize())
	for i := range q.bufs {
		q.bufs[i] = make([]byte, Headroom+65535)
	}
	q.sizes = make([]int, len(q.bufs))
	q.icmpBufs = make([][]byte, len(q.bufs))
	for i := range q.icmpBufs {
		q.icmpBufs[i] = make([]byte, Headroom+packet.TooBigBufLen)
	}
	q.icmpOut = make([][]byte, 0, len(q.bufs))
	q.used = make([]flowhash.LaneID, 0, flowhash.MaxLaneID+1)
	d.queues = append(d.queues, q)
}

// SetFinished has the demux call fn with each packet it read once it is
// done with it: sent to its gateway (the send returned), or dropped; a
// held packet when it leaves. The XDP fast path's hand-over ledger
// (xdp.Program.Finished) counts them, so that the program sends nothing
// of a flow ahead of a packet of it still here. Call it before Run.
func (d *Demux) SetFinished(fn func(pkt []byte)) { d.finished = fn }

// finish tells SetFinished's fn that the demux is done with pkt.
func (d *Demux) finish(pkt []byte) {
	if d.finished != nil {
		d.finished(pkt)
	}
}

// Queues is how many TUN queues the demux reads.
func (d *Demux) Queues() int { return len(d.queues) }

// SetTargets replaces the lanes' gateway addresses. The selector decides
// which lanes take traffic; a lane without a target counts its packets as
// no_lane drops.
func (d *Demux) SetTargets(ts []Target) {
	t := new([flowhash.MaxLaneID + 1]*Target)
	for i := range ts {
		tt := ts[i]
		t[tt.ID] = &tt
	}
	d.targets.Store(t)
}

// Gateways returns each lane's gateway GENEVE address.
func (d *Demux) Gateways() map[flowhash.LaneID]netip.AddrPort {
	m := map[flowhash.LaneID]netip.AddrPort{}
	for id, t := range d.targets.Load() {
		if t != nil {
			m[flowhash.LaneID(id)] = t.Addr
		}
	}
	return m
}

// Run forwards, a loop per queue, until the TUN is closed; it returns nil
// then. Read errors are counted and logged (throttled) and survived: a
// super-packet with more segments than a batch is dropped, and other
// errors end Run only after a queue's reads failed alone for tunFailFor,
// so that a TUN that is gone stops the demux (for its supervisor to
// restart) and a passing fault does not. Run returns the first queue's
// error at once: the caller closes the TUN, which ends the others.
func (d *Demux) Run() error {
	errs := make(chan error, len(d.queues))
	for _, q := range d.queues {
		go func() { errs <- q.run() }()
	}
	for range d.queues {
		if err := <-errs; err != nil {
			return err
		}
	}
	return nil
}

func (q *queue) run() error {
	d := q.d
	var failingSince time.Time
	for {
		n, err := q.tun.Read(q.bufs, q.sizes, Headroom)
		// What the kernel queued meanwhile joins the batch: one send per
		// lane then carries many frames (coalesced by UDP GSO into one
		// datagram for the gateway's GRO), where one read per system
		// call made every small packet a send of its own.
		for err == nil && n < len(q.bufs)-readAheadRoom && q.ahead != nil {
			var m int
			if m, err = q.ahead.ReadNow(q.bufs[n:], q.sizes[n:], Headroom); m == 0 {
				break
			}
			n += m
		}
		if n > 0 {
			q.forward(q.bufs[:n], q.sizes[:n], d.cfg.Selector.Pins().Now())
		}
		if err == nil {
			failingSince = time.Time{}
			continue
		}
		if errors.Is(err, os.ErrClosed) {
			return nil
		}
		d.C.ReadErrors.Add(1)
		if errors.Is(err, tun.ErrTooManySegments) {
			q.readLog.Warn(d.cfg.Log, "tun read: super-packet with more segments than a batch; dropped", "err", err)
			continue
		}
		now := time.Now()
		if n > 0 || failingSince.IsZero() {
			failingSince = now
		}
		if now.Sub(failingSince) > tunFailFor {
			return fmt.Errorf("tun read: failing for %v: %w", tunFailFor, err)
		}
		q.readLog.Warn(d.cfg.Log, "tun read failed; the demux carries on", "err", err)
		time.Sleep(time.Millisecond) // a persistent fault must not spin a core
	}
}

// readAheadRoom is the room a batch keeps for the segments of one more
// super-packet: a read ahead stops with fewer buffers left. (A TCP
// super-packet over a 1420-byte lane is at most 48 segments.)
const readAheadRoom = 64

// tunFailFor is how long TUN reads may fail without a packet before Run
// gives up (a variable for the tests).
var tunFailFor = 5 * time.Second

// Forward handles one batch as the first queue's loop does:
// bufs[i][Headroom:Headroom+sizes[i]] is a packet.
func (d *Demux) Forward(bufs [][]byte, sizes []int, now uint32) {
	d.queues[0].forward(bufs, sizes, now)
}

func (q *queue) forward(bufs [][]byte, sizes []int, now uint32) {
	q.batches.Add(1)
	defer q.batches.Add(1)
	d := q.d
	sel := d.cfg.Selector
	targets := d.targets.Load()
	var bytes uint64
	for i, b := range bufs {
		size := sizes[i]
		bytes += uint64(size)
		pkt := b[Headroom : Headroom+size]
		if !d.toRemote(pkt) {
			d.C.NotRemote.Add(1)
			continue
		}
		lane, drop := sel.Select(pkt, now)
		if drop == flowhash.DropNone && targets[lane] == nil {
			drop = flowhash.DropNoLane
		}
		if drop == flowhash.DropSettling {
			d.settling(pkt)
			continue
		}
		if drop != flowhash.DropNone {
			d.C.Drops[drop].Add(1)
			d.finish(pkt)
			continue
		}
		if size > d.cfg.MTU {
			q.tooBig(pkt, now)
			d.finish(pkt)
			continue
		}
		frame := d.encap(b, size, targets[lane])
		if len(q.pending[lane]) == 0 {
			q.used = append(q.used, lane)
		}
		q.pending[lane] = append(q.pending[lane], frame)
	}
	d.C.Packets.Add(uint64(len(bufs)))
	d.C.Bytes.Add(bytes)
	if d.held.n.Load() > 0 {
		d.flushHeld()
	}
	for _, lane := range q.used {
		d.sendFrames(q.pending[lane], targets[lane])
		clear(q.pending[lane]) // drop references to the read buffers
		q.pending[lane] = q.pending[lane][:0]
	}
	q.used = q.used[:0]
	if len(q.icmpOut) > 0 {
		if _, err := q.tun.Write(q.icmpOut, Headroom); err != nil {
			d.cfg.Log.Debug("tun write icmp", "err", err)
		} else {
			d.C.ICMPSent.Add(uint64(len(q.icmpOut)))
		}
		q.icmpOut = q.icmpOut[:0]
	}
}

// toRemote reports whether pkt is addressed into the remote network.
// Anything else in the TUN is the local kernel talking to the link (IPv6
// MLD reports, router solicitations), never for a lane. Packets too short
// to tell pass, for Select to drop with its reason.
func (d *Demux) toRemote(pkt []byte) bool {
	if len(d.cfg.Remote) == 0 {
		return true
	}
	dst, ok := packet.Dst(pkt)
	if !ok {
		return true
	}
	for _, p := range d.cfg.Remote {
		if p.Contains(dst) {
			return true
		}
	}
	return false
}

// encap writes the GENEVE header for t in front of the packet
// b[Headroom:Headroom+size] and returns the frame. A sealed frame's
// option is written with its tag in sendFrames, once the batch's
// counters are known.
func (d *Demux) encap(b []byte, size int, t *Target) []byte {
	hdr := packet.GeneveLen
	if t.Seal != nil {
		hdr = geneveauth.HeaderLen
	}
	frame := b[Headroom-hdr : Headroom+size]
	proto := uint16(packet.ProtoIPv4)
	if packet.Version(frame[hdr:]) == 6 {
		proto = packet.ProtoIPv6
	}
	packet.PutGeneve(frame, d.cfg.VNI, proto, false)
	return frame
}

// sendFrames seals (if t seals) and sends GENEVE frames to lane t's
// gateway, in batches, then finishes the packets inside them (sent or
// failed, the demux is done with them).
func (d *Demux) sendFrames(frames [][]byte, t *Target) {
	hdr := packet.GeneveLen
	if t.Seal != nil {
		hdr = geneveauth.HeaderLen
		first := t.Seal.Reserve(len(frames))
		for i, f := range frames {
			t.Seal.Seal(f, first+uint64(i))
		}
	}
	var bytes uint64
	for _, f := range frames {
		bytes += uint64(len(f) - hdr)
	}
	c := &d.C.Lanes[t.ID]
	var failed uint64
	for rest := frames; len(rest) > 0; {
		chunk := rest[:min(len(rest), d.sendMax)]
		rest = rest[len(chunk):]
		if err := d.bind.Send(chunk, t.Endpoint); err != nil {
			failed += uint64(len(chunk))
			for _, f := range chunk {
				bytes -= uint64(len(f) - hdr)
			}
		}
	}
	if failed > 0 {
		c.SendErrors.Add(failed)
		d.C.SendErrors.Add(failed)
	}
	c.Packets.Add(uint64(len(frames)) - failed)
	c.Bytes.Add(bytes)
	if d.finished != nil {
		for _, f := range frames {
			d.finished(f[hdr:])
		}
	}
}

// tooBig answers an oversized packet as a router does, within the ICMP
// budget. The kernel in front of the TUN normally does this already (the
// TUN's MTU is the lane MTU); this covers a TUN whose MTU was raised and
// lanes with a smaller MTU.
func (q *queue) tooBig(pkt []byte, now uint32) {
	d := q.d
	d.C.TooBig.Add(1)
	d.icmpMu.Lock()
	defer d.icmpMu.Unlock()
	if now != d.icmpSecond {
		d.icmpSecond, d.icmpLeft = now, ICMPPerSecond
	}
	if d.icmpLeft == 0 || len(q.icmpOut) == len(q.icmpBufs) {
		d.C.ICMPLimited.Add(1)
		return
	}
	src, sender := d.cfg.ICMPv4, packet.IPv4(pkt).SrcSlice()
	if packet.Version(pkt) == 6 {
		src, sender = d.cfg.ICMPv6, packet.IPv6(pkt).SrcSlice()
	}
	bk := &d.icmpSource[maphash.Bytes(d.icmpSeed, sender)%icmpBuckets]
	if bk.second != now {
		bk.second, bk.left = now, ICMPPerSourcePerSecond
	}
	if bk.left == 0 {
		d.C.ICMPLimited.Add(1)
		return
	}
	buf := q.icmpBufs[len(q.icmpOut)]
	n := packet.PutTooBig(buf[Headroom:], pkt, d.cfg.MTU, src)
	if n == 0 {
		return
	}
	d.icmpLeft--
	bk.left--
	q.icmpOut = append(q.icmpOut, buf[:Headroom+n])
}
