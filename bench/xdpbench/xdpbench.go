// Package xdpbench measures the demux's ways of forwarding on one
// topology, in one run: the XDP fast path, the same sealing every frame
// (security.geneve_auth), the userspace demux (--xdp=off) and plain
// kernel ip_forward (no demux, no GENEVE). UDP load comes from
// `bench blast` (an XDP live-frames generator: iperf3's one sending thread
// stops near 0.16 Mpps whatever the size), TCP from iperf3.
//
//	src (10.8.0.1) --lan-- demux (10.8.0.2 | 10.9.0.1) --wan-- sink (10.9.0.2, .21-.23)
//	  |                                                          | XDP strips GENEVE
//	  +------------------------- back (10.7.0.0/24) -------------+ 10.2.0.10: iperf3 -s
//
// src sends to 10.2.0.10 through the demux. The demux sends each flow
// inside GENEVE to one of three "gateways" (addresses of sink) over the
// wan link (XDP_REDIRECT through a devmap), or, for kernel-forward, routes
// the plain packet to sink. sink strips GENEVE in XDP (`bench sink`: this
// kernel has no geneve module) and answers over the back link; UDP to the
// discard port (the generator's) it counts and drops there, and those
// counts are the UDP figures: packets that reached the sink per second of
// sending (256 flows, offered at what one CPU generates). TCP is iperf3's
// received throughput, 4 streams.
package xdpbench

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
	"gopkg.in/yaml.v3"

	"github.com/clusterpeer/clusterpeer/admin"
	"github.com/clusterpeer/clusterpeer/bench/iperf"
	"github.com/clusterpeer/clusterpeer/bench/topology"
	"github.com/clusterpeer/clusterpeer/config"
	"github.com/clusterpeer/clusterpeer/dataplane/demux"
	"github.com/clusterpeer/clusterpeer/dataplane/xdp"
	"github.com/clusterpeer/clusterpeer/flowhash"
	"github.com/clusterpeer/clusterpeer/tunnel/wgkey"
)

// The paths and loads, in the order they are reported.
var (
	Paths = []string{"xdp", "xdp-sealed", "userspace", "kernel-forward"}
	Loads = []string{"64", "1400", "tcp"}
)

// Result is one path's figure under one load in one run.
type Result struct {
	Path, Load string
	Mpps, Gbps float64
	// Offered is the UDP rate (Mpps) at which the path delivered Mpps: the
	// generator's full rate, or for a path that dropped there, the step of
	// the sweep that delivered the most.
	Offered float64
	// ProgNs is the XDP program's own run time per packet under the same
	// load, from the kernel's BPF statistics (XDP paths, UDP loads; 0
	// where the kernel keeps none).
	ProgNs float64
	// StatsNs is what the same statistics charge a program that only
	// returns, measured beside ProgNs: their own two clock reads a run,
	// which ProgNs includes (about 50 ns on this VM).
	StatsNs float64
}

// Options configure a run.
type Options struct {
	Bin      string        // demux, bench
	Duration time.Duration // per figure
	Runs     int           // the summary gives medians
	Paths    []string      // of Paths, in their order (nil: all)
	Progress io.Writer     // one line per step and figure
}

const (
	dest     = "10.2.0.10"
	tcpBytes = 1420 // the MTU-sized segments TCP's packet rate is counted in
)

type bench struct {
	Options
	lab     *topology.Lab
	work    string
	config  string
	sealed  string // the same peering with security.geneve_auth
	lanMAC  string
	pids    []int
	demuxPI int
}

// Run builds the topology, measures every path Runs times and removes
// everything again (also when ctx ends).
func Run(ctx context.Context, o Options) (_ []Result, err error) {
	b := &bench{Options: o, lab: topology.NewLab(fmt.Sprintf("cpbx%d", os.Getpid()%100000))}
	if b.work, err = os.MkdirTemp("", "bench-xdp."); err != nil {
		return nil, err
	}
	defer func() {
		for _, pid := range b.pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		b.lab.Close()
		err = errors.Join(err, topology.RemoveNamespaces(b.lab.Prefix))
		os.RemoveAll(b.work)
	}()
	if err := b.build(); err != nil {
		return nil, err
	}
	srv := b.lab.Command("sink", "iperf3", "-s", "-p", "5201")
	if err := srv.Start(); err != nil {
		return nil, err
	}
	b.pids = append(b.pids, srv.Process.Pid)
	go srv.Wait()
	if err := b.lab.WaitListen(ctx, "sink", 5201, 5*time.Second); err != nil {
		return nil, err
	}
	var out []Result
	for r := 1; r <= o.Runs; r++ {
		for _, path := range o.paths() {
			b.progress("run %d/%d: %s", r, o.Runs, path)
			res, err := b.measure(ctx, path)
			if err != nil {
				return out, err
			}
			out = append(out, res...)
		}
	}
	return out, nil
}

func (o Options) paths() []string {
	if o.Paths == nil {
		return Paths
	}
	return o.Paths
}

func (b *bench) progress(format string, args ...any) {
	if b.Progress != nil {
		fmt.Fprintf(b.Progress, "bench-xdp: "+format+"\n", args...)
	}
}

func (b *bench) build() error {
	l := b.lab
	for _, n := range []string{"src", "demux", "sink"} {
		if err := l.Add(n, map[string]string{"net/ipv4/ip_forward": "1", "net/ipv4/conf/all/rp_filter": "0", "net/ipv4/conf/default/rp_filter": "0"}); err != nil {
			return err
		}
	}
	steps := []func() error{
		func() error { return l.Veth("src", "lan0", "demux", "lan0") },
		func() error { return l.Veth("demux", "wan0", "sink", "wan0") },
		func() error { return l.Veth("src", "back0", "sink", "back0") },
		func() error { return l.Addr("src", "lan0", "10.8.0.1/24") },
		func() error { return l.Addr("src", "back0", "10.7.0.1/24") },
		func() error { return l.Addr("demux", "lan0", "10.8.0.2/24") },
		func() error { return l.Addr("demux", "wan0", "10.9.0.1/24") },
		func() error {
			return l.Addr("sink", "wan0", "10.9.0.2/24", "10.9.0.21/24", "10.9.0.22/24", "10.9.0.23/24")
		},
		func() error { return l.Addr("sink", "back0", "10.7.0.2/24") },
		func() error { return l.MTU("src", "lan0", 1420) },
		func() error { return l.Route("src", topology.Route{Dst: "10.2.0.0/16", Via: "10.8.0.2"}) },
		// The destination, on sink. Answers leave from it: iperf3's UDP
		// sockets are connected to it, and a reply from the back link's
		// own address would match no socket.
		func() error { return l.Addr("sink", "lo", dest+"/32") },
		func() error {
			return l.Route("sink", topology.Route{Dst: "10.8.0.0/24", Via: "10.7.0.1", Src: dest})
		},
		// Native XDP on veths: redirected frames arrive only at a peer
		// running an XDP program (here one that also strips GENEVE,
		// standing in for the gateways); a native program cannot finish
		// partial checksums.
		func() error {
			_, err := l.Run("sink", filepath.Join(b.Bin, "bench"), "sink", "--dev", "wan0")
			return err
		},
		func() error { _, err := l.Run("src", "ethtool", "-K", "lan0", "tx", "off"); return err },
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return err
		}
	}
	for _, d := range []string{"10.9.0.2", "10.9.0.21", "10.9.0.22", "10.9.0.23"} {
		if _, err := l.Run("demux", "ping", "-c1", "-W2", "-q", d); err != nil {
			return err
		}
	}
	if _, err := l.Run("src", "ping", "-c1", "-W2", "-q", "10.8.0.2"); err != nil {
		return err
	}
	mac, err := l.MAC("demux", "lan0")
	if err != nil {
		return err
	}
	b.lanMAC = mac.String()
	return b.writeConfig()
}

// writeConfig writes the demux's peering file: three lanes whose "gateways"
// are the sink's addresses, probes off (nothing answers them).
func (b *bench) writeConfig() error {
	off := false
	p := config.Peering{
		Name: "benchxdp", VNI: 4242, MTU: 1420,
		Hash:   config.Hash{KeyFile: "hash.key", Mode: flowhash.Mode5Tuple, Symmetric: true},
		Health: config.Health{Enabled: &off},
		Networks: map[config.Side]config.Network{
			config.SideA: {Prefixes: []netip.Prefix{netip.MustParsePrefix("10.8.0.0/16")}, Demux: config.Demux{Name: "demux-a", Addresses: []netip.Addr{netip.MustParseAddr("10.8.0.2")}, Tun: "cpbench"}},
			config.SideB: {Prefixes: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16")}, Demux: config.Demux{Name: "demux-b", Addresses: []netip.Addr{netip.MustParseAddr("10.2.0.2")}, Tun: "cpbench"}},
		},
	}
	for i := 1; i <= 3; i++ {
		l := config.Lane{ID: i}
		for _, s := range config.Sides {
			k, err := wgkey.Generate()
			if err != nil {
				return err
			}
			name := topology.GatewayName(s, i)
			if err := os.WriteFile(filepath.Join(b.work, name+".key"), []byte(k.Base64()+"\n"), 0o600); err != nil {
				return err
			}
			geneve, host := fmt.Sprintf("10.9.0.2%d:6081", i), 1
			if s == config.SideB {
				geneve, host = fmt.Sprintf("10.2.0.2%d:6081", i), 2
			}
			*l.End(s) = config.Gateway{Name: name, Geneve: topology.HostPort("%s", geneve), Endpoint: topology.HostPort("198.18.%d.%d:51820", i, host),
				PublicKey: k.Public().Base64(), PrivateKeyFile: name + ".key", Tun: fmt.Sprintf("cpbg%s%d", s, i)}
		}
		p.Lanes = append(p.Lanes, l)
	}
	key := make([]byte, 16)
	rand.Read(key)
	if err := os.WriteFile(filepath.Join(b.work, "hash.key"), fmt.Appendf(nil, "%x\n", key), 0o600); err != nil {
		return err
	}
	y, err := yaml.Marshal(&p)
	if err != nil {
		return err
	}
	b.config = filepath.Join(b.work, "peering.yaml")
	if err := os.WriteFile(b.config, y, 0o600); err != nil {
		return err
	}
	if _, err = config.Load(b.config); err != nil {
		return err
	}
	p.Security.GeneveAuth = true
	if y, err = yaml.Marshal(&p); err != nil {
		return err
	}
	b.sealed = filepath.Join(b.work, "peering-sealed.yaml")
	if err := os.WriteFile(b.sealed, y, 0o600); err != nil {
		return err
	}
	_, err = config.Load(b.sealed)
	return err
}

// measure gives path's three figures.
func (b *bench) measure(ctx context.Context, path string) ([]Result, error) {
	switch path {
	case "xdp":
		if err := b.startDemux(ctx, "native", b.config); err != nil {
			return nil, err
		}
	case "xdp-sealed":
		if err := b.startDemux(ctx, "native", b.sealed); err != nil {
			return nil, err
		}
	case "userspace":
		if err := b.startDemux(ctx, "off", b.config); err != nil {
			return nil, err
		}
	case "kernel-forward":
		if err := b.lab.Route("demux", topology.Route{Dst: "10.2.0.0/16", Via: "10.9.0.2"}); err != nil {
			return nil, err
		}
	}
	var out []Result
	for _, load := range Loads {
		var r Result
		var err error
		if load == "tcp" {
			r = b.tcp(ctx)
		} else if r, err = b.udpBest(ctx, path, load); err != nil {
			return nil, err
		}
		r.Path, r.Load = path, load
		out = append(out, r)
	}
	if path == "kernel-forward" {
		return out, b.lab.RouteDel("demux", topology.Route{Dst: "10.2.0.0/16", Via: "10.9.0.2"})
	}
	if strings.HasPrefix(path, "xdp") {
		if show, err := b.lab.Run("demux", filepath.Join(b.Bin, "demux"), "show", "--config", b.config, "--node", "demux-a"); err == nil {
			for _, line := range strings.Split(show, "\n") {
				if strings.HasPrefix(strings.TrimSpace(line), "xdp") {
					b.progress("%s", strings.TrimSpace(line))
				}
			}
		}
	}
	b.stopDemux()
	return out, nil
}

// demuxStatus is the demux's status document with its fast path's part.
type demuxStatus struct {
	demux.Status
	XDP *xdp.Status `json:"xdp"`
}

// startDemux runs the demux with --xdp mode; it is ready when its status
// socket answers and, with XDP, the program is attached and every lane's
// gateway resolved (until then its packets go to userspace).
func (b *bench) startDemux(ctx context.Context, mode, cfg string) error {
	log, err := os.Create(filepath.Join(b.work, "demux-"+mode+".log"))
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := b.lab.Command("demux", filepath.Join(b.Bin, "demux"), "up", "--config", cfg, "--node", "demux-a", "--xdp", mode)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return err
	}
	b.demuxPI = cmd.Process.Pid
	b.pids = append(b.pids, b.demuxPI)
	go cmd.Wait()
	var st demuxStatus
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		st = demuxStatus{}
		err := admin.Fetch(demuxSocket, &st)
		if err == nil && (mode == "off" || (st.XDP != nil && st.XDP.Interface != "" && len(st.XDP.Unresolved) == 0)) {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			l, _ := os.ReadFile(log.Name())
			return fmt.Errorf("demux --xdp %s not ready after 10 s (%v, xdp %+v); its log:\n%s", mode, err, st.XDP, l)
		}
	}
}

// demuxSocket is the bench demux's status socket.
const demuxSocket = config.DefaultStatusDir + "/benchxdp-demux-a.sock"

// progCost offers the load again for a while with the kernel keeping BPF
// statistics (off for the throughput figures: they cost a clock read per
// run) and returns the demux's XDP program's run time per packet, and
// what the statistics charge an empty program (statsCost).
func (b *bench) progCost(ctx context.Context, pkt string) (prog, stats float64) {
	on, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		b.progress("no BPF statistics (Linux 5.8+): %v", err)
		return 0, 0
	}
	defer on.Close()
	if stats, err = statsCost(); err != nil {
		b.progress("the statistics' own cost: %v", err)
	}
	var st0, st1 demuxStatus
	if err := admin.Fetch(demuxSocket, &st0); err != nil || st0.XDP == nil {
		return 0, stats
	}
	secs := min(int(b.Duration.Seconds()), 2)
	if _, err := b.lab.Run("src", "timeout", strconv.Itoa(secs+30), filepath.Join(b.Bin, "bench"), "blast", "--dev", "lan0",
		"--dst-mac", b.lanMAC, "--dst", dest, "--size", pkt, "--flows", "256", "--duration", fmt.Sprintf("%ds", secs)); err != nil {
		return 0, stats
	}
	if err := admin.Fetch(demuxSocket, &st1); err != nil || st1.XDP == nil || st1.XDP.Runs <= st0.XDP.Runs {
		return 0, stats
	}
	return float64(st1.XDP.RunTime-st0.XDP.RunTime) / float64(st1.XDP.Runs-st0.XDP.Runs), stats
}

// statsCost is the run time per run that the kernel's BPF statistics
// (which must be on) count for an XDP program that only returns, run
// 200,000 times by BPF_PROG_TEST_RUN: the price of their own two clock
// reads, which every figure they give includes.
func statsCost() (float64, error) {
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "MIT",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2 /* XDP_PASS */), asm.Return()}})
	if err != nil {
		return 0, err
	}
	defer p.Close()
	frame := make([]byte, 64)
	for range 20 {
		if _, _, err := p.Benchmark(frame, 10000, nil); err != nil {
			return 0, err
		}
	}
	st, err := p.Stats()
	if err != nil || st.RunCount == 0 {
		return 0, fmt.Errorf("no statistics for the empty program (%v)", err)
	}
	return float64(st.Runtime.Nanoseconds()) / float64(st.RunCount), nil
}

func (b *bench) stopDemux() {
	syscall.Kill(b.demuxPI, syscall.SIGTERM)
	for range 100 {
		if syscall.Kill(b.demuxPI, 0) != nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	syscall.Kill(b.demuxPI, syscall.SIGKILL)
}

var (
	blastSeconds = regexp.MustCompile(`seconds=([0-9.]+)`)
	blastMpps    = regexp.MustCompile(`mpps=([0-9.]+)`)
)

// SweepSteps is how many lower offered rates udpBest tries for a path
// that dropped at the generator's full rate.
const SweepSteps = 4

// udpBest measures path at the generator's full rate; a path that
// delivered under 90% of that (a demux in receive livelock spends its CPU
// taking packets it then drops) is measured again at SweepSteps offered
// rates from what it delivered up towards the full rate, geometrically
// spaced, and the step that delivered the most is its figure.
func (b *bench) udpBest(ctx context.Context, path, pkt string) (Result, error) {
	best, err := b.udp(ctx, path, pkt, 0)
	if err != nil || best.Mpps <= 0 || best.Mpps >= 0.9*best.Offered {
		return best, err
	}
	step := math.Pow(best.Offered/best.Mpps, 1/float64(SweepSteps))
	rate := best.Mpps
	for range SweepSteps {
		r, err := b.udp(ctx, path, pkt, rate*1e6)
		if err != nil {
			return best, err
		}
		if r.Mpps > best.Mpps {
			r.ProgNs, r.StatsNs = best.ProgNs, best.StatsNs
			best = r
		}
		rate *= step
	}
	b.progress("%s udp %s B: best %.3f Mpps delivered, offered %.3f", path, pkt, best.Mpps, best.Offered)
	return best, nil
}

// udp offers pkt-byte UDP packets (256 flows) out of src at rate packets
// per second (0: what one CPU can generate) and counts what reached the
// sink. The generator's frames arrive at the demux as XDP frames, so for
// the paths without the demux's program lan0 gets a pass-all one.
func (b *bench) udp(ctx context.Context, path, pkt string, rate float64) (Result, error) {
	demuxBin := filepath.Join(b.Bin, "demux")
	if !strings.HasPrefix(path, "xdp") {
		if _, err := b.lab.Run("demux", demuxBin, "xdp-pass", "--dev", "lan0"); err != nil {
			return Result{}, err
		}
		defer b.lab.Run("demux", demuxBin, "xdp-pass", "--dev", "lan0", "--off")
	}
	before, err := b.sinkDrops()
	if err != nil {
		return Result{}, err
	}
	secs := int(b.Duration.Seconds())
	out, err := b.lab.Run("src", "timeout", strconv.Itoa(secs+30), filepath.Join(b.Bin, "bench"), "blast", "--dev", "lan0",
		"--dst-mac", b.lanMAC, "--dst", dest, "--size", pkt, "--flows", "256", "--duration", b.Duration.String(),
		"--rate", strconv.FormatFloat(rate, 'f', 0, 64))
	if err != nil {
		b.progress("%s udp %s B: blast failed: %v", path, pkt, err)
		return Result{}, nil
	}
	time.Sleep(500 * time.Millisecond) // what the userspace demux still has queued
	after, err := b.sinkDrops()
	if err != nil {
		return Result{}, err
	}
	got := after - before
	b.progress("%s udp %s B: %s received=%d", path, pkt, strings.TrimSpace(out), got)
	m, o := blastSeconds.FindStringSubmatch(out), blastMpps.FindStringSubmatch(out)
	if m == nil || o == nil {
		return Result{}, fmt.Errorf("bench blast said no seconds or rate: %q", out)
	}
	s, _ := strconv.ParseFloat(m[1], 64)
	offered, _ := strconv.ParseFloat(o[1], 64)
	size, _ := strconv.Atoi(pkt)
	if s <= 0 {
		return Result{}, nil
	}
	r := Result{Mpps: float64(got) / s / 1e6, Gbps: float64(got) * float64(size) * 8 / s / 1e9, Offered: offered}
	if strings.HasPrefix(path, "xdp") && rate == 0 {
		r.ProgNs, r.StatsNs = b.progCost(ctx, pkt)
		b.progress("%s udp %s B: the XDP program ran %.0f ns a packet (BPF statistics; %.0f ns of it their own clock reads)", path, pkt, r.ProgNs, r.StatsNs)
	}
	return r, ctx.Err()
}

var queueDrops = regexp.MustCompile(`rx_queue_\d+_xdp_drops:\s*(\d+)`)

// sinkDrops is what the sink's XDP program has counted and dropped (the
// generator's UDP to the discard port), summed over wan0's queues.
func (b *bench) sinkDrops() (uint64, error) {
	out, err := b.lab.Run("sink", "ethtool", "-S", "wan0")
	if err != nil {
		return 0, err
	}
	var n uint64
	for _, m := range queueDrops.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.ParseUint(m[1], 10, 64)
		n += v
	}
	return n, nil
}

// tcp is iperf3, 4 streams, through the path; a failed run gives zero
// (the summary names it).
func (b *bench) tcp(ctx context.Context) Result {
	secs := int(b.Duration.Seconds())
	cmd := b.lab.Command("src", "timeout", strconv.Itoa(secs+15), "iperf3", "-c", dest, "-t", strconv.Itoa(secs), "-P", "4", "-J")
	out, _ := cmd.Output()
	r, err := iperf.Parse(out)
	if err != nil {
		b.progress("tcp: no result: %v", err)
		return Result{}
	}
	return Result{Mpps: r.Bps / 8 / tcpBytes / 1e6, Gbps: r.Bps / 1e9}
}
