package packet

import (
	"encoding/binary"
	"net/netip"
)

// IP protocol numbers (IANA) the project reads or writes.
const (
	ProtoICMP   = 1
	ProtoTCP    = 6
	ProtoUDP    = 17
	ProtoICMPv6 = 58
	ProtoSCTP   = 132
)

// DSCPNetworkControl is the traffic class byte of CS6 (RFC 4594: network
// control), which probes and the ICMP errors a router writes carry.
const DSCPNetworkControl = 0xc0

// Version is the IP version of a raw packet (0 if empty).
func Version(pkt []byte) uint8 {
	if len(pkt) == 0 {
		return 0
	}
	return pkt[0] >> 4
}

// IPv4 is a view of an IPv4 header at the start of a packet. Its methods
// assume the length was checked (IPv4MinLen, then HeaderLen).
type IPv4 []byte

// IPv4 header fields (RFC 791).
const (
	IPv4MinLen = 20

	ipv4VersionIHL = 0
	ipv4TOS        = 1
	ipv4TotalLen   = 2
	ipv4ID         = 4
	ipv4FlagsFrag  = 6
	ipv4TTL        = 8
	ipv4Protocol   = 9
	ipv4Checksum   = 10
	ipv4Src        = 12
	ipv4Dst        = 16

	ipv4DF       = 0x4000
	ipv4MF       = 0x2000
	ipv4FragMask = 0x1fff
)

func (h IPv4) HeaderLen() int   { return int(h[ipv4VersionIHL]&0x0f) * 4 }
func (h IPv4) TOS() uint8       { return h[ipv4TOS] }
func (h IPv4) TotalLen() int    { return int(binary.BigEndian.Uint16(h[ipv4TotalLen:])) }
func (h IPv4) TTL() uint8       { return h[ipv4TTL] }
func (h IPv4) Protocol() uint8  { return h[ipv4Protocol] }
func (h IPv4) SrcSlice() []byte { return h[ipv4Src : ipv4Src+4] }
func (h IPv4) DstSlice() []byte { return h[ipv4Dst : ipv4Dst+4] }
func (h IPv4) Src() netip.Addr  { return netip.AddrFrom4([4]byte(h[ipv4Src:])) }
func (h IPv4) Dst() netip.Addr  { return netip.AddrFrom4([4]byte(h[ipv4Dst:])) }
func (h IPv4) FragmentOffset() int {
	return int(binary.BigEndian.Uint16(h[ipv4FlagsFrag:])&ipv4FragMask) * 8
}

// Fragment reports whether the packet is a fragment: more follow, or it
// is not the first.
func (h IPv4) Fragment() bool {
	return binary.BigEndian.Uint16(h[ipv4FlagsFrag:])&(ipv4MF|ipv4FragMask) != 0
}

// IPv4Fields are what PutIPv4 writes; the rest is fixed: no options, ID
// 0, TTL 64.
type IPv4Fields struct {
	TOS      uint8
	TotalLen int
	DF       bool // don't fragment
	Protocol uint8
	Src, Dst netip.Addr // IPv4
}

// PutIPv4 writes a 20-byte header with its checksum into b (at least
// IPv4MinLen bytes) and returns it.
func PutIPv4(b []byte, f IPv4Fields) IPv4 {
	h := IPv4(b[:IPv4MinLen])
	h[ipv4VersionIHL] = 4<<4 | IPv4MinLen/4
	h[ipv4TOS] = f.TOS
	binary.BigEndian.PutUint16(h[ipv4TotalLen:], uint16(f.TotalLen))
	binary.BigEndian.PutUint16(h[ipv4ID:], 0)
	var flags uint16
	if f.DF {
		flags = ipv4DF
	}
	binary.BigEndian.PutUint16(h[ipv4FlagsFrag:], flags)
	h[ipv4TTL], h[ipv4Protocol] = 64, f.Protocol
	binary.BigEndian.PutUint16(h[ipv4Checksum:], 0)
	s, d := f.Src.As4(), f.Dst.As4()
	copy(h[ipv4Src:], s[:])
	copy(h[ipv4Dst:], d[:])
	binary.BigEndian.PutUint16(h[ipv4Checksum:], Checksum(h, 0))
	return h
}

// IPv6 is a view of an IPv6 fixed header. Its methods assume IPv6Len bytes.
type IPv6 []byte

// IPv6 header fields (RFC 8200).
const (
	IPv6Len = 40

	ipv6VersionTC  = 0
	ipv6PayloadLen = 4
	ipv6NextHeader = 6
	ipv6HopLimit   = 7
	ipv6Src        = 8
	ipv6Dst        = 24
)

// IPv6 extension headers (RFC 8200 4).
const (
	IPv6HopByHop = 0
	IPv6Routing  = 43
	IPv6Fragment = 44
	IPv6DestOpts = 60
)

func (h IPv6) PayloadLen() int   { return int(binary.BigEndian.Uint16(h[ipv6PayloadLen:])) }
func (h IPv6) NextHeader() uint8 { return h[ipv6NextHeader] }
func (h IPv6) HopLimit() uint8   { return h[ipv6HopLimit] }
func (h IPv6) SrcSlice() []byte  { return h[ipv6Src : ipv6Src+16] }
func (h IPv6) DstSlice() []byte  { return h[ipv6Dst : ipv6Dst+16] }
func (h IPv6) Src() netip.Addr   { return netip.AddrFrom16([16]byte(h[ipv6Src:])) }
func (h IPv6) Dst() netip.Addr   { return netip.AddrFrom16([16]byte(h[ipv6Dst:])) }
func (h IPv6) TrafficClass() uint8 {
	return uint8(binary.BigEndian.Uint32(h[ipv6VersionTC:]) >> 20)
}

// IPv6Fields are what PutIPv6 writes; the flow label is 0, the hop limit 64.
type IPv6Fields struct {
	TrafficClass uint8
	PayloadLen   int
	NextHeader   uint8
	Src, Dst     netip.Addr // IPv6
}

// PutIPv6 writes a fixed header into b (at least IPv6Len bytes) and
// returns it.
func PutIPv6(b []byte, f IPv6Fields) IPv6 {
	h := IPv6(b[:IPv6Len])
	binary.BigEndian.PutUint32(h[ipv6VersionTC:], 6<<28|uint32(f.TrafficClass)<<20)
	binary.BigEndian.PutUint16(h[ipv6PayloadLen:], uint16(f.PayloadLen))
	h[ipv6NextHeader], h[ipv6HopLimit] = f.NextHeader, 64
	s, d := f.Src.As16(), f.Dst.As16()
	copy(h[ipv6Src:], s[:])
	copy(h[ipv6Dst:], d[:])
	return h
}

// Dst returns a raw IP packet's destination address, if the packet is
// long enough to carry one.
func Dst(pkt []byte) (netip.Addr, bool) {
	switch Version(pkt) {
	case 4:
		if len(pkt) >= IPv4MinLen {
			return IPv4(pkt).Dst(), true
		}
	case 6:
		if len(pkt) >= IPv6Len {
			return IPv6(pkt).Dst(), true
		}
	}
	return netip.Addr{}, false
}

// PseudoHeaderSum is the checksum accumulator of the pseudo-header UDP,
// TCP and ICMPv6 checksums cover (RFC 768, RFC 8200 8.1): addresses,
// protocol and the upper-layer length.
func PseudoHeaderSum(src, dst netip.Addr, proto uint8, length int) uint64 {
	var c uint64
	if src.Is4() {
		s, d := src.As4(), dst.As4()
		c = ChecksumAdd(d[:], ChecksumAdd(s[:], 0))
	} else {
		s, d := src.As16(), dst.As16()
		c = ChecksumAdd(d[:], ChecksumAdd(s[:], 0))
	}
	return c + uint64(proto) + uint64(length)
}

// UDP is a view of a UDP header (RFC 768). Its methods assume UDPLen bytes.
type UDP []byte

// UDP header fields.
const (
	UDPLen = 8

	udpSrcPort  = 0
	udpDstPort  = 2
	udpLength   = 4
	udpChecksum = 6
)

func (h UDP) SrcPort() uint16 { return binary.BigEndian.Uint16(h[udpSrcPort:]) }
func (h UDP) DstPort() uint16 { return binary.BigEndian.Uint16(h[udpDstPort:]) }
func (h UDP) Length() int     { return int(binary.BigEndian.Uint16(h[udpLength:])) }
func (h UDP) Checksum() uint16 {
	return binary.BigEndian.Uint16(h[udpChecksum:])
}

// PutUDP writes a header for a datagram of length bytes (header included)
// into b, checksum 0 (none, for IPv4), and returns it.
func PutUDP(b []byte, src, dst uint16, length int) UDP {
	h := UDP(b[:UDPLen])
	binary.BigEndian.PutUint16(h[udpSrcPort:], src)
	binary.BigEndian.PutUint16(h[udpDstPort:], dst)
	binary.BigEndian.PutUint16(h[udpLength:], uint16(length))
	binary.BigEndian.PutUint16(h[udpChecksum:], 0)
	return h
}

// SetChecksum computes the checksum of the datagram d (header and
// payload) under the pseudo-header sum pseudo and stores it; a computed
// zero is sent as all ones (RFC 768).
func (h UDP) SetChecksum(d []byte, pseudo uint64) {
	binary.BigEndian.PutUint16(h[udpChecksum:], 0)
	c := Checksum(d, pseudo)
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(h[udpChecksum:], c)
}

// ICMP is a view of an ICMP or ICMPv6 header: type, code, checksum and
// the 4 bytes whose meaning depends on the type. Its methods assume
// ICMPLen bytes.
type ICMP []byte

// ICMP header fields and the types the project reads or writes.
const (
	ICMPLen = 8

	icmpType     = 0
	icmpCode     = 1
	icmpChecksum = 2
	icmpRest     = 4

	ICMPv4Unreachable  = 3 // codes: 1 host, 3 port, 4 fragmentation needed
	ICMPv4FragNeeded   = 4 // the code of ICMPv4Unreachable that carries a next-hop MTU
	ICMPv4TimeExceeded = 11
	ICMPv6Unreachable  = 1 // codes: 3 address, 4 port
	ICMPv6TooBig       = 2
	ICMPv6TimeExceeded = 3
)

func (h ICMP) Type() uint8      { return h[icmpType] }
func (h ICMP) Code() uint8      { return h[icmpCode] }
func (h ICMP) Rest() uint32     { return binary.BigEndian.Uint32(h[icmpRest:]) }
func (h ICMP) Checksum() uint16 { return binary.BigEndian.Uint16(h[icmpChecksum:]) }

// PutICMP writes a header (checksum 0) into b and returns it.
func PutICMP(b []byte, typ, code uint8, rest uint32) ICMP {
	h := ICMP(b[:ICMPLen])
	h[icmpType], h[icmpCode] = typ, code
	binary.BigEndian.PutUint16(h[icmpChecksum:], 0)
	binary.BigEndian.PutUint32(h[icmpRest:], rest)
	return h
}

// SetChecksum stores the checksum of the message m (header and body)
// under pseudo (0 for ICMPv4, the pseudo-header's sum for ICMPv6).
func (h ICMP) SetChecksum(m []byte, pseudo uint64) {
	binary.BigEndian.PutUint16(h[icmpChecksum:], 0)
	binary.BigEndian.PutUint16(h[icmpChecksum:], Checksum(m, pseudo))
}
