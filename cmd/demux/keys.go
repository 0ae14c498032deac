package main

import (
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/clusterpeer/clusterpeer/config"
	"github.com/clusterpeer/clusterpeer/flowhash"
	"github.com/clusterpeer/clusterpeer/tunnel/keyring"
)

// keys writes each node of the peering its own key file (security.keys_dir):
// the keys it needs of the secret, and while a secret is rotated those of
// the previous one too. Run where the secrets are, then copy each file to
// its node and reload them all; see docs/security.md.
func keys(args []string) error {
	fs := flag.NewFlagSet("keys", flag.ContinueOnError)
	cfgPath := fs.String("config", "", "the peering file")
	secretPath := fs.String("secret", "", "the peering secret (hex, at least 32 digits; owner-only)")
	previous := fs.String("previous", "", "the secret being replaced: still accepted until --grace after the switch")
	switchIn := fs.Duration("switch-in", time.Minute, "with --previous: the new secret signs from this long after now (time to reload every node)")
	grace := fs.Duration("grace", 10*time.Minute, "with --previous: the old secret is accepted this long after the switch")
	out := fs.String("out", "", "the directory to write NODE.keys into (default: the file's security.keys_dir)")
	joinSlots := fs.Int("join-slots", 0, "with discovery: etcd, write join-SIDE-SLOT.keys for slots 1..N not in the file, each that lane's keys alone, instead of join-SIDE.keys (the side's roots, from which a joining gateway can derive every lane's keys)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cfgPath == "" || *secretPath == "" {
		return errors.New("keys: --config and --secret are required")
	}
	p, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	dir := *out
	if dir == "" {
		dir = p.Security.KeysDir
	}
	if dir == "" {
		return fmt.Errorf("keys: no --out and no security.keys_dir in %s", *cfgPath)
	}
	now := time.Now().UTC().Truncate(time.Second)
	secret, err := readSecret(*secretPath)
	if err != nil {
		return err
	}
	gens := []keyring.Gen{keyring.FromSecret(secret, time.Time{}, time.Time{})}
	if *previous != "" {
		old, err := readSecret(*previous)
		if err != nil {
			return err
		}
		if keyring.ID(old) == keyring.ID(secret) {
			return fmt.Errorf("keys: the two secrets have the same key ID %#02x (one chance in 256): make another secret", keyring.ID(secret))
		}
		from := now.Add(*switchIn)
		gens = []keyring.Gen{keyring.FromSecret(secret, from, time.Time{}), keyring.FromSecret(old, time.Time{}, from.Add(*grace))}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if *joinSlots < 0 || *joinSlots > flowhash.MaxLaneID {
		return fmt.Errorf("keys: --join-slots %d: want 0..%d", *joinSlots, flowhash.MaxLaneID)
	}
	files, err := p.NodeKeys(gens, now, *joinSlots)
	if err != nil {
		return err
	}
	for _, name := range slices.Sorted(maps.Keys(files)) {
		path := filepath.Join(dir, name+".keys")
		if err := writeSecret(path, files[name]); err != nil {
			return err
		}
		fmt.Println(path)
	}
	if len(gens) > 1 {
		fmt.Printf("generation %#02x signs from %s; %#02x is accepted until %s: reload every node before the first\n",
			gens[0].ID, gens[0].From.Format(time.RFC3339), gens[1].ID, gens[1].Until.Format(time.RFC3339))
	}
	return nil
}

func readSecret(path string) ([]byte, error) {
	s, err := config.ReadSecretFile(path)
	if err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	}
	b, err := hex.DecodeString(s)
	if err != nil || len(b) < keyring.SecretMin {
		return nil, fmt.Errorf("keys: %s: want at least %d hex digits (`openssl rand -hex 32`)", path, 2*keyring.SecretMin)
	}
	return b, nil
}

// writeSecret replaces path with b, owner-only, in one rename so that a
// node reloading meanwhile reads the old file or the new, never half.
func writeSecret(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
