package deploy

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestMetricsOfAnExpression(t *testing.T) {
	names, patterns, err := Metrics(`sum by (instance) (rate({__name__=~"clusterpeer_(demux|lane)_drops_total"}[5m])) > 1 and clusterpeer_lane_up{job=~"$job"} == 0 or clusterpeer_lane_up`)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(names, " ") != "clusterpeer_lane_up" {
		t.Errorf("names %v", names)
	}
	if len(patterns) != 1 || !patterns[0].MatchString("clusterpeer_lane_drops_total") || patterns[0].MatchString("clusterpeer_gateway_drops_total") {
		t.Errorf("patterns %v", patterns)
	}
}

// TestDashboard checks the dashboard's structure; dataplane/e2e's
// TestOperationsMetrics checks its metric names against live scrapes.
func TestDashboard(t *testing.T) {
	q, err := DashboardQueries(Dashboard)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID    string `json:"uid"`
		Panels []struct {
			ID     int                      `json:"id"`
			Type   string                   `json:"type"`
			Title  string                   `json:"title"`
			Grid   struct{ X, Y, W, H int } `json:"gridPos"`
			Source map[string]string        `json:"datasource"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(Dashboard, &d); err != nil {
		t.Fatal(err)
	}
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d twice", p.ID)
		}
		ids[p.ID] = true
		if p.Grid.W <= 0 || p.Grid.X+p.Grid.W > 24 {
			t.Errorf("panel %q: grid %+v outside the 24 columns", p.Title, p.Grid)
		}
		if p.Type != "row" && p.Source["uid"] != "${datasource}" {
			t.Errorf("panel %q: datasource %v, want the dashboard's variable", p.Title, p.Source)
		}
	}
	// What issue 20 asks the dashboard to show, each by a metric.
	want := map[string]string{
		"lanes up": "clusterpeer_lane_healthy", "throughput per lane": "clusterpeer_lane_bytes_total",
		"failovers": "clusterpeer_lane_failovers_total", "probe RTT": "clusterpeer_lane_probe_rtt_seconds",
		"probe loss": "clusterpeer_lane_probe_loss_ratio", "drops by reason": "clusterpeer_demux_drops_total",
		"pins": "clusterpeer_demux_pinned_flows", "store state": "clusterpeer_store_up",
	}
	all := ""
	for _, exprs := range q {
		all += strings.Join(exprs, "\n") + "\n"
	}
	for what, metric := range want {
		if !strings.Contains(all, metric) {
			t.Errorf("the dashboard shows no %s (%s)", what, metric)
		}
	}
}

func TestAlertRules(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("needs promtool (Debian's prometheus package; make deps installs it)")
	}
	for _, args := range [][]string{{"check", "rules", "clusterpeer-alerts.yaml"}, {"test", "rules", "clusterpeer-alerts_test.yaml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = "prometheus"
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	rules, err := RuleQueries(AlertRules)
	if err != nil {
		t.Fatal(err)
	}
	for _, alert := range []string{"ClusterpeerLaneDown", "ClusterpeerLaneFlapping", "ClusterpeerAllLanesDown", "ClusterpeerDropsRising", "ClusterpeerStoreUnreachable", "ClusterpeerKeysExpiring"} {
		if rules[alert] == "" {
			t.Errorf("no alert %s", alert)
		}
	}
	// Every alert has a unit test that makes it fire.
	tests, _ := os.ReadFile("prometheus/clusterpeer-alerts_test.yaml")
	for alert := range rules {
		if !bytes.Contains(tests, []byte("alertname: "+alert+"\n")) && !bytes.Contains(tests, []byte("alertname: "+alert+" ")) {
			t.Errorf("alert %s has no test in clusterpeer-alerts_test.yaml", alert)
		}
	}
}

// TestUnits runs systemd-analyze verify on each unit, with the binaries
// it starts built from this tree at the paths the package installs them
// (rewritten to a temporary directory: the test installs nothing).
func TestUnits(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("needs systemd-analyze (systemd)")
	}
	bin := t.TempDir()
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if out, err := exec.Command(goBin, "build", "-o", bin+"/", "github.com/clusterpeer/clusterpeer/cmd/demux", "github.com/clusterpeer/clusterpeer/cmd/tunnel").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	keepalived, err := exec.LookPath("keepalived")
	if err != nil {
		keepalived = "/bin/true" // only the path is checked
	}
	units, _ := filepath.Glob("systemd/*.service")
	if len(units) != 3 {
		t.Fatalf("units %v, want the demux's, the gateway's and keepalived's", units)
	}
	dir := t.TempDir()
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		s := strings.NewReplacer("/usr/bin/demux", bin+"/demux", "/usr/bin/tunnel", bin+"/tunnel", "/usr/sbin/keepalived", keepalived).Replace(string(b))
		for _, want := range []string{"NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "Restart=on-failure", "ExecReload="} {
			if !strings.Contains(s, want) {
				t.Errorf("%s: no %s", u, want)
			}
		}
		if !strings.Contains(u, "keepalived") {
			for _, want := range []string{"Type=notify", "User=clusterpeer", "RuntimeDirectory=clusterpeer", "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW"} {
				if !strings.Contains(s, want) {
					t.Errorf("%s: no %s", u, want)
				}
			}
		}
		// An instance of the template, as systemctl start NAME@NODE makes.
		inst := filepath.Join(dir, strings.Replace(filepath.Base(u), "@.", "@node-a.", 1))
		if err := os.WriteFile(inst, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(analyze, "verify", "--man=no", inst).CombinedOutput()
		// verify also judges units the instance pulls in (their absence on
		// a minimal machine is not ours to fix); our unit's lines name it.
		var ours []string
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, filepath.Base(inst)) || strings.Contains(l, "clusterpeer") {
				ours = append(ours, l)
			}
		}
		if len(ours) > 0 || (err != nil && len(out) == 0) {
			t.Errorf("systemd-analyze verify %s: %v\n%s", filepath.Base(u), err, out)
		}
	}
}
