package e2e

import (
	"bytes"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/clusterpeer/clusterpeer/bench/topology"
	"github.com/clusterpeer/clusterpeer/bench/udpflows"
	"github.com/clusterpeer/clusterpeer/deploy"
)

// TestOperationsMetrics scrapes a live demux and gateway (XDP, sealing,
// the membership store: every family of metrics there is) and checks
// what operators point at them: promtool finds nothing to say about the
// scrapes, and every metric the Grafana dashboard and the alerting rules
// of deploy/ query is one the nodes export.
func TestOperationsMetrics(t *testing.T) {
	needs(t, "promtool", "ping")
	xdpMode := os.Getenv("XDP")
	if xdpMode == "" {
		xdpMode = "native"
	}
	manager := listenNotify(t)
	tp := up(t, topology.Options{Prefix: "cpom", Lanes: 2, Etcd: 1, XDP: xdpMode, GeneveAuth: true, NodeKeys: true,
		Env: []string{"NOTIFY_SOCKET=" + manager.path}})
	tp.run("ha", "ping", "-c", "3", "-i", "0.2", "-W", "2", "10.2.0.10")
	testNotify(t, tp, manager)
	testWhichAndFlows(t, tp, xdpMode != "off")

	exported := map[string]bool{}
	problems := 0
	for ns, node := range map[string]string{"da": "demux-a", "ga1": "gw-a1", "gb2": "gw-b2"} {
		body := tp.scrape(ns)
		cmd := exec.Command("promtool", "check", "metrics")
		cmd.Stdin = strings.NewReader(body)
		out, err := cmd.CombinedOutput()
		if n := len(bytes.Fields(bytes.TrimSpace(out))); err != nil || n > 0 {
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			problems += len(lines)
			t.Errorf("promtool check metrics on %s's scrape: %v\n%s", node, err, out)
		}
		for _, name := range scrapedNames(body) {
			exported[name] = true
		}
		if !exported["clusterpeer_build_info"] || !exported["clusterpeer_keys_expiry_timestamp_seconds"] {
			t.Errorf("%s exports no build info or key expiry", node)
		}
	}
	t.Logf("promtool_problems=%d over 3 live scrapes, %d metric names", problems, len(exported))

	check := func(where, expr string) {
		names, patterns, err := deploy.Metrics(expr)
		if err != nil {
			t.Errorf("%s: %v", where, err)
		}
		for _, n := range names {
			if xdpMode == "off" && strings.HasPrefix(n, "clusterpeer_xdp_") {
				continue // a demux without the program exports none (XDP=off runs)
			}
			if !exported[n] {
				t.Errorf("%s queries %s, which no node exports", where, n)
			}
		}
		for _, re := range patterns {
			if !anyMatch(re, exported) {
				t.Errorf("%s matches %s, which no exported metric does", where, re)
			}
		}
	}
	panels, err := deploy.DashboardQueries(deploy.Dashboard)
	if err != nil {
		t.Fatal(err)
	}
	for title, exprs := range panels {
		for _, e := range exprs {
			check("dashboard panel "+title, e)
		}
	}
	rules, err := deploy.RuleQueries(deploy.AlertRules)
	if err != nil {
		t.Fatal(err)
	}
	for alert, e := range rules {
		check("alert "+alert, e)
	}
}

var sampleName = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)`)

// scrapedNames are the metric names of a scrape's samples, sorted.
func scrapedNames(body string) []string {
	seen := map[string]bool{}
	for _, l := range strings.Split(body, "\n") {
		if m := sampleName.FindString(l); m != "" && !strings.HasPrefix(l, "#") {
			seen[m] = true
		}
	}
	var out []string
	for n := range seen {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func anyMatch(re *regexp.Regexp, names map[string]bool) bool {
	for n := range names {
		if re.MatchString(n) {
			return true
		}
	}
	return false
}

// testWhichAndFlows sends 8 UDP flows of 1,000 packets/s each, asks
// `demux flows --top` for each lane's busiest flows, and `demux which`
// for each flow it lists: the same lane, pinned by the path that carries
// it (the XDP program, or the userspace demux).
func testWhichAndFlows(t *testing.T, tp *topo, xdpOn bool) {
	tp.sendFlows(udpflows.SendConfig{Dst: netip.MustParseAddrPort("10.2.0.10:7000"), Flows: 8, Packets: 4000, Size: 64, Interval: time.Millisecond})
	time.Sleep(time.Second)

	demuxCmd := func(args ...string) string {
		return tp.run("ha", append([]string{tp.bin + "/demux"}, append(args, "--config", tp.config(), "--node", "demux-a")...)...)
	}
	out := demuxCmd("flows", "--top", "20", "--interval", "1s")
	t.Logf("demux flows:\n%s", out)
	header := regexp.MustCompile(`^lane (\d+) \(gw-a\d+, up\): \d+ active flows$`)
	row := regexp.MustCompile(`^\s+(\d+)\s+(XDP|userspace|both)\s+udp (\S+):(\d+) -> 10\.2\.0\.10:7000$`)
	wantPath, pinnedBy := "userspace", "pinned by the userspace demux"
	if xdpOn {
		wantPath, pinnedBy = "XDP", "pinned by the XDP fast path"
	}
	lane, listed := "", 0
	for _, l := range strings.Split(out, "\n") {
		if m := header.FindStringSubmatch(l); m != nil {
			lane = m[1]
			continue
		}
		m := row.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		listed++
		if rate, _ := strconv.Atoi(m[1]); rate < 200 || rate > 3000 || m[2] != wantPath {
			t.Errorf("flow %s:%s: %s packets/s by %s; want about 1000, by %s", m[3], m[4], m[1], m[2], wantPath)
		}
		which := demuxCmd("which", m[3], "10.2.0.10", "udp", m[4], "7000")
		if want := "\n  lane " + lane + " (gw-a" + lane + ", up): " + pinnedBy; !strings.Contains(which, want) {
			t.Errorf("flows lists %s:%s on lane %s; which says:\n%s", m[3], m[4], lane, which)
		}
	}
	if listed != 8 {
		t.Errorf("demux flows listed %d of the 8 flows", listed)
	}
	if out, err := tp.try("ha", tp.bin+"/demux", "which", "--config", tp.config(), "--node", "demux-a", "10.1.0.10", "fd00:b::10", "tcp", "1", "2"); err == nil || !strings.Contains(out, "one is IPv4, the other IPv6") {
		t.Errorf("which with mixed families: %v %s", err, out)
	}
}

// notifyManager listens as systemd does for the nodes' sd_notify
// datagrams, each with its sender's pid (SO_PASSCRED).
type notifyManager struct {
	path string
	got  chan notice
}

type notice struct {
	pid   int
	state string
}

func listenNotify(t *testing.T) notifyManager {
	m := notifyManager{path: filepath.Join(t.TempDir(), "notify"), got: make(chan notice, 64)}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: m.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	raw, _ := c.SyscallConn()
	raw.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1) })
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		b, oob := make([]byte, 4096), make([]byte, 256)
		for {
			n, oobn, _, _, err := c.ReadMsgUnix(b, oob)
			if err != nil {
				return
			}
			pid := 0
			if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil && len(msgs) > 0 {
				if cred, err := unix.ParseUnixCredentials(&msgs[0]); err == nil {
					pid = int(cred.Pid)
				}
			}
			select {
			case m.got <- notice{pid, string(b[:n])}:
			default:
			}
		}
	}()
	return m
}

// testNotify: every node told the manager it was ready (a demux once a
// lane was up: the topology waited for all of them), and a SIGHUP'd
// demux says it reloads, then that it is ready again.
func testNotify(t *testing.T, tp *topo, m notifyManager) {
	nodes := map[int]string{}
	for _, n := range []string{"demux-a", "demux-b", "gw-a1", "gw-b1", "gw-a2", "gw-b2"} {
		pid, err := tp.p.PID(n)
		if err != nil {
			t.Fatal(err)
		}
		nodes[pid] = n
	}
	ready := map[string]string{}
	next := func(within time.Duration) (notice, bool) {
		select {
		case n := <-m.got:
			return n, true
		case <-time.After(within):
			return notice{}, false
		}
	}
	for len(ready) < len(nodes) {
		n, ok := next(15 * time.Second)
		if !ok {
			t.Fatalf("READY=1 from %d of %d nodes in 15 s: %v", len(ready), len(nodes), ready)
		}
		if node := nodes[n.pid]; node != "" && strings.HasPrefix(n.state, "READY=1\n") {
			ready[node] = n.state
		}
	}
	for node, state := range ready {
		// A demux is ready at its first lane up (the second may follow).
		want := regexp.MustCompile(`^READY=1\nSTATUS=lane \d to gw-[ab]\d$`)
		if strings.HasPrefix(node, "demux-") {
			want = regexp.MustCompile(`^READY=1\nSTATUS=[12] of 2 lanes up$`)
		}
		if !want.MatchString(state) {
			t.Errorf("%s: %q, want %s", node, state, want)
		}
	}
	pid, _ := tp.p.PID("demux-a")
	syscall.Kill(pid, syscall.SIGHUP)
	var seq []string
	for len(seq) < 2 {
		n, ok := next(5 * time.Second)
		if !ok {
			break
		}
		if n.pid == pid {
			seq = append(seq, strings.SplitN(n.state, "\n", 2)[0])
		}
	}
	if strings.Join(seq, " ") != "RELOADING=1 READY=1" {
		t.Errorf("demux-a on SIGHUP told the manager %q, want RELOADING=1 then READY=1", seq)
	}
	t.Logf("sd_notify: %d nodes ready (%s: %q), demux-a's reload: %v", len(ready), "demux-a", ready["demux-a"], seq)
}
