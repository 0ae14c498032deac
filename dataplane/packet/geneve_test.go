package packet

import (
	"bytes"
	"errors"
	"net"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

func innerIPv4(t testing.TB) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP,
		SrcIP: net.IP{10, 1, 0, 5}, DstIP: net.IP{10, 2, 0, 9}}
	udp := &layers.UDP{SrcPort: 40000, DstPort: 5201}
	udp.SetNetworkLayerForChecksum(ip)
	err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		ip, udp, gopacket.Payload("hello lane"))
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestPutParseRoundTrip(t *testing.T) {
	inner := innerIPv4(t)
	for _, oam := range []bool{false, true} {
		pkt := make([]byte, GeneveLen+len(inner))
		copy(pkt[GeneveLen:], inner)
		PutGeneve(pkt, 0xabcdef, ProtoIPv4, oam)
		h, payload, err := ParseGeneve(pkt)
		if err != nil {
			t.Fatal(err)
		}
		if h.VNI() != 0xabcdef || h.Protocol() != ProtoIPv4 || h.OAM() != oam || h.Critical() || h.OptionsLen() != 0 {
			t.Fatalf("header %x: vni %x proto %x oam %v", []byte(h), h.VNI(), h.Protocol(), h.OAM())
		}
		if !bytes.Equal(payload, inner) {
			t.Fatal("payload differs")
		}
	}
	if h := PutGeneve(make([]byte, 8), 1<<24|5, ProtoIPv6, false); h.VNI() != 5 {
		t.Fatalf("VNI beyond 24 bits leaked: %x", h.VNI())
	}
}

// gopacket's decoder, an independent implementation, reads what we write.
// (gopacket 1.1.19 cannot serialize GENEVE, and it splits an option's
// flags/length byte 4/4 instead of RFC 8926's 3/5, so options here stay
// below 16 words, where both readings agree.)
func TestGopacketDecodesWhatWeWrite(t *testing.T) {
	inner := innerIPv4(t)
	var opts []byte
	opts, _ = AppendGeneveOption(opts, GeneveOption{Class: 0x0104, Type: 0x01, Data: []byte{1, 2, 3, 4}})
	opts, _ = AppendGeneveOption(opts, GeneveOption{Class: 0xffff, Type: 0x7f, Data: bytes.Repeat([]byte{9}, 12)})
	pkt := make([]byte, GeneveLen+len(opts)+len(inner))
	h, err := PutGeneveWithOptions(pkt, 4242, ProtoIPv4, true, opts)
	if err != nil {
		t.Fatal(err)
	}
	copy(pkt[h.Len():], inner)

	p := gopacket.NewPacket(pkt, layers.LayerTypeGeneve, gopacket.Default)
	g, ok := p.Layer(layers.LayerTypeGeneve).(*layers.Geneve)
	if !ok {
		t.Fatalf("gopacket found no GENEVE layer: %v", p.ErrorLayer())
	}
	if g.VNI != 4242 || !g.OAMPacket || g.CriticalOption || g.Protocol != layers.EthernetTypeIPv4 || int(g.OptionsLength) != len(opts) {
		t.Fatalf("gopacket read %+v", g)
	}
	if len(g.Options) != 2 || g.Options[0].Class != 0x0104 || g.Options[0].Type != 1 ||
		!bytes.Equal(g.Options[0].Data, []byte{1, 2, 3, 4}) || g.Options[1].Class != 0xffff || len(g.Options[1].Data) != 12 {
		t.Fatalf("gopacket read options %+v %+v", g.Options[0], g.Options[1])
	}
	ip, ok := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	if !ok || !ip.DstIP.Equal(net.IP{10, 2, 0, 9}) {
		t.Fatalf("gopacket did not find the inner packet: %v", p)
	}
}

// We read a header written by hand from RFC 8926's layout: version 0, two
// words of options (one non-critical option with 4 bytes of data), OAM
// clear, protocol IPv6, VNI 0x123456.
func TestParseRFCLayout(t *testing.T) {
	b := []byte{
		0x02, 0x00, 0x86, 0xdd, // ver 0, opt len 2 words; O=0 C=0; IPv6
		0x12, 0x34, 0x56, 0x00, // VNI, reserved
		0x01, 0x02, 0x03, 0x01, // class 0x0102, type 3, length 1 word
		0xde, 0xad, 0xbe, 0xef,
		0x60, // inner packet starts
	}
	h, payload, err := ParseGeneve(b)
	if err != nil {
		t.Fatal(err)
	}
	if h.VNI() != 0x123456 || h.Protocol() != ProtoIPv6 || h.OAM() || h.Len() != 16 || !bytes.Equal(payload, []byte{0x60}) {
		t.Fatalf("parsed vni %x proto %x len %d payload %x", h.VNI(), h.Protocol(), h.Len(), payload)
	}
	o, rest, err := NextGeneveOption(h.Options())
	if err != nil || o.Class != 0x0102 || o.Type != 3 || !bytes.Equal(o.Data, []byte{0xde, 0xad, 0xbe, 0xef}) || len(rest) != 0 {
		t.Fatalf("option %+v rest %x err %v", o, rest, err)
	}
	// GeneveOption length uses 5 bits (RFC 8926 3.5): 31 words of data.
	long, _ := AppendGeneveOption(nil, GeneveOption{Class: 1, Type: 2, Data: make([]byte, 124)})
	if long[3] != 31 {
		t.Fatalf("length byte %#x", long[3])
	}
	if o, _, err := NextGeneveOption(long); err != nil || len(o.Data) != 124 {
		t.Fatalf("31-word option: %d bytes, %v", len(o.Data), err)
	}
}

func TestParseRejects(t *testing.T) {
	crit, _ := AppendGeneveOption(nil, GeneveOption{Class: 1, Type: 0x80, Data: []byte{0, 0, 0, 0}})
	withCrit := make([]byte, GeneveLen+len(crit)+20)
	if _, err := PutGeneveWithOptions(withCrit, 1, ProtoIPv4, false, crit); err != nil {
		t.Fatal(err)
	}
	if !Geneve(withCrit).Critical() {
		t.Fatal("C bit not set for a critical option")
	}
	for _, tc := range []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrGeneveTruncated},
		{"7 bytes", make([]byte, 7), ErrGeneveTruncated},
		{"version 1", []byte{0x40, 0, 8, 0, 0, 0, 1, 0}, ErrGeneveVersion},
		{"options beyond packet", []byte{0x03, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0, 0}, ErrGeneveTruncated},
		{"option beyond options", []byte{0x01, 0, 8, 0, 0, 0, 1, 0, 0, 1, 2, 0x05}, ErrGeneveOptions},
		{"unknown critical option", withCrit, ErrGeneveCriticalOption},
	} {
		if _, _, err := ParseGeneve(tc.b); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
	}
	if _, err := AppendGeneveOption(nil, GeneveOption{Data: make([]byte, 3)}); err == nil {
		t.Error("AppendGeneveOption accepted 3 bytes of data")
	}
	if _, err := PutGeneveWithOptions(make([]byte, 8), 1, ProtoIPv4, false, make([]byte, 4)); err == nil {
		t.Error("PutGeneveWithOptions wrote past the buffer")
	}
}

func TestPutParseDoNotAllocate(t *testing.T) {
	pkt := make([]byte, GeneveLen+100)
	if a := testing.AllocsPerRun(1000, func() {
		PutGeneve(pkt, 7, ProtoIPv4, false)
		if _, _, err := ParseGeneve(pkt); err != nil {
			t.Fatal(err)
		}
	}); a != 0 {
		t.Fatalf("%.1f allocations per packet", a)
	}
}

func FuzzParseGeneve(f *testing.F) {
	f.Add([]byte{0x02, 0x00, 0x86, 0xdd, 0x12, 0x34, 0x56, 0x00, 0x01, 0x02, 0x03, 0x01, 0xde, 0xad, 0xbe, 0xef, 0x60})
	f.Add([]byte{0, 0, 8, 0, 0, 0, 1, 0, 0x45})
	f.Add([]byte{0x01, 0, 8, 0, 0, 0, 1, 0, 0, 1, 0x80, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, payload, err := ParseGeneve(b)
		if err != nil {
			return
		}
		if h.Len() > len(b) || len(h)+len(payload) != len(b) || h.Version() != 0 {
			t.Fatalf("header %d bytes, payload %d, packet %d", len(h), len(payload), len(b))
		}
	})
}
