package gateway

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"slices"

	"github.com/clusterpeer/clusterpeer/dataplane/geneveauth"
	"github.com/clusterpeer/clusterpeer/dataplane/packet"
	"github.com/clusterpeer/clusterpeer/tunnel/probe"
)

// Drop is why the gateway refused a packet.
type Drop uint8

const (
	DropNone           Drop = iota
	DropUnknownSource       // GENEVE from an address that is not a configured demux
	DropTruncated           // shorter than its GENEVE header or inner IP header
	DropBadVersion          // GENEVE version other than 0
	DropBadOptions          // option lengths overrun the header
	DropCriticalOption      // an option we do not know is marked critical
	DropWrongVNI            // another peering's VNI
	DropBadProtocol         // inner type not IPv4/IPv6, or not matching the packet
	DropOAM                 // OAM bit set, but not a probe for this lane's peer
	DropAwaitingPeer        // held back after the peer changed, so that the peer opens the session (Config.AwaitPeer)
	DropForwarded           // routed into the TUN from another host: only a demux's GENEVE and the gateway's own packets enter the lane
	DropNoTag               // geneve_auth on, but the frame is not sealed
	DropUnknownKey          // sealed by a sender or with a key this gateway does not hold
	DropBadTag              // the tag does not match: forged or changed on the way
	DropReplayed            // a counter seen before, or older than the replay window
	DropOversize            // a GENEVE datagram longer than a frame of the lane's MTU can be
	NumDrops
)

var dropNames = [NumDrops]string{
	"none", "unknown_source", "truncated", "bad_version", "bad_options",
	"critical_option", "wrong_vni", "bad_protocol", "oam", "awaiting_peer",
	"forwarded", "no_tag", "unknown_key", "bad_tag", "replayed", "oversize",
}

func (d Drop) String() string {
	if d < NumDrops {
		return dropNames[d]
	}
	return "unknown"
}

// Ingress decides what enters a gateway's lane. A GENEVE datagram (its
// socket bound to the gateway's GENEVE address alone) must come from one
// of its demuxes, for its peering's VNI, carrying an IP packet. A frame with the OAM bit is a
// control message: the only one a gateway acts on is a lane probe
// (tunnel/probe), which it forwards into the lane to its peer's
// reflector; every other is dropped. With Auth, a frame must also be
// sealed by one of its demuxes, with a counter not seen before. What the gateway's kernel routes
// into the TUN enters only if the gateway itself sent it (its
// reflector's replies and notices, its kernel's ICMP errors): a host
// that routes the remote prefixes via a gateway does not get past the
// demux's checks that way.
type Ingress struct {
	Sources []netip.Addr // unmapped; a handful, so a scan beats a map
	// Local is the gateway's GENEVE address, the source of its
	// reflector's replies.
	Local netip.Addr
	// Own are the addresses the gateway's own packets leave from (its
	// interfaces' addresses at start).
	Own []netip.Addr
	// ReflectorPort is the UDP port the reflector answers from, on Local
	// (its replies and notices); 0: there is none.
	ReflectorPort uint16
	VNI           uint32
	Probe         netip.AddrPort // the peer's reflector; invalid: no probes
	// Auth, if set, lets in only frames its demuxes sealed
	// (geneve_auth), each counter once. It keeps replay windows: the
	// gateway's one GENEVE reader uses it, and copies of an Ingress
	// share it.
	Auth *geneveauth.Opener
	// OnProbe sees each probe forwarded (the inner packet), so that the
	// gateway can answer it with a notice while its lane cannot work
	// (probe.Reflector.SawProbe).
	OnProbe func(inner []byte)
}

// Check validates a GENEVE datagram's payload from src and returns the
// inner packet, or the reason to drop it. The inner packet aliases payload.
func (in *Ingress) Check(src netip.Addr, payload []byte) ([]byte, Drop) {
	if !slices.Contains(in.Sources, src.Unmap()) {
		return nil, DropUnknownSource
	}
	h, inner, err := packet.ParseGeneve(payload)
	switch {
	case err == nil:
	case errors.Is(err, packet.ErrGeneveTruncated):
		return nil, DropTruncated
	case errors.Is(err, packet.ErrGeneveVersion):
		return nil, DropBadVersion
	case errors.Is(err, packet.ErrGeneveCriticalOption):
		return nil, DropCriticalOption
	default:
		return nil, DropBadOptions
	}
	if h.VNI() != in.VNI {
		return nil, DropWrongVNI
	}
	if len(inner) < packet.IPv4MinLen {
		return nil, DropTruncated
	}
	switch h.Protocol() {
	case packet.ProtoIPv4:
		if packet.Version(inner) != 4 {
			return nil, DropBadProtocol
		}
	case packet.ProtoIPv6:
		if packet.Version(inner) != 6 || len(inner) < packet.IPv6Len {
			return nil, DropBadProtocol
		}
	default:
		return nil, DropBadProtocol
	}
	if in.Auth != nil {
		// Last of the checks that refuse: a frame that opens uses up its
		// counter.
		switch err := in.Auth.Open(payload); {
		case err == nil:
		case errors.Is(err, geneveauth.ErrNoTag):
			return nil, DropNoTag
		case errors.Is(err, geneveauth.ErrUnknownKey):
			return nil, DropUnknownKey
		case errors.Is(err, geneveauth.ErrReplayed):
			return nil, DropReplayed
		default:
			return nil, DropBadTag
		}
	}
	if h.OAM() {
		if !probe.IsProbeFor(inner, in.Probe) {
			return nil, DropOAM
		}
		if in.OnProbe != nil {
			in.OnProbe(inner)
		}
	}
	return inner, DropNone
}

// CheckLocal judges a packet the gateway's kernel routed into the TUN:
// it enters the lane only as what the gateway sends there itself: ICMP
// from one of its own addresses (its kernel's errors, an operator's ping)
// or UDP from its reflector's address and port. The source address alone
// proves nothing: a kernel that receives in lists (NAPI with GRO, as every
// NIC driver does) routes a packet with the route of the one before it to
// the same destination and skips the martian source check on the way, so
// a host on the LAN can have the gateway forward a packet that carries
// the gateway's own source (measured: 3 of 5,000 such packets, between
// legitimate ones, reached network B before this check).
func (in *Ingress) CheckLocal(pkt []byte) Drop {
	var src netip.Addr
	var proto uint8
	var l4 []byte
	switch packet.Version(pkt) {
	case 4:
		if len(pkt) < packet.IPv4MinLen {
			return DropTruncated
		}
		ip := packet.IPv4(pkt)
		if hl := ip.HeaderLen(); hl <= len(pkt) {
			l4 = pkt[hl:]
		}
		src, proto = ip.Src(), ip.Protocol()
	case 6:
		if len(pkt) < packet.IPv6Len {
			return DropTruncated
		}
		ip := packet.IPv6(pkt)
		src, proto, l4 = ip.Src(), ip.NextHeader(), pkt[packet.IPv6Len:]
	default:
		return DropBadProtocol
	}
	switch {
	case proto == packet.ProtoICMP || proto == packet.ProtoICMPv6:
		if src == in.Local || slices.Contains(in.Own, src) {
			return DropNone
		}
	case proto == packet.ProtoUDP && src == in.Local && in.ReflectorPort != 0 && len(l4) >= 2:
		if binary.BigEndian.Uint16(l4) == in.ReflectorPort {
			return DropNone
		}
	}
	return DropForwarded
}
