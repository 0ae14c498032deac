//go:build linux

package xdp

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/clusterpeer/clusterpeer/dataplane/geneveauth"
	"github.com/clusterpeer/clusterpeer/dataplane/packet"
	"github.com/clusterpeer/clusterpeer/flowhash"
)

var (
	hostA  = net.IP{10, 1, 0, 10}
	hostB  = net.IP{10, 2, 0, 10}
	hostA6 = net.ParseIP("fd00:a::10")
	hostB6 = net.ParseIP("fd00:b::10")
)

func ip4(src, dst net.IP, proto layers.IPProtocol, ttl uint8) *layers.IPv4 {
	return &layers.IPv4{Version: 4, TTL: ttl, Protocol: proto, Flags: layers.IPv4DontFragment, SrcIP: src, DstIP: dst}
}

func ip6(src, dst net.IP, next layers.IPProtocol, hop uint8) *layers.IPv6 {
	return &layers.IPv6{Version: 6, HopLimit: hop, NextHeader: next, SrcIP: src, DstIP: dst}
}

func tcp4(t testing.TB, sport, dport uint16, n int) []byte {
	ip := ip4(hostA, hostB, layers.IPProtocolTCP, 64)
	tc := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), Seq: 1, ACK: true, Window: 512}
	tc.SetNetworkLayerForChecksum(ip)
	return serialize(t, ip, tc, gopacket.Payload(make([]byte, n)))
}

func udp4(t testing.TB, sport, dport uint16, n int) []byte {
	ip := ip4(hostA, hostB, layers.IPProtocolUDP, 64)
	u := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	u.SetNetworkLayerForChecksum(ip)
	return serialize(t, ip, u, gopacket.Payload(make([]byte, n)))
}

func tcp6(t testing.TB, sport, dport uint16, n int) []byte {
	ip := ip6(hostA6, hostB6, layers.IPProtocolTCP, 64)
	tc := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), Seq: 1, ACK: true, Window: 512}
	tc.SetNetworkLayerForChecksum(ip)
	return serialize(t, ip, tc, gopacket.Payload(make([]byte, n)))
}

func udp6(t testing.TB, sport, dport uint16, n int) []byte {
	ip := ip6(hostA6, hostB6, layers.IPProtocolUDP, 64)
	u := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	u.SetNetworkLayerForChecksum(ip)
	return serialize(t, ip, u, gopacket.Payload(make([]byte, n)))
}

func echo4(t testing.TB, id uint16) []byte {
	return serialize(t, ip4(hostA, hostB, layers.IPProtocolICMPv4, 64),
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0), Id: id, Seq: 1}, gopacket.Payload(make([]byte, 56)))
}

func echo6(t testing.TB, id uint16) []byte {
	ip := ip6(hostA6, hostB6, layers.IPProtocolICMPv6, 64)
	ic := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(128, 0)}
	ic.SetNetworkLayerForChecksum(ip)
	return serialize(t, ip, ic, &layers.ICMPv6Echo{Identifier: id, SeqNumber: 1}, gopacket.Payload(make([]byte, 56)))
}

// unreach4 is an ICMP error from host-a about a packet host-b sent it.
func unreach4(t testing.TB) []byte {
	quoted := udp4(t, 7000, 5000, 8)
	copy(quoted[12:16], hostB)
	copy(quoted[16:20], hostA)
	return serialize(t, ip4(hostA, hostB, layers.IPProtocolICMPv4, 64),
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(3, 3)}, gopacket.Payload(quoted[:28]))
}

func tooBig6(t testing.TB) []byte {
	quoted := udp6(t, 7000, 5000, 8)
	ip := ip6(hostA6, hostB6, layers.IPProtocolICMPv6, 64)
	ic := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(2, 0)}
	ic.SetNetworkLayerForChecksum(ip)
	return serialize(t, ip, ic, gopacket.Payload(append([]byte{0, 0, 5, 0}, quoted[:48]...)))
}

func frag4(t testing.TB, offset uint16, more bool) []byte {
	ip := ip4(hostA, hostB, layers.IPProtocolUDP, 64)
	ip.Flags = 0
	if more {
		ip.Flags = layers.IPv4MoreFragments
	}
	ip.FragOffset = offset
	return serialize(t, ip, gopacket.Payload(make([]byte, 64)))
}

func frag6(t testing.TB) []byte {
	ip := ip6(hostA6, hostB6, layers.IPProtocolIPv6Fragment, 64)
	fr := []byte{byte(layers.IPProtocolUDP), 0, 0, 1, 0, 0, 0, 7} // offset 0, M set
	return serialize(t, ip, gopacket.Payload(append(fr, make([]byte, 64)...)))
}

func options4(t testing.TB) []byte {
	ip := ip4(hostA, hostB, layers.IPProtocolUDP, 64)
	ip.Options = []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 0}} // NOP NOP NOP EOL
	u := &layers.UDP{SrcPort: 1, DstPort: 2}
	u.SetNetworkLayerForChecksum(ip)
	return serialize(t, ip, u, gopacket.Payload(make([]byte, 16)))
}

func hopByHop6(t testing.TB) []byte {
	ip := ip6(hostA6, hostB6, layers.IPProtocolIPv6HopByHop, 64)
	hbh := []byte{byte(layers.IPProtocolUDP), 0, 1, 4, 0, 0, 0, 0} // PadN
	udp := []byte{0, 1, 0, 2, 0, 16, 0, 0}
	return serialize(t, ip, gopacket.Payload(append(append(hbh, udp...), make([]byte, 8)...)))
}

func gre4(t testing.TB) []byte {
	return serialize(t, ip4(hostA, hostB, layers.IPProtocolGRE, 64), gopacket.Payload(make([]byte, 24)))
}

func withTTL(pkt []byte, ttl uint8) []byte {
	p := append([]byte(nil), pkt...)
	if p[0]>>4 == 6 {
		p[7] = ttl
		return p
	}
	p[8] = ttl
	binary.BigEndian.PutUint16(p[10:12], 0)
	binary.BigEndian.PutUint16(p[10:12], packet.Checksum(p[:20], 0))
	return p
}

func withDst(pkt []byte, dst net.IP) []byte {
	p := append([]byte(nil), pkt...)
	if p[0]>>4 == 6 {
		copy(p[24:40], dst.To16())
		return p
	}
	copy(p[16:20], dst.To4())
	return p
}

// TestFixtures runs the program on one packet of each kind and checks its
// verdict, its counter, and for what it sends, the whole frame against the
// userspace demux's.
func TestFixtures(t *testing.T) {
	cfg := Config{Key: testKey, Symmetric: true}
	p := loadTest(t, cfg)
	sel := newSelector(t, cfg, 1, 2, 3)
	if err := p.Publish(sel.Snapshot(), testTargets(1, 2, 3)); err != nil {
		t.Fatal(err)
	}
	g := newGoDemux(t, newSelector(t, cfg, 1, 2, 3), nil, 1, 2, 3)

	send := []struct {
		name string
		pkt  []byte
	}{
		{"ipv4-tcp", tcp4(t, 40000, 5201, 100)},
		{"ipv4-tcp-1400", tcp4(t, 40001, 5201, 1360)},
		{"ipv4-tcp-short-padded", tcp4(t, 40002, 5201, 0)},
		{"ipv4-udp", udp4(t, 40000, 5201, 100)},
		{"ipv4-udp-mtu", udp4(t, 40003, 5201, testMTU-28)},
		{"ipv6-tcp", tcp6(t, 40000, 5201, 100)},
		{"ipv6-udp", udp6(t, 40000, 5201, 1000)},
		{"ipv4-icmp-echo", echo4(t, 77)},
		{"ipv6-icmp-echo", echo6(t, 77)},
		{"ipv4-ttl-2", withTTL(udp4(t, 1, 2, 10), 2)},
	}
	for _, c := range send {
		t.Run(c.name, func(t *testing.T) {
			before := counts(t, p)
			verdict, out := run(t, p.DemuxProgram(), eth(c.pkt))
			if verdict != xdpTX {
				t.Fatalf("verdict %d, want XDP_TX (%d); counters moved: %v", verdict, xdpTX, diff(before, counts(t, p)))
			}
			if d := diff(before, counts(t, p)); d["tx"] != 1 || len(d) != 1 {
				t.Errorf("counters moved %v, want tx +1", d)
			}
			to, want, ok := g.forward(kernelForward(c.pkt), 1)
			if !ok {
				t.Fatal("the Go demux did not forward it")
			}
			checkEncap(t, out, c.pkt, to, want, cfg)
		})
	}

	pass := []struct {
		name, reason string
		frame        []byte
	}{
		{"ipv4-icmp-error", "icmp_error", eth(unreach4(t))},
		{"ipv6-packet-too-big", "icmp_error", eth(tooBig6(t))},
		{"ipv4-first-fragment", "fragment", eth(frag4(t, 0, true))},
		{"ipv4-later-fragment", "fragment", eth(frag4(t, 8, false))},
		{"ipv6-fragment", "fragment", eth(frag6(t))},
		{"ipv4-options", "ip_options", eth(options4(t))},
		{"ipv6-hop-by-hop", "ipv6_ext", eth(hopByHop6(t))},
		{"ipv4-gre", "proto", eth(gre4(t))},
		{"ipv4-ttl-1", "ttl", eth(withTTL(udp4(t, 1, 2, 10), 1))},
		{"ipv6-hop-limit-1", "ttl", eth(withTTL(udp6(t, 1, 2, 10), 1))},
		{"ipv4-over-mtu", "too_big", eth(udp4(t, 1, 2, testMTU-27))},
		{"ipv4-not-remote", "not_remote", eth(withDst(udp4(t, 1, 2, 10), net.IP{10, 1, 0, 2}))},
		{"ipv6-not-remote", "not_remote", eth(withDst(udp6(t, 1, 2, 10), net.ParseIP("fd00:c::1")))},
		{"other-mac", "not_ours", append([]byte{0x02, 0, 0, 0, 0, 9}, eth(udp4(t, 1, 2, 10))[6:]...)},
		{"broadcast-arp", "not_ours", append(bytes.Repeat([]byte{0xff}, 6), make([]byte, 54)...)},
		{"arp-to-us", "not_ip", append(append([]byte(ourMAC), 2, 0, 0, 0, 0, 1, 0x08, 0x06), make([]byte, 46)...)},
		{"vlan", "not_ip", append(append([]byte(ourMAC), 2, 0, 0, 0, 0, 1, 0x81, 0x00), make([]byte, 46)...)},
		{"ipv4-truncated-header", "malformed", eth(udp4(t, 1, 2, 10))[:14+16]},
		{"ipv4-total-length-beyond-frame", "malformed", truncate(eth(udp4(t, 1, 2, 100)), 14+60)},
		{"ipv4-bad-header-checksum", "malformed", eth(withBadChecksum(udp4(t, 1, 2, 10)))},
		{"ipv4-version-6-in-ipv4-frame", "malformed", ethType(udp6(t, 1, 2, 10), 0x0800)},
		{"ipv4-udp-no-ports", "malformed", eth(withLen4(udp4(t, 1, 2, 10), 22))},
		{"ipv6-jumbo-length-0", "malformed", eth(withLen6(udp6(t, 1, 2, 10), 0))},
		{"ipv4-icmp-short", "malformed", eth(withLen4(echo4(t, 1), 24))},
	}
	for _, c := range pass {
		t.Run(c.name, func(t *testing.T) {
			before := counts(t, p)
			verdict, out := run(t, p.DemuxProgram(), c.frame)
			if verdict != xdpPass {
				t.Fatalf("verdict %d, want XDP_PASS", verdict)
			}
			if !bytes.Equal(out, c.frame) {
				t.Errorf("a passed frame changed:\n got % x\nwant % x", out, c.frame)
			}
			if d := diff(before, counts(t, p)); d[c.reason] != 1 || len(d) != 1 {
				t.Errorf("counters moved %v, want %s +1", d, c.reason)
			}
		})
	}
}

func ethType(pkt []byte, typ uint16) []byte {
	f := eth(pkt)
	binary.BigEndian.PutUint16(f[12:14], typ)
	return f
}

func withBadChecksum(pkt []byte) []byte {
	p := append([]byte(nil), pkt...)
	p[10] ^= 0xff
	return p
}

func truncate(f []byte, n int) []byte { return append([]byte(nil), f[:n]...) }

func withLen4(pkt []byte, n int) []byte {
	p := append([]byte(nil), pkt[:n]...)
	binary.BigEndian.PutUint16(p[2:4], uint16(n))
	return p
}

func withLen6(pkt []byte, n int) []byte {
	p := append([]byte(nil), pkt...)
	binary.BigEndian.PutUint16(p[4:6], uint16(n))
	return p
}

func counts(t testing.TB, p *Program) map[string]uint64 {
	t.Helper()
	c, err := p.Counters()
	if err != nil {
		t.Fatal(err)
	}
	return c.Reasons
}

func diff(before, after map[string]uint64) map[string]uint64 {
	d := map[string]uint64{}
	for k, v := range after {
		if v != before[k] {
			d[k] = v - before[k]
		}
	}
	return d
}

// checkEncap checks an XDP_TX'd frame: the outer headers, and that its
// GENEVE payload is byte for byte what the Go demux sent, to the same
// gateway.
func checkEncap(t testing.TB, out, inner []byte, goTo netip.AddrPort, goFrame []byte, cfg Config) {
	t.Helper()
	e := decodeEncap(t, out)
	to := netip.AddrPortFrom(netip.AddrFrom4([4]byte(e.ip.DstIP.To4())), uint16(e.udp.DstPort))
	if to != goTo {
		t.Fatalf("XDP sent to %s, the Go demux to %s", to, goTo)
	}
	lane := flowhash.LaneID(e.ip.DstIP.To4()[3] - 20)
	if !bytes.Equal(e.eth.DstMAC, gwMAC(lane)) || !bytes.Equal(e.eth.SrcMAC, ourMAC) || e.eth.EthernetType != layers.EthernetTypeIPv4 {
		t.Errorf("ethernet %s -> %s type %s, want %s -> %s IPv4", e.eth.SrcMAC, e.eth.DstMAC, e.eth.EthernetType, ourMAC, gwMAC(lane))
	}
	if !e.ip.SrcIP.Equal(ourAddr.AsSlice()) || e.ip.TTL != 64 || e.ip.Flags != layers.IPv4DontFragment ||
		e.ip.IHL != 5 || e.ip.Protocol != layers.IPProtocolUDP || int(e.ip.Length) != len(out)-14 {
		t.Errorf("outer IPv4 %+v", e.ip)
	}
	if packet.Checksum(out[14:34], 0) != 0 {
		t.Errorf("outer IPv4 checksum %#04x is wrong", e.ip.Checksum)
	}
	var tu flowhash.Tuple
	if d := tu.Decode(inner); d != flowhash.DropNone {
		t.Fatalf("inner packet: %s", d)
	}
	sum := flowhash.NewHasher(cfg.Key, cfg.HashMode, cfg.Symmetric).Sum(&tu)
	if want := 0xc000 | uint16(sum>>50); uint16(e.udp.SrcPort) != want || int(e.udp.Length) != len(out)-34 {
		t.Errorf("outer UDP %d -> %d len %d, want source port %d, length %d",
			e.udp.SrcPort, e.udp.DstPort, e.udp.Length, want, len(out)-34)
	}
	checkOuterChecksum(t, out, inner, e.udp.Checksum, tu.Proto)
	encap := ENCAP4
	if cfg.Seal {
		encap += geneveauth.OptionLen
	}
	if len(out) != 14+encap+len(inner) {
		t.Errorf("frame of %d bytes for a %d-byte packet, want %d", len(out), len(inner), 14+encap+len(inner))
	}
	if !bytes.Equal(e.geneve, goFrame) {
		t.Errorf("GENEVE payload differs from the Go demux's:\n xdp % x\n  go % x", e.geneve, goFrame)
	}
}

// checkOuterChecksum checks frame's outer UDP checksum (csum): wherever
// the inner packet's checksums pin its sum, one that holds if the inner
// packet's own does (else one that fails: the gateway's kernel drops the
// frame, as host-b would the packet); none where they do not pin it
// (SCTP's CRC, UDP without a checksum or shorter than its packet).
func checkOuterChecksum(t testing.TB, frame, inner []byte, csum uint16, proto uint8) {
	t.Helper()
	l4 := packet.IPv4MinLen // the program sends no IPv4 options, no IPv6 extension headers
	src, dst := netip.AddrFrom4([4]byte(inner[12:16])), netip.AddrFrom4([4]byte(inner[16:20]))
	if packet.Version(inner) == 6 {
		l4 = packet.IPv6Len
		src, dst = netip.AddrFrom16([16]byte(inner[8:24])), netip.AddrFrom16([16]byte(inner[24:40]))
	}
	n := ipLength(inner)
	// Whether the inner checksum holds in ones' complement arithmetic,
	// where a sum of 0 is 0xffff too (an all-zero ICMP message with a
	// zero checksum: the kernel refuses it, yet it sums as a valid one,
	// and so does the frame around it).
	sums := func(c uint16) bool { return c == 0 || c == 0xffff }
	var pinned, innerOK bool
	switch {
	case proto == flowhash.ProtoICMP:
		pinned, innerOK = true, sums(packet.Checksum(inner[l4:n], 0))
	case proto == flowhash.ProtoTCP || proto == flowhash.ProtoICMPv6 ||
		proto == flowhash.ProtoUDP && n-l4 >= 8 && packet.UDP(inner[l4:]).Checksum() != 0 &&
			int(binary.BigEndian.Uint16(inner[l4+4:])) == n-l4:
		pinned, innerOK = true, sums(packet.Checksum(inner[l4:n], packet.PseudoHeaderSum(src, dst, proto, n-l4)))
	}
	switch {
	case !pinned && csum != 0:
		t.Errorf("outer UDP checksum %#04x; want none, the inner protocol %d's checksum does not pin its sum", csum, proto)
		return
	case !pinned:
		return
	case csum == 0:
		t.Errorf("no outer UDP checksum; the inner protocol %d's checksum pins it", proto)
		return
	}
	outer := packet.PseudoHeaderSum(netip.AddrFrom4([4]byte(frame[26:30])), netip.AddrFrom4([4]byte(frame[30:34])), 17, len(frame)-34)
	if holds := packet.Checksum(frame[34:], outer) == 0; holds != innerOK {
		t.Errorf("outer UDP checksum %#04x holds: %v; the inner packet's: %v", csum, holds, innerOK)
	}
}

// ENCAP4 is what the program puts between Ethernet and the inner packet.
const ENCAP4 = 20 + 8 + 8

// TestHashVectors holds the program's parse and hash to
// testdata/flowhash-vectors.json: every packet the program hashes must
// give the vector's hash, and every packet the Go decoder refuses must be
// left to the kernel.
func TestHashVectors(t *testing.T) {
	b, err := os.ReadFile("../../testdata/flowhash-vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var vf struct {
		Hashes []struct {
			Name, Packet, Key, Mode, Drop, Hash string
			Symmetric                           bool
		} `json:"hashes"`
	}
	if err := json.Unmarshal(b, &vf); err != nil {
		t.Fatal(err)
	}
	progs := map[string]*Program{}
	hashed, passed := 0, map[string]int{}
	for _, v := range vf.Hashes {
		key, err := flowhash.ParseKey(v.Key)
		if err != nil {
			t.Fatal(err)
		}
		mode, err := flowhash.ParseMode(v.Mode)
		if err != nil {
			t.Fatal(err)
		}
		id := v.Key + v.Mode + map[bool]string{true: "s"}[v.Symmetric]
		p := progs[id]
		if p == nil {
			p = loadTest(t, Config{Key: key, HashMode: mode, Symmetric: v.Symmetric})
			progs[id] = p
		}
		pkt, err := hex.DecodeString(v.Packet)
		if err != nil {
			t.Fatal(err)
		}
		if len(pkt) == 0 {
			continue // an empty frame is not an IP packet at all
		}
		run(t, p.objs.XdpHash, eth(pkt))
		var res demuxHashResult
		if err := p.objs.HashOut.Lookup(uint32(0), &res); err != nil {
			t.Fatal(err)
		}
		reason := reasonNames[min(int(res.Reason), len(reasonNames)-1)]
		if res.Reason == uint32(len(reasonNames)) { // R_NUM: hashed
			reason = "hashed"
		}
		switch {
		case reason == "hashed" && v.Drop != "none":
			t.Errorf("%s (%s): BPF hashed a packet the Go decoder drops as %s", v.Name, id, v.Drop)
		case reason == "hashed":
			if got := hex.EncodeToString(binary.BigEndian.AppendUint64(nil, res.Sum)); got != v.Hash {
				t.Errorf("%s (%s): BPF hash %s, vector %s", v.Name, id, got, v.Hash)
			}
			hashed++
		default:
			passed[reason]++
		}
	}
	t.Logf("%d vectors hashed in BPF and equal; passed to userspace by reason: %v", hashed, passed)
	if hashed < len(vf.Hashes)/2 {
		t.Errorf("only %d of %d vectors hashed in BPF", hashed, len(vf.Hashes))
	}
}

// TestStatusCountsRuns: while the kernel keeps BPF statistics, the
// status has the program's runs and run time (what `demux show` and
// `bench xdp` turn into a cost per packet); without them, nothing.
func TestStatusCountsRuns(t *testing.T) {
	p := loadTest(t, Config{Key: testKey})
	stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		t.Skipf("BPF_ENABLE_STATS (Linux 5.8+): %v", err)
	}
	before := p.Status()
	frame := eth(udp4(t, 1000, 2000, 64))
	for range 200 {
		run(t, p.DemuxProgram(), frame)
	}
	after := p.Status()
	stats.Close()
	if runs := after.Runs - before.Runs; runs < 200 || after.RunTime <= before.RunTime {
		t.Fatalf("200 runs with statistics on: status counted %d runs, run time %d -> %d ns", runs, before.RunTime, after.RunTime)
	}
	t.Logf("%.0f ns a run (BPF_PROG_TEST_RUN)", float64(after.RunTime-before.RunTime)/float64(after.Runs-before.Runs))
	for range 50 {
		run(t, p.DemuxProgram(), frame)
	}
	// Off again (unless the sysctl keeps them on): no more are counted.
	if b, _ := os.ReadFile("/proc/sys/kernel/bpf_stats_enabled"); len(b) > 0 && b[0] == '0' {
		if off := p.Status(); off.Runs != after.Runs {
			t.Errorf("statistics off again, yet %d more runs counted", off.Runs-after.Runs)
		}
	}
}

// TestRemoteNetwork holds the program's "is the destination remote?" to
// netip.Prefix.Contains, with the remote network compared inline (up to
// remoteInline prefixes) and looked up in the trie (more): addresses at
// each prefix's edges and just outside them, both families.
func TestRemoteNetwork(t *testing.T) {
	pfx := netip.MustParsePrefix
	inline := []netip.Prefix{pfx("10.2.0.0/16"), pfx("198.51.100.7/32"), pfx("fd00:b::/64"), pfx("2001:db8:8000::/33")}
	for _, c := range []struct {
		name   string
		remote []netip.Prefix
	}{
		{"one", inline[:1]},
		{"inline", inline},
		{"trie", append(slices.Clone(inline), pfx("192.0.2.128/25"), pfx("fd00:c::/48"))},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := loadTest(t, Config{Key: testKey, Remote: c.remote})
			var dsts []netip.Addr
			for _, q := range append(slices.Clone(c.remote), pfx("192.0.2.128/25"), pfx("fd00:c::/48")) {
				first := q.Masked().Addr()
				dsts = append(dsts, first.Prev(), first, first.Next(), lastOf(q), lastOf(q).Next())
			}
			for _, dst := range dsts {
				if !dst.IsValid() {
					continue
				}
				want := slices.ContainsFunc(c.remote, func(q netip.Prefix) bool { return q.Contains(dst) })
				pkt := udp6(t, 1, 2, 10)
				if dst.Is4() {
					pkt = udp4(t, 1, 2, 10)
				}
				pkt = withDst(pkt, dst.AsSlice())
				if dst.Is4() {
					pkt[10], pkt[11] = 0, 0
					binary.BigEndian.PutUint16(pkt[10:12], packet.Checksum(pkt[:20], 0))
				}
				before := counts(t, p)
				run(t, p.DemuxProgram(), eth(pkt))
				// No lanes are published: a remote packet is passed up for
				// want of a snapshot, any other as not remote.
				d := diff(before, counts(t, p))
				if got := d["not_remote"] == 0; got != want || len(d) != 1 {
					t.Errorf("%s with remote %v: counters moved %v, want remote=%v", dst, c.remote, d, want)
				}
			}
		})
	}
}

// lastOf is q's last address.
func lastOf(q netip.Prefix) netip.Addr {
	b := q.Masked().Addr().AsSlice()
	for i := q.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}
