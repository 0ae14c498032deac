package report

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// WriteMarkdown writes the report's tables to path.
func (r *Report) WriteMarkdown(path string) error {
	var b strings.Builder
	r.Markdown(&b)
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// Markdown writes the tables: throughput per profile and lanes beside the
// baselines, then where the CPU went.
func (r *Report) Markdown(w io.Writer) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }
	e := r.Env
	p("# clusterpeer benchmark\n\n")
	p("Command: `%s`\n\n", r.Command)
	p("| | |\n|---|---|\n")
	p("| machine | %s, %d CPUs, kernel %s |\n", e.CPUModel, e.CPUs, e.Kernel)
	p("| software | clusterpeer %s, %s, %s, wireguard-go %s |\n", e.Commit, e.GoVersion, e.Iperf3, e.WireGuardGo)
	p("| started | %s, %.0f s in all |\n", e.Started, e.Seconds)
	p("| emulation | %s; network rates %s; CFS period %v; cgroup %s |\n", r.Emulation.Reason,
		map[bool]string{true: "scaled too", false: "not scaled"}[r.Emulation.ScaleNetwork], r.Emulation.CPUPeriod, e.Cgroup)
	enf := "drawn, not enforced"
	if r.VPC.Enforce {
		enf = "enforced with tc on each network's host link"
	}
	way := "one way"
	if r.Settings.Bidir {
		way = "both ways"
	}
	p("| line rate | %.2f Gbit/s %s (VPC %g Gbit/s one way, %g both ways; %s) |\n", r.LineRateBps/1e9, way, r.VPC.OneWayGbps, r.VPC.BothWaysGbps, enf)
	p("| profiles | %s |\n\n", r.ProfileFile)

	for _, test := range r.Settings.Tests {
		p("## %s: Gbit/s delivered, median of %d runs of %g s\n\n", strings.ToUpper(test), r.Settings.Reps, r.Settings.DurationSec)
		if test == "tcp" {
			p("%s; efficiency is T(N) / (N x T(1)) at the largest N whose N x T(1) stays under the line rate. ", r.Settings.StreamsText())
		} else {
			offered := map[string]string{
				"tcp":  "90% of the same cell's TCP median",
				"link": "min(line rate, lanes x the profile's link rate), an overload where the gateways are CPU-bound",
			}[r.Settings.UDPRate]
			if offered == "" {
				offered = r.Settings.UDPRate + " bit/s"
			}
			p("%s, offered at %s; loss in brackets. ", r.Settings.StreamsText(), offered)
		}
		p("Each gateway: its profile's vCPUs x the scale as a CPU quota, its link rate on both links. ")
		p("kernel: routed through one gateway pair without encryption (no CPU quota applies to the kernel's forwarding); ")
		p("wireguard-go: one plain tunnel through the same pair, same quota and links.\n\n")
		p("| profile | CPUs per gateway | link Gbit/s | kernel | wireguard-go |")
		for _, n := range r.Settings.Lanes {
			p(" %d lane%s |", n, map[bool]string{true: "", false: "s"}[n == 1])
		}
		p(" best / wireguard-go | efficiency |\n|---|---|---|---|---|")
		for range r.Settings.Lanes {
			p("---|")
		}
		p("---|---|\n")
		for _, pr := range r.Profiles {
			l := r.Limits[pr.Name]
			p("| %s | %.2f | %.2f | %s | %s |", pr.Name, l.CPUs, float64(l.RateBitsPS)/1e9,
				r.fig(Kernel, 1, pr.Name, test), r.fig(WireGuardGo, 1, pr.Name, test))
			best := 0.0
			for _, n := range r.Settings.Lanes {
				p(" %s |", r.fig(Clusterpeer, n, pr.Name, test))
				if c := r.Find(Clusterpeer, n, pr.Name, test); c != nil {
					best = max(best, c.MedianBps)
				}
			}
			if w := r.Find(WireGuardGo, 1, pr.Name, test); w != nil && best > 0 {
				p(" %.2fx |", best/w.MedianBps)
			} else {
				p(" - |")
			}
			if n, eff := r.Efficiency(pr.Name); test == "tcp" && n > 0 {
				p(" %.2f at %d |\n", eff, n)
			} else {
				p(" - |\n")
			}
		}
		p("\n")
	}

	p("## Where the CPU went (TCP)\n\n")
	p("Host CPUs used during the runs (median), per component; in brackets the share of CFS periods in which the component hit its quota. ")
	p("host busy is the share of all %d host CPUs that were busy, the kernel's forwarding included.\n\n", e.CPUs)
	comps := []string{"gw-a", "gw-b", "demux-a", "demux-b", "iperf3-client", "iperf3-server"}
	p("| path | profile | lanes | Gbit/s | %s | host busy |\n|---|---|---|---|%s---|\n", strings.Join(comps, " | "), strings.Repeat("---|", len(comps)))
	for _, c := range r.Cells {
		if c.Test != "tcp" || c.Error != "" {
			continue
		}
		p("| %s | %s | %d | %.2f |", c.Path, c.Profile, c.Lanes, c.MedianBps/1e9)
		for _, k := range comps {
			if v, ok := c.CPU[k]; ok {
				if t, ok := c.Throttled[k]; ok && t > 0 {
					p(" %.2f (%.0f%%) |", v, 100*t)
				} else {
					p(" %.2f |", v)
				}
			} else {
				p(" - |")
			}
		}
		p(" %.0f%% |\n", 100*c.HostBusy)
	}
	p("\n")
	var failed []string
	for _, c := range r.Cells {
		if c.Error != "" {
			failed = append(failed, fmt.Sprintf("- %s, %d lanes, %s, %s: %s", c.Path, c.Lanes, c.Profile, c.Test, c.Error))
		}
	}
	notes := slices.Clone(r.Notes)
	for _, c := range r.Cells {
		if c.Retries > 0 {
			notes = append(notes, fmt.Sprintf("%s, %d lanes, %s, %s: %d run(s) did not finish (iperf3's control connection "+
				"stuck behind a full lane) and were run again", c.Path, c.Lanes, c.Profile, c.Test, c.Retries))
		}
	}
	if len(failed) > 0 {
		p("## Failed measurements\n\n%s\n\n", strings.Join(failed, "\n"))
	}
	if len(notes) > 0 {
		p("## Notes\n\n")
		for _, n := range notes {
			p("- %s\n", n)
		}
		p("\n")
	}
	p("## Profiles\n\n| profile | vCPUs | network | assumed Gbit/s | notes |\n|---|---|---|---|---|\n")
	for _, pr := range r.Profiles {
		p("| %s | %d | %s | %g | %s |\n", pr.Name, pr.VCPUs, pr.Network, pr.NetworkGbps, pr.Notes)
	}
	if r.Summary != nil {
		s := r.Summary
		p("\n## Summary\n\nBest aggregate: %s with %d lanes. Ratio: one lane against one plain wireguard-go tunnel. ", s.Profile, s.Lanes)
		p("Efficiency: T(N) / (N x T(1)) at N = %d, the largest N whose N x T(1) stays under the line rate.\n\n", s.EffLanes)
		p("    %s\n", s.Line())
	}
}

// fig is a cell's median in Gbit/s, with UDP loss, or "-".
func (r *Report) fig(path string, lanes int, prof, test string) string {
	c := r.Find(path, lanes, prof, test)
	if c == nil {
		if slices.ContainsFunc(r.Cells, func(c *Cell) bool {
			return c.Path == path && c.Lanes == lanes && c.Profile == prof && c.Test == test
		}) {
			return "failed"
		}
		return "-"
	}
	if test == "udp" {
		loss := make([]float64, len(c.Runs))
		for i, run := range c.Runs {
			loss[i] = run.LostPercent
		}
		return fmt.Sprintf("%.2f (%.1f%%)", c.MedianBps/1e9, Median(loss))
	}
	return fmt.Sprintf("%.2f", c.MedianBps/1e9)
}
