package gateway

import (
	"fmt"
	"net/netip"

	"github.com/clusterpeer/clusterpeer/dataplane/udpbatch"
)

// GeneveReceive reads a batch of GENEVE datagrams into bufs, with each
// one's size and sender. It returns how many it read. A negative size
// is a datagram longer than its buffer, which the caller drops
// (DropOversize).
type GeneveReceive func(bufs [][]byte, sizes []int, srcs []netip.AddrPort) (int, error)

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

// receive is the socket's GeneveReceive.
func (s *geneveSocket) receive(bufs [][]byte, sizes []int, srcs []netip.AddrPort) (int, error) {
	return s.r.Read(bufs, sizes, srcs)
}
