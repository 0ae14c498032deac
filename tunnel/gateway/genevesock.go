package gateway

import (
	"fmt"
	"net/netip"

	"github.com/clusterpeer/clusterpeer/dataplane/udpbatch"
)

// geneveReceive reads a batch of GENEVE datagrams into b: b.dgrams[i]
// is the i-th (aliasing b's buffers; nil: longer than its buffer, dropped
// as DropOversize) and b.srcs[i] its sender. It returns how many.
type geneveReceive func(b *batch) (int, error)

// geneveSocket is the gateway's GENEVE socket, bound to the GENEVE
// address alone: a datagram to any other address of the gateway never
// reaches it. wireguard-go's bind (used before) listens on every address,
// and its UDP GRO split drops each datagram's own destination (PKTINFO),
// so it could not be checked there either. Reads are batched, and
// coalesced by the kernel where it can (udpbatch), allocating nothing.
type geneveSocket struct {
	*udpbatch.Conn
	r *udpbatch.Reader
}

// geneveBufferSize is the socket's receive buffer (wireguard-go's).
const geneveBufferSize = 7 << 20

func listenGeneve(addr netip.AddrPort, batch int) (*geneveSocket, error) {
	return listenGeneveGRO(addr, batch, true)
}

// listenGeneveGRO is listenGeneve, with GRO only if gro (tests read both
// ways).
func listenGeneveGRO(addr netip.AddrPort, batch int, gro bool) (*geneveSocket, error) {
	c, err := udpbatch.Listen(addr, udpbatch.Options{Buffer: geneveBufferSize, GRO: gro})
	if err != nil {
		return nil, fmt.Errorf("listen geneve %s: %w", addr, err)
	}
	return &geneveSocket{Conn: c, r: c.NewReader(batch)}, nil
}

// receive is the socket's geneveReceive. With GRO, the kernel's
// coalesced reads stay in b.recv, where Device.Read copies each inner
// packet from into WireGuard's buffer: one copy a packet, as
// wireguard-go's own TUN read makes (splitting them into frame buffers
// first was a second, 2.5% of a capped gateway's CPU). b.recv is made on
// a batch's first read: a Device has a few batches, reused.
func (s *geneveSocket) receive(b *batch) (int, error) {
	recv := b.bufs
	if s.GRO() {
		if b.recv == nil {
			b.recv = make([][]byte, udpbatch.Reads(len(b.dgrams)))
			for i := range b.recv {
				b.recv[i] = make([]byte, udpbatch.MaxDatagram)
			}
		}
		recv = b.recv
	}
	return s.r.ReadViews(recv, b.dgrams, b.srcs)
}
