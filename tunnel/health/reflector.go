package health

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clusterpeer/clusterpeer/flowhash"
)

// Reflector answers the probes that reach a gateway through its lane. It
// listens on the gateway's own address; the reply goes to the probe's
// source (a demux on the far side), which the gateway's routes send back
// into the lane.
type Reflector struct {
	conn   *net.UDPConn
	lane   flowhash.LaneID
	signer *Signer
	seen   map[uint64]uint64 // prober session -> highest seq answered
	log    *slog.Logger

	C ReflectorCounters
}

// ReflectorCounters count what the reflector saw.
type ReflectorCounters struct {
	Answered atomic.Uint64
	Drops    [numReflectDrops]atomic.Uint64
}

// Why a datagram was not answered.
const (
	ReflectBadFormat = iota // not a probe request
	ReflectBadMAC           // failed authentication: forged or another peering's key
	ReflectWrongLane        // a probe for another lane reached this gateway
	ReflectReplay           // a request seen before (sequence not newer)
	numReflectDrops
)

var reflectDropNames = [numReflectDrops]string{"bad_format", "bad_mac", "wrong_lane", "replay"}

// maxSessions bounds the replay memory; the oldest entries are forgotten
// wholesale (a demux restart makes a new session).
const maxSessions = 64

// NewReflector listens on addr for lane's probes.
func NewReflector(addr netip.AddrPort, lane flowhash.LaneID, key Key, log *slog.Logger) (*Reflector, error) {
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return nil, fmt.Errorf("health: reflector on %s: %w", addr, err)
	}
	if log == nil {
		log = slog.Default()
	}
	return &Reflector{conn: conn, lane: lane, signer: NewSigner(key), seen: map[uint64]uint64{}, log: log}, nil
}

// Run answers until Close.
func (r *Reflector) Run() {
	buf := make([]byte, 2048)
	for {
		n, from, err := r.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // ICMP-induced errors and the like
		}
		if d := r.answer(buf[:n]); d >= 0 {
			r.C.Drops[d].Add(1)
			continue
		}
		if _, err := r.conn.WriteToUDPAddrPort(buf[:MessageLen], from); err != nil {
			r.log.Debug("probe reply", "to", from, "err", err)
			continue
		}
		r.C.Answered.Add(1)
	}
}

// answer turns a request in b into its reply, in place, or returns why not.
func (r *Reflector) answer(b []byte) int {
	m, err := r.signer.Parse(b)
	switch {
	case errors.Is(err, ErrMAC):
		return ReflectBadMAC
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
	m.Kind = KindReply
	r.signer.Put(b, m)
	return -1
}

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
	Address  string            `json:"address"`
	Answered uint64            `json:"answered"`
	Drops    map[string]uint64 `json:"drops"`
}

// Status returns the reflector's counters.
func (r *Reflector) Status() ReflectorStatus {
	return ReflectorStatus{Address: r.conn.LocalAddr().String(), Answered: r.C.Answered.Load(), Drops: r.DropCounts()}
}

var (
	descAnswered    = prometheus.NewDesc("clusterpeer_gateway_probes_answered_total", "Lane probes from the far demux answered.", []string{"lane", "gateway"}, nil)
	descReflectDrop = prometheus.NewDesc("clusterpeer_gateway_probe_drops_total", "Datagrams on the probe port not answered, by reason.", []string{"lane", "gateway", "reason"}, nil)
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
}

func (c reflectorCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(descAnswered, prometheus.CounterValue, float64(c.r.C.Answered.Load()), c.lane, c.gateway)
	for reason, n := range c.r.DropCounts() {
		ch <- prometheus.MustNewConstMetric(descReflectDrop, prometheus.CounterValue, float64(n), c.lane, c.gateway, reason)
	}
}
