package gateway

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
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

	bufs := make([][]byte, 128)
	for i := range bufs {
		bufs[i] = make([]byte, 300)
	}
	sizes := make([]int, len(bufs))
	srcs := make([]netip.AddrPort, len(bufs))
	var got []string
	s.SetReadDeadline(time.Now().Add(2 * time.Second))
	for len(got) < 13 {
		n, err := s.receive(bufs, sizes, srcs)
		if err != nil {
			t.Fatalf("after %d datagrams: %v", len(got), err)
		}
		for i := range n {
			if srcs[i] != c.LocalAddr().(*net.UDPAddr).AddrPort() {
				t.Errorf("sender %v", srcs[i])
			}
			if sizes[i] < 0 {
				got = append(got, "oversize")
				continue
			}
			got = append(got, string(bufs[i][:sizes[i]]))
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
	if n, err := s.receive(bufs, sizes, srcs); err == nil {
		t.Errorf("%d more datagrams: %q", n, bufs[0][:sizes[0]])
	}
	t.Logf("gro: %v", s.GRO())
}

// sendGSO sends data as datagrams of seg bytes in one UDP_SEGMENT send,
// or one by one where the kernel cannot.
func sendGSO(t *testing.T, c *net.UDPConn, data []byte, seg int, to netip.AddrPort) {
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
