package demux

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clusterpeer/clusterpeer/flowhash"
)

// Status is the demux's state as `demux show` prints it.
type Status struct {
	Node        string            `json:"node"`
	Peering     string            `json:"peering"`
	Side        string            `json:"side"`
	Tun         string            `json:"tun"`
	MTU         int               `json:"mtu"`
	VNI         uint32            `json:"vni"`
	Hash        string            `json:"hash"`
	Packets     uint64            `json:"packets"`
	Bytes       uint64            `json:"bytes"`
	TooBig      uint64            `json:"too_big"`
	ICMPSent    uint64            `json:"icmp_sent"`
	Drops       map[string]uint64 `json:"drops"`
	PinnedFlows int               `json:"pinned_flows"`
	Lanes       []LaneStatus      `json:"lanes"`
}

// LaneStatus is one lane as the demux sees it.
type LaneStatus struct {
	ID         flowhash.LaneID `json:"id"`
	State      string          `json:"state"`
	Weight     uint32          `json:"weight"`
	Gateway    string          `json:"gateway"`
	Address    string          `json:"address"`
	Packets    uint64          `json:"packets"`
	Bytes      uint64          `json:"bytes"`
	SendErrors uint64          `json:"send_errors"`
}

// Status fills the counters and lanes into st (whose identity fields the
// caller sets).
func (d *Demux) Status(st Status) Status {
	st.Packets = d.C.Packets.Load()
	st.Bytes = d.C.Bytes.Load()
	st.TooBig = d.C.TooBig.Load()
	st.ICMPSent = d.C.ICMPSent.Load()
	st.Drops = d.drops()
	pins := d.cfg.Selector.Pins()
	st.PinnedFlows = pins.Stats(pins.Now()).Live
	targets := d.targets.Load()
	for _, l := range d.cfg.Selector.Snapshot().Lanes {
		ls := LaneStatus{ID: l.ID, State: l.State.String(), Weight: l.Weight}
		if t := targets[l.ID]; t != nil {
			ls.Gateway, ls.Address = t.Name, t.Addr.String()
		}
		c := &d.C.Lanes[l.ID]
		ls.Packets, ls.Bytes, ls.SendErrors = c.Packets.Load(), c.Bytes.Load(), c.SendErrors.Load()
		st.Lanes = append(st.Lanes, ls)
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
	descPinned    = prometheus.NewDesc("clusterpeer_demux_pinned_flows", "Flows currently pinned to a lane.", nil, nil)
	descLanePkts  = prometheus.NewDesc("clusterpeer_lane_packets_total", "Packets sent to the lane's gateway.", []string{"lane", "gateway"}, nil)
	descLaneBytes = prometheus.NewDesc("clusterpeer_lane_bytes_total", "Inner bytes sent to the lane's gateway.", []string{"lane", "gateway"}, nil)
	descLaneDrops = prometheus.NewDesc("clusterpeer_lane_drops_total", "Packets for the lane that were dropped, by reason.", []string{"lane", "gateway", "reason"}, nil)
	descLaneUp    = prometheus.NewDesc("clusterpeer_lane_up", "1 if the lane takes new flows, 0 if draining or down.", []string{"lane", "gateway"}, nil)
)

// Describe implements prometheus.Collector.
func (d *Demux) Describe(ch chan<- *prometheus.Desc) {
	for _, x := range []*prometheus.Desc{descPackets, descBytes, descDrops, descICMP, descPinned, descLanePkts, descLaneBytes, descLaneDrops, descLaneUp} {
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
	ch <- prometheus.MustNewConstMetric(descPinned, prometheus.GaugeValue, float64(st.PinnedFlows))
	for reason, n := range st.Drops {
		ch <- prometheus.MustNewConstMetric(descDrops, counter, float64(n), reason)
	}
	for _, l := range st.Lanes {
		id := strconv.Itoa(int(l.ID))
		ch <- prometheus.MustNewConstMetric(descLanePkts, counter, float64(l.Packets), id, l.Gateway)
		ch <- prometheus.MustNewConstMetric(descLaneBytes, counter, float64(l.Bytes), id, l.Gateway)
		ch <- prometheus.MustNewConstMetric(descLaneDrops, counter, float64(l.SendErrors), id, l.Gateway, DropSendError)
		up := 0.0
		if l.State == flowhash.LaneUp.String() {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(descLaneUp, prometheus.GaugeValue, up, id, l.Gateway)
	}
}
