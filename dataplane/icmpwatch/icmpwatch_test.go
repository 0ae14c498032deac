package icmpwatch

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// portUnreachable is an ICMPv4 port unreachable (from its type on)
// quoting a UDP datagram from sport to dst carrying payload.
func portUnreachable(dst netip.AddrPort, sport uint16, payload []byte) []byte {
	b := make([]byte, 8+20+8+len(payload))
	b[0], b[1] = 3, 3
	ip := b[8:28]
	ip[0], ip[9] = 0x45, 17
	copy(ip[12:16], []byte{10, 1, 0, 2})
	a := dst.Addr().As4()
	copy(ip[16:20], a[:])
	binary.BigEndian.PutUint16(b[28:30], sport)
	binary.BigEndian.PutUint16(b[30:32], dst.Port())
	copy(b[36:], payload)
	return b
}

func TestParse(t *testing.T) {
	dst := netip.MustParseAddrPort("10.1.0.22:6081")
	q, ok := Parse(portUnreachable(dst, 40000, []byte("geneve")), netip.MustParseAddr("10.1.0.22"), false)
	if !ok || q.Dst != dst || q.SrcPort != 40000 || !q.Port || string(q.Payload) != "geneve" || q.From != dst.Addr() {
		t.Fatalf("%+v %v", q, ok)
	}
	if q.Reason() != "ICMP port unreachable from 10.1.0.22 for 10.1.0.22:6081" {
		t.Errorf("reason %q", q.Reason())
	}
	host := portUnreachable(dst, 40000, nil)
	host[1] = 1
	if q, ok := Parse(host, netip.MustParseAddr("10.1.0.1"), false); !ok || q.Port {
		t.Errorf("host unreachable: %+v %v", q, ok)
	}
	for name, b := range map[string][]byte{
		"fragmentation needed": func() []byte { b := portUnreachable(dst, 1, nil); b[1] = 4; return b }(),
		"echo reply":           func() []byte { b := portUnreachable(dst, 1, nil); b[0] = 0; return b }(),
		"quotes TCP":           func() []byte { b := portUnreachable(dst, 1, nil); b[8+9] = 6; return b }(),
		"truncated quote":      portUnreachable(dst, 1, nil)[:30],
		"bad IHL":              func() []byte { b := portUnreachable(dst, 1, nil); b[8] = 0x4f; return b }(),
		"empty":                nil,
	} {
		if _, ok := Parse(b, dst.Addr(), false); ok {
			t.Errorf("%s: parsed", name)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(portUnreachable(netip.MustParseAddrPort("10.1.0.22:6081"), 40000, []byte("geneve")), false)
	f.Add([]byte{1, 4, 0, 0, 0, 0, 0, 0, 0x60}, true)
	f.Fuzz(func(t *testing.T, b []byte, v6 bool) {
		q, ok := Parse(b, netip.MustParseAddr("10.1.0.22"), v6)
		if ok && len(q.Payload) > len(b) {
			t.Fatalf("payload %d bytes from %d", len(q.Payload), len(b))
		}
	})
}
