package packet

import (
	"bytes"
	"net"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// TestPutMatchesGopacket: the builders write, byte for byte, what an
// independent serializer writes for the same headers, checksums included.
func TestPutMatchesGopacket(t *testing.T) {
	payload := []byte("probe payload, 27 bytes....")
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}

	src4, dst4 := netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("10.2.0.21")
	ip4 := &layers.IPv4{Version: 4, IHL: 5, TOS: DSCPNetworkControl, TTL: 64, Flags: layers.IPv4DontFragment,
		Protocol: layers.IPProtocolUDP, SrcIP: net.IP(src4.AsSlice()), DstIP: net.IP(dst4.AsSlice())}
	udp4 := &layers.UDP{SrcPort: 40000, DstPort: 6082}
	udp4.SetNetworkLayerForChecksum(ip4)
	want := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(want, opts, ip4, udp4, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	udpLen := UDPLen + len(payload)
	got := make([]byte, IPv4MinLen+udpLen)
	PutIPv4(got, IPv4Fields{TOS: DSCPNetworkControl, TotalLen: len(got), DF: true, Protocol: ProtoUDP, Src: src4, Dst: dst4})
	d := got[IPv4MinLen:]
	copy(d[UDPLen:], payload)
	PutUDP(d, 40000, 6082, udpLen).SetChecksum(d, PseudoHeaderSum(src4, dst4, ProtoUDP, udpLen))
	if !bytes.Equal(got, want.Bytes()) {
		t.Errorf("ipv4/udp:\n got % x\nwant % x", got, want.Bytes())
	}

	src6, dst6 := netip.MustParseAddr("fd00:a::2"), netip.MustParseAddr("fd00:b::21")
	ip6 := &layers.IPv6{Version: 6, TrafficClass: DSCPNetworkControl, HopLimit: 64, NextHeader: layers.IPProtocolUDP,
		SrcIP: net.IP(src6.AsSlice()), DstIP: net.IP(dst6.AsSlice())}
	udp6 := &layers.UDP{SrcPort: 40000, DstPort: 6082}
	udp6.SetNetworkLayerForChecksum(ip6)
	want = gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(want, opts, ip6, udp6, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	got = make([]byte, IPv6Len+udpLen)
	PutIPv6(got, IPv6Fields{TrafficClass: DSCPNetworkControl, PayloadLen: udpLen, NextHeader: ProtoUDP, Src: src6, Dst: dst6})
	d = got[IPv6Len:]
	copy(d[UDPLen:], payload)
	PutUDP(d, 40000, 6082, udpLen).SetChecksum(d, PseudoHeaderSum(src6, dst6, ProtoUDP, udpLen))
	if !bytes.Equal(got, want.Bytes()) {
		t.Errorf("ipv6/udp:\n got % x\nwant % x", got, want.Bytes())
	}
}

// TestViewsReadGopacket: the views read the fields an independent
// serializer wrote.
func TestViewsReadGopacket(t *testing.T) {
	buf := gopacket.NewSerializeBuffer()
	ip := &layers.IPv4{Version: 4, IHL: 6, TOS: 0x10, TTL: 9, Flags: layers.IPv4MoreFragments, FragOffset: 0,
		Options:  []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 0}},
		Protocol: layers.IPProtocolUDP, SrcIP: net.IP{10, 1, 0, 5}, DstIP: net.IP{10, 2, 0, 9}}
	udp := &layers.UDP{SrcPort: 1234, DstPort: 5678}
	udp.SetNetworkLayerForChecksum(ip)
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		ip, udp, gopacket.Payload("x")); err != nil {
		t.Fatal(err)
	}
	pkt := buf.Bytes()
	v := IPv4(pkt)
	if Version(pkt) != 4 || v.HeaderLen() != 24 || v.TOS() != 0x10 || v.TTL() != 9 || v.TotalLen() != len(pkt) ||
		v.Protocol() != ProtoUDP || !v.Fragment() || v.FragmentOffset() != 0 ||
		v.Src() != netip.MustParseAddr("10.1.0.5") || v.Dst() != netip.MustParseAddr("10.2.0.9") {
		t.Errorf("ipv4 view of % x: ihl %d tos %#x ttl %d len %d proto %d frag %v src %v dst %v",
			pkt, v.HeaderLen(), v.TOS(), v.TTL(), v.TotalLen(), v.Protocol(), v.Fragment(), v.Src(), v.Dst())
	}
	if Checksum(pkt[:v.HeaderLen()], 0) != 0 {
		t.Error("ipv4 header checksum does not verify")
	}
	u := UDP(pkt[v.HeaderLen():])
	if u.SrcPort() != 1234 || u.DstPort() != 5678 || u.Length() != UDPLen+1 {
		t.Errorf("udp view: %d -> %d, length %d", u.SrcPort(), u.DstPort(), u.Length())
	}
	if dst, ok := Dst(pkt); !ok || dst != v.Dst() {
		t.Errorf("Dst = %v %v", dst, ok)
	}
	for _, short := range [][]byte{nil, {0x45}, make([]byte, 19), append([]byte{0x60}, make([]byte, 38)...)} {
		if _, ok := Dst(short); ok {
			t.Errorf("Dst(% x): a destination from a truncated header", short)
		}
	}
}

func TestBuildersAllocateNothing(t *testing.T) {
	b := make([]byte, 128)
	src, dst := netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("10.2.0.21")
	if n := testing.AllocsPerRun(100, func() {
		PutIPv4(b, IPv4Fields{TotalLen: 48, Protocol: ProtoUDP, Src: src, Dst: dst})
		PutUDP(b[IPv4MinLen:], 1, 2, 28).SetChecksum(b[IPv4MinLen:48], PseudoHeaderSum(src, dst, ProtoUDP, 28))
		_ = IPv4(b).Dst()
	}); n != 0 {
		t.Errorf("%v allocations per packet", n)
	}
}
