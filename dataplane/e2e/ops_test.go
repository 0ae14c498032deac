package e2e

import (
	"bytes"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

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
	tp := up(t, topology.Options{Prefix: "cpom", Lanes: 2, Etcd: 1, XDP: xdpMode, GeneveAuth: true, NodeKeys: true})
	tp.run("ha", "ping", "-c", "3", "-i", "0.2", "-W", "2", "10.2.0.10")
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
