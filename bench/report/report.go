// Package report holds what a benchmark run measured and writes it out:
// the JSON record (figures and the environment they were measured in),
// a Markdown table, a PNG chart like the reference design's (Gbit/s
// against gateways, one line per instance profile, the line rate drawn)
// and the one summary line a CI log greps for.
package report

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"sort"

	"github.com/clusterpeer/clusterpeer/bench/iperf"
	"github.com/clusterpeer/clusterpeer/bench/profile"
)

// Paths a cell measures.
const (
	Clusterpeer = "clusterpeer"  // demux + N lanes
	Kernel      = "kernel"       // routed by the kernel, no encryption
	WireGuardGo = "wireguard-go" // one plain upstream wireguard-go tunnel
)

// Report is one run.
type Report struct {
	Command     string                    `json:"command"`
	Env         Env                       `json:"environment"`
	Emulation   profile.Emulation         `json:"emulation"`
	ProfileFile string                    `json:"profile_file"`
	VPC         profile.VPC               `json:"vpc"`
	LineRateBps float64                   `json:"line_rate_bps"` // the VPC's one-way rate on this host (both-ways with Settings.Bidir)
	Profiles    []profile.Profile         `json:"profiles"`
	Settings    Settings                  `json:"settings"`
	Cells       []*Cell                   `json:"cells"`
	Summary     *Summary                  `json:"summary,omitempty"`
	Notes       []string                  `json:"notes,omitempty"`
	Limits      map[string]profile.Limits `json:"limits"` // per profile, one gateway
}

// Env is the machine and software a run measured.
type Env struct {
	Kernel      string  `json:"kernel"`
	CPUModel    string  `json:"cpu_model"`
	CPUs        int     `json:"cpus"`
	GoVersion   string  `json:"go_version"`
	Commit      string  `json:"commit"`
	Iperf3      string  `json:"iperf3"`
	WireGuardGo string  `json:"wireguard_go"`
	Cgroup      string  `json:"cgroup"`
	Started     string  `json:"started"`
	Seconds     float64 `json:"seconds"` // the whole run
}

// StreamsText says how many streams the runs used, and which way.
func (s Settings) StreamsText() string {
	t := fmt.Sprintf("%d streams", s.Streams)
	if s.Streams == 0 && s.StreamsPerLane > 0 {
		t = fmt.Sprintf("%d streams per lane", s.StreamsPerLane)
	}
	if s.Bidir {
		t += " each way, both ways at once (iperf3 --bidir; figures are the sum of both directions)"
	}
	return t
}

// Settings are the run's knobs.
type Settings struct {
	Lanes          []int    `json:"lanes"`
	Tests          []string `json:"tests"`
	DurationSec    float64  `json:"duration_sec"`
	Reps           int      `json:"reps"`
	Streams        int      `json:"streams"`                    // fixed for every cell; 0: StreamsPerLane
	StreamsPerLane int      `json:"streams_per_lane,omitempty"` // per lane of the cell's topology
	UDPRate        string   `json:"udp_rate"`                   // tcp, link or bits/s (bench run --udp-rate)
	// Bidir: every run sent both ways at once (iperf3 --bidir); its
	// figure is what both receivers got, and the line rate the VPC's
	// both-ways rate.
	Bidir bool `json:"bidir,omitempty"`
	// Demux: the demuxes' path, xdp (the XDP program in front of the
	// userspace demux) or userspace; "" in reports from before the choice.
	Demux string `json:"demux,omitempty"`
}

// Cell is one path x lanes x profile x test, measured Reps times.
type Cell struct {
	Path       string  `json:"path"`
	Lanes      int     `json:"lanes"`
	Profile    string  `json:"profile"`
	Test       string  `json:"test"`                  // tcp or udp
	OfferedBps float64 `json:"offered_bps,omitempty"` // udp
	Streams    int     `json:"streams,omitempty"`     // iperf3 -P (absent in reports before it was recorded)
	Runs       []Run   `json:"runs"`
	MedianBps  float64 `json:"median_bps"`
	// Medians over the runs, per component (gw-a, gw-b: the gateways of
	// one side together; demux-a, demux-b, iperf3-client, iperf3-server):
	// CPUs used, and the share of CFS periods in which the component hit
	// its quota.
	CPU       map[string]float64 `json:"cpu"`
	Throttled map[string]float64 `json:"throttled"`
	HostBusy  float64            `json:"host_busy"` // share of all host CPUs busy
	Error     string             `json:"error,omitempty"`
	Retries   int                `json:"retries,omitempty"` // runs that did not finish and were run again
}

// Run is one iperf3 run and the CPU use beside it.
type Run struct {
	iperf.Result
	CPU       map[string]float64 `json:"cpu"`
	Throttled map[string]float64 `json:"throttled"`
	HostBusy  float64            `json:"host_busy"`
	Work      *Work              `json:"work,omitempty"` // clusterpeer topologies
}

// Work is what side a's demux and gateways did during a run, from their
// own counters, so that CPU can be put per packet.
type Work struct {
	Seconds         float64 `json:"seconds"`           // between the CPU snapshots
	DemuxPackets    float64 `json:"demux_packets"`     // demux-a: read from its TUN, plus sent by its XDP program
	DemuxXDPSeconds float64 `json:"demux_xdp_seconds"` // its XDP program's run time (BPF statistics; 0 without XDP)
	GatewayPackets  float64 `json:"gateway_packets"`   // side a's gateways: GENEVE frames in, plus packets delivered
}

// Cost is a run's CPU per packet: the demux's (its process and its XDP
// program, which runs in the kernel's receive path and so in no cgroup)
// and side a's gateways', in nanoseconds, and the demux's CPU over the
// gateways' for the same traffic (CPU per Gbit/s over one gateway's: each
// of N gateways carries a Nth at a Nth of the CPU). ok is false without
// counters or CPU.
func (r Run) Cost() (demuxNs, gatewayNs, share float64, ok bool) {
	w := r.Work
	if w == nil || w.DemuxPackets <= 0 || w.GatewayPackets <= 0 || r.CPU["gw-a"] <= 0 {
		return 0, 0, 0, false
	}
	demux := r.CPU["demux-a"]*w.Seconds + w.DemuxXDPSeconds
	gw := r.CPU["gw-a"] * w.Seconds
	return demux / w.DemuxPackets * 1e9, gw / w.GatewayPackets * 1e9, demux / gw, true
}

// Finish computes the cell's medians from its runs.
func (c *Cell) Finish() {
	if len(c.Runs) == 0 {
		return
	}
	bps := make([]float64, len(c.Runs))
	for i, r := range c.Runs {
		bps[i] = r.Bps
	}
	c.MedianBps = Median(bps)
	c.CPU, c.Throttled = medians(c.Runs, func(r Run) map[string]float64 { return r.CPU }), medians(c.Runs, func(r Run) map[string]float64 { return r.Throttled })
	busy := make([]float64, len(c.Runs))
	for i, r := range c.Runs {
		busy[i] = r.HostBusy
	}
	c.HostBusy = Median(busy)
}

func medians(runs []Run, m func(Run) map[string]float64) map[string]float64 {
	keys := map[string][]float64{}
	for _, r := range runs {
		for k, v := range m(r) {
			keys[k] = append(keys[k], v)
		}
	}
	out := map[string]float64{}
	for k, v := range keys {
		out[k] = Median(v)
	}
	return out
}

// Median of xs (the mean of the middle two for an even count); NaN for none.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	sort.Float64s(s)
	if n := len(s); n%2 == 1 {
		return s[n/2]
	} else {
		return (s[n/2-1] + s[n/2]) / 2
	}
}

// Find returns the cell for path, lanes, profile and test, or nil.
func (r *Report) Find(path string, lanes int, prof, test string) *Cell {
	for _, c := range r.Cells {
		if c.Path == path && c.Lanes == lanes && c.Profile == prof && c.Test == test && c.Error == "" {
			return c
		}
	}
	return nil
}

// Summary is the headline of a run: the best aggregate of our path, the
// plain wireguard-go tunnel beside it, and how well lanes add up.
type Summary struct {
	Profile    string  `json:"profile"`
	Lanes      int     `json:"lanes"`      // N of the best aggregate
	Gbps       float64 `json:"gbps"`       // best TCP aggregate
	WgoGbps    float64 `json:"wgo_gbps"`   // wireguard-go, same profile and run
	Ratio      float64 `json:"ratio"`      // our T(1) / wireguard-go
	Efficiency float64 `json:"efficiency"` // T(N) / (N x T(1))
	EffLanes   int     `json:"efficiency_lanes"`
	// The best aggregate's cost per packet (Run.Cost, medians over its
	// runs); absent where no run had counters.
	DemuxNsPerPkt   float64 `json:"demux_ns_per_pkt,omitempty"`
	GatewayNsPerPkt float64 `json:"gateway_ns_per_pkt,omitempty"`
	DemuxShare      float64 `json:"demux_share,omitempty"`
}

// Summarize fills r.Summary from the TCP cells. The best aggregate is the
// highest median over all lanes and profiles; ratio and efficiency are for
// that profile. Efficiency is taken at the largest N for which N x T(1)
// stays under the line rate, so that the VPC's cap, not the lanes, is
// never what it measures.
func (r *Report) Summarize() error {
	var best *Cell
	for _, c := range r.Cells {
		if c.Path == Clusterpeer && c.Test == "tcp" && c.Error == "" && (best == nil || c.MedianBps > best.MedianBps) {
			best = c
		}
	}
	if best == nil {
		return errors.New("report: no TCP figure for clusterpeer")
	}
	one := r.Find(Clusterpeer, 1, best.Profile, "tcp")
	wgo := r.Find(WireGuardGo, 1, best.Profile, "tcp")
	if one == nil || wgo == nil {
		return fmt.Errorf("report: profile %s lacks the 1-lane or the wireguard-go TCP figure", best.Profile)
	}
	s := &Summary{Profile: best.Profile, Lanes: best.Lanes, Gbps: best.MedianBps / 1e9, WgoGbps: wgo.MedianBps / 1e9,
		Ratio: one.MedianBps / wgo.MedianBps}
	s.EffLanes, s.Efficiency = r.Efficiency(best.Profile)
	var dns, gns, share []float64
	for _, run := range best.Runs {
		if d, g, sh, ok := run.Cost(); ok {
			dns, gns, share = append(dns, d), append(gns, g), append(share, sh)
		}
	}
	if len(dns) > 0 {
		s.DemuxNsPerPkt, s.GatewayNsPerPkt, s.DemuxShare = Median(dns), Median(gns), Median(share)
	}
	r.Summary = s
	return nil
}

// Efficiency is T(N) / (N x T(1)) for a profile's TCP figures at the
// largest N whose N x T(1) stays under the line rate (N = 1, efficiency 1,
// when even two lanes would reach it); 0, 0 without a one-lane figure.
func (r *Report) Efficiency(prof string) (lanes int, eff float64) {
	one := r.Find(Clusterpeer, 1, prof, "tcp")
	if one == nil {
		return 0, 0
	}
	lanes, eff = 1, 1
	for _, c := range r.Cells {
		if c.Path == Clusterpeer && c.Test == "tcp" && c.Profile == prof && c.Error == "" &&
			c.Lanes > lanes && float64(c.Lanes)*one.MedianBps <= r.LineRateBps {
			lanes, eff = c.Lanes, c.MedianBps/(float64(c.Lanes)*one.MedianBps)
		}
	}
	return lanes, eff
}

// CPULine follows Line: the best aggregate's cost per packet; "" where
// the report has none (one from before it was measured).
func (s *Summary) CPULine() string {
	if s.DemuxNsPerPkt == 0 {
		return ""
	}
	return fmt.Sprintf("bench-cpu: demux_ns_per_pkt=%.0f gateway_ns_per_pkt=%.0f demux_share=%.2f", s.DemuxNsPerPkt, s.GatewayNsPerPkt, s.DemuxShare)
}

// Line is the run's summary line, in the form CI and the README quote.
func (s *Summary) Line() string {
	return fmt.Sprintf("bench: lanes=%d gbps=%.2f wgo_gbps=%.2f ratio=%.2f efficiency=%.2f", s.Lanes, s.Gbps, s.WgoGbps, s.Ratio, s.Efficiency)
}

// WriteJSON writes the report to path.
func (r *Report) WriteJSON(path string) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

// Load reads a report written by WriteJSON.
func Load(path string) (*Report, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Report
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &r, nil
}

// Check is what CI asserts of a quick run: every cell measured, every
// figure positive, the summary present and consistent with the cells.
func (r *Report) Check() error {
	var errs []error
	if len(r.Cells) == 0 {
		errs = append(errs, errors.New("no cells"))
	}
	for _, c := range r.Cells {
		name := fmt.Sprintf("%s lanes=%d profile=%s %s", c.Path, c.Lanes, c.Profile, c.Test)
		switch {
		case c.Error != "":
			errs = append(errs, fmt.Errorf("%s: %s", name, c.Error))
		case len(c.Runs) != r.Settings.Reps:
			errs = append(errs, fmt.Errorf("%s: %d runs, want %d", name, len(c.Runs), r.Settings.Reps))
		case !(c.MedianBps > 0):
			errs = append(errs, fmt.Errorf("%s: median %v bit/s", name, c.MedianBps))
		}
		for _, run := range c.Runs {
			if !(run.Bps > 0 && run.Seconds > 0) {
				errs = append(errs, fmt.Errorf("%s: a run measured %v bit/s over %v s", name, run.Bps, run.Seconds))
			}
		}
		if c.Path != Kernel && !(c.CPU["gw-a"] > 0) {
			errs = append(errs, fmt.Errorf("%s: no CPU accounted to the gateways", name))
		}
		if c.Path == Clusterpeer && c.Error == "" {
			for _, run := range c.Runs {
				if _, _, _, ok := run.Cost(); !ok {
					errs = append(errs, fmt.Errorf("%s: a run has no packet counts for its CPU per packet", name))
					break
				}
			}
		}
	}
	if s := r.Summary; s == nil {
		errs = append(errs, errors.New("no summary"))
	} else if !(s.Gbps > 0 && s.WgoGbps > 0 && s.Ratio > 0 && s.Efficiency > 0) {
		errs = append(errs, fmt.Errorf("summary not all positive: %s", s.Line()))
	}
	return errors.Join(errs...)
}
