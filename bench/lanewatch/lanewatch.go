// Package lanewatch measures which lane carried each flow, from outside the
// data path: it captures what arrives on a host's interface (AF_PACKET)
// and attributes every packet to a lane by its source MAC, the MAC of the
// gateway that delivered it. A flow seen from two MACs changed lanes.
//
// It is a measuring tool for the demo, the tests and the benchmarks, not
// part of the data path; it copies every packet it sees.
package lanewatch

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"time"

	"golang.org/x/sys/unix"

	"github.com/clusterpeer/clusterpeer/dataplane/packet"
	"github.com/clusterpeer/clusterpeer/flowhash"
)

// Watcher captures on one interface.
type Watcher struct {
	fd    int
	lanes map[[6]byte]int
	flows map[flowhash.Tuple]*flow
	other uint64 // packets from MACs that are no lane's
}

type flow struct {
	lanes map[int]*Count
	first int
}

// Count is packets and bytes (IP packet lengths), and when the first and
// the last of them were captured (for a flow's lane: a packet on the old
// lane after the first on the new one says where a reorder came from).
type Count struct {
	Packets uint64    `json:"packets"`
	Bytes   uint64    `json:"bytes"`
	First   time.Time `json:"first,omitzero"`
	Last    time.Time `json:"last,omitzero"`
}

// Open starts a capture of packets arriving on ifname, in the calling
// thread's network namespace. lanes maps gateway MACs to lane IDs.
func Open(ifname string, lanes map[string]int) (*Watcher, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("lanewatch: %w", err)
	}
	w := &Watcher{lanes: map[[6]byte]int{}, flows: map[flowhash.Tuple]*flow{}}
	for mac, id := range lanes {
		hw, err := net.ParseMAC(mac)
		if err != nil || len(hw) != 6 {
			return nil, fmt.Errorf("lanewatch: lane %d: bad MAC %q", id, mac)
		}
		w.lanes[[6]byte(hw)] = id
	}
	proto := htons(unix.ETH_P_ALL)
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(proto))
	if err != nil {
		return nil, fmt.Errorf("lanewatch: packet socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("lanewatch: bind %s: %w", ifname, err)
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20)
	tv := unix.NsecToTimeval(int64(100 * time.Millisecond))
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	w.fd = fd
	return w, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// Run captures until ctx is done, then closes the socket.
func (w *Watcher) Run(ctx context.Context) {
	defer unix.Close(w.fd)
	buf := make([]byte, 1<<16)
	for ctx.Err() == nil {
		n, from, err := unix.Recvfrom(w.fd, buf, 0)
		if err != nil || n < packet.EthernetLen {
			continue
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		w.add(buf[:n], time.Now())
	}
}

func (w *Watcher) add(frame []byte, at time.Time) {
	eth := packet.Ethernet(frame)
	if et := eth.EtherType(); et != packet.EtherTypeIPv4 && et != packet.EtherTypeIPv6 {
		return
	}
	lane, ok := w.lanes[eth.Src()]
	if !ok {
		w.other++
		return
	}
	var t flowhash.Tuple
	pkt := eth.Payload()
	if t.Decode(pkt) != flowhash.DropNone {
		return
	}
	f := w.flows[t]
	if f == nil {
		f = &flow{lanes: map[int]*Count{}, first: lane}
		w.flows[t] = f
	}
	c := f.lanes[lane]
	if c == nil {
		c = &Count{First: at}
		f.lanes[lane] = c
	}
	c.Last = at
	c.Packets++
	c.Bytes += uint64(len(pkt))
}

// Report is what the capture saw.
type Report struct {
	Flows      []Flow        `json:"flows"`
	Lanes      map[int]*Lane `json:"lanes"`
	SplitFlows int           `json:"split_flows"` // flows seen on more than one lane
	NotLane    uint64        `json:"not_lane_packets"`
}

// Flow is one flow and the lanes that carried it.
type Flow struct {
	Flow    string         `json:"flow"`
	SrcPort uint16         `json:"src_port"`
	First   int            `json:"first_lane"` // the lane of its first packet
	Lanes   map[int]*Count `json:"lanes"`
}

// Lane sums one lane's flows.
type Lane struct {
	Flows int `json:"flows"`
	Count
}

// Report summarises the capture (call after Run returned).
func (w *Watcher) Report() Report {
	r := Report{Lanes: map[int]*Lane{}, NotLane: w.other}
	for _, id := range w.lanes {
		r.Lanes[id] = &Lane{}
	}
	for t, f := range w.flows {
		r.Flows = append(r.Flows, Flow{Flow: FlowString(&t), SrcPort: t.SrcPort, First: f.first, Lanes: f.lanes})
		if len(f.lanes) > 1 {
			r.SplitFlows++
		}
		for id, c := range f.lanes {
			l := r.Lanes[id]
			l.Flows++
			l.Packets += c.Packets
			l.Bytes += c.Bytes
		}
	}
	sort.Slice(r.Flows, func(i, j int) bool { return r.Flows[i].Flow < r.Flows[j].Flow })
	return r
}

// FlowString formats a tuple as "udp 10.1.0.10:5000 -> 10.2.0.10:6000".
func FlowString(t *flowhash.Tuple) string {
	src := netip.AddrPortFrom(netip.AddrFrom16(t.Src).Unmap(), t.SrcPort)
	dst := netip.AddrPortFrom(netip.AddrFrom16(t.Dst).Unmap(), t.DstPort)
	name := map[uint8]string{6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6", 132: "sctp"}[t.Proto]
	if name == "" {
		name = fmt.Sprintf("proto-%d", t.Proto)
	}
	return fmt.Sprintf("%s %s -> %s", name, src, dst)
}
