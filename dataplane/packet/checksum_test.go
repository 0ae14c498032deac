package packet

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"
)

// TestChecksumAddMatchesWordByWord: adding 32-bit words gives, once
// folded, the RFC 1071 sum of 16-bit words, for every length and start.
func TestChecksumAddMatchesWordByWord(t *testing.T) {
	ref := func(b []byte, c uint64) uint16 {
		for ; len(b) >= 2; b = b[2:] {
			c += uint64(binary.BigEndian.Uint16(b))
		}
		if len(b) == 1 {
			c += uint64(b[0]) << 8
		}
		return ChecksumFold(c)
	}
	r := rand.New(rand.NewPCG(1, 2))
	data := make([]byte, 1500)
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	for n := range 80 {
		for _, b := range [][]byte{data[:n], data[3 : 3+n], data[len(data)-n:], make([]byte, n)} {
			c := uint64(r.Uint32())
			if got, want := ChecksumFold(ChecksumAdd(b, c)), ref(b, c); got != want {
				t.Fatalf("%d bytes: %#04x, want %#04x", n, got, want)
			}
		}
	}
	for _, b := range [][]byte{data, append(data, 0xff)} {
		if got, want := ChecksumFold(ChecksumAdd(b, 0)), ref(b, 0); got != want {
			t.Fatalf("%d bytes: %#04x, want %#04x", len(b), got, want)
		}
	}
}
