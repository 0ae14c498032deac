package xdpgen

import (
	"bytes"
	"errors"
	"net/netip"
	"os"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/clusterpeer/clusterpeer/dataplane/packet"
)

const (
	xdpDrop = 1
	xdpPass = 2
)

var (
	sinkHostA, sinkHostB = netip.MustParseAddr("10.8.0.10"), netip.MustParseAddr("10.9.0.10")
	sinkDemux, sinkGW    = netip.MustParseAddr("10.9.0.1"), netip.MustParseAddr("10.9.0.21")
)

// ipPacket is an IPv4 packet of proto from a to b: a UDP header (TCP's
// starts alike, with the ports) and payload.
func ipPacket(proto uint8, a, b netip.Addr, sport, dport uint16, payload []byte) []byte {
	p := make([]byte, packet.IPv4MinLen+packet.UDPLen+len(payload))
	packet.PutIPv4(p, packet.IPv4Fields{TotalLen: len(p), Protocol: proto, Src: a, Dst: b})
	d := p[packet.IPv4MinLen:]
	copy(d[packet.UDPLen:], payload)
	packet.PutUDP(d, sport, dport, len(d)).SetChecksum(d, packet.PseudoHeaderSum(a, b, proto, len(d)))
	return p
}

// geneveFrame wraps an inner packet as a gateway receives it from the
// demux: Ethernet, IPv4, UDP to 6081, GENEVE with optWords words of options.
func geneveFrame(inner []byte, optWords int) []byte {
	g := make([]byte, packet.GeneveLen+4*optWords)
	if _, err := packet.PutGeneveWithOptions(g, 4242, packet.ProtoIPv4, false, make([]byte, 4*optWords)); err != nil {
		panic(err) // zero-length TLVs always encode
	}
	return ethFrame(ipPacket(packet.ProtoUDP, sinkDemux, sinkGW, 0xc123, packet.GenevePort, append(g, inner...)))
}

// ethFrame puts an Ethernet header in front of an IPv4 packet, padded to
// the 60-byte minimum as a NIC would.
func ethFrame(pkt []byte) []byte {
	f := make([]byte, packet.EthernetLen, packet.EthernetLen+len(pkt)+46)
	packet.PutEthernet(f, [6]byte{2, 0, 0, 0, 0, 0x21}, [6]byte{2, 0, 0, 0, 0, 1}, packet.EtherTypeIPv4)
	f = append(f, pkt...)
	for len(f) < 60 {
		f = append(f, 0)
	}
	return f
}

// TestGeneveSink covers the benchmark's stand-in gateway (sink.c): it
// strips GENEVE without options or with a sealed frame's 6 words, and drops what is for the discard port
// (the generator's frames, which bench-xdp counts as XDP drops), plain or
// decapsulated; everything else goes to the kernel.
func TestGeneveSink(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("loading XDP programs needs root (CAP_BPF, CAP_NET_ADMIN)")
	}
	var objs sinkObjects
	if err := loadSinkObjects(&objs, nil); err != nil {
		t.Fatalf("load sink: %v", err)
	}
	t.Cleanup(func() { objs.Close() })
	iperf := ipPacket(packet.ProtoUDP, sinkHostA, sinkHostB, 40000, 5201, make([]byte, 100))
	discard := ipPacket(packet.ProtoUDP, sinkHostA, sinkHostB, 40000, DiscardPort, make([]byte, 22))
	tcp9 := ipPacket(packet.ProtoTCP, sinkHostA, sinkHostB, 40000, DiscardPort, make([]byte, 22))
	for _, c := range []struct {
		name    string
		frame   []byte
		verdict uint32
		out     []byte // the frame handed to the kernel, if passed
	}{
		{"geneve, udp to 5201: stripped", geneveFrame(iperf, 0), xdpPass, ethFrame(iperf)},
		{"geneve, udp to the discard port: dropped", geneveFrame(discard, 0), xdpDrop, nil},
		{"plain udp to the discard port: dropped", ethFrame(discard), xdpDrop, nil},
		{"plain tcp to port 9: passed as is", ethFrame(tcp9), xdpPass, ethFrame(tcp9)},
		{"geneve, sealed (6 option words): stripped", geneveFrame(iperf, 6), xdpPass, ethFrame(iperf)},
		{"geneve with other options: passed as is", geneveFrame(iperf, 2), xdpPass, geneveFrame(iperf, 2)},
		{"runt: passed", ethFrame(nil)[:20], xdpPass, ethFrame(nil)[:20]},
	} {
		opts := &ebpf.RunOptions{Data: append([]byte(nil), c.frame...), DataOut: make([]byte, len(c.frame)+64)}
		verdict, err := objs.XdpGeneveSink.Run(opts)
		if errors.Is(err, ebpf.ErrNotSupported) {
			t.Skipf("kernel cannot test-run XDP programs: %v", err)
		}
		if err != nil {
			t.Fatalf("%s: test run: %v", c.name, err)
		}
		if verdict != c.verdict {
			t.Errorf("%s: verdict %d, want %d", c.name, verdict, c.verdict)
			continue
		}
		if c.out == nil {
			continue
		}
		// A stripped frame keeps the outer MACs.
		want := append([]byte(nil), c.out...)
		copy(want[:12], c.frame[:12])
		if out := opts.DataOut; len(out) < len(want) || !bytes.Equal(out[:len(want)], want) {
			t.Errorf("%s: frame\n got % x\nwant % x", c.name, out, want)
		}
	}
}
