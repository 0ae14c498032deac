package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/clusterpeer/clusterpeer/config"
	"github.com/clusterpeer/clusterpeer/tunnel/keyring"
)

// TestKeysWritesEachNodeItsOwn: `demux keys` gives every node of the file
// a key file that config.Ring accepts for it, holding the keys the secret
// gives for its purposes and nothing a gateway should not have; with
// --previous, both secrets, the new one signing after the switch.
func TestKeysWritesEachNodeItsOwn(t *testing.T) {
	p := examplePeering(t,
		"  key_file: hash.key          # 32 hex digits, owner-only: openssl rand -hex 16\n", "",
		"hash:\n", "security:\n  keys_dir: keys\n  geneve_auth: true\nhash:\n")
	dir := filepath.Dir(p.Path)
	newSecret, oldSecret := strings.Repeat("ab", 32), strings.Repeat("cd", 16)
	os.WriteFile(filepath.Join(dir, "new.secret"), []byte(newSecret+"\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "old.secret"), []byte(oldSecret+"\n"), 0o600)
	if err := keys([]string{"--config", p.Path, "--secret", filepath.Join(dir, "new.secret")}); err != nil {
		t.Fatal(err)
	}
	whole := keyring.FromSecret([]byte(strings.Repeat("\xab", 32)), time.Time{}, time.Time{})
	for _, name := range p.NodeNames() {
		n, _ := p.Node(name)
		fi, err := os.Stat(p.KeysFile(name))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v, want an owner-only file", name, err, fi)
		}
		r, err := p.Ring(n, name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		g := r.Gens[0]
		if g.ID != whole.ID {
			t.Errorf("%s: key ID %#02x, want %#02x", name, g.ID, whole.ID)
		}
		for _, path := range p.KeyPaths(n) {
			want, _ := whole.Key(path)
			if got, ok := g.Key(path); !ok || got != want {
				t.Errorf("%s: %s is not the secret's", name, path)
			}
		}
		if n.Lane != nil {
			other := 3 - n.Lane.ID
			for _, path := range []string{keyring.FlowPath, keyring.ProbePath("a", uint16(other)), keyring.GenevePath("b", 0, uint16(n.Lane.ID)), keyring.ProbePath(string(n.Side), 0)} {
				if g.Has(path) && !(n.Side == config.SideB && strings.HasPrefix(path, "geneve/b")) {
					t.Errorf("gateway %s can derive %s", name, path)
				}
			}
		}
	}

	// Rotation: both secrets, the new one signing a minute on.
	before := time.Now()
	if err := keys([]string{"--config", p.Path, "--secret", filepath.Join(dir, "new.secret"), "--previous", filepath.Join(dir, "old.secret"), "--grace", "5m"}); err != nil {
		t.Fatal(err)
	}
	n, _ := p.Node("gw-a1")
	r, err := p.Ring(n, "gw-a1")
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Gens) != 2 || r.Gens[0].ID != whole.ID || r.Gens[1].ID != keyring.ID([]byte(strings.Repeat("\xcd", 16))) {
		t.Fatalf("generations %+v", r.Gens)
	}
	if s := r.Signing(before); s == nil || s.ID != r.Gens[1].ID {
		t.Errorf("before the switch the old secret signs, got %+v", s)
	}
	if s := r.Signing(before.Add(2 * time.Minute)); s == nil || s.ID != whole.ID {
		t.Errorf("after the switch the new secret signs, got %+v", s)
	}
	if r.Accepted(r.Gens[1].ID, before.Add(7*time.Minute)) != nil {
		t.Error("the old secret is still accepted after the grace")
	}

	// A file another node could read is refused, as every secret is.
	os.Chmod(p.KeysFile("gw-a1"), 0o644)
	if _, err := p.Ring(n, "gw-a1"); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("a readable key file: %v", err)
	}
}
