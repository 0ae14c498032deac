package packet

import (
	"bytes"
	"testing"

	gp "github.com/gopacket/gopacket"
	gplayers "github.com/gopacket/gopacket/layers"
)

// We decode what gopacket serializes. The maintained gopacket fork
// (github.com/gopacket/gopacket) can serialize GENEVE; the original
// google/gopacket 1.1.19 cannot, so this test alone uses the fork.
func TestWeDecodeWhatGopacketWrites(t *testing.T) {
	inner := innerIPv4(t)
	for _, c := range []struct {
		name     string
		oam      bool
		critical bool
		proto    gplayers.EthernetType
		vni      uint32
		options  []*gplayers.GeneveOption
	}{
		{"plain", false, false, gplayers.EthernetTypeIPv4, 4242, nil},
		{"oam ipv6 max vni", true, false, gplayers.EthernetTypeIPv6, MaxVNI, nil},
		{"options", false, false, gplayers.EthernetTypeIPv4, 7, []*gplayers.GeneveOption{
			{Class: 0x0104, Type: 0x01, Data: []byte{1, 2, 3, 4}},
			{Class: 0xffff, Type: 0x7f, Data: bytes.Repeat([]byte{9}, 64)},
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			g := &gplayers.Geneve{OAMPacket: c.oam, CriticalOption: c.critical, Protocol: c.proto, VNI: c.vni, Options: c.options}
			buf := gp.NewSerializeBuffer()
			if err := gp.SerializeLayers(buf, gp.SerializeOptions{FixLengths: true}, g, gp.Payload(inner)); err != nil {
				t.Fatal(err)
			}
			h, payload, err := ParseGeneve(buf.Bytes())
			if err != nil {
				t.Fatal(err)
			}
			if h.VNI() != c.vni || h.OAM() != c.oam || h.Protocol() != uint16(c.proto) || !bytes.Equal(payload, inner) {
				t.Errorf("read vni %d oam %v proto %#x payload %d bytes", h.VNI(), h.OAM(), h.Protocol(), len(payload))
			}
			opts := h.Options()
			for i, want := range c.options {
				o, rest, err := NextGeneveOption(opts)
				if err != nil {
					t.Fatalf("option %d: %v", i, err)
				}
				if o.Class != want.Class || o.Type != want.Type || !bytes.Equal(o.Data, want.Data) {
					t.Errorf("option %d: %+v, want class %#x type %#x %d bytes", i, o, want.Class, want.Type, len(want.Data))
				}
				opts = rest
			}
			if len(opts) != 0 {
				t.Errorf("%d option bytes left over", len(opts))
			}
		})
	}
}
