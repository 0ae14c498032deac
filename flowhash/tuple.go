package flowhash

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/clusterpeer/clusterpeer/dataplane/packet"
)

// IP protocol numbers the decoder understands.
const (
	ProtoICMP   = packet.ProtoICMP
	ProtoTCP    = packet.ProtoTCP
	ProtoUDP    = packet.ProtoUDP
	ProtoICMPv6 = packet.ProtoICMPv6
	ProtoSCTP   = packet.ProtoSCTP
)

// MaxIPv6ExtHeaders bounds the extension-header walk. A chain longer than
// this is dropped (DropExtChain) rather than walked: real traffic carries
// one or two, and an endless chain must not cost unbounded work (the XDP
// program has the same bound).
const MaxIPv6ExtHeaders = 8

// Flags describe how a tuple was derived. They are not part of the flow's
// identity: Canonical clears them.
type Flags uint8

const (
	// FlagFragment: the packet is a fragment (IPv4 MF or offset, IPv6
	// fragment header that is not atomic); ports are zero.
	FlagFragment Flags = 1 << iota
	// FlagICMPError: the tuple is the reversed tuple of the packet quoted
	// in an ICMP/ICMPv6 error.
	FlagICMPError
)

// Tuple is a flow's identity as the demux sees it. It holds no pointers
// and is comparable, so it can be a map key. IPv4 addresses are stored
// IPv4-mapped (::ffff:a.b.c.d), as netip.Addr.As16 does.
type Tuple struct {
	Src, Dst [16]byte
	// SrcPort and DstPort are the TCP, UDP or SCTP ports; for ICMP echo
	// both hold the identifier; zero for fragments and other protocols.
	SrcPort, DstPort uint16
	// Proto is the transport protocol, after any IPv6 extension headers.
	Proto uint8
	Flags Flags
}

var v4InV6Prefix = [12]byte{10: 0xff, 11: 0xff}

// Decode fills t from the raw IP packet pkt (no link-layer header) and
// returns DropNone, or the reason the packet cannot be hashed. It never
// allocates and never reads outside pkt.
func (t *Tuple) Decode(pkt []byte) Drop { return t.decode(pkt, false) }

// DecodeTruncated is Decode for a packet that may be cut short, as an
// ICMP error quotes one (Linux quotes up to 576 bytes in all, so a
// full-size TCP segment inside a GENEVE frame arrives as its first 512):
// the IP length is not checked against what is there, only the headers
// must be. An ICMP error inside it is not followed, so such a packet
// gets its own addresses, not the reversed tuple Decode gives it.
func (t *Tuple) DecodeTruncated(pkt []byte) Drop { return t.decode(pkt, true) }

func (t *Tuple) decode(pkt []byte, quoted bool) Drop {
	*t = Tuple{}
	if len(pkt) == 0 {
		return DropTruncated
	}
	switch packet.Version(pkt) {
	case 4:
		return t.decodeIPv4(pkt, quoted)
	case 6:
		return t.decodeIPv6(pkt, quoted)
	}
	return DropBadVersion
}

// decodeIPv4 parses an IPv4 header. quoted is set for the packet quoted in
// an ICMP error: it is truncated by design, so its total length is not
// checked and ICMP errors inside it are not followed.
func (t *Tuple) decodeIPv4(p []byte, quoted bool) Drop {
	if len(p) < packet.IPv4MinLen {
		return DropTruncated
	}
	ip := packet.IPv4(p)
	ihl := ip.HeaderLen()
	if ihl < packet.IPv4MinLen {
		return DropBadHeader
	}
	if !quoted {
		total := ip.TotalLen()
		if total < ihl {
			return DropBadLength
		}
		if total > len(p) {
			return DropTruncated
		}
		p = p[:total] // ignore link-layer padding
	}
	if len(p) < ihl {
		return DropTruncated
	}
	copy(t.Src[:12], v4InV6Prefix[:])
	copy(t.Src[12:], ip.SrcSlice())
	copy(t.Dst[:12], v4InV6Prefix[:])
	copy(t.Dst[12:], ip.DstSlice())
	t.Proto = ip.Protocol()
	if ip.Fragment() {
		t.Flags |= FlagFragment
		return DropNone
	}
	return t.decodeTransport(p[ihl:], false, quoted)
}

// decodeIPv6 parses an IPv6 header and walks its extension headers.
func (t *Tuple) decodeIPv6(p []byte, quoted bool) Drop {
	if len(p) < packet.IPv6Len {
		return DropTruncated
	}
	ip := packet.IPv6(p)
	if !quoted {
		end := packet.IPv6Len + ip.PayloadLen()
		if end > len(p) {
			return DropTruncated // also jumbograms (payload length 0): not supported
		}
		p = p[:end]
	}
	copy(t.Src[:], ip.SrcSlice())
	copy(t.Dst[:], ip.DstSlice())
	next, off := ip.NextHeader(), packet.IPv6Len
	for n := 0; ; n++ {
		switch next {
		case packet.IPv6HopByHop, packet.IPv6Routing, packet.IPv6DestOpts, packet.IPv6Fragment:
		default:
			t.Proto = next
			return t.decodeTransport(p[off:], true, quoted)
		}
		if n == MaxIPv6ExtHeaders {
			return DropExtChain
		}
		if len(p) < off+8 {
			return DropTruncated
		}
		if next == packet.IPv6Fragment {
			fragOff := binary.BigEndian.Uint16(p[off+2 : off+4])
			next = p[off]
			if fragOff&0xfff9 != 0 { // offset or M flag: a real fragment
				// Every fragment carries the same Next Header, so all
				// fragments of a datagram get the same Proto.
				t.Proto = next
				t.Flags |= FlagFragment
				return DropNone
			}
			off += 8 // atomic fragment (RFC 6946): not fragmented, go on
			continue
		}
		next, off = p[off], off+(int(p[off+1])+1)*8
		if off > len(p) {
			return DropTruncated
		}
	}
}

// decodeTransport reads ports, the ICMP echo identifier, or follows an ICMP
// error to the packet it quotes. l4 starts at the transport header.
func (t *Tuple) decodeTransport(l4 []byte, v6, quoted bool) Drop {
	switch t.Proto {
	case ProtoTCP, ProtoUDP, ProtoSCTP:
		if len(l4) < 4 {
			return DropTruncated
		}
		t.SrcPort = binary.BigEndian.Uint16(l4[0:2])
		t.DstPort = binary.BigEndian.Uint16(l4[2:4])
	case ProtoICMP, ProtoICMPv6:
		if (t.Proto == ProtoICMPv6) != v6 {
			return DropNone // ICMP in IPv6 or ICMPv6 in IPv4: addresses only
		}
		if len(l4) < 8 {
			return DropTruncated
		}
		switch icmpKind(l4[0], v6) {
		case icmpEcho:
			// Request and reply share the identifier; putting it in both
			// ports keeps them together, symmetric hashing included.
			id := binary.BigEndian.Uint16(l4[4:6])
			t.SrcPort, t.DstPort = id, id
		case icmpError:
			if !quoted { // errors about errors are never sent (RFC 1122); don't follow
				return t.decodeQuoted(l4[8:], v6)
			}
		}
	}
	return DropNone
}

// decodeQuoted replaces t with the reversed tuple of the packet quoted in
// an ICMP error, so the error travels the lane of the flow it reports on
// (the quoted packet went from our host outward; the error comes back).
func (t *Tuple) decodeQuoted(p []byte, v6 bool) Drop {
	var q Tuple
	if ver := packet.Version(p); (ver == 6) != v6 || (ver != 4 && ver != 6) {
		return DropBadICMPError
	}
	var d Drop
	if v6 {
		d = q.decodeIPv6(p, true)
	} else {
		d = q.decodeIPv4(p, true)
	}
	if d != DropNone {
		return DropBadICMPError
	}
	*t = Tuple{
		Src: q.Dst, Dst: q.Src,
		SrcPort: q.DstPort, DstPort: q.SrcPort,
		Proto: q.Proto,
		Flags: FlagICMPError | q.Flags&FlagFragment,
	}
	return DropNone
}

type icmpClass uint8

const (
	icmpOther icmpClass = iota
	icmpEcho
	icmpError
)

func icmpKind(typ uint8, v6 bool) icmpClass {
	if v6 {
		switch typ {
		case 128, 129: // echo request, reply
			return icmpEcho
		case 1, 2, 3, 4: // unreachable, packet too big, time exceeded, parameter problem
			return icmpError
		}
		return icmpOther
	}
	switch typ {
	case 8, 0: // echo request, reply
		return icmpEcho
	case 3, 11, 12: // unreachable (incl. fragmentation needed), time exceeded, parameter problem
		return icmpError
	}
	return icmpOther
}

// Is4 reports whether the tuple holds IPv4 addresses.
func (t *Tuple) Is4() bool {
	return [12]byte(t.Src[:12]) == v4InV6Prefix && [12]byte(t.Dst[:12]) == v4InV6Prefix
}

// Reverse returns the tuple of the opposite direction.
func (t Tuple) Reverse() Tuple {
	t.Src, t.Dst = t.Dst, t.Src
	t.SrcPort, t.DstPort = t.DstPort, t.SrcPort
	return t
}

// String formats the tuple for logs: "tcp 10.1.0.5:40000 -> 10.2.0.9:5201".
func (t Tuple) String() string {
	src, dst := netip.AddrFrom16(t.Src).Unmap(), netip.AddrFrom16(t.Dst).Unmap()
	s := fmt.Sprintf("%s %s -> %s", protoName(t.Proto),
		netip.AddrPortFrom(src, t.SrcPort), netip.AddrPortFrom(dst, t.DstPort))
	if t.Flags&FlagFragment != 0 {
		s += " (fragment)"
	}
	if t.Flags&FlagICMPError != 0 {
		s += " (icmp error)"
	}
	return s
}

func protoName(p uint8) string {
	switch p {
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	case ProtoSCTP:
		return "sctp"
	case ProtoICMP:
		return "icmp"
	case ProtoICMPv6:
		return "icmpv6"
	}
	return fmt.Sprintf("proto-%d", p)
}
