package gateway

import (
	"bytes"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/clusterpeer/clusterpeer/dataplane/packet"
	"github.com/clusterpeer/clusterpeer/tunnel/wgkey"
)

// fakeGeneve is a GENEVE socket fed from a channel.
type fakeGeneve struct {
	in     chan datagram
	closed chan struct{}
}

type datagram struct {
	src     netip.Addr
	payload []byte
}

func newFakeGeneve() *fakeGeneve {
	return &fakeGeneve{in: make(chan datagram, 64), closed: make(chan struct{})}
}

func (g *fakeGeneve) receive(b *batch) (int, error) {
	select {
	case d := <-g.in:
		b.dgrams[0] = b.bufs[0][:copy(b.bufs[0], d.payload)]
		b.srcs[0] = netip.AddrPortFrom(d.src, 6081)
		return 1, nil
	case <-g.closed:
		return 0, net.ErrClosed
	}
}

func (g *fakeGeneve) close() error { close(g.closed); return nil }

func ping(seq byte) []byte {
	p := append([]byte(nil), ipv4Ping...)
	p[27] = seq
	return p
}

// TestDeviceSources: GENEVE from the demux and packets the kernel routes
// in both reach Read, in order; bad GENEVE is counted; Write reaches the
// kernel TUN; Close stops every goroutine.
func TestDeviceSources(t *testing.T) {
	before := runtime.NumGoroutine()
	kernel := tuntest.NewChannelTUN()
	g := newFakeGeneve()
	own := netip.MustParseAddr("10.1.0.10") // ipv4Ping's source
	d := newDevice(kernel.TUN(), []geneveReceive{g.receive}, g.close, Ingress{Sources: []netip.Addr{demuxAddr}, Own: []netip.Addr{own}, VNI: 4242}, 1420, slog.Default())

	for seq := range byte(5) {
		g.in <- datagram{demuxAddr, frame(4242, packet.ProtoIPv4, false, ping(seq))}
	}
	g.in <- datagram{netip.MustParseAddr("10.9.9.9"), frame(4242, packet.ProtoIPv4, false, ping(99))}
	bufs := make([][]byte, d.BatchSize())
	for i := range bufs {
		bufs[i] = make([]byte, 2048)
	}
	sizes := make([]int, len(bufs))
	for want := range byte(5) {
		n, err := d.Read(bufs, sizes, 16)
		if err != nil || n != 1 {
			t.Fatalf("Read: %d, %v", n, err)
		}
		if got := bufs[0][16 : 16+sizes[0]]; !bytes.Equal(got, ping(want)) {
			t.Fatalf("packet %d: % x", want, got)
		}
	}
	forwarded := ping(41)
	forwarded[15] = 99 // from 10.1.0.99, a host routing via the gateway
	kernel.Outbound <- forwarded
	kernel.Outbound <- ping(42)
	n, err := d.Read(bufs, sizes, 16)
	if err != nil || n != 1 || bufs[0][16+27] != 42 {
		t.Fatalf("local packet: %d %v", n, err)
	}
	// The refused datagram is judged by the receive goroutine, which may
	// not have reached it yet when the local packet comes back.
	for t0 := time.Now(); d.C.Drops[DropUnknownSource].Load() == 0 && time.Since(t0) < 2*time.Second; {
		time.Sleep(time.Millisecond)
	}
	if d.C.GenevePackets.Load() != 5 || d.C.LocalPackets.Load() != 1 || d.C.Drops[DropUnknownSource].Load() != 1 || d.C.Drops[DropForwarded].Load() != 1 {
		t.Errorf("counters: geneve %d local %d unknown %d forwarded %d", d.C.GenevePackets.Load(), d.C.LocalPackets.Load(),
			d.C.Drops[DropUnknownSource].Load(), d.C.Drops[DropForwarded].Load())
	}

	out := append(make([]byte, 16), ping(7)...)
	go d.Write([][]byte{out}, 16)
	select {
	case got := <-kernel.Inbound:
		if !bytes.Equal(got, ping(7)) {
			t.Errorf("delivered % x", got)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Write did not reach the kernel TUN")
	}

	if err := d.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if _, err := d.Read(bufs, sizes, 16); err == nil {
		t.Error("Read after Close: no error")
	}
	waitGoroutines(t, before)
}

func waitGoroutines(t *testing.T, before int) {
	t.Helper()
	for i := 0; runtime.NumGoroutine() > before && i < 200; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<16)
		t.Errorf("%d goroutines left (%d before):\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}

// TestLaneThroughWireGuard runs two gateways' Devices under real
// WireGuard engines joined by an in-memory bind: a GENEVE frame from the
// demux on side A comes out of side B's kernel TUN, decrypted, unchanged.
func TestLaneThroughWireGuard(t *testing.T) {
	before := runtime.NumGoroutine()
	binds := bindtest.NewChannelBinds()
	var keys [2]wgkey.Key
	for i := range keys {
		keys[i], _ = wgkey.Generate()
	}
	type side struct {
		kernel *tuntest.ChannelTUN
		g      *fakeGeneve
		dev    *device.Device
	}
	var s [2]side
	for i := range s {
		s[i].kernel = tuntest.NewChannelTUN()
		s[i].g = newFakeGeneve()
		d := newDevice(s[i].kernel.TUN(), []geneveReceive{s[i].g.receive}, s[i].g.close, Ingress{Sources: []netip.Addr{demuxAddr}, VNI: 4242}, 1420, slog.Default())
		s[i].dev = device.NewDevice(d, binds[i], device.NewLogger(device.LogLevelError, ""))
		cfg := Config{PrivateKey: keys[i], ListenPort: uint16(i + 1), Peer: keys[1-i].Public(),
			PeerEndpoint: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(i+1)), // bindtest: endpoint i+1 reaches the other bind
			Remote:       []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
		if err := s[i].dev.IpcSet(cfg.uapiConfig()); err != nil {
			t.Fatal(err)
		}
		if err := s[i].dev.Up(); err != nil {
			t.Fatal(err)
		}
	}
	for seq := range byte(3) {
		s[0].g.in <- datagram{demuxAddr, frame(4242, packet.ProtoIPv4, false, ping(seq))}
		select {
		case got := <-s[1].kernel.Inbound:
			if !bytes.Equal(got, ping(seq)) {
				t.Fatalf("delivered % x, want % x", got, ping(seq))
			}
		case <-time.After(5 * time.Second):
			t.Fatal("nothing delivered on side B")
		}
	}
	for i := range s {
		s[i].dev.Close()
	}
	waitGoroutines(t, before)
}

// TestDeviceHold: while held (AwaitPeer), what Read is handed is dropped
// and counted, so that WireGuard has nothing to send; after, it passes.
func TestDeviceHold(t *testing.T) {
	kernel := tuntest.NewChannelTUN()
	g := newFakeGeneve()
	d := newDevice(kernel.TUN(), []geneveReceive{g.receive}, g.close, Ingress{Sources: []netip.Addr{demuxAddr}, VNI: 4242}, 1420, slog.Default())
	defer d.Close()
	bufs := [][]byte{make([]byte, 2048)}
	sizes := make([]int, 1)
	d.hold(time.Hour)
	g.in <- datagram{demuxAddr, frame(4242, packet.ProtoIPv4, false, ping(1))}
	if n, err := d.Read(bufs, sizes, 16); n != 0 || err != nil {
		t.Fatalf("held Read: %d, %v; want 0 packets", n, err)
	}
	if got := d.C.Drops[DropAwaitingPeer].Load(); got != 1 {
		t.Fatalf("awaiting_peer drops %d, want 1", got)
	}
	d.hold(0)
	g.in <- datagram{demuxAddr, frame(4242, packet.ProtoIPv4, false, ping(2))}
	if n, err := d.Read(bufs, sizes, 16); n != 1 || err != nil || bufs[0][16+27] != 2 {
		t.Fatalf("Read after the hold: %d, %v", n, err)
	}
	// A hold that ran out ends by itself.
	d.hold(time.Millisecond)
	time.Sleep(5 * time.Millisecond)
	g.in <- datagram{demuxAddr, frame(4242, packet.ProtoIPv4, false, ping(3))}
	if n, _ := d.Read(bufs, sizes, 16); n != 1 || d.holdUntil.Load() != 0 {
		t.Fatalf("Read after the hold ran out: %d packets, hold %d", n, d.holdUntil.Load())
	}
}
