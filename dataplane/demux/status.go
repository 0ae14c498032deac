package demux

import (
	"fmt"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clusterpeer/clusterpeer/flowhash"
	"github.com/clusterpeer/clusterpeer/tunnel/probe"
)

// Status is the demux's state as `demux show` prints it.
type Status struct {
	Node     string `json:"node"`
	Peering  string `json:"peering"`
	Side     string `json:"side"`
	Tun      string `json:"tun"`
	Queues   int    `json:"tun_queues"` // each read by a loop of its own
	MTU      int    `json:"mtu"`
	VNI      uint32 `json:"vni"`
	Hash     string `json:"hash"`
	Packets  uint64 `json:"packets"`
	Bytes    uint64 `json:"bytes"`
	TooBig   uint64 `json:"too_big"`
	ICMPSent uint64 `json:"icmp_sent"`
	// Too-big errors not sent: over the sender's budget or everyone's.
	ICMPLimited uint64 `json:"icmp_limited"`
	ReadErrors  uint64 `json:"tun_read_errors"` // failed TUN reads, survived
	Held        uint64 `json:"held"`            // packets held through a failed lane's settle window
	// ICMP errors about a lane that quoted nothing this demux sent there.
	ICMPUnmatched uint64            `json:"icmp_unmatched"`
	Drops         map[string]uint64 `json:"drops"`
	PinnedFlows   int               `json:"pinned_flows"`
	// Live pins pushed out of a full table, and of those the ones whose
	// flow changed lane (the table disagreed with the pin).
	PinEvictions      uint64       `json:"pin_evictions"`
	PinEvictionsMoved uint64       `json:"pin_evictions_moved"`
	Lanes             []LaneStatus `json:"lanes"`
	// Probing is the lane probe setup (nil: health checks off).
	Probing *Probing `json:"probing,omitempty"`
}

// Probing describes the prober: the interval in effect and reply drops.
// The caller sets Multiplier and UpAfter; Status fills in the rest.
type Probing struct {
	Interval   time.Duration     `json:"interval_ns"`
	Multiplier int               `json:"detect_multiplier"`
	UpAfter    int               `json:"up_after"`
	Drops      map[string]uint64 `json:"reply_drops"`
	Signals    map[string]uint64 `json:"signals"`          // lanes taken down on a failure signal, by kind
	KeyID      string            `json:"key_id,omitempty"` // the key generation probes are signed with now
}

// LaneStatus is one lane as the demux sees it.
type LaneStatus struct {
	ID            flowhash.LaneID      `json:"id"`
	State         LaneState            `json:"state"`
	Admin         string               `json:"admin"`
	Healthy       bool                 `json:"healthy"` // the probes' verdict
	Weight        uint32               `json:"weight"`
	Gateway       string               `json:"gateway"`
	Source        string               `json:"source,omitempty"` // file or store
	Address       string               `json:"address"`
	Since         time.Time            `json:"since"` // of the last transition
	Transitions   uint64               `json:"transitions"`
	Failovers     uint64               `json:"failovers"` // times it left the table because it died
	Reason        string               `json:"reason"`    // of the last change
	DrainDeadline time.Time            `json:"drain_deadline,omitzero"`
	Probes        *probe.SessionStatus `json:"probes,omitempty"`
	Packets       uint64               `json:"packets"`
	Bytes         uint64               `json:"bytes"`
	SendErrors    uint64               `json:"send_errors"`
}

// Status fills the counters and lanes into st (whose identity fields the
// caller sets).
func (d *Demux) Status(st Status) Status {
	st.Queues = len(d.queues)
	st.Packets = d.C.Packets.Load()
	st.Bytes = d.C.Bytes.Load()
	st.TooBig = d.C.TooBig.Load()
	st.ICMPSent, st.ICMPLimited = d.C.ICMPSent.Load(), d.C.ICMPLimited.Load()
	st.ReadErrors = d.C.ReadErrors.Load()
	st.Held, st.ICMPUnmatched = d.C.Held.Load(), d.C.ICMPUnmatched.Load()
	st.Drops = d.drops()
	ps := d.cfg.Selector.Pins().Stats()
	st.PinnedFlows, st.PinEvictions, st.PinEvictionsMoved = ps.Held, ps.Evictions, ps.Moved
	if pr := d.lanes.prober(); pr != nil && st.Probing != nil {
		p := *st.Probing
		p.Interval, p.Drops, p.Signals = pr.Interval(), pr.DropCounts(), pr.SignalCounts()
		if k, ok := pr.(interface{ KeyID() (uint8, bool) }); ok {
			if id, ok := k.KeyID(); ok {
				p.KeyID = fmt.Sprintf("%#02x", id)
			}
		}
		st.Probing = &p
	}
	st.Lanes = d.laneStatus(nil)
	if len(st.Lanes) == 0 {
		// Lanes set on the selector directly (no ApplyLanes).
		targets := d.targets.Load()
		for _, l := range d.cfg.Selector.Snapshot().Lanes {
			ls := LaneStatus{ID: l.ID, State: LaneState(l.State.String()), Healthy: l.State == flowhash.LaneUp, Weight: l.Weight}
			if t := targets[l.ID]; t != nil {
				ls.Gateway, ls.Address = t.Name, t.Addr.String()
			}
			st.Lanes = append(st.Lanes, ls)
		}
	}
	for i := range st.Lanes {
		c := &d.C.Lanes[st.Lanes[i].ID]
		st.Lanes[i].Packets, st.Lanes[i].Bytes, st.Lanes[i].SendErrors = c.Packets.Load(), c.Bytes.Load(), c.SendErrors.Load()
	}
	return st
}

func (d *Demux) drops() map[string]uint64 {
	m := map[string]uint64{DropTooBig: d.C.TooBig.Load(), DropSendError: d.C.SendErrors.Load(), DropNotRemote: d.C.NotRemote.Load()}
	for i := flowhash.Drop(1); i < flowhash.NumDrops; i++ {
		m[i.String()] = d.C.Drops[i].Load()
	}
	return m
}

var (
	descPackets   = prometheus.NewDesc("clusterpeer_demux_packets_total", "Packets read from the demux TUN.", nil, nil)
	descBytes     = prometheus.NewDesc("clusterpeer_demux_bytes_total", "Bytes of inner packets read from the demux TUN.", nil, nil)
	descDrops     = prometheus.NewDesc("clusterpeer_demux_drops_total", "Packets the demux dropped, by reason.", []string{"reason"}, nil)
	descICMP      = prometheus.NewDesc("clusterpeer_demux_icmp_sent_total", "ICMP fragmentation-needed / packet-too-big errors sent.", nil, nil)
	descICMPLim   = prometheus.NewDesc("clusterpeer_demux_icmp_limited_total", "Too-big errors not sent: over the sender's budget or the demux's.", nil, nil)
	descICMPUnm   = prometheus.NewDesc("clusterpeer_demux_icmp_unmatched_total", "ICMP errors about a lane's gateway that quoted nothing this demux sent there lately (forged, stale or about another lane): ignored.", nil, nil)
	descReadErrs  = prometheus.NewDesc("clusterpeer_demux_tun_read_errors_total", "Failed reads of the demux TUN (survived; a TUN failing for 5 s stops the demux).", nil, nil)
	descPinned    = prometheus.NewDesc("clusterpeer_demux_pinned_flows", "Flows currently pinned to a lane (idle ones leave within seconds of their timeout).", nil, nil)
	descPinIns    = prometheus.NewDesc("clusterpeer_demux_pin_inserts_total", "Flow pins written (new flows, and flows whose lane died).", nil, nil)
	descPinEvict  = prometheus.NewDesc("clusterpeer_demux_pin_evictions_total", "Live pins pushed out of a full pin table; moved: the flow changed lane (the table disagreed), kept: it did not.", []string{"flow"}, nil)
	descHeld      = prometheus.NewDesc("clusterpeer_demux_held_packets_total", "Packets held through a failed lane's settle window, then sent on its flows' new lanes.", nil, nil)
	descSignals   = prometheus.NewDesc("clusterpeer_demux_lane_signals_total", "Failure signals acted on (ICMP errors quoting what was sent, gateways' notices), by kind.", []string{"kind"}, nil)
	descLanePkts  = prometheus.NewDesc("clusterpeer_lane_packets_total", "Packets sent to the lane's gateway.", []string{"lane", "gateway"}, nil)
	descLaneBytes = prometheus.NewDesc("clusterpeer_lane_bytes_total", "Inner bytes sent to the lane's gateway.", []string{"lane", "gateway"}, nil)
	descLaneDrops = prometheus.NewDesc("clusterpeer_lane_drops_total", "Packets for the lane that were dropped, by reason.", []string{"lane", "gateway", "reason"}, nil)
	descLaneUp    = prometheus.NewDesc("clusterpeer_lane_up", "1 if the lane takes new flows, 0 if draining or down.", []string{"lane", "gateway"}, nil)
	descHealthy   = prometheus.NewDesc("clusterpeer_lane_healthy", "1 if the lane's probes say it works end to end.", []string{"lane", "gateway"}, nil)
	descState     = prometheus.NewDesc("clusterpeer_lane_state", "1 for the lane's current state.", []string{"lane", "gateway", "state"}, nil)
	descTrans     = prometheus.NewDesc("clusterpeer_lane_transitions_total", "Lane state changes.", []string{"lane", "gateway"}, nil)
	descFailovers = prometheus.NewDesc("clusterpeer_lane_failovers_total", "Times the lane died and its flows moved to the others.", []string{"lane", "gateway"}, nil)
	descChanged   = prometheus.NewDesc("clusterpeer_lane_last_change_timestamp_seconds", "Unix time of the lane's last state change.", []string{"lane", "gateway"}, nil)
	descRTT       = prometheus.NewDesc("clusterpeer_lane_probe_rtt_seconds", "Smoothed round trip of the lane's probes, demux to far gateway and back.", []string{"lane", "gateway"}, nil)
	descLoss      = prometheus.NewDesc("clusterpeer_lane_probe_loss_ratio", "Share of the lane's recent probes unanswered.", []string{"lane", "gateway"}, nil)
	descProbes    = prometheus.NewDesc("clusterpeer_lane_probes_sent_total", "Probes sent on the lane.", []string{"lane", "gateway"}, nil)
	descAnswers   = prometheus.NewDesc("clusterpeer_lane_probes_answered_total", "Probes answered on the lane.", []string{"lane", "gateway"}, nil)
	descReplyDrop = prometheus.NewDesc("clusterpeer_demux_probe_reply_drops_total", "Datagrams on the probe port not counted as replies, by reason.", []string{"reason"}, nil)
)

// Describe implements prometheus.Collector.
func (d *Demux) Describe(ch chan<- *prometheus.Desc) {
	for _, x := range []*prometheus.Desc{descPackets, descBytes, descDrops, descICMP, descICMPLim, descICMPUnm, descReadErrs, descPinned, descPinIns, descPinEvict, descHeld, descSignals, descLanePkts, descLaneBytes, descLaneDrops, descLaneUp,
		descHealthy, descState, descTrans, descFailovers, descChanged, descRTT, descLoss, descProbes, descAnswers, descReplyDrop} {
		ch <- x
	}
}

// Collect implements prometheus.Collector, reading the counters at scrape
// time, so the data path never touches a metric object.
func (d *Demux) Collect(ch chan<- prometheus.Metric) {
	st := d.Status(Status{})
	counter := prometheus.CounterValue
	ch <- prometheus.MustNewConstMetric(descPackets, counter, float64(st.Packets))
	ch <- prometheus.MustNewConstMetric(descBytes, counter, float64(st.Bytes))
	ch <- prometheus.MustNewConstMetric(descICMP, counter, float64(st.ICMPSent))
	ch <- prometheus.MustNewConstMetric(descICMPLim, counter, float64(st.ICMPLimited))
	ch <- prometheus.MustNewConstMetric(descICMPUnm, counter, float64(st.ICMPUnmatched))
	ch <- prometheus.MustNewConstMetric(descReadErrs, counter, float64(st.ReadErrors))
	ch <- prometheus.MustNewConstMetric(descPinned, prometheus.GaugeValue, float64(st.PinnedFlows))
	ps := d.cfg.Selector.Pins().Stats()
	ch <- prometheus.MustNewConstMetric(descPinIns, counter, float64(ps.Inserts))
	ch <- prometheus.MustNewConstMetric(descPinEvict, counter, float64(ps.Moved), "moved")
	ch <- prometheus.MustNewConstMetric(descPinEvict, counter, float64(ps.Evictions-ps.Moved), "kept")
	ch <- prometheus.MustNewConstMetric(descHeld, counter, float64(st.Held))
	if pr := d.lanes.prober(); pr != nil {
		for kind, n := range pr.SignalCounts() {
			ch <- prometheus.MustNewConstMetric(descSignals, counter, float64(n), kind)
		}
	}
	for reason, n := range st.Drops {
		ch <- prometheus.MustNewConstMetric(descDrops, counter, float64(n), reason)
	}
	for _, l := range st.Lanes {
		id := strconv.Itoa(int(l.ID))
		ch <- prometheus.MustNewConstMetric(descLanePkts, counter, float64(l.Packets), id, l.Gateway)
		ch <- prometheus.MustNewConstMetric(descLaneBytes, counter, float64(l.Bytes), id, l.Gateway)
		ch <- prometheus.MustNewConstMetric(descLaneDrops, counter, float64(l.SendErrors), id, l.Gateway, DropSendError)
		up := 0.0
		if l.State == LaneUp {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(descLaneUp, prometheus.GaugeValue, up, id, l.Gateway)
		ch <- prometheus.MustNewConstMetric(descHealthy, prometheus.GaugeValue, boolValue(l.Healthy), id, l.Gateway)
		for _, s := range laneStates {
			ch <- prometheus.MustNewConstMetric(descState, prometheus.GaugeValue, boolValue(s == l.State), id, l.Gateway, string(s))
		}
		ch <- prometheus.MustNewConstMetric(descTrans, counter, float64(l.Transitions), id, l.Gateway)
		ch <- prometheus.MustNewConstMetric(descFailovers, counter, float64(l.Failovers), id, l.Gateway)
		if !l.Since.IsZero() {
			ch <- prometheus.MustNewConstMetric(descChanged, prometheus.GaugeValue, float64(l.Since.UnixNano())/1e9, id, l.Gateway)
		}
		if p := l.Probes; p != nil {
			ch <- prometheus.MustNewConstMetric(descRTT, prometheus.GaugeValue, p.SmoothedRTT.Seconds(), id, l.Gateway)
			ch <- prometheus.MustNewConstMetric(descLoss, prometheus.GaugeValue, p.Loss, id, l.Gateway)
			ch <- prometheus.MustNewConstMetric(descProbes, counter, float64(p.Sent), id, l.Gateway)
			ch <- prometheus.MustNewConstMetric(descAnswers, counter, float64(p.Received), id, l.Gateway)
		}
	}
	if pr := d.lanes.prober(); pr != nil {
		for reason, n := range pr.DropCounts() {
			ch <- prometheus.MustNewConstMetric(descReplyDrop, counter, float64(n), reason)
		}
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
