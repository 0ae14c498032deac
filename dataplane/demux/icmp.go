package demux

import (
	"net/netip"

	"github.com/clusterpeer/clusterpeer/dataplane/icmpwatch"
	"github.com/clusterpeer/clusterpeer/dataplane/packet"
	"github.com/clusterpeer/clusterpeer/flowhash"
)

// ICMPSink takes the ICMP errors about the demux's lanes: the prober.
type ICMPSink interface {
	// QuotedProbe judges an error quoting a probe frame.
	QuotedProbe(frame []byte, dst, from netip.Addr, port bool) bool
	// Suspect polls a lane whose data an error quoted: such an error is
	// easy to forge, so it takes the lane down only if the poll fails.
	Suspect(lane flowhash.LaneID, reason string)
	// Gone takes a lane down: an error quoted one of its sealed data
	// frames, whose tag only the demux and whoever saw the frame know.
	Gone(lane flowhash.LaneID, reason string)
}

// WatchICMP acts on the ICMP port and host unreachable errors that come
// back for the GENEVE frames this host sent to its gateways (by this
// demux's socket, its prober's or its XDP program): a gateway whose
// process or host is gone answers the next frames so, within a
// millisecond at any data rate, and the kernel rate-limits these errors
// per host, so the first ones count. A frame counts only if it went to a
// lane's gateway and carried a probe the prober sent there lately (the
// lane goes down at once), or, with geneve_auth, a data frame the lane
// sealed lately (its tag says so: down at once, and nothing else is
// believed), or, without it, a packet of a flow on that lane (its pin,
// or where the keyed table sends it: the lane is polled, and goes down if
// the poll goes unanswered, since any host that can forge the gateway's
// address can quote a packet of its own flow); port unreachable must come
// from the gateway's own host. It
// returns a function that stops the watch, and one that acts on the
// errors already queued on the caller's goroutine (the prober's, before it
// judges a lane by silence).
func (d *Demux) WatchICMP(sink ICMPSink, v4, v6 bool) (drain, stop func(), err error) {
	var ws []*icmpwatch.Watch
	stop = func() {
		for _, w := range ws {
			w.Close()
		}
	}
	drain = func() {
		for _, w := range ws {
			w.Drain()
		}
	}
	for _, fam := range []struct{ on, v6 bool }{{v4, false}, {v6, true}} {
		if !fam.on {
			continue
		}
		w, err := icmpwatch.Listen(fam.v6, func(q icmpwatch.Quote) { d.icmpError(sink, q) })
		if err != nil {
			stop()
			return nil, nil, err
		}
		ws = append(ws, w)
	}
	return drain, stop, nil
}

func (d *Demux) icmpError(sink ICMPSink, q icmpwatch.Quote) {
	var t *Target
	for _, c := range d.targets.Load() {
		if c != nil && c.Addr.Addr().Unmap() == q.Dst.Addr() && c.Addr.Port() == q.Dst.Port() {
			t = c
			break
		}
	}
	if t == nil {
		return // not about a lane
	}
	h, inner, err := packet.ParseGeneve(q.Payload)
	if err != nil || h.VNI() != d.cfg.VNI {
		d.C.ICMPUnmatched.Add(1)
		return
	}
	if h.OAM() {
		sink.QuotedProbe(q.Payload, q.Dst.Addr(), q.From, q.Port)
		return
	}
	if q.Port && q.From != q.Dst.Addr() {
		d.C.ICMPUnmatched.Add(1)
		return
	}
	if t.Seal != nil {
		if !t.Seal.Sent(q.Payload) {
			d.C.ICMPUnmatched.Add(1) // forged, or about a frame too old to tell
			return
		}
		sink.Gone(t.ID, q.Reason()+" quoting a sealed frame: gateway "+t.Name+" gone")
		return
	}
	if d.cfg.Selector.LaneOf(inner) != t.ID {
		d.C.ICMPUnmatched.Add(1)
		return
	}
	sink.Suspect(t.ID, q.Reason()+": gateway "+t.Name+" gone")
}
