// Package udpflows sends and receives sequence-numbered UDP flows at a
// fixed rate, to measure per flow the loss, the reordering and the longest
// gap between arrivals (a failover's blackout) across the data path. Each
// flow has its own source port; each datagram carries its flow number and
// sequence, and its send time. Arrival times are the kernel's
// (SO_TIMESTAMPNS), so a busy receiver does not invent gaps; and the
// outage subtracts what the sender itself paused, so a busy sender does
// not either.
//
//	payload: magic[4] flow[4] seq[8] sent[8] (ns, wall clock; payloads of 24 bytes or more) padding
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
	sentEnd   = headerLen + 8 // the send time, where the payload has room
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
			if len(buf) >= sentEnd {
				binary.BigEndian.PutUint64(buf[headerLen:sentEnd], uint64(time.Now().UnixNano()))
			}
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
	// The longest outage of the path: a gap between consecutive arrivals,
	// less, where nothing was lost between them, the time the sender
	// paused beyond its schedule (a sender that was not scheduled sent
	// nothing, and the path is not to blame; where packets between them
	// were lost, the path was down all along). Equal to LongestGap
	// without send times or Interval.
	LongestOutage time.Duration `json:"longest_outage_ns"`
	OutageStart   time.Time     `json:"outage_start"`
	// Every outage longer than OutageMin, in order, so that one caused
	// by an event can be told from the host's noise elsewhere in a run.
	Outages []Outage `json:"outages,omitempty"`
	From    string   `json:"from"` // source address:port
}

// Outage is a time the path delivered nothing of a flow: from the arrival
// before it, for Length (the sender's own pauses left out).
type Outage struct {
	Start  time.Time     `json:"start"`
	Length time.Duration `json:"length_ns"`
}

// OutageMin is the shortest outage a FlowResult lists.
const OutageMin = 2 * time.Millisecond

// OutageAround returns the longest of f's outages that began before
// until and ended after from: the one an event in [from, until] caused
// (0 if none was that long).
func (f *FlowResult) OutageAround(from, until time.Time) time.Duration {
	var longest time.Duration
	for _, o := range f.Outages {
		if o.Start.Before(until) && o.Start.Add(o.Length).After(from) {
			longest = max(longest, o.Length)
		}
	}
	return longest
}

// Receiver counts what arrives on one socket.
type Receiver struct {
	conn  *net.UDPConn
	flows map[int]*flowState
	// Interval is the senders' schedule (SendConfig.Interval), for the
	// outage; zero: outages are arrival gaps.
	Interval time.Duration
}

type flowState struct {
	FlowResult
	seen     map[uint64]bool
	any      bool
	last     time.Time
	lastSent time.Time // send time of the last arrival (zero if not carried)
	lastSeq  uint64
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
		var sent time.Time
		if n >= sentEnd {
			sent = time.Unix(0, int64(binary.BigEndian.Uint64(buf[headerLen:sentEnd])))
		}
		r.add(int(binary.BigEndian.Uint32(buf[4:8])), binary.BigEndian.Uint64(buf[8:16]), from, rxtime.Parse(oob[:oobn]), sent)
	}
}

func (r *Receiver) add(flow int, seq uint64, from netip.AddrPort, at, sent time.Time) {
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
	if !f.last.IsZero() {
		outage := at.Sub(f.last)
		if !sent.IsZero() && !f.lastSent.IsZero() && r.Interval > 0 && seq == f.lastSeq+1 {
			// Nothing lost in between: the gap beyond the schedule that
			// the sender itself put between the two is not the path's.
			outage -= max(sent.Sub(f.lastSent)-r.Interval, 0)
		}
		if outage > f.LongestOutage {
			f.LongestOutage, f.OutageStart = outage, f.last
		}
		if outage >= OutageMin {
			f.Outages = append(f.Outages, Outage{Start: f.last, Length: outage})
		}
	}
	f.last, f.lastSent, f.lastSeq = at, sent, seq
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
