// Package udpflows sends and receives sequence-numbered UDP flows at a
// fixed rate, to measure per flow the loss, the reordering and the longest
// gap between arrivals (a failover's blackout) across the data path. Each
// flow has its own source port; each datagram carries its flow number and
// sequence. Arrival times are the kernel's (SO_TIMESTAMPNS), so a busy
// receiver does not invent gaps.
//
//	payload: magic[4] flow[4] seq[8] padding
package udpflows

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"time"

	"golang.org/x/sys/unix"

	"github.com/clusterpeer/clusterpeer/dataplane/rxtime"
)

const (
	magic     = 0x63704631 // "cpF1"
	headerLen = 16
)

// SendConfig describes a run of flows.
type SendConfig struct {
	Dst      netip.AddrPort
	Flows    int           // one source port each
	Packets  int           // per flow
	Size     int           // UDP payload bytes, at least 16
	Interval time.Duration // between rounds (one packet per flow per round)
}

// Send opens one socket per flow (in the calling thread's network
// namespace) and sends cfg.Packets rounds. Sockets are created before the
// first packet, so the caller may switch namespaces only around Open.
type Sender struct {
	cfg   SendConfig
	conns []*net.UDPConn
}

// NewSender opens the flows' sockets.
func NewSender(cfg SendConfig) (*Sender, error) {
	if cfg.Size < headerLen {
		cfg.Size = headerLen
	}
	s := &Sender{cfg: cfg}
	for range cfg.Flows {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(cfg.Dst))
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("udpflows: %w", err)
		}
		s.conns = append(s.conns, c)
	}
	return s, nil
}

// Run sends every round; it stops early if ctx ends.
func (s *Sender) Run(ctx context.Context) error {
	buf := make([]byte, s.cfg.Size)
	binary.BigEndian.PutUint32(buf[0:4], magic)
	t := time.NewTicker(max(s.cfg.Interval, time.Microsecond))
	defer t.Stop()
	for seq := range s.cfg.Packets {
		for f, c := range s.conns {
			binary.BigEndian.PutUint32(buf[4:8], uint32(f))
			binary.BigEndian.PutUint64(buf[8:16], uint64(seq))
			c.Write(buf) // a refused or dropped datagram is loss, measured at the receiver
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// Ports returns each flow's source port, by flow number.
func (s *Sender) Ports() []uint16 {
	p := make([]uint16, len(s.conns))
	for i, c := range s.conns {
		p[i] = c.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	}
	return p
}

// Close closes the sockets.
func (s *Sender) Close() {
	for _, c := range s.conns {
		c.Close()
	}
}

// FlowResult is one flow as received.
type FlowResult struct {
	Flow       int           `json:"flow"`
	Received   uint64        `json:"received"`
	Lost       uint64        `json:"lost"`         // sequence numbers below the highest that never came
	OutOfOrder uint64        `json:"out_of_order"` // arrived after a later sequence number
	Duplicates uint64        `json:"duplicates"`
	MaxSeq     uint64        `json:"max_seq"`
	LongestGap time.Duration `json:"longest_gap_ns"` // between consecutive arrivals
	GapStart   time.Time     `json:"gap_start"`      // arrival before the longest gap
	From       string        `json:"from"`           // source address:port
}

// Receiver counts what arrives on one socket.
type Receiver struct {
	conn  *net.UDPConn
	flows map[int]*flowState
}

type flowState struct {
	FlowResult
	seen map[uint64]bool
	any  bool
	last time.Time
}

// Listen opens the receiving socket (in the calling thread's namespace).
func Listen(addr netip.AddrPort) (*Receiver, error) {
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return nil, fmt.Errorf("udpflows: %w", err)
	}
	c.SetReadBuffer(8 << 20)
	raw, err := c.SyscallConn()
	if err == nil {
		raw.Control(func(fd uintptr) {
			// Past net.core.rmem_max where allowed (root): a receiver that
			// is not scheduled for a few ms must not lose what it measures.
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
			err = rxtime.Enable(int(fd))
		})
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("udpflows: timestamps: %w", err)
	}
	return &Receiver{conn: c, flows: map[int]*flowState{}}, nil
}

// Run receives until ctx ends, or idle passes with nothing received after
// the first datagram.
func (r *Receiver) Run(ctx context.Context, idle time.Duration) {
	buf := make([]byte, 65536)
	oob := make([]byte, rxtime.OOBLen)
	got := false
	for ctx.Err() == nil {
		r.conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		n, oobn, _, from, err := r.conn.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				if got && idle > 0 {
					idle -= 100 * time.Millisecond
					if idle <= 0 {
						return
					}
				}
				continue
			}
			return
		}
		if n < headerLen || binary.BigEndian.Uint32(buf[0:4]) != magic {
			continue
		}
		got = true
		r.add(int(binary.BigEndian.Uint32(buf[4:8])), binary.BigEndian.Uint64(buf[8:16]), from, rxtime.Parse(oob[:oobn]))
	}
}

func (r *Receiver) add(flow int, seq uint64, from netip.AddrPort, at time.Time) {
	f := r.flows[flow]
	if f == nil {
		f = &flowState{FlowResult: FlowResult{Flow: flow, From: from.String()}, seen: map[uint64]bool{}}
		r.flows[flow] = f
	}
	if f.seen[seq] {
		f.Duplicates++
		return
	}
	f.seen[seq] = true
	f.Received++
	if !f.last.IsZero() && at.Sub(f.last) > f.LongestGap {
		f.LongestGap, f.GapStart = at.Sub(f.last), f.last
	}
	f.last = at
	if f.any && seq < f.MaxSeq {
		f.OutOfOrder++
	}
	if !f.any || seq > f.MaxSeq {
		f.MaxSeq = seq
	}
	f.any = true
}

// Results returns every flow seen, and closes the socket.
func (r *Receiver) Results() []FlowResult {
	r.conn.Close()
	out := make([]FlowResult, 0, len(r.flows))
	for _, f := range r.flows {
		f.Lost = f.MaxSeq + 1 - f.Received
		out = append(out, f.FlowResult)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Flow < out[j].Flow })
	return out
}
