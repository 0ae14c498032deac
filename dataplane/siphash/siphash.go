// Package siphash is SipHash (Aumasson and Bernstein, 2012): its round,
// which flowhash's SipHash-1-3 over fixed words shares, and SipHash-2-4
// over bytes, the MAC of sealed GENEVE frames.
package siphash

import (
	"encoding/binary"
	"math/bits"
)

// Sum24 is SipHash-2-4 of a||b with the key (k0, k1); len(a) must be a
// multiple of 8 (so that a MAC can skip its own field without a copy).
func Sum24(k0, k1 uint64, a, b []byte) uint64 {
	v0 := k0 ^ 0x736f6d6570736575
	v1 := k1 ^ 0x646f72616e646f6d
	v2 := k0 ^ 0x6c7967656e657261
	v3 := k1 ^ 0x7465646279746573
	n := len(a) + len(b)
	for ; len(a) >= 8; a = a[8:] {
		m := binary.LittleEndian.Uint64(a)
		v3 ^= m
		v0, v1, v2, v3 = Round(v0, v1, v2, v3)
		v0, v1, v2, v3 = Round(v0, v1, v2, v3)
		v0 ^= m
	}
	for ; len(b) >= 8; b = b[8:] {
		m := binary.LittleEndian.Uint64(b)
		v3 ^= m
		v0, v1, v2, v3 = Round(v0, v1, v2, v3)
		v0, v1, v2, v3 = Round(v0, v1, v2, v3)
		v0 ^= m
	}
	m := uint64(n) << 56
	for i, c := range b {
		m |= uint64(c) << (8 * i)
	}
	v3 ^= m
	v0, v1, v2, v3 = Round(v0, v1, v2, v3)
	v0, v1, v2, v3 = Round(v0, v1, v2, v3)
	v0 ^= m
	v2 ^= 0xff
	v0, v1, v2, v3 = Round(v0, v1, v2, v3)
	v0, v1, v2, v3 = Round(v0, v1, v2, v3)
	v0, v1, v2, v3 = Round(v0, v1, v2, v3)
	v0, v1, v2, v3 = Round(v0, v1, v2, v3)
	return v0 ^ v1 ^ v2 ^ v3
}

// Round is one SipRound.
func Round(v0, v1, v2, v3 uint64) (uint64, uint64, uint64, uint64) {
	v0 += v1
	v1 = bits.RotateLeft64(v1, 13)
	v1 ^= v0
	v0 = bits.RotateLeft64(v0, 32)
	v2 += v3
	v3 = bits.RotateLeft64(v3, 16)
	v3 ^= v2
	v0 += v3
	v3 = bits.RotateLeft64(v3, 21)
	v3 ^= v0
	v2 += v1
	v1 = bits.RotateLeft64(v1, 17)
	v1 ^= v2
	v2 = bits.RotateLeft64(v2, 32)
	return v0, v1, v2, v3
}
