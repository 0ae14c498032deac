//go:build linux

package xdp

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clusterpeer/clusterpeer/flowhash"
)

// reasonNames are demux.c's enum reason, in order (a test holds them
// to it).
var reasonNames = [...]string{
	"tx", "redirect", "not_ip", "not_ours", "not_remote", "malformed",
	"ip_options", "fragment", "ipv6_ext", "icmp_error", "proto", "ttl",
	"too_big", "no_snapshot", "no_target", "no_lane", "encap_failed",
	"handover",
}

// Verdict says what the program did for a reason: "sent", "passed" (to
// the kernel and the userspace demux) or "dropped".
func Verdict(reason string) string {
	switch reason {
	case "tx", "redirect":
		return "sent"
	case "no_lane", "encap_failed":
		return "dropped"
	}
	return "passed"
}

// LaneCount is what the program sent into one lane.
type LaneCount struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// Counters are the program's per-CPU counters, summed.
type Counters struct {
	Reasons map[string]uint64             `json:"reasons"`
	Lanes   map[flowhash.LaneID]LaneCount `json:"lanes"`
}

// Counters reads the program's counters (a map lookup per reason and per
// published lane: for status and scrapes, not per packet).
func (p *Program) Counters() (Counters, error) {
	p.mu.Lock()
	lanes := p.lanes
	p.mu.Unlock()
	c := Counters{Reasons: map[string]uint64{}, Lanes: map[flowhash.LaneID]LaneCount{}}
	var per []uint64
	for i, name := range reasonNames {
		if err := p.objs.Stats.Lookup(uint32(i), &per); err != nil {
			return c, fmt.Errorf("xdp: read counter %s: %w", name, err)
		}
		var n uint64
		for _, v := range per {
			n += v
		}
		c.Reasons[name] = n
	}
	var lc []demuxLaneCounter
	for _, id := range lanes {
		if err := p.objs.LaneStats.Lookup(uint32(id), &lc); err != nil {
			return c, fmt.Errorf("xdp: read lane %d counters: %w", id, err)
		}
		var sum LaneCount
		for _, v := range lc {
			sum.Packets += v.Packets
			sum.Bytes += v.Bytes
		}
		c.Lanes[id] = sum
	}
	return c, nil
}

// LanePackets is the packets the program sent into a lane (the demux adds
// them to its own when it judges whether a draining lane is idle).
func (p *Program) LanePackets(id flowhash.LaneID) uint64 {
	var lc []demuxLaneCounter
	if err := p.objs.LaneStats.Lookup(uint32(id), &lc); err != nil {
		return 0
	}
	var n uint64
	for _, v := range lc {
		n += v.Packets
	}
	return n
}

// Status is the fast path as `demux show` prints it.
type Status struct {
	Attachment
	Snapshot uint64                        `json:"snapshot_version"`
	Reasons  map[string]uint64             `json:"reasons"`
	Lanes    map[flowhash.LaneID]LaneCount `json:"lanes"`
	Pins     PinStats                      `json:"pins"`
	// Unresolved lists lanes whose gateway has no resolved MAC: their
	// packets go to the userspace demux.
	Unresolved []flowhash.LaneID `json:"unresolved,omitempty"`
	// HandoverWrittenOff counts packets the program passed up that the
	// userspace demux never finished with (lost on the way up, as a full
	// TUN queue drops them): the hand-over ledger stopped waiting for them.
	HandoverWrittenOff uint64 `json:"handover_written_off"`
	// The program's runs and their total run time, as the kernel counts
	// them while it keeps BPF statistics (sysctl kernel.bpf_stats_enabled,
	// or a process holding BPF_ENABLE_STATS: `bench xdp` does); counting
	// costs a clock read per run, so it is off by default and these stay 0.
	Runs    uint64 `json:"runs"`
	RunTime uint64 `json:"run_time_ns"`
	Error   string `json:"error,omitempty"`
}

// Status reports where the program runs and what it counted.
func (p *Program) Status() *Status {
	c, err := p.Counters()
	pins, perr := p.PinStats()
	err = errors.Join(err, perr)
	p.mu.Lock()
	defer p.mu.Unlock()
	st := &Status{Attachment: p.attached, Snapshot: p.published.Load(), Reasons: c.Reasons, Lanes: c.Lanes, Pins: pins,
		HandoverWrittenOff: p.writtenOff.Load()}
	if ps, serr := p.objs.XdpDemux.Stats(); serr == nil {
		st.Runs, st.RunTime = ps.RunCount, uint64(ps.Runtime)
	}
	for _, t := range p.targets {
		if t.Ifindex == 0 {
			st.Unresolved = append(st.Unresolved, t.Lane)
		}
	}
	if err != nil {
		st.Error = err.Error()
	}
	return st
}

var (
	descPackets = prometheus.NewDesc("clusterpeer_xdp_packets_total",
		"Packets the XDP fast path handled, by verdict (sent, passed to the kernel and the userspace demux, dropped) and reason.",
		[]string{"verdict", "reason"}, nil)
	descLanePackets = prometheus.NewDesc("clusterpeer_xdp_lane_packets_total",
		"Inner packets the XDP fast path sent into each lane.", []string{"lane"}, nil)
	descLaneBytes = prometheus.NewDesc("clusterpeer_xdp_lane_bytes_total",
		"Inner bytes the XDP fast path sent into each lane.", []string{"lane"}, nil)
	descAttached = prometheus.NewDesc("clusterpeer_xdp_attached",
		"1 while the XDP fast path is attached, labelled with its interface and mode.", []string{"interface", "mode"}, nil)
	descPins = prometheus.NewDesc("clusterpeer_xdp_pins",
		"Flow pins in the XDP fast path's map, idle ones until swept.", nil, nil)
	descPinCapacity = prometheus.NewDesc("clusterpeer_xdp_pin_capacity",
		"The most flow pins the XDP fast path's map holds (hash.pin_flows).", nil, nil)
	descPinInserts = prometheus.NewDesc("clusterpeer_xdp_pin_inserts_total",
		"Flow pins the XDP fast path wrote for new flows.", nil, nil)
	descPinUnpinned = prometheus.NewDesc("clusterpeer_xdp_pin_unpinned_total",
		"New flows the XDP fast path could not pin, its map full: they follow the table.", nil, nil)
	descPinRemoved = prometheus.NewDesc("clusterpeer_xdp_pin_removals_total",
		"Flow pins the sweep deleted: idle, or (under pressure) live ones the table agrees with, whose flows did not move.",
		[]string{"why"}, nil)
	descWrittenOff = prometheus.NewDesc("clusterpeer_xdp_handover_written_off_total",
		"Packets the XDP fast path passed up that the userspace demux never finished with (dropped on the way, e.g. its TUN queue full): their flows stopped waiting behind them.", nil, nil)
	descRuns = prometheus.NewDesc("clusterpeer_xdp_program_runs_total",
		"Runs of the XDP program, counted while the kernel keeps BPF statistics (kernel.bpf_stats_enabled=1); 0 otherwise.", nil, nil)
	descRunTime = prometheus.NewDesc("clusterpeer_xdp_program_run_seconds_total",
		"The XDP program's total run time, counted while the kernel keeps BPF statistics; divided by the runs, its cost per packet.", nil, nil)
)

// Describe implements prometheus.Collector.
func (p *Program) Describe(ch chan<- *prometheus.Desc) {
	ch <- descPackets
	ch <- descLanePackets
	ch <- descLaneBytes
	ch <- descAttached
	ch <- descPins
	ch <- descPinCapacity
	ch <- descPinInserts
	ch <- descPinUnpinned
	ch <- descPinRemoved
	ch <- descRuns
	ch <- descRunTime
	ch <- descWrittenOff
}

// Collect implements prometheus.Collector.
func (p *Program) Collect(ch chan<- prometheus.Metric) {
	st := p.Status()
	ch <- prometheus.MustNewConstMetric(descAttached, prometheus.GaugeValue, 1, st.Interface, string(st.Mode))
	for _, name := range reasonNames {
		ch <- prometheus.MustNewConstMetric(descPackets, prometheus.CounterValue, float64(st.Reasons[name]), Verdict(name), name)
	}
	ch <- prometheus.MustNewConstMetric(descPins, prometheus.GaugeValue, float64(st.Pins.Held))
	ch <- prometheus.MustNewConstMetric(descPinCapacity, prometheus.GaugeValue, float64(st.Pins.Capacity))
	ch <- prometheus.MustNewConstMetric(descPinInserts, prometheus.CounterValue, float64(st.Pins.Inserts))
	ch <- prometheus.MustNewConstMetric(descPinUnpinned, prometheus.CounterValue, float64(st.Pins.Unpinned))
	ch <- prometheus.MustNewConstMetric(descPinRemoved, prometheus.CounterValue, float64(st.Pins.Expired), "idle")
	ch <- prometheus.MustNewConstMetric(descPinRemoved, prometheus.CounterValue, float64(st.Pins.Evicted), "agreeing")
	ch <- prometheus.MustNewConstMetric(descRuns, prometheus.CounterValue, float64(st.Runs))
	ch <- prometheus.MustNewConstMetric(descRunTime, prometheus.CounterValue, float64(st.RunTime)/1e9)
	ch <- prometheus.MustNewConstMetric(descWrittenOff, prometheus.CounterValue, float64(st.HandoverWrittenOff))
	for id, lc := range st.Lanes {
		l := strconv.Itoa(int(id))
		ch <- prometheus.MustNewConstMetric(descLanePackets, prometheus.CounterValue, float64(lc.Packets), l)
		ch <- prometheus.MustNewConstMetric(descLaneBytes, prometheus.CounterValue, float64(lc.Bytes), l)
	}
}
