package gateway

import (
	"encoding/binary"
	"net/netip"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/clusterpeer/clusterpeer/dataplane/icmpwatch"
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
	peer    atomic.Pointer[netip.AddrPort] // the peer's endpoint; changes with SetPeer
	indexes [8]atomic.Uint32               // session indexes lately sent (bytes 4..8 of every message type)
	next    atomic.Uint32
	down    atomic.Bool // an ICMP error said the peer is gone; cleared when it is heard again
	onHeard func()      // the peer is heard again after down
	// awaiting: the peer changed and this end waits to hear from it
	// first (Config.AwaitPeer); heardAwaited is called when it does.
	awaiting     atomic.Bool
	heardAwaited func()
}

func (b *watchedBind) peerAddr() netip.AddrPort {
	if p := b.peer.Load(); p != nil {
		return *p
	}
	return netip.AddrPort{}
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
			if n == 0 {
				return n, err
			}
			// Awaiting the peer: anything on the WireGuard port will do
			// (a replacement's first packets may come from an address
			// other than the endpoint it registered).
			if b.awaiting.Load() && b.awaiting.Swap(false) && b.heardAwaited != nil {
				b.heardAwaited()
			}
			if b.down.Load() && eps[0] != nil && eps[0].DstIP() == b.peerAddr().Addr() {
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

// icmpWatch calls gone for the ICMP errors that quote a datagram sent to
// the peer lately.
type icmpWatch struct {
	bind   *watchedBind
	lport  uint16
	gone   func(why string)
	w      *icmpwatch.Watch
	Counts struct{ Matched, Unmatched atomic.Uint64 }
}

func startICMPWatch(b *watchedBind, listenPort uint16, gone func(string)) (*icmpWatch, error) {
	iw := &icmpWatch{bind: b, lport: listenPort, gone: gone}
	w, err := icmpwatch.Listen(b.peerAddr().Addr().Is6(), iw.handle)
	if err != nil {
		return nil, err
	}
	iw.w = w
	return iw, nil
}

func (w *icmpWatch) handle(q icmpwatch.Quote) {
	if q.Dst != w.bind.peerAddr() || q.SrcPort != w.lport {
		return // not about our WireGuard datagrams
	}
	// Port unreachable comes from the peer's host itself; and the quote
	// must carry a session index this gateway used.
	if (q.Port && q.From != q.Dst.Addr()) || len(q.Payload) < 8 || !w.bind.sent(binary.LittleEndian.Uint32(q.Payload[4:8])) {
		w.Counts.Unmatched.Add(1)
		return
	}
	w.Counts.Matched.Add(1)
	if !w.bind.down.Swap(true) {
		w.gone(q.Reason() + " (WireGuard)")
	}
}

func (w *icmpWatch) Close() { w.w.Close() }
