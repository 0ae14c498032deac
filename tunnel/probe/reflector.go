package probe

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clusterpeer/clusterpeer/dataplane/packet"
	"github.com/clusterpeer/clusterpeer/flowhash"
	"github.com/clusterpeer/clusterpeer/tunnel/keyring"
)

// Reflector answers the probes that reach a gateway through its lane. It
// listens on the gateway's own address; the reply goes to the probe's
// source (a demux on the far side), which the gateway's routes send back
// into the lane.
//
// It is also the gateway's voice towards the demuxes: while the gateway
// knows its lane cannot work (SetCondition: a planned stop, the peer
// unreachable, its underlay path gone), it answers every probe it sees,
// the far demux's that reach it through the lane and the near demux's
// that it forwards into the lane (SawProbe), with a signed notice that
// names the probe and says why, and it sends one at once to each demux it
// has heard from when the condition starts.
type Reflector struct {
	conn    *net.UDPConn
	lane    flowhash.LaneID
	side    string // the gateway's: its own demux's probes are signed for it, the far demux's for the other
	far     string
	ifindex int // probes count only if they came out of this interface (the lane's TUN); 0: any
	log     *slog.Logger

	mu     sync.Mutex // guards signer, seen, heard, notice
	signer *Signer
	seen   map[uint64]uint64 // prober session -> highest seq answered
	heard  map[netip.AddrPort]Message
	notice []byte
	cond   atomic.Uint32 // Diag

	C ReflectorCounters
}

// ReflectorCounters count what the reflector saw.
type ReflectorCounters struct {
	Answered, Notices atomic.Uint64
	Probes            atomic.Uint64 // probes seen, through the lane or on their way into it
	Drops             [numReflectDrops]atomic.Uint64
}

// Why a datagram was not answered.
const (
	ReflectBadFormat  = iota // not a probe request
	ReflectBadMAC            // failed authentication: forged or another peering's key
	ReflectWrongLane         // a probe for another lane reached this gateway
	ReflectReplay            // a request seen before (sequence not newer)
	ReflectWrongIface        // arrived on another interface than the lane's: relayed by another path, it proves nothing of this lane
	ReflectUnknownKey        // a generation not accepted, or another lane's key (which this gateway does not hold)
	numReflectDrops
)

var reflectDropNames = [numReflectDrops]string{"bad_format", "bad_mac", "wrong_lane", "replay", "wrong_interface", "unknown_key"}

// maxSessions bounds the replay memory; the oldest entries are forgotten
// wholesale (a demux restart makes a new session). maxHeard likewise
// bounds the demuxes a gateway remembers to send notices to.
const (
	maxSessions = 64
	maxHeard    = 16
)

// NewReflector listens on addr for lane's probes. With iface set, only
// probes that arrive on that interface (the lane's TUN, or a stock
// WireGuard peer's interface) are answered.
func NewReflector(addr netip.AddrPort, lane flowhash.LaneID, side, far string, keys *keyring.Ring, iface string, log *slog.Logger) (*Reflector, error) {
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return nil, fmt.Errorf("health: reflector on %s: %w", addr, err)
	}
	if log == nil {
		log = slog.Default()
	}
	r := &Reflector{conn: conn, lane: lane, side: side, far: far, signer: NewSigner(keys), seen: map[uint64]uint64{},
		heard: map[netip.AddrPort]Message{}, notice: make([]byte, MessageLen), log: log}
	if iface != "" {
		ifi, err := net.InterfaceByName(iface)
		if err == nil {
			r.ifindex = ifi.Index
			err = setPktinfo(conn, addr.Addr().Is4())
		}
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("health: reflector interface %s: %w", iface, err)
		}
	}
	return r, nil
}

func setPktinfo(c *net.UDPConn, v4 bool) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = raw.Control(func(fd uintptr) {
		if v4 {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
		} else {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
		}
	})
	return errors.Join(err, serr)
}

// arrivedOn returns the interface index in an IP_PKTINFO/IPV6_PKTINFO
// control message (0 if none).
func arrivedOn(oob []byte) int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return 0
	}
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_PKTINFO && len(m.Data) >= unix.SizeofInet4Pktinfo:
			return int(int32(binary.NativeEndian.Uint32(m.Data[0:4])))
		case m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_PKTINFO && len(m.Data) >= unix.SizeofInet6Pktinfo:
			return int(binary.NativeEndian.Uint32(m.Data[16:20]))
		}
	}
	return 0
}

// Run answers until Close.
func (r *Reflector) Run() {
	buf := make([]byte, 2048)
	oob := make([]byte, 128)
	for {
		n, oobn, _, from, err := r.conn.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // ICMP-induced errors and the like
		}
		if r.ifindex != 0 && arrivedOn(oob[:oobn]) != r.ifindex {
			r.C.Drops[ReflectWrongIface].Add(1)
			continue
		}
		if d := r.answer(buf[:n], from); d >= 0 {
			r.C.Drops[d].Add(1)
			continue
		}
		if _, err := r.conn.WriteToUDPAddrPort(buf[:MessageLen], from); err != nil {
			r.log.Debug("probe reply", "to", from, "err", err)
			continue
		}
		if Kind(buf[5]) == KindNotice {
			r.C.Notices.Add(1)
		} else {
			r.C.Answered.Add(1)
		}
	}
}

// answer turns a request in b from src into its reply (or, while the
// lane cannot work, a notice), in place, or returns why not.
func (r *Reflector) answer(b []byte, src netip.AddrPort) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	m, err := r.signer.Parse(b, r.far)
	switch {
	case errors.Is(err, ErrMAC):
		return ReflectBadMAC
	case errors.Is(err, ErrKey):
		return ReflectUnknownKey
	case err != nil || m.Kind != KindRequest:
		return ReflectBadFormat
	case m.Lane != r.lane:
		return ReflectWrongLane
	}
	if last, ok := r.seen[m.Session]; ok && m.Seq <= last {
		return ReflectReplay
	}
	if len(r.seen) >= maxSessions {
		clear(r.seen)
	}
	r.seen[m.Session] = m.Seq
	r.C.Probes.Add(1)
	r.remember(src, m)
	m.Kind = KindReply
	if d := Diag(r.cond.Load()); d != DiagNone {
		m.Kind, m.Diag = KindNotice, d
	}
	if !r.signer.Put(b, m) {
		return ReflectUnknownKey
	}
	return -1
}

// remember keeps the latest probe of each demux (with mu held).
func (r *Reflector) remember(src netip.AddrPort, m Message) {
	if _, ok := r.heard[src]; !ok && len(r.heard) >= maxHeard {
		clear(r.heard)
	}
	r.heard[src] = m
}

// SawProbe is called with each probe the gateway forwards into its lane
// from its own demux (the inner packet of a GENEVE OAM frame): the
// gateway remembers it, and answers it with a notice while its lane
// cannot work. Probes that fail authentication are ignored.
func (r *Reflector) SawProbe(inner []byte) {
	src, payload, ok := probePayload(inner)
	if !ok {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	m, err := r.signer.Parse(payload, r.side)
	if err != nil || m.Kind != KindRequest || m.Lane != r.lane {
		return
	}
	if old, ok := r.heard[src]; ok && old.Session == m.Session && m.Seq <= old.Seq {
		return // a replay
	}
	r.C.Probes.Add(1)
	r.remember(src, m)
	if d := Diag(r.cond.Load()); d != DiagNone {
		r.sendNotice(src, m, d)
	}
}

// probePayload returns the source and UDP payload of an inner probe
// packet (IPv4 or IPv6, as PutInner writes them).
func probePayload(pkt []byte) (netip.AddrPort, []byte, bool) {
	var src netip.Addr
	var udp []byte
	switch packet.Version(pkt) {
	case 4:
		if len(pkt) < packet.IPv4MinLen {
			return netip.AddrPort{}, nil, false
		}
		ip := packet.IPv4(pkt)
		ihl := ip.HeaderLen()
		if ihl < packet.IPv4MinLen || len(pkt) < ihl+packet.UDPLen+MessageLen {
			return netip.AddrPort{}, nil, false
		}
		src, udp = ip.Src(), pkt[ihl:]
	case 6:
		if len(pkt) < packet.IPv6Len+packet.UDPLen+MessageLen {
			return netip.AddrPort{}, nil, false
		}
		src, udp = packet.IPv6(pkt).Src(), pkt[packet.IPv6Len:]
	default:
		return netip.AddrPort{}, nil, false
	}
	return netip.AddrPortFrom(src, packet.UDP(udp).SrcPort()), udp[packet.UDPLen : packet.UDPLen+MessageLen], true
}

// sendNotice answers probe m of the demux at to with diag (mu held).
func (r *Reflector) sendNotice(to netip.AddrPort, m Message, diag Diag) {
	m.Kind, m.Diag = KindNotice, diag
	if !r.signer.Put(r.notice, m) {
		return
	}
	if _, err := r.conn.WriteToUDPAddrPort(r.notice, to); err != nil {
		r.log.Debug("lane notice", "to", to, "err", err)
		return
	}
	r.C.Notices.Add(1)
}

// SetCondition says whether the gateway's lane can work (DiagNone) or
// why not. When a condition starts, every demux heard from lately is told
// at once, answering its latest probe; after that each probe seen is
// answered with a notice until the condition clears.
func (r *Reflector) SetCondition(d Diag) {
	if Diag(r.cond.Swap(uint32(d))) == d {
		return
	}
	r.log.Info("lane condition", "diag", d.String())
	if d == DiagNone {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for to, m := range r.heard {
		r.sendNotice(to, m, d)
	}
}

// SetKeys replaces the reflector's keys (a reload that rotates the
// peering secret).
func (r *Reflector) SetKeys(k *keyring.Ring) {
	r.mu.Lock()
	r.signer.SetRing(k)
	r.mu.Unlock()
}

// Condition returns what SetCondition last set.
func (r *Reflector) Condition() Diag { return Diag(r.cond.Load()) }

// Close stops Run.
func (r *Reflector) Close() error { return r.conn.Close() }

// DropCounts returns the unanswered datagrams by reason.
func (r *Reflector) DropCounts() map[string]uint64 {
	m := make(map[string]uint64, numReflectDrops)
	for i, name := range reflectDropNames {
		m[name] = r.C.Drops[i].Load()
	}
	return m
}

// ReflectorStatus is what `tunnel show` prints of the reflector.
type ReflectorStatus struct {
	Address   string            `json:"address"`
	Answered  uint64            `json:"answered"`
	Notices   uint64            `json:"notices"`
	Condition string            `json:"condition"`
	Drops     map[string]uint64 `json:"drops"`
	KeyID     string            `json:"key_id,omitempty"` // the generation its replies are signed with ("": none signs now)
}

// Status returns the reflector's counters.
func (r *Reflector) Status() ReflectorStatus {
	st := ReflectorStatus{Address: r.conn.LocalAddr().String(), Answered: r.C.Answered.Load(),
		Notices: r.C.Notices.Load(), Condition: r.Condition().String(), Drops: r.DropCounts()}
	r.mu.Lock()
	if id, ok := r.signer.Signing(); ok {
		st.KeyID = fmt.Sprintf("%#02x", id)
	}
	r.mu.Unlock()
	return st
}

var (
	descAnswered    = prometheus.NewDesc("clusterpeer_gateway_probes_answered_total", "Lane probes from the far demux answered.", []string{"lane", "gateway"}, nil)
	descReflectDrop = prometheus.NewDesc("clusterpeer_gateway_probe_drops_total", "Datagrams on the probe port not answered, by reason.", []string{"lane", "gateway", "reason"}, nil)
	descNotices     = prometheus.NewDesc("clusterpeer_gateway_lane_notices_total", "Notices sent to demuxes that the lane cannot work.", []string{"lane", "gateway"}, nil)
	descCondition   = prometheus.NewDesc("clusterpeer_gateway_lane_condition", "Why the gateway reports its lane down (BFD diagnostic code; 0: it can work).", []string{"lane", "gateway"}, nil)
)

// Collector exports the reflector's counters under the gateway's labels.
func (r *Reflector) Collector(lane, gateway string) prometheus.Collector {
	return reflectorCollector{r, lane, gateway}
}

type reflectorCollector struct {
	r             *Reflector
	lane, gateway string
}

func (c reflectorCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descAnswered
	ch <- descReflectDrop
	ch <- descNotices
	ch <- descCondition
}

func (c reflectorCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(descAnswered, prometheus.CounterValue, float64(c.r.C.Answered.Load()), c.lane, c.gateway)
	ch <- prometheus.MustNewConstMetric(descNotices, prometheus.CounterValue, float64(c.r.C.Notices.Load()), c.lane, c.gateway)
	ch <- prometheus.MustNewConstMetric(descCondition, prometheus.GaugeValue, float64(c.r.cond.Load()), c.lane, c.gateway)
	for reason, n := range c.r.DropCounts() {
		ch <- prometheus.MustNewConstMetric(descReflectDrop, prometheus.CounterValue, float64(n), c.lane, c.gateway, reason)
	}
}
