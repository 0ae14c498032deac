package keyring

import (
	"strings"
	"testing"
	"time"
)

var secret = []byte("0123456789abcdef")

// TestKeysDistinctPerPath: every key of the tree differs from every
// other, and from the same path under another secret.
func TestKeysDistinctPerPath(t *testing.T) {
	g := FromSecret(secret, time.Time{}, time.Time{})
	other := FromSecret([]byte("fedcba9876543210"), time.Time{}, time.Time{})
	paths := []string{FlowPath}
	for _, side := range []string{"a", "b"} {
		for lane := range uint16(4) {
			paths = append(paths, ProbePath(side, lane))
			for sender := range uint8(2) {
				paths = append(paths, GenevePath(side, sender, lane))
			}
		}
	}
	seen := map[Key]string{}
	for _, p := range paths {
		if !validPath(p) {
			t.Fatalf("%s: not a valid path", p)
		}
		k, ok := g.Key(p)
		if !ok {
			t.Fatalf("%s: not derivable from the root", p)
		}
		if prev, dup := seen[k]; dup {
			t.Fatalf("%s and %s share a key", prev, p)
		}
		seen[k] = p
		if k2, _ := other.Key(p); k2 == k {
			t.Fatalf("%s: the same under another secret", p)
		}
	}
}

// TestOnlyHoldsItsSubtree: a node given lane 1's probe keys derives
// those and nothing else; one given a side's root derives every lane
// of it, the same keys the secret gives.
func TestOnlyHoldsItsSubtree(t *testing.T) {
	g := FromSecret(secret, time.Time{}, time.Time{})
	gw, err := g.Only(ProbePath("a", 1), ProbePath("b", 1))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{FlowPath, ProbePath("a", 2), ProbePath("a", 0), GenevePath("a", 0, 1), ""} {
		if gw.Has(p) {
			t.Errorf("lane 1's gateway can derive %q", p)
		}
	}
	demux, _ := g.Only(FlowPath, ProbePath("a", 0))
	for _, p := range []string{ProbePath("a", 1), ProbePath("a", 77), FlowPath} {
		want, _ := g.Key(p)
		if got, ok := demux.Key(p); !ok || got != want {
			t.Errorf("%s from the side's root: %x, %v; want %x", p, got, ok, want)
		}
	}
	if demux.Has(ProbePath("b", 1)) {
		t.Error("side a's demux can derive side b's probe keys")
	}
	if _, err := g.Only("probe/c"); err == nil {
		t.Error("Only accepted a path that names no key")
	}
}

func TestFileRoundTrip(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 6, 0, 0, 0, time.UTC)
	newer, _ := FromSecret([]byte("fedcba9876543210"), t0.Add(time.Minute), time.Time{}).Only(ProbePath("a", 1), ProbePath("b", 1))
	older, _ := FromSecret(secret, time.Time{}, t0.Add(time.Hour)).Only(ProbePath("a", 1), ProbePath("b", 1))
	// The file lists the older first; Parse still returns newest first.
	r := &Ring{Gens: []Gen{older, newer}}
	b := r.Marshal("keys of gw-a1", "second line")
	got, err := Parse(b)
	if err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	if len(got.Gens) != 2 || got.Gens[0].ID != newer.ID || got.Gens[1].ID != older.ID || !got.Gens[1].Until.Equal(older.Until) {
		t.Fatalf("parsed %+v", got.Gens)
	}
	for i, g := range []Gen{newer, older} {
		for _, p := range []string{ProbePath("a", 1), ProbePath("b", 1)} {
			want, _ := g.Key(p)
			if k, ok := got.Gens[i].Key(p); !ok || k != want {
				t.Errorf("generation %d, %s: %x %v, want %x", i, p, k, ok, want)
			}
		}
	}
	if err := got.Check(ProbePath("a", 1)); err != nil {
		t.Error(err)
	}
	if err := got.Check(FlowPath); err == nil || !strings.Contains(err.Error(), "no key for flow") {
		t.Errorf("Check(flow) = %v, want it to say the flow key is missing", err)
	}
	if s := got.Signing(t0); s == nil || s.ID != older.ID {
		t.Errorf("signing before the switch: %+v", s)
	}
	if s := got.Signing(t0.Add(2 * time.Minute)); s == nil || s.ID != newer.ID {
		t.Errorf("signing after the switch: %+v", s)
	}
	if got.Accepted(older.ID, t0.Add(2*time.Hour)) != nil {
		t.Error("the older generation is accepted past its until")
	}
	if got.Accepted(newer.ID, t0) == nil {
		t.Error("the newer generation is not accepted before it signs")
	}
}

func TestParseRefuses(t *testing.T) {
	hex := strings.Repeat("ab", KeyLen)
	for _, c := range []struct{ name, file, want string }{
		{"key first", "key flow " + hex, "line 1: a key before any generation"},
		{"bad path", "generation 1 from - until -\nkey probe/c/1 " + hex, `line 2: "probe/c/1" names no key`},
		{"lane 0", "generation 1 from - until -\nkey probe/a/0 " + hex, "names no key"},
		{"short key", "generation 1 from - until -\nkey flow abcd", "want 64 hex digits"},
		{"bad id", "generation 300 from - until -", "key ID"},
		{"bad time", "generation 1 from yesterday until -", `from "yesterday"`},
		{"twice", "generation 1 from - until -\nkey flow " + hex + "\nkey flow " + hex, "given twice"},
		{"unknown", "secret " + hex, "unknown line"},
	} {
		_, err := Parse([]byte(c.file))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	r, err := Parse([]byte("generation 1 from - until -\ngeneration 0x01 from - until -\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Check(); err == nil || !strings.Contains(err.Error(), "two generations") {
		t.Errorf("two generations with one ID: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	r := &Ring{Gens: []Gen{FromSecret(secret, time.Time{}, time.Time{})}}
	f.Add(r.Marshal("c"))
	f.Add([]byte("generation 0x10 from 2026-12-07T06:00:00Z until -\nkey probe/a/1 " + strings.Repeat("00", KeyLen)))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := Parse(b)
		if err != nil {
			return
		}
		// What parses writes out and parses again to the same keys.
		again, err := Parse(r.Marshal())
		if err != nil || len(again.Gens) != len(r.Gens) {
			t.Fatalf("re-parse: %v", err)
		}
		for i := range r.Gens {
			for _, p := range r.Gens[i].Paths() {
				k1, _ := r.Gens[i].Key(p)
				k2, ok := again.Gens[i].Key(p)
				if !ok || k1 != k2 {
					t.Fatalf("generation %d, %q changed", i, p)
				}
			}
		}
	})
}

func TestExpiry(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	a, b := []byte("secret a 0123456789abcdef012345"), []byte("secret b 0123456789abcdef012345")
	ending := &Ring{Gens: []Gen{FromSecret(a, t0, t0.Add(48*time.Hour)), FromSecret(b, time.Time{}, t0.Add(time.Hour))}}
	if got := ending.Expiry(); !got.Equal(t0.Add(48 * time.Hour)) {
		t.Errorf("two ending generations: expiry %s, want the later end", got)
	}
	open := &Ring{Gens: []Gen{FromSecret(a, t0, time.Time{}), FromSecret(b, time.Time{}, t0.Add(time.Hour))}}
	if got := open.Expiry(); !got.IsZero() {
		t.Errorf("a generation without end: expiry %s, want none", got)
	}
}
