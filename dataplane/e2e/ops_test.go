package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/clusterpeer/clusterpeer/bench/topology"
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
