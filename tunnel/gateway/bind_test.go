package gateway

import (
	"bytes"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/clusterpeer/clusterpeer/dataplane/packet"
	"github.com/clusterpeer/clusterpeer/tunnel/wgkey"
)

// TestLaneBindWireGuard: two WireGuard engines on laneBinds over
// loopback handshake and carry a gateway's packets both ways, and
// closing them leaves no goroutine.
func TestLaneBindWireGuard(t *testing.T) {
	before := runtime.NumGoroutine()
	var keys [2]wgkey.Key
	for i := range keys {
		keys[i], _ = wgkey.Generate()
	}
	type side struct {
		kernel *tuntest.ChannelTUN
		g      *fakeGeneve
		dev    *device.Device
		port   int
	}
	var s [2]side
	for i := range s {
		s[i].kernel = tuntest.NewChannelTUN()
		s[i].g = newFakeGeneve()
		d := newDevice(s[i].kernel.TUN(), []geneveReceive{s[i].g.receive}, s[i].g.close, Ingress{Sources: []netip.Addr{demuxAddr}, VNI: 4242}, 1420, slog.Default())
		s[i].dev = device.NewDevice(d, newLaneBind(), device.NewLogger(device.LogLevelError, ""))
		if err := s[i].dev.IpcSet("private_key=" + keys[i].UAPIHex() + "\nlisten_port=0\n"); err != nil {
			t.Fatal(err)
		}
		if err := s[i].dev.Up(); err != nil {
			t.Fatal(err)
		}
		get, err := s[i].dev.IpcGet()
		if err != nil {
			t.Fatal(err)
		}
		_, after, _ := strings.Cut(get, "listen_port=")
		port, _, _ := strings.Cut(after, "\n")
		if s[i].port, err = strconv.Atoi(port); err != nil || s[i].port == 0 {
			t.Fatalf("listen port %q: %v", port, err)
		}
	}
	for i := range s {
		cfg := Config{Peer: keys[1-i].Public(), PeerEndpoint: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(s[1-i].port)),
			Remote: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
		if err := s[i].dev.IpcSet(cfg.peerConfig(true)); err != nil {
			t.Fatal(err)
		}
	}
	for seq := range byte(6) {
		from, to := s[seq%2], s[1-seq%2]
		from.g.in <- datagram{demuxAddr, frame(4242, packet.ProtoIPv4, false, ping(seq))}
		select {
		case got := <-to.kernel.Inbound:
			if !bytes.Equal(got, ping(seq)) {
				t.Fatalf("delivered % x, want % x", got, ping(seq))
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("packet %d not delivered", seq)
		}
	}
	for i := range s {
		s[i].dev.Close()
	}
	waitGoroutines(t, before)
}

// TestLaneBindNoAllocations: receiving allocates nothing, and hands
// WireGuard one endpoint for as long as the peer's address holds;
// sending allocates nothing either. Closing ends a blocked receive with
// net.ErrClosed.
func TestLaneBindNoAllocations(t *testing.T) {
	rx, tx := newLaneBind(), newLaneBind()
	fns, port, err := rx.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	if _, _, err := tx.Open(0); err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	dst, err := tx.ParseEndpoint("127.0.0.1:" + strconv.Itoa(int(port)))
	if err != nil {
		t.Fatal(err)
	}
	out := [][]byte{make([]byte, 148, 2048), make([]byte, 148, 2048)}
	const runs = 100
	if a := testing.AllocsPerRun(runs, func() {
		if err := tx.Send(out, dst); err != nil {
			t.Fatal(err)
		}
	}); a != 0 {
		t.Errorf("%.1f allocations a send", a)
	}
	bufs := make([][]byte, 2)
	for i := range bufs {
		bufs[i] = make([]byte, 2048)
	}
	sizes, eps := make([]int, 2), make([]conn.Endpoint, 2)
	read, first := 0, conn.Endpoint(nil)
	// 202 datagrams (the warm-up run's too), two a read at most.
	if a := testing.AllocsPerRun(runs-1, func() {
		n, err := fns[0](bufs, sizes, eps)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			if first == nil {
				first = eps[i]
			}
			if eps[i] != first || sizes[i] != 148 {
				t.Fatalf("datagram %d: %d bytes from %v (first from %v)", read+i, sizes[i], eps[i], first)
			}
		}
		read += n
	}); a > 0 {
		t.Errorf("%.2f allocations a receive", a)
	}
	if read < runs || first.DstToString() != "127.0.0.1:"+strconv.Itoa(int(v4Port(tx))) {
		t.Errorf("read %d datagrams from %v", read, first)
	}
	done := make(chan error, 1)
	go func() {
		for {
			if _, err := fns[0](bufs, sizes, eps); err != nil {
				done <- err
				return
			}
		}
	}()
	time.Sleep(20 * time.Millisecond)
	rx.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("receive after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("receive still blocked after Close")
	}
}

// v4Port is the port a bind's IPv4 socket listens on.
func v4Port(b *laneBind) uint16 { return b.send.Load()[0].c.Port() }
