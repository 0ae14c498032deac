package icmpwatch

import (
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// portUnreachable is an ICMPv4 port unreachable (from its type on)
// quoting a UDP datagram from sport to dst carrying payload.
func portUnreachable(dst netip.AddrPort, sport uint16, payload []byte) []byte {
	b := make([]byte, 8+20+8+len(payload))
	b[0], b[1] = 3, 3
	ip := b[8:28]
	ip[0], ip[9] = 0x45, 17
	copy(ip[12:16], []byte{10, 1, 0, 2})
	a := dst.Addr().As4()
	copy(ip[16:20], a[:])
	binary.BigEndian.PutUint16(b[28:30], sport)
	binary.BigEndian.PutUint16(b[30:32], dst.Port())
	copy(b[36:], payload)
	return b
}

func TestParse(t *testing.T) {
	dst := netip.MustParseAddrPort("10.1.0.22:6081")
	q, ok := Parse(portUnreachable(dst, 40000, []byte("geneve")), netip.MustParseAddr("10.1.0.22"), false)
	if !ok || q.Dst != dst || q.SrcPort != 40000 || !q.Port || string(q.Payload) != "geneve" || q.From != dst.Addr() {
		t.Fatalf("%+v %v", q, ok)
	}
	if q.Reason() != "ICMP port unreachable from 10.1.0.22 for 10.1.0.22:6081" {
		t.Errorf("reason %q", q.Reason())
	}
	host := portUnreachable(dst, 40000, nil)
	host[1] = 1
	if q, ok := Parse(host, netip.MustParseAddr("10.1.0.1"), false); !ok || q.Port {
		t.Errorf("host unreachable: %+v %v", q, ok)
	}
	for name, b := range map[string][]byte{
		"fragmentation needed": func() []byte { b := portUnreachable(dst, 1, nil); b[1] = 4; return b }(),
		"echo reply":           func() []byte { b := portUnreachable(dst, 1, nil); b[0] = 0; return b }(),
		"quotes TCP":           func() []byte { b := portUnreachable(dst, 1, nil); b[8+9] = 6; return b }(),
		"truncated quote":      portUnreachable(dst, 1, nil)[:30],
		"bad IHL":              func() []byte { b := portUnreachable(dst, 1, nil); b[8] = 0x4f; return b }(),
		"empty":                nil,
	} {
		if _, ok := Parse(b, dst.Addr(), false); ok {
			t.Errorf("%s: parsed", name)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(portUnreachable(netip.MustParseAddrPort("10.1.0.22:6081"), 40000, []byte("geneve")), false)
	f.Add([]byte{1, 4, 0, 0, 0, 0, 0, 0, 0x60}, true)
	f.Fuzz(func(t *testing.T, b []byte, v6 bool) {
		q, ok := Parse(b, netip.MustParseAddr("10.1.0.22"), v6)
		if ok && len(q.Payload) > len(b) {
			t.Fatalf("payload %d bytes from %d", len(q.Payload), len(b))
		}
	})
}

// TestDrain: errors queued while the watch's goroutine is busy reach fn
// through Drain on the caller's goroutine, with the IP header stripped as
// the goroutine's reads strip it.
func TestDrain(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: a raw ICMP socket (CAP_NET_RAW; CI runs it as root)")
	}
	// A port nothing listens on: bind one, note it, close it.
	probe, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	closed := probe.LocalAddr().(*net.UDPAddr).AddrPort()
	probe.Close()

	var mu sync.Mutex
	var got []Quote
	var calls atomic.Int32
	release := make(chan struct{})
	w, err := Listen(false, func(q Quote) {
		if q.Dst.Port() != closed.Port() {
			return // someone else's
		}
		if calls.Add(1) == 1 {
			<-release // the watch's goroutine stays busy with the first
		}
		mu.Lock()
		got = append(got, Quote{From: q.From, Dst: q.Dst, Port: q.Port, Payload: append([]byte(nil), q.Payload...)})
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { close(release); w.Close() }()
	// With nothing queued, and the goroutine waiting in its read, Drain
	// returns at once.
	time.Sleep(50 * time.Millisecond)
	drained := make(chan struct{})
	go func() { w.Drain(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(time.Second):
		t.Fatal("Drain blocked while the watch's goroutine waited for an error")
	}
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}) // unconnected: no error comes back to it
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	to := net.UDPAddrFromAddrPort(closed)
	c.WriteToUDP([]byte("first"), to)
	for deadline := time.Now().Add(2 * time.Second); calls.Load() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no ICMP error for the first datagram")
		}
	}
	c.WriteToUDP([]byte("second"), to)
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		w.Drain()
		mu.Lock()
		n := len(got)
		var q Quote
		if n > 0 {
			q = got[0]
		}
		mu.Unlock()
		if n > 0 {
			if string(q.Payload) != "second" || !q.Port || q.Dst != closed || q.From != closed.Addr() {
				t.Errorf("drained %+v; want port unreachable from %s for %s quoting \"second\"", q, closed.Addr(), closed)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("Drain handed over nothing while the watch's goroutine was busy")
		}
	}
}
