package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/clusterpeer/clusterpeer/admin"
	"github.com/clusterpeer/clusterpeer/bench/lanewatch"
	"github.com/clusterpeer/clusterpeer/bench/topology"
	"github.com/clusterpeer/clusterpeer/bench/udpflows"
	"github.com/clusterpeer/clusterpeer/config"
)

// needs skips the test unless it runs as root with the given programs.
func needs(t *testing.T, progs ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces and TUN devices (CI runs it as root)")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("needs /dev/net/tun")
	}
	for _, p := range append([]string{"ip"}, progs...) {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("needs %s (make deps installs it)", p)
		}
	}
}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds cmd/... once per test binary run.
func binaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "clusterpeer-e2e-bin")
		if buildErr == nil { // TestNonRoot's user runs them too
			buildErr = os.Chmod(binDir, 0o755)
		}
		if buildErr != nil {
			return
		}
		goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
		cmd := exec.Command(goBin, "build", "-o", binDir+"/", "github.com/clusterpeer/clusterpeer/cmd/...")
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// topo is a peering built by bench/topology, with the test's helpers.
type topo struct {
	t      *testing.T
	p      *topology.Peering
	prefix string
	work   string
	bin    string
}

// up builds the peering o describes (Work and Bin are the test's); it is
// removed when the test ends.
func up(t *testing.T, o topology.Options) *topo {
	t.Helper()
	o.Work, o.Bin = t.TempDir(), binaries(t)
	if o.RunAs != nil { // its user must reach the peering's files
		if err := os.Chmod(filepath.Dir(o.Work), 0o711); err != nil {
			t.Fatal(err)
		}
	}
	// XDP=native|generic, RPS=1 and SEAL=1 in the environment run any
	// test's peering that way (docs/xdp.md: the failover scenarios with XDP).
	if x := os.Getenv("XDP"); x != "" && o.XDP == "" {
		o.XDP = x
	}
	o.RPS = o.RPS || os.Getenv("RPS") == "1"
	// SEAL=1 seals every frame (security.geneve_auth): ICMP errors about
	// data frames are then checked by their tag (docs/health.md).
	o.GeneveAuth = o.GeneveAuth || os.Getenv("SEAL") == "1"
	tp := &topo{t: t, prefix: o.Prefix, work: o.Work, bin: o.Bin}
	down := func() {
		if err := topology.Down(o.Prefix, o.Work); err != nil {
			t.Logf("topology down: %v", err)
		}
	}
	down() // leftovers of an interrupted run
	t.Cleanup(func() {
		if t.Failed() {
			tp.dumpLogs()
		}
		if tp.p != nil {
			tp.p.Close()
		}
		down()
	})
	p, err := topology.Up(o)
	if err != nil {
		t.Fatalf("topology up: %v", err)
	}
	tp.p = p
	return tp
}

func (tp *topo) dumpLogs() {
	logs, _ := filepath.Glob(filepath.Join(tp.work, "*.log"))
	for _, l := range logs {
		b, _ := os.ReadFile(l)
		if len(b) > 4000 {
			b = b[len(b)-4000:]
		}
		tp.t.Logf("--- %s\n%s", filepath.Base(l), b)
	}
}

func (tp *topo) ns(node string) string { return tp.prefix + "-" + node }

// run runs a command in a node's namespace and returns its output; it
// fails the test on error.
func (tp *topo) run(node string, args ...string) string {
	tp.t.Helper()
	out, err := tp.try(node, args...)
	if err != nil {
		tp.t.Fatalf("%s: %s: %v\n%s", node, strings.Join(args, " "), err, out)
	}
	return out
}

func (tp *topo) try(node string, args ...string) (string, error) {
	var out bytes.Buffer
	cmd := tp.p.Command(node, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// tunDrops is what the demux in namespace ns dropped at its TUN (the
// kernel's queue to it was full: the demux fell behind).
func (tp *topo) tunDrops(ns string) uint64 {
	out, _ := tp.try(ns, "cat", "/sys/class/net/cpdemux/statistics/tx_dropped")
	n, _ := strconv.ParseUint(strings.TrimSpace(out), 10, 64)
	return n
}

func (tp *topo) config() string { return filepath.Join(tp.work, "peering.yaml") }

func (tp *topo) socket(node string) string { return tp.p.Socket(node) }

// status reads a node's status document.
func (tp *topo) status(node string, v any) {
	tp.t.Helper()
	if err := admin.Fetch(tp.socket(node), v); err != nil {
		tp.t.Fatal(err)
	}
}

// inNS runs fn on a thread switched into a node's namespace; sockets fn
// opens stay in that namespace.
func (tp *topo) inNS(node string, fn func()) {
	tp.t.Helper()
	if err := tp.p.InNS(node, func() error { fn(); return nil }); err != nil {
		tp.t.Fatalf("enter %s: %v", node, err)
	}
}

// sendUDP sends one datagram from a node's namespace.
func (tp *topo) sendUDP(node, to string, b []byte) {
	tp.t.Helper()
	tp.inNS(node, func() {
		c, err := net.Dial("udp", to)
		if err != nil {
			tp.t.Error(err)
			return
		}
		c.Write(b)
		c.Close()
	})
}

func (tp *topo) waitListen(node string, port int) {
	tp.t.Helper()
	if err := tp.p.WaitListen(context.Background(), node, port, 5*time.Second); err != nil {
		tp.t.Fatal(err)
	}
}

// counter reads one of a node's kernel SNMP counters (nstat, absolute).
func (tp *topo) counter(node, name string) float64 {
	f := strings.Fields(tp.run(node, "nstat", "-az", name))
	for i := 0; i+1 < len(f); i++ {
		if f[i] == name {
			v, _ := strconv.ParseFloat(f[i+1], 64)
			return v
		}
	}
	return 0
}

// udpLoss runs a UDP iperf3 test and splits its loss: what the receiving
// host's own socket buffer dropped (the busy machine stalled iperf3; not
// the path's doing) and the rest, lost on the path.
func (tp *topo) udpLoss(from, to, dst string, args ...string) (r iperfResult, atHost, onPath float64) {
	tp.t.Helper()
	before := tp.counter(to, "UdpRcvbufErrors")
	r = tp.iperf3(from, to, dst, append([]string{"-u"}, args...)...)
	atHost = tp.counter(to, "UdpRcvbufErrors") - before
	return r, atHost, max(r.End.Sum.LostPackets-atHost, 0)
}

// waitPortFree waits until nothing listens on tcp port in node: the last
// one-off iperf3 server there may still hold it while it exits, and a
// server started then cannot bind, so nothing would listen (a clean-clone
// CI run: "nothing listens on tcp port 5201 ... after 5s").
func (tp *topo) waitPortFree(node string, port int) {
	tp.t.Helper()
	for t0 := time.Now(); ; time.Sleep(20 * time.Millisecond) {
		out, err := tp.try(node, "ss", "-Hltn", fmt.Sprintf("sport = :%d", port))
		if err != nil {
			tp.t.Fatalf("ss in %s: %v: %s", node, err, out)
		}
		if strings.TrimSpace(out) == "" {
			return
		}
		if time.Since(t0) > 5*time.Second {
			tp.t.Fatalf("tcp port %d in %s still taken after 5s", port, node)
		}
	}
}

// iperf3 runs a client in from against a one-shot server in to and returns
// the parsed JSON result.
func (tp *topo) iperf3(from, to, dst string, args ...string) iperfResult {
	tp.t.Helper()
	pidfile := filepath.Join(tp.work, fmt.Sprintf("iperf3-%s-%d.pid", to, time.Now().UnixNano()))
	tp.waitPortFree(to, 5201)
	tp.run(to, "iperf3", "-s", "-1", "-D", "--pidfile", pidfile)
	t0 := time.Now()
	for time.Since(t0) < 3*time.Second {
		if _, err := os.Stat(pidfile); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	tp.waitListen(to, 5201)
	tp.t.Cleanup(func() {
		if b, err := os.ReadFile(pidfile); err == nil {
			exec.Command("kill", strings.TrimSpace(string(b))).Run()
		}
	})
	var r iperfResult
	for attempt := 0; ; attempt++ {
		out, _ := tp.try(from, append([]string{"iperf3", "-J", "-c", dst}, args...)...)
		r = iperfResult{}
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			tp.t.Fatalf("iperf3 JSON: %v\n%s", err, out)
		}
		// The daemon may still be opening its socket: retry a refused connect.
		if r.Error != "" && strings.Contains(r.Error, "connect") && attempt < 3 {
			time.Sleep(300 * time.Millisecond)
			continue
		}
		break
	}
	if r.Error != "" {
		tp.t.Fatalf("iperf3: %s", r.Error)
	}
	return r
}

type iperfResult struct {
	Error string `json:"error"`
	End   struct {
		SumReceived struct {
			Bytes         float64 `json:"bytes"`
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
		Sum struct { // UDP
			Bytes         float64 `json:"bytes"`
			BitsPerSecond float64 `json:"bits_per_second"`
			LostPercent   float64 `json:"lost_percent"`
			LostPackets   float64 `json:"lost_packets"`
			Packets       float64 `json:"packets"`
		} `json:"sum"`
	} `json:"end"`
}

// flowWatch is sequence-numbered UDP flows host-a -> host-b and, at
// host-b, the lane (gateway MAC) each arrives by.
type flowWatch struct {
	w    *lanewatch.Watcher
	recv *udpflows.Receiver
	send *udpflows.Sender
}

// openFlows prepares flows to dst over a peering of lanes lanes (send
// with send.Run; Close when done).
func (tp *topo) openFlows(lanes int, dst netip.AddrPort, cfg udpflows.SendConfig) flowWatch {
	tp.t.Helper()
	macs := map[string]int{}
	for i := 1; i <= lanes; i++ {
		if mac, err := tp.try(fmt.Sprintf("gb%d", i), "cat", "/sys/class/net/lan0/address"); err == nil {
			macs[strings.TrimSpace(mac)] = i
		}
	}
	var fw flowWatch
	var err error
	tp.inNS("hb", func() {
		if fw.w, err = lanewatch.Open("lan0", macs); err == nil {
			fw.recv, err = udpflows.Listen(dst)
		}
	})
	if err != nil {
		tp.t.Fatal(err)
	}
	fw.recv.Interval = cfg.Interval // outages leave out the sender's own stalls
	cfg.Dst = dst
	tp.inNS("ha", func() { fw.send, err = udpflows.NewSender(cfg) })
	if err != nil {
		tp.t.Fatal(err)
	}
	return fw
}

// laneDowns returns each demux's log lines so far of a lane found dead
// by its probes or a signal ("lane down", or "lane draining" for a
// draining lane: those lines say how it was detected), from the message
// on, by log file.
func (tp *topo) laneDowns() map[string][]string {
	downs := map[string][]string{}
	logs, _ := filepath.Glob(filepath.Join(tp.work, "demux-*.log"))
	for _, f := range logs {
		b, _ := os.ReadFile(f)
		for _, l := range strings.Split(string(b), "\n") {
			if i := strings.Index(l, "msg="); i >= 0 && strings.Contains(l, " detected=") {
				downs[f] = append(downs[f], l[i:])
			}
		}
	}
	return downs
}

// kill ends a node's process with SIGKILL (only the PID the topology or
// this test started). For a gateway it logs when its GENEVE socket
// closed: until then the socket takes what is sent to it and nothing
// answers, so that part of a kill's blackout no detector can shorten.
func (tp *topo) kill(node string) {
	b, err := os.ReadFile(filepath.Join(tp.work, node+".pid"))
	if err != nil {
		tp.t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	var closed <-chan time.Duration
	var side config.Side
	var lane int
	if _, err := fmt.Sscanf(node, "gw-%1s%d", &side, &lane); err == nil {
		closed = tp.socketCloses(topology.GatewayNS(side, lane), 6081)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		tp.t.Fatalf("kill %s (%d): %v", node, pid, err)
	}
	if closed != nil {
		tp.t.Logf("%s's GENEVE socket closed %.1f ms after SIGKILL", node, float64((<-closed).Microseconds())/1000)
	}
	for range 100 { // reaped by whoever started it; wait until it is gone
		if syscall.Kill(pid, 0) != nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// socketCloses watches namespace ns for the UDP socket on port to go
// (polling the namespace's /proc/net/udp every 200 µs, at most 1 s) and
// sends how long after its first look that was (-1 if it cannot look).
func (tp *topo) socketCloses(ns string, port int) <-chan time.Duration {
	out, ready := make(chan time.Duration, 1), make(chan struct{})
	local := fmt.Sprintf(":%04X ", port)
	go func() {
		if err := tp.p.InNS(ns, func() error { return watch(ready, out, local) }); err != nil {
			tp.t.Logf("watching %s's sockets: %v", ns, err)
			select {
			case <-ready:
			default:
				close(ready)
				out <- -1
			}
		}
	}()
	<-ready
	return out
}

// watch is socketCloses' loop, on a thread in the namespace: it closes
// ready after its first look and sends when local (":PORT ") was gone.
func watch(ready chan struct{}, out chan time.Duration, local string) error {
	start, first := time.Now(), true
	for time.Since(start) < time.Second {
		b, _ := os.ReadFile("/proc/thread-self/net/udp")
		b6, _ := os.ReadFile("/proc/thread-self/net/udp6")
		b = append(b, b6...)
		if first {
			start, first = time.Now(), false
			close(ready)
		}
		if !bytes.Contains(b, []byte(local)) {
			break
		}
		time.Sleep(200 * time.Microsecond)
	}
	out <- time.Since(start)
	return nil
}

// iperfServer starts a one-shot iperf3 server in node on port, waits
// until it listens, and returns what stops it (by its own pid).
func (tp *topo) iperfServer(node string, port int) (stop func()) {
	tp.t.Helper()
	pidfile := filepath.Join(tp.work, fmt.Sprintf("iperf3-%s-%d.pid", node, port))
	stop = func() {
		if b, err := os.ReadFile(pidfile); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				syscall.Kill(pid, syscall.SIGTERM)
			}
		}
	}
	listening := false
	defer func() {
		if !listening {
			stop() // the test fails here: nothing is left running
		}
	}()
	tp.waitPortFree(node, port)
	tp.run(node, "iperf3", "-s", "-1", "-D", "-p", strconv.Itoa(port), "--pidfile", pidfile)
	tp.waitListen(node, port)
	listening = true
	return stop
}

// rotateKeys rotates the peering secret (topology RotateKeys: the new
// one signs switchIn from now, the old one is accepted grace after that)
// and reloads every node as an operator would: the demuxes by command,
// the gateways of lanes 1..lanes by SIGHUP. It returns both key IDs and
// the switch time.
func (tp *topo) rotateKeys(lanes int, switchIn, grace time.Duration) (newID, oldID uint8, switchAt time.Time) {
	tp.t.Helper()
	newID, oldID, err := tp.p.RotateKeys(switchIn, grace)
	if err != nil {
		tp.t.Fatal(err)
	}
	switchAt = time.Now().Add(switchIn)
	for _, d := range tp.p.Demuxes() {
		if _, err := admin.Do(tp.socket(d), "reload", nil); err != nil {
			tp.t.Errorf("rotate keys: %s reload: %v", d, err)
		}
	}
	for i := 1; i <= lanes; i++ {
		for _, s := range config.Sides {
			pid, err := tp.p.PID(topology.GatewayName(s, i))
			if err == nil {
				err = syscall.Kill(pid, syscall.SIGHUP)
			}
			if err != nil {
				tp.t.Errorf("rotate keys: SIGHUP %s: %v", topology.GatewayName(s, i), err)
			}
		}
	}
	return newID, oldID, switchAt
}

// scrape returns the body of /metrics of the node in namespace ns.
func (tp *topo) scrape(ns string) string {
	tp.t.Helper()
	body, err := tp.p.Metrics(ns)
	if err != nil {
		tp.t.Error(err)
	}
	return body
}

// sendFlows starts cfg's sequence-numbered UDP flows from host-a to
// cfg.Dst at host-b; they stop when sent or when the test ends. wait
// returns, once the receiver has heard nothing for a second, what each
// flow delivered.
func (tp *topo) sendFlows(cfg udpflows.SendConfig) (wait func() []udpflows.FlowResult) {
	tp.t.Helper()
	var recv *udpflows.Receiver
	var send *udpflows.Sender
	var err error
	tp.inNS("hb", func() { recv, err = udpflows.Listen(cfg.Dst) })
	if err == nil {
		tp.inNS("ha", func() { send, err = udpflows.NewSender(cfg) })
	}
	if err != nil {
		if recv != nil {
			recv.Results() // closes its socket
		}
		tp.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	received := make(chan struct{})
	tp.t.Cleanup(func() {
		cancel()
		<-received
		send.Close()
	})
	go func() { recv.Run(ctx, time.Second); close(received) }()
	go send.Run(ctx)
	return func() []udpflows.FlowResult {
		<-received
		return recv.Results()
	}
}
