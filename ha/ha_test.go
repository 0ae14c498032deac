package ha

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/clusterpeer/clusterpeer/config"
	"github.com/clusterpeer/clusterpeer/config/configtest"
	"github.com/clusterpeer/clusterpeer/dataplane/demux"
)

// peering loads config/testdata/peering.yaml (an HA pair on side a),
// edited by the old/new pairs.
func peering(t *testing.T, edits ...string) *config.Peering {
	t.Helper()
	dir := t.TempDir()
	p, err := config.Parse([]byte(configtest.Example(t, dir, edits...)), dir+"/")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

var paths = Paths{Demux: "/usr/local/bin/demux", Config: "/etc/clusterpeer/peering.yaml"}

func TestKeepalivedConfig(t *testing.T) {
	p := peering(t)
	active, err := Keepalived(p, "demux-a", paths)
	if err != nil {
		t.Fatal(err)
	}
	standby, err := Keepalived(p, "demux-a2", paths)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"interface eth0\n", "virtual_router_id 51\n", "priority 150\n", "advert_int 0.05\n",
		"state BACKUP\n", "nopreempt\n", "vrrp_version 3\n", "dynamic_interfaces\n",
		"track_interface {\n", "        cp-demux-a\n",
		"virtual_ipaddress {\n        10.1.0.1\n    }", "virtual_ipaddress_excluded {\n        fd00:a::1\n    }",
		`script "/usr/local/bin/demux health --config /etc/clusterpeer/peering.yaml --node demux-a"`,
		"interval 1\n",
		`notify "/usr/local/bin/demux notify --config /etc/clusterpeer/peering.yaml --node demux-a"`,
	} {
		if !strings.Contains(string(active), want) {
			t.Errorf("demux-a's config lacks %q:\n%s", want, active)
		}
	}
	if strings.Contains(string(active), "unicast") {
		t.Error("unicast adverts without ha.unicast")
	}
	// The pair differ only in what is their own.
	diff := map[string]bool{}
	al, sl := strings.Split(string(active), "\n"), strings.Split(string(standby), "\n")
	if len(al) != len(sl) {
		t.Fatalf("%d lines against %d", len(al), len(sl))
	}
	for i := range al {
		if al[i] != sl[i] {
			diff[strings.Fields(al[i])[0]] = true
		}
	}
	for k := range diff {
		switch k {
		case "#", "router_id", "script", "priority", "cp-demux-a", "notify":
		default:
			t.Errorf("the pair's configs differ in %q", k)
		}
	}
	if !strings.Contains(string(standby), "priority 100\n") {
		t.Errorf("standby priority:\n%s", standby)
	}
}

func TestKeepalivedUnicastPreempt(t *testing.T) {
	p := peering(t, "# unicast: true ", "unicast: true ", "# preempt: true ", "preempt: true ", "advert_interval: 50ms", "advert_interval: 1s\n      check_interval: 3s")
	b, err := Keepalived(p, "demux-a2", paths)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, want := range []string{"unicast_src_ip 10.1.0.3\n", "unicast_peer {\n        10.1.0.2\n    }", "advert_int 1\n", "interval 3\n"} {
		if !strings.Contains(s, want) {
			t.Errorf("lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "nopreempt") {
		t.Error("nopreempt with ha.preempt")
	}
}

func TestKeepalivedRefuses(t *testing.T) {
	p := peering(t)
	for _, c := range []struct {
		node  string
		paths Paths
		want  string
	}{
		{"gw-a1", paths, "gw-a1 is a gateway"},
		{"demux-b", paths, "networks.b has no ha section"},
		{"demux-z", paths, "no node of that name"},
		{"demux-a", Paths{Demux: "demux", Config: paths.Config}, "want an absolute path"},
		{"demux-a", Paths{Demux: paths.Demux, Config: `/etc/a "b".yaml`}, "without spaces, quotes"},
	} {
		if _, err := Keepalived(p, c.node, c.paths); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s %+v: %v, want %q", c.node, c.paths, err, c.want)
		}
	}
}

// TestKeepalivedAccepts: keepalived itself checks what we write (CI
// installs it; without it the test says so and skips).
func TestKeepalivedAccepts(t *testing.T) {
	bin, err := exec.LookPath("keepalived")
	if err != nil {
		t.Skip("keepalived is not installed (apt-get install keepalived; make deps does)")
	}
	dir := t.TempDir()
	p := peering(t, "# unicast: true ", "unicast: true ")
	// keepalived checks that the script it will run exists.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, node := range []string{"demux-a", "demux-a2"} {
		b, err := Keepalived(p, node, Paths{Demux: self, Config: paths.Config})
		if err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(dir, node+".conf")
		os.WriteFile(f, b, 0o600)
		if out, err := exec.Command(bin, "-t", "-f", f).CombinedOutput(); err != nil {
			t.Errorf("keepalived -t refuses %s's config: %v\n%s\n%s", node, err, out, b)
		}
		// And it would say so of a broken one: the check is not a no-op.
		broken := strings.Replace(string(b), "advert_int 0.05", "advert_int soon", 1)
		if broken == string(b) {
			t.Fatal("nothing to break")
		}
		os.WriteFile(f, []byte(broken), 0o600)
		if err := exec.Command(bin, "-t", "-f", f).Run(); err == nil {
			t.Errorf("keepalived -t accepts a broken config")
		}
	}
}

func TestHealthy(t *testing.T) {
	st := demux.Status{Node: "demux-a", Tun: "cpdemux", Lanes: []demux.LaneStatus{{ID: 1, State: "down"}, {ID: 2, State: "draining"}, {ID: 3, State: "up"}}}
	if msg, err := Healthy(st, true); err != nil || msg != "demux-a: healthy, 1 of 3 lanes up" {
		t.Errorf("one lane up: %q, %v", msg, err)
	}
	if _, err := Healthy(st, false); err == nil || !strings.Contains(err.Error(), "tun cpdemux is not up") {
		t.Errorf("tun down: %v", err)
	}
	st.Lanes[2].State = "down"
	if _, err := Healthy(st, true); err == nil || !strings.Contains(err.Error(), "no lane up (3 configured)") {
		t.Errorf("no lane up: %v", err)
	}
	st.Lanes = nil
	if _, err := Healthy(st, true); err == nil {
		t.Error("no lanes at all counted healthy")
	}
}

func TestState(t *testing.T) {
	if s, err := State([]string{"INSTANCE", "clusterpeer_example_a", "MASTER", "150"}); err != nil || s != "MASTER" {
		t.Errorf("%q %v", s, err)
	}
	for _, bad := range [][]string{nil, {"INSTANCE", "x"}, {"INSTANCE", "x", "master"}, {"INSTANCE", "x", "MASTER; rm -rf /"}} {
		if _, err := State(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestHook: the operator's command gets the new state and the node as
// arguments and the rest in its environment; a failing command is an
// error that names the field.
func TestHook(t *testing.T) {
	dir := t.TempDir()
	rec := filepath.Join(dir, "calls")
	script := filepath.Join(dir, "hook.sh")
	os.WriteFile(script, []byte(`#!/bin/sh
echo "$# $1 $2 $CLUSTERPEER_PEERING $CLUSTERPEER_SIDE $CLUSTERPEER_NODE $CLUSTERPEER_STATE $CLUSTERPEER_ADDRESSES $CLUSTERPEER_VIPS $CLUSTERPEER_REMOTE_PREFIXES" >>`+rec+`
echo repointed
[ "$CLUSTERPEER_STATE" != FAULT ]
`), 0o700)
	p := peering(t, "# notify: /usr/local/sbin/repoint-routes", "notify: "+script+" --table rtb-1")
	out, err := Hook(context.Background(), p, "demux-a2", "MASTER")
	if err != nil || strings.TrimSpace(string(out)) != "repointed" {
		t.Fatalf("hook: %q, %v", out, err)
	}
	b, _ := os.ReadFile(rec)
	want := "4 --table rtb-1 example a demux-a2 MASTER 10.1.0.3,fd00:a::3 10.1.0.1,fd00:a::1 10.2.0.0/16,fd00:b::/64\n"
	if string(b) != want {
		t.Errorf("the hook saw\n%q\nwant\n%q", b, want)
	}
	if _, err := Hook(context.Background(), p, "demux-a", "FAULT"); err == nil || !strings.Contains(err.Error(), "networks.a.ha.notify") {
		t.Errorf("failing hook: %v", err)
	}
	if out, err := Hook(context.Background(), peering(t), "demux-a", "MASTER"); out != nil || err != nil {
		t.Errorf("no notify set: %q, %v", out, err)
	}
	if _, err := Hook(context.Background(), p, "demux-b", "MASTER"); err == nil {
		t.Error("hook for a demux without HA")
	}
}
