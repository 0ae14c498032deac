// Command bench is the benchmark harness: the reference design's chart
// (throughput against the number of gateways, per instance profile),
// measured on this machine in network namespaces, beside the kernel's
// routing and one plain wireguard-go tunnel over the same links.
//
//	bench run [--profiles bench/profiles.yaml] [--profile c4.large,...] [--lanes 1-6]
//	          [--tests tcp,udp] [--duration 5s] [--reps 3] [--streams-per-lane 4 | --streams N] [--bidir]
//	          [--demux userspace|xdp] [--out DIR]
//	bench check REPORT.json
//	bench render REPORT.json
//	bench xdp [--duration 5s] [--runs 3]
//	bench topology up|down --prefix P --work DIR [--lanes 3] [...]
//	bench blast --dev IF --dst-mac MAC --dst ADDR [--size 64] [--flows 256] [--duration 5s]
//
// run writes DIR/report.json, report.md and chart.png, shows progress on
// stderr and ends with the summary line on stdout:
//
//	bench: lanes=<best N> gbps=<x.xx> wgo_gbps=<x.xx> ratio=<x.xx> efficiency=<x.xx>
//	bench-cpu: demux_ns_per_pkt=<n> gateway_ns_per_pkt=<n> demux_share=<x.xx>
//
// (the second: the best aggregate's CPU per packet, report.Run.Cost),
//
// check is what CI runs on a quick run's report: every cell measured,
// every figure positive. render redraws the Markdown and the chart from
// the JSON (after a change to either, or to a report copied elsewhere).
// xdp measures the demux's forwarding paths (bench/xdpbench; blast and
// sink are its generator and stand-in gateway, bench/xdpgen). topology
// builds a peering as the tests do, for the demo and scripts.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/clusterpeer/clusterpeer/bench/harness"
	"github.com/clusterpeer/clusterpeer/bench/profile"
	"github.com/clusterpeer/clusterpeer/bench/report"
	"github.com/clusterpeer/clusterpeer/cmd/internal/cli"
	"github.com/clusterpeer/clusterpeer/config"
)

func main() {
	cli.Main("bench", "measure a peering's throughput against its number of gateways, in network namespaces", map[string]cli.Command{
		"run":      {Usage: "run [flags]", Help: "sweep lanes x profiles with iperf3; write report.json, report.md, chart.png", Run: run},
		"check":    {Usage: "check REPORT.json", Help: "exit 1 unless every figure of a run's report is there and positive", Run: check},
		"render":   {Usage: "render REPORT.json", Help: "rewrite report.md and chart.png beside a run's report.json", Run: render},
		"blast":    {Usage: "blast --dev IF --dst-mac MAC --dst ADDR [--size 64] [--flows 256] [--duration 5s]", Help: "send UDP frames out of IF with the XDP live-frames generator (bench-xdp's UDP load)", Run: blast},
		"soak":     {Usage: "soak [--duration 10m] [--flows 100000] [--xdp native] [--json FILE]", Help: "run a peering under churning load, drains and reloads; watch memory, goroutines, descriptors and loss", Run: soakCmd},
		"xdp":      {Usage: "xdp [--duration 5s] [--runs 3] [--paths xdp,userspace,...] [--bin bin]", Help: "the demux's forwarding paths (XDP, XDP sealing, userspace, kernel ip_forward) on one topology, medians and ratios", Run: xdpCmd},
		"topology": {Usage: "topology up|down --prefix P --work DIR [--lanes 3] [flags]", Help: "build or remove a peering in network namespaces (the tests' builder), for the demo and load scripts", Run: topologyCmd},
		"sink":     {Usage: "sink --dev IF [--off]", Help: "attach the stand-in gateway's XDP program to IF: strips GENEVE, counts and drops the generator's frames", Run: sink},
	})
}

func run(args []string) error {
	fs := flag.NewFlagSet("bench run", flag.ContinueOnError)
	profilesPath := fs.String("profiles", "bench/profiles.yaml", "instance profiles file")
	names := fs.String("profile", "", "profiles to run, comma-separated (default: all in the file)")
	lanesFlag := fs.String("lanes", "1-6", "numbers of lanes: a range 1-6 or a list 1,2,4")
	tests := fs.String("tests", "tcp,udp", "iperf3 tests: tcp, udp or both")
	duration := fs.Duration("duration", 5*time.Second, "each iperf3 run (whole seconds)")
	reps := fs.Int("reps", 3, "runs per figure; the report gives the median")
	streams := fs.Int("streams", 0, "iperf3 parallel streams (-P) for every cell (default: --streams-per-lane for each lane)")
	// Not xdp by default: at the small profiles' quotas a gateway
	// coalesces less of the program's frames, which arrive one by one,
	// than of the userspace demux's GSO batches, and carries less
	// (docs/bench.md).
	demuxPath := fs.String("demux", "userspace", "the demuxes' path: userspace (the userspace demux alone) or xdp (the XDP program, native, in front of it)")
	bidir := fs.Bool("bidir", false, "send both ways at once (iperf3 --bidir): figures are the sum of both directions, against the VPC's both-ways rate")
	perLane := fs.Int("streams-per-lane", 4, "iperf3 streams for each lane of a topology, so that every lane carries some (the baselines count as one lane)")
	scale := fs.String("scale", "", "host CPUs per emulated vCPU: auto or a number (default: the profiles file's)")
	out := fs.String("out", "bench/results", "directory for report.json, report.md and chart.png")
	bin := fs.String("bin", "bin", "directory with the demux and tunnel binaries")
	wgo := fs.String("wgo", "bin/wireguard-go", "upstream wireguard-go binary for the baseline (make bench-tools)")
	health := fs.String("health", "{interval: 20ms, detect_multiplier: 250}",
		"the peering's health section: a gateway at its CPU quota queues and drops probes like data, "+
			"and late replies: the default judges a lane over 5 s, not the production 40 ms (docs/bench.md)")
	udpRate := fs.String("udp-rate", "tcp", "UDP's offered rate over all streams: tcp (90% of the same cell's TCP median), "+
		"link (min(line rate, lanes x the profile's link rate): an overload where gateways are CPU-bound), or bits/s such as 500M or 1.5G")
	timeout := fs.Duration("timeout", 2*time.Hour, "give up (and clean up) after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces, cgroups, tc)")
	}
	lanes, err := parseLanes(*lanesFlag)
	if err != nil {
		return fmt.Errorf("--lanes: %w", err)
	}
	testList := strings.Split(*tests, ",")
	for _, t := range testList {
		if t != "tcp" && t != "udp" {
			return fmt.Errorf("--tests: %q: want tcp, udp or tcp,udp", t)
		}
	}
	if !slices.Contains(testList, "tcp") {
		return errors.New("--tests: the chart and summary are TCP's; include tcp")
	}
	slices.Sort(testList) // tcp before udp: the UDP rate may follow the TCP figure
	var udpOfTCP float64
	var udpBps uint64
	switch *udpRate {
	case "tcp":
		udpOfTCP = 0.9
	case "link":
	default:
		if udpBps, err = parseRate(*udpRate); err != nil {
			return fmt.Errorf("--udp-rate: %w", err)
		}
	}
	if _, ok := xdpMode[*demuxPath]; !ok {
		return fmt.Errorf("--demux %q: want xdp or userspace", *demuxPath)
	}
	if *reps < 1 || *streams < 0 || *perLane < 1 || *duration < time.Second {
		return errors.New("--reps and --streams-per-lane must be at least 1, --streams 0 or more, --duration at least 1s")
	}
	pf, err := profile.Load(*profilesPath)
	if err != nil {
		return err
	}
	var sel []string
	if *names != "" {
		sel = strings.Split(*names, ",")
	}
	profiles, err := pf.Select(sel)
	if err != nil {
		return err
	}
	emu, err := pf.Resolve(profiles, lanes[len(lanes)-1], runtime.NumCPU(), *scale)
	if err != nil {
		return err
	}
	hs, err := config.ParseHealth(*health)
	if err != nil {
		return fmt.Errorf("--health: %w", err)
	}
	abs := func(p string) string { a, _ := filepath.Abs(p); return a }
	o := harness.Options{
		Profiles: pf, Selected: profiles, Emulation: emu, Lanes: lanes, Tests: testList,
		Duration: *duration, Reps: *reps, Streams: *streams, StreamsPerLane: *perLane, Bidir: *bidir, XDP: xdpMode[*demuxPath],
		Bin: abs(*bin), WGO: abs(*wgo), Health: hs, UDPOfTCP: udpOfTCP, UDPRate: udpBps, Progress: os.Stderr,
	}
	if err := harness.Check(o); err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}

	rep := &report.Report{
		Command:     "bench run " + strings.Join(args, " "),
		Env:         environment(o.WGO),
		Emulation:   emu,
		ProfileFile: *profilesPath,
		VPC:         pf.VPC,
		LineRateBps: float64(lineRate(emu, pf.VPC, *bidir)),
		Profiles:    profiles,
		Limits:      map[string]profile.Limits{},
		Settings:    report.Settings{Lanes: lanes, Tests: testList, DurationSec: duration.Seconds(), Reps: *reps, Streams: *streams, StreamsPerLane: perLaneSetting(*streams, *perLane), UDPRate: *udpRate, Bidir: *bidir, Demux: *demuxPath},
	}
	for _, p := range profiles {
		rep.Limits[p.Name] = emu.Limits(p)
	}
	fmt.Fprintf(os.Stderr, "bench: %s\n", emu.Reason)
	fmt.Fprintf(os.Stderr, "bench: %d topologies x %d profiles x %v, %d x %v each\n", len(lanes)+2, len(profiles), testList, *reps, *duration)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	start := time.Now()
	runErr := harness.Run(ctx, o, rep)
	rep.Env.Seconds = time.Since(start).Seconds()
	if runErr != nil && len(rep.Cells) == 0 {
		return runErr
	}
	sumErr := rep.Summarize()
	// Write what was measured even when the run ended early.
	paths := []string{filepath.Join(*out, "report.json"), filepath.Join(*out, "report.md"), filepath.Join(*out, "chart.png")}
	if err := errors.Join(rep.WriteJSON(paths[0]), rep.WriteMarkdown(paths[1]), rep.WriteChart(paths[2], "tcp")); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "bench: wrote %s in %s\n", strings.Join(paths, ", "), time.Since(start).Round(time.Second))
	if runErr != nil {
		return fmt.Errorf("run ended early (partial report written): %w", runErr)
	}
	if sumErr != nil {
		return sumErr
	}
	fmt.Println(rep.Summary.Line())
	if l := rep.Summary.CPULine(); l != "" {
		fmt.Println(l)
	}
	return nil
}

// parseLanes reads "1-6" or "1,2,4" into an ascending list.
func parseLanes(s string) ([]int, error) {
	var out []int
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		b := a
		if isRange && err == nil {
			b, err = strconv.Atoi(hi)
		}
		if err != nil || a < 1 || b < a || b > 16 {
			return nil, fmt.Errorf("%q: want numbers from 1 to 16, as 1-6 or 1,2,4", part)
		}
		for n := a; n <= b; n++ {
			if len(out) > 0 && n <= out[len(out)-1] {
				return nil, fmt.Errorf("%q: list the lanes in ascending order", s)
			}
			out = append(out, n)
		}
	}
	return out, nil
}

// parseRate reads bits per second: 500M, 1.5G, 800k or a plain number.
func parseRate(s string) (uint64, error) {
	mult := 1.0
	switch {
	case strings.HasSuffix(s, "G"):
		mult, s = 1e9, strings.TrimSuffix(s, "G")
	case strings.HasSuffix(s, "M"):
		mult, s = 1e6, strings.TrimSuffix(s, "M")
	case strings.HasSuffix(s, "k"):
		mult, s = 1e3, strings.TrimSuffix(s, "k")
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || !(f*mult >= 1e3) || f*mult > 1e12 {
		return 0, fmt.Errorf("%q: want tcp, link or a rate from 1k to 1000G, as 500M", s)
	}
	return uint64(f * mult), nil
}

// environment records the machine and software the figures come from.
func environment(wgo string) report.Env {
	e := report.Env{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), Started: time.Now().UTC().Format(time.RFC3339)}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		e.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				e.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if info, ok := debug.ReadBuildInfo(); ok {
		var rev, dirty string
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					dirty = "+dirty"
				}
			}
		}
		if len(rev) > 12 {
			rev = rev[:12]
		}
		e.Commit = rev + dirty
	}
	if e.Commit == "" {
		// Built without VCS stamps (GOFLAGS=-buildvcs=false): ask git.
		if rev := firstLine("git", "rev-parse", "--short=12", "HEAD"); rev != "unknown" {
			e.Commit = rev
			if out, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(out) > 0 {
				e.Commit += "+dirty"
			}
		}
	}
	e.Iperf3 = firstLine("iperf3", "--version")
	e.WireGuardGo = strings.TrimPrefix(firstLine(wgo, "--version"), "wireguard-go ")
	return e
}

func firstLine(name string, args ...string) string {
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		return "unknown"
	}
	l, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return l
}

// loadArg loads the one report a subcommand takes.
func loadArg(name string, args []string) (*report.Report, error) {
	if len(args) != 1 {
		return nil, fmt.Errorf("usage: bench %s REPORT.json", name)
	}
	return report.Load(args[0])
}

func check(args []string) error {
	r, err := loadArg("check", args)
	if err != nil {
		return err
	}
	if err := r.Check(); err != nil {
		return fmt.Errorf("%s:\n%w", args[0], err)
	}
	fmt.Printf("bench check: %s: %d cells, every figure positive; %s\n", args[0], len(r.Cells), r.Summary.Line())
	return nil
}

func render(args []string) error {
	r, err := loadArg("render", args)
	if err != nil {
		return err
	}
	dir := filepath.Dir(args[0])
	md, png := filepath.Join(dir, "report.md"), filepath.Join(dir, "chart.png")
	if err := errors.Join(r.WriteMarkdown(md), r.WriteChart(png, "tcp")); err != nil {
		return err
	}
	fmt.Printf("bench render: wrote %s, %s\n", md, png)
	return nil
}

// perLaneSetting is what the report records of --streams-per-lane: nothing
// when --streams fixed the count.
func perLaneSetting(streams, perLane int) int {
	if streams > 0 {
		return 0
	}
	return perLane
}

// lineRate is the rate a run's figures are drawn against: one way, or
// with --bidir both ways.
func lineRate(emu profile.Emulation, v profile.VPC, bidir bool) uint64 {
	if bidir {
		return emu.LineRateBothWays(v)
	}
	return emu.LineRate(v)
}

// xdpMode is the topology's XDP mode for each --demux.
var xdpMode = map[string]string{"xdp": "native", "userspace": "off"}
