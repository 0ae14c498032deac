package e2e

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/clusterpeer/clusterpeer/admin"
	"github.com/clusterpeer/clusterpeer/bench/lanewatch"
	"github.com/clusterpeer/clusterpeer/bench/topology"
	"github.com/clusterpeer/clusterpeer/bench/udpflows"
	"github.com/clusterpeer/clusterpeer/config"
	"github.com/clusterpeer/clusterpeer/dataplane/demux"
	"github.com/clusterpeer/clusterpeer/membership"
	"github.com/clusterpeer/clusterpeer/membership/etcdtest"
	"github.com/clusterpeer/clusterpeer/tunnel/gateway"
	"github.com/clusterpeer/clusterpeer/tunnel/wgkey"
)

// `make membership` runs this test with -membership.runs=5 and prints the
// summary lines; CI runs each scenario once.
var membershipRuns = flag.Int("membership.runs", 1, "runs per membership scenario")

// The membership topology: lanes 1-2 in the file, 3-5 through the store
// (3 started with the peering, 4 and 5 spare: their gateways start in the
// scenarios), a three-member etcd cluster.
const (
	msLanes    = 5
	msFlows    = 16
	msInterval = 2 * time.Millisecond // 8 kpps in all: the 4096-packet TUN queue rides out 0.5 s stalls
	msEtcd     = 3
	msTCP      = 2 // iperf3 streams, 10 Mbit/s each
)

type msTopo struct {
	*topo
	replaced int // replacements so far: each takes the other address plan
}

type msScenario struct {
	name    string
	lane    int           // the lane the scenario changes (0: none)
	traffic time.Duration // of the UDP flows
	before  func(*msTopo)
	// change does the scenario's change at a second into the traffic and
	// returns how long it took to take effect (what median_ms reports).
	change  func(*msTopo) time.Duration
	restore func(*msTopo)
	// still: no lane may change state on either demux during the run.
	still bool
}

type msResult struct {
	took       time.Duration
	movedOther int
	lostOther  uint64
	changes    []string // lane transitions seen during a run that must have none
	tcpError   string   // iperf3's, if a stream failed (reset, refused)
}

func TestMembership(t *testing.T) {
	etcdtest.Skip(t)
	needs(t, "iperf3")
	tp := &msTopo{topo: up(t, topology.Options{Prefix: "cpms", Lanes: msLanes, Health: foHealth, Etcd: msEtcd, Joined: 3, Spare: 2})}
	tp.waitAll(map[int]string{1: "up", 2: "up", 3: "up"}, 15*time.Second)
	lanes45 := []struct {
		s config.Side
		i int
	}{{config.SideA, 4}, {config.SideB, 4}, {config.SideA, 5}, {config.SideB, 5}}
	startSpares := func(tp *msTopo) time.Duration {
		start := time.Now()
		var wg sync.WaitGroup
		for _, g := range lanes45 {
			wg.Go(func() {
				if err := tp.p.StartJoined(g.s, g.i); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		return tp.waitCarrying([]int{4, 5}, nil, start)
	}
	stopSpares := func(tp *msTopo) {
		for _, g := range lanes45 {
			name := topology.GatewayName(g.s, g.i)
			if pid, err := tp.p.PID(name); err == nil && syscall.Kill(pid, 0) == nil {
				syscall.Kill(pid, syscall.SIGTERM) // a planned stop: it leaves the store
			}
		}
		for _, g := range lanes45 {
			tp.waitExit(topology.GatewayName(g.s, g.i))
		}
		tp.waitAll(map[int]string{4: "", 5: ""}, 15*time.Second)
	}
	scenarios := []msScenario{
		{name: "replace-gw", lane: 3, traffic: 5 * time.Second,
			change: func(tp *msTopo) time.Duration {
				tp.killNode("gw-a3")
				k, err := wgkey.Generate()
				if err != nil {
					t.Fatal(err)
				}
				start := time.Now()
				geneve := tp.replace(k)
				took := tp.waitCarrying([]int{3}, map[int]string{3: geneve}, start)
				// What gw-b3 said of the dead instance is not said of
				// the new one (it would tell the demuxes the lane is down).
				var st struct {
					Probes struct {
						Condition string `json:"condition"`
					} `json:"probes"`
				}
				tp.status("gw-b3", &st)
				if st.Probes.Condition != "no diagnostic" {
					t.Errorf("gw-b3 still reports %q with the replacement as its peer", st.Probes.Condition)
				}
				return took
			},
			restore: func(tp *msTopo) { tp.waitAll(map[int]string{3: "up"}, 15*time.Second) }},
		{name: "scale-out", lane: 4, traffic: 5 * time.Second,
			change: startSpares, restore: stopSpares},
		{name: "leave", lane: 5, traffic: 8 * time.Second,
			before: func(tp *msTopo) {
				for _, g := range lanes45 {
					if err := tp.p.StartJoined(g.s, g.i); err != nil {
						t.Fatal(err)
					}
				}
				tp.waitAll(map[int]string{4: "up", 5: "up"}, 15*time.Second)
			},
			change: func(tp *msTopo) time.Duration {
				start := time.Now()
				tp.killNode("gw-a5") // stopped for good, without leaving
				tp.waitAll(map[int]string{5: ""}, 15*time.Second)
				return time.Since(start)
			},
			restore: stopSpares},
		{name: "reweigh", lane: 3, traffic: 4 * time.Second,
			change: func(tp *msTopo) time.Duration {
				start := time.Now()
				for _, g := range []string{"gw-a3", "gw-b3"} {
					tp.run("ha", filepath.Join(tp.bin, "tunnel"), "weight", "--config", tp.config(), "--node", g, "--weight", "3")
				}
				return tp.waitWeight(3, 3, start)
			},
			restore: func(tp *msTopo) {
				for _, g := range []string{"gw-a3", "gw-b3"} {
					tp.run("ha", filepath.Join(tp.bin, "tunnel"), "weight", "--config", tp.config(), "--node", g, "--weight", "1")
				}
				tp.waitWeight(3, 1, time.Now())
			}},
		// A lease that ends while its gateway works (what a gateway cut
		// off from etcd alone sees): its lane stays, it registers again.
		{name: "lease-lost", traffic: 4 * time.Second, still: true,
			change: func(tp *msTopo) time.Duration {
				start := time.Now()
				tp.revokeLease(config.SideA, 3)
				tp.waitRegistered("demux-a", config.SideA, 3, start)
				took := time.Since(start)
				b, _ := os.ReadFile(filepath.Join(tp.work, "demux-a.log"))
				if !strings.Contains(string(b), "without a planned stop; its lane stays while its probes answer\" node=demux-a store=etcd side=a slot=3") {
					t.Error("demux-a did not keep the lost registration of slot 3 (no log line)")
				}
				return took
			},
			restore: func(*msTopo) {}},
		{name: "etcd-down", traffic: 14 * time.Second, still: true,
			change: func(tp *msTopo) time.Duration {
				for i := range msEtcd {
					tp.p.KillEtcd(i)
				}
				time.Sleep(10 * time.Second)
				start := time.Now()
				for i := range msEtcd {
					if err := tp.p.RestartEtcd(i); err != nil {
						t.Fatal(err)
					}
				}
				tp.waitStore(true)
				return time.Since(start)
			},
			restore: func(tp *msTopo) { tp.waitAll(map[int]string{1: "up", 2: "up", 3: "up"}, 15*time.Second) }},
		{name: "etcd-member-down", traffic: 8 * time.Second, still: true,
			change: func(tp *msTopo) time.Duration {
				tp.p.KillEtcd(0)
				time.Sleep(5 * time.Second)
				start := time.Now()
				if err := tp.p.RestartEtcd(0); err != nil {
					t.Fatal(err)
				}
				return time.Since(start)
			},
			restore: func(*msTopo) {}},
	}
	var summary []string
	for _, sc := range scenarios {
		var runs []msResult
		t.Run(sc.name, func(t *testing.T) {
			tp.t = t
			for run := 1; run <= *membershipRuns; run++ {
				r := tp.runOnce(sc)
				t.Logf("run %d: took %s, moved_other=%d lost_other=%d", run, r.took.Round(time.Millisecond), r.movedOther, r.lostOther)
				if r.movedOther > 0 || r.lostOther > 0 {
					t.Errorf("run %d: %d flows not on lane %d changed lane, %d of their packets lost; want none", run, r.movedOther, sc.lane, r.lostOther)
				}
				if r.tcpError != "" {
					t.Errorf("run %d: a TCP stream failed: %s", run, r.tcpError)
				}
				if len(r.changes) > 0 {
					t.Errorf("run %d: lanes changed while only the store did: %v", run, r.changes)
				}
				runs = append(runs, r)
			}
		})
		tp.t = t
		summary = append(summary, msSummary(sc.name, runs))
	}
	for _, l := range summary {
		fmt.Println(l) // `make membership` ends with these
	}
}

func msSummary(name string, runs []msResult) string {
	var took []time.Duration
	var moved int
	var lost uint64
	for _, r := range runs {
		took = append(took, r.took)
		moved += r.movedOther
		lost += r.lostOther
	}
	slices.Sort(took)
	med, mx := time.Duration(0), time.Duration(0)
	if n := len(took); n > 0 {
		med, mx = took[n/2], took[n-1]
	}
	return fmt.Sprintf("membership: scenario=%s runs=%d median_ms=%d max_ms=%d moved_other=%d lost_other=%d",
		name, len(runs), med.Milliseconds(), mx.Milliseconds(), moved, lost)
}

// runOnce: UDP flows host-a -> host-b at 1000 packets/s each, and fresh
// 5-tuples both ways (so that a lane that joins carries new flows at
// once); a second in, the change.
func (tp *msTopo) runOnce(sc msScenario) msResult {
	t := tp.t
	if sc.before != nil {
		sc.before(tp)
	}
	packets := int(sc.traffic / msInterval)
	fw := tp.openFlows(msLanes, netip.MustParseAddrPort("10.2.0.10:7100"),
		udpflows.SendConfig{Flows: msFlows, Packets: packets, Size: 64, Interval: msInterval})
	w, recv, send := fw.w, fw.recv, fw.send
	defer send.Close()
	ctx, cancel := context.WithTimeout(context.Background(), sc.traffic+30*time.Second)
	defer cancel()
	watchCtx, stopWatch := context.WithCancel(ctx)
	watched := make(chan struct{})
	go func() { w.Run(watchCtx); close(watched) }()
	received := make(chan []udpflows.FlowResult, 1)
	recvDone := make(chan struct{})
	go func() { recv.Run(ctx, 500*time.Millisecond); received <- recv.Results(); close(recvDone) }()
	freshCtx, stopFresh := context.WithCancel(ctx)
	var fresh sync.WaitGroup
	for _, f := range []struct{ from, to string }{{"ha", "10.2.0.10:7200"}, {"hb", "10.1.0.10:7200"}} {
		fresh.Go(func() { tp.freshTuples(freshCtx, f.from, f.to) })
	}
	// A run that fails half way (t.Fatal) stops its traffic before the
	// next scenario opens the same ports (once: "address already in use").
	defer func() {
		cancel()
		<-recvDone
		fresh.Wait()
		<-watched
	}()
	defer tp.iperfServer("hb", 5399)()
	tcp := make(chan string, 1)
	go func() {
		out, _ := tp.try("ha", "iperf3", "-J", "-c", "10.2.0.10", "-p", "5399", "-P", strconv.Itoa(msTCP), "-b", "10M",
			"-t", strconv.Itoa(int((sc.traffic+time.Second)/time.Second)), "--connect-timeout", "3000")
		var res struct {
			Error string `json:"error"`
		}
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			res.Error = fmt.Sprintf("output: %v", err)
		}
		tcp <- res.Error
	}()
	sent := make(chan error, 1)
	time.Sleep(300 * time.Millisecond) // TCP streams connected and pinned first
	go func() { sent <- send.Run(ctx) }()
	time.Sleep(time.Second)
	changesBefore := tp.laneChanges()
	dropsBefore := tp.tunDrops("da")
	var r msResult
	r.took = sc.change(tp)
	if sc.still {
		for log, lines := range tp.laneChanges() {
			for _, l := range lines[len(changesBefore[log]):] {
				r.changes = append(r.changes, filepath.Base(log)+": "+l)
			}
		}
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	results := <-received
	r.tcpError = <-tcp
	stopFresh()
	fresh.Wait()
	stopWatch()
	<-watched
	rep := w.Report()
	flows := map[uint16]lanewatch.Flow{}
	for _, f := range rep.Flows {
		if strings.HasPrefix(f.Flow, "udp ") {
			flows[f.SrcPort] = f
		}
	}
	got := map[int]udpflows.FlowResult{}
	for _, res := range results {
		got[res.Flow] = res
	}
	for i, port := range send.Ports() {
		f, seen := flows[port]
		if !seen || f.First == sc.lane {
			continue
		}
		if len(f.Lanes) > 1 {
			r.movedOther++
		}
		r.lostOther += uint64(packets) - min(got[i].Received, uint64(packets))
	}
	if r.lostOther > 0 {
		// Where did they go? The demux's TUN queue (it fell behind), or
		// the receiving socket.
		t.Logf("lost %d: demux-a TUN tx_dropped %d -> %d; host-b %s", r.lostOther, dropsBefore, tp.tunDrops("da"),
			strings.Join(strings.Fields(tp.run("hb", "nstat", "-az", "UdpRcvbufErrors", "UdpInErrors")), " "))
	}
	sc.restore(tp)
	return r
}

// freshTuples sends a datagram from a new source port every 2 ms until
// ctx ends (to a port nothing listens on): each is a new flow, which the
// demuxes place by the current table.
func (tp *msTopo) freshTuples(ctx context.Context, from, to string) {
	err := tp.p.InNS(from, func() error {
		for ctx.Err() == nil {
			c, err := net.Dial("udp", to)
			if err != nil {
				return err
			}
			c.Write([]byte("membership fresh tuple"))
			c.Close()
			time.Sleep(2 * time.Millisecond)
		}
		return nil
	})
	if err != nil {
		tp.t.Errorf("fresh tuples from %s: %v", from, err)
	}
}

// lanePackets reads each demux's packets sent per lane, with the lane's
// state and gateway address.
func (tp *msTopo) lanePackets() map[string]map[int]demux.LaneStatus {
	out := map[string]map[int]demux.LaneStatus{}
	for _, d := range []string{"demux-a", "demux-b"} {
		var st demux.Status
		if err := admin.Fetch(tp.socket(d), &st); err != nil {
			tp.t.Fatal(err)
		}
		out[d] = map[int]demux.LaneStatus{}
		for _, l := range st.Lanes {
			out[d][int(l.ID)] = l
		}
	}
	return out
}

// waitCarrying waits until every lane of ids is up on both demuxes (with
// the GENEVE address given, on demux-a) and has sent packets on each
// since it came up, and returns the time from start.
func (tp *msTopo) waitCarrying(ids []int, addr map[int]string, start time.Time) time.Duration {
	type key struct {
		d  string
		id int
	}
	upAt := map[key]uint64{}
	for deadline := start.Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		now := tp.lanePackets()
		done := true
		for d, lanes := range now {
			for _, id := range ids {
				l, ok := lanes[id]
				k := key{d, id}
				if !ok || l.State != demux.LaneUp || (d == "demux-a" && addr[id] != "" && l.Address != addr[id]) {
					delete(upAt, k)
					done = false
					continue
				}
				if _, seen := upAt[k]; !seen {
					upAt[k] = l.Packets
					done = false
				} else if l.Packets == upAt[k] {
					done = false
				}
			}
		}
		if done {
			return time.Since(start)
		}
	}
	for _, id := range ids {
		tp.t.Log(tp.describeProcess(fmt.Sprintf("gw-a%d", id)))
	}
	tp.t.Fatalf("lanes %v not carrying traffic on both demuxes 20 s after the change: %v", ids, tp.lanePackets())
	return 0
}

// describeProcess says what node's process is doing: its state, where
// the kernel has it wait and its kernel stack; a Go process is then sent
// SIGQUIT, which writes its goroutines' stacks into its log (dumped
// with the others). For a node that never wrote a line (a replacement
// gateway, twice in some dozens of runs).
func (tp *msTopo) describeProcess(node string) string {
	pid, err := tp.p.PID(node)
	if err != nil {
		return fmt.Sprintf("%s: no pid: %v", node, err)
	}
	proc := "/proc/" + strconv.Itoa(pid) + "/"
	read := func(f string) string {
		b, err := os.ReadFile(proc + f)
		if err != nil {
			return err.Error()
		}
		return strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
	}
	out := fmt.Sprintf("%s (pid %d): cmdline %q; stat %s; wchan %s; kernel stack:\n%s", node, pid, read("cmdline"), read("stat"), read("wchan"), read("stack"))
	if strings.Contains(read("cmdline"), "tunnel") {
		syscall.Kill(pid, syscall.SIGQUIT)
		time.Sleep(200 * time.Millisecond)
	}
	return out
}

// waitAll waits until both demuxes show each lane in the state given
// ("" for absent).
func (tp *msTopo) waitAll(want map[int]string, timeout time.Duration) {
	tp.t.Helper()
	var got map[string]map[int]demux.LaneStatus
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		got = tp.lanePackets()
		ok := true
		for _, lanes := range got {
			for id, s := range want {
				if string(lanes[id].State) != s {
					ok = false
				}
			}
		}
		if ok {
			return
		}
	}
	var desc []string
	for d, lanes := range got {
		for id, l := range lanes {
			desc = append(desc, fmt.Sprintf("%s/%d=%s", d, id, l.State))
		}
	}
	slices.Sort(desc)
	tp.t.Fatalf("lanes %v not reached in %s: %v", want, timeout, desc)
}

// waitStore waits until both demuxes say the store answers (or not).
func (tp *msTopo) waitStore(up bool) {
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		ok := true
		for _, d := range []string{"demux-a", "demux-b"} {
			var st struct {
				Store *struct {
					Up bool `json:"up"`
				} `json:"store"`
			}
			if err := admin.Fetch(tp.socket(d), &st); err != nil || st.Store == nil || st.Store.Up != up {
				ok = false
			}
		}
		if ok {
			return
		}
	}
	tp.t.Fatalf("the demuxes do not report the store up=%v", up)
}

// laneChanges is each demux's log lines so far of a lane changing state.
func (tp *msTopo) laneChanges() map[string][]string {
	out := map[string][]string{}
	for _, d := range []string{"demux-a", "demux-b"} {
		b, _ := os.ReadFile(filepath.Join(tp.work, d+".log"))
		for _, l := range strings.Split(string(b), "\n") {
			for _, m := range []string{`msg="lane down"`, `msg="lane up"`, `msg="lane draining"`, `msg="lanes changed by the store"`} {
				if strings.Contains(l, m) {
					out[d] = append(out[d], l)
				}
			}
		}
	}
	return out
}

// replace starts gw-a3's replacement with key k, on the address plan the
// last one did not use, and returns its GENEVE address.
func (tp *msTopo) replace(k wgkey.Key) string {
	tp.replaced++
	moved := tp.replaced%2 == 1
	if err := tp.p.Replace(config.SideA, 3, k, moved); err != nil {
		tp.t.Fatal(err)
	}
	if moved {
		return "10.1.0.123:6081"
	}
	return "10.1.0.23:6081"
}

// waitWeight waits until both demuxes give lane id weight w.
func (tp *msTopo) waitWeight(id int, w uint32, start time.Time) time.Duration {
	for deadline := start.Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		ok := true
		for _, lanes := range tp.lanePackets() {
			ok = ok && lanes[id].Weight == w
		}
		if ok {
			return time.Since(start)
		}
	}
	tp.t.Fatalf("lane %d not at weight %d on both demuxes", id, w)
	return 0
}

// revokeLease ends the lease of a registration at once, as its expiry
// would, with the gateway still running.
func (tp *msTopo) revokeLease(s config.Side, slot int) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: tp.p.Store.Endpoints(), DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		tp.t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	keys := membership.Keys{Prefix: config.DefaultStorePrefix, Peering: tp.prefix}
	resp, err := cli.Get(ctx, keys.Slot(s, slot))
	if err != nil || len(resp.Kvs) != 1 {
		tp.t.Fatalf("registration %s/%d: %v", s, slot, err)
	}
	if _, err := cli.Revoke(ctx, clientv3.LeaseID(resp.Kvs[0].Lease)); err != nil {
		tp.t.Fatal(err)
	}
}

// waitRegistered waits until demux holds a registration of side/slot
// taken after since (a new lease), not lost.
func (tp *msTopo) waitRegistered(demuxNode string, s config.Side, slot int, since time.Time) {
	for deadline := since.Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		var st struct {
			Store struct {
				Members []membership.Member `json:"members"`
			} `json:"store"`
		}
		tp.status(demuxNode, &st)
		for _, m := range st.Store.Members {
			if m.Side == s && m.Slot == slot && !m.Lost && m.Seen.After(since) {
				return
			}
		}
	}
	tp.t.Fatalf("%s: no new registration of %s/%d", demuxNode, s, slot)
}

// killNode ends a node with SIGKILL and waits until it is gone.
func (tp *msTopo) killNode(node string) {
	pid, err := tp.p.PID(node)
	if err != nil {
		tp.t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		tp.t.Fatalf("kill %s (%d): %v", node, pid, err)
	}
	tp.waitExit(node)
}

// waitExit waits until node's last process is gone.
func (tp *msTopo) waitExit(node string) {
	pid, err := tp.p.PID(node)
	if err != nil {
		return
	}
	for range 300 {
		if b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); err != nil || strings.Contains(string(b), ") Z ") {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	tp.t.Fatalf("%s (%d) still runs", node, pid)
}

// TestJoinedGatewayKeys: a gateway that joined through the store (lane 2
// here, on both sides), with each node holding only its keys
// (security.keys_dir: it reads its side's join file) and sealed GENEVE,
// carries its lane's traffic; a rotation by reload reaches it like every
// other node: after SIGHUP it signs probes with the new generation, and
// past the old key's grace its lane still carries traffic and no
// gateway refuses a frame.
func TestJoinedGatewayKeys(t *testing.T) {
	etcdtest.Skip(t)
	needs(t, "iperf3")
	const n = 2
	tp := up(t, topology.Options{Prefix: "cpjk", Lanes: n, Etcd: 1, Joined: 1, GeneveAuth: true, NodeKeys: true})
	for _, d := range tp.p.Demuxes() {
		if err := tp.p.WaitLanesUp(d, n, 15*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	joined := []string{topology.GatewayName(config.SideA, n), topology.GatewayName(config.SideB, n)}
	// Each read its slot's file (the topology writes one per slot, as
	// demux keys --join-slots does), not its side's roots.
	for i, g := range joined {
		log, _ := os.ReadFile(filepath.Join(tp.work, g+".log"))
		want := fmt.Sprintf(`msg="keys read" [^\n]*file=\S*join-%s-%d\.keys`, config.Sides[i], n)
		if !regexp.MustCompile(want).Match(log) {
			t.Errorf("%s did not log reading its slot's key file (%s)", g, want)
		}
	}
	cross := func(when string) {
		var before []uint64
		for _, g := range joined {
			var st gateway.Status
			tp.status(g, &st)
			before = append(before, st.GenevePackets)
		}
		tp.iperf3("ha", "hb", "10.2.0.10", "-t", "2", "-P", "8")
		for i, g := range joined {
			var st gateway.Status
			tp.status(g, &st)
			if st.GenevePackets == before[i] {
				t.Errorf("%s: joined gateway %s took no GENEVE from its demux", when, g)
			}
		}
		for i := 1; i <= n; i++ {
			for _, s := range config.Sides {
				var st gateway.Status
				tp.status(topology.GatewayName(s, i), &st)
				for _, r := range []string{"no_tag", "unknown_key", "bad_tag", "replayed"} {
					if st.Drops[r] != 0 {
						t.Errorf("%s: %s refused %d frames as %s", when, topology.GatewayName(s, i), st.Drops[r], r)
					}
				}
			}
		}
	}
	cross("joined")

	const switchIn, grace = 2 * time.Second, 1500 * time.Millisecond
	newID, _, switchAt := tp.rotateKeys(n, switchIn, grace)
	time.Sleep(time.Until(switchAt.Add(grace + 200*time.Millisecond)))
	want := fmt.Sprintf("%#02x", newID)
	for _, g := range joined {
		var st gateway.Status
		tp.status(g, &st)
		if st.Probes == nil || st.Probes.KeyID != want {
			t.Errorf("joined gateway %s signs with %v after the switch, want generation %s", g, st.Probes, want)
		}
	}
	for _, d := range tp.p.Demuxes() {
		if err := tp.p.WaitLanesUp(d, n, 5*time.Second); err != nil {
			t.Errorf("past the old key's grace: %v", err)
		}
	}
	cross("past the old key's grace")
}
