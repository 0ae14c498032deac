package gateway

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/clusterpeer/clusterpeer/dataplane/geneveauth"
	"github.com/clusterpeer/clusterpeer/dataplane/packet"
	"github.com/clusterpeer/clusterpeer/tunnel/keyring"
	"github.com/clusterpeer/clusterpeer/tunnel/probe"
)

var (
	demuxAddr = netip.MustParseAddr("10.1.0.2")
	gwAddr    = netip.MustParseAddr("10.1.0.21") // the gateway's GENEVE address
	ipv4Ping  = []byte{0x45, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0, 10, 1, 0, 10, 10, 2, 0, 10, 8, 0, 0, 0, 0, 0, 0, 0}
)

func frame(vni uint32, proto uint16, oam bool, inner []byte) []byte {
	b := make([]byte, packet.GeneveLen+len(inner))
	packet.PutGeneve(b, vni, proto, oam)
	copy(b[packet.GeneveLen:], inner)
	return b
}

func TestIngressCheck(t *testing.T) {
	peerProbe := netip.MustParseAddrPort("10.2.0.21:6082")
	in := Ingress{Sources: []netip.Addr{demuxAddr, netip.MustParseAddr("fd00:a::2")}, Local: gwAddr, VNI: 4242, Probe: peerProbe}
	pkt := make([]byte, probe.InnerLenV4)
	probe.PutInner(pkt, netip.MustParseAddrPort("10.1.0.2:6082"), peerProbe, make([]byte, probe.MessageLen))
	otherProbe := make([]byte, probe.InnerLenV4)
	probe.PutInner(otherProbe, netip.MustParseAddrPort("10.1.0.2:6082"), netip.MustParseAddrPort("10.2.0.22:6082"), make([]byte, probe.MessageLen))
	ipv6 := make([]byte, 40)
	ipv6[0] = 0x60
	badVersion := frame(4242, packet.ProtoIPv4, false, ipv4Ping)
	badVersion[0] |= 0x80
	overrun := frame(4242, packet.ProtoIPv4, false, ipv4Ping)
	overrun[0] |= 0x3f
	crit := append(frame(4242, packet.ProtoIPv4, false, nil), 0, 1, 0x80, 0)
	crit[0] |= 1
	crit = append(crit, ipv4Ping...)
	cases := []struct {
		name string
		src  netip.Addr
		pkt  []byte
		want Drop
	}{
		{"ipv4", demuxAddr, frame(4242, packet.ProtoIPv4, false, ipv4Ping), DropNone},
		{"ipv4-mapped source", netip.MustParseAddr("::ffff:10.1.0.2"), frame(4242, packet.ProtoIPv4, false, ipv4Ping), DropNone},
		{"ipv6", netip.MustParseAddr("fd00:a::2"), frame(4242, packet.ProtoIPv6, false, ipv6), DropNone},
		{"unknown source", netip.MustParseAddr("10.1.0.10"), frame(4242, packet.ProtoIPv4, false, ipv4Ping), DropUnknownSource},
		{"empty", demuxAddr, nil, DropTruncated},
		{"short header", demuxAddr, []byte{0, 0, 8, 0}, DropTruncated},
		{"short inner", demuxAddr, frame(4242, packet.ProtoIPv4, false, ipv4Ping[:12]), DropTruncated},
		{"version", demuxAddr, badVersion, DropBadVersion},
		{"options overrun", demuxAddr, overrun, DropTruncated},
		{"critical option", demuxAddr, crit, DropCriticalOption},
		{"vni", demuxAddr, frame(4243, packet.ProtoIPv4, false, ipv4Ping), DropWrongVNI},
		{"oam, not a probe", demuxAddr, frame(4242, packet.ProtoIPv4, true, ipv4Ping), DropOAM},
		{"oam, probe for the peer", demuxAddr, frame(4242, packet.ProtoIPv4, true, pkt), DropNone},
		{"oam, probe for another gateway", demuxAddr, frame(4242, packet.ProtoIPv4, true, otherProbe), DropOAM},
		{"oam, probe from a stranger", netip.MustParseAddr("10.1.0.10"), frame(4242, packet.ProtoIPv4, true, pkt), DropUnknownSource},
		{"ethernet", demuxAddr, frame(4242, 0x6558, false, ipv4Ping), DropBadProtocol},
		{"ipv6 label, ipv4 packet", demuxAddr, frame(4242, packet.ProtoIPv6, false, ipv4Ping), DropBadProtocol},
		{"ipv6 too short", demuxAddr, frame(4242, packet.ProtoIPv6, false, ipv6[:30]), DropBadProtocol},
	}
	for _, c := range cases {
		inner, drop := in.Check(c.src, c.pkt)
		if drop != c.want {
			t.Errorf("%s: drop %v, want %v", c.name, drop, c.want)
		}
		if drop == DropNone && len(inner) != len(c.pkt)-packet.GeneveLen {
			t.Errorf("%s: inner length %d", c.name, len(inner))
		}
	}
	for d := Drop(0); d < NumDrops; d++ {
		if d.String() == "" || d.String() == "unknown" {
			t.Errorf("drop %d has no name", d)
		}
	}
}

func TestIngressAllocs(t *testing.T) {
	in := Ingress{Sources: []netip.Addr{demuxAddr}, Local: gwAddr, Own: []netip.Addr{gwAddr}, VNI: 4242}
	pkt := frame(4242, packet.ProtoIPv4, false, ipv4Ping)
	if a := testing.AllocsPerRun(100, func() { in.Check(demuxAddr, pkt) }); a != 0 {
		t.Errorf("%v allocs per check", a)
	}
	if a := testing.AllocsPerRun(100, func() { in.CheckLocal(ipv4Ping) }); a != 0 {
		t.Errorf("%v allocs per local check", a)
	}
}

// TestIngressCheckLocal: what the kernel routes into the TUN enters the
// lane only as what the gateway sends itself (ICMP from its addresses,
// UDP from its reflector's address and port); a host that uses the
// gateway as its next hop for the remote network is refused, also when
// it forges the gateway's own source (a kernel receiving in lists
// forwards such a packet: hostile_test's kernel-bypass).
func TestIngressCheckLocal(t *testing.T) {
	own4, own6 := netip.MustParseAddr("198.18.1.1"), netip.MustParseAddr("fd00:a::21")
	const reflector = 6082
	in := Ingress{Local: gwAddr, Own: []netip.Addr{own4, own6}, ReflectorPort: reflector}
	far, far6 := netip.MustParseAddr("10.2.0.10"), netip.MustParseAddr("fd00:b::10")
	pkt := func(src, dst netip.Addr, proto uint8, sport uint16) []byte {
		b := make([]byte, 64)
		if src.Is4() {
			packet.PutIPv4(b, packet.IPv4Fields{TotalLen: len(b), Protocol: proto, Src: src, Dst: dst})
			binary.BigEndian.PutUint16(b[packet.IPv4MinLen:], sport)
			return b
		}
		packet.PutIPv6(b, packet.IPv6Fields{PayloadLen: len(b) - packet.IPv6Len, NextHeader: proto, Src: src, Dst: dst})
		binary.BigEndian.PutUint16(b[packet.IPv6Len:], sport)
		return b
	}
	lanHost := netip.MustParseAddr("10.1.0.10")
	cases := []struct {
		name string
		pkt  []byte
		want Drop
	}{
		{"reflector reply", pkt(gwAddr, far, packet.ProtoUDP, reflector), DropNone},
		{"icmp error from the underlay address", pkt(own4, far, packet.ProtoICMP, 0x0300), DropNone},
		{"icmpv6 from the gateway", pkt(own6, far6, packet.ProtoICMPv6, 0x0100), DropNone},
		{"udp from the geneve address, another port", pkt(gwAddr, far, packet.ProtoUDP, 7301), DropForwarded},
		{"udp from another own address, the reflector's port", pkt(own4, far, packet.ProtoUDP, reflector), DropForwarded},
		{"tcp from the gateway", pkt(gwAddr, far, packet.ProtoTCP, reflector), DropForwarded},
		{"udp6 from the gateway", pkt(own6, far6, packet.ProtoUDP, reflector), DropForwarded},
		{"forwarded from a lan host", pkt(lanHost, far, packet.ProtoICMP, 0x0800), DropForwarded},
		{"forwarded udp from a lan host", pkt(lanHost, far, packet.ProtoUDP, reflector), DropForwarded},
		{"forwarded ipv6", pkt(netip.MustParseAddr("fd00:a::10"), far6, packet.ProtoICMPv6, 0x8000), DropForwarded},
		{"udp with no room for its port", pkt(gwAddr, far, packet.ProtoUDP, reflector)[:21], DropForwarded},
		{"empty", nil, DropBadProtocol},
		{"short ipv4", pkt(gwAddr, far, packet.ProtoICMP, 0)[:12], DropTruncated},
		{"short ipv6", pkt(own6, far6, packet.ProtoICMPv6, 0)[:30], DropTruncated},
		{"version 5", []byte{0x50, 0, 0, 0}, DropBadProtocol},
	}
	for _, c := range cases {
		if got := in.CheckLocal(c.pkt); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
	if in := (Ingress{Local: gwAddr}); in.CheckLocal(pkt(gwAddr, far, packet.ProtoUDP, 0)) != DropForwarded {
		t.Error("without a reflector, UDP from the gateway entered the lane")
	}
}

func TestParsePeer(t *testing.T) {
	uapi := "private_key=" + "aa" + "\nlisten_port=51820\npublic_key=8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a\n" +
		"endpoint=198.18.1.2:51820\nlast_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\nrx_bytes=10\ntx_bytes=20\nallowed_ip=10.2.0.0/16\n"
	p, err := parsePeer([]byte(uapi), PeerStatus{})
	if err != nil {
		t.Fatal(err)
	}
	if p.PublicKey != "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=" || p.Endpoint != "198.18.1.2:51820" ||
		p.RxBytes != 10 || p.TxBytes != 20 || p.LastHandshake.Unix() != 1700000000 {
		t.Errorf("parsed %+v", p)
	}
	if _, err := parsePeer([]byte("private_key=aa\n"), PeerStatus{}); err == nil {
		t.Error("no peer: want an error")
	}
}

// FuzzCheck: any datagram is accepted or dropped with a reason, never a
// panic; an accepted one carries an IP packet of the labelled version.
func FuzzCheck(f *testing.F) {
	f.Add(frame(4242, packet.ProtoIPv4, false, ipv4Ping))
	f.Add(frame(4242, packet.ProtoIPv6, true, make([]byte, 40)))
	f.Add([]byte{0x3f, 0x40, 0x08, 0x00, 0, 0x10, 0x92, 0})
	peer := netip.MustParseAddrPort("10.2.0.21:6082")
	pkt := make([]byte, probe.InnerLenV4)
	probe.PutInner(pkt, netip.MustParseAddrPort("10.1.0.2:6082"), peer, make([]byte, probe.MessageLen))
	f.Add(frame(4242, packet.ProtoIPv4, true, pkt))
	in := Ingress{Sources: []netip.Addr{demuxAddr}, Local: gwAddr, Own: []netip.Addr{gwAddr}, VNI: 4242, Probe: peer}
	f.Fuzz(func(t *testing.T, pkt []byte) {
		if in.CheckLocal(pkt) == DropNone && !(packet.Version(pkt) == 4 && packet.IPv4(pkt).Src() == gwAddr ||
			packet.Version(pkt) == 6 && len(pkt) >= packet.IPv6Len && packet.IPv6(pkt).Src() == gwAddr) {
			t.Fatalf("CheckLocal let in %x", pkt)
		}
		inner, drop := in.Check(demuxAddr, pkt)
		if drop >= NumDrops {
			t.Fatalf("drop %d out of range", drop)
		}
		if drop != DropNone {
			return
		}
		h := packet.Geneve(pkt)
		if len(inner) < 20 || (h.Protocol() == packet.ProtoIPv4) != (inner[0]>>4 == 4) {
			t.Fatalf("accepted %x", pkt)
		}
		if h.OAM() && !probe.IsProbeFor(inner, peer) {
			t.Fatalf("forwarded an OAM frame that is no probe for the peer: %x", pkt)
		}
	})
}

// With Auth, only frames the demux sealed for this lane enter, each once,
// and each refusal has its reason; the other checks still come first.
func TestIngressAuth(t *testing.T) {
	g := keyring.FromSecret([]byte("a peering secret"), time.Time{}, time.Time{})
	pairKey := func(sender uint8, lane uint16) geneveauth.Key {
		k, _ := g.Key(keyring.GenevePath("a", sender, lane))
		return geneveauth.KeyOf(k)
	}
	id, key := g.ID, pairKey(0, 1)
	o := geneveauth.NewOpener()
	o.Add(0, id, key)
	in := Ingress{Sources: []netip.Addr{demuxAddr}, Local: gwAddr, VNI: 4242, Auth: o}
	s := geneveauth.NewSealer(key, id, 0, 1000)
	sealed := func(sl *geneveauth.Sealer, vni uint32) []byte {
		b := make([]byte, geneveauth.HeaderLen+len(ipv4Ping))
		packet.PutGeneve(b, vni, packet.ProtoIPv4, false)
		copy(b[geneveauth.HeaderLen:], ipv4Ping)
		sl.Seal(b, sl.Reserve(1))
		return b
	}
	good := sealed(s, 4242)
	changed := bytes.Clone(sealed(s, 4242))
	changed[len(changed)-1] ^= 1
	otherLane := geneveauth.NewSealer(pairKey(0, 2), id, 0, 1000)
	standby := geneveauth.NewSealer(pairKey(1, 1), id, 1, 1000)
	cases := []struct {
		name string
		src  netip.Addr
		pkt  []byte
		want Drop
	}{
		{"sealed", demuxAddr, good, DropNone},
		{"the same again", demuxAddr, good, DropReplayed},
		{"unsealed", demuxAddr, frame(4242, packet.ProtoIPv4, false, ipv4Ping), DropNoTag},
		{"changed on the way", demuxAddr, changed, DropBadTag},
		{"another lane's key", demuxAddr, sealed(otherLane, 4242), DropBadTag},
		{"a sender without a key here", demuxAddr, sealed(standby, 4242), DropUnknownKey},
		{"sealed, from a stranger", netip.MustParseAddr("10.1.0.10"), sealed(s, 4242), DropUnknownSource},
		{"sealed, another VNI", demuxAddr, sealed(s, 4243), DropWrongVNI},
		{"sealed, next counter", demuxAddr, sealed(s, 4242), DropNone},
	}
	for _, c := range cases {
		inner, drop := in.Check(c.src, c.pkt)
		if drop != c.want {
			t.Errorf("%s: drop %v, want %v", c.name, drop, c.want)
		}
		if drop == DropNone && !bytes.Equal(inner, ipv4Ping) {
			t.Errorf("%s: inner %x", c.name, inner)
		}
	}
	// Without Auth, a sealed frame is a frame like any (its option known).
	plain := Ingress{Sources: []netip.Addr{demuxAddr}, VNI: 4242}
	if inner, drop := plain.Check(demuxAddr, sealed(s, 4242)); drop != DropNone || !bytes.Equal(inner, ipv4Ping) {
		t.Errorf("sealed frame, auth off: %v", drop)
	}
}
