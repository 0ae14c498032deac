package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/clusterpeer/clusterpeer/admin"
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
	for _, p := range append([]string{"ip", "openssl"}, progs...) {
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

// topo is a peering built by scripts/topology.sh.
type topo struct {
	t      *testing.T
	prefix string
	work   string
	bin    string
}

func script() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "scripts", "topology.sh")
}

// up builds a peering with lanes lanes; it is removed when the test ends.
func up(t *testing.T, prefix string, lanes int, env ...string) *topo {
	t.Helper()
	tp := &topo{t: t, prefix: prefix, work: t.TempDir(), bin: binaries(t)}
	down := func() {
		out, err := exec.Command(script(), "down", prefix, tp.work).CombinedOutput()
		if err != nil {
			t.Logf("topology down: %v\n%s", err, out)
		}
	}
	down() // leftovers of an interrupted run
	t.Cleanup(func() {
		if t.Failed() {
			tp.dumpLogs()
		}
		down()
	})
	cmd := exec.Command(script(), "up", prefix, fmt.Sprint(lanes), tp.bin, tp.work)
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("topology up: %v\n%s", err, out)
	}
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
	cmd := exec.Command("ip", append([]string{"netns", "exec", tp.ns(node)}, args...)...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func (tp *topo) config() string { return filepath.Join(tp.work, "peering.yaml") }

func (tp *topo) socket(node string) string {
	return fmt.Sprintf("/run/clusterpeer/%s-%s.sock", tp.prefix, node)
}

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
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		h, err := netns.GetFromName(tp.ns(node))
		if err != nil {
			errc <- err
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			errc <- err
			return
		}
		fn()
		errc <- nil
	}()
	if err := <-errc; err != nil {
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

// iperf3 runs a client in from against a one-shot server in to and returns
// the parsed JSON result.
// waitListen waits until something in node listens on TCP port (an
// iperf3 daemon writes its pidfile before it listens, and on a busy
// host forks and binds hundreds of milliseconds late).
func (tp *topo) waitListen(node string, port int) {
	tp.t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if out, _ := tp.try(node, "ss", "-Hltn", fmt.Sprintf("sport = :%d", port)); strings.TrimSpace(out) != "" {
			return
		}
		if time.Now().After(deadline) {
			tp.t.Fatalf("nothing listens on tcp port %d in %s after 5 s", port, node)
		}
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

func (tp *topo) iperf3(from, to, dst string, args ...string) iperfResult {
	tp.t.Helper()
	pidfile := filepath.Join(tp.work, fmt.Sprintf("iperf3-%s-%d.pid", to, time.Now().UnixNano()))
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
