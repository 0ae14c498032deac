package gateway

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/clusterpeer/clusterpeer/tunnel/probe"
)

// Status is a gateway's state as `tunnel show` prints it. It holds public
// keys only.
type Status struct {
	Node             string            `json:"node"`
	Peering          string            `json:"peering"`
	Side             string            `json:"side"`
	Lane             int               `json:"lane"`
	Tun              string            `json:"tun"`
	MTU              int               `json:"mtu"`
	PublicKey        string            `json:"public_key"`
	ListenPort       uint16            `json:"listen_port"`
	GenevePort       uint16            `json:"geneve_port"`
	Demuxes          []string          `json:"demuxes"`
	Peer             PeerStatus        `json:"peer"`
	PeerName         string            `json:"peer_name"`
	GenevePackets    uint64            `json:"geneve_packets"`
	GeneveBytes      uint64            `json:"geneve_bytes"`
	LocalPackets     uint64            `json:"local_packets"`
	ReadErrors       uint64            `json:"read_errors"` // failed TUN or GENEVE reads, survived
	DeliveredPackets uint64            `json:"delivered_packets"`
	DeliveredBytes   uint64            `json:"delivered_bytes"`
	Drops            map[string]uint64 `json:"drops"`
	// Probes is the reflector answering the far demux's lane probes (nil:
	// health checks off).
	Probes *probe.ReflectorStatus `json:"probes,omitempty"`
}

// Status fills in the counters and the peer's state.
func (l *Lane) Status(st Status) Status {
	c := &l.tdev.C
	st.GenevePackets, st.GeneveBytes = c.GenevePackets.Load(), c.GeneveBytes.Load()
	st.LocalPackets, st.ReadErrors = c.LocalPackets.Load(), c.ReadErrors.Load()
	st.DeliveredPackets, st.DeliveredBytes = c.DeliveredPackets.Load(), c.DeliveredBytes.Load()
	st.Drops = map[string]uint64{}
	for i := Drop(1); i < NumDrops; i++ {
		st.Drops[i.String()] = c.Drops[i].Load()
	}
	st.Peer, _ = l.Peer()
	return st
}

var (
	labels        = []string{"lane", "gateway"}
	descGenPkts   = prometheus.NewDesc("clusterpeer_gateway_geneve_packets_total", "GENEVE packets accepted from the demux.", labels, nil)
	descGenBytes  = prometheus.NewDesc("clusterpeer_gateway_geneve_bytes_total", "Inner bytes accepted from the demux.", labels, nil)
	descLocal     = prometheus.NewDesc("clusterpeer_gateway_local_packets_total", "Packets the gateway itself routed into the lane (its reflector's replies, its ICMP errors).", labels, nil)
	descReadErrs  = prometheus.NewDesc("clusterpeer_gateway_read_errors_total", "Failed reads of the kernel TUN or the GENEVE socket (survived).", labels, nil)
	descDelPkts   = prometheus.NewDesc("clusterpeer_gateway_delivered_packets_total", "Decrypted packets delivered to the local network.", labels, nil)
	descDelBytes  = prometheus.NewDesc("clusterpeer_gateway_delivered_bytes_total", "Decrypted bytes delivered to the local network.", labels, nil)
	descDrops     = prometheus.NewDesc("clusterpeer_gateway_drops_total", "Packets the gateway dropped, by reason.", append(labels, "reason"), nil)
	descWGRx      = prometheus.NewDesc("clusterpeer_gateway_wireguard_rx_bytes_total", "WireGuard bytes received from the peer.", labels, nil)
	descWGTx      = prometheus.NewDesc("clusterpeer_gateway_wireguard_tx_bytes_total", "WireGuard bytes sent to the peer.", labels, nil)
	descHandshake = prometheus.NewDesc("clusterpeer_gateway_wireguard_last_handshake_seconds", "Unix time of the last WireGuard handshake (0: none yet).", labels, nil)
)

// Collector exports the lane's counters, read at scrape time.
func (l *Lane) Collector(lane, gateway string) prometheus.Collector {
	return &collector{l: l, lv: []string{lane, gateway}}
}

type collector struct {
	l  *Lane
	lv []string
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descGenPkts, descGenBytes, descLocal, descReadErrs, descDelPkts, descDelBytes, descDrops, descWGRx, descWGTx, descHandshake} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	st := c.l.Status(Status{})
	cv := prometheus.CounterValue
	ch <- prometheus.MustNewConstMetric(descGenPkts, cv, float64(st.GenevePackets), c.lv...)
	ch <- prometheus.MustNewConstMetric(descGenBytes, cv, float64(st.GeneveBytes), c.lv...)
	ch <- prometheus.MustNewConstMetric(descLocal, cv, float64(st.LocalPackets), c.lv...)
	ch <- prometheus.MustNewConstMetric(descReadErrs, cv, float64(st.ReadErrors), c.lv...)
	ch <- prometheus.MustNewConstMetric(descDelPkts, cv, float64(st.DeliveredPackets), c.lv...)
	ch <- prometheus.MustNewConstMetric(descDelBytes, cv, float64(st.DeliveredBytes), c.lv...)
	for reason, n := range st.Drops {
		ch <- prometheus.MustNewConstMetric(descDrops, cv, float64(n), append(c.lv[:2:2], reason)...)
	}
	ch <- prometheus.MustNewConstMetric(descWGRx, cv, float64(st.Peer.RxBytes), c.lv...)
	ch <- prometheus.MustNewConstMetric(descWGTx, cv, float64(st.Peer.TxBytes), c.lv...)
	hs := 0.0
	if !st.Peer.LastHandshake.IsZero() {
		hs = float64(st.Peer.LastHandshake.Unix())
	}
	ch <- prometheus.MustNewConstMetric(descHandshake, prometheus.GaugeValue, hs, c.lv...)
}
