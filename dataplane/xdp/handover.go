//go:build linux

package xdp

import (
	"encoding/binary"
	"net/netip"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/clusterpeer/clusterpeer/dataplane/packet"
	"github.com/clusterpeer/clusterpeer/flowhash"
)

// The hand-over ledger (demux.c's handover map) keeps a flow's packets in
// order where they change path. A flow's packets reach a gateway by two
// paths: sent by the program, or passed up through the kernel to the
// userspace demux's TUN and sent by it. The second is slower, and the
// userspace demux can be held up for as long as its host stalls. So when
// a flow moves from it to the program (a failed lane's flows after its
// settle window, which the userspace demux held; a gateway whose MAC was
// just resolved), a packet sent by the program could overtake one still
// in the TUN's queue. The ledger counts, per bucket of flows, the packets
// the program passed up and those the userspace demux has finished with
// (Finished); while the gate is set, for HandoverGate after each Publish,
// the program passes a packet up too, behind the others, while its
// bucket has one outstanding. Order by construction, not by a guess of
// how long the queue takes.
//
//	[0, handoverBuckets)                     passed up (the program adds)
//	[handoverBuckets, 2*handoverBuckets)     finished (Finished adds)
//	[2*handoverBuckets]                      the gate (Publish sets it, Sync clears it)
const (
	handoverBuckets = 4096 // HANDOVER_BUCKETS in demux.c
	handoverGate    = 2 * handoverBuckets
	ledgerLen       = (2*handoverBuckets + 1) * 8
)

// HandoverGate is how long after a lane change the program holds flows
// behind what they have with the userspace demux: bounded, so that a
// packet lost on the way up (the TUN's queue full) delays its bucket's
// flows for at most this long. Ample for a userspace demux that stalls
// for 150 ms; a flow still waiting after it goes direct.
const HandoverGate = time.Second

// handoverQuiet is how many Sync ticks a bucket must stay unchanged, and
// unbalanced, before the ledger writes its difference off as lost on the
// way up: none of its flows passed a packet up meanwhile, so none is in
// flight.
const handoverQuiet = 10

// ledgerWord is word i of the ledger's memory.
func (p *Program) ledgerWord(i int) *atomic.Uint64 {
	return (*atomic.Uint64)(unsafe.Pointer(&p.ledger[8*i]))
}

// Finished tells the ledger that the userspace demux is done with pkt, an
// IP packet it read from its TUN: sent on, or dropped. It counts pkt
// where the program counted passing it up (its parse took the packet
// whole, it fits the lane MTU and it is for the remote network), so that
// the program sends nothing of pkt's flow ahead of it. (One over the MTU
// the program passes up uncounted: the kernel drops it, with DF, or
// fragments it, before the TUN.) Called once per packet; it neither
// allocates nor locks.
func (p *Program) Finished(pkt []byte) {
	if b, ok := p.ledgerBucket(pkt); ok {
		p.ledgerWord(handoverBuckets + b).Add(1)
	}
}

// ledgerBucket is pkt's bucket if the program counts it.
func (p *Program) ledgerBucket(pkt []byte) (int, bool) {
	if len(pkt) > p.mtu || !takenWhole(pkt) {
		return 0, false
	}
	var t flowhash.Tuple
	if t.Decode(pkt) != flowhash.DropNone {
		return 0, false
	}
	dst := netip.AddrFrom16(t.Dst).Unmap()
	for _, r := range p.remote {
		if r.Contains(dst) {
			w := p.words.Words(&t)
			return handoverBucket(&w), true
		}
	}
	return 0, false
}

// handoverBucket is handover_bucket in demux.c.
func handoverBucket(w *flowhash.Words) int {
	const m = 0x9e3779b97f4a7c15
	x := w[0]
	for _, v := range w[1:] {
		x = (x ^ v) * m
	}
	return int(x >> 52)
}

// takenWhole reports whether demux.c's parse takes pkt whole (returns
// R_NUM), as the kernel forwards it into the TUN: no IPv4 options or
// fragments, no IPv6 extension headers, a TCP, UDP or SCTP header with
// its ports, or ICMP of the IP version that is not an error. (Its TTL
// was above 1 at the program, or the kernel would not have forwarded
// it; its header checksum was good, or likewise.)
func takenWhole(pkt []byte) bool {
	var proto uint8
	var l4 []byte
	v6 := false
	switch packet.Version(pkt) {
	case 4:
		if len(pkt) < packet.IPv4MinLen {
			return false
		}
		ip := packet.IPv4(pkt)
		total := ip.TotalLen()
		if ip.HeaderLen() != packet.IPv4MinLen || total < packet.IPv4MinLen || total > len(pkt) ||
			binary.BigEndian.Uint16(pkt[6:8])&0x3fff != 0 {
			return false
		}
		proto, l4 = ip.Protocol(), pkt[packet.IPv4MinLen:total]
	case 6:
		if len(pkt) < packet.IPv6Len {
			return false
		}
		ip := packet.IPv6(pkt)
		n := ip.PayloadLen()
		if n == 0 || packet.IPv6Len+n > len(pkt) {
			return false
		}
		proto, l4, v6 = ip.NextHeader(), pkt[packet.IPv6Len:packet.IPv6Len+n], true
	default:
		return false
	}
	switch proto {
	case flowhash.ProtoTCP, flowhash.ProtoUDP, flowhash.ProtoSCTP:
		return len(l4) >= 4
	case flowhash.ProtoICMP, flowhash.ProtoICMPv6:
		if (proto == flowhash.ProtoICMPv6) != v6 || len(l4) < 8 {
			return false
		}
		if v6 {
			return l4[0] < 1 || l4[0] > 4
		}
		return l4[0] != 3 && l4[0] != 11 && l4[0] != 12
	}
	return false
}

// openGate sets the gate (Publish, before it swaps the snapshot in: no
// packet sees the new lane set with the gate still clear).
func (p *Program) openGate(now time.Time) {
	p.ledgerWord(handoverGate).Store(1)
	p.gateOpened.Store(now.UnixNano())
}

// ledgerWatch is Sync's view of the ledger at its last tick.
type ledgerWatch struct {
	passed, finished [handoverBuckets]uint64
	quiet            [handoverBuckets]uint8
}

// tidyLedger, at each Sync tick, clears the gate HandoverGate after it
// was set, and writes off what buckets have had outstanding, unchanged,
// for handoverQuiet ticks: packets passed up that the userspace demux
// never saw (the kernel dropped them on the way: the TUN's queue full),
// or that reached it by another way than the program (its count ran
// ahead). It returns the packets written off.
func (p *Program) tidyLedger(w *ledgerWatch, now time.Time) uint64 {
	if p.ledgerWord(handoverGate).Load() != 0 && now.UnixNano()-p.gateOpened.Load() >= int64(HandoverGate) {
		p.ledgerWord(handoverGate).Store(0)
	}
	var off uint64
	for b := range handoverBuckets {
		passed, fin := p.ledgerWord(b).Load(), p.ledgerWord(handoverBuckets+b)
		done := fin.Load()
		if passed == done || passed != w.passed[b] || done != w.finished[b] {
			w.passed[b], w.finished[b], w.quiet[b] = passed, done, 0
			continue
		}
		if w.quiet[b]++; w.quiet[b] < handoverQuiet {
			continue
		}
		if fin.CompareAndSwap(done, passed) {
			if passed > done {
				off += passed - done
			} else {
				off += done - passed
			}
		}
		w.passed[b], w.finished[b], w.quiet[b] = passed, passed, 0
	}
	p.writtenOff.Add(off)
	return off
}
