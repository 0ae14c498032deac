package membership

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var (
	descUp        = prometheus.NewDesc("clusterpeer_store_up", "1 if the membership store answered the last check (every second), else 0.", []string{"node"}, nil)
	descChange    = prometheus.NewDesc("clusterpeer_store_state_since_seconds", "Unix time of the store's last change between reachable and unreachable.", []string{"node"}, nil)
	descEvents    = prometheus.NewDesc("clusterpeer_store_watch_events_total", "Registration changes received from the store's watch, by type (put, delete), and full reloads (resync).", []string{"node", "type"}, nil)
	descRejected  = prometheus.NewDesc("clusterpeer_store_records_rejected_total", "Registrations refused, by reason (bad_signature, lease_mismatch, stale, ...).", []string{"node", "reason"}, nil)
	descAge       = prometheus.NewDesc("clusterpeer_store_registration_age_seconds", "How long this node has held each registration (its current lease).", []string{"node", "side", "slot", "gateway"}, nil)
	descLost      = prometheus.NewDesc("clusterpeer_store_registration_lost", "1 for a registration whose lease ended without a planned stop, kept while its lane works.", []string{"node", "side", "slot", "gateway"}, nil)
	descMemberSet = []*prometheus.Desc{descUp, descChange, descEvents, descRejected, descAge, descLost}
)

// Collector exports the store's state and the view's registrations as
// node's metrics.
func (v *View) Collector(node string) prometheus.Collector {
	return &collector{v: v, node: node}
}

type collector struct {
	v    *View
	node string
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range descMemberSet {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	h := c.v.s.Health()
	up := 0.0
	if h.Up {
		up = 1
	}
	ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, up, c.node)
	ch <- prometheus.MustNewConstMetric(descChange, prometheus.GaugeValue, float64(h.Since.UnixMilli())/1e3, c.node)
	ch <- prometheus.MustNewConstMetric(descEvents, prometheus.CounterValue, float64(c.v.Events.Puts.Load()), c.node, "put")
	ch <- prometheus.MustNewConstMetric(descEvents, prometheus.CounterValue, float64(c.v.Events.Deletes.Load()), c.node, "delete")
	ch <- prometheus.MustNewConstMetric(descEvents, prometheus.CounterValue, float64(c.v.Events.Resyncs.Load()), c.node, "resync")
	for r, n := range c.v.Rejected() {
		ch <- prometheus.MustNewConstMetric(descRejected, prometheus.CounterValue, float64(n), c.node, string(r))
	}
	now := time.Now()
	for _, m := range c.v.Members() {
		lbl := []string{c.node, string(m.Side), strconv.Itoa(m.Slot), m.Name}
		ch <- prometheus.MustNewConstMetric(descAge, prometheus.GaugeValue, now.Sub(m.Seen).Seconds(), lbl...)
		lost := 0.0
		if m.Lost {
			lost = 1
		}
		ch <- prometheus.MustNewConstMetric(descLost, prometheus.GaugeValue, lost, lbl...)
	}
}
