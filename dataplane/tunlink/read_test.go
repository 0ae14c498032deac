package tunlink

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/clusterpeer/clusterpeer/dataplane/packet"
	"github.com/clusterpeer/clusterpeer/dataplane/udpbatch"
)

const testOffset = 32 // the demux's headroom

// segment is one packet as the wire carries it, built by gopacket with
// full checksums: the super-packet's first, with the given payload, IPv4
// ID, TCP sequence number and flags.
func segment(t testing.TB, v6, tcp bool, payload []byte, id uint16, seq uint32, fin, psh bool) []byte {
	t.Helper()
	var ip gopacket.NetworkLayer
	var nl gopacket.SerializableLayer
	if v6 {
		l := &layers.IPv6{Version: 6, HopLimit: 64, SrcIP: netip.MustParseAddr("fd00:1::10").AsSlice(), DstIP: netip.MustParseAddr("fd00:2::10").AsSlice()}
		l.NextHeader = layers.IPProtocolUDP
		if tcp {
			l.NextHeader = layers.IPProtocolTCP
		}
		ip, nl = l, l
	} else {
		l := &layers.IPv4{Version: 4, TTL: 64, Id: id, Flags: layers.IPv4DontFragment, SrcIP: []byte{10, 1, 0, 10}, DstIP: []byte{10, 2, 0, 10}}
		l.Protocol = layers.IPProtocolUDP
		if tcp {
			l.Protocol = layers.IPProtocolTCP
		}
		ip, nl = l, l
	}
	var l4 gopacket.SerializableLayer
	if tcp {
		l := &layers.TCP{SrcPort: 40000, DstPort: 5201, Seq: seq, Ack: 7, ACK: true, FIN: fin, PSH: psh, Window: 500}
		l.SetNetworkLayerForChecksum(ip)
		l4 = l
	} else {
		l := &layers.UDP{SrcPort: 40000, DstPort: 443}
		l.SetNetworkLayerForChecksum(ip)
		l4 = l
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, nl, l4, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// superPacket is what a TUN with offloads hands over for segments of seg
// payload bytes: the virtio header, then one packet with all the payload
// (lengths as the kernel leaves them: covering the whole; checksums
// garbage, as the kernel leaves them to the splitter).
func superPacket(t testing.TB, v6, tcp bool, payload []byte, seg int) []byte {
	pkt := segment(t, v6, tcp, payload, 100, 1000, true, true)
	ipLen := 20
	if v6 {
		ipLen = 40
	}
	h := virtioHdr{flags: unix.VIRTIO_NET_HDR_F_NEEDS_CSUM, gsoSize: uint16(seg), csumStart: uint16(ipLen)}
	switch {
	case tcp && v6:
		h.gsoType, h.csumOff = unix.VIRTIO_NET_HDR_GSO_TCPV6, 16
	case tcp:
		h.gsoType, h.csumOff = unix.VIRTIO_NET_HDR_GSO_TCPV4, 16
	default:
		h.gsoType, h.csumOff = unix.VIRTIO_NET_HDR_GSO_UDP_L4, 6
	}
	h.hdrLen = uint16(len(pkt)) // as on a forwarding path: not to be trusted
	at := ipLen + int(h.csumOff)
	pkt[at], pkt[at+1] = 0xab, 0xcd
	if !v6 {
		pkt[10], pkt[11] = 0x12, 0x34
	}
	return append(encodeVirtio(h), pkt...)
}

func encodeVirtio(h virtioHdr) []byte {
	b := []byte{h.flags, h.gsoType}
	for _, v := range []uint16{h.hdrLen, h.gsoSize, h.csumStart, h.csumOff} {
		b = binary.LittleEndian.AppendUint16(b, v)
	}
	return b
}

// place copies a read (virtio header and packet) where the TUN's read
// puts it: at bufs[0][offset-VirtioHdrLen:].
func place(read []byte, n int) ([][]byte, []int, []byte) {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, testOffset+65535)
	}
	copy(bufs[0][testOffset-VirtioHdrLen:], read)
	return bufs, make([]int, n), bufs[0][testOffset-VirtioHdrLen : testOffset-VirtioHdrLen+len(read)]
}

// TestSplitMatchesTheWire: TCP and UDP super-packets over IPv4 and IPv6
// come apart into exactly the packets the kernel's GSO would have sent:
// IPv4 IDs stepped, lengths, sequence numbers, FIN and PSH on the last
// segment only, every checksum full.
func TestSplitMatchesTheWire(t *testing.T) {
	const seg = 1000
	payload := make([]byte, 3*seg+321)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	for _, c := range []struct {
		name    string
		v6, tcp bool
	}{{"tcp4", false, true}, {"tcp6", true, true}, {"udp4", false, false}, {"udp6", true, false}} {
		t.Run(c.name, func(t *testing.T) {
			orig := superPacket(t, c.v6, c.tcp, payload, seg)
			bufs, sizes, read := place(orig, 8)
			if allocs := testing.AllocsPerRun(20, func() {
				copy(read, orig)
				handleRead(read, bufs, sizes, testOffset)
			}); allocs != 0 {
				t.Errorf("%.1f allocations a split", allocs)
			}
			copy(read, orig)
			n, err := handleRead(read, bufs, sizes, testOffset)
			if err != nil {
				t.Fatal(err)
			}
			if n != 4 {
				t.Fatalf("%d segments, want 4", n)
			}
			for i := range n {
				end := min((i+1)*seg, len(payload))
				last := i == n-1
				want := segment(t, c.v6, c.tcp, payload[i*seg:end], 100+uint16(i), 1000+uint32(i*seg), last, last)
				if got := bufs[i][testOffset : testOffset+sizes[i]]; !bytes.Equal(got, want) {
					t.Errorf("segment %d:\n got % x\nwant % x", i, got[:min(len(got), 64)], want[:min(len(want), 64)])
				}
			}
		})
	}
}

// TestPlainPacketChecksumCompleted: a packet whose checksum the kernel
// left partial (the pseudo-header's sum in the field) comes out whole,
// in place.
func TestPlainPacketChecksumCompleted(t *testing.T) {
	for _, tcp := range []bool{false, true} {
		want := segment(t, false, tcp, []byte("a datagram of some length"), 1, 1, false, false)
		pkt := bytes.Clone(want)
		h := virtioHdr{flags: unix.VIRTIO_NET_HDR_F_NEEDS_CSUM, csumStart: 20, csumOff: 6}
		if tcp {
			h.csumOff = 16
		}
		at := 20 + int(h.csumOff)
		pseudo := packet.ChecksumAdd(pkt[12:20], uint64(pkt[9])+uint64(len(pkt)-20))
		binary.BigEndian.PutUint16(pkt[at:], packet.ChecksumFold(pseudo))
		bufs, sizes, read := place(append(encodeVirtio(h), pkt...), 1)
		if n, err := handleRead(read, bufs, sizes, testOffset); err != nil || n != 1 {
			t.Fatalf("tcp %v: %d packets, %v", tcp, n, err)
		}
		if got := bufs[0][testOffset : testOffset+sizes[0]]; !bytes.Equal(got, want) {
			t.Errorf("tcp %v:\n got % x\nwant % x", tcp, got, want)
		}
	}
}

// TestReadRejects: what cannot be taken apart is an error, never a panic
// or a write out of bounds.
func TestReadRejects(t *testing.T) {
	payload := make([]byte, 5000)
	good := superPacket(t, false, true, payload, 100) // 50 segments
	mutate := func(f func(b []byte)) []byte { b := bytes.Clone(good); f(b); return b }
	for name, c := range map[string]struct {
		read []byte
		bufs int
		want error
	}{
		"more segments than buffers": {good, 8, tun.ErrTooManySegments},
		"unknown GSO type":           {mutate(func(b []byte) { b[1] = 9 }), 64, nil},
		"TCPv6 type on IPv4":         {mutate(func(b []byte) { b[1] = unix.VIRTIO_NET_HDR_GSO_TCPV6 }), 64, nil},
		"UDP type on TCP":            {mutate(func(b []byte) { b[1] = unix.VIRTIO_NET_HDR_GSO_UDP_L4 }), 64, nil},
		"segment size 0":             {mutate(func(b []byte) { b[4], b[5] = 0, 0 }), 64, nil},
		"header past the end":        {mutate(func(b []byte) { binary.LittleEndian.PutUint16(b[6:], 6000) }), 64, nil},
		"IPv4 header length wrong":   {mutate(func(b []byte) { b[VirtioHdrLen] = 0x46 }), 64, nil},
		"TCP data offset too small":  {mutate(func(b []byte) { b[VirtioHdrLen+32] = 0x20 }), 64, nil},
		"checksum past the end":      {append(encodeVirtio(virtioHdr{flags: unix.VIRTIO_NET_HDR_F_NEEDS_CSUM, csumStart: 20, csumOff: 16}), good[VirtioHdrLen:VirtioHdrLen+30]...), 1, nil},
		"empty GSO packet":           {good[:VirtioHdrLen], 64, nil},
	} {
		bufs, sizes, read := place(c.read, c.bufs)
		n, err := handleRead(read, bufs, sizes, testOffset)
		if err == nil || n != 0 || (c.want != nil && !errors.Is(err, c.want)) {
			t.Errorf("%s: %d packets, error %v", name, n, err)
		}
	}
}

// FuzzHandleRead: any read the TUN could return is split, completed or
// refused, never a panic, and no segment runs past its buffer.
func FuzzHandleRead(f *testing.F) {
	for _, v6 := range []bool{false, true} {
		for _, tcp := range []bool{false, true} {
			f.Add(superPacket(f, v6, tcp, make([]byte, 2500), 1000))
		}
	}
	f.Add(append(encodeVirtio(virtioHdr{flags: unix.VIRTIO_NET_HDR_F_NEEDS_CSUM, csumStart: 20, csumOff: 6}), segment(f, false, false, []byte("x"), 1, 1, false, false)...))
	f.Fuzz(func(t *testing.T, read []byte) {
		if len(read) < VirtioHdrLen || len(read) > 65535 {
			return
		}
		bufs, sizes, in := place(read, 16)
		n, err := handleRead(in, bufs, sizes, testOffset)
		if err != nil && n != 0 {
			t.Fatalf("%d packets with error %v", n, err)
		}
		for i := range n {
			if sizes[i] <= 0 || testOffset+sizes[i] > len(bufs[i]) {
				t.Fatalf("packet %d of size %d", i, sizes[i])
			}
		}
	})
}

// TestReaderOnARealTUN: ReadNow on an empty queue returns at once with
// nothing; a datagram routed into the TUN comes out of it, and a UDP GSO
// send of 8 datagrams, handed over whole by the kernel (the TUN takes
// UDP segmentation offload), comes out as the 8 datagrams, checksums
// whole; neither allocates; once the device is closed, os.ErrClosed.
func TestReaderOnARealTUN(t *testing.T) {
	inNamespace(t, func() {
		devs, err := Create("cpt2", 1, 1420)
		if err != nil {
			t.Error(err)
			return
		}
		defer closeAll(devs)
		if err := Up("cpt2", []netip.Prefix{netip.MustParsePrefix("10.77.0.0/24")}); err != nil {
			t.Error(err)
			return
		}
		link, err := netlink.LinkByName("cpt2") // a source address
		if err == nil {
			err = netlink.AddrAdd(link, &netlink.Addr{IPNet: IPNet(netip.MustParsePrefix("10.77.1.1/32"))})
		}
		if err != nil {
			t.Error(err)
			return
		}
		r := NewReader(devs[0])
		bufs, sizes, _ := place(nil, 64)
		if n, err := r.ReadNow(bufs, sizes, testOffset); n != 0 || err != nil {
			t.Errorf("empty queue: %d packets, %v", n, err)
		}
		c, err := udpbatch.Listen(netip.MustParseAddrPort("0.0.0.0:0"), udpbatch.Options{GSO: true})
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		dst := netip.MustParseAddrPort("10.77.0.9:7000")
		w := c.NewWriter(8)
		one := [][]byte{make([]byte, 100, 65535)}
		if err := w.Write(one, dst); err != nil {
			t.Error(err)
			return
		}
		got, _ := readAll(t, r, bufs, sizes)
		if len(got) != 1 || len(got[0]) != 128 {
			t.Errorf("one datagram: read %d packets (%v)", len(got), lens(got))
		}
		if allocs := testing.AllocsPerRun(100, func() { r.ReadNow(bufs, sizes, testOffset) }); allocs != 0 {
			t.Errorf("ReadNow of an empty queue: %.1f allocations", allocs)
		}
		// Eight 1000-byte datagrams in one GSO send (c.GSO says whether
		// this kernel took it as one).
		eight := make([][]byte, 8)
		for i := range eight {
			eight[i] = bytes.Repeat([]byte{byte(i)}, 1000)
		}
		eight[0] = append(make([]byte, 0, 65535), eight[0]...)
		if err := w.Write(eight, dst); err != nil {
			t.Error(err)
			return
		}
		got, most := readAll(t, r, bufs, sizes)
		if len(got) != 8 {
			t.Errorf("a GSO send of 8 (gso %v): read %d packets (%v)", c.GSO(), len(got), lens(got))
		}
		if c.GSO() && most != 8 {
			t.Errorf("a GSO send of 8: at most %d packets from one read, want all 8 (the TUN takes USO)", most)
		}
		for i, p := range got {
			if len(p) != 1028 || p[28] != byte(i) {
				t.Errorf("datagram %d: %d bytes, first payload byte %d", i, len(p), p[min(28, len(p)-1)])
				continue
			}
			if c := packet.Checksum(p[20:], packet.ChecksumAdd(p[12:20], uint64(unix.IPPROTO_UDP)+uint64(len(p)-20))); c != 0 {
				t.Errorf("datagram %d: UDP checksum does not verify", i)
			}
			if packet.Checksum(p[:20], 0) != 0 {
				t.Errorf("datagram %d: IPv4 checksum does not verify", i)
			}
		}
		closeAll(devs)
		if _, err := r.ReadNow(bufs, sizes, testOffset); !errors.Is(err, os.ErrClosed) {
			t.Errorf("after close: %v, want os.ErrClosed", err)
		}
	})
}

// readAll reads until the queue is empty (the kernel queues a routed
// datagram before sendmsg returns; a little slack for a busy machine).
// most is the most packets one read gave.
func readAll(t *testing.T, r *Reader, bufs [][]byte, sizes []int) (got [][]byte, most int) {
	for empty := 0; empty < 100; {
		n, err := r.ReadNow(bufs, sizes, testOffset)
		if err != nil {
			t.Errorf("ReadNow: %v", err)
			return got, most
		}
		most = max(most, n)
		if n == 0 {
			empty++
			if len(got) > 0 {
				return got, most
			}
			continue
		}
		for i := range n {
			p := bufs[i][testOffset : testOffset+sizes[i]]
			if p[0]>>4 == 4 && p[9] == unix.IPPROTO_UDP { // not the kernel's own IPv6 chatter
				got = append(got, bytes.Clone(p))
			}
		}
	}
	return got, most
}

func lens(ps [][]byte) []int {
	var l []int
	for _, p := range ps {
		l = append(l, len(p))
	}
	return l
}

// BenchmarkHandleRead: a TCP super-packet of 45 segments of 1400 bytes
// split into the batch's buffers (per segment), and a plain packet.
func BenchmarkHandleRead(b *testing.B) {
	for _, c := range []struct {
		name string
		read []byte
		segs int
	}{
		{"tcp4-gso-45x1400", superPacket(b, false, true, make([]byte, 45*1400), 1400), 45},
		{"udp4-64", append(encodeVirtio(virtioHdr{}), segment(b, false, false, make([]byte, 36), 1, 1, false, false)...), 1},
	} {
		b.Run(c.name, func(b *testing.B) {
			bufs, sizes, read := place(c.read, 64)
			b.SetBytes(int64(len(c.read)))
			b.ReportAllocs()
			for b.Loop() {
				copy(read, c.read)
				if n, err := handleRead(read, bufs, sizes, testOffset); n != c.segs || err != nil {
					b.Fatalf("%d packets, %v", n, err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*c.segs), "ns/packet")
		})
	}
}
