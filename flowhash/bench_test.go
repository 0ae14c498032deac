package flowhash

import (
	"math/rand/v2"
	"strconv"
	"testing"
)

// benchPackets are n distinct flows of one kind, sized like real traffic.
func benchPackets(v6 bool, proto uint8, size, n int) [][]byte {
	r := rand.New(rand.NewPCG(21, 22))
	out := make([][]byte, n)
	for i := range out {
		s := &pktSpec{proto: proto, sport: uint16(r.Uint32()), dport: 5201}
		if v6 {
			s.src, s.dst = randAddr6(r), hostB6
			s.payload = size - 40 - 8
		} else {
			s.src, s.dst = randAddr4(r), hostB4
			s.payload = size - 20 - 20
		}
		out[i] = s.build()
	}
	return out
}

var benchCases = []struct {
	name  string
	v6    bool
	proto uint8
	size  int
}{
	{"ipv4-tcp-64B", false, ProtoTCP, 64},
	{"ipv4-tcp-1400B", false, ProtoTCP, 1400},
	{"ipv6-udp-64B", true, ProtoUDP, 64},
	{"ipv6-udp-1400B", true, ProtoUDP, 1400},
}

var sink LaneID

// BenchmarkDecodeHashLookup is the per-packet work shared by every path:
// decode the tuple, hash it, read the Maglev slot.
func BenchmarkDecodeHashLookup(b *testing.B) {
	tb, err := BuildTable(lanesN(16), DefaultTableSize, testKey)
	if err != nil {
		b.Fatal(err)
	}
	h := NewHasher(testKey, Mode5Tuple, false)
	for _, bc := range benchCases {
		pkts := benchPackets(bc.v6, bc.proto, bc.size, 256)
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(bc.size))
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				var t Tuple
				if t.Decode(pkts[i&255]) != DropNone {
					b.Fatal("drop")
				}
				sink = tb.Lookup(h.Sum(&t))
				i++
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds()/1e6, "Mpps")
		})
	}
}

// BenchmarkSelect is the demux's whole choice for established flows:
// decode, hash, pin lookup (hit), snapshot check.
func BenchmarkSelect(b *testing.B) {
	for _, flows := range []int{256, 65536} {
		for _, bc := range benchCases[1:2] {
			s, err := New(Config{Key: testKey}) // default pin table: 1M flows
			if err != nil {
				b.Fatal(err)
			}
			if err := s.SetLanes(upLanes(1, 2, 3, 4, 5, 6, 7, 8)); err != nil {
				b.Fatal(err)
			}
			pkts := benchPackets(bc.v6, bc.proto, bc.size, flows)
			for _, p := range pkts {
				s.Select(p, 0)
			}
			b.Run(bc.name+"/flows="+strconv.Itoa(flows), func(b *testing.B) {
				b.SetBytes(int64(bc.size))
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					lane, _ := s.Select(pkts[i%flows], 1)
					sink = lane
					i++
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds()/1e6, "Mpps")
			})
		}
	}
}

// BenchmarkPinsParallel: every goroutine looks up established flows and
// inserts a new flow one time in sixteen, on a default-sized table.
func BenchmarkPinsParallel(b *testing.B) {
	p := mustPins(b, PinConfig{})
	const flows = 1 << 18
	ws := make([]Words, flows)
	sums := make([]uint64, flows)
	for i := range ws {
		ws[i], sums[i] = flowWords(i, ProtoTCP)
		p.Insert(&ws[i], sums[i], LaneID(i%8+1), 1, true, 0)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		r := rand.New(rand.NewPCG(rand.Uint64(), 1))
		for pb.Next() {
			i := r.IntN(flows)
			if i&15 == 0 {
				p.Insert(&ws[i], sums[i], LaneID(i%8+1), 1, true, 1)
			} else if _, _, ok := p.Lookup(&ws[i], sums[i], 1); !ok {
				b.Error("pin lost")
				return
			}
		}
	})
}

// BenchmarkMaglevBuild is the rebuild a lane change costs (goal <= 5 ms).
func BenchmarkMaglevBuild(b *testing.B) {
	for _, n := range []int{4, 16, 64} {
		lanes := lanesN(n)
		b.Run("lanes="+strconv.Itoa(n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := BuildTable(lanes, DefaultTableSize, testKey); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkNewFlowFullTable: the first packet of a new flow when the pin
// table is full of live pins (a spray), so every insert evicts. "agreeing"
// is the shipped rule (it hashes the candidates to find a pin the table
// agrees with); "lru" the least-recently-seen rule alone, for the cost.
func BenchmarkNewFlowFullTable(b *testing.B) {
	for _, rule := range []string{"agreeing", "lru"} {
		b.Run(rule, func(b *testing.B) {
			s, err := New(Config{Key: testKey, Pins: PinConfig{Capacity: 1 << 12}})
			if err != nil {
				b.Fatal(err)
			}
			if err := s.SetLanes([]Lane{{ID: 1, Weight: 1}, {ID: 2, Weight: 1}, {ID: 3, Weight: 1}}); err != nil {
				b.Fatal(err)
			}
			if rule == "lru" {
				s.pins.sel = nil
			}
			for i := range 1 << 14 { // four times the capacity: full
				tu := flowTuple(i)
				s.SelectTuple(&tu, 0)
			}
			tus := make([]Tuple, 1<<16)
			for i := range tus {
				tus[i] = flowTuple(1<<14 + i)
			}
			b.ResetTimer()
			for i := range b.N {
				s.SelectTuple(&tus[i%len(tus)], 0)
			}
		})
	}
}
