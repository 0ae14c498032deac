package gateway

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/clusterpeer/clusterpeer/dataplane/packet"
)

// TestGeneveSocketBound: the GENEVE socket takes only datagrams to its
// own address (127.0.0.2 is this host's too, on the same port, and
// refused by the kernel, not by a check), reads them in batches with
// their senders, splits a coalesced (GSO-sent, GRO-read) batch back into
// its datagrams in order, and marks one longer than a frame buffer
// (negative size) rather than cutting it. With GRO and without.
func TestGeneveSocketBound(t *testing.T) {
	for _, gro := range []bool{true, false} {
		t.Run(fmt.Sprintf("gro=%v", gro), func(t *testing.T) { testGeneveSocket(t, gro) })
	}
}

func testGeneveSocket(t *testing.T, tryGRO bool) {
	s, err := listenGeneveGRO(netip.MustParseAddrPort("127.0.0.1:0"), 128, tryGRO)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if tryGRO && !s.GRO() {
		t.Log("the kernel refused UDP_GRO: both runs read without it")
	}
	addr := s.LocalAddr().(*net.UDPAddr).AddrPort()
	other := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), addr.Port())

	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.WriteToUDPAddrPort([]byte("to another address"), other)
	c.WriteToUDPAddrPort([]byte("one"), addr)

	// Ten 100-byte datagrams in one GSO send: the kernel may hand them to
	// a GRO socket as one read.
	var seg [1000]byte
	for i := range seg {
		seg[i] = byte(i / 100)
	}
	sendGSO(t, c, seg[:], 100, addr)
	c.WriteToUDPAddrPort(make([]byte, 301), addr) // one byte over a frame buffer
	c.WriteToUDPAddrPort([]byte("last"), addr)

	b := &batch{bufs: make([][]byte, 128), dgrams: make([][]byte, 128), srcs: make([]netip.AddrPort, 128)}
	for i := range b.bufs {
		b.bufs[i] = make([]byte, 300)
	}
	var got []string
	s.SetReadDeadline(time.Now().Add(2 * time.Second))
	for len(got) < 13 {
		n, err := s.receive(b)
		if err != nil {
			t.Fatalf("after %d datagrams: %v", len(got), err)
		}
		for i, d := range b.dgrams[:n] {
			if b.srcs[i] != c.LocalAddr().(*net.UDPAddr).AddrPort() {
				t.Errorf("sender %v", b.srcs[i])
			}
			if d == nil || len(d) > 300 { // what Device drops (frameLen)
				got = append(got, "oversize")
				continue
			}
			got = append(got, string(d))
		}
	}
	if got[0] != "one" {
		t.Fatalf("first datagram %q: the one to another address got in, or order broke", got[0])
	}
	for i, d := range got[1:11] {
		if d != string(seg[i*100:(i+1)*100]) {
			t.Errorf("segment %d: % x...", i, d[:min(len(d), 4)])
		}
	}
	if got[11] != "oversize" || got[12] != "last" {
		t.Errorf("after the segments: %q, %q; want oversize, last", got[11], got[12])
	}
	s.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, err := s.receive(b); err == nil {
		t.Errorf("%d more datagrams: %q", n, b.dgrams[0])
	}
	t.Logf("gro: %v", s.GRO())
}

// sendGSO sends data as datagrams of seg bytes in one UDP_SEGMENT send,
// or one by one where the kernel cannot.
func sendGSO(t testing.TB, c *net.UDPConn, data []byte, seg int, to netip.AddrPort) {
	t.Helper()
	oob := make([]byte, unix.CmsgSpace(2))
	h := (*unix.Cmsghdr)(unsafeCmsg(oob))
	h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(oob[unix.CmsgLen(0):], uint16(seg))
	if _, _, err := c.WriteMsgUDPAddrPort(data, oob, to); err != nil {
		t.Logf("GSO send: %v; sending %d datagrams instead", err, len(data)/seg)
		for i := 0; i < len(data); i += seg {
			c.WriteToUDPAddrPort(data[i:min(i+seg, len(data))], to)
		}
	}
}

func unsafeCmsg(b []byte) unsafe.Pointer { return unsafe.Pointer(&b[0]) }

// TestDeviceReadsGeneveSocket: a Device over a real GENEVE socket hands
// WireGuard every inner packet of a coalesced batch, in order, straight
// from the socket's reads, and drops a datagram longer than a frame as
// oversize; with GRO and without.
func TestDeviceReadsGeneveSocket(t *testing.T) {
	for _, gro := range []bool{true, false} {
		t.Run(fmt.Sprintf("gro=%v", gro), func(t *testing.T) {
			d, s, c, to := deviceOnSocket(t, gro)

			var batch []byte
			for seq := range byte(40) {
				batch = append(batch, frame(4242, packet.ProtoIPv4, false, ping(seq))...)
			}
			sendGSO(t, c, batch, len(batch)/40, to)
			c.WriteToUDPAddrPort(make([]byte, d.frameLen+1), to)
			c.WriteToUDPAddrPort(frame(4242, packet.ProtoIPv4, false, ping(99)), to)

			bufs := make([][]byte, d.BatchSize())
			for i := range bufs {
				bufs[i] = make([]byte, 2048)
			}
			sizes := make([]int, len(bufs))
			var got []byte
			deadline := time.Now().Add(5 * time.Second)
			for len(got) < 41 && time.Now().Before(deadline) {
				n, err := d.Read(bufs, sizes, 16)
				if err != nil {
					t.Fatal(err)
				}
				for i := range n {
					p := bufs[i][16 : 16+sizes[i]]
					if len(p) != len(ipv4Ping) {
						t.Fatalf("packet %d: % x", len(got), p)
					}
					got = append(got, p[27])
				}
			}
			want := make([]byte, 41)
			for i := range 40 {
				want[i] = byte(i)
			}
			want[40] = 99
			if !bytes.Equal(got, want) {
				t.Fatalf("sequence numbers %v, want %v", got, want)
			}
			if o := d.C.Drops[DropOversize].Load(); o != 1 {
				t.Errorf("oversize drops %d, want 1", o)
			}
			t.Logf("gro: %v", s.GRO())
		})
	}
}

// deviceOnSocket is a Device over a real GENEVE socket on loopback that
// lets in 127.0.0.1, and a socket there to send it frames from; closed
// at the test's end.
func deviceOnSocket(tb testing.TB, gro bool) (*Device, *geneveSocket, *net.UDPConn, netip.AddrPort) {
	tb.Helper()
	s, err := listenGeneveGRO(netip.MustParseAddrPort("127.0.0.1:0"), 128, gro)
	if err != nil {
		tb.Fatal(err)
	}
	lo := netip.MustParseAddr("127.0.0.1")
	d := newDevice(tuntest.NewChannelTUN().TUN(), []geneveReceive{s.receive}, s.Close,
		Ingress{Sources: []netip.Addr{lo}, VNI: 4242}, 1420, slog.Default())
	tb.Cleanup(func() { d.Close() })
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return d, s, c, s.LocalAddr().(*net.UDPAddr).AddrPort()
}

// BenchmarkDeviceGeneve: GENEVE frames of 1,400-byte packets, sent 40 to
// a segmented send (what fits in 64 KiB), through a Device over a real
// GENEVE socket into WireGuard's buffers; per packet, the whole path a
// gateway's encrypting side has before the cipher.
func BenchmarkDeviceGeneve(b *testing.B) {
	d, _, c, to := deviceOnSocket(b, true)
	inner := make([]byte, 1400)
	copy(inner, ipv4Ping)
	binary.BigEndian.PutUint16(inner[2:], 1400)
	one := frame(4242, packet.ProtoIPv4, false, inner)
	var run []byte
	const perSend = 40
	for range perSend {
		run = append(run, one...)
	}
	bufs := make([][]byte, d.BatchSize())
	for i := range bufs {
		bufs[i] = make([]byte, 65536) // wireguard-go's buffers
	}
	sizes := make([]int, len(bufs))
	b.SetBytes(1400)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i += perSend {
		sendGSO(b, c, run, len(one), to)
		for got := 0; got < perSend; {
			n, err := d.Read(bufs, sizes, 16)
			if err != nil {
				b.Fatal(err)
			}
			got += n
		}
	}
}
