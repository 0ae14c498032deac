package flowhash

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/flowhash-vectors.json from the current code")

const vectorsPath = "../testdata/flowhash-vectors.json"

// vectorFile is the shared definition check: the Go code and the BPF code
// must both turn every packet into the same drop reason and hash, and build
// the same Maglev tables (compared by digest).
type vectorFile struct {
	About  []string      `json:"about"`
	Hashes []hashVector  `json:"hashes"`
	Tables []tableVector `json:"tables"`
}

type hashVector struct {
	Name      string `json:"name"`
	Packet    string `json:"packet"` // hex, starting at the IP header
	Key       string `json:"key"`
	Mode      string `json:"mode"`
	Symmetric bool   `json:"symmetric"`
	Drop      string `json:"drop"`            // "none" when the packet is hashed
	Tuple     string `json:"tuple,omitempty"` // for people reading the file
	Hash      string `json:"hash,omitempty"`  // 16 hex digits
}

type tableVector struct {
	Key    string         `json:"key"`
	Size   uint32         `json:"size"`
	Lanes  []WeightedLane `json:"lanes"`
	First  []LaneID       `json:"first_slots"`
	SHA256 string         `json:"sha256"` // of the slots as little-endian uint16
}

var vectorKeys = []string{"000102030405060708090a0b0c0d0e0f", "9f1c2d3e4a5b6c7d8e9fa0b1c2d3e4f5"}

type namedPacket struct {
	name string
	pkt  []byte
}

// malformedPackets are bad packets every implementation must drop, in a
// fixed order (the vector file and the fuzz corpus list them in it).
func malformedPackets() []namedPacket {
	tcp4 := namedSpecs()[0].spec.build()
	bad := func(f func(b []byte)) []byte {
		b := append([]byte{}, tcp4...)
		f(b)
		return b
	}
	return []namedPacket{
		{"malformed-ihl-4", bad(func(b []byte) { b[0] = 0x44 })},
		{"malformed-version-5", bad(func(b []byte) { b[0] = 0x55 })},
		{"malformed-truncated-tcp4", tcp4[:len(tcp4)-30]},
		{"malformed-ipv6-10-ext-headers", (&pktSpec{src: hostA6, dst: hostB6, proto: ProtoUDP, sport: 1, dport: 2,
			ext: []uint8{0, 60, 60, 60, 60, 60, 60, 60, 60, 60}}).build()},
	}
}

func tableCases() []tableVector {
	return []tableVector{
		{Key: vectorKeys[0], Size: DefaultTableSize, Lanes: []WeightedLane{{1, 1}, {2, 1}, {3, 1}}},
		{Key: vectorKeys[1], Size: DefaultTableSize, Lanes: []WeightedLane{{10, 2}, {20, 36}, {30, 8}, {4095, 16}}},
		{Key: vectorKeys[1], Size: 1009, Lanes: []WeightedLane{{7, 1}, {8, 1}}},
	}
}

func computeVectors(t *testing.T) vectorFile {
	f := vectorFile{About: []string{
		"clusterpeer flow hash vectors: every implementation of the lane choice (Go, BPF) must reproduce these.",
		"hash = SipHash-1-3(key, Src[16] Dst[16] SrcPort[2,BE] DstPort[2,BE] Proto[1] 0 0 0) of the canonical tuple; see flowhash/doc.go.",
		"tables: Maglev table for (key, size, lanes); sha256 over the slots as little-endian uint16, lane 0 = empty.",
		"Regenerate only on purpose: go test ./flowhash -run TestVectors -update",
	}}
	emit := func(name string, pkt []byte) {
		for _, ks := range vectorKeys {
			key, _ := ParseKey(ks)
			for mode := Mode5Tuple; mode <= Mode2Tuple; mode++ {
				for _, sym := range []bool{false, true} {
					v := hashVector{Name: name, Packet: hex.EncodeToString(pkt), Key: ks, Mode: mode.String(), Symmetric: sym}
					var tu Tuple
					d := tu.Decode(pkt)
					v.Drop = d.String()
					if d == DropNone {
						h := NewHasher(key, mode, sym)
						c := h.Canonical(&tu)
						v.Tuple = c.String()
						v.Hash = fmt.Sprintf("%016x", h.Sum(&tu))
					}
					f.Hashes = append(f.Hashes, v)
					if d != DropNone {
						return // one entry per malformed packet is enough
					}
				}
			}
		}
	}
	for _, n := range namedSpecs() {
		emit(n.name, n.spec.build())
	}
	for _, m := range malformedPackets() {
		emit(m.name, m.pkt)
	}
	for _, tc := range tableCases() {
		key, _ := ParseKey(tc.Key)
		tb, err := BuildTable(tc.Lanes, tc.Size, key)
		if err != nil {
			t.Fatal(err)
		}
		tc.First = tb.Slots()[:16]
		tc.SHA256 = tableDigest(tb)
		f.Tables = append(f.Tables, tc)
	}
	return f
}

func tableDigest(tb *Table) string {
	b := make([]byte, 0, 2*tb.Size())
	for _, l := range tb.Slots() {
		b = binary.LittleEndian.AppendUint16(b, uint16(l))
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// TestVectors checks the code against the committed vectors, reading the
// packets from the file (not rebuilding them), so a change in the hash,
// the decoder or the table algorithm cannot pass unnoticed.
func TestVectors(t *testing.T) {
	if *update {
		b, err := json.MarshalIndent(computeVectors(t), "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(vectorsPath, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
		writeFuzzCorpus(t)
		t.Logf("wrote %s and the fuzz seed corpus", vectorsPath)
	}
	b, err := os.ReadFile(vectorsPath)
	if err != nil {
		t.Fatalf("%v (generate with -update)", err)
	}
	var f vectorFile
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	if len(f.Hashes) < 100 || len(f.Tables) == 0 {
		t.Fatalf("vector file has %d hashes, %d tables", len(f.Hashes), len(f.Tables))
	}
	for i, v := range f.Hashes {
		pkt, err := hex.DecodeString(v.Packet)
		if err != nil {
			t.Fatalf("vector %d: %v", i, err)
		}
		key, err := ParseKey(v.Key)
		if err != nil {
			t.Fatal(err)
		}
		mode, err := ParseMode(v.Mode)
		if err != nil {
			t.Fatal(err)
		}
		var tu Tuple
		if d := tu.Decode(pkt); d.String() != v.Drop {
			t.Errorf("%s: drop %v, want %s", v.Name, d, v.Drop)
			continue
		}
		if v.Drop != "none" {
			continue
		}
		want, err := strconv.ParseUint(v.Hash, 16, 64)
		if err != nil {
			t.Fatal(err)
		}
		if got := NewHasher(key, mode, v.Symmetric).Sum(&tu); got != want {
			t.Errorf("%s key %s %s sym=%v: hash %016x, want %016x", v.Name, v.Key[:4], v.Mode, v.Symmetric, got, want)
		}
	}
	for _, tc := range f.Tables {
		key, _ := ParseKey(tc.Key)
		tb, err := BuildTable(tc.Lanes, tc.Size, key)
		if err != nil {
			t.Fatal(err)
		}
		if got := tableDigest(tb); got != tc.SHA256 {
			t.Errorf("table %v size %d: digest %s, want %s", tc.Lanes, tc.Size, got, tc.SHA256)
		}
	}
}
