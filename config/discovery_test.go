package config

import (
	"crypto/ed25519"
	"encoding/base64"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const seed32 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=" // bytes 0..31

// withDiscovery is the example peering with a discovery section appended.
func withDiscovery(t *testing.T, dir, section string, edits ...string) string {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "enrolment.key"), []byte(seed32+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return example(t, dir, edits...) + section
}

func TestDiscoveryLoads(t *testing.T) {
	dir := t.TempDir()
	s := withDiscovery(t, dir, "discovery:\n  mode: etcd\n  etcd:\n    endpoints: [https://10.0.0.5:2379, unix:///run/etcd.sock]\n    enrolment_key_file: enrolment.key\n")
	p, err := Parse([]byte(s), dir+"/")
	if err != nil {
		t.Fatal(err)
	}
	e := p.Discovery.Etcd
	if p.Discovery.Mode != DiscoveryEtcd || e.Prefix != DefaultStorePrefix || e.LeaseTTL != DefaultLeaseTTL || e.DialTimeout != DefaultDialTimeout {
		t.Fatalf("defaults not filled in: %+v %+v", p.Discovery, e)
	}
	seed, _ := base64.StdEncoding.DecodeString(seed32)
	if !e.Verify.Equal(ed25519.NewKeyFromSeed(seed).Public()) || e.Enrolment == nil {
		t.Fatal("enrolment key not read, or its public key not derived")
	}
	// A demux may hold only the public key; with no static lanes at all.
	verify := base64.StdEncoding.EncodeToString(e.Verify)
	s = withDiscovery(t, dir, "discovery:\n  mode: etcd\n  etcd:\n    endpoints: [https://10.0.0.5:2379]\n    enrolment_public_key: "+verify+"\n")
	s = s[:strings.Index(s, "lanes:")] + s[strings.LastIndex(s, "\ndiscovery:")+1:]
	p, err = Parse([]byte(s), dir+"/")
	if err != nil {
		t.Fatalf("etcd discovery without lanes: %v", err)
	}
	if len(p.Lanes) != 0 || p.Discovery.Etcd.Enrolment != nil || !p.Discovery.Etcd.Verify.Equal(e.Verify) {
		t.Fatalf("verify-only peering: %+v", p.Discovery.Etcd)
	}
}

func TestBrokenDiscovery(t *testing.T) {
	const base = "discovery:\n  mode: etcd\n  etcd:\n    endpoints: [https://10.0.0.5:2379]\n    enrolment_key_file: enrolment.key\n"
	for _, c := range []struct {
		name, old, new, want string
	}{
		{"mode", "mode: etcd", "mode: consul", `discovery.mode: "consul": want static`},
		{"no etcd", "  etcd:\n    endpoints: [https://10.0.0.5:2379]\n    enrolment_key_file: enrolment.key\n", "", "discovery.etcd: missing"},
		{"etcd while static", "mode: etcd", "mode: static", "discovery.etcd: set, but discovery.mode is static"},
		{"no endpoints", "[https://10.0.0.5:2379]", "[]", "discovery.etcd.endpoints: missing"},
		{"scheme", "https://10.0.0.5:2379", "ftp://10.0.0.5:2379", `discovery.etcd.endpoints[0]: "ftp://10.0.0.5:2379": want https://host:port`},
		{"no port", "https://10.0.0.5:2379", "https://10.0.0.5", "want https://host:port"},
		{"ttl", "enrolment_key_file: enrolment.key", "enrolment_key_file: enrolment.key\n    lease_ttl: 1500ms", "discovery.etcd.lease_ttl: 1.5s: want whole seconds, 3s..1h"},
		{"ttl type", "enrolment_key_file: enrolment.key", "enrolment_key_file: enrolment.key\n    lease_ttl: soon", "discovery.etcd.lease_ttl (line"},
		{"prefix", "enrolment_key_file: enrolment.key", "enrolment_key_file: enrolment.key\n    prefix: clusterpeer", `discovery.etcd.prefix: "clusterpeer"`},
		{"cert without key", "enrolment_key_file: enrolment.key", "enrolment_key_file: enrolment.key\n    cert_file: c.pem", "cert_file and key_file go together"},
		{"no enrolment key", "    enrolment_key_file: enrolment.key\n", "", "discovery.etcd.enrolment_public_key: missing"},
		{"enrolment key absent", "enrolment_key_file: enrolment.key", "enrolment_key_file: nope.key", "discovery.etcd.enrolment_key_file: open"},
		{"bad public key", "enrolment_key_file: enrolment.key", "enrolment_public_key: nonsense", "not a base64 Ed25519 public key"},
		{"mismatched public key", "enrolment_key_file: enrolment.key", "enrolment_key_file: enrolment.key\n    enrolment_public_key: " + base64.StdEncoding.EncodeToString(make([]byte, 32)), "does not belong to enrolment_key_file"},
		{"unknown field", "enrolment_key_file: enrolment.key", "enrolment_key_file: enrolment.key\n    lease: 5s", "field lease not found"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			if !strings.Contains(base, c.old) {
				t.Fatalf("base lacks %q", c.old)
			}
			s := withDiscovery(t, dir, strings.Replace(base, c.old, c.new, 1))
			_, err := Parse([]byte(s), dir+"/")
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error:\n%v\nwant it to contain %q", err, c.want)
			}
		})
	}
	t.Run("static without lanes", func(t *testing.T) {
		dir := t.TempDir()
		s := example(t, dir)
		s = s[:strings.Index(s, "lanes:")]
		if _, err := Parse([]byte(s), dir+"/"); err == nil || !strings.Contains(err.Error(), "lanes: missing: at least one lane (a gateway pair), or discovery.mode: etcd") {
			t.Fatalf("error: %v", err)
		}
	})
	t.Run("readable enrolment key", func(t *testing.T) {
		dir := t.TempDir()
		s := withDiscovery(t, dir, base)
		os.Chmod(filepath.Join(dir, "enrolment.key"), 0o644)
		if _, err := Parse([]byte(s), dir+"/"); err == nil || !strings.Contains(err.Error(), "is readable by others") {
			t.Fatalf("error: %v", err)
		}
	})
}

func TestCheckJoining(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "peering.yaml")
	os.WriteFile(path, []byte(withDiscovery(t, dir, "discovery:\n  mode: etcd\n  etcd:\n    endpoints: [https://10.0.0.5:2379]\n    enrolment_key_file: enrolment.key\n")), 0o600)
	p, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	good := func() Joining {
		j := Joining{Side: SideA, Gateway: Gateway{Name: "gw-a9", PublicKey: p.Lanes[0].A.PublicKey}}
		j.Gateway.Geneve.AddrPort = netip.MustParseAddrPort("10.1.0.29:0")
		j.Gateway.Endpoint.AddrPort = netip.MustParseAddrPort("198.18.9.1:0")
		return j
	}
	j := good()
	if err := p.CheckJoining(&j); err != nil {
		t.Fatal(err)
	}
	if j.Weight != 1 || j.Gateway.Geneve.Port() != DefaultGenevePort || j.Gateway.Endpoint.Port() != DefaultWGPort || j.Gateway.Tun != "cp-gw-a9" {
		t.Fatalf("defaults not filled in: %+v", j)
	}
	for _, c := range []struct {
		name string
		edit func(*Joining)
		want string
	}{
		{"side", func(j *Joining) { j.Side = "c" }, `side: "c": want a or b`},
		{"file slot", func(j *Joining) { j.Slot = 2 }, "slot: 2 is a lane of"},
		{"slot range", func(j *Joining) { j.Slot = 5000 }, "slot: 5000: want 1..4095"},
		{"name taken", func(j *Joining) { j.Gateway.Name = "gw-b1" }, `gateway.name: "gw-b1" is already the name of a node of`},
		{"outside prefixes", func(j *Joining) { j.Gateway.Geneve.AddrPort = netip.MustParseAddrPort("10.9.0.29:6081") }, "geneve: 10.9.0.29 is outside networks.a.prefixes"},
		{"weight", func(j *Joining) { j.Weight = 2000 }, "weight: 2000"},
	} {
		j := good()
		c.edit(&j)
		if err := p.CheckJoining(&j); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.name, err, c.want)
		}
	}
	static, err := Load(writeExample(t))
	if err != nil {
		t.Fatal(err)
	}
	j = good()
	if err := static.CheckJoining(&j); err == nil || !strings.Contains(err.Error(), "joins only a peering whose discovery.mode is etcd") {
		t.Fatalf("joining a static peering: %v", err)
	}
}

func writeExample(t *testing.T) string {
	dir := t.TempDir()
	path := filepath.Join(dir, "peering.yaml")
	os.WriteFile(path, []byte(example(t, dir)), 0o600)
	return path
}
