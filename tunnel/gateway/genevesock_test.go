package gateway

import (
	"bytes"
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
// their senders, and splits a coalesced (GSO-sent, GRO-read) batch back
// into its datagrams in order.
func TestGeneveSocketBound(t *testing.T) {
	s, err := listenGeneve(netip.MustParseAddrPort("127.0.0.1:0"), 128)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	addr := s.conn.LocalAddr().(*net.UDPAddr).AddrPort()
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
	oob := make([]byte, unix.CmsgSpace(2))
	h := (*unix.Cmsghdr)(unsafeCmsg(oob))
	h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	oob[unix.CmsgLen(0)], oob[unix.CmsgLen(0)+1] = 100, 0 // little-endian 100
	if _, _, err := c.WriteMsgUDPAddrPort(seg[:], oob, addr); err != nil {
		t.Logf("GSO send: %v; sending ten datagrams instead", err)
		for i := range 10 {
			c.WriteToUDPAddrPort(seg[i*100:(i+1)*100], addr)
		}
	}

	bufs := make([][]byte, 128)
	for i := range bufs {
		bufs[i] = make([]byte, 65535)
	}
	sizes := make([]int, len(bufs))
	srcs := make([]netip.Addr, len(bufs))
	var got [][]byte
	s.conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	for len(got) < 11 {
		n, err := s.receive(bufs, sizes, srcs)
		if err != nil {
			t.Fatalf("after %d datagrams: %v", len(got), err)
		}
		for i := range n {
			if srcs[i] != netip.MustParseAddr("127.0.0.1") {
				t.Errorf("sender %v", srcs[i])
			}
			got = append(got, append([]byte(nil), bufs[i][:sizes[i]]...))
		}
	}
	if string(got[0]) != "one" {
		t.Fatalf("first datagram %q: the one to another address got in, or order broke", got[0])
	}
	for i, d := range got[1:] {
		if !bytes.Equal(d, seg[i*100:(i+1)*100]) {
			t.Errorf("segment %d: % x...", i, d[:min(len(d), 4)])
		}
	}
	s.conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, err := s.receive(bufs, sizes, srcs); err == nil {
		t.Errorf("%d more datagrams: %q", n, bufs[0][:sizes[0]])
	}
	t.Logf("gro: %v", s.gro)
}

func unsafeCmsg(b []byte) unsafe.Pointer { return unsafe.Pointer(&b[0]) }
