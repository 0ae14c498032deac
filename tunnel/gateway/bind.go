package gateway

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/clusterpeer/clusterpeer/dataplane/udpbatch"
)

// laneBind is the gateway's WireGuard socket: wireguard-go's conn.Bind on
// udpbatch, one UDP socket per family on the listen port, GRO and GSO
// where the kernel has them, as wireguard-go's own bind (StdNetBind)
// does. Unlike it, receiving allocates nothing: StdNetBind makes a
// net.UDPAddr and an endpoint for every datagram, which under load was
// most of a gateway's garbage. A receive loop hands WireGuard the same
// endpoint for as long as the peer sends from one address.
//
// It sends from whichever address the kernel's route picks (StdNetBind
// would answer from the address the peer wrote to): a gateway's lane has
// one peer, reached over one underlay.
type laneBind struct {
	mu    sync.Mutex // orders Open, Close and SetMark
	socks []*udpbatch.Conn
	mark  uint32
	// send is socks' writers for Send, which reads it without the lock:
	// by family (0: IPv4, 1: IPv6), nil where none is open.
	send atomic.Pointer[[2]*sockWriter]
}

// sockWriter is a socket's one Writer. WireGuard sends a peer's packets
// from one goroutine (handshakes from others, rarely), so its lock, taken
// per batch, is almost never contended.
type sockWriter struct {
	mu sync.Mutex
	c  *udpbatch.Conn
	w  *udpbatch.Writer
}

// bindBuffer is each socket's send and receive buffer (wireguard-go's).
const bindBuffer = 7 << 20

func newLaneBind() *laneBind { return &laneBind{} }

// laneEndpoint is a peer's address; immutable, so receive loops share one.
type laneEndpoint struct{ ap netip.AddrPort }

func (e *laneEndpoint) ClearSrc()           {}
func (e *laneEndpoint) SrcToString() string { return "" }
func (e *laneEndpoint) DstToString() string { return e.ap.String() }
func (e *laneEndpoint) DstToBytes() []byte  { b, _ := e.ap.MarshalBinary(); return b }
func (e *laneEndpoint) DstIP() netip.Addr   { return e.ap.Addr() }
func (e *laneEndpoint) SrcIP() netip.Addr   { return netip.Addr{} }
func (e *laneEndpoint) String() string      { return e.ap.String() }

func (b *laneBind) ParseEndpoint(s string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, err
	}
	return &laneEndpoint{netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}, nil
}

func (b *laneBind) BatchSize() int { return conn.IdealBatchSize }

// Open listens on port for both families (the same port; port 0: one
// the kernel picks that both have free).
func (b *laneBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.socks != nil {
		return nil, 0, conn.ErrBindAlreadyOpen
	}
	opts := udpbatch.Options{Buffer: bindBuffer, GRO: true, GSO: true}
	var socks []*udpbatch.Conn
	for tries := 0; ; tries++ {
		v4, err := udpbatch.Listen(netip.AddrPortFrom(netip.IPv4Unspecified(), port), opts)
		if err != nil && !errors.Is(err, syscall.EAFNOSUPPORT) {
			return nil, 0, err
		}
		p := port
		if v4 != nil {
			p = v4.Port()
		}
		v6, err := udpbatch.Listen(netip.AddrPortFrom(netip.IPv6Unspecified(), p), opts)
		if port == 0 && v4 != nil && errors.Is(err, syscall.EADDRINUSE) && tries < 100 {
			v4.Close() // the kernel's pick is taken for IPv6: pick again
			continue
		}
		if err != nil && !errors.Is(err, syscall.EAFNOSUPPORT) && !errors.Is(err, syscall.EADDRNOTAVAIL) {
			if v4 != nil {
				v4.Close()
			}
			return nil, 0, err
		}
		for _, c := range []*udpbatch.Conn{v4, v6} {
			if c != nil {
				socks = append(socks, c)
			}
		}
		port = p
		break
	}
	if len(socks) == 0 {
		return nil, 0, syscall.EAFNOSUPPORT
	}
	fns := make([]conn.ReceiveFunc, len(socks))
	for i, c := range socks {
		if b.mark != 0 {
			c.SetMark(b.mark)
		}
		fns[i] = receiveFrom(c)
	}
	b.socks = socks
	var send [2]*sockWriter
	for _, c := range socks {
		send[family(c.IsV6())] = &sockWriter{c: c, w: c.NewWriter(conn.IdealBatchSize)}
	}
	b.send.Store(&send)
	return fns, port, nil
}

// receiveFrom is the receive loop's function for one socket; WireGuard
// runs each in one goroutine, so its scratch is its own.
func receiveFrom(c *udpbatch.Conn) conn.ReceiveFunc {
	r := c.NewReader(conn.IdealBatchSize)
	srcs := make([]netip.AddrPort, conn.IdealBatchSize)
	var last *laneEndpoint
	return func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		n, err := r.Read(bufs, sizes, srcs)
		for i := range n {
			if sizes[i] < 0 {
				sizes[i] = 0 // longer than a WireGuard message can be: WireGuard skips it
				continue
			}
			if last == nil || last.ap != srcs[i] {
				last = &laneEndpoint{srcs[i]} // the peer moved (or first heard)
			}
			eps[i] = last
		}
		return n, err
	}
}

func (b *laneBind) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var err error
	for _, c := range b.socks {
		err = errors.Join(err, c.Close())
	}
	b.socks = nil
	b.send.Store(nil)
	return err
}

func (b *laneBind) SetMark(mark uint32) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.mark = mark
	var err error
	for _, c := range b.socks {
		err = errors.Join(err, c.SetMark(mark))
	}
	return err
}

// Send writes bufs to the peer at ep, in order, in as few system calls
// as the kernel's offloads allow.
func (b *laneBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	e, ok := ep.(*laneEndpoint)
	if !ok {
		return fmt.Errorf("send to %T: not this bind's endpoint", ep)
	}
	f := family(e.ap.Addr().Is6())
	ws := b.send.Load()
	if ws == nil || ws[f] == nil {
		return &net.OpError{Op: "write", Net: "udp", Err: syscall.EAFNOSUPPORT}
	}
	w := ws[f]
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(bufs, e.ap)
}

func family(v6 bool) int {
	if v6 {
		return 1
	}
	return 0
}
