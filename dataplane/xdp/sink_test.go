//go:build linux

package xdp

import (
	"bytes"
	"encoding/binary"
	"os"
	"testing"

	"github.com/clusterpeer/clusterpeer/dataplane/packet"
)

const xdpDrop = 1

// geneveFrame wraps an inner IPv4 packet as a lane gateway receives it from
// the demux: outer Ethernet + IPv4 + UDP to 6081 + GENEVE (optlen words of
// options).
func geneveFrame(inner []byte, optlen int) []byte {
	outer := make([]byte, 20+8+8+4*optlen)
	outer[0], outer[8], outer[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(outer[2:4], uint16(len(outer)+len(inner)))
	copy(outer[12:16], []byte{10, 9, 0, 1})
	copy(outer[16:20], []byte{10, 9, 0, 21})
	binary.BigEndian.PutUint16(outer[20:22], 0xc123)
	binary.BigEndian.PutUint16(outer[22:24], 6081)
	binary.BigEndian.PutUint16(outer[24:26], uint16(len(outer)-20+len(inner)))
	if _, err := packet.PutGeneveWithOptions(outer[28:], testVNI, 0x0800, false, make([]byte, 4*optlen)); err != nil {
		panic(err) // options of zero-length TLVs always encode
	}
	return eth(append(outer, inner...))
}

// TestGeneveSink covers the benchmark's stand-in gateway (sink.c): it
// strips GENEVE without options, and drops what is for the discard port
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
	iperf := udp4(t, 40000, 5201, 100)
	for _, c := range []struct {
		name    string
		frame   []byte
		verdict uint32
		out     []byte // the frame handed to the kernel, if passed
	}{
		{"geneve, udp to 5201: stripped", geneveFrame(iperf, 0), xdpPass, eth(iperf)},
		{"geneve, udp to the discard port: dropped", geneveFrame(udp4(t, 40000, 9, 22), 0), xdpDrop, nil},
		{"plain udp to the discard port: dropped", eth(udp4(t, 40000, 9, 22)), xdpDrop, nil},
		{"plain tcp to port 9: passed as is", eth(tcp4(t, 40000, 9, 10)), xdpPass, eth(tcp4(t, 40000, 9, 10))},
		{"geneve with options: passed as is", geneveFrame(iperf, 2), xdpPass, geneveFrame(iperf, 2)},
		{"runt: passed", eth(nil)[:20], xdpPass, eth(nil)[:20]},
	} {
		verdict, out := run(t, objs.XdpGeneveSink, c.frame)
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
		if len(out) < len(want) || !bytes.Equal(out[:len(want)], want) {
			t.Errorf("%s: frame\n got % x\nwant % x", c.name, out, want)
		}
	}
}
