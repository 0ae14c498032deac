// Package icmpwatch reads the ICMP "destination unreachable" errors that
// reach this host about UDP datagrams it sent, from a raw ICMP socket,
// whichever socket (or XDP program) sent the datagram:
//
//	peer's host or a router --ICMP port/host unreachable--> raw socket
//	    -> Quote: where the datagram went, from which port, what it carried
//
// The kernel delivers such errors to the sending UDP socket only if that
// socket asked (IP_RECVERR), and rate-limits them per destination host, so
// the first few (which a socket sending thousands of datagrams a second
// provokes first) may be the only ones: a raw socket sees those. Callers
// judge a Quote against what they sent; this package only parses.
package icmpwatch

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/clusterpeer/clusterpeer/dataplane/packet"
	"github.com/clusterpeer/clusterpeer/dataplane/rxtime"
)

// Quote is an ICMP error about a UDP datagram this host sent.
type Quote struct {
	From    netip.Addr     // who sent the ICMP error
	Dst     netip.AddrPort // where the datagram went
	SrcPort uint16         // the port it left from
	Port    bool           // port unreachable (else host or address unreachable)
	Payload []byte         // the datagram's UDP payload, as far as quoted
}

// Reason is the error as a log line says it.
func (q Quote) Reason() string {
	what := "host unreachable"
	if q.Port {
		what = "port unreachable"
	}
	return fmt.Sprintf("ICMP %s from %s for %s", what, q.From, q.Dst)
}

// Parse reads an ICMP (or ICMPv6) message, from its type on, sent by from.
// ok is false for anything but port or host unreachable quoting UDP.
func Parse(msg []byte, from netip.Addr, v6 bool) (q Quote, ok bool) {
	if len(msg) < packet.ICMPLen {
		return q, false
	}
	h, quoted := packet.ICMP(msg), msg[packet.ICMPLen:]
	var udp []byte
	if !v6 {
		// Codes 1 and 3: host and port unreachable.
		if h.Type() != packet.ICMPv4Unreachable || (h.Code() != 1 && h.Code() != 3) ||
			len(quoted) < packet.IPv4MinLen || packet.Version(quoted) != 4 {
			return q, false
		}
		ip := packet.IPv4(quoted)
		ihl := ip.HeaderLen()
		if ip.Protocol() != packet.ProtoUDP || ihl < packet.IPv4MinLen || len(quoted) < ihl+packet.UDPLen {
			return q, false
		}
		q.Dst, udp, q.Port = netip.AddrPortFrom(ip.Dst(), 0), quoted[ihl:], h.Code() == 3
	} else {
		// Codes 3 and 4: address and port unreachable.
		if h.Type() != packet.ICMPv6Unreachable || (h.Code() != 3 && h.Code() != 4) ||
			len(quoted) < packet.IPv6Len+packet.UDPLen || packet.Version(quoted) != 6 {
			return q, false
		}
		ip := packet.IPv6(quoted)
		if ip.NextHeader() != packet.ProtoUDP {
			return q, false
		}
		q.Dst, udp, q.Port = netip.AddrPortFrom(ip.Dst().Unmap(), 0), quoted[packet.IPv6Len:], h.Code() == 4
	}
	u := packet.UDP(udp)
	q.From = from.Unmap()
	q.Dst = netip.AddrPortFrom(q.Dst.Addr(), u.DstPort())
	q.SrcPort = u.SrcPort()
	q.Payload = udp[packet.UDPLen:]
	return q, true
}

// Watch reads ICMP errors of one family until Close, handing each
// destination-unreachable Quote to fn (from its own goroutine, or from
// Drain's caller: fn must be safe for both at once; the payload is valid
// only during the call).
type Watch struct {
	conn *net.IPConn
	v6   bool
	fn   func(Quote)
	wg   sync.WaitGroup

	// Drain reads the socket itself, not through conn: conn's reads take
	// a lock the goroutine holds while it waits for the next error.
	mu     sync.Mutex // fd, closed, buf, recv
	fd     int
	closed bool
	buf    []byte
	recv   rxtime.Receiver
}

// Listen opens the raw socket (CAP_NET_RAW) for IPv4 or IPv6.
func Listen(v6 bool, fn func(Quote)) (*Watch, error) {
	network := "ip4:icmp"
	if v6 {
		network = "ip6:ipv6-icmp"
	}
	c, err := net.ListenIP(network, nil)
	if err != nil {
		return nil, fmt.Errorf("icmp socket %s (needs CAP_NET_RAW): %w", network, err)
	}
	w := &Watch{conn: c, v6: v6, fn: fn, fd: -1, buf: make([]byte, 1500)}
	// Let only destination unreachable through to the socket.
	if raw, err := c.SyscallConn(); err == nil {
		raw.Control(func(fd uintptr) {
			w.fd = int(fd)
			if !v6 {
				unix.SetsockoptInt(int(fd), unix.SOL_RAW, 1 /* ICMP_FILTER */, ^(1 << 3))
				return
			}
			var f unix.ICMPv6Filter
			for i := range f.Data {
				f.Data[i] = ^uint32(0)
			}
			f.Data[0] &^= 1 << 1
			unix.SetsockoptICMPv6Filter(int(fd), unix.SOL_ICMPV6, unix.ICMPV6_FILTER, &f)
		})
	}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		buf := make([]byte, 1500)
		for {
			n, from, err := c.ReadFromIP(buf) // IPv4: Go strips the IP header
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			src, _ := netip.AddrFromSlice(from.IP)
			if q, ok := Parse(buf[:n], src, v6); ok {
				fn(q)
			}
		}
	}()
	return w, nil
}

// Drain hands fn the errors already queued, on the caller's goroutine,
// at most 64: a caller about to judge by silence lets the errors that
// arrived while it waited for a CPU count first (after a stall, the
// watch's own goroutine may run only after the judgement).
func (w *Watch) Drain() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for range 64 {
		if w.closed || w.fd < 0 {
			return
		}
		n, _, from, err := w.recv.Recvmsg(w.fd, w.buf, nil, unix.MSG_DONTWAIT) // never waits
		if err != nil {
			return
		}
		msg := w.buf[:n]
		src := from.Addr()
		switch {
		case !src.IsValid():
			continue
		case !w.v6:
			// An IPv4 raw socket hands the IP header too.
			if len(msg) < packet.IPv4MinLen || len(msg) < packet.IPv4(msg).HeaderLen() {
				continue
			}
			msg = msg[packet.IPv4(msg).HeaderLen():]
		}
		if q, ok := Parse(msg, src, w.v6); ok {
			w.fn(q)
		}
	}
}

// Close stops the watch.
func (w *Watch) Close() {
	w.mu.Lock()
	w.closed = true // the fd number may be reused once conn is closed
	w.mu.Unlock()
	w.conn.Close()
	w.wg.Wait()
}
