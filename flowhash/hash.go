package flowhash

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/bits"
	"strings"
)

// Key is the cluster's shared hash secret (SipHash's 128-bit key). Both
// demuxes of a peering, and the XDP program, must use the same key.
type Key [16]byte

// ParseKey reads a key written as 32 hex digits.
func ParseKey(s string) (Key, error) {
	var k Key
	b, err := hex.DecodeString(strings.TrimSpace(s))
	if err != nil || len(b) != len(k) {
		return k, fmt.Errorf("hash key must be %d hex digits (16 bytes), e.g. from `openssl rand -hex 16`", 2*len(k))
	}
	copy(k[:], b)
	return k, nil
}

// Mode chooses which fields of the tuple are hashed, like AWS Gateway Load
// Balancer's stickiness options.
type Mode uint8

const (
	Mode5Tuple Mode = iota // src, dst, proto, ports (default)
	Mode3Tuple             // src, dst, proto
	Mode2Tuple             // src, dst
)

// ParseMode accepts "5-tuple", "3-tuple" and "2-tuple"; "" means 5-tuple.
func ParseMode(s string) (Mode, error) {
	switch s {
	case "", "5-tuple":
		return Mode5Tuple, nil
	case "3-tuple":
		return Mode3Tuple, nil
	case "2-tuple":
		return Mode2Tuple, nil
	}
	return 0, fmt.Errorf("hash mode %q: want 5-tuple, 3-tuple or 2-tuple", s)
}

func (m Mode) String() string {
	switch m {
	case Mode5Tuple:
		return "5-tuple"
	case Mode3Tuple:
		return "3-tuple"
	case Mode2Tuple:
		return "2-tuple"
	}
	return fmt.Sprintf("mode-%d", uint8(m))
}

// Hasher computes the keyed flow hash. It is a small value; copy it freely.
type Hasher struct {
	k0, k1    uint64
	mode      Mode
	symmetric bool
}

// NewHasher returns the hasher for a key, mode and symmetric option.
func NewHasher(key Key, mode Mode, symmetric bool) Hasher {
	return Hasher{
		k0:        binary.LittleEndian.Uint64(key[0:8]),
		k1:        binary.LittleEndian.Uint64(key[8:16]),
		mode:      mode,
		symmetric: symmetric,
	}
}

// Canonical returns the flow's identity under the hasher's mode: fields the
// mode ignores are zeroed, flags are cleared, and with the symmetric option
// the smaller endpoint (address bytes, then port) comes first, so that both
// directions of a connection have the same canonical tuple.
func (h Hasher) Canonical(t *Tuple) Tuple {
	c := Tuple{Src: t.Src, Dst: t.Dst, Proto: t.Proto}
	switch h.mode {
	case Mode5Tuple:
		c.SrcPort, c.DstPort = t.SrcPort, t.DstPort
	case Mode2Tuple:
		c.Proto = 0
	}
	if h.symmetric {
		if o := bytes.Compare(c.Src[:], c.Dst[:]); o > 0 || o == 0 && c.SrcPort > c.DstPort {
			c = c.Reverse()
		}
	}
	return c
}

// Words is the canonical tuple as the five little-endian 64-bit words that
// SipHash consumes: the 40-byte message Src(16) Dst(16) SrcPort(2, big
// endian) DstPort(2, big endian) Proto(1) zero(3). On a little-endian
// machine these are plain loads of the packet's own bytes, which is what
// the BPF program does. Flow pins store these words as their key.
type Words [5]uint64

// Words encodes a canonical tuple (see Canonical).
func (c *Tuple) Words() Words {
	return Words{
		binary.LittleEndian.Uint64(c.Src[0:8]),
		binary.LittleEndian.Uint64(c.Src[8:16]),
		binary.LittleEndian.Uint64(c.Dst[0:8]),
		binary.LittleEndian.Uint64(c.Dst[8:16]),
		uint64(bits.ReverseBytes16(c.SrcPort)) |
			uint64(bits.ReverseBytes16(c.DstPort))<<16 |
			uint64(c.Proto)<<32,
	}
}

// Sum is the flow hash of t: SipHash-1-3 keyed with the cluster key over the
// canonical tuple's 40-byte encoding (see Words).
func (h Hasher) Sum(t *Tuple) uint64 {
	c := h.Canonical(t)
	w := c.Words()
	return h.sumWords(&w)
}

func (h Hasher) sumWords(w *Words) uint64 {
	return sip13(h.k0, h.k1, w)
}

// sip13 is SipHash-1-3 of a 40-byte message given as five little-endian
// words: one compression round per word, three finalization rounds. The
// message length is fixed, so the last block is just the length byte.
func sip13(k0, k1 uint64, m *Words) uint64 {
	v0 := k0 ^ 0x736f6d6570736575
	v1 := k1 ^ 0x646f72616e646f6d
	v2 := k0 ^ 0x6c7967656e657261
	v3 := k1 ^ 0x7465646279746573
	for _, w := range m {
		v3 ^= w
		v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
		v0 ^= w
	}
	const last = uint64(40) << 56
	v3 ^= last
	v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
	v0 ^= last
	v2 ^= 0xff
	v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
	v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
	v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
	return v0 ^ v1 ^ v2 ^ v3
}

func sipRound(v0, v1, v2, v3 uint64) (uint64, uint64, uint64, uint64) {
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
