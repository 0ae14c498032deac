package main

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/clusterpeer/clusterpeer/config"
	"github.com/clusterpeer/clusterpeer/config/configtest"
)

// TestRestartOnly: of a reloaded file, a gateway names as "applies on
// restart" exactly the settings it uses that changed; its peer's entry
// and other lanes are not among them.
func TestRestartOnly(t *testing.T) {
	dir := t.TempDir()
	base := configtest.Example(t, dir) // one set of keys for every load
	load := func(edits ...string) (*config.Peering, config.Node) {
		t.Helper()
		s := base
		for i := 0; i+1 < len(edits); i += 2 {
			if !strings.Contains(s, edits[i]) {
				t.Fatalf("example lacks %q", edits[i])
			}
			s = strings.Replace(s, edits[i], edits[i+1], 1)
		}
		p, err := config.Parse([]byte(s), dir+"/")
		if err != nil {
			t.Fatal(err)
		}
		p.Path = filepath.Join(dir, "peering.yaml")
		n, err := p.Node("gw-a1")
		if err != nil {
			t.Fatal(err)
		}
		return p, n
	}
	old, oldNode := load()
	cases := []struct {
		name  string
		edits []string
		want  []string
	}{
		{"nothing", nil, nil},
		{"the peer moved", []string{"endpoint: 198.18.1.2:51820", "endpoint: 198.18.1.9:51820"}, nil},
		{"another lane", []string{"endpoint: 198.18.2.1:51820", "endpoint: 198.18.2.9:51820"}, nil},
		{"its own endpoint", []string{"endpoint: 198.18.1.1:51820", "endpoint: 198.18.1.8:51820"}, []string{"this gateway's own entry"}},
		{"vni and mtu", []string{"vni: 4242", "vni: 4243", "mtu: 1420", "mtu: 1400"}, []string{"vni", "mtu"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			next, node := load(c.edits...)
			if got := restartOnly(old, oldNode, next, node); !slices.Equal(got, c.want) {
				t.Errorf("restartOnly = %q, want %q", got, c.want)
			}
		})
	}
}
