// Package harness runs the benchmark: it builds the peering in network
// namespaces with the tests' own builder (bench/topology), emulates an
// instance profile on every gateway (a cgroup CPU quota on its process, a
// tc rate on its links), runs iperf3 across for each number of lanes and
// each profile, beside the two baselines over the same links (the kernel
// routing without encryption, and one plain wireguard-go tunnel), and
// records throughput and per-component CPU into a report.Report.
//
// Everything it makes (namespaces, processes, cgroups; the qdiscs go with
// their namespaces) is removed when it returns, also when ctx is cancelled
// by Ctrl-C or a timeout.
package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/clusterpeer/clusterpeer/admin"
	"github.com/clusterpeer/clusterpeer/bench/cgroup"
	"github.com/clusterpeer/clusterpeer/bench/iperf"
	"github.com/clusterpeer/clusterpeer/bench/profile"
	"github.com/clusterpeer/clusterpeer/bench/report"
	"github.com/clusterpeer/clusterpeer/bench/topology"
	"github.com/clusterpeer/clusterpeer/config"
	"github.com/clusterpeer/clusterpeer/dataplane/demux"
)

// Options configure a run.
type Options struct {
	Profiles  *profile.File
	Selected  []profile.Profile
	Emulation profile.Emulation
	Lanes     []int    // numbers of lanes to sweep, ascending
	Tests     []string // "tcp", "udp"
	Duration  time.Duration
	Reps      int
	// iperf3's parallel streams (-P): Streams if set, else StreamsPerLane
	// for each lane of the topology (StreamsFor).
	Streams, StreamsPerLane int
	Bidir                   bool // iperf3 --bidir: both ways at once
	// XDP is the demuxes' fast path (topology.Options.XDP: native,
	// generic or off, the userspace demux alone).
	XDP    string
	Bin    string // directory holding demux and tunnel
	WGO    string // upstream wireguard-go binary for the baseline
	Health config.Health
	// UDP's offered rate: UDPOfTCP > 0 offers that share of the same
	// cell's TCP median (so TCP runs first); else UDPRate bits/s; else
	// min(line rate, lanes x the profile's link rate).
	UDPOfTCP float64
	UDPRate  uint64
	Progress io.Writer
}

// StreamsFor is how many iperf3 streams a topology of lanes gets.
//
// Streams scale with lanes because the demux hashes each stream to one
// lane: k streams over n lanes leave a lane without one with probability
// (1-1/n)^k, so 8 streams covered on average 4.6 of 6 lanes, and a lane
// without a stream adds nothing to the figure. With 4 per lane a lane is
// idle with probability (1-1/n)^(4n) < e^-4, under 2 % at any n (98 % of
// lanes carry at least one stream), while the streams' own cost stays
// small next to the gateways'.
func (o Options) StreamsFor(lanes int) int {
	if o.Streams > 0 {
		return o.Streams
	}
	return max(1, o.StreamsPerLane) * max(1, lanes)
}

// server is host-b's address for iperf3; client runs in host-a.
const server = "10.2.0.10"

// topo is one built topology: a path with a number of lanes.
type topo struct {
	path  string // report.Clusterpeer, Kernel or WireGuardGo
	lanes int
}

// Run measures every cell and returns the report (Summarize not yet
// called). A failed measurement is recorded in its cell and the run goes
// on; a failure to build a topology ends the run.
func Run(ctx context.Context, o Options, rep *report.Report) error {
	h := &harness{o: o, rep: rep, prefix: fmt.Sprintf("cpb%d", os.Getpid()%100000), start: time.Now()}
	var err error
	if h.work, err = os.MkdirTemp("", "clusterpeer-bench."); err != nil {
		return err
	}
	defer os.RemoveAll(h.work)
	if h.cg, err = cgroup.Open(fmt.Sprintf("clusterpeer-bench-%d", os.Getpid())); err != nil {
		return err
	}
	defer h.cg.Close()
	rep.Env.Cgroup = h.cg.Version()

	if o.XDP != "" && o.XDP != "off" {
		// The XDP program runs in the kernel's receive path, in no
		// cgroup: its run time per packet comes from BPF statistics,
		// kept while this is open (a clock read per run: on for the
		// whole run, so every figure pays it alike).
		stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
		if err != nil {
			h.progress("no BPF statistics (Linux 5.8+), the XDP program's time is not counted: %v", err)
		} else {
			defer stats.Close()
		}
	}

	topos := []topo{{report.Kernel, 1}, {report.WireGuardGo, 1}}
	for _, n := range o.Lanes {
		topos = append(topos, topo{report.Clusterpeer, n})
	}
	h.total = len(topos) * len(o.Selected) * len(o.Tests)
	h.topsLeft = len(topos)
	for _, t := range topos {
		if err := h.measure(ctx, t); err != nil {
			return err
		}
		h.topsLeft--
	}
	return nil
}

type harness struct {
	o        Options
	rep      *report.Report
	prefix   string
	work     string
	cg       *cgroup.Manager
	start    time.Time
	done     int // cells measured
	total    int
	topsLeft int
	groups   map[string]*cgroup.Group // by process name: gw-a1, demux-a, iperf3-server, ...
	seq      int                      // topologies built so far, names their cgroups
	p        *topology.Peering        // the topology being measured
}

func (h *harness) ns(node string) string { return h.prefix + "-" + node }

// measure builds topology t, measures every profile and test on it and
// removes it.
func (h *harness) measure(ctx context.Context, t topo) (err error) {
	h.seq++
	o := topology.Options{
		Prefix: h.prefix, Lanes: t.lanes, Bin: h.o.Bin, Health: h.o.Health,
		Work: filepath.Join(h.work, fmt.Sprintf("%s-%d", t.path, t.lanes)),
	}
	switch t.path {
	case report.Clusterpeer:
		o.XDP = h.o.XDP
	case report.Kernel:
		o.Baseline = topology.Kernel
	case report.WireGuardGo:
		o.Baseline, o.WireGuardGo = topology.WireGuardGo, h.o.WGO
	}
	h.progress("building %s with %d lane(s)", t.path, t.lanes)
	p, err := topology.Up(o)
	if err != nil {
		return fmt.Errorf("building %s with %d lanes: %w", t.path, t.lanes, err)
	}
	defer func() {
		p.Close()
		// Not ctx: the namespaces go also when the run is cancelled.
		if derr := topology.Down(o.Prefix, o.Work); derr != nil && err == nil {
			err = derr
		}
	}()
	h.p = p
	if err := h.place(p, t); err != nil {
		return err
	}
	for _, pr := range h.o.Selected {
		if err := h.apply(ctx, t, pr); err != nil {
			return err
		}
		for _, test := range h.o.Tests {
			c := &report.Cell{Path: t.path, Lanes: t.lanes, Profile: pr.Name, Test: test}
			h.rep.Cells = append(h.rep.Cells, c)
			if err := h.cell(ctx, t, pr, c); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				c.Error = err.Error()
				h.progress("%s, %d lane(s), %s, %s: %v", t.path, t.lanes, pr.Name, test, err)
			}
			c.Finish()
			h.done++
		}
	}
	if t.path == report.Clusterpeer {
		h.noteLaneDowns(p, t)
	}
	return nil
}

// place puts the topology's processes into cgroups of their own: each
// gateway (to limit it) and each demux (to account it).
func (h *harness) place(p *topology.Peering, t topo) error {
	h.groups = map[string]*cgroup.Group{}
	var names []string
	switch t.path {
	case report.WireGuardGo:
		names = []string{"gw-a1", "gw-b1"}
	case report.Clusterpeer:
		for i := 1; i <= t.lanes; i++ {
			names = append(names, fmt.Sprintf("gw-a%d", i), fmt.Sprintf("gw-b%d", i))
		}
		names = append(names, "demux-a", "demux-b")
	}
	for _, n := range names {
		pid, err := p.PID(n)
		if err != nil {
			return fmt.Errorf("%s's pid: %w", n, err)
		}
		g, err := h.group(n)
		if err != nil {
			return err
		}
		if err := g.Add(pid); err != nil {
			return err
		}
	}
	return nil
}

// group returns the cgroup for a process name, made on first use (the
// same name is reused across topologies).
func (h *harness) group(name string) (*cgroup.Group, error) {
	if g, ok := h.groups[name]; ok {
		return g, nil
	}
	g, err := h.cg.Group(fmt.Sprintf("t%d-%s", h.seq, name))
	if err != nil {
		return nil, err
	}
	h.groups[name] = g
	return g, nil
}

// apply emulates profile p: CPU quota (and cpuset at 1:1) on every
// gateway, its rate on both of every gateway's links, and the line rate
// on the hosts' links where the VPC limit is enforced.
func (h *harness) apply(ctx context.Context, t topo, p profile.Profile) error {
	l := h.o.Emulation.Limits(p)
	next := h.o.Profiles.Host.ReservedCPUs // cpusets: gateways after the reserved CPUs
	for i := 1; i <= t.lanes; i++ {
		for _, side := range []string{"a", "b"} {
			name := fmt.Sprintf("gw-%s%d", side, i)
			if g, ok := h.groups[name]; ok {
				if err := g.Limit(l.Quota, l.Period); err != nil {
					return err
				}
				if h.o.Emulation.Cpusets {
					if err := g.Pin(fmt.Sprintf("%d-%d", next, next+p.VCPUs-1)); err != nil {
						return err
					}
					next += p.VCPUs
				}
			}
			for _, dev := range []string{"lan0", "wan0"} {
				if err := shape(ctx, h.ns("g"+side+strconv.Itoa(i)), dev, l.RateBitsPS); err != nil {
					return err
				}
			}
		}
	}
	if h.o.Profiles.VPC.Enforce {
		rate := h.o.Emulation.LineRate(h.o.Profiles.VPC)
		for _, host := range []string{"ha", "hb"} {
			if err := shape(ctx, h.ns(host), "lan0", rate); err != nil {
				return err
			}
		}
	}
	return nil
}

// shape limits dev's egress to rate with a token bucket. The bucket holds
// 2 ms at the rate (at least 64 KiB, so a full GSO segment need not be
// split) and the queue 20 ms, about what a cloud NIC's shaper allows.
func shape(ctx context.Context, ns, dev string, rate uint64) error {
	burst := max(64<<10, rate/8/500)
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf",
		"rate", fmt.Sprintf("%dbit", rate), "burst", strconv.FormatUint(burst, 10), "latency", "20ms")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("tc on %s %s: %v: %s", ns, dev, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// cell runs one test Reps times on the current topology and profile.
func (h *harness) cell(ctx context.Context, t topo, p profile.Profile, c *report.Cell) error {
	c.Streams = h.o.StreamsFor(t.lanes)
	test := iperf.Test{Server: server, UDP: c.Test == "udp", Streams: c.Streams, Duration: h.o.Duration, Bidir: h.o.Bidir}
	if test.UDP {
		l := h.o.Emulation.Limits(p)
		switch {
		case h.o.UDPOfTCP > 0:
			tcp := h.rep.Find(t.path, t.lanes, p.Name, "tcp")
			if tcp == nil {
				return errors.New("no TCP figure on this cell to base the UDP rate on")
			}
			test.Rate = uint64(h.o.UDPOfTCP * tcp.MedianBps)
		case h.o.UDPRate > 0:
			test.Rate = h.o.UDPRate
		default: // what the cluster could carry at best: every lane at its link rate
			test.Rate = min(uint64(t.lanes)*l.RateBitsPS, h.o.Emulation.LineRate(h.o.Profiles.VPC))
		}
		c.OfferedBps = float64(test.Rate)
	}
	for rep := 1; rep <= h.o.Reps; rep++ {
		h.progress("%s, %d lane(s), %s, %s, run %d/%d", t.path, t.lanes, p.Name, c.Test, rep, h.o.Reps)
		run, err := h.run(ctx, t, test)
		if err != nil && ctx.Err() == nil {
			// Now and then a UDP run at a CPU-bound gateway's limit does not
			// end: iperf3's control connection shares a lane whose queues
			// are full. One retry, counted in the report.
			h.progress("%s, %d lane(s), %s, %s, run %d/%d again: %v", t.path, t.lanes, p.Name, c.Test, rep, h.o.Reps, err)
			c.Retries++
			run, err = h.run(ctx, t, test)
		}
		if err != nil {
			return err
		}
		c.Runs = append(c.Runs, run)
	}
	return nil
}

// run is one iperf3 client run against a fresh one-off server, with the
// CPU each component used meanwhile.
func (h *harness) run(ctx context.Context, t topo, test iperf.Test) (report.Run, error) {
	srv := exec.Command("ip", "netns", "exec", h.ns("hb"), "iperf3", "-s", "-1", "-B", server)
	if err := srv.Start(); err != nil {
		return report.Run{}, fmt.Errorf("iperf3 server: %w", err)
	}
	defer func() {
		srv.Process.Kill() // only if the client never connected
		srv.Wait()
	}()
	for _, n := range []string{"iperf3-server", "iperf3-client"} {
		if _, err := h.group(n); err != nil {
			return report.Run{}, err
		}
	}
	h.groups["iperf3-server"].Add(srv.Process.Pid)
	if err := h.p.WaitListen(ctx, "hb", 5201, 2*time.Second); err != nil {
		return report.Run{}, err
	}
	w0, werr := h.counters(t)
	before, err := h.snapshot()
	if err != nil {
		return report.Run{}, err
	}
	res, _, err := iperf.Run(ctx, h.ns("ha"), test, func(pid int) { h.groups["iperf3-client"].Add(pid) })
	if err != nil {
		return report.Run{}, err
	}
	after, err := h.snapshot()
	if err != nil {
		return report.Run{}, err
	}
	run := report.Run{Result: res}
	run.CPU, run.Throttled, run.HostBusy = usage(before, after)
	if w1, err := h.counters(t); werr == nil && err == nil && t.path == report.Clusterpeer {
		run.Work = &report.Work{
			Seconds:         after.at.Sub(before.at).Seconds(),
			DemuxPackets:    w1.DemuxPackets - w0.DemuxPackets,
			DemuxXDPSeconds: w1.DemuxXDPSeconds - w0.DemuxXDPSeconds,
			GatewayPackets:  w1.GatewayPackets - w0.GatewayPackets,
		}
	}
	return run, nil
}

// counters reads side a's demux and gateway counters from their metrics
// (totals so far: a run's are the difference). Only a clusterpeer
// topology has them.
func (h *harness) counters(t topo) (report.Work, error) {
	var w report.Work
	if t.path != report.Clusterpeer {
		return w, nil
	}
	body, err := h.p.Metrics("da")
	if err != nil {
		return w, err
	}
	w.DemuxPackets = metricSum(body, "clusterpeer_demux_packets_total") + metricSum(body, "clusterpeer_xdp_lane_packets_total")
	w.DemuxXDPSeconds = metricSum(body, "clusterpeer_xdp_program_run_seconds_total")
	for i := 1; i <= t.lanes; i++ {
		body, err := h.p.Metrics(fmt.Sprintf("ga%d", i))
		if err != nil {
			return w, err
		}
		w.GatewayPackets += metricSum(body, "clusterpeer_gateway_geneve_packets_total") + metricSum(body, "clusterpeer_gateway_delivered_packets_total")
	}
	return w, nil
}

// metricSum adds up every series of a metric in a Prometheus text scrape.
func metricSum(body, name string) float64 {
	var sum float64
	for _, l := range strings.Split(body, "\n") {
		rest, ok := strings.CutPrefix(l, name)
		if !ok || rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		f := strings.Fields(rest[strings.LastIndexByte(rest, '}')+1:])
		if len(f) == 0 {
			continue
		}
		if v, err := strconv.ParseFloat(f[0], 64); err == nil {
			sum += v
		}
	}
	return sum
}

// noteLaneDowns records lanes that the demuxes took down during the runs
// (a gateway throttled so hard that its probes were late), as their
// status sockets count them.
func (h *harness) noteLaneDowns(p *topology.Peering, t topo) {
	var n uint64
	for _, side := range config.Sides {
		d := p.Config.Networks[side].Demux
		var st demux.Status
		if err := admin.Fetch(d.Status, &st); err != nil {
			h.rep.Notes = append(h.rep.Notes, fmt.Sprintf("%s with %d lane(s): lane downs not counted: %s: %v", t.path, t.lanes, d.Name, err))
			continue
		}
		for _, l := range st.Lanes {
			n += l.Failovers
		}
	}
	if n > 0 {
		h.rep.Notes = append(h.rep.Notes, fmt.Sprintf("%s with %d lane(s): the demuxes took a lane down %d time(s) "+
			"(a gateway at its CPU quota answered no probe for the detection time); runs meanwhile had fewer lanes", t.path, t.lanes, n))
	}
}

func (h *harness) progress(format string, args ...any) {
	if h.o.Progress == nil {
		return
	}
	left := "estimating"
	if h.done > 0 {
		per := time.Since(h.start) / time.Duration(h.done)
		left = (per * time.Duration(h.total-h.done)).Round(time.Second).String() + " left"
	}
	fmt.Fprintf(h.o.Progress, "bench: [%d/%d %s] %s\n", h.done, h.total, left, fmt.Sprintf(format, args...))
}

// ErrNoBinary is returned when a binary the run needs is missing.
var ErrNoBinary = errors.New("missing binary")

// Check verifies that what a run needs is there before anything is built.
func Check(o Options) error {
	var errs []error
	for _, f := range []string{filepath.Join(o.Bin, "demux"), filepath.Join(o.Bin, "tunnel"), o.WGO} {
		if st, err := os.Stat(f); err != nil || st.Mode()&0o111 == 0 {
			errs = append(errs, fmt.Errorf("%w: %s (make build; the wireguard-go baseline: make bench-tools)", ErrNoBinary, f))
		}
	}
	for _, tool := range []string{"iperf3", "tc", "ip", "ss", "wg"} {
		if _, err := exec.LookPath(tool); err != nil {
			errs = append(errs, fmt.Errorf("%s not installed (make deps)", tool))
		}
	}
	return errors.Join(errs...)
}
