package demux

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/clusterpeer/clusterpeer/dataplane/geneveauth"
	"github.com/clusterpeer/clusterpeer/dataplane/icmpwatch"
	"github.com/clusterpeer/clusterpeer/dataplane/packet"
	"github.com/clusterpeer/clusterpeer/flowhash"
)

// sinkCalls records what icmpError asked of the prober.
type sinkCalls struct {
	probes        int
	suspect, gone []flowhash.LaneID
}

func (s *sinkCalls) QuotedProbe([]byte, netip.Addr, netip.Addr, bool) bool { s.probes++; return false }
func (s *sinkCalls) Suspect(l flowhash.LaneID, _ string)                   { s.suspect = append(s.suspect, l) }
func (s *sinkCalls) Gone(l flowhash.LaneID, _ string)                      { s.gone = append(s.gone, l) }

// sentFrames forwards 64 flows and returns the frames each gateway got.
func sentFrames(t *testing.T, d *Demux, bind *fakeBind) map[netip.AddrPort][][]byte {
	var pkts [][]byte
	for f := range 64 {
		pkts = append(pkts, udp4(t, uint16(7000+f), 0, 100))
	}
	bufs, sizes := load(d, pkts)
	d.Forward(bufs, sizes, 0)
	out := map[netip.AddrPort][][]byte{}
	for dst, frames := range bind.sent {
		out[netip.MustParseAddrPort(dst)] = frames
	}
	return out
}

// TestICMPErrorSealed: with sealed lanes, an error quoting a frame the
// lane sent takes the lane down at once (Gone); one quoting a frame
// with a guessed tag, or a frame of another lane, is counted and does
// nothing at all: not even a poll, which a stall could confirm.
func TestICMPErrorSealed(t *testing.T) {
	d, _, bind := newTestDemux(t, 3)
	sealTargets(d)
	sent := sentFrames(t, d, bind)
	var sink sinkCalls
	for dst, frames := range sent {
		lane := d.targetAt(dst)
		f := frames[0]
		quote := func(payload []byte, from netip.Addr) icmpwatch.Quote {
			return icmpwatch.Quote{From: from, Dst: dst, Port: true, Payload: payload}
		}
		forged := bytes.Clone(f)
		forged[geneveauth.HeaderLen-1] ^= 0x80 // the tag's last byte
		other := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, 0, 21 + byte(lane%3)}), 6081)
		before := d.C.ICMPUnmatched.Load()
		d.icmpError(&sink, quote(forged, dst.Addr()))
		d.icmpError(&sink, quote(sent[other][0], dst.Addr())) // another lane's frame, "returned" by this gateway
		d.icmpError(&sink, quote(f, other.Addr()))            // port unreachable from a host not the gateway's
		if got := d.C.ICMPUnmatched.Load() - before; got != 3 || len(sink.gone)+len(sink.suspect) != 0 {
			t.Fatalf("lane %d: forged quotes: %d counted unmatched (want 3), gone %v, polled %v", lane, got, sink.gone, sink.suspect)
		}
		d.icmpError(&sink, quote(f[:geneveauth.HeaderLen+20], dst.Addr())) // its start, as ICMP quotes it
		if len(sink.gone) != 1 || sink.gone[0] != lane || len(sink.suspect) != 0 {
			t.Fatalf("lane %d: a quote of its own frame: gone %v, polled %v", lane, sink.gone, sink.suspect)
		}
		sink.gone = nil
	}
}

// TestICMPErrorUnsealed: without sealing, a quoted data frame of a flow
// on the lane only polls it; one of a flow elsewhere is counted.
func TestICMPErrorUnsealed(t *testing.T) {
	d, _, bind := newTestDemux(t, 3)
	sent := sentFrames(t, d, bind)
	var sink sinkCalls
	for dst, frames := range sent {
		lane := d.targetAt(dst)
		d.icmpError(&sink, icmpwatch.Quote{From: dst.Addr(), Dst: dst, Port: true, Payload: frames[0]})
		if len(sink.suspect) != 1 || sink.suspect[0] != lane || len(sink.gone) != 0 {
			t.Fatalf("lane %d: polled %v, gone %v; want one poll of the lane", lane, sink.suspect, sink.gone)
		}
		sink.suspect = nil
		// A big packet is quoted cut short (Linux quotes 576 bytes in
		// all): the flow is still known. (Before, such quotes of TCP
		// segments were all unmatched, and a kill whose few rate-limited
		// errors quoted only those was found by silence: 200 ms.)
		d.icmpError(&sink, icmpwatch.Quote{From: dst.Addr(), Dst: dst, Port: true, Payload: frames[0][:packet.GeneveLen+28]})
		if len(sink.suspect) != 1 || sink.suspect[0] != lane {
			t.Fatalf("lane %d: a truncated quote polled %v; want one poll of the lane", lane, sink.suspect)
		}
		sink.suspect = nil
		other := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, 0, 21 + byte(lane%3)}), 6081)
		before := d.C.ICMPUnmatched.Load()
		d.icmpError(&sink, icmpwatch.Quote{From: dst.Addr(), Dst: dst, Port: true, Payload: sent[other][0]})
		if d.C.ICMPUnmatched.Load() != before+1 || len(sink.suspect) != 0 {
			t.Fatalf("lane %d: another lane's flow quoted: polled %v", lane, sink.suspect)
		}
	}
}

// targetAt is the lane whose gateway is at a.
func (d *Demux) targetAt(a netip.AddrPort) flowhash.LaneID {
	for _, t := range d.targets.Load() {
		if t != nil && t.Addr == a {
			return t.ID
		}
	}
	return 0
}
