package gateway

import (
	"errors"
	"net/netip"

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
	NumDrops
)

var dropNames = [NumDrops]string{
	"none", "unknown_source", "truncated", "bad_version", "bad_options",
	"critical_option", "wrong_vni", "bad_protocol", "oam", "awaiting_peer",
}

func (d Drop) String() string {
	if d < NumDrops {
		return dropNames[d]
	}
	return "unknown"
}

// Ingress decides which GENEVE datagrams a gateway accepts: from one of
// its demuxes, for its peering's VNI, carrying an IP packet. A frame with
// the OAM bit is a control message: the only one a gateway acts on is a
// lane probe (tunnel/probe), which it forwards into the lane to its
// peer's reflector; every other is dropped.
type Ingress struct {
	Sources []netip.Addr // unmapped; a handful, so a scan beats a map
	VNI     uint32
	Probe   netip.AddrPort // the peer's reflector; invalid: no probes
	// OnProbe sees each probe forwarded (the inner packet), so that the
	// gateway can answer it with a notice while its lane cannot work
	// (probe.Reflector.SawProbe).
	OnProbe func(inner []byte)
}

// Check validates a GENEVE datagram's payload from src and returns the
// inner packet, or the reason to drop it. The inner packet aliases payload.
func (in *Ingress) Check(src netip.Addr, payload []byte) ([]byte, Drop) {
	src = src.Unmap()
	known := false
	for _, s := range in.Sources {
		if s == src {
			known = true
			break
		}
	}
	if !known {
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
