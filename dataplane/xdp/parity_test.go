//go:build linux

package xdp

import (
	"encoding/binary"
	"math/rand/v2"
	"net"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/clusterpeer/clusterpeer/flowhash"
)

// flow is one random flow of the parity corpus.
type flow struct {
	v6           bool
	src, dst     net.IP
	proto        layers.IPProtocol
	sport, dport uint16
}

func randFlow(r *rand.Rand) flow {
	f := flow{v6: r.IntN(3) == 0, sport: uint16(r.IntN(65536)), dport: uint16(r.IntN(65536))}
	if f.v6 {
		f.src, f.dst = append(net.IP(nil), hostA6...), append(net.IP(nil), hostB6...)
		for i := 8; i < 16; i++ {
			f.src[i], f.dst[i] = byte(r.IntN(256)), byte(r.IntN(256))
		}
	} else {
		f.src = net.IP{10, 1, byte(r.IntN(256)), byte(r.IntN(256))}
		f.dst = net.IP{10, 2, byte(r.IntN(256)), byte(r.IntN(256))}
	}
	switch n := r.IntN(20); {
	case n < 8:
		f.proto = layers.IPProtocolTCP
	case n < 16:
		f.proto = layers.IPProtocolUDP
	case n < 17:
		f.proto = layers.IPProtocolSCTP
	default:
		f.proto = layers.IPProtocolICMPv4
		if f.v6 {
			f.proto = layers.IPProtocolICMPv6
		}
	}
	return f
}

// packet is one packet of f with n payload bytes.
func (f flow) packet(t testing.TB, n int, ttl uint8) []byte {
	var net gopacket.NetworkLayer
	var ls []gopacket.SerializableLayer
	if f.v6 {
		ip := ip6(f.src, f.dst, f.proto, ttl)
		net, ls = ip, append(ls, ip)
	} else {
		ip := ip4(f.src, f.dst, f.proto, ttl)
		net, ls = ip, append(ls, ip)
	}
	switch f.proto {
	case layers.IPProtocolTCP:
		tc := &layers.TCP{SrcPort: layers.TCPPort(f.sport), DstPort: layers.TCPPort(f.dport), Seq: 7, ACK: true, Window: 100}
		tc.SetNetworkLayerForChecksum(net)
		ls = append(ls, tc)
	case layers.IPProtocolUDP:
		u := &layers.UDP{SrcPort: layers.UDPPort(f.sport), DstPort: layers.UDPPort(f.dport)}
		u.SetNetworkLayerForChecksum(net)
		ls = append(ls, u)
	case layers.IPProtocolSCTP:
		ls = append(ls, gopacket.Payload([]byte{byte(f.sport >> 8), byte(f.sport), byte(f.dport >> 8), byte(f.dport), 0, 0, 0, 0, 0, 0, 0, 0}))
	case layers.IPProtocolICMPv4:
		ls = append(ls, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0), Id: f.sport, Seq: 1})
	case layers.IPProtocolICMPv6:
		ic := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(128, 0)}
		ic.SetNetworkLayerForChecksum(net)
		ls = append(ls, ic, &layers.ICMPv6Echo{Identifier: f.sport, SeqNumber: 1})
	}
	return serialize(t, append(ls, gopacket.Payload(make([]byte, n)))...)
}

// TestParityWithGoDemux runs thousands of random packets through the XDP
// program and the userspace demux, sharing one selector as in the demux
// process, across lane failures, additions and returns: for every packet
// the program sends, both choose the same lane and produce byte-identical
// GENEVE frames, also after the flow-hash key changed. ICMP errors, which
// the program leaves to userspace, take the lane of the flow they report
// on. Sealed (security.geneve_auth), the frames are byte-identical too,
// tag included: the program takes each frame's counter from the one it
// shares with the lane's userspace sealer, its frames open at the
// gateway, and after a key rotation it seals with the new key.
func TestParityWithGoDemux(t *testing.T) {
	for _, cfg := range []Config{
		{Key: testKey, Symmetric: true},
		{Key: flowhash.Key{1, 2, 3}, HashMode: flowhash.Mode3Tuple},
		{Key: flowhash.Key{9}, HashMode: flowhash.Mode2Tuple, Symmetric: true},
		{Key: testKey, Symmetric: true, Seal: true, Sender: testSender},
	} {
		name := cfg.HashMode.String()
		if cfg.Seal {
			name += "-sealed"
		}
		t.Run(name, func(t *testing.T) { parity(t, cfg) })
	}
}

func parity(t *testing.T, cfg Config) {
	p := loadTest(t, cfg)
	sel := newSelector(t, cfg, 1, 2, 3, 4)
	all := []flowhash.LaneID{1, 2, 3, 4, 5}
	var seal *testSeal
	if cfg.Seal {
		seal = newTestSeal(p, 0x31, all...)
	}
	g := newGoDemux(t, sel, seal, all...)
	publish := func(lanes []flowhash.Lane) {
		t.Helper()
		if err := sel.SetLanes(lanes); err != nil {
			t.Fatal(err)
		}
		if err := p.Publish(sel.Snapshot(), seal.targets(testTargets(all...))); err != nil {
			t.Fatal(err)
		}
	}
	publish([]flowhash.Lane{{ID: 1}, {ID: 2}, {ID: 3}, {ID: 4}})

	r := rand.New(rand.NewPCG(uint64(cfg.HashMode), 7))
	flows := make([]flow, 400)
	for i := range flows {
		flows[i] = randFlow(r)
	}
	xdpLane := map[int]flowhash.LaneID{} // flow index -> lane the program chose last
	sent, icmpChecked := 0, 0
	phase := func(name string, packets int) {
		clear(xdpLane) // lanes chosen in this phase, under this snapshot
		for range packets {
			i := r.IntN(len(flows))
			f := flows[i]
			n := r.IntN(testMTU - 80)
			if r.IntN(4) == 0 {
				n = r.IntN(20) // short: padded frames
			}
			pkt := f.packet(t, n, uint8(2+r.IntN(250)))
			before := seal.counters()
			verdict, out := run(t, p.DemuxProgram(), eth(pkt))
			if verdict != xdpTX {
				t.Fatalf("%s: %s flow %v: verdict %d, want XDP_TX", name, f.proto, f, verdict)
			}
			seal.check(t, out, before)
			to, want, ok := g.forward(kernelForward(pkt), 1)
			if !ok {
				t.Fatalf("%s: the Go demux did not forward a packet XDP sent", name)
			}
			checkEncap(t, out, pkt, to, want, cfg)
			if t.Failed() {
				t.FailNow()
			}
			xdpLane[i] = flowhash.LaneID(to.Addr().As4()[3] - 20)
			sent++
		}
		// An ICMP error about a flow goes to userspace; it must take the
		// lane of the half-flow it travels with. Under the symmetric
		// option that is the flow's own lane.
		if !cfg.Symmetric {
			return
		}
		for i, lane := range xdpLane {
			f := flows[i]
			if f.proto == layers.IPProtocolSCTP || f.proto == layers.IPProtocolICMPv4 || f.proto == layers.IPProtocolICMPv6 {
				continue
			}
			errPkt := icmpErrorAbout(t, f)
			if v, _ := run(t, p.DemuxProgram(), eth(errPkt)); v != xdpPass {
				t.Fatalf("ICMP error: verdict %d, want XDP_PASS", v)
			}
			to, _, ok := g.forward(kernelForward(errPkt), 1)
			if !ok {
				t.Fatalf("%s: the Go demux dropped an ICMP error", name)
			}
			if got := flowhash.LaneID(to.Addr().As4()[3] - 20); got != lane {
				t.Errorf("%s: ICMP error about %v went to lane %d, its flow takes lane %d in XDP", name, f, got, lane)
			}
			icmpChecked++
		}
	}
	phase("four lanes", 1500)
	publish([]flowhash.Lane{{ID: 1}, {ID: 2, State: flowhash.LaneDown}, {ID: 3}, {ID: 4}})
	phase("lane 2 down", 1500)
	publish([]flowhash.Lane{{ID: 1}, {ID: 2, State: flowhash.LaneDown}, {ID: 3}, {ID: 4}, {ID: 5}})
	phase("lane 5 added", 1500)
	publish([]flowhash.Lane{{ID: 1}, {ID: 2}, {ID: 3}, {ID: 4, State: flowhash.LaneDraining}, {ID: 5}})
	phase("lane 2 back, lane 4 draining", 1500)
	// A rotated secret's flow-hash key: the program gets it with the
	// table it built; pinned flows stay in both paths, new flows follow
	// the new key in both.
	cfg.Key = flowhash.Key{0x77, byte(cfg.HashMode)} // checkEncap's outer source port is the flow hash
	if err := sel.SetKey(cfg.Key); err != nil {
		t.Fatal(err)
	}
	if seal != nil {
		seal.rotate(0x32) // the same secret's GENEVE keys, as demux keys --previous makes them
	}
	if err := p.Publish(sel.Snapshot(), seal.targets(testTargets(all...))); err != nil {
		t.Fatal(err)
	}
	for range 400 {
		flows = append(flows, randFlow(r))
	}
	phase("new flow-hash key", 3000)
	t.Logf("%d packets of %d flows: same lane and identical GENEVE frames (sealed %v); %d ICMP errors took their flow's lane", sent, len(flows), cfg.Seal, icmpChecked)
}

// icmpErrorAbout is the ICMP error a host on this side sends about a
// packet of f's reverse half (from the remote host to it): the error
// travels toward the remote host, with f.
func icmpErrorAbout(t testing.TB, f flow) []byte {
	rev := flow{v6: f.v6, src: f.dst, dst: f.src, proto: f.proto, sport: f.dport, dport: f.sport}
	quoted := rev.packet(t, 0, 64)
	if f.v6 {
		ip := ip6(f.src, f.dst, layers.IPProtocolICMPv6, 64)
		ic := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(1, 4)}
		ic.SetNetworkLayerForChecksum(ip)
		return serialize(t, ip, ic, gopacket.Payload(append([]byte{0, 0, 0, 0}, quoted[:48]...)))
	}
	return serialize(t, ip4(f.src, f.dst, layers.IPProtocolICMPv4, 64),
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(3, 3)}, gopacket.Payload(quoted[:28]))
}

// FuzzXDPParity drives the program with arbitrary packets behind an
// Ethernet header to us, through BPF_PROG_TEST_RUN: it must pass up or
// send, and every packet it sends is one the Go demux sends to the same
// gateway in a byte-identical GENEVE frame (fed what the kernel would
// put in the TUN: the packet cut to its IP length, TTL minus one). A
// packet the program sends is also a whole one: its IP length fits the
// frame. A sealing program gets each input too: same verdict, a frame
// the gateway opens, identical to the sealing Go demux's. And the
// hand-over ledger: a program with no lanes yet passes up, counted, each
// packet its parse takes whole; the Go side (Program.Finished) counts
// the same packets, as the kernel forwards them, in the same bucket.
func FuzzXDPParity(f *testing.F) {
	for _, seed := range [][]byte{
		tcp4(f, 1000, 80, 100), udp4(f, 53, 5353, 0), tcp6(f, 443, 40000, 1200), udp6(f, 1, 2, 10),
		echo4(f, 7), echo6(f, 9), unreach4(f), tooBig6(f), frag4(f, 8, true), frag6(f), options4(f), hopByHop6(f), gre4(f),
		withTTL(udp4(f, 9, 9, 8), 1), tcp4(f, 1, 2, 0)[:30], {0x45}, {0x60, 0, 0, 0},
	} {
		f.Add(seed)
	}
	cfg := Config{Key: testKey, Symmetric: true}
	sealedCfg := cfg
	sealedCfg.Seal, sealedCfg.Sender = true, testSender
	p, ps := loadTest(f, cfg), loadTest(f, sealedCfg)
	counting := loadTest(f, cfg) // never published: everything it takes whole, it passes up and counts
	seal := newTestSeal(ps, 0x44, 1, 2, 3)
	sel, sels := newSelector(f, cfg, 1, 2, 3), newSelector(f, cfg, 1, 2, 3)
	g, gs := newGoDemux(f, sel, nil, 1, 2, 3), newGoDemux(f, sels, seal, 1, 2, 3)
	if err := p.Publish(sel.Snapshot(), testTargets(1, 2, 3)); err != nil {
		f.Fatal(err)
	}
	if err := ps.Publish(sels.Snapshot(), seal.targets(testTargets(1, 2, 3))); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, pkt []byte) {
		if len(pkt) > testMTU {
			return // the program passes those up; the kernel answers them
		}
		frame := eth(pkt) // padded to Ethernet's minimum, as on a wire
		checkLedgerParity(t, counting, frame)
		verdict, out := run(t, p.DemuxProgram(), frame)
		before := seal.counters()
		sealedVerdict, sealedOut := run(t, ps.DemuxProgram(), frame)
		if sealedVerdict != verdict {
			t.Fatalf("verdict %d, sealing %d, for % x", verdict, sealedVerdict, pkt)
		}
		switch verdict {
		case xdpPass:
			return
		case xdpTX:
		default:
			t.Fatalf("verdict %d for % x", verdict, pkt)
		}
		n := ipLength(frame[14:])
		if n < 20 || n > len(frame)-14 {
			t.Fatalf("sent a packet whose IP length %d does not fit its %d bytes: % x", n, len(frame)-14, pkt)
		}
		inner := frame[14 : 14+n]
		to, want, ok := g.forward(kernelForward(inner), 1)
		if !ok {
			t.Fatalf("the program sent what the Go demux drops: % x", inner)
		}
		checkEncap(t, out, inner, to, want, cfg)
		seal.check(t, sealedOut, before)
		to, want, ok = gs.forward(kernelForward(inner), 1)
		if !ok {
			t.Fatalf("the sealing program sent what the sealing Go demux drops: % x", inner)
		}
		checkEncap(t, sealedOut, inner, to, want, sealedCfg)
	})
}

// checkLedgerParity runs frame through a program that counts all it
// takes whole in the ledger, and checks that Finished counts the packet
// the kernel forwards from it (if it does) in the same bucket, or not at
// all if the program did not.
func checkLedgerParity(t *testing.T, p *Program, frame []byte) {
	t.Helper()
	n := ipLength(frame[14:])
	if n < 20 || n > len(frame)-14 || !kernelForwards(frame[14:14+n]) {
		return
	}
	before := make([]uint64, handoverBuckets)
	for b := range before {
		before[b] = p.ledgerWord(b).Load()
	}
	if v, _ := run(t, p.DemuxProgram(), frame); v != xdpPass {
		t.Fatalf("a program with no lanes: verdict %d", v)
	}
	counted := -1
	for b := range before {
		switch d := p.ledgerWord(b).Load() - before[b]; {
		case d == 1 && counted < 0:
			counted = b
		case d != 0:
			t.Fatalf("the program counted %d in bucket %d (and bucket %d)", d, b, counted)
		}
	}
	goBucket, goCounts := p.ledgerBucket(kernelForward(frame[14 : 14+n]))
	switch {
	case goCounts != (counted >= 0):
		t.Fatalf("the program counted it: %v, Finished counts it: %v, for % x", counted >= 0, goCounts, frame[14:14+n])
	case goCounts && goBucket != counted:
		t.Fatalf("the program counted it in bucket %d, Finished in %d, for % x", counted, goBucket, frame[14:14+n])
	}
}

// kernelForwards reports whether the kernel's IP input and forwarding
// pass pkt on (to the TUN), as far as its headers decide: a valid IPv4
// header and checksum, a length within the packet, a TTL or hop limit
// above 1.
func kernelForwards(pkt []byte) bool {
	switch pkt[0] >> 4 {
	case 4:
		ihl := int(pkt[0]&0xf) * 4
		if ihl < 20 || len(pkt) < ihl || ipLength(pkt) < ihl || pkt[8] <= 1 {
			return false
		}
		var sum uint32
		for i := 0; i < ihl; i += 2 {
			sum += uint32(binary.BigEndian.Uint16(pkt[i:]))
		}
		for sum > 0xffff {
			sum = sum&0xffff + sum>>16
		}
		return sum == 0xffff
	case 6:
		return len(pkt) >= 40 && pkt[7] > 1
	}
	return false
}

// ipLength is the length an IP packet's header says it has (0 if it
// has no version the demux knows or is too short to say).
func ipLength(pkt []byte) int {
	switch {
	case len(pkt) >= 20 && pkt[0]>>4 == 4:
		return int(binary.BigEndian.Uint16(pkt[2:]))
	case len(pkt) >= 40 && pkt[0]>>4 == 6:
		return 40 + int(binary.BigEndian.Uint16(pkt[4:]))
	}
	return 0
}
