package flowhash

import (
	"encoding/binary"
	"math/rand/v2"
	"net"
	"net/netip"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/clusterpeer/clusterpeer/dataplane/packet"
)

// pktSpec describes a packet for tests. build serializes it with gopacket;
// want states, from the spec alone, the tuple Decode must find. The two are
// written independently of the decoder, so together they are its reference.
type pktSpec struct {
	src, dst     netip.Addr
	proto        uint8
	sport, dport uint16 // TCP/UDP/SCTP
	icmpType     uint8  // ICMP/ICMPv6
	icmpID       uint16 // echo identifier
	frag         int    // 0: whole datagram, 1: first fragment, 2: later fragment
	atomicFrag   bool   // IPv6 fragment header with offset 0 and M clear
	ext          []uint8
	options      bool     // IPv4 options
	quoted       *pktSpec // packet quoted by an ICMP error
	payload      int      // bytes after the transport header
}

func (s *pktSpec) v6() bool { return s.src.Is6() && !s.src.Is4In6() }

// want is the tuple the spec's packet must decode to.
func (s *pktSpec) want() Tuple {
	t := Tuple{Src: s.src.As16(), Dst: s.dst.As16(), Proto: s.proto}
	if s.frag != 0 {
		t.Flags |= FlagFragment
		return t
	}
	switch s.proto {
	case ProtoTCP, ProtoUDP, ProtoSCTP:
		t.SrcPort, t.DstPort = s.sport, s.dport
	case ProtoICMP, ProtoICMPv6:
		if s.quoted != nil {
			q := s.quoted.want().Reverse()
			q.Flags = FlagICMPError | q.Flags&FlagFragment
			return q
		}
		if isEchoType(s.icmpType, s.v6()) {
			t.SrcPort, t.DstPort = s.icmpID, s.icmpID
		}
	}
	return t
}

func isEchoType(typ uint8, v6 bool) bool {
	if v6 {
		return typ == 128 || typ == 129
	}
	return typ == 8 || typ == 0
}

var serOpts = gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}

func (s *pktSpec) build() []byte {
	var ip gopacket.NetworkLayer
	var ip4 *layers.IPv4
	var ip6 *layers.IPv6
	if s.v6() {
		ip6 = &layers.IPv6{Version: 6, HopLimit: 64, SrcIP: net.IP(s.src.AsSlice()), DstIP: net.IP(s.dst.AsSlice())}
		ip = ip6
	} else {
		ip4 = &layers.IPv4{Version: 4, TTL: 64, Id: 7, SrcIP: net.IP(s.src.AsSlice()), DstIP: net.IP(s.dst.AsSlice()),
			Protocol: layers.IPProtocol(s.proto)}
		if s.options {
			ip4.Options = []layers.IPv4Option{{OptionType: 148, OptionLength: 4, OptionData: []byte{0, 0}}} // router alert
		}
		ip = ip4
	}

	var l4 []byte
	if s.frag == 2 {
		l4 = make([]byte, 16+s.payload) // a later fragment: no transport header
		for i := range l4 {
			l4[i] = byte(i * 7)
		}
	} else {
		l4 = s.transport(ip)
	}

	var hdrs []byte
	if s.v6() {
		chain := append([]uint8{}, s.ext...)
		if s.frag != 0 || s.atomicFrag {
			chain = append(chain, packet.IPv6Fragment)
		}
		next := s.proto
		for i := len(chain) - 1; i >= 0; i-- {
			hdrs = append(extHeader(chain[i], next, s.frag, s.atomicFrag), hdrs...)
			next = chain[i]
		}
		ip6.NextHeader = layers.IPProtocol(next)
	} else if s.frag != 0 {
		ip4.Flags = layers.IPv4MoreFragments
		if s.frag == 2 {
			ip4.FragOffset = 185
		}
	}
	buf := gopacket.NewSerializeBuffer()
	ls := []gopacket.SerializableLayer{ip.(gopacket.SerializableLayer), gopacket.Payload(append(hdrs, l4...))}
	if err := gopacket.SerializeLayers(buf, serOpts, ls...); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

func (s *pktSpec) transport(ip gopacket.NetworkLayer) []byte {
	pay := make([]byte, s.payload)
	for i := range pay {
		pay[i] = byte(i)
	}
	var ls []gopacket.SerializableLayer
	switch s.proto {
	case ProtoTCP:
		tcp := &layers.TCP{SrcPort: layers.TCPPort(s.sport), DstPort: layers.TCPPort(s.dport), Seq: 1, ACK: true, Ack: 1, Window: 512}
		tcp.SetNetworkLayerForChecksum(ip)
		ls = append(ls, tcp)
	case ProtoUDP:
		udp := &layers.UDP{SrcPort: layers.UDPPort(s.sport), DstPort: layers.UDPPort(s.dport)}
		udp.SetNetworkLayerForChecksum(ip)
		ls = append(ls, udp)
	case ProtoSCTP:
		ls = append(ls, &layers.SCTP{SrcPort: layers.SCTPPort(s.sport), DstPort: layers.SCTPPort(s.dport), VerificationTag: 1})
	case ProtoICMP:
		icmp := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(s.icmpType, 0), Id: s.icmpID, Seq: 1}
		if s.quoted != nil {
			icmp.TypeCode = layers.CreateICMPv4TypeCode(s.icmpType, 4) // frag needed
			icmp.Id, icmp.Seq = 0, 1400                                // next-hop MTU
			pay = s.quotedBytes()
		}
		ls = append(ls, icmp)
	case ProtoICMPv6:
		icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(s.icmpType, 0)}
		icmp.SetNetworkLayerForChecksum(ip)
		ls = append(ls, icmp)
		switch {
		case s.quoted != nil:
			pay = append(binary.BigEndian.AppendUint32(nil, 1280), s.quotedBytes()...)
		case isEchoType(s.icmpType, true):
			ls = append(ls, &layers.ICMPv6Echo{Identifier: s.icmpID, SeqNumber: 1})
		default:
			pay = append(make([]byte, 4), pay...)
		}
	default: // some other protocol: opaque bytes
		pay = append(make([]byte, 8), pay...)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, serOpts, append(ls, gopacket.Payload(pay))...); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

// quotedBytes is the quoted packet as an ICMP error carries it: the IPv4
// header plus 8 bytes (RFC 792), or the whole packet for IPv6 (it is small).
func (s *pktSpec) quotedBytes() []byte {
	b := s.quoted.build()
	if !s.quoted.v6() {
		ihl := int(b[0]&0x0f) * 4
		b = b[:min(len(b), ihl+8)]
	}
	return b
}

// extHeader builds one 8-byte IPv6 extension header.
func extHeader(typ, next uint8, frag int, atomic bool) []byte {
	h := make([]byte, 8)
	h[0] = next
	switch typ {
	case packet.IPv6HopByHop, packet.IPv6DestOpts:
		h[2], h[3] = 1, 4 // PadN covering the 6 option bytes
	case packet.IPv6Routing:
		h[2] = 253 // experimental routing type (RFC 4727), segments left 0
	case packet.IPv6Fragment:
		var off uint16
		switch {
		case frag == 1:
			off = 1 // M
		case frag == 2:
			off = 185<<3 | 1
		}
		binary.BigEndian.PutUint16(h[2:], off)
		binary.BigEndian.PutUint32(h[4:], 0xabcd)
	}
	return h
}

// randSpec draws a random packet spec: families, protocols, fragments,
// extension headers, options and ICMP errors in proportion.
func randSpec(r *rand.Rand, quotedOK bool) *pktSpec {
	s := &pktSpec{payload: r.IntN(64)}
	if r.IntN(2) == 0 {
		s.src, s.dst = randAddr4(r), randAddr4(r)
		s.options = r.IntN(5) == 0
	} else {
		s.src, s.dst = randAddr6(r), randAddr6(r)
		for range r.IntN(4) {
			s.ext = append(s.ext, []uint8{packet.IPv6HopByHop, packet.IPv6Routing, packet.IPv6DestOpts}[r.IntN(3)])
		}
		s.atomicFrag = r.IntN(8) == 0
	}
	s.sport, s.dport = uint16(r.Uint32()), uint16(r.Uint32())
	switch k := r.IntN(10); {
	case k < 3:
		s.proto = ProtoTCP
	case k < 6:
		s.proto = ProtoUDP
	case k < 7:
		s.proto = ProtoSCTP
	case k < 9:
		s.proto = ProtoICMP
		if s.v6() {
			s.proto = ProtoICMPv6
		}
		s.icmpID = uint16(r.Uint32())
		switch {
		case quotedOK && r.IntN(2) == 0:
			q := randSpec(r, false)
			for q.v6() != s.v6() || q.proto == ProtoICMP && q.icmpType != 8 || q.proto == ProtoICMPv6 && q.icmpType != 128 {
				q = randSpec(r, false)
			}
			s.quoted = q
			s.icmpType = 3
			if s.v6() {
				s.icmpType = 2 // packet too big
			}
		case s.v6():
			s.icmpType = []uint8{128, 129, 133, 135}[r.IntN(4)]
		default:
			s.icmpType = []uint8{8, 0, 13}[r.IntN(3)]
		}
	default:
		s.proto = 47 // GRE: addresses and proto only
	}
	if quotedOK && r.IntN(6) == 0 {
		s.frag = 1 + r.IntN(2)
		s.atomicFrag = false
	}
	if s.quoted != nil && r.IntN(2) == 0 { // the router quotes a fragment now and then
		s.quoted.frag = 1
	}
	return s
}

func randAddr4(r *rand.Rand) netip.Addr {
	var a [4]byte
	binary.BigEndian.PutUint32(a[:], r.Uint32())
	return netip.AddrFrom4(a)
}

func randAddr6(r *rand.Rand) netip.Addr {
	var a [16]byte
	binary.BigEndian.PutUint64(a[:8], r.Uint64())
	binary.BigEndian.PutUint64(a[8:], r.Uint64())
	a[0] = 0x20 // global unicast, never IPv4-mapped
	return netip.AddrFrom16(a)
}

// Named packets for table tests, vectors and the fuzz seed corpus.
var (
	hostA4, hostB4 = netip.MustParseAddr("10.1.0.5"), netip.MustParseAddr("10.2.0.9")
	router4        = netip.MustParseAddr("10.2.255.1")
	hostA6, hostB6 = netip.MustParseAddr("fd00:1::5"), netip.MustParseAddr("fd00:2::9")
	router6        = netip.MustParseAddr("fd00:2::1")
)

type namedSpec struct {
	name string
	spec *pktSpec
}

func namedSpecs() []namedSpec {
	tcp4 := &pktSpec{src: hostA4, dst: hostB4, proto: ProtoTCP, sport: 40000, dport: 5201, payload: 20}
	udp6 := &pktSpec{src: hostA6, dst: hostB6, proto: ProtoUDP, sport: 53000, dport: 4789, payload: 20}
	return []namedSpec{
		{"ipv4-tcp", tcp4},
		{"ipv4-tcp-reply", &pktSpec{src: hostB4, dst: hostA4, proto: ProtoTCP, sport: 5201, dport: 40000}},
		{"ipv4-udp", &pktSpec{src: hostA4, dst: hostB4, proto: ProtoUDP, sport: 33000, dport: 53, payload: 12}},
		{"ipv4-sctp", &pktSpec{src: hostA4, dst: hostB4, proto: ProtoSCTP, sport: 2905, dport: 2905}},
		{"ipv4-options-tcp", &pktSpec{src: hostA4, dst: hostB4, proto: ProtoTCP, sport: 40000, dport: 5201, options: true}},
		{"ipv4-icmp-echo-request", &pktSpec{src: hostA4, dst: hostB4, proto: ProtoICMP, icmpType: 8, icmpID: 0x1234}},
		{"ipv4-icmp-echo-reply", &pktSpec{src: hostB4, dst: hostA4, proto: ProtoICMP, icmpType: 0, icmpID: 0x1234}},
		{"ipv4-icmp-timestamp", &pktSpec{src: hostA4, dst: hostB4, proto: ProtoICMP, icmpType: 13}},
		{"ipv4-udp-first-fragment", &pktSpec{src: hostA4, dst: hostB4, proto: ProtoUDP, sport: 33000, dport: 53, frag: 1, payload: 40}},
		{"ipv4-udp-later-fragment", &pktSpec{src: hostA4, dst: hostB4, proto: ProtoUDP, frag: 2, payload: 40}},
		{"ipv4-icmp-frag-needed", &pktSpec{src: router4, dst: hostA4, proto: ProtoICMP, icmpType: 3, quoted: tcp4}},
		{"ipv4-gre", &pktSpec{src: hostA4, dst: hostB4, proto: 47}},
		{"ipv6-tcp", &pktSpec{src: hostA6, dst: hostB6, proto: ProtoTCP, sport: 40000, dport: 5201, payload: 20}},
		{"ipv6-udp", udp6},
		{"ipv6-hbh-udp", &pktSpec{src: hostA6, dst: hostB6, proto: ProtoUDP, sport: 53000, dport: 4789, ext: []uint8{packet.IPv6HopByHop}}},
		{"ipv6-routing-dstopts-tcp", &pktSpec{src: hostA6, dst: hostB6, proto: ProtoTCP, sport: 40000, dport: 5201,
			ext: []uint8{packet.IPv6HopByHop, packet.IPv6Routing, packet.IPv6DestOpts}}},
		{"ipv6-atomic-fragment-udp", &pktSpec{src: hostA6, dst: hostB6, proto: ProtoUDP, sport: 53000, dport: 4789, atomicFrag: true}},
		{"ipv6-udp-first-fragment", &pktSpec{src: hostA6, dst: hostB6, proto: ProtoUDP, sport: 53000, dport: 4789, frag: 1, payload: 40}},
		{"ipv6-udp-later-fragment", &pktSpec{src: hostA6, dst: hostB6, proto: ProtoUDP, frag: 2, payload: 40}},
		{"ipv6-icmp-echo-request", &pktSpec{src: hostA6, dst: hostB6, proto: ProtoICMPv6, icmpType: 128, icmpID: 0x4321}},
		{"ipv6-icmp-echo-reply", &pktSpec{src: hostB6, dst: hostA6, proto: ProtoICMPv6, icmpType: 129, icmpID: 0x4321}},
		{"ipv6-icmp-neighbor-solicit", &pktSpec{src: hostA6, dst: hostB6, proto: ProtoICMPv6, icmpType: 135}},
		{"ipv6-icmp-packet-too-big", &pktSpec{src: router6, dst: hostA6, proto: ProtoICMPv6, icmpType: 2, quoted: udp6}},
	}
}
