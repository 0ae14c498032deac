// The ICMP error a router sends when a packet is too big for the next
// hop: IPv4 "fragmentation needed" (type 3 code 4, RFC 1191) and ICMPv6
// "packet too big" (type 2, RFC 8201). It quotes the offending packet as
// RFC 1812 and RFC 4443 ask (up to 576 and 1280 bytes in all), or stays
// silent where a router must (errors about ICMP errors, non-first
// fragments, unusable sources).

package packet

import "net/netip"

const (
	maxV4 = 576  // RFC 1812 4.3.2.3: quote as much as fits in 576 bytes
	maxV6 = 1280 // RFC 4443 2.4(c): as much as fits the minimum MTU

	// TooBigBufLen is enough room for any error this package writes.
	TooBigBufLen = maxV6
)

// TooBig writes into out the error telling pkt's sender that the next hop
// takes at most mtu bytes, from router address src (of pkt's family). It
// returns the error's length, or 0 when no error may be sent.
func PutTooBig(out, pkt []byte, mtu int, src netip.Addr) int {
	if len(pkt) < 1 {
		return 0
	}
	switch pkt[0] >> 4 {
	case 4:
		if src.Is4() {
			return tooBig4(out, pkt, mtu, src)
		}
	case 6:
		if src.Is6() && !src.Is4In6() {
			return tooBig6(out, pkt, mtu, src)
		}
	}
	return 0
}

func tooBig4(out, pkt []byte, mtu int, src netip.Addr) int {
	if len(pkt) < IPv4MinLen {
		return 0
	}
	in := IPv4(pkt)
	ihl := in.HeaderLen()
	if ihl < IPv4MinLen || len(pkt) < ihl {
		return 0
	}
	if in.FragmentOffset() != 0 {
		return 0 // not the first fragment
	}
	if !unicast(in.Src()) {
		return 0
	}
	if in.Protocol() == ProtoICMP && len(pkt) >= ihl+1 && icmp4Error(pkt[ihl]) {
		return 0
	}
	quote := min(len(pkt), maxV4-IPv4MinLen-ICMPLen)
	n := IPv4MinLen + ICMPLen + quote
	if len(out) < n {
		return 0
	}
	PutIPv4(out, IPv4Fields{TOS: DSCPNetworkControl, TotalLen: n, Protocol: ProtoICMP, Src: src, Dst: in.Src()})
	m := out[IPv4MinLen:n]
	h := PutICMP(m, ICMPv4Unreachable, ICMPv4FragNeeded, uint32(min(mtu, 0xffff)))
	copy(m[ICMPLen:], pkt[:quote])
	h.SetChecksum(m, 0)
	return n
}

// icmp4Error: destination unreachable, source quench, redirect, time
// exceeded, parameter problem.
func icmp4Error(t byte) bool { return t == 3 || t == 4 || t == 5 || t == 11 || t == 12 }

func tooBig6(out, pkt []byte, mtu int, src netip.Addr) int {
	if len(pkt) < IPv6Len {
		return 0
	}
	in := IPv6(pkt)
	if !unicast(in.Src()) {
		return 0
	}
	// An ICMPv6 error (type < 128) directly after the fixed header is never
	// answered. (Behind extension headers we answer; the sender's stack
	// still refuses to answer an error with an error.)
	if in.NextHeader() == ProtoICMPv6 && len(pkt) > IPv6Len && pkt[IPv6Len] < 128 {
		return 0
	}
	quote := min(len(pkt), maxV6-IPv6Len-ICMPLen)
	n := IPv6Len + ICMPLen + quote
	if len(out) < n {
		return 0
	}
	PutIPv6(out, IPv6Fields{PayloadLen: n - IPv6Len, NextHeader: ProtoICMPv6, Src: src, Dst: in.Src()})
	m := out[IPv6Len:n]
	h := PutICMP(m, ICMPv6TooBig, 0, uint32(mtu))
	copy(m[ICMPLen:], pkt[:quote])
	h.SetChecksum(m, PseudoHeaderSum(src, in.Src(), ProtoICMPv6, len(m)))
	return n
}

// unicast: an error must not go to a multicast, broadcast, unspecified or
// loopback source (RFC 1812 4.3.2.7, RFC 4443 2.4(e)).
func unicast(a netip.Addr) bool {
	if a.Is4() && a.As4() == [4]byte{255, 255, 255, 255} {
		return false
	}
	return a.IsValid() && !a.IsUnspecified() && !a.IsMulticast() && !a.IsLoopback()
}
