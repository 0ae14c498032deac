// The Internet checksum (RFC 1071) that IPv4 headers, ICMP, ICMPv6 and
// UDP carry, for the few packets clusterpeer writes itself.

package packet

import "encoding/binary"

// ChecksumAdd adds b as big-endian 16-bit words to the one's-complement
// accumulator c; an odd last byte is padded with zero. It adds 32-bit
// words where it can (the same sum once folded, RFC 1071 2(B): a quarter
// of the additions for a full-sized segment).
func ChecksumAdd(b []byte, c uint64) uint64 {
	for len(b) >= 8 {
		c += uint64(binary.BigEndian.Uint32(b)) + uint64(binary.BigEndian.Uint32(b[4:]))
		b = b[8:]
	}
	for len(b) >= 2 {
		c += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		c += uint64(b[0]) << 8
	}
	return c
}

// ChecksumFold reduces an accumulator to 16 bits.
func ChecksumFold(c uint64) uint16 {
	for c > 0xffff {
		c = c>>16 + c&0xffff
	}
	return uint16(c)
}

// Checksum is the value to store in a header's checksum field: the
// complement of the folded sum of b on top of c (0 for a plain header; a
// pseudo-header's sum for UDP and ICMPv6).
func Checksum(b []byte, c uint64) uint16 { return ^ChecksumFold(ChecksumAdd(b, c)) }
