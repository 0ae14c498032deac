// Package icmperr writes the ICMP error a router sends when a packet is
// too big for the next hop: IPv4 "fragmentation needed" (type 3 code 4,
// RFC 1191) and ICMPv6 "packet too big" (type 2, RFC 8201). It quotes the
// offending packet as RFC 1812 and RFC 4443 ask (up to 576 and 1280 bytes
// in all) and writes into a caller's buffer, so it never allocates.
//
// What flows through it: an oversized IP packet in, an ICMP error addressed
// to the packet's source out, or false when a router must stay silent
// (errors about ICMP errors, non-first fragments, unusable sources).
package icmperr

import (
	"encoding/binary"
	"net/netip"

	"github.com/clusterpeer/clusterpeer/dataplane/inetsum"
)

const (
	maxV4 = 576  // RFC 1812 4.3.2.3: quote as much as fits in 576 bytes
	maxV6 = 1280 // RFC 4443 2.4(c): as much as fits the minimum MTU

	// BufLen is enough room for any error this package writes.
	BufLen = maxV6
)

// TooBig writes into out the error telling pkt's sender that the next hop
// takes at most mtu bytes, from router address src (of pkt's family). It
// returns the error's length, or 0 when no error may be sent.
func TooBig(out, pkt []byte, mtu int, src netip.Addr) int {
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
	if len(pkt) < 20 {
		return 0
	}
	ihl := int(pkt[0]&0x0f) * 4
	if ihl < 20 || len(pkt) < ihl {
		return 0
	}
	if binary.BigEndian.Uint16(pkt[6:8])&0x1fff != 0 {
		return 0 // not the first fragment
	}
	dst := netip.AddrFrom4([4]byte(pkt[12:16]))
	if !unicast(dst) {
		return 0
	}
	if pkt[9] == 1 && len(pkt) >= ihl+1 && icmp4Error(pkt[ihl]) {
		return 0
	}
	quote := min(len(pkt), maxV4-28)
	n := 28 + quote
	if len(out) < n {
		return 0
	}
	ip := out[:20]
	ip[0], ip[1] = 0x45, 0xc0 // DSCP CS6, as network control traffic
	binary.BigEndian.PutUint16(ip[2:4], uint16(n))
	binary.BigEndian.PutUint32(ip[4:8], 0)
	ip[8], ip[9] = 64, 1
	ip[10], ip[11] = 0, 0
	s4 := src.As4()
	copy(ip[12:16], s4[:])
	copy(ip[16:20], pkt[12:16])
	binary.BigEndian.PutUint16(ip[10:12], inetsum.Checksum(ip, 0))
	m := out[20:n]
	m[0], m[1], m[2], m[3] = 3, 4, 0, 0
	binary.BigEndian.PutUint16(m[4:6], 0)
	binary.BigEndian.PutUint16(m[6:8], uint16(min(mtu, 0xffff)))
	copy(m[8:], pkt[:quote])
	binary.BigEndian.PutUint16(m[2:4], inetsum.Checksum(m, 0))
	return n
}

// icmp4Error: destination unreachable, source quench, redirect, time
// exceeded, parameter problem.
func icmp4Error(t byte) bool { return t == 3 || t == 4 || t == 5 || t == 11 || t == 12 }

func tooBig6(out, pkt []byte, mtu int, src netip.Addr) int {
	if len(pkt) < 40 {
		return 0
	}
	dst := netip.AddrFrom16([16]byte(pkt[8:24]))
	if !unicast(dst) {
		return 0
	}
	// An ICMPv6 error (type < 128) directly after the fixed header is never
	// answered. (Behind extension headers we answer; the sender's stack
	// still refuses to answer an error with an error.)
	if pkt[6] == 58 && len(pkt) >= 41 && pkt[40] < 128 {
		return 0
	}
	quote := min(len(pkt), maxV6-48)
	n := 48 + quote
	if len(out) < n {
		return 0
	}
	ip := out[:40]
	binary.BigEndian.PutUint32(ip[0:4], 6<<28)
	binary.BigEndian.PutUint16(ip[4:6], uint16(n-40))
	ip[6], ip[7] = 58, 64
	s16 := src.As16()
	copy(ip[8:24], s16[:])
	copy(ip[24:40], pkt[8:24])
	m := out[40:n]
	m[0], m[1], m[2], m[3] = 2, 0, 0, 0
	binary.BigEndian.PutUint32(m[4:8], uint32(mtu))
	copy(m[8:], pkt[:quote])
	// Pseudo-header: source, destination, upper-layer length, next header.
	c := inetsum.Add(ip[8:40], 0)
	c += uint64(len(m)) + 58
	binary.BigEndian.PutUint16(m[2:4], inetsum.Checksum(m, c))
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
