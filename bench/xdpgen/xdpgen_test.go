//go:build linux

package xdpgen

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/clusterpeer/clusterpeer/dataplane/packet"
	"github.com/clusterpeer/clusterpeer/dataplane/xdp"
)

var testFrame = Frame{
	SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1},
	DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2},
	Src:    netip.MustParseAddr("10.8.0.1"),
	Dst:    netip.MustParseAddr("10.2.0.10"),
	Size:   64,
}

func TestFrameBytes(t *testing.T) {
	b, err := testFrame.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != 14+64 {
		t.Fatalf("frame is %d bytes, want 78", len(b))
	}
	if !bytes.Equal(b[0:6], testFrame.DstMAC) || !bytes.Equal(b[6:12], testFrame.SrcMAC) || b[12] != 0x08 || b[13] != 0 {
		t.Fatalf("Ethernet header % x", b[:14])
	}
	ip := b[14:34]
	if ip[0] != 0x45 || binary.BigEndian.Uint16(ip[2:4]) != 64 || ip[9] != 17 || ip[8] != 64 {
		t.Fatalf("IPv4 header % x", ip)
	}
	if packet.Checksum(ip, 0) != 0 {
		t.Fatalf("IPv4 header checksum does not verify: % x", ip)
	}
	if binary.BigEndian.Uint16(b[36:38]) != DiscardPort || binary.BigEndian.Uint16(b[38:40]) != 44 {
		t.Fatalf("UDP header % x", b[34:42])
	}
}

func TestFrameBytesRejects(t *testing.T) {
	for name, f := range map[string]Frame{
		"ipv6":      {SrcMAC: testFrame.SrcMAC, DstMAC: testFrame.DstMAC, Src: netip.MustParseAddr("fd00::1"), Dst: testFrame.Dst, Size: 64},
		"no mac":    {SrcMAC: testFrame.SrcMAC, Src: testFrame.Src, Dst: testFrame.Dst, Size: 64},
		"too small": {SrcMAC: testFrame.SrcMAC, DstMAC: testFrame.DstMAC, Src: testFrame.Src, Dst: testFrame.Dst, Size: 27},
		"too big":   {SrcMAC: testFrame.SrcMAC, DstMAC: testFrame.DstMAC, Src: testFrame.Src, Dst: testFrame.Dst, Size: 9001},
	} {
		if _, err := f.Bytes(); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: loads an XDP program and runs it with BPF_PROG_TEST_RUN")
	}
}

// TestGeneratorRewritesFrames runs the program on a frame that a receiver
// has scribbled over (as recycled live frames are): it must come out as
// the template with the next source port, and XDP_TX.
func TestGeneratorRewritesFrames(t *testing.T) {
	needRoot(t)
	frame, err := testFrame.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	g, err := New(frame, 1, 20000, 3, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	dirty := bytes.Repeat([]byte{0xee}, len(frame))
	for i := range 7 {
		out := make([]byte, len(frame))
		verdict, err := g.objs.XdpGen.Run(&ebpf.RunOptions{Data: dirty, DataOut: out})
		if err != nil {
			t.Fatal(err)
		}
		if verdict != 3 { // XDP_TX
			t.Fatalf("verdict %d, want XDP_TX", verdict)
		}
		want := bytes.Clone(frame)
		binary.BigEndian.PutUint16(want[34:36], uint16(20000+i%3))
		if !bytes.Equal(out[:42], want[:42]) {
			t.Fatalf("run %d: headers\n got % x\nwant % x", i, out[:42], want[:42])
		}
	}
	if n, err := g.Sent(); err != nil || n != 7 {
		t.Fatalf("Sent() = %d, %v; want 7", n, err)
	}
	if v, err := g.objs.XdpGen.Run(&ebpf.RunOptions{Data: frame[:40]}); err != nil || v != 0 {
		t.Fatalf("a 40-byte frame: verdict %d (%v), want XDP_ABORTED", v, err)
	}
}

// TestGeneratorPaces: paced, the program sends no faster than its rate
// (the runs not due drop their frame) and does send.
func TestGeneratorPaces(t *testing.T) {
	needRoot(t)
	frame, err := testFrame.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	const rate = 10000 // one frame per 100 µs
	g, err := New(frame, 1, 20000, 3, rate)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	start := time.Now()
	if _, err := g.objs.XdpGen.Run(&ebpf.RunOptions{Data: frame, Repeat: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	sent, err := g.Sent()
	if err != nil {
		t.Fatal(err)
	}
	if limit := uint64(took.Seconds()*rate) + 2; sent == 0 || sent > limit {
		t.Errorf("%d frames in %v of runs, want 1 to %d", sent, took, limit)
	}
	t.Logf("%d frames in %v (%.0f a second)", sent, took, float64(sent)/took.Seconds())
	if _, err := New(frame, 1, 20000, 3, -1); err == nil {
		t.Error("a negative rate was accepted")
	}
}

// TestSendArrives sends live frames out of one end of a veth pair in a
// namespace of its own; the other end (with the pass-all program a veth
// needs to take XDP frames) delivers them to a UDP socket on the discard
// port: every frame the program counts arrives, over all the flows.
func TestSendArrives(t *testing.T) {
	needRoot(t)
	const flows, sends = 5, 300
	done := make(chan struct{})
	go func() { // the thread stays in the namespace and ends with the goroutine
		defer close(done)
		runtime.LockOSThread()
		ns, err := netns.NewNamed(fmt.Sprintf("cpxg%d", os.Getpid()))
		if err != nil {
			t.Errorf("new namespace: %v", err)
			return
		}
		defer netns.DeleteNamed(fmt.Sprintf("cpxg%d", os.Getpid()))
		defer ns.Close()
		sendArrives(t, flows, sends)
	}()
	<-done
}

func sendArrives(t *testing.T, flows, sends int) {
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "gen0"}, PeerName: "sink0"}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Errorf("veth: %v", err)
		return
	}
	gen, err1 := netlink.LinkByName("gen0")
	sink, err2 := netlink.LinkByName("sink0")
	if err := errors.Join(err1, err2); err != nil {
		t.Error(err)
		return
	}
	addr, _ := netlink.ParseAddr("10.99.0.2/24")
	if err := errors.Join(netlink.AddrAdd(sink, addr), netlink.LinkSetUp(gen), netlink.LinkSetUp(sink), xdp.AttachPass("sink0")); err != nil {
		t.Error(err)
		return
	}
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(10, 99, 0, 2), Port: DiscardPort})
	if err != nil {
		t.Error(err)
		return
	}
	defer c.Close()
	// A frame from XDP becomes an skb of a whole page: make room for all.
	if err := setRcvbufForce(c, 8<<20); err != nil {
		t.Error(err)
		return
	}
	f := testFrame
	f.SrcMAC, f.DstMAC = gen.Attrs().HardwareAddr, sink.Attrs().HardwareAddr
	f.Src, f.Dst = netip.MustParseAddr("10.99.0.1"), netip.MustParseAddr("10.99.0.2")
	frame, err := f.Bytes()
	if err != nil {
		t.Error(err)
		return
	}
	g, err := New(frame, gen.Attrs().Index, 30000, uint16(flows), 0)
	if err != nil {
		t.Error(err)
		return
	}
	defer g.Close()
	if err := g.Send(uint32(sends)); err != nil {
		t.Error(err)
		return
	}
	sent, err := g.Sent()
	if err != nil || sent < uint64(sends) {
		t.Errorf("Sent() = %d, %v; want at least %d", sent, err, sends)
		return
	}
	ports := map[int]int{}
	buf := make([]byte, 2048)
	for got := uint64(0); got < sent; got++ {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, from, err := c.ReadFromUDP(buf)
		if err != nil {
			t.Errorf("received %d of %d frames: %v", got, sent, err)
			return
		}
		if n != f.Size-28 {
			t.Errorf("a datagram of %d bytes, want %d", n, f.Size-28)
		}
		ports[from.Port]++
	}
	if len(ports) != flows {
		t.Errorf("source ports %v: want %d flows from 30000", ports, flows)
	}
	for p := range ports {
		if p < 30000 || p >= 30000+flows {
			t.Errorf("source port %d outside 30000-%d", p, 30000+flows-1)
		}
	}
}

func setRcvbufForce(c *net.UDPConn, n int) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n)
	}); err != nil {
		return err
	}
	return serr
}
