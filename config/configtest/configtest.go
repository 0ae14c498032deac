// Package configtest hands tests the annotated example peering
// (config/testdata/peering.yaml) with fresh public keys and its hash key
// file, edited as each test needs.
package configtest

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/clusterpeer/clusterpeer/tunnel/wgkey"
)

// Example returns the example peering, edited by the old/new pairs, with
// fresh public keys, and writes its hash key file into dir.
func Example(t testing.TB, dir string, edits ...string) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	b, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "testdata", "peering.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for i := 0; i+1 < len(edits); i += 2 {
		if !strings.Contains(s, edits[i]) {
			t.Fatalf("example lacks %q", edits[i])
		}
		s = strings.Replace(s, edits[i], edits[i+1], 1)
	}
	for _, name := range []string{"A1", "B1", "A2", "B2"} {
		k, err := wgkey.Generate()
		if err != nil {
			t.Fatal(err)
		}
		s = strings.ReplaceAll(s, "PUBKEY_"+name, k.Public().Base64())
	}
	if err := os.WriteFile(filepath.Join(dir, "hash.key"), []byte("00112233445566778899aabbccddeeff\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}
