package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestCommandsWithoutRoot runs the binaries' key and config handling as a
// user would, before anything needs privileges.
func TestCommandsWithoutRoot(t *testing.T) {
	bin := binaries(t)
	dir := t.TempDir()
	run := func(stdin string, args ...string) (string, error) {
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}

	// genkey | pubkey, for four gateways; the key file is owner-only.
	pubs := map[string]string{}
	for _, name := range []string{"a1", "b1", "a2", "b2"} {
		priv, err := run("", bin+"/tunnel", "genkey")
		if err != nil {
			t.Fatal(priv, err)
		}
		pub, err := run(priv, bin+"/tunnel", "pubkey")
		if err != nil {
			t.Fatal(pub, err)
		}
		if strings.Contains(pub, strings.TrimSpace(priv)) || len(strings.TrimSpace(pub)) != 44 {
			t.Fatalf("pubkey printed %q", pub)
		}
		if wg, err := exec.LookPath("wg"); err == nil {
			if want, _ := run(priv, wg, "pubkey"); want != pub {
				t.Errorf("tunnel pubkey %q, wg pubkey %q", pub, want)
			}
		}
		pubs[name] = strings.TrimSpace(pub)
		os.WriteFile(filepath.Join(dir, "gw-"+name+".key"), []byte(priv), 0o600)
	}
	example, err := os.ReadFile("../../config/testdata/peering.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := string(example)
	for name, pub := range pubs {
		cfg = strings.ReplaceAll(cfg, "PUBKEY_"+strings.ToUpper(name), pub)
	}
	path := filepath.Join(dir, "peering.yaml")
	os.WriteFile(path, []byte(cfg), 0o644)
	os.WriteFile(filepath.Join(dir, "hash.key"), []byte("00112233445566778899aabbccddeeff\n"), 0o600)

	if out, err := run("", bin+"/demux", "check", "--config", path); err != nil || !strings.Contains(out, `peering "example", 2 lanes`) {
		t.Errorf("demux check: %v\n%s", err, out)
	}

	// An HA pair's keepalived config, from the same file.
	if out, err := run("", bin+"/demux", "keepalived", "--config", path, "--node", "demux-a2", "--demux-bin", "/usr/sbin/demux"); err != nil ||
		!strings.Contains(out, `notify "/usr/sbin/demux notify --config `+path+` --node demux-a2"`) || !strings.Contains(out, "priority 100") {
		t.Errorf("demux keepalived: %v\n%s", err, out)
	}

	// A private key others can read is refused, with the fix.
	key := filepath.Join(dir, "gw-a1.key")
	os.Chmod(key, 0o644)
	out, err := run("", bin+"/tunnel", "up", "--config", path, "--node", "gw-a1")
	if err == nil || !strings.Contains(out, "chmod 600 "+key) {
		t.Errorf("readable key: %v\n%s", err, out)
	}
	os.Chmod(key, 0o600)

	// A key that is not the configured one is refused, naming both.
	os.Rename(key, key+".orig")
	os.Link(filepath.Join(dir, "gw-b1.key"), key)
	out, err = run("", bin+"/tunnel", "up", "--config", path, "--node", "gw-a1")
	if err == nil || !strings.Contains(out, "does not belong to public_key of gw-a1") {
		t.Errorf("wrong key: %v\n%s", err, out)
	}

	// Wrong node kinds and names.
	for _, c := range []struct{ args, want string }{
		{"tunnel up --node demux-a", "is a demux; run it with `demux up`"},
		{"demux up --node gw-a1", "is a gateway; run it with `tunnel up`"},
		{"demux up --node nope", "no node of that name (known: demux-a, demux-a2, demux-b, gw-a1"},
		{"demux show --node gw-a1", "a gateway; use `tunnel show`"},
		{"demux up", "--node is required"},
		{"tunnel reflect --node demux-a", "is a demux; run it with `demux up`"},
		{"demux drain --node gw-a1 --lane 1", "is a gateway; drain is a demux command"},
		{"demux drain --node demux-a --lane 1", "is the node running?"},
		{"demux reload --node demux-b", "is the node running?"},
		{"demux undrain --node demux-a --lane x", "invalid value \"x\" for flag -lane"},
		{"demux health --node demux-a2", "is the node running?"},
		{"demux health --node gw-b1", "is a gateway; health judges a demux"},
		{"demux notify --node demux-a", "want keepalived's notify arguments"},
		{"demux notify --node demux-a INSTANCE x MASTER 150", "telling the demux"},
		{"demux keepalived --node demux-b", "networks.b has no ha section"},
		{"demux keepalived", "--node is required"},
	} {
		args := strings.Fields(c.args)
		// --config goes first: keepalived appends notify's arguments last.
		out, err := run("", append([]string{bin + "/" + args[0], args[1], "--config", path}, args[2:]...)...)
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("%s: %v\n%s", c.args, err, out)
		}
	}

	// A broken config stops the node before anything starts, naming fields.
	os.WriteFile(path, []byte(strings.Replace(cfg, "vni: 4242", "vni: -1", 1)), 0o644)
	out, err = run("", bin+"/demux", "up", "--config", path, "--node", "demux-a")
	if err == nil || !strings.Contains(out, "vni") {
		t.Errorf("broken config: %v\n%s", err, out)
	}
}
