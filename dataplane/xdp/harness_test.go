//go:build linux

package xdp

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/clusterpeer/clusterpeer/dataplane/demux"
	"github.com/clusterpeer/clusterpeer/dataplane/geneveauth"
	"github.com/clusterpeer/clusterpeer/dataplane/packet"
	"github.com/clusterpeer/clusterpeer/flowhash"
)

// What the fixtures use: the demux's LAN interface is loopback (ifindex 1,
// which BPF_PROG_TEST_RUN accepts as the ingress interface), and the
// gateways are 10.1.0.2N on it.
var (
	ourMAC  = net.HardwareAddr{0x02, 0xd0, 0, 0, 0, 0x02}
	gwMAC   = func(l flowhash.LaneID) net.HardwareAddr { return net.HardwareAddr{0x02, 0x9a, 0, 0, 0, byte(l)} }
	ourAddr = netip.MustParseAddr("10.1.0.2")
	gwAddr  = func(l flowhash.LaneID) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, 0, 20 + byte(l)}), 6081)
	}
	remote  = []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16"), netip.MustParsePrefix("fd00:b::/64")}
	testKey = flowhash.Key{0: 0x42, 7: 0x17, 15: 0x99}
)

const (
	testVNI    = 4242
	testMTU    = 1420
	loIfindex  = 1
	testTable  = 1009 // a small prime keeps each Publish cheap
	xdpTX      = 3    // XDP_TX
	xdpPass    = 2
	frameExtra = 256 // room for the outer headers in DataOut
)

// loadTest loads the program or skips where the kernel or privileges
// cannot.
func loadTest(t testing.TB, cfg Config) *Program {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("loading XDP programs needs root (CAP_BPF, CAP_NET_ADMIN)")
	}
	if cfg.MTU == 0 {
		cfg.MTU = testMTU
	}
	if cfg.VNI == 0 {
		cfg.VNI = testVNI
	}
	if cfg.IngressMAC == nil {
		cfg.IngressMAC = ourMAC
	}
	if cfg.Remote == nil {
		cfg.Remote = remote
	}
	if cfg.TableSize == 0 {
		cfg.TableSize = testTable
	}
	if cfg.PinFlows == 0 {
		cfg.PinFlows = 1 << 16
	}
	p, err := Load(cfg)
	if errors.Is(err, ebpf.ErrNotSupported) {
		t.Skipf("kernel cannot load the XDP program: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	p.attached.Ifindex = loIfindex // as if attached to the fixtures' LAN
	return p
}

func testTargets(lanes ...flowhash.LaneID) []Target {
	var ts []Target
	for _, l := range lanes {
		ts = append(ts, Target{Lane: l, Ifindex: loIfindex, SrcMAC: ourMAC, DstMAC: gwMAC(l), Src: ourAddr, Dst: gwAddr(l)})
	}
	return ts
}

func newSelector(t testing.TB, cfg Config, lanes ...flowhash.LaneID) *flowhash.Selector {
	t.Helper()
	sel, err := flowhash.New(flowhash.Config{Key: cfg.Key, Mode: cfg.HashMode, Symmetric: cfg.Symmetric,
		TableSize: testTable, Pins: flowhash.PinConfig{Capacity: 1 << 16}})
	if err != nil {
		t.Fatal(err)
	}
	var ls []flowhash.Lane
	for _, l := range lanes {
		ls = append(ls, flowhash.Lane{ID: l})
	}
	if err := sel.SetLanes(ls); err != nil {
		t.Fatal(err)
	}
	return sel
}

// xdpMD is struct xdp_md, the context BPF_PROG_TEST_RUN takes.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// run runs prog on frame and returns the verdict and the frame it left.
func run(t testing.TB, prog *ebpf.Program, frame []byte) (uint32, []byte) {
	t.Helper()
	in := append([]byte(nil), frame...)
	opts := &ebpf.RunOptions{
		Data: in, DataOut: make([]byte, len(frame)+frameExtra),
		Context: xdpMD{DataEnd: uint32(len(in)), IngressIfindex: loIfindex},
	}
	ret, err := prog.Run(opts)
	if errors.Is(err, ebpf.ErrNotSupported) {
		t.Skipf("kernel cannot test-run XDP programs: %v", err)
	}
	if err != nil {
		t.Fatalf("test run: %v", err)
	}
	return ret, opts.DataOut
}

// eth puts an Ethernet header to us in front of an IP packet, padded to
// the 60-byte minimum as a NIC would.
func eth(pkt []byte) []byte {
	f := make([]byte, 14, 14+len(pkt)+46)
	copy(f[0:6], ourMAC)
	copy(f[6:12], net.HardwareAddr{0x02, 0xaa, 0, 0, 0, 0x10})
	typ := uint16(0x0800)
	if len(pkt) > 0 && pkt[0]>>4 == 6 {
		typ = 0x86dd
	}
	binary.BigEndian.PutUint16(f[12:14], typ)
	f = append(f, pkt...)
	for len(f) < 60 {
		f = append(f, 0)
	}
	return f
}

// serialize builds a packet with gopacket, lengths and checksums fixed.
func serialize(t testing.TB, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

// kernelForward is what the kernel does to a packet it routes into the
// userspace demux's TUN: TTL or hop limit minus one (ip_decrease_ttl's
// incremental checksum).
func kernelForward(pkt []byte) []byte {
	p := append([]byte(nil), pkt...)
	if p[0]>>4 == 6 {
		p[7]--
		return p
	}
	check := uint32(binary.LittleEndian.Uint16(p[10:12]))
	check += 0x0001 // htons(0x0100) as the kernel adds it, in memory order
	binary.LittleEndian.PutUint16(p[10:12], uint16(check+boolU32(check >= 0xffff)))
	p[8]--
	return p
}

// goDemux is the userspace demux with a capturing bind: what it sends to
// each gateway is what the XDP path must reproduce.
type goDemux struct {
	d    *demux.Demux
	bind *captureBind
}

type nopTUN struct{ tun.Device }

func (nopTUN) BatchSize() int { return 128 }
func (nopTUN) File() *os.File { return nil }

type captureBind struct {
	conn.Bind
	sent []sentFrame
}

type sentFrame struct {
	to    netip.AddrPort
	frame []byte
}

func (b *captureBind) BatchSize() int { return 128 }
func (b *captureBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	to := ep.(*conn.StdNetEndpoint).AddrPort
	for _, f := range bufs {
		b.sent = append(b.sent, sentFrame{to, append([]byte(nil), f...)})
	}
	return nil
}

func newGoDemux(t testing.TB, sel *flowhash.Selector, seal *testSeal, lanes ...flowhash.LaneID) *goDemux {
	t.Helper()
	b := &captureBind{}
	d, err := demux.New(nopTUN{}, b, demux.Config{Selector: sel, VNI: testVNI, MTU: testMTU, Remote: remote})
	if err != nil {
		t.Fatal(err)
	}
	var ts []demux.Target
	for _, l := range lanes {
		dt := demux.Target{ID: l, Endpoint: &conn.StdNetEndpoint{AddrPort: gwAddr(l)}, Addr: gwAddr(l)}
		if seal != nil {
			dt.Seal = seal.sealers[l]
		}
		ts = append(ts, dt)
	}
	d.SetTargets(ts)
	return &goDemux{d: d, bind: b}
}

// forward runs one packet (as the TUN would deliver it) through the Go
// demux; it returns where it went and the GENEVE frame, or ok false.
func (g *goDemux) forward(pkt []byte, now uint32) (netip.AddrPort, []byte, bool) {
	g.bind.sent = g.bind.sent[:0]
	buf := make([]byte, demux.Headroom+len(pkt))
	copy(buf[demux.Headroom:], pkt)
	g.d.Forward([][]byte{buf}, []int{len(pkt)}, now)
	if len(g.bind.sent) != 1 {
		return netip.AddrPort{}, nil, false
	}
	return g.bind.sent[0].to, g.bind.sent[0].frame, true
}

// testSeal is a sealing demux's side of the parity tests: each lane's
// userspace Sealer on the program's counter for the lane, as the demux
// wires them, and each gateway's Opener.
type testSeal struct {
	p       *Program
	sealers map[flowhash.LaneID]*geneveauth.Sealer
	openers map[flowhash.LaneID]*geneveauth.Opener
}

const testSender = 1 // a standby's sender number: the option carries it

func sealKey(l flowhash.LaneID, gen uint8) geneveauth.Key {
	return geneveauth.Key{byte(l), gen, 0xa5, 15: byte(l) ^ gen}
}

func newTestSeal(p *Program, gen uint8, lanes ...flowhash.LaneID) *testSeal {
	s := &testSeal{p: p, sealers: map[flowhash.LaneID]*geneveauth.Sealer{}, openers: map[flowhash.LaneID]*geneveauth.Opener{}}
	for _, l := range lanes {
		s.sealers[l] = geneveauth.NewSealerOn(sealKey(l, gen), gen, testSender, p.SealCounter(l), 1<<40+uint64(l)<<32)
		s.sealers[l].Remember(p.SealRecent(), uint16(l))
		s.openers[l] = geneveauth.NewOpener()
		s.openers[l].Add(testSender, gen, sealKey(l, gen))
	}
	return s
}

// rotate seals with generation gen's keys from now on; the gateways
// accept both.
func (s *testSeal) rotate(gen uint8) {
	for l, sl := range s.sealers {
		sl.SetKey(sealKey(l, gen), gen)
		s.openers[l].Add(testSender, gen, sealKey(l, gen))
	}
}

// targets gives ts the sealers' keys, as the map sync does.
func (s *testSeal) targets(ts []Target) []Target {
	if s == nil {
		return ts
	}
	for i := range ts {
		k, id := s.sealers[ts[i].Lane].Key()
		ts[i].Seal = &SealKey{Key: k, ID: id}
	}
	return ts
}

// counters is each lane's next seal counter in the program's map.
func (s *testSeal) counters() map[flowhash.LaneID]uint64 {
	if s == nil {
		return nil
	}
	m := map[flowhash.LaneID]uint64{}
	for l := range s.sealers {
		m[l] = s.p.SealCounter(l).Load()
	}
	return m
}

// check holds a frame the program sent to the seal: it took the next
// counter of its lane and no other, the sealers' key ID is in it, and
// the lane's gateway opens it, and the program noted its tag where the
// lane's sealer looks (an ICMP error quoting the frame is believed).
// Then it sets the lane's counter back, so
// that the Go demux seals the same packet with the same counter and the
// frames can be compared byte for byte.
func (s *testSeal) check(t testing.TB, out []byte, before map[flowhash.LaneID]uint64) {
	t.Helper()
	if s == nil {
		return
	}
	e := decodeEncap(t, out)
	lane := flowhash.LaneID(e.ip.DstIP.To4()[3] - 20)
	h := packet.Geneve(e.geneve)
	if h.Len() != geneveauth.HeaderLen {
		t.Fatalf("lane %d: GENEVE header of %d bytes, want %d (sealed)", lane, h.Len(), geneveauth.HeaderLen)
	}
	c := binary.BigEndian.Uint64(e.geneve[packet.GeneveLen+8:])
	for l, was := range before {
		want := was
		if l == lane {
			want++
		}
		if now := s.p.SealCounter(l).Load(); now != want {
			t.Fatalf("sent to lane %d: lane %d's counter went %d -> %d", lane, l, was, now)
		}
	}
	if c != before[lane] {
		t.Fatalf("lane %d: frame counter %d, want the lane's next %d", lane, c, before[lane])
	}
	if id := e.geneve[packet.GeneveLen+5]; id != s.sealers[lane].KeyID() {
		t.Fatalf("lane %d: key ID %#02x, the sealer's %#02x", lane, id, s.sealers[lane].KeyID())
	}
	if err := s.openers[lane].Open(e.geneve); err != nil {
		t.Fatalf("lane %d's gateway refuses the program's frame: %v", lane, err)
	}
	if !s.sealers[lane].Sent(e.geneve[:geneveauth.HeaderLen]) {
		t.Fatalf("lane %d: the program's frame %d is not in the tags it shares with userspace", lane, c)
	}
	s.p.SealCounter(lane).Store(c)
}

// encapsulated is an XDP_TX'd frame taken apart with gopacket, which
// knows GENEVE independently of this project.
type encapsulated struct {
	eth    *layers.Ethernet
	ip     *layers.IPv4
	udp    *layers.UDP
	geneve []byte // the UDP payload: GENEVE header and inner packet
}

func decodeEncap(t testing.TB, out []byte) encapsulated {
	t.Helper()
	p := gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default)
	var e encapsulated
	var ok bool
	if e.eth, ok = p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet); !ok {
		t.Fatalf("no Ethernet in % x", out)
	}
	if e.ip, ok = p.Layer(layers.LayerTypeIPv4).(*layers.IPv4); !ok {
		t.Fatalf("no outer IPv4 in % x", out)
	}
	if e.udp, ok = p.Layer(layers.LayerTypeUDP).(*layers.UDP); !ok {
		t.Fatalf("no outer UDP in % x", out)
	}
	if _, ok = p.Layer(layers.LayerTypeGeneve).(*layers.Geneve); !ok {
		t.Fatalf("gopacket finds no GENEVE in % x", out)
	}
	e.geneve = e.udp.Payload
	return e
}
