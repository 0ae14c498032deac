package geneveauth

import (
	"bytes"
	"testing"

	"github.com/clusterpeer/clusterpeer/dataplane/packet"
)

// FuzzOpen: any bytes that ParseGeneve accepts go to Open without a
// panic, and a frame that opens is one a Sealer of the pair produced:
// the fuzzer's mutations of a sealed frame never open.
func FuzzOpen(f *testing.F) {
	s, _ := pair(1)
	sealed := frame(inner(48), false)
	s.Seal(sealed, s.Reserve(1))
	f.Add(sealed)
	f.Add(frame(inner(20), true))
	f.Add([]byte{0, 0, 8, 0, 0, 0x10, 0x92, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, _, err := packet.ParseGeneve(b); err != nil {
			return
		}
		_, o := pair(1)
		err := o.Open(b)
		if err == nil && !bytes.Equal(b, sealed) {
			t.Fatalf("a frame the sealer never made opened: %x", b)
		}
	})
}
