package flowhash

import (
	"bytes"
	"encoding/binary"
	"math/bits"
	"math/rand/v2"
	"testing"
)

// refSipHash is SipHash-c-d over any message, written byte by byte from the
// paper: the slow reference that the fixed-length sip13 is checked against.
func refSipHash(c, d int, key [16]byte, msg []byte) uint64 {
	k0, k1 := binary.LittleEndian.Uint64(key[:8]), binary.LittleEndian.Uint64(key[8:])
	v := [4]uint64{k0 ^ 0x736f6d6570736575, k1 ^ 0x646f72616e646f6d, k0 ^ 0x6c7967656e657261, k1 ^ 0x7465646279746573}
	round := func() {
		v[0] += v[1]
		v[1] = bits.RotateLeft64(v[1], 13) ^ v[0]
		v[0] = bits.RotateLeft64(v[0], 32)
		v[2] += v[3]
		v[3] = bits.RotateLeft64(v[3], 16) ^ v[2]
		v[0] += v[3]
		v[3] = bits.RotateLeft64(v[3], 21) ^ v[0]
		v[2] += v[1]
		v[1] = bits.RotateLeft64(v[1], 17) ^ v[2]
		v[2] = bits.RotateLeft64(v[2], 32)
	}
	block := make([]byte, 0, len(msg)+8)
	block = append(block, msg...)
	for len(block)%8 != 7 {
		block = append(block, 0)
	}
	block = append(block, byte(len(msg)))
	for i := 0; i < len(block); i += 8 {
		m := binary.LittleEndian.Uint64(block[i:])
		v[3] ^= m
		for range c {
			round()
		}
		v[0] ^= m
	}
	v[2] ^= 0xff
	for range d {
		round()
	}
	return v[0] ^ v[1] ^ v[2] ^ v[3]
}

// SipHash-2-4, key 00..0f, message 00 01 .. (n-1): the reference
// implementation's published vectors.
var sipHash24Vectors = [64]uint64{
	0x726fdb47dd0e0e31, 0x74f839c593dc67fd, 0x0d6c8009d9a94f5a, 0x85676696d7fb7e2d,
	0xcf2794e0277187b7, 0x18765564cd99a68d, 0xcbc9466e58fee3ce, 0xab0200f58b01d137,
	0x93f5f5799a932462, 0x9e0082df0ba9e4b0, 0x7a5dbbc594ddb9f3, 0xf4b32f46226bada7,
	0x751e8fbc860ee5fb, 0x14ea5627c0843d90, 0xf723ca908e7af2ee, 0xa129ca6149be45e5,
	0x3f2acc7f57c29bdb, 0x699ae9f52cbe4794, 0x4bc1b3f0968dd39c, 0xbb6dc91da77961bd,
	0xbed65cf21aa2ee98, 0xd0f2cbb02e3b67c7, 0x93536795e3a33e88, 0xa80c038ccd5ccec8,
	0xb8ad50c6f649af94, 0xbce192de8a85b8ea, 0x17d835b85bbb15f3, 0x2f2e6163076bcfad,
	0xde4daaaca71dc9a5, 0xa6a2506687956571, 0xad87a3535c49ef28, 0x32d892fad841c342,
	0x7127512f72f27cce, 0xa7f32346f95978e3, 0x12e0b01abb051238, 0x15e034d40fa197ae,
	0x314dffbe0815a3b4, 0x027990f029623981, 0xcadcd4e59ef40c4d, 0x9abfd8766a33735c,
	0x0e3ea96b5304a7d0, 0xad0c42d6fc585992, 0x187306c89bc215a9, 0xd4a60abcf3792b95,
	0xf935451de4f21df2, 0xa9538f0419755787, 0xdb9acddff56ca510, 0xd06c98cd5c0975eb,
	0xe612a3cb9ecba951, 0xc766e62cfcadaf96, 0xee64435a9752fe72, 0xa192d576b245165a,
	0x0a8787bf8ecb74b2, 0x81b3e73d20b49b6f, 0x7fa8220ba3b2ecea, 0x245731c13ca42499,
	0xb78dbfaf3a8d83bd, 0xea1ad565322a1a0b, 0x60e61c23a3795013, 0x6606d7e446282b93,
	0x6ca4ecb15c5f91e1, 0x9f626da15c9625f3, 0xe51b38608ef25f57, 0x958a324ceb064572,
}

// SipHash-1-3, zero key, message 00 01 .. (n-1), from the reference
// implementation (as quoted by OCaml's runtime tests).
var sipHash13Vectors = []uint64{
	0xd1fba762150c532c, 0x68a914128e01e473, 0x010bac45c41e3669, 0x4d4c9a4a8ef6e0ad,
	0x7cc43f98813e4dbd, 0x5abe2169dff36275, 0xe3c25f87624f1cdb, 0x2f098ab0c751325a,
	0xead411e67ebe2eea, 0x75927f9d95124362, 0xaf9f77a65ab51a1d, 0xfe64ce8b6617fcff,
	0xa6baf4fb0f9fe1c2, 0xa0cf3211850f8e0d, 0x7f86049379fbfe67, 0xf30eb725bb91c9ea,
	0x8972188433a5c5b7, 0x4883c49a2c009c1d, 0xadc2c0b63044067d, 0x091f4a3329f87d19,
	0x639e355ae68c0100, 0xb17bef2cb5213239, 0xf8aeb1066236ccfe,
}

func countingBytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

func TestRefSipHashMatchesPublishedVectors(t *testing.T) {
	var key [16]byte
	copy(key[:], countingBytes(16))
	for n, want := range sipHash24Vectors {
		if got := refSipHash(2, 4, key, countingBytes(n)); got != want {
			t.Errorf("SipHash-2-4 len %d = %#016x, want %#016x", n, got, want)
		}
	}
	for n, want := range sipHash13Vectors {
		if got := refSipHash(1, 3, [16]byte{}, countingBytes(n)); got != want {
			t.Errorf("SipHash-1-3 len %d = %#016x, want %#016x", n, got, want)
		}
	}
}

// refMessage is the 40-byte message of a canonical tuple, laid out from the
// package doc, not from Words.
func refMessage(c Tuple) []byte {
	msg := append(append([]byte{}, c.Src[:]...), c.Dst[:]...)
	msg = binary.BigEndian.AppendUint16(msg, c.SrcPort)
	msg = binary.BigEndian.AppendUint16(msg, c.DstPort)
	return append(msg, c.Proto, 0, 0, 0)
}

// refCanonical applies mode and symmetry the slow way.
func refCanonical(t Tuple, mode Mode, symmetric bool) Tuple {
	c := Tuple{Src: t.Src, Dst: t.Dst}
	if mode != Mode2Tuple {
		c.Proto = t.Proto
	}
	if mode == Mode5Tuple {
		c.SrcPort, c.DstPort = t.SrcPort, t.DstPort
	}
	a := append(c.Src[:], byte(c.SrcPort>>8), byte(c.SrcPort))
	b := append(c.Dst[:], byte(c.DstPort>>8), byte(c.DstPort))
	if symmetric && bytes.Compare(a, b) > 0 {
		c.Src, c.Dst, c.SrcPort, c.DstPort = c.Dst, c.Src, c.DstPort, c.SrcPort
	}
	return c
}

func randTuple(r *rand.Rand) Tuple {
	var t Tuple
	for i := range t.Src {
		t.Src[i], t.Dst[i] = byte(r.Uint32()), byte(r.Uint32())
	}
	if r.IntN(3) == 0 { // shared address prefixes exercise the tie-breaks
		t.Dst = t.Src
		t.Dst[15] ^= byte(r.IntN(2))
	}
	t.SrcPort, t.DstPort, t.Proto = uint16(r.Uint32()), uint16(r.Uint32()), uint8(r.Uint32())
	if r.IntN(5) == 0 {
		t.DstPort = t.SrcPort
	}
	return t
}

func TestSumMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 20000 {
		var key Key
		for j := range key {
			key[j] = byte(r.Uint32())
		}
		tu := randTuple(r)
		mode, sym := Mode(i%3), i%2 == 0
		want := refSipHash(1, 3, key, refMessage(refCanonical(tu, mode, sym)))
		if got := NewHasher(key, mode, sym).Sum(&tu); got != want {
			t.Fatalf("%v mode %v sym %v: Sum = %#x, reference %#x", tu, mode, sym, got, want)
		}
	}
}

func TestSymmetricHashesBothDirectionsTogether(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	key := Key{1, 2, 3}
	same := 0
	for i := range 5000 {
		tu := randTuple(r)
		rev := tu.Reverse()
		mode := Mode(i % 3)
		sym := NewHasher(key, mode, true)
		if sym.Sum(&tu) != sym.Sum(&rev) {
			t.Fatalf("symmetric %v: %v and its reverse hash apart", mode, tu)
		}
		if asym := NewHasher(key, mode, false); asym.Sum(&tu) == asym.Sum(&rev) {
			same++
		}
	}
	// Without the option the directions are independent, except where the
	// reverse is the same tuple (equal endpoints, or ports ignored).
	if same > 2500 {
		t.Errorf("asymmetric hashing sent %d of 5000 reversed tuples together", same)
	}
}

func TestModesIgnoreTheirFields(t *testing.T) {
	a := Tuple{Src: hostA4.As16(), Dst: hostB4.As16(), SrcPort: 1, DstPort: 2, Proto: ProtoTCP}
	b := a
	b.SrcPort, b.DstPort = 3, 4
	c := b
	c.Proto = ProtoUDP
	key := Key{9}
	for _, tc := range []struct {
		mode   Mode
		ab, bc bool // hash equal?
	}{
		{Mode5Tuple, false, false},
		{Mode3Tuple, true, false},
		{Mode2Tuple, true, true},
	} {
		h := NewHasher(key, tc.mode, false)
		if got := h.Sum(&a) == h.Sum(&b); got != tc.ab {
			t.Errorf("%v: ports changed, equal hash = %v, want %v", tc.mode, got, tc.ab)
		}
		if got := h.Sum(&b) == h.Sum(&c); got != tc.bc {
			t.Errorf("%v: proto changed, equal hash = %v, want %v", tc.mode, got, tc.bc)
		}
	}
	if NewHasher(Key{1}, Mode5Tuple, false).Sum(&a) == NewHasher(Key{2}, Mode5Tuple, false).Sum(&a) {
		t.Error("the hash does not depend on the key")
	}
}

func TestParseKeyAndMode(t *testing.T) {
	k, err := ParseKey("000102030405060708090a0b0c0d0e0f")
	if err != nil || k != Key(countingBytes(16)) {
		t.Fatalf("ParseKey = %x, %v", k, err)
	}
	for _, bad := range []string{"", "00", "zz0102030405060708090a0b0c0d0e0f", "000102030405060708090a0b0c0d0e0f00"} {
		if _, err := ParseKey(bad); err == nil {
			t.Errorf("ParseKey(%q) accepted", bad)
		}
	}
	for s, want := range map[string]Mode{"": Mode5Tuple, "5-tuple": Mode5Tuple, "3-tuple": Mode3Tuple, "2-tuple": Mode2Tuple} {
		if m, err := ParseMode(s); err != nil || m != want {
			t.Errorf("ParseMode(%q) = %v, %v", s, m, err)
		}
		if want.String() != s && s != "" {
			t.Errorf("%v.String() = %q", want, want.String())
		}
	}
	if _, err := ParseMode("4-tuple"); err == nil {
		t.Error("ParseMode accepted 4-tuple")
	}
}
