package flowhash

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// FuzzDecode: no input panics or reads out of bounds, and a decoded tuple
// keeps the package's promises.
func FuzzDecode(f *testing.F) {
	for _, pkt := range seedPackets() {
		f.Add(pkt)
	}
	sym := NewHasher(Key{1, 2, 3}, Mode5Tuple, true)
	f.Fuzz(func(t *testing.T, pkt []byte) {
		orig := bytes.Clone(pkt)
		var a, b Tuple
		da := a.Decode(pkt)
		db := b.Decode(pkt)
		if da != db || a != b {
			t.Fatalf("decoding twice differs: %v %v / %v %v", a, da, b, db)
		}
		if !bytes.Equal(pkt, orig) {
			t.Fatal("Decode modified the packet")
		}
		if da >= NumDrops || da == DropNoLane {
			t.Fatalf("Decode returned %v", da)
		}
		if da != DropNone {
			return
		}
		if a.Flags&FlagFragment != 0 && (a.SrcPort != 0 || a.DstPort != 0) {
			t.Fatalf("fragment with ports: %v", a)
		}
		rev := a.Reverse()
		if sym.Sum(&a) != sym.Sum(&rev) {
			t.Fatalf("symmetric hash differs for %v and its reverse", a)
		}
		_ = a.String()
	})
}

// FuzzSelect: any packet and any lane set give an up lane or a drop reason.
func FuzzSelect(f *testing.F) {
	for i, pkt := range seedPackets() {
		f.Add(pkt, uint8(i*37), uint32(i*100))
	}
	s, err := New(Config{Key: Key{4}, TableSize: 1009, Pins: PinConfig{Capacity: 256}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, pkt []byte, laneBits uint8, now uint32) {
		var lanes []Lane
		for i := range 8 {
			if laneBits&(1<<i) != 0 {
				lanes = append(lanes, Lane{ID: LaneID(i + 1), State: LaneState(i % 3)})
			}
		}
		if err := s.SetLanes(lanes); err != nil {
			t.Fatal(err)
		}
		lane, d := s.Select(pkt, now)
		var tu Tuple
		want := tu.Decode(pkt)
		switch {
		case want != DropNone && d != want:
			t.Fatalf("Select drop %v, Decode %v", d, want)
		case d == DropNone && (lane == 0 || int(lane) > 8 || laneBits&(1<<(lane-1)) == 0):
			t.Fatalf("lane %d is not in the set %08b", lane, laneBits)
		case d == DropNone && lanes[indexOf(lanes, lane)].State == LaneDown:
			t.Fatalf("lane %d is down", lane)
		}
	})
}

func indexOf(ls []Lane, id LaneID) int {
	for i, l := range ls {
		if l.ID == id {
			return i
		}
	}
	return -1
}

func seedPackets() [][]byte {
	var out [][]byte
	for _, n := range namedSpecs() {
		out = append(out, n.spec.build())
	}
	for _, m := range malformedPackets() {
		out = append(out, m.pkt)
	}
	return out
}

// writeFuzzCorpus keeps testdata/fuzz in step with the seed packets (run
// by TestVectors -update), so `go test -fuzz` starts from real packets.
func writeFuzzCorpus(t *testing.T) {
	for i, pkt := range seedPackets() {
		q := strconv.Quote(string(pkt))
		write(t, "FuzzDecode", i, "[]byte("+q+")\n")
		write(t, "FuzzSelect", i, fmt.Sprintf("[]byte(%s)\nuint8(%d)\nuint32(%d)\n", q, uint8(i*37), i*100))
	}
}

func write(t *testing.T, target string, i int, body string) {
	dir := filepath.Join("testdata", "fuzz", target)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	name := filepath.Join(dir, fmt.Sprintf("seed-%02d", i))
	if err := os.WriteFile(name, []byte("go test fuzz v1\n"+body), 0o644); err != nil {
		t.Fatal(err)
	}
}
