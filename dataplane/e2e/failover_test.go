package e2e

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clusterpeer/clusterpeer/admin"
	"github.com/clusterpeer/clusterpeer/bench/lanewatch"
	"github.com/clusterpeer/clusterpeer/bench/topology"
	"github.com/clusterpeer/clusterpeer/bench/udpflows"
	"github.com/clusterpeer/clusterpeer/config"
	"github.com/clusterpeer/clusterpeer/dataplane/demux"
)

// `make failover` runs this test with -failover.runs=10 and prints the
// summary lines; CI runs it with the default, and asserts generous bounds.
var failoverRuns = flag.Int("failover.runs", 2, "runs per failover scenario")

// foHealth keeps the defaults for detection but lets a lane that a run
// restored be failed again soon: the flap back-off is for real flapping,
// not for a test that kills the same gateway every few seconds.
var foHealth = config.Health{FlapWindow: 100 * time.Millisecond, HoldDown: 10 * time.Millisecond, HoldDownMax: 20 * time.Millisecond, DrainIdle: 500 * time.Millisecond}

const (
	foLane      = 2 // the lane each scenario fails (or adds: 4)
	foFlows     = 24
	foInterval  = time.Millisecond
	foTraffic   = 3 * time.Second
	foFaultAt   = time.Second
	foTCPStream = 4
)

type foScenario struct {
	name    string
	lane    int
	failing bool // the lane dies: its flows' blackout is the measure
	lossy   bool // packets may be lost (the demux they cross dies)
	// Packets may be overtaken: the hosts switch between two live paths
	// (split brain), so a packet still in the old one can arrive after
	// the next packet of its flow took the new one.
	reorders bool
	lossless bool // a failing lane whose flows must lose nothing (a planned stop)
	// TCP streams may be starved (no bytes in the last second) by the
	// scenario's load without being reset: only an iperf3 error counts.
	starves bool
	detect  string          // how the demuxes must learn of the failure: "signal" or "timeout" ("": either)
	traffic time.Duration   // of the UDP flows (default foTraffic)
	before  func(*foTopo)   // state the traffic starts in
	fault   func(*foTopo)   // at foFaultAt
	restore func(*foTopo)   // back to lanes 1-3 up
	check   func(*foResult) // extra expectations
}

type foTopo struct {
	*topo
	full, three string // the 4-lane and 3-lane demux configs
}

// foResult is one run.
type foResult struct {
	blackouts  []time.Duration // of the flows of the failed lane (else: of all flows)
	onLane     int             // UDP flows that were on the lane when it failed
	reordered  uint64
	lost       uint64
	moved      int // flows that changed lane (all of them, or those not on a failed lane)
	tcpOnLane  int
	tcpResets  int
	newOnLane  int // flows that started on the lane (drain, add)
	iperfError string
	detected   string        // demux-a's log line: how long the lane was silent, the table swap
	detectedBy []string      // per demux that took the failed lane down: signal or timeout
	falseDowns []string      // lanes the scenario did not touch that went down (the demuxes' log lines)
	noise      time.Duration // the longest outage of any flow anywhere in the run
	reorders   []string      // each reordered flow: when host-b saw it on each lane
}

func TestFailover(t *testing.T) {
	needs(t, "iperf3", "nft")
	tp := &foTopo{topo: up(t, topology.Options{Prefix: "cpfo", Lanes: 4, Health: foHealth, DemuxLanes: 3})}
	tp.full, tp.three = tp.config(), filepath.Join(tp.work, "demux.yaml")
	b, _ := os.ReadFile(tp.three)
	tp.three = filepath.Join(tp.work, "demux-3.yaml")
	os.WriteFile(tp.three, b, 0o600)
	tp.waitLanes(map[int]string{1: "up", 2: "up", 3: "up"})
	summary := tp.runScenarios(t, failoverScenarios())
	t.Run("reload-rejects", func(t *testing.T) { tp.t = t; testReloadRejects(t, tp) })
	tp.t = t
	for _, l := range summary {
		fmt.Println(l) // `make failover` ends with these
	}
}

// failoverScenarios are `make failover`'s scenarios, each on lane 2 (or
// lane 4, which add-lane adds).
func failoverScenarios() []foScenario {
	gw := func(node string) func(*foTopo) { return func(tp *foTopo) { tp.kill(node) } }
	restart := func(node string) func(*foTopo) {
		return func(tp *foTopo) { tp.restart(node); tp.waitLanes(map[int]string{2: "up"}) }
	}
	lane2Up := func(tp *foTopo) { tp.waitLanes(map[int]string{2: "up"}) }
	return []foScenario{
		{name: "kill-local-gw", lane: foLane, failing: true, detect: "signal", fault: gw("gw-a2"), restore: restart("gw-a2")},
		{name: "kill-remote-gw", lane: foLane, failing: true, detect: "signal", fault: gw("gw-b2"), restore: restart("gw-b2")},
		{name: "link-down", lane: foLane, failing: true, detect: "signal",
			fault: func(tp *foTopo) { tp.run("ga2", "ip", "link", "set", "wan0", "down") },
			restore: func(tp *foTopo) {
				tp.run("ga2", "ip", "link", "set", "wan0", "up")
				lane2Up(tp)
			}},
		{name: "graceful-stop", lane: foLane, failing: true, lossless: true, detect: "signal",
			fault:   func(tp *foTopo) { tp.signal("gw-a2", syscall.SIGTERM) },
			restore: func(tp *foTopo) { tp.waitGone("gw-a2"); restart("gw-a2")(tp) }},
		// Nothing signals these: the silence decides.
		{name: "freeze-gw", lane: foLane, failing: true, detect: "timeout",
			fault: func(tp *foTopo) { tp.signal("gw-a2", syscall.SIGSTOP) },
			restore: func(tp *foTopo) {
				// Thawed, it is alive: its lane comes back (after the
				// hold-down) without a restart.
				tp.signal("gw-a2", syscall.SIGCONT)
				lane2Up(tp)
			}},
		{name: "blackhole", lane: foLane, failing: true, detect: "timeout",
			fault:   func(tp *foTopo) { tp.nft("ga2", "drop-underlay", "input", "output") },
			restore: func(tp *foTopo) { tp.nftDelete("ga2", "drop-underlay"); lane2Up(tp) }},
		{name: "one-way-loss", lane: foLane, failing: true, detect: "timeout",
			fault:   func(tp *foTopo) { tp.nft("ga2", "drop-underlay", "output") },
			restore: func(tp *foTopo) { tp.nftDelete("ga2", "drop-underlay"); lane2Up(tp) },
			check: func(r *foResult) {
				if len(r.detectedBy) != 2 {
					r.iperfError += fmt.Sprintf("; lane 2 went down on %d demuxes, want both", len(r.detectedBy))
				}
			}},
		// Not failures: no lane may go down.
		{name: "stall-gw", lane: foLane, lossy: true,
			fault: func(tp *foTopo) {
				tp.signal("gw-a2", syscall.SIGSTOP)
				time.Sleep(100 * time.Millisecond)
				tp.signal("gw-a2", syscall.SIGCONT)
			},
			restore: func(*foTopo) {}},
		{name: "overload", lane: foLane, lossy: true, starves: true, traffic: 8 * time.Second,
			fault:   func(tp *foTopo) { tp.flood(5 * time.Second) },
			restore: func(*foTopo) {}},
		{name: "lane-recover", lane: foLane,
			before: func(tp *foTopo) { tp.kill("gw-a2"); tp.waitLanes(map[int]string{2: "down"}) },
			fault:  func(tp *foTopo) { tp.restart("gw-a2") },
			restore: func(tp *foTopo) {
				tp.waitLanes(map[int]string{2: "up"})
			}},
		{name: "add-lane", lane: 4,
			fault: func(tp *foTopo) { tp.setDemuxConfig(tp.full) },
			restore: func(tp *foTopo) {
				tp.waitLanes(map[int]string{4: "up"})
				tp.setDemuxConfig(tp.three)
				tp.waitLanes(map[int]string{4: ""})
			},
			check: func(r *foResult) {
				if r.newOnLane != 0 {
					r.iperfError += fmt.Sprintf("; %d established flows started on the new lane", r.newOnLane)
				}
			}},
		{name: "drain-lane", lane: foLane,
			fault: func(tp *foTopo) { tp.demuxes("drain", url.Values{"lane": {"2"}, "deadline": {"60s"}}) },
			restore: func(tp *foTopo) {
				tp.demuxes("undrain", url.Values{"lane": {"2"}})
				tp.waitLanes(map[int]string{2: "up"})
			}},
	}
}

// runScenarios runs each scenario -failover.runs times as a subtest,
// checks the bounds every run must keep, and returns the summary lines.
func (tp *foTopo) runScenarios(t *testing.T, scenarios []foScenario) []string {
	var summary []string
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			tp.t = t
			var all []foResult
			for run := range *failoverRuns {
				// Each run is judged as it came: a lane the scenario did not
				// touch going down is a false down, counted and failed.
				r := tp.runOnce(sc)
				if sc.check != nil {
					sc.check(&r)
				}
				t.Logf("run %d: blackouts %v, %d flows on the lane, %d moved, %d reordered, %d lost, tcp %d on the lane / %d reset, detected by %v, longest outage in the run %v%s%s",
					run+1, roundMs(r.blackouts), r.onLane, r.moved, r.reordered, r.lost, r.tcpOnLane, r.tcpResets, r.detectedBy, r.noise.Round(100*time.Microsecond), r.iperfError, r.detected)
				for _, l := range r.reorders {
					t.Logf("run %d: reordered %s", run+1, l)
				}
				all = append(all, r)
			}
			line := foSummary(sc.name, all)
			summary = append(summary, line)
			t.Log(line)
			for i, r := range all {
				for _, f := range r.falseDowns {
					t.Errorf("run %d: false down of a lane the scenario did not touch: %s", i+1, f)
				}
				for _, by := range r.detectedBy {
					if sc.detect != "" && by != sc.detect {
						t.Errorf("run %d: lane %d was taken down by %s, want %s", i+1, sc.lane, by, sc.detect)
					}
				}
				if sc.failing && len(r.detectedBy) == 0 {
					t.Errorf("run %d: no demux took lane %d down", i+1, sc.lane)
				}
				if !sc.failing && len(r.detectedBy) != 0 {
					t.Errorf("run %d: lane %d went down (%v); nothing failed", i+1, sc.lane, r.detectedBy)
				}
				if sc.failing && r.onLane == 0 {
					t.Errorf("run %d: no flow was on lane %d; nothing failed over", i+1, sc.lane)
				}
				for _, b := range r.blackouts {
					if b > time.Second {
						t.Errorf("run %d: blackout %v, want < 1s", i+1, b)
					}
				}
				if (r.reordered != 0 && !sc.reorders) || r.moved != 0 || r.tcpResets != 0 {
					t.Errorf("run %d: %d reordered, %d flows moved that should not have, %d TCP streams reset", i+1, r.reordered, r.moved, r.tcpResets)
				}
				if ((!sc.failing && !sc.lossy) || sc.lossless) && r.lost != 0 {
					t.Errorf("run %d: %d packets lost; this change must lose none", i+1, r.lost)
				}
				if r.iperfError != "" {
					t.Errorf("run %d: %s", i+1, strings.TrimPrefix(r.iperfError, "; "))
				}
			}
		})
		tp.t = t
	}
	return summary
}

// testReloadRejects: a broken file or a change that needs a restart is
// refused whole and the demuxes keep running as they were; a good file
// reloads, by command and by SIGHUP.
func testReloadRejects(t *testing.T, tp *foTopo) {
	cfg := filepath.Join(tp.work, "demux.yaml")
	good, _ := os.ReadFile(tp.three)
	demuxCmd := func(args ...string) (string, error) {
		out, err := exec.Command(filepath.Join(tp.bin, "demux"), args...).CombinedOutput()
		return string(out), err
	}
	for _, c := range []struct{ name, content, want string }{
		{"broken yaml", strings.Replace(string(good), "vni: 4242", "vni: [", 1), "yaml"},
		{"bad field", strings.Replace(string(good), "mtu: 1420", "mtu: 100", 1), "mtu: 100"},
		{"restart-only change", strings.Replace(string(good), "vni: 4242", "vni: 4243", 1), "vni changed; these apply only on restart"},
		{"lane listed twice", strings.Replace(string(good), "  - id: 3", "  - id: 2", 1), "lanes[2].id: 2 is already the id"},
	} {
		os.WriteFile(cfg, []byte(c.content), 0o600)
		_, err := admin.Do(tp.socket("demux-a"), "reload", nil)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "still running the previous config") {
			t.Errorf("%s: reload error %v, want it to say %q and that the old config runs", c.name, err, c.want)
		}
	}
	tp.waitLanes(map[int]string{1: "up", 2: "up", 3: "up"})

	os.WriteFile(cfg, good, 0o600)
	if out, err := demuxCmd("reload", "--config", cfg, "--node", "demux-a"); err != nil || !strings.Contains(out, "reloaded") {
		t.Errorf("demux reload: %v\n%s", err, out)
	}
	b, _ := os.ReadFile(filepath.Join(tp.work, "demux-a.pid"))
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	syscall.Kill(pid, syscall.SIGHUP)
	deadline := time.Now().Add(5 * time.Second)
	for {
		log, _ := os.ReadFile(filepath.Join(tp.work, "demux-a.log"))
		if strings.Contains(string(log), "SIGHUP: reloaded") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no reload logged after SIGHUP:\n%s", log)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if out, err := demuxCmd("drain", "--config", cfg, "--node", "demux-a", "--lane", "9"); err == nil || !strings.Contains(out, "lane 9: no such lane") {
		t.Errorf("drain of an unknown lane: %v\n%s", err, out)
	}
	if out, err := demuxCmd("undrain", "--config", cfg, "--node", "demux-a", "--lane", "1"); err == nil || !strings.Contains(out, "not draining") {
		t.Errorf("undrain of an active lane: %v\n%s", err, out)
	}
	tp.waitLanes(map[int]string{1: "up", 2: "up", 3: "up"})
}

func roundMs(ds []time.Duration) []string {
	s := make([]string, len(ds))
	for i, d := range ds {
		s[i] = strconv.FormatFloat(float64(d)/1e6, 'f', 1, 64)
	}
	return s
}

// foSummary is the summary line: blackout percentiles over every
// failed-lane flow of every run, the rest summed.
func foSummary(name string, runs []foResult) string {
	var b []time.Duration
	var reordered uint64
	var moved, resets, falseDowns int
	detected := map[string]bool{}
	for _, r := range runs {
		b = append(b, r.blackouts...)
		reordered += r.reordered
		moved += r.moved
		resets += r.tcpResets
		falseDowns += len(r.falseDowns)
		for _, d := range r.detectedBy {
			detected[d] = true
		}
	}
	how := strings.Join(slices.Sorted(maps.Keys(detected)), "+")
	if how == "" {
		how = "none"
	}
	slices.Sort(b)
	pct := func(p float64) int64 {
		if len(b) == 0 {
			return 0
		}
		i := int(p*float64(len(b)) + 0.5)
		return b[min(max(i-1, 0), len(b)-1)].Milliseconds()
	}
	return fmt.Sprintf("failover: scenario=%s runs=%d median_ms=%d p99_ms=%d max_ms=%d reordered=%d moved_other=%d tcp_resets=%d false_downs=%d detected=%s",
		name, len(runs), pct(0.5), pct(0.99), pct(1), reordered, moved, resets, falseDowns, how)
}

// runOnce sends the UDP flows and TCP streams host-a -> host-b, applies
// the fault a second in, and measures.
func (tp *foTopo) runOnce(sc foScenario) foResult {
	t := tp.t
	if sc.before != nil {
		sc.before(tp)
	}
	downsBefore := tp.laneDowns()
	fw := tp.openFlows(4, netip.MustParseAddrPort("10.2.0.10:7000"), udpflows.SendConfig{
		Flows: foFlows, Packets: int(sc.duration() / foInterval), Size: 64, Interval: foInterval})
	w, recv, send := fw.w, fw.recv, fw.send
	defer send.Close()

	// TCP streams, rate-limited so that the machine stays responsive.
	defer tp.iperfServer("hb", 5299)()
	iperfOut := make(chan []byte, 1)
	go func() {
		// Bounded: an iperf3 client whose connections stall for good
		// (once, a demux that had crashed) spins forever otherwise.
		ctx, cancel := context.WithTimeout(context.Background(), sc.duration()+30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, "ip", "netns", "exec", tp.ns("ha"), "iperf3", "-J", "-c", "10.2.0.10", "-p", "5299",
			"-P", strconv.Itoa(foTCPStream), "-b", "20M", "-t", strconv.Itoa(int((sc.duration()+time.Second)/time.Second)), "--connect-timeout", "3000")
		out, _ := cmd.Output()
		iperfOut <- out
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	watchCtx, stopWatch := context.WithCancel(ctx)
	watched := make(chan struct{})
	go func() { w.Run(watchCtx); close(watched) }()
	received := make(chan []udpflows.FlowResult, 1)
	go func() { recv.Run(ctx, 500*time.Millisecond); received <- recv.Results() }()
	sent := make(chan error, 1)
	time.Sleep(300 * time.Millisecond) // TCP streams connected and pinned first
	go func() { sent <- send.Run(ctx) }()
	time.Sleep(foFaultAt)
	icmpBefore := tp.icmpOut("ga2")
	faultAt := time.Now()
	sc.fault(tp)
	faultDone := time.Now() // an nft or a sleep takes a while
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	results := <-received
	out := <-iperfOut
	stopWatch()
	<-watched
	rep := w.Report()
	r := tp.analyse(sc, send.Ports(), results, rep, out, faultAt, faultDone.Add(50*time.Millisecond))
	if sc.failing {
		r.detected = tp.lastLogLine("demux-a", `msg="lane down"`, faultAt)
		if sc.detect == "signal" && strings.Contains(r.detected, "detected=timeout") {
			// Which signals demux-a saw and refused, and the ICMP counters
			// of the gateway's namespace (its rate limits).
			var st demux.Status
			tp.status("demux-a", &st)
			r.detected += fmt.Sprintf("; demux-a: icmp_unmatched=%d", st.ICMPUnmatched)
			if st.Probing != nil {
				r.detected += fmt.Sprintf(" signals=%v probe_drops=%v", st.Probing.Signals, st.Probing.Drops)
			}
			after := tp.icmpOut("ga2")
			r.detected += fmt.Sprintf("; ga2 during the run: %.0f ICMP unreachable sent, %.0f held back by the per-host limit, %.0f by the global one",
				after[0]-icmpBefore[0], after[1]-icmpBefore[1], after[2]-icmpBefore[2])
		}
	}
	if r.lost > 0 {
		// Where did they go? The receiving host's socket, or the path.
		drops, _ := tp.try("da", "cat", "/sys/class/net/cpdemux/statistics/tx_dropped") // gone with a killed demux
		t.Logf("lost %d: host-b %s; demux-a tun tx_dropped %s", r.lost, strings.Join(strings.Fields(tp.run("hb", "nstat", "-az", "UdpRcvbufErrors", "UdpInErrors")), " "),
			strings.TrimSpace(drops))
	}
	for log, downs := range tp.laneDowns() {
		for _, l := range downs[len(downsBefore[log]):] {
			if !sc.failing || !strings.Contains(l, fmt.Sprintf(" lane=%d ", sc.lane)) {
				r.falseDowns = append(r.falseDowns, filepath.Base(log)+": "+l)
				continue
			}
			by := "timeout"
			if strings.Contains(l, "detected=signal") {
				by = "signal"
			}
			r.detectedBy = append(r.detectedBy, by)
		}
	}
	sc.restore(tp)
	time.Sleep(150 * time.Millisecond) // past the flap window
	return r
}

// icmpOut reads a node's ICMP unreachable counters: sent, and held back
// by the per-host and the global rate limits.
func (tp *foTopo) icmpOut(node string) [3]float64 {
	return [3]float64{tp.counter(node, "IcmpOutDestUnreachs"), tp.counter(node, "IcmpOutRateLimitHost"), tp.counter(node, "IcmpOutRateLimitGlobal")}
}

func (sc foScenario) duration() time.Duration {
	if sc.traffic > 0 {
		return sc.traffic
	}
	return foTraffic
}

// signal sends sig to a node's process (only the PID the topology or this
// test started).
func (tp *foTopo) signal(node string, sig syscall.Signal) {
	b, err := os.ReadFile(filepath.Join(tp.work, node+".pid"))
	if err != nil {
		tp.t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if err := syscall.Kill(pid, sig); err != nil {
		tp.t.Fatalf("%v to %s (%d): %v", sig, node, pid, err)
	}
}

// waitGone waits until a node's process has exited (a planned stop
// drains first: at most a few seconds).
func (tp *foTopo) waitGone(node string) {
	b, _ := os.ReadFile(filepath.Join(tp.work, node+".pid"))
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	for range 500 {
		if syscall.Kill(pid, 0) != nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	tp.t.Fatalf("%s (%d) still running 5 s after SIGTERM", node, pid)
}

// nft drops the lane's WireGuard underlay (UDP to and from port 51820)
// in node's namespace, in the hooks given, with an nftables table of its
// own; nftDelete removes it (topology down removes the namespace, and
// with it the table, if a test fails first).
func (tp *foTopo) nft(node, table string, hooks ...string) {
	rules := "table inet " + table + " {\n"
	for _, h := range hooks {
		port := "dport"
		if h == "input" {
			port = "sport"
		}
		rules += fmt.Sprintf("  chain %s { type filter hook %s priority 0; policy accept; udp %s 51820 drop; }\n", h, h, port)
	}
	rules += "}\n"
	f := filepath.Join(tp.work, table+".nft")
	os.WriteFile(f, []byte(rules), 0o600)
	tp.run(node, "nft", "-f", f)
}

func (tp *foTopo) nftDelete(node, table string) {
	tp.run(node, "nft", "delete", "table", "inet", table)
}

// flood offers host-a -> host-b small UDP datagrams at about twice what
// the userspace demux carries here (64-byte datagrams, 96 flows of 1000
// packets/s each, beside the scenario's 24; it carries about 50-60 kpps),
// for d, from a sender of its own, to the discard port.
func (tp *foTopo) flood(d time.Duration) {
	var send *udpflows.Sender
	var err error
	tp.inNS("ha", func() {
		send, err = udpflows.NewSender(udpflows.SendConfig{Dst: netip.MustParseAddrPort("10.2.0.10:9"), Flows: 96,
			Packets: int(d / time.Millisecond), Size: 64, Interval: time.Millisecond})
	})
	if err != nil {
		tp.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), d+5*time.Second)
	go func() {
		defer cancel()
		defer send.Close()
		send.Run(ctx)
	}()
}

// reorderedFlow says when host-b saw a reordered flow on each lane,
// relative to its longest gap: a packet on the old lane after the first on
// the new one was held up behind the demux, not reordered by it.
func reorderedFlow(res udpflows.FlowResult, f lanewatch.Flow) string {
	s := fmt.Sprintf("flow %d (port %d): %d out of order, %d lost, gap %v from %s;",
		res.Flow, f.SrcPort, res.OutOfOrder, res.Lost, res.LongestGap.Round(100*time.Microsecond), res.GapStart.Format("15:04:05.0000"))
	ids := slices.Sorted(maps.Keys(f.Lanes))
	for _, id := range ids {
		c := f.Lanes[id]
		s += fmt.Sprintf(" lane %d: %d packets %s-%s", id, c.Packets, c.First.Format("15:04:05.0000"), c.Last.Format("15:04:05.0000"))
	}
	return s
}

// analyse judges a run. A flow's blackout is its outage around the fault
// (one that began before 50 ms after the fault was applied and ended
// after it was begun): this shared
// machine stalls the path now and then for 20-40 ms anywhere in a run
// (measured: outages of that size at random times in every scenario,
// including those that change nothing), which says nothing of the fault;
// the longest such outage elsewhere is logged as the run's noise.
func (tp *foTopo) analyse(sc foScenario, ports []uint16, results []udpflows.FlowResult, rep lanewatch.Report, iperf []byte, faultAt, faultEnd time.Time) foResult {
	var r foResult
	flows := map[string]lanewatch.Flow{}
	for _, f := range rep.Flows {
		flows[strings.Fields(f.Flow)[0]+" "+strconv.Itoa(int(f.SrcPort))] = f
	}
	// A flow that changed lane; for a failing lane only the others count.
	moved := func(f lanewatch.Flow) bool {
		return len(f.Lanes) > 1 && !(sc.failing && f.First == sc.lane)
	}
	got := map[int]udpflows.FlowResult{}
	for _, res := range results {
		got[res.Flow] = res
	}
	want := uint64(sc.duration() / foInterval)
	for i, port := range ports {
		res, ok := got[i]
		r.lost += want - min(res.Received, want)
		r.noise = max(r.noise, res.LongestOutage)
		r.reordered += res.OutOfOrder
		f, seen := flows["udp "+strconv.Itoa(int(port))]
		if !ok || !seen {
			continue
		}
		if res.OutOfOrder > 0 {
			r.reorders = append(r.reorders, reorderedFlow(res, f))
		}
		if moved(f) {
			r.moved++
		}
		if f.First == sc.lane {
			r.newOnLane++
		}
		if !sc.failing || f.First == sc.lane {
			if f.First == sc.lane {
				r.onLane++
			}
			r.blackouts = append(r.blackouts, res.OutageAround(faultAt, faultEnd))
		}
	}
	var ip struct {
		Error string `json:"error"`
		Start struct {
			Connected []struct {
				Socket    int `json:"socket"`
				LocalPort int `json:"local_port"`
			} `json:"connected"`
		} `json:"start"`
		Intervals []struct {
			Streams []struct {
				Socket int     `json:"socket"`
				Bytes  float64 `json:"bytes"`
			} `json:"streams"`
		} `json:"intervals"`
	}
	if err := json.Unmarshal(iperf, &ip); err != nil {
		r.iperfError = fmt.Sprintf("; iperf3 output: %v", err)
		return r
	}
	lastBytes := map[int]float64{}
	if n := len(ip.Intervals); n > 0 {
		for _, s := range ip.Intervals[n-1].Streams {
			lastBytes[s.Socket] = s.Bytes
		}
	}
	for _, c := range ip.Start.Connected {
		f, seen := flows["tcp "+strconv.Itoa(c.LocalPort)]
		crossed := seen && (!sc.failing || f.First == sc.lane)
		if seen && moved(f) {
			r.moved++
		}
		if !crossed {
			continue
		}
		r.tcpOnLane++
		if ip.Error != "" || (lastBytes[c.Socket] == 0 && !sc.starves) {
			r.tcpResets++
			var per []string // what the stream carried, second by second
			for _, in := range ip.Intervals {
				for _, s := range in.Streams {
					if s.Socket == c.Socket {
						per = append(per, strconv.FormatFloat(s.Bytes/1e3, 'f', 0, 64))
					}
				}
			}
			r.iperfError += fmt.Sprintf("; tcp port %d carried nothing at the end (kB per second: %s)", c.LocalPort, strings.Join(per, " "))
		}
	}
	if ip.Error != "" {
		r.iperfError = "; iperf3: " + ip.Error
	}
	return r
}

// lastLogLine returns the reason and table swap time of a node's last log
// line containing match, and how long after since it was logged
// ("; node: N ms after the fault: ..." or "").
func (tp *foTopo) lastLogLine(node, match string, since time.Time) string {
	b, _ := os.ReadFile(filepath.Join(tp.work, node+".log"))
	lines := strings.Split(string(b), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if l := lines[i]; strings.Contains(l, match) {
			if j := strings.Index(l, "reason="); j >= 0 {
				after := ""
				if f := strings.Fields(l); len(f) > 0 {
					if at, err := time.Parse(time.RFC3339Nano, strings.TrimPrefix(f[0], "time=")); err == nil {
						after = fmt.Sprintf(" %.1f ms after the fault:", float64(at.Sub(since))/1e6)
					}
				}
				return "; " + node + ":" + after + " " + l[j:]
			}
		}
	}
	return ""
}

// restart starts a gateway again, as the topology did.
func (tp *foTopo) restart(node string) {
	tp.start("g"+strings.TrimPrefix(node, "gw-"), "tunnel", node, tp.full)
}

// start runs a node's binary in its namespace as the topology did (its
// log, pid file, and the pid where topology.Down finds it).
func (tp *foTopo) start(ns, binary, node, config string, extra ...string) {
	if err := tp.p.Start(ns, binary, node, config, extra...); err != nil {
		tp.t.Fatal(err)
	}
}

// setDemuxConfig replaces the demuxes' config file and reloads both.
func (tp *foTopo) setDemuxConfig(from string) {
	b, err := os.ReadFile(from)
	if err != nil {
		tp.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tp.work, "demux.yaml"), b, 0o600); err != nil {
		tp.t.Fatal(err)
	}
	tp.demuxes("reload", nil)
}

func (tp *foTopo) demuxes(action string, q url.Values) {
	for _, d := range []string{"demux-a", "demux-b"} {
		if _, err := admin.Do(tp.socket(d), action, q); err != nil {
			tp.t.Fatalf("%s %s: %v", d, action, err)
		}
	}
}

// waitLanes waits until both demuxes show each lane in the state given
// ("" for absent).
func (tp *foTopo) waitLanes(want map[int]string) {
	tp.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ok := true
		var got []string
		for _, d := range []string{"demux-a", "demux-b"} {
			var st demux.Status
			if err := admin.Fetch(tp.socket(d), &st); err != nil {
				tp.t.Fatal(err)
			}
			states := map[int]string{}
			for _, l := range st.Lanes {
				states[int(l.ID)] = string(l.State)
				got = append(got, fmt.Sprintf("%s/%d=%s", d, l.ID, l.State))
			}
			for id, s := range want {
				if states[id] != s {
					ok = false
				}
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			tp.t.Fatalf("lanes %v not reached: %v", want, got)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
