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

func boolU32(b bool) uint32 {
	if b {
		return 1
	}
	return 0
}

// goDemux is the userspace demux with a capturing bind: what it sends to
// each gateway is what the XDP path must reproduce.
type goDemux struct {
	d    *demux.Demux
	bind *captureBind
}

type nopTUN struct{ tun.Device }

func (nopTUN) BatchSize() int { return 128 }

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

func newGoDemux(t testing.TB, sel *flowhash.Selector, lanes ...flowhash.LaneID) *goDemux {
	t.Helper()
	b := &captureBind{}
	d, err := demux.New(nopTUN{}, b, demux.Config{Selector: sel, VNI: testVNI, MTU: testMTU, Remote: remote})
	if err != nil {
		t.Fatal(err)
	}
	var ts []demux.Target
	for _, l := range lanes {
		ts = append(ts, demux.Target{ID: l, Endpoint: &conn.StdNetEndpoint{AddrPort: gwAddr(l)}, Addr: gwAddr(l)})
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
