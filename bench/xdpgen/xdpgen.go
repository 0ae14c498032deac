// Package xdpgen sends UDP test frames out of an interface as fast as the
// kernel can hand them over: a small XDP program (gen.c) run through
// BPF_PROG_TEST_RUN in live-frames mode (Linux 5.18+), the technique of
// xdp-tools' xdp-trafficgen. bench-xdp uses it to offer the demux more
// packets per second than iperf3's single sending thread can (about 0.16
// Mpps here, whatever the packet size), so the figures measure the demux.
//
// Frames leave the interface as if the driver had sent them with XDP_TX; on
// a veth they arrive only where the peer runs an XDP program (the same
// kernel fact as the demux's). Each frame is one IPv4/UDP packet to the
// discard port, its source port stepped over Flows values.
package xdpgen

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/clusterpeer/clusterpeer/dataplane/packet"
)

// DiscardPort is the frames' destination port (RFC 863): the bench's sink
// counts and drops what arrives for it.
const DiscardPort = 9

// Frame describes the test frame.
type Frame struct {
	SrcMAC, DstMAC net.HardwareAddr
	Src, Dst       netip.Addr // IPv4
	Size           int        // IP packet size in bytes, 28 to 9000
}

// Bytes is the Ethernet frame: IPv4 (DF, TTL 64, checksummed), UDP to
// DiscardPort with a zero checksum (allowed over IPv4, so stepping the
// source port needs no checksum update), zero payload.
func (f Frame) Bytes() ([]byte, error) {
	if !f.Src.Is4() || !f.Dst.Is4() {
		return nil, errors.New("xdpgen: source and destination must be IPv4 addresses")
	}
	if len(f.SrcMAC) != 6 || len(f.DstMAC) != 6 {
		return nil, errors.New("xdpgen: source and destination MACs must be 6 bytes")
	}
	if f.Size < 28 || f.Size > 9000 {
		return nil, fmt.Errorf("xdpgen: packet size %d: want 28 to 9000 bytes", f.Size)
	}
	b := make([]byte, packet.EthernetLen+f.Size)
	packet.PutEthernet(b, [6]byte(f.DstMAC), [6]byte(f.SrcMAC), packet.EtherTypeIPv4)
	packet.PutIPv4(b[packet.EthernetLen:], packet.IPv4Fields{TotalLen: f.Size, DF: true, Protocol: packet.ProtoUDP, Src: f.Src, Dst: f.Dst})
	packet.PutUDP(b[packet.EthernetLen+packet.IPv4MinLen:], 10000, DiscardPort, f.Size-packet.IPv4MinLen)
	return b, nil
}

// Generator sends one frame, its source port stepped, out of one interface.
type Generator struct {
	objs    genObjects
	frame   []byte
	ifindex int
}

// New loads the generator for frame out of the interface ifindex (in the
// caller's network namespace), its UDP source port running over flows
// values from portBase, paced at rate frames per second (0: every run
// sends; otherwise the runs not due drop their frame, so a paced Send
// needs many more runs than frames).
func New(frame []byte, ifindex int, portBase, flows uint16, rate float64) (*Generator, error) {
	if flows == 0 {
		return nil, errors.New("xdpgen: flows must be at least 1")
	}
	if rate < 0 || rate > 1e9 {
		return nil, fmt.Errorf("xdpgen: rate %g frames per second: want 0 (unpaced) up to 1e9", rate)
	}
	if int(portBase)+int(flows) > 65536 {
		return nil, fmt.Errorf("xdpgen: ports %d + %d flows run past 65535", portBase, flows)
	}
	spec, err := loadGen()
	if err != nil {
		return nil, fmt.Errorf("xdpgen: %w", err)
	}
	var headers [48]byte // __u64[6]: 42 bytes of headers, 6 unused
	if len(frame) < 42 {
		return nil, fmt.Errorf("xdpgen: a %d-byte frame has no room for Ethernet, IPv4 and UDP headers", len(frame))
	}
	copy(headers[:], frame[:42])
	if err := spec.Variables["headers"].Set(headers); err != nil {
		return nil, fmt.Errorf("xdpgen: %w", err)
	}
	if err := spec.Variables["port_base"].Set(portBase); err != nil {
		return nil, fmt.Errorf("xdpgen: %w", err)
	}
	if err := spec.Variables["flows"].Set(flows); err != nil {
		return nil, fmt.Errorf("xdpgen: %w", err)
	}
	var gap uint64
	if rate > 0 {
		gap = uint64(1e9 / rate)
	}
	if err := spec.Variables["gap_ns"].Set(gap); err != nil {
		return nil, fmt.Errorf("xdpgen: %w", err)
	}
	g := &Generator{frame: frame, ifindex: ifindex}
	if err := spec.LoadAndAssign(&g.objs, nil); err != nil {
		return nil, fmt.Errorf("xdpgen: load: %w", err)
	}
	return g, nil
}

// xdpMD is struct xdp_md, the context: the kernel takes the ingress
// interface from it and sends XDP_TX frames out of that interface.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// Send sends n frames (at least; a run the kernel interrupts is repeated)
// and returns when they are handed to the interface.
func (g *Generator) Send(n uint32) error {
	_, err := g.objs.XdpGen.Run(&ebpf.RunOptions{
		Data:    g.frame,
		Repeat:  n,
		Flags:   unix.BPF_F_TEST_XDP_LIVE_FRAMES,
		Context: xdpMD{DataEnd: uint32(len(g.frame)), IngressIfindex: uint32(g.ifindex)},
	})
	if err != nil {
		return fmt.Errorf("xdpgen: send (live frames need Linux 5.18+ and an interface that takes XDP frames): %w", err)
	}
	return nil
}

// Sent is how many frames the program has sent since New.
func (g *Generator) Sent() (uint64, error) {
	var n uint64
	err := g.objs.Sent.Get(&n)
	return n, err
}

// Close unloads the program.
func (g *Generator) Close() error { return g.objs.Close() }
