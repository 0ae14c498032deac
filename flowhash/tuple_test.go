package flowhash

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"

	"github.com/clusterpeer/clusterpeer/dataplane/packet"
)

func TestDecodeNamedPackets(t *testing.T) {
	for _, n := range namedSpecs() {
		t.Run(n.name, func(t *testing.T) {
			pkt := n.spec.build()
			var got Tuple
			if d := got.Decode(pkt); d != DropNone {
				t.Fatalf("Decode = %v", d)
			}
			if want := n.spec.want(); got != want {
				t.Fatalf("Decode = %v %+v\nwant     %v %+v", got, got, want, want)
			}
		})
	}
}

// TestDecodeRandomPackets compares Decode with the spec on seeded random
// packets of every kind the generator makes.
func TestDecodeRandomPackets(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for i := range 5000 {
		s := randSpec(r, true)
		pkt := s.build()
		var got Tuple
		if d := got.Decode(pkt); d != DropNone {
			t.Fatalf("packet %d (%x): Decode = %v", i, pkt, d)
		}
		if want := s.want(); got != want {
			t.Fatalf("packet %d (%x):\nDecode = %v %+v\nwant     %v %+v", i, pkt, got, got, want, want)
		}
	}
}

func TestEchoRequestAndReplyShareTheFlow(t *testing.T) {
	for _, pair := range [][2]string{
		{"ipv4-icmp-echo-request", "ipv4-icmp-echo-reply"},
		{"ipv6-icmp-echo-request", "ipv6-icmp-echo-reply"},
		{"ipv4-tcp", "ipv4-tcp-reply"},
	} {
		req, rep := decodeNamed(t, pair[0]), decodeNamed(t, pair[1])
		h := NewHasher(Key{7}, Mode5Tuple, true)
		if h.Sum(&req) != h.Sum(&rep) {
			t.Errorf("symmetric: %s and %s hash apart", pair[0], pair[1])
		}
	}
}

// An ICMP error travels with the flow it reports on: the reverse of the
// quoted packet's flow, in every mode, symmetric or not.
func TestICMPErrorFollowsItsFlow(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	for i := range 2000 {
		s := randSpec(r, true)
		if s.quoted == nil || s.frag != 0 {
			continue
		}
		var errTuple, flow Tuple
		if d := errTuple.Decode(s.build()); d != DropNone {
			t.Fatal(d)
		}
		// The flow's packets travel opposite to the quoted packet.
		back := *s.quoted
		back.src, back.dst, back.sport, back.dport = back.dst, back.src, back.dport, back.sport
		if back.proto == ProtoICMP {
			back.icmpType = 0 // the echo reply
		} else if back.proto == ProtoICMPv6 {
			back.icmpType = 129
		}
		if d := flow.Decode(back.build()); d != DropNone {
			t.Fatal(d)
		}
		for mode := Mode5Tuple; mode <= Mode2Tuple; mode++ {
			for _, sym := range []bool{false, true} {
				h := NewHasher(Key{byte(i)}, mode, sym)
				if h.Sum(&errTuple) != h.Sum(&flow) {
					t.Fatalf("%v sym=%v: error %v and flow %v hash apart", mode, sym, errTuple, flow)
				}
			}
		}
	}
}

// Every fragment of a datagram hashes the same, whatever the mode.
func TestFragmentsOfADatagramHashTogether(t *testing.T) {
	for _, pair := range [][2]string{
		{"ipv4-udp-first-fragment", "ipv4-udp-later-fragment"},
		{"ipv6-udp-first-fragment", "ipv6-udp-later-fragment"},
	} {
		first, later := decodeNamed(t, pair[0]), decodeNamed(t, pair[1])
		for mode := Mode5Tuple; mode <= Mode2Tuple; mode++ {
			for _, sym := range []bool{false, true} {
				h := NewHasher(Key{3}, mode, sym)
				if h.Sum(&first) != h.Sum(&later) {
					t.Errorf("%s: %v sym=%v: fragments hash apart", pair[0], mode, sym)
				}
			}
		}
	}
}

func decodeNamed(t *testing.T, name string) Tuple {
	t.Helper()
	for _, n := range namedSpecs() {
		if n.name == name {
			var tu Tuple
			if d := tu.Decode(n.spec.build()); d != DropNone {
				t.Fatalf("%s: %v", name, d)
			}
			return tu
		}
	}
	t.Fatalf("no packet named %s", name)
	return Tuple{}
}

// Every strict prefix of a valid packet is dropped as truncated: the IP
// length fields promise more than is there.
func TestDecodeTruncatedPrefixes(t *testing.T) {
	for _, n := range namedSpecs() {
		pkt := n.spec.build()
		for l := range len(pkt) {
			var tu Tuple
			if d := tu.Decode(pkt[:l]); d != DropTruncated {
				t.Errorf("%s cut to %d of %d bytes: Decode = %v, want truncated", n.name, l, len(pkt), d)
			}
		}
	}
}

// DecodeTruncated reads, from any prefix that holds the headers, the
// tuple Decode reads from the whole packet (an ICMP error quotes a packet
// cut short); ICMP errors aside, whose quote it does not follow.
func TestDecodeTruncatedReadsTheHeaders(t *testing.T) {
	for _, n := range namedSpecs() {
		pkt := n.spec.build()
		var whole Tuple
		if whole.Decode(pkt) != DropNone || whole.Flags&FlagICMPError != 0 {
			continue
		}
		headers := 0 // the shortest prefix DecodeTruncated takes
		for l := len(pkt); l >= 0; l-- {
			var tu Tuple
			if tu.DecodeTruncated(pkt[:l]) != DropNone {
				headers = l + 1
				break
			}
			if tu != whole {
				t.Fatalf("%s cut to %d of %d bytes: %v, want %v", n.name, l, len(pkt), tu, whole)
			}
		}
		if headers == 0 || headers > len(pkt) {
			t.Errorf("%s: no prefix was too short, or the whole packet was (%d of %d)", n.name, headers, len(pkt))
		}
	}
}

func TestDecodeMalformed(t *testing.T) {
	tcp4 := (&pktSpec{src: hostA4, dst: hostB4, proto: ProtoTCP, sport: 1, dport: 2}).build()
	udp6 := (&pktSpec{src: hostA6, dst: hostB6, proto: ProtoUDP, sport: 1, dport: 2}).build()
	edit := func(p []byte, f func(b []byte)) []byte {
		b := append([]byte{}, p...)
		f(b)
		return b
	}
	// IPv6 packet whose payload is n hop-by-hop style headers, then UDP.
	chain := func(n int, typ uint8) []byte {
		s := &pktSpec{src: hostA6, dst: hostB6, proto: ProtoUDP, sport: 1, dport: 2}
		for range n {
			s.ext = append(s.ext, typ)
		}
		return s.build()
	}
	cut := func(p []byte, n int) []byte { // shorten an IPv4 packet, fixing its length
		return edit(p[:n], func(b []byte) { binary.BigEndian.PutUint16(b[2:], uint16(n)) })
	}
	frError := (&pktSpec{src: router4, dst: hostA4, proto: ProtoICMP, icmpType: 3,
		quoted: &pktSpec{src: hostA4, dst: hostB4, proto: ProtoTCP, sport: 1, dport: 2}}).build()
	for _, tc := range []struct {
		name string
		pkt  []byte
		want Drop
	}{
		{"empty", nil, DropTruncated},
		{"version 5", edit(tcp4, func(b []byte) { b[0] = 0x55 }), DropBadVersion},
		{"version 0", []byte{0x00}, DropBadVersion},
		{"ihl 4", edit(tcp4, func(b []byte) { b[0] = 0x44 }), DropBadHeader},
		{"ihl 0", edit(tcp4, func(b []byte) { b[0] = 0x40 }), DropBadHeader},
		{"ihl beyond total length", edit(tcp4, func(b []byte) { b[0] = 0x4f }), DropBadLength},
		{"total length below header", edit(tcp4, func(b []byte) { binary.BigEndian.PutUint16(b[2:], 12) }), DropBadLength},
		{"total length beyond packet", edit(tcp4, func(b []byte) { binary.BigEndian.PutUint16(b[2:], 9000) }), DropTruncated},
		{"total length cuts ports", edit(tcp4, func(b []byte) { binary.BigEndian.PutUint16(b[2:], 22) }), DropTruncated},
		{"ipv6 payload length beyond packet", edit(udp6, func(b []byte) { binary.BigEndian.PutUint16(b[4:], 9000) }), DropTruncated},
		{"ipv6 jumbogram", edit(udp6, func(b []byte) { binary.BigEndian.PutUint16(b[4:], 0) }), DropTruncated},
		{"ipv6 8 extension headers", chain(8, packet.IPv6DestOpts), DropNone},
		{"ipv6 9 extension headers", chain(9, packet.IPv6DestOpts), DropExtChain},
		{"ipv6 60 extension headers", chain(60, packet.IPv6HopByHop), DropExtChain},
		{"ipv6 extension length beyond packet", edit(chain(1, packet.IPv6Routing), func(b []byte) { b[41] = 200 }), DropTruncated},
		{"icmp error quoting nothing", cut(frError, 20+8), DropBadICMPError},
		{"icmp error quoting ipv6 in ipv4", edit(frError, func(b []byte) { b[28] = 0x65 }), DropBadICMPError},
		{"icmp error quoting bad ihl", edit(frError, func(b []byte) { b[28] = 0x43 }), DropBadICMPError},
		{"icmp error quoting too little", cut(frError, len(frError)-6), DropBadICMPError},
	} {
		var tu Tuple
		if d := tu.Decode(tc.pkt); d != tc.want {
			t.Errorf("%s: Decode = %v, want %v", tc.name, d, tc.want)
		}
	}
}

func TestLinkPaddingIgnored(t *testing.T) {
	for _, name := range []string{"ipv4-tcp", "ipv6-udp"} {
		var s *pktSpec
		for _, n := range namedSpecs() {
			if n.name == name {
				s = n.spec
			}
		}
		var tu Tuple
		if d := tu.Decode(append(s.build(), 0, 0, 0, 0, 0, 0)); d != DropNone || tu != s.want() {
			t.Errorf("%s with padding: %v %v", name, tu, d)
		}
	}
}

func TestTupleString(t *testing.T) {
	tu := decodeNamed(t, "ipv4-tcp")
	if got, want := tu.String(), "tcp 10.1.0.5:40000 -> 10.2.0.9:5201"; got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
	if !tu.Is4() {
		t.Error("Is4 false for an IPv4 tuple")
	}
	tu = decodeNamed(t, "ipv6-icmp-packet-too-big")
	if got, want := tu.String(), "udp [fd00:2::9]:4789 -> [fd00:1::5]:53000 (icmp error)"; got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
	if tu.Is4() {
		t.Error("Is4 true for an IPv6 tuple")
	}
	for d := DropNone; d <= NumDrops; d++ {
		if d.String() == "" {
			t.Errorf("drop %d has no name", d)
		}
	}
}
