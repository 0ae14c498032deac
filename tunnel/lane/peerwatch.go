package lane

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
)

// The gateway learns that its peer is gone from the ICMP errors the
// peer's host (or a router before it) sends back for WireGuard datagrams:
// port unreachable when the peer's process is gone, host unreachable when
// the host is. WireGuard's own socket does not report them, so a raw ICMP
// socket per family reads them, and one counts only if it quotes a
// datagram this gateway sent to the peer: from its WireGuard port to the
// peer's endpoint, carrying a WireGuard session index it used lately
// (32 random bits that only those who see the traffic know).

// watchedBind is WireGuard's bind with a note of what it sends to and
// hears from the peer.
type watchedBind struct {
	conn.Bind
	peer    netip.AddrPort
	indexes [8]atomic.Uint32 // session indexes lately sent (bytes 4..8 of every message type)
	next    atomic.Uint32
	down    atomic.Bool // an ICMP error said the peer is gone; cleared when it is heard again
	onHeard func()      // the peer is heard again after down
}

func (b *watchedBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	if len(bufs) > 0 {
		b.note(bufs[0])
	}
	return b.Bind.Send(bufs, ep)
}

// note remembers the session index of a WireGuard message being sent,
// once per change (a batch carries one session's messages).
func (b *watchedBind) note(msg []byte) {
	if len(msg) < 8 {
		return
	}
	idx := binary.LittleEndian.Uint32(msg[4:8])
	last := b.next.Load()
	if b.indexes[(last+7)%8].Load() == idx {
		return
	}
	b.indexes[last%8].Store(idx)
	b.next.Store(last + 1)
}

// sent reports whether idx is a session index sent lately.
func (b *watchedBind) sent(idx uint32) bool {
	for i := range b.indexes {
		if b.indexes[i].Load() == idx && idx != 0 {
			return true
		}
	}
	return false
}

func (b *watchedBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	fns, p, err := b.Bind.Open(port)
	if err != nil {
		return nil, 0, err
	}
	for i, fn := range fns {
		fns[i] = func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
			n, err := fn(bufs, sizes, eps)
			if n > 0 && b.down.Load() && eps[0] != nil && eps[0].DstIP() == b.peer.Addr() {
				b.down.Store(false)
				if b.onHeard != nil {
					b.onHeard()
				}
			}
			return n, err
		}
	}
	return fns, p, nil
}

// icmpWatch reads ICMP errors on raw sockets and calls gone for those that
// quote a datagram sent to the peer lately.
type icmpWatch struct {
	bind   *watchedBind
	lport  uint16
	gone   func(why string)
	conns  []*net.IPConn
	wg     sync.WaitGroup
	Counts struct{ Matched, Unmatched atomic.Uint64 }
}

func startICMPWatch(b *watchedBind, listenPort uint16, gone func(string)) (*icmpWatch, error) {
	w := &icmpWatch{bind: b, lport: listenPort, gone: gone}
	network := "ip4:icmp"
	if b.peer.Addr().Is6() {
		network = "ip6:ipv6-icmp"
	}
	c, err := net.ListenIP(network, nil)
	if err != nil {
		return nil, fmt.Errorf("icmp socket (%s; needs CAP_NET_RAW): %w", network, err)
	}
	if b.peer.Addr().Is4() {
		// Only destination unreachable (type 3) reaches the socket.
		if raw, err := c.SyscallConn(); err == nil {
			raw.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_RAW, 1 /* ICMP_FILTER */, ^(1 << 3)) })
		}
	} else if raw, err := c.SyscallConn(); err == nil {
		var f unix.ICMPv6Filter
		for i := range f.Data {
			f.Data[i] = ^uint32(0)
		}
		f.Data[0] &^= 1 << 1 // let type 1, destination unreachable, through
		raw.Control(func(fd uintptr) { unix.SetsockoptICMPv6Filter(int(fd), unix.SOL_ICMPV6, unix.ICMPV6_FILTER, &f) })
	}
	w.conns = append(w.conns, c)
	w.wg.Add(1)
	go w.run(c)
	return w, nil
}

func (w *icmpWatch) run(c *net.IPConn) {
	defer w.wg.Done()
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFromIP(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		src, _ := netip.AddrFromSlice(from.IP)
		if why, ok := w.check(buf[:n], src.Unmap()); ok {
			w.Counts.Matched.Add(1)
			if !w.bind.down.Swap(true) {
				w.gone(why)
			}
		} else if why != "" {
			w.Counts.Unmatched.Add(1)
		}
	}
}

// check judges one ICMP message (from its type on) sent by from: whether
// it says the peer is unreachable, quoting what this gateway sent it. why
// is empty for ICMP that is not about the peer at all.
func (w *icmpWatch) check(msg []byte, from netip.Addr) (why string, ok bool) {
	if len(msg) < 8 {
		return "", false
	}
	typ, code, quoted := msg[0], msg[1], msg[8:]
	var dst netip.Addr
	var udp []byte
	port := false
	if w.bind.peer.Addr().Is4() {
		if typ != 3 || (code != 1 && code != 3) || len(quoted) < 20 || quoted[0]>>4 != 4 || quoted[9] != unix.IPPROTO_UDP {
			return "", false
		}
		ihl := int(quoted[0]&0x0f) * 4
		if ihl < 20 || len(quoted) < ihl+8 {
			return "", false
		}
		dst, udp, port = netip.AddrFrom4([4]byte(quoted[16:20])), quoted[ihl:], code == 3
	} else {
		if typ != 1 || (code != 3 && code != 4) || len(quoted) < 48 || quoted[0]>>4 != 6 || quoted[6] != unix.IPPROTO_UDP {
			return "", false
		}
		dst, udp, port = netip.AddrFrom16([16]byte(quoted[24:40])).Unmap(), quoted[40:], code == 4
	}
	if dst != w.bind.peer.Addr() || binary.BigEndian.Uint16(udp[0:2]) != w.lport || binary.BigEndian.Uint16(udp[2:4]) != w.bind.peer.Port() {
		return "", false
	}
	what := "host unreachable"
	if port {
		what = "port unreachable"
	}
	why = fmt.Sprintf("ICMP %s from %s for WireGuard to %s", what, from, w.bind.peer)
	// Port unreachable comes from the peer's host itself; and the quote
	// must carry a session index this gateway used.
	if (port && from != dst) || len(udp) < 16 || !w.bind.sent(binary.LittleEndian.Uint32(udp[12:16])) {
		return why + " (quotes nothing this gateway sent lately; ignored)", false
	}
	return why, true
}

func (w *icmpWatch) Close() {
	for _, c := range w.conns {
		c.Close()
	}
	w.wg.Wait()
}
