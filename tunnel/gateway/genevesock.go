package gateway

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// GeneveReceive reads a batch of GENEVE datagrams into bufs, with each
// one's size and sender. It returns how many it read.
type GeneveReceive func(bufs [][]byte, sizes []int, srcs []netip.Addr) (int, error)

// geneveSocket is the gateway's GENEVE socket, bound to the GENEVE
// address alone: a datagram to any other address of the gateway never
// reaches it. wireguard-go's bind (used before) listens on every address,
// and its UDP GRO split drops each datagram's own destination (PKTINFO),
// so it could not be checked there either. Reads are batched (recvmmsg)
// and, where the kernel can (UDP_GRO, Linux 5.0+), coalesced datagrams of
// one sender are read as one and split here, as wireguard-go does.
type geneveSocket struct {
	conn *net.UDPConn
	br   interface {
		ReadBatch(ms []ipv4.Message, flags int) (int, error)
	}
	msgs []ipv4.Message
	gro  bool
}

// geneveBufferSize is the socket's receive buffer (wireguard-go's).
const geneveBufferSize = 7 << 20

// maxGROSegments is the most datagrams the kernel coalesces into one read.
const maxGROSegments = 64

func listenGeneve(addr netip.AddrPort, batch int) (*geneveSocket, error) {
	gro := false
	lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) {
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, geneveBufferSize)
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, geneveBufferSize) // with CAP_NET_ADMIN
			gro = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO, 1) == nil
		})
	}}
	network := "udp4"
	if addr.Addr().Is6() {
		network = "udp6"
	}
	pc, err := lc.ListenPacket(context.Background(), network, addr.String())
	if err != nil {
		return nil, fmt.Errorf("listen geneve %s: %w", addr, err)
	}
	s := &geneveSocket{conn: pc.(*net.UDPConn), gro: gro, msgs: make([]ipv4.Message, batch)}
	if network == "udp4" {
		s.br = ipv4.NewPacketConn(s.conn)
	} else {
		s.br = ipv6.NewPacketConn(s.conn)
	}
	for i := range s.msgs {
		s.msgs[i].Buffers = make([][]byte, 1)
		s.msgs[i].OOB = make([]byte, unix.CmsgSpace(2))
	}
	return s, nil
}

// receive is the socket's GeneveReceive. With GRO it reads at most
// len(bufs)/maxGROSegments datagrams into the last bufs and splits them
// into the first, so that a fully coalesced batch still fits.
func (s *geneveSocket) receive(bufs [][]byte, sizes []int, srcs []netip.Addr) (int, error) {
	msgs := s.msgs[:min(len(bufs), len(s.msgs))]
	readAt := 0
	if s.gro {
		readAt = len(msgs) - max(1, len(msgs)/maxGROSegments)
	}
	for i := readAt; i < len(msgs); i++ {
		msgs[i].Buffers[0] = bufs[i]
		msgs[i].OOB = msgs[i].OOB[:cap(msgs[i].OOB)]
	}
	got, err := s.br.ReadBatch(msgs[readAt:], 0)
	if err != nil {
		return 0, err
	}
	n := 0
	for i := readAt; i < readAt+got; i++ {
		m := &msgs[i]
		src := m.Addr.(*net.UDPAddr).AddrPort().Addr()
		seg := groSize(m.OOB[:m.NN])
		if seg <= 0 || seg >= m.N {
			seg = m.N
		}
		for start := 0; start < m.N; start += seg {
			if n > i {
				return n, fmt.Errorf("geneve: coalesced datagrams overflow the batch")
			}
			end := min(start+seg, m.N)
			sizes[n] = copy(bufs[n], bufs[i][start:end])
			srcs[n] = src
			n++
		}
	}
	return n, nil
}

// groSize is the segment size of a coalesced read (UDP_GRO control
// message), 0 if none.
func groSize(oob []byte) int {
	for len(oob) > unix.SizeofCmsghdr {
		h, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			return 0
		}
		if h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO && len(data) >= 2 {
			return int(binary.NativeEndian.Uint16(data))
		}
		oob = rest
	}
	return 0
}

func (s *geneveSocket) Close() error { return s.conn.Close() }
