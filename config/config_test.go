package config

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clusterpeer/clusterpeer/config/configtest"
	"github.com/clusterpeer/clusterpeer/tunnel/keyring"
)

func example(t *testing.T, dir string, edits ...string) string {
	return configtest.Example(t, dir, edits...)
}

func TestExampleLoads(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "peering.yaml")
	os.WriteFile(path, []byte(example(t, dir)), 0o644)
	p, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if p.MTU != 1420 || p.Hash.TableSize == 0 || p.Hash.Key[0] != 0x00 || p.Hash.Key[15] != 0xff {
		t.Errorf("defaults/key: mtu %d table %d key %x", p.MTU, p.Hash.TableSize, p.Hash.Key)
	}
	if got := p.Lanes[0].B.Geneve.String(); got != "10.2.0.21:6081" {
		t.Errorf("geneve default port: %s", got)
	}
	if p.Lanes[1].Weight != 2 || p.Lanes[0].Weight != 1 {
		t.Errorf("weights %d %d", p.Lanes[0].Weight, p.Lanes[1].Weight)
	}
	if p.Lanes[0].A.PrivateKeyFile != dir+"/gw-a1.key" {
		t.Errorf("relative key path: %s", p.Lanes[0].A.PrivateKeyFile)
	}
	if d := p.Networks["b"].Demux; d.Tun != "cp-demux-b" || d.Metrics != DefaultMetricsAddr || d.Status != "/run/clusterpeer/example-demux-b.sock" {
		t.Errorf("demux defaults: %+v", d)
	}
	if h := p.Health; !h.On || h.Params.Interval != 10*time.Millisecond || h.Params.Multiplier != 20 || h.Port != 6082 || h.DrainTimeout != DefaultDrainTime {
		t.Errorf("health defaults: %+v", h)
	}
	n, err := p.Node("gw-b2")
	if err != nil || n.Side != "b" || n.Lane.ID != 2 || n.Peer.Name != "gw-a2" {
		t.Errorf("Node(gw-b2) = %+v, %v", n, err)
	}
	if _, err := p.Node("gw-c9"); err == nil || !strings.Contains(err.Error(), "known: demux-a, demux-a2, demux-b, gw-a1") {
		t.Errorf("unknown node: %v", err)
	}
}

// TestHAPair: the standby is a demux node of its side; the gateways
// accept GENEVE from both demuxes; the VIPs and defaults are parsed.
func TestHAPair(t *testing.T) {
	dir := t.TempDir()
	p, err := Parse([]byte(example(t, dir)), dir+"/")
	if err != nil {
		t.Fatal(err)
	}
	n, err := p.Node("demux-a2")
	if err != nil || n.Side != "a" || n.Demux == nil || n.Demux.Tun != "cp-demux-a2" || n.Demux.Status != "/run/clusterpeer/example-demux-a2.sock" {
		t.Fatalf("Node(demux-a2) = %+v, %v", n, err)
	}
	a := p.Networks["a"]
	if got := fmt.Sprint(a.DemuxSources()); got != "[10.1.0.2 fd00:a::2 10.1.0.3 fd00:a::3]" {
		t.Errorf("gateways accept GENEVE from %s", got)
	}
	if a.Pair("demux-a").Name != "demux-a2" || a.Pair("demux-a2").Name != "demux-a" || p.Networks["b"].Pair("demux-b") != nil {
		t.Error("Pair")
	}
	if a.Priority("demux-a") <= a.Priority("demux-a2") {
		t.Error("the demux must outrank its standby")
	}
	h := a.HA
	if fmt.Sprint(h.VIPs) != "[10.1.0.1 fd00:a::1]" || h.RouterID != 51 || h.AdvertInterval != 50*time.Millisecond || h.CheckInterval != time.Second || h.Preempt {
		t.Errorf("ha: %+v", h)
	}
	if got := strings.Join(p.NodeNames(), " "); !strings.Contains(got, "demux-a demux-a2 demux-b") {
		t.Errorf("node names: %s", got)
	}
}

// TestBrokenConfigs: each edit of the example must fail, naming the field.
func TestBrokenConfigs(t *testing.T) {
	cases := []struct {
		name, old, new, want string
	}{
		{"bad yaml", "vni: 4242", "vni: [", "yaml:"},
		{"unknown field", "mtu: 1420", "mtu: 1420\nmtus: 1", "mtus (line 5): field mtus not found"},
		{"negative", "vni: 4242", "vni: -1", "vni (line 3): cannot unmarshal !!int `-1` into uint32"},
		{"wrong type", "    weight: 2", "    weight: heavy", "lanes[1].weight (line 53): cannot unmarshal !!str `heavy`"},
		{"name", "name: example", "name: Example!", "name: \"Example!\""},
		{"vni", "vni: 4242", "vni: 16777216", "vni: 16777216: a GENEVE VNI has 24 bits"},
		{"mtu low", "mtu: 1420", "mtu: 1000", "mtu: 1000: want 1280.."},
		{"hash mode", "mode: 5-tuple", "mode: 4-tuple", "hash.mode: hash mode \"4-tuple\""},
		{"key file missing", "key_file: hash.key", "key_file: nope.key", "hash.key_file: open"},
		{"key file absent", "key_file: hash.key          # 32 hex digits, owner-only: openssl rand -hex 16", "", "hash.key_file: missing"},
		{"table size", "symmetric: true", "symmetric: true\n  table_size: 100", "hash.table_size"},
		{"unknown network", "  b:\n    prefixes", "  c:\n    prefixes", "networks.c: unknown network"},
		{"missing network", "  b:\n    prefixes", "  c:\n    prefixes", "networks.b: missing"},
		{"bad prefix", "[10.1.0.0/16, fd00:a::/64]", "[10.1.0.0/33]", "networks.a.prefixes[0]: \"10.1.0.0/33\""},
		{"host bits", "[10.1.0.0/16, fd00:a::/64]", "[10.1.0.1/16]", "did you mean 10.1.0.0/16"},
		{"overlap", "[10.2.0.0/16, fd00:b::/64]", "[10.1.128.0/17]", "networks.b.prefixes[0]: 10.1.128.0/17 overlaps networks.a.prefixes[0]"},
		{"demux address", "[10.2.0.2]", "[10.2.0.300]", "networks.b.demux.addresses[0]: \"10.2.0.300\""},
		{"no demux address", "[10.2.0.2]", "[]", "networks.b.demux.addresses: missing"},
		{"metrics", "metrics: 127.0.0.1:9100", "metrics: localhost", "networks.a.demux.metrics: \"localhost\""},
		{"web config missing", "mtu: 1420", "mtu: 1420\nmetrics:\n  web_config: web.yml", "metrics.web_config: "},
		{"web config bad", "mtu: 1420", "mtu: 1420\nmetrics:\n  web_config: hash.key", "metrics.web_config: "},
		{"duplicate name", "name: gw-b2", "name: gw-a1", "lanes[1].b.name: \"gw-a1\" is already the name of lanes[0].a.name"},
		{"lane id", "  - id: 2", "  - id: 0", "lanes[1].id: 0: want 1..4095"},
		{"duplicate lane id", "  - id: 2", "  - id: 1", "lanes[1].id: 1 is already the id of lanes[0]"},
		{"weight", "    weight: 2", "    weight: 5000", "lanes[1].weight: 5000"},
		{"geneve", "geneve: 10.1.0.22:6081", "geneve: 10.1.0.22:99999", "lanes[1].a.geneve: \"10.1.0.22:99999\""},
		{"endpoint missing", "endpoint: 198.18.2.1:51820", "endpoint: \"\"", "lanes[1].a.endpoint: missing"},
		{"endpoint reused", "endpoint: 198.18.2.1:51820", "endpoint: 198.18.1.1:51820", "lanes[1].a: address 198.18.1.1:51820 is also used by lanes[0].a"},
		{"public key", "public_key: PUBKEY_A2", "public_key: nonsense", "lanes[1].a.public_key: not a WireGuard key"},
		{"same key", "public_key: PUBKEY_B2", "public_key: PUBKEY_A2", "lanes[1].b.public_key: same key as lanes[1].a"},
		{"tun name", "      private_key_file: gw-b1.key", "      private_key_file: gw-b1.key\n      tun: this-name-is-too-long", "lanes[0].b.tun"},
		{"no lanes", "lanes:", "lanes: []\nold_lanes:", "field old_lanes not found"},
		{"probe interval", "interval: 10ms", "interval: 10us", "health.interval: 10µs: want 1ms..10s"},
		{"probe interval type", "interval: 10ms", "interval: often", "health.interval (line 10): cannot unmarshal"},
		{"multiplier", "detect_multiplier: 20", "detect_multiplier: 300", "health.detect_multiplier: 300"},
		{"hold down max", "port: 6082", "port: 6082\n  hold_down: 5s\n  hold_down_max: 1s", "health.hold_down_max: 1s: want 5s.."},
		{"demux outside network", "[10.2.0.2]", "[10.9.0.2]", "networks.b.demux.addresses[0]: 10.9.0.2 is outside networks.b.prefixes"},
		{"gateway outside network", "geneve: 10.2.0.21", "geneve: 10.7.0.21", "lanes[0].b.geneve: 10.7.0.21 is outside networks.b.prefixes"},
		{"no address of the family", "geneve: 10.1.0.21:6081", "geneve: \"[fd00:a::21]:6081\"", "lanes[0].a.geneve: fd00:a::21: demux demux-b has no"},
		{"standby without ha", "    ha:                       # keepalived", "    old_ha:                       # keepalived", "field old_ha not found"},
		{"ha without standby", "    standby:                  # optional", "    old_standby:                  # optional", "field old_standby not found"},
		{"standby name taken", "name: demux-a2", "name: gw-b1", "lanes[0].b.name: \"gw-b1\" is already the name of networks.a.standby.name"},
		{"standby outside network", "[10.1.0.3, fd00:a::3]", "[10.3.0.3]", "networks.a.standby.addresses[0]: 10.3.0.3 is outside networks.a.prefixes"},
		{"no vips", "vips: [10.1.0.1, fd00:a::1]", "vips: []", "networks.a.ha.vips: missing"},
		{"vip is a prefix", "vips: [10.1.0.1, fd00:a::1]", "vips: [10.1.0.1/24]", "networks.a.ha.vips[0]: \"10.1.0.1/24\" is not an IP address (no prefix length"},
		{"vip is a demux's", "vips: [10.1.0.1, fd00:a::1]", "vips: [10.1.0.1, fd00:a::3]", "networks.a.ha.vips[1]: fd00:a::3 is a demux's own address"},
		{"no interface", "interface: eth0 ", "interface: \"\" ", "networks.a.ha.interface: missing"},
		{"router id", "router_id: 51", "router_id: 256", "networks.a.ha.router_id: 256: want 1..255"},
		{"advert interval", "advert_interval: 50ms", "advert_interval: 55ms", "networks.a.ha.advert_interval: 55ms: want 10ms..40.95s in whole centiseconds"},
		{"check interval", "advert_interval: 50ms", "advert_interval: 50ms\n      check_interval: 500ms", "networks.a.ha.check_interval: 500ms: want whole seconds"},
		{"unicast without the family", "addresses: [10.1.0.3, fd00:a::3]\n    ha:", "addresses: [fd00:a::3]\n    ha:\n      unicast: true", "networks.a.ha.unicast: demux demux-a2 has no IPv4 address"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			s := example(t, dir, c.old, c.new)
			_, err := Parse([]byte(s), dir+"/")
			if err == nil {
				t.Fatalf("accepted; want error containing %q", c.want)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error:\n%v\nwant it to contain %q", err, c.want)
			}
		})
	}
}

// TestAllErrorsAtOnce: an operator fixes a file in one pass, also when
// some values do not even parse as their type.
func TestAllErrorsAtOnce(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		edits []string
		want  []string
	}{
		{[]string{"vni: 4242", "vni: 16777216", "mtu: 1420", "mtu: 100", "  - id: 2", "  - id: 9999"}, []string{"vni:", "mtu:", "lanes[1].id:"}},
		{[]string{"mode: 5-tuple", "mode: 4-tuple", "geneve: 10.1.0.22:6081", "geneve: 10.1.0.22:99999",
			"[10.2.0.2]", "[10.2.0.300]", "vni: 4242", "vni: 16777216", "mtu: 1420", "mtu: 1420\nmtus: 1"},
			[]string{"hash.mode:", "lanes[1].a.geneve:", "networks.b.demux.addresses[0]:", "vni:", "mtus (line"}},
	} {
		_, err := Parse([]byte(example(t, dir, c.edits...)), dir+"/")
		errs, ok := err.(Errors)
		if !ok || len(errs) != len(c.want) {
			t.Errorf("want %d errors, got %v", len(c.want), err)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("no error for %s in:\n%v", w, err)
			}
		}
	}
}

func TestSecretFilePermissions(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "k")
	os.WriteFile(path, []byte(" secret \n"), 0o644)
	_, err := ReadSecretFile(path)
	if err == nil || !strings.Contains(err.Error(), "chmod 600 "+path) {
		t.Errorf("world-readable key: %v", err)
	}
	os.Chmod(path, 0o600)
	if s, err := ReadSecretFile(path); err != nil || s != "secret" {
		t.Errorf("owner-only key: %q, %v", s, err)
	}
	big := filepath.Join(dir, "big")
	os.WriteFile(big, make([]byte, MaxSecretFile+1), 0o600)
	if _, err := ReadSecretFile(big); err == nil {
		t.Error("oversized secret file accepted")
	}
	if _, err := ReadSecretFile(dir); err == nil {
		t.Error("directory accepted")
	}
}

// FuzzParse: no input makes the checker panic or hang; whatever it
// accepts has the invariants the nodes rely on.
func FuzzParse(f *testing.F) {
	b, _ := os.ReadFile("testdata/peering.yaml")
	f.Add(b)
	f.Add([]byte("name: x\nlanes: [{id: 1}]\n"))
	f.Add([]byte("networks: {a: {prefixes: [\"::/0\"]}}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 1<<16 {
			return
		}
		p, err := Parse(data, "/nonexistent/")
		if err != nil {
			return
		}
		if len(p.Lanes) == 0 || p.MTU < MinMTU {
			t.Fatalf("accepted an invalid peering: %+v", p)
		}
	})
}

// TestKeyPaths: each role needs only its keys of the secret's tree (a
// gateway no flow key, no other lane's probe key; a gateway that joins
// through the store, not knowing its lane yet, its side's roots).
func TestKeyPaths(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "peering.yaml")
	os.WriteFile(path, []byte(configtest.Example(t, dir, "hash:\n", "security:\n  geneve_auth: true\nhash:\n")), 0o600)
	p, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	node := func(name string) Node {
		n, err := p.Node(name)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	for _, c := range []struct {
		n    Node
		want string
	}{
		{node("demux-a"), "flow probe/a geneve/a/0"},
		{node("demux-a2"), "flow probe/a geneve/a/1"},
		{node("demux-b"), "flow probe/b geneve/b/0"},
		{node("gw-a2"), "probe/a/2 probe/b/2 geneve/a/0/2 geneve/a/1/2"},
		{node("gw-b1"), "probe/a/1 probe/b/1 geneve/b/0/1"},
		{Node{Side: SideA}, "probe/a probe/b geneve/a/0 geneve/a/1"},
	} {
		if got := strings.Join(p.KeyPaths(c.n), " "); got != c.want {
			t.Errorf("%+v: %s, want %s", c.n.Side, got, c.want)
		}
	}
}

// TestRingOfAJoiningGateway: a gateway that joins through the store
// (tunnel join: no file of its own), with only its side's join-SIDE.keys
// written, gets the side's roots, from which its lane's keys derive once
// it knows the lane; a gateway of the file never reads that file.
func TestRingOfAJoiningGateway(t *testing.T) {
	p, gen := keysDirPeering(t)
	joining := Node{Side: SideB, Lane: &Lane{Weight: 1}, Self: &Gateway{Name: "gw-b9"}}
	cut, err := gen.Only(p.KeyPaths(joining)...)
	if err != nil {
		t.Fatal(err)
	}
	r := &keyring.Ring{Gens: []keyring.Gen{cut}}
	if err := os.WriteFile(p.KeysFile(JoinKeysName(SideB)), r.Marshal("test"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, _, err := p.JoinRing(SideB, 7, "gw-b9")
	if err != nil {
		t.Fatalf("a joining gateway's ring: %v", err)
	}
	want, _ := gen.Key(keyring.GenevePath("b", 0, 7))
	if k, ok := got.Gens[0].Key(keyring.GenevePath("b", 0, 7)); !ok || k != want {
		t.Fatalf("lane 7's GENEVE key from the join file: held %v, equal %v", ok, k == want)
	}
	if _, err := p.Ring(Node{Side: SideB, Lane: &Lane{ID: 2}}, "gw-b9"); err == nil {
		t.Fatal("a gateway of lane 2 without its own file read the join file")
	}
}

// TestJoinRing: with --join-slots, a joining gateway's keys are its
// slot's alone (no other lane's probe or GENEVE key, no root); a slot
// without a file falls back to the side's roots file, and with neither
// the error names both.
func TestJoinRing(t *testing.T) {
	p, gen := keysDirPeering(t)
	p.Discovery.Mode = DiscoveryEtcd // NodeKeys writes the join files for it
	files, err := p.NodeKeys([]keyring.Gen{gen}, time.Now(), 6)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range Sides {
		if _, ok := files[JoinKeysName(s)]; ok {
			t.Errorf("with join slots, %s (the side's roots) was written", JoinKeysName(s))
		}
		for slot := 1; slot <= 6; slot++ {
			_, ok := files[JoinSlotKeysName(s, slot)]
			inFile := slices.ContainsFunc(p.Lanes, func(l Lane) bool { return l.ID == slot })
			if ok == inFile {
				t.Errorf("slot %d of side %s (a lane of the file: %v): join file written %v", slot, s, inFile, ok)
			}
		}
	}
	for name, b := range files {
		os.WriteFile(p.KeysFile(name), b, 0o600)
	}
	r, from, err := p.JoinRing(SideA, 5, "gw-a5")
	if err != nil || from != p.KeysFile("join-a-5") {
		t.Fatalf("slot 5: %v (read %s)", err, from)
	}
	own, _ := gen.Key(keyring.GenevePath("a", 0, 5))
	if k, ok := r.Gens[0].Key(keyring.GenevePath("a", 0, 5)); !ok || k != own {
		t.Fatal("slot 5's file lacks its GENEVE key")
	}
	for _, other := range []string{keyring.GenevePath("a", 0, 4), keyring.ProbePath("a", 4), keyring.ProbePath("a", 0), keyring.FlowPath} {
		if _, ok := r.Gens[0].Key(other); ok {
			t.Errorf("slot 5's file gives %s", other)
		}
	}
	if _, _, err := p.JoinRing(SideA, 9, "gw-a9"); err == nil || !strings.Contains(err.Error(), "join-a-9.keys") || !strings.Contains(err.Error(), "join-a.keys") {
		t.Errorf("slot 9, no file: %v", err)
	}
	roots, _ := p.NodeKeys([]keyring.Gen{gen}, time.Now(), 0)
	os.WriteFile(p.KeysFile(JoinKeysName(SideA)), roots[JoinKeysName(SideA)], 0o600)
	if _, from, err := p.JoinRing(SideA, 9, "gw-a9"); err != nil || from != p.KeysFile("join-a") {
		t.Errorf("slot 9 with the side's roots file: %v (read %s)", err, from)
	}
}

// keysDirPeering is the example peering sealing GENEVE with each node's
// keys in keys_dir (made), and a generation of a test secret.
func keysDirPeering(t *testing.T) (*Peering, keyring.Gen) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "peering.yaml")
	os.WriteFile(path, []byte(configtest.Example(t, dir,
		"  key_file: hash.key          # 32 hex digits, owner-only: openssl rand -hex 16\n", "",
		"hash:\n", "security:\n  geneve_auth: true\n  keys_dir: keys\nhash:\n")), 0o600)
	p, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(p.Security.KeysDir, 0o700)
	return p, keyring.FromSecret([]byte("0123456789abcdef0123456789abcdef"), time.Time{}, time.Time{})
}
