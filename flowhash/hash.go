package flowhash

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/bits"
	"strings"

	"github.com/clusterpeer/clusterpeer/dataplane/siphash"
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

// KeyWords is the key as SipHash's two little-endian words, for the XDP
// program's constants.
func (h Hasher) KeyWords() (k0, k1 uint64) { return h.k0, h.k1 }

// Words is the canonical tuple as the five little-endian 64-bit words that
// SipHash consumes: the 40-byte message Src(16) Dst(16) SrcPort(2, big
// endian) DstPort(2, big endian) Proto(1) zero(3). On a little-endian
// machine these are plain loads of the packet's own bytes, which is what
// the BPF program does. Flow pins store these words as their key.
type Words [5]uint64

// Words returns the canonical words of t: fields the mode ignores are
// zero, and with the symmetric option the endpoint whose (address bytes,
// port) compares smaller comes first, so that both directions of a
// connection have the same words. This is the one definition; Canonical
// and Sum are built on it.
func (h Hasher) Words(t *Tuple) Words {
	sp, dp, proto := t.SrcPort, t.DstPort, t.Proto
	switch h.mode {
	case Mode3Tuple:
		sp, dp = 0, 0
	case Mode2Tuple:
		sp, dp, proto = 0, 0, 0
	}
	w := Words{
		binary.LittleEndian.Uint64(t.Src[0:8]),
		binary.LittleEndian.Uint64(t.Src[8:16]),
		binary.LittleEndian.Uint64(t.Dst[0:8]),
		binary.LittleEndian.Uint64(t.Dst[8:16]),
	}
	if h.symmetric && srcAfterDst(t, sp, dp) {
		w[0], w[1], w[2], w[3] = w[2], w[3], w[0], w[1]
		sp, dp = dp, sp
	}
	w[4] = uint64(bits.ReverseBytes16(sp)) | uint64(bits.ReverseBytes16(dp))<<16 | uint64(proto)<<32
	return w
}

// srcAfterDst reports whether (Src, sp) sorts after (Dst, dp): address
// bytes in order (as big-endian numbers), then the port.
func srcAfterDst(t *Tuple, sp, dp uint16) bool {
	s0, d0 := binary.BigEndian.Uint64(t.Src[0:8]), binary.BigEndian.Uint64(t.Dst[0:8])
	if s0 != d0 {
		return s0 > d0
	}
	s1, d1 := binary.BigEndian.Uint64(t.Src[8:16]), binary.BigEndian.Uint64(t.Dst[8:16])
	if s1 != d1 {
		return s1 > d1
	}
	return sp > dp
}

// Canonical returns the tuple that Words encodes: the flow's identity under
// the hasher's mode and symmetric option, with flags cleared. For logs,
// tests and vectors; the data path uses Words.
func (h Hasher) Canonical(t *Tuple) Tuple {
	return h.Words(t).Tuple()
}

// Tuple is the tuple the words encode (a pin's flow, for operators).
func (w Words) Tuple() Tuple {
	var c Tuple
	binary.LittleEndian.PutUint64(c.Src[0:8], w[0])
	binary.LittleEndian.PutUint64(c.Src[8:16], w[1])
	binary.LittleEndian.PutUint64(c.Dst[0:8], w[2])
	binary.LittleEndian.PutUint64(c.Dst[8:16], w[3])
	c.SrcPort = bits.ReverseBytes16(uint16(w[4]))
	c.DstPort = bits.ReverseBytes16(uint16(w[4] >> 16))
	c.Proto = uint8(w[4] >> 32)
	return c
}

// Sum is the flow hash of t: SipHash-1-3 keyed with the cluster key over the
// canonical words (see Words).
func (h Hasher) Sum(t *Tuple) uint64 {
	w := h.Words(t)
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

// sipRound is SipHash's round, shared with the GENEVE tags' SipHash-2-4.
func sipRound(v0, v1, v2, v3 uint64) (uint64, uint64, uint64, uint64) {
	return siphash.Round(v0, v1, v2, v3)
}

// UnmarshalText reads a mode as ParseMode does (config files hold it so).
func (m *Mode) UnmarshalText(b []byte) error {
	v, err := ParseMode(string(b))
	if err == nil {
		*m = v
	}
	return err
}

func (m Mode) MarshalText() ([]byte, error) { return []byte(m.String()), nil }
