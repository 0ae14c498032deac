package main

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/clusterpeer/clusterpeer/config"
	"github.com/clusterpeer/clusterpeer/config/configtest"
	"github.com/clusterpeer/clusterpeer/flowhash"
	"github.com/clusterpeer/clusterpeer/tunnel/probe"
)

func examplePeering(t *testing.T, edits ...string) *config.Peering {
	dir := t.TempDir()
	path := filepath.Join(dir, "peering.yaml")
	if err := os.WriteFile(path, []byte(configtest.Example(t, dir, edits...)), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func node(t *testing.T, p *config.Peering, name string) config.Node {
	n, err := p.Node(name)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestNodeConfigs: what `demux up` hands the demux and the prober follows
// from the node's side of the file.
func TestNodeConfigs(t *testing.T) {
	p := examplePeering(t)
	a, b := node(t, p, "demux-a"), node(t, p, "demux-b")

	ca := demuxConfig(p, a, nil, nil)
	if len(ca.Remote) == 0 || ca.Remote[0] != netip.MustParsePrefix("10.2.0.0/16") {
		t.Errorf("demux-a's remote network: %v, want side b's prefixes", ca.Remote)
	}
	if ca.ICMPv4 != netip.MustParseAddr("10.1.0.2") || ca.ICMPv6 != netip.MustParseAddr("fd00:a::2") {
		t.Errorf("demux-a's ICMP sources: %v %v", ca.ICMPv4, ca.ICMPv6)
	}
	if cb := demuxConfig(p, b, nil, nil); cb.ICMPv6.IsValid() || cb.ICMPv4 != netip.MustParseAddr("10.2.0.2") {
		t.Errorf("demux-b (IPv4 only) ICMP sources: %v %v", cb.ICMPv4, cb.ICMPv6)
	}
	if v4, v6 := families(b.Demux.Addresses); !v4 || v6 {
		t.Errorf("families of %v: %v %v", b.Demux.Addresses, v4, v6)
	}

	var rec recorder
	keys, err := p.Ring(a, "demux-a")
	if err != nil {
		t.Fatal(err)
	}
	pa, pb := proberConfig(p, a, keys, &rec, nil), proberConfig(p, b, keys, &rec, nil)
	if pa.StartDelay != 0 || pb.StartDelay != time.Second {
		t.Errorf("start delays: a %v, b %v; side b waits for side a's probes", pa.StartDelay, pb.StartDelay)
	}
	if pa.Keys != keys || pa.Side != "a" || pb.Side != "b" || pa.Params != p.Health.Params || pa.Port != p.Health.Port {
		t.Errorf("prober config does not follow the file: %+v", pa)
	}
	pa.OnChange(probe.Change{Lane: 2})
	pa.OnSettled(3)
	if rec.changed != 2 || rec.settled != 3 {
		t.Errorf("prober verdicts reach the demux: %+v", rec)
	}

	id := identityOf(p, a)
	if id.Node != "demux-a" || id.Side != "a" || id.Probing == nil || id.Probing.Multiplier != 20 || id.Hash == "" {
		t.Errorf("identity: %+v", id)
	}
	if off := identityOf(examplePeering(t, "health:", "health:\n  enabled: false"), a); off.Probing != nil {
		t.Errorf("health off, yet probing shown: %+v", off.Probing)
	}
}

type recorder struct {
	changed, settled flowhash.LaneID
	drained          []string
}

func (r *recorder) LaneHealth(c probe.Change)      { r.changed = c.Lane }
func (r *recorder) LaneSettled(id flowhash.LaneID) { r.settled = id }
func (r *recorder) Drain(id flowhash.LaneID, d time.Duration) error {
	if id == 9 {
		return errors.New("no lane 9")
	}
	r.drained = append(r.drained, fmt.Sprintf("drain %d %v", id, d))
	return nil
}
func (r *recorder) Undrain(id flowhash.LaneID) error {
	r.drained = append(r.drained, fmt.Sprintf("undrain %d", id))
	return nil
}

// TestAdminActions: the socket's commands check their arguments and name
// the flag that was wrong.
func TestAdminActions(t *testing.T) {
	var rec recorder
	acts := adminActions(&rec, func() (string, error) { return "reloaded", nil }, nil, nil)
	for _, c := range []struct {
		action, query, want, err string
	}{
		{"drain", "lane=2", "lane 2 draining", ""},
		{"drain", "lane=2&deadline=30s", "lane 2 draining", ""},
		{"drain", "lane=0", "", `--lane "0"`},
		{"drain", "lane=x", "", `--lane "x"`},
		{"drain", "lane=2&deadline=-1s", "", `--deadline "-1s"`},
		{"drain", "lane=2&deadline=soon", "", `--deadline "soon"`},
		{"drain", "lane=9", "", "no lane 9"},
		{"undrain", "lane=3", "lane 3 back in service", ""},
		{"undrain", "", "", `--lane ""`},
		{"reload", "", "reloaded", ""},
	} {
		q, _ := url.ParseQuery(c.query)
		msg, err := acts[c.action](q)
		switch {
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%s %s: error %v, want one naming %s", c.action, c.query, err, c.err)
		case c.err == "" && (err != nil || !strings.Contains(msg, c.want)):
			t.Errorf("%s %s: %q, %v; want %q", c.action, c.query, msg, err, c.want)
		}
	}
	if got := strings.Join(rec.drained, ", "); got != "drain 2 0s, drain 2 30s, undrain 3" {
		t.Errorf("the demux was asked: %s", got)
	}
}

// TestLaneSpecsFromTheStore: the store's lanes follow the file's, marked
// as such, with their near gateway and the far one's reflector.
func TestLaneSpecsFromTheStore(t *testing.T) {
	p := examplePeering(t)
	bind := conn.NewStdNetBind()
	var stored config.Lane
	stored.ID, stored.Weight = 7, 3
	stored.A.Name, stored.B.Name = "gw-a7", "gw-b7"
	stored.A.Geneve.AddrPort = netip.MustParseAddrPort("10.1.0.27:6081")
	stored.B.Geneve.AddrPort = netip.MustParseAddrPort("10.2.0.27:6081")
	specs, err := laneSpecs(p, []config.Lane{stored}, config.SideB, bind, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(specs) != 3 || specs[0].Source != "file" || specs[1].Source != "file" {
		t.Fatalf("specs %+v: want the file's two lanes first", specs)
	}
	s := specs[2]
	if s.ID != 7 || s.Weight != 3 || s.Source != "store" || s.Gateway != "gw-b7" || s.Near != stored.B.Geneve.AddrPort || s.Far != stored.A.Geneve.Addr() {
		t.Fatalf("the store's lane for demux-b: %+v", s)
	}
	// More lanes than the table has room for are refused whole.
	p.Hash.TableSize = 7
	many := make([]config.Lane, 7)
	for i := range many {
		many[i] = stored
		many[i].ID = 10 + i
	}
	if _, err := laneSpecs(p, many, config.SideB, bind, nil); err == nil {
		t.Fatal("9 lanes in a 7-entry table accepted")
	}
}
