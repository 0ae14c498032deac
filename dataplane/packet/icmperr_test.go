package packet

import (
	"net"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

func serialize(t *testing.T, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func bigUDP4(t *testing.T, size int) []byte {
	ip := &layers.IPv4{Version: 4, TTL: 63, Protocol: layers.IPProtocolUDP, Flags: layers.IPv4DontFragment,
		SrcIP: net.IP{10, 1, 0, 10}, DstIP: net.IP{10, 2, 0, 10}}
	udp := &layers.UDP{SrcPort: 4000, DstPort: 5000}
	udp.SetNetworkLayerForChecksum(ip)
	return serialize(t, ip, udp, gopacket.Payload(make([]byte, size-28)))
}

func bigUDP6(t *testing.T, size int) []byte {
	ip := &layers.IPv6{Version: 6, HopLimit: 63, NextHeader: layers.IPProtocolUDP,
		SrcIP: net.ParseIP("fd00:a::10"), DstIP: net.ParseIP("fd00:b::10")}
	udp := &layers.UDP{SrcPort: 4000, DstPort: 5000}
	udp.SetNetworkLayerForChecksum(ip)
	return serialize(t, ip, udp, gopacket.Payload(make([]byte, size-48)))
}

// TestTooBig4 checks the error with gopacket's independent decoder,
// checksums included.
func TestTooBig4(t *testing.T) {
	pkt := bigUDP4(t, 1500)
	out := make([]byte, TooBigBufLen)
	n := PutTooBig(out, pkt, 1420, netip.MustParseAddr("10.1.0.2"))
	if n != 576 {
		t.Fatalf("length %d, want 576 (RFC 1812 quote limit)", n)
	}
	p := gopacket.NewPacket(out[:n], layers.LayerTypeIPv4, gopacket.Default)
	ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	icmp, _ := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
	if ip == nil || icmp == nil {
		t.Fatalf("not IPv4+ICMP: %v", p)
	}
	if !ip.SrcIP.Equal(net.IP{10, 1, 0, 2}) || !ip.DstIP.Equal(net.IP{10, 1, 0, 10}) {
		t.Errorf("addresses %v -> %v", ip.SrcIP, ip.DstIP)
	}
	if icmp.TypeCode != layers.CreateICMPv4TypeCode(3, 4) || icmp.Seq != 1420 {
		t.Errorf("type/code %v, next-hop mtu %d", icmp.TypeCode, icmp.Seq)
	}
	if got := checksumOf(out[:20]); got != 0xffff {
		t.Errorf("IPv4 header checksum does not verify (%#x)", got)
	}
	if got := checksumOf(out[20:n]); got != 0xffff {
		t.Errorf("ICMP checksum does not verify (%#x)", got)
	}
	if string(icmp.Payload[:28]) != string(pkt[:28]) {
		t.Error("quote is not the offending packet's start")
	}
}

func TestTooBig6(t *testing.T) {
	pkt := bigUDP6(t, 1500)
	out := make([]byte, TooBigBufLen)
	n := PutTooBig(out, pkt, 1420, netip.MustParseAddr("fd00:a::2"))
	if n != 1280 {
		t.Fatalf("length %d, want 1280 (RFC 4443 quote limit)", n)
	}
	p := gopacket.NewPacket(out[:n], layers.LayerTypeIPv6, gopacket.Default)
	icmp, _ := p.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6)
	if icmp == nil {
		t.Fatalf("not ICMPv6: %v", p)
	}
	if icmp.TypeCode != layers.CreateICMPv6TypeCode(2, 0) {
		t.Errorf("type/code %v", icmp.TypeCode)
	}
	// Recompute the checksum with gopacket and compare.
	ip := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
	want := icmp.Checksum
	icmp.SetNetworkLayerForChecksum(ip)
	again := serialize(t, icmp, gopacket.Payload(icmp.Payload))
	if got := uint16(again[2])<<8 | uint16(again[3]); got != want {
		t.Errorf("checksum %#x, gopacket computes %#x", want, got)
	}
	if mtu := uint32(out[44])<<24 | uint32(out[45])<<16 | uint32(out[46])<<8 | uint32(out[47]); mtu != 1420 {
		t.Errorf("mtu field %d", mtu)
	}
}

// TestSilent: no error about an error, a later fragment, or toward a
// source that cannot take one; none with a source of the wrong family.
func TestSilent(t *testing.T) {
	out := make([]byte, TooBigBufLen)
	src4, src6 := netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("fd00:a::2")

	frag := bigUDP4(t, 1500)
	frag[6], frag[7] = 0x00, 0x10 // offset 16 x 8
	icmpErr := serialize(t, &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4,
		SrcIP: net.IP{10, 1, 0, 10}, DstIP: net.IP{10, 2, 0, 10}},
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(3, 1)}, gopacket.Payload(make([]byte, 1500)))
	bcast := bigUDP4(t, 1500)
	copy(bcast[12:16], []byte{255, 255, 255, 255})
	cases := map[string]struct {
		pkt []byte
		src netip.Addr
	}{
		"later fragment":    {frag, src4},
		"icmp error":        {icmpErr, src4},
		"broadcast source":  {bcast, src4},
		"ipv6 src for ipv4": {bigUDP4(t, 1500), src6},
		"no ipv4 source":    {bigUDP4(t, 1500), netip.Addr{}},
		"ipv4 src for ipv6": {bigUDP6(t, 1500), src4},
		"truncated":         {bigUDP4(t, 1500)[:10], src4},
		"empty":             {nil, src4},
	}
	for name, c := range cases {
		if n := PutTooBig(out, c.pkt, 1420, c.src); n != 0 {
			t.Errorf("%s: wrote %d bytes, want silence", name, n)
		}
	}
}

func checksumOf(b []byte) uint16 { return ChecksumFold(ChecksumAdd(b, 0)) }

func TestTooBigAllocs(t *testing.T) {
	pkt := bigUDP4(t, 1500)
	out := make([]byte, TooBigBufLen)
	src := netip.MustParseAddr("10.1.0.2")
	if a := testing.AllocsPerRun(100, func() { PutTooBig(out, pkt, 1420, src) }); a != 0 {
		t.Errorf("%v allocs", a)
	}
}
