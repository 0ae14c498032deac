// Package keyring holds a node's keys, one per purpose, derived from the
// peering's secret, and the generations of that secret while it is
// rotated. What flows through it: a secret (or a node's key file) in,
// the key of one purpose out (the flow hash, one lane's probes in one
// direction, one demux-gateway pair's GENEVE tags).
//
// Keys form a tree, each derived from its parent with HKDF-SHA256 (RFC
// 5869) and its full path as the info string:
//
//	secret
//	├── flow                  the flow hash and Maglev key (demuxes)
//	├── probe/a, probe/b      the probes of side a's (b's) demux
//	│   └── probe/a/3         ... on lane 3 (lane 3's gateways)
//	└── geneve/a/0            the GENEVE tags of side a's demux (1: its standby)
//	    └── geneve/a/0/3      ... into lane 3 (lane 3's side-a gateway)
//
// A node holds only the keys it needs (`demux keys` writes each node its
// file): a key derives its subtree and nothing else, so a gateway holds
// neither the flow-hash key nor another lane's probe keys. A node that is
// given the secret itself (hash.key_file) holds the root and derives the
// same keys.
//
// A Ring is a node's generations, newest first. Each has a key ID (on the
// wire: probes and GENEVE tags say which generation signed them), a time
// from which it signs and a time until which it is accepted, so a secret
// is rotated by reloading every node with a ring that holds both: the
// new one is accepted at once and signs from its From time on, the old
// one is accepted until its Until.
package keyring

import (
	"crypto/hkdf"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// KeyLen is the length of every key in the tree.
const KeyLen = 32

// Key is one node of the tree.
type Key [KeyLen]byte

// SecretMin is the shortest peering secret accepted (128 bits).
const SecretMin = 16

// derive returns the child key name of parent, whose path is parentPath.
func derive(parent Key, path string) Key {
	b, err := hkdf.Key(sha256.New, parent[:], nil, "clusterpeer key v1 "+path, KeyLen)
	if err != nil {
		panic(err) // only for lengths HKDF-SHA256 cannot produce; 32 it can
	}
	return Key(b)
}

// Root is the tree's root of a secret.
func Root(secret []byte) Key {
	b, err := hkdf.Extract(sha256.New, secret, []byte("clusterpeer peering secret"))
	if err != nil {
		panic(err)
	}
	return Key(b)
}

// ID is the key ID of a secret's generation: the first byte of a key
// derived for that alone, so that every node names it alike.
func ID(secret []byte) uint8 {
	k := derive(Root(secret), "key-id")
	return k[0]
}

// Paths of the tree.
const FlowPath = "flow"

// ProbePath is the probes of side's demux on lane (lane 0: the side's
// root, which derives every lane's).
func ProbePath(side string, lane uint16) string {
	if lane == 0 {
		return "probe/" + side
	}
	return "probe/" + side + "/" + strconv.Itoa(int(lane))
}

// GenevePath is the GENEVE tags side's demux sender (0, 1: its standby)
// seals into lane (0: the sender's root).
func GenevePath(side string, sender uint8, lane uint16) string {
	p := "geneve/" + side + "/" + strconv.Itoa(int(sender))
	if lane == 0 {
		return p
	}
	return p + "/" + strconv.Itoa(int(lane))
}

// validPath reports whether path names a key of the tree.
func validPath(path string) bool {
	f := strings.Split(path, "/")
	side := func(s string) bool { return s == "a" || s == "b" }
	num := func(s string, max int) bool {
		n, err := strconv.Atoi(s)
		return err == nil && n >= 0 && n <= max && strconv.Itoa(n) == s
	}
	switch {
	case path == FlowPath:
		return true
	case f[0] == "probe" && (len(f) == 2 || len(f) == 3):
		return side(f[1]) && (len(f) == 2 || (num(f[2], 65535) && f[2] != "0"))
	case f[0] == "geneve" && (len(f) == 3 || len(f) == 4):
		return side(f[1]) && num(f[2], 1) && (len(f) == 3 || (num(f[3], 65535) && f[3] != "0"))
	}
	return false
}

// Gen is one generation of the peering secret, as far as a node holds it.
type Gen struct {
	ID    uint8
	From  time.Time // signs from then on (zero: at once)
	Until time.Time // accepted until then (zero: until a newer ring leaves it out)
	held  map[string]Key
}

// FromSecret is the generation of a secret that holds all of its tree.
func FromSecret(secret []byte, from, until time.Time) Gen {
	return Gen{ID: ID(secret), From: from, Until: until, held: map[string]Key{"": Root(secret)}}
}

// Has reports whether g can give the key at path.
func (g Gen) Has(path string) bool {
	_, ok := g.Key(path)
	return ok
}

// Key returns the key at path, derived from the nearest key g holds on
// the way from the root; false if g holds none of them.
func (g Gen) Key(path string) (Key, bool) {
	if k, ok := g.held[path]; ok {
		return k, true
	}
	f := strings.Split(path, "/")
	for i := len(f) - 1; i >= 0; i-- {
		parent := strings.Join(f[:i], "/")
		k, ok := g.held[parent]
		if !ok {
			continue
		}
		for j := i; j < len(f); j++ {
			k = derive(k, strings.Join(f[:j+1], "/"))
		}
		return k, true
	}
	return Key{}, false
}

// Only returns the generation cut down to the keys at paths (each must
// be derivable from g): what one node needs of it.
func (g Gen) Only(paths ...string) (Gen, error) {
	out := Gen{ID: g.ID, From: g.From, Until: g.Until, held: map[string]Key{}}
	for _, p := range paths {
		if !validPath(p) {
			return Gen{}, fmt.Errorf("keyring: %q names no key", p)
		}
		k, ok := g.Key(p)
		if !ok {
			return Gen{}, fmt.Errorf("keyring: generation %#02x cannot give %s", g.ID, p)
		}
		out.held[p] = k
	}
	return out, nil
}

// Paths lists the keys g holds (the root as "").
func (g Gen) Paths() []string {
	var ps []string
	for p := range g.held {
		ps = append(ps, p)
	}
	slices.Sort(ps)
	return ps
}

// Ring is a node's generations, newest (highest From) first.
type Ring struct {
	Gens []Gen
}

// String lists the generations, newest first, as logs and reloads say
// them: "0x5c (signs from 2026-12-07T06:01:00Z) 0x1a (until ...)".
func (r *Ring) String() string {
	var b strings.Builder
	for i, g := range r.Gens {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%#02x", g.ID)
		switch {
		case !g.From.IsZero() && !g.Until.IsZero():
			fmt.Fprintf(&b, " (from %s until %s)", stamp(g.From), stamp(g.Until))
		case !g.From.IsZero():
			fmt.Fprintf(&b, " (signs from %s)", stamp(g.From))
		case !g.Until.IsZero():
			fmt.Fprintf(&b, " (until %s)", stamp(g.Until))
		}
	}
	return b.String()
}

// ErrNoKey: no generation the ring accepts gives the key asked for.
var ErrNoKey = errors.New("keyring: no such key")

// Signing returns the generation to sign with at now: the newest whose
// From has come and whose Until has not passed.
func (r *Ring) Signing(now time.Time) *Gen {
	for i := range r.Gens {
		g := &r.Gens[i]
		if !now.Before(g.From) && (g.Until.IsZero() || now.Before(g.Until)) {
			return g
		}
	}
	return nil
}

// Accepted returns generation id if it is accepted at now (its Until has
// not passed: a generation that does not sign yet is accepted already).
func (r *Ring) Accepted(id uint8, now time.Time) *Gen {
	for i := range r.Gens {
		g := &r.Gens[i]
		if g.ID == id && (g.Until.IsZero() || now.Before(g.Until)) {
			return g
		}
	}
	return nil
}

// Expiry is when the ring's last generation stops being accepted: after
// it the node has no key at all. Zero: a generation has no end.
func (r *Ring) Expiry() time.Time {
	var last time.Time
	for _, g := range r.Gens {
		if g.Until.IsZero() {
			return time.Time{}
		}
		if g.Until.After(last) {
			last = g.Until
		}
	}
	return last
}

// NextChange is the earliest time after now at which a generation starts
// to sign or stops being accepted (zero: none is to come); a node's
// timers wake then.
func (r *Ring) NextChange(now time.Time) time.Time {
	var next time.Time
	for _, g := range r.Gens {
		for _, t := range []time.Time{g.From, g.Until} {
			if t.After(now) && (next.IsZero() || t.Before(next)) {
				next = t
			}
		}
	}
	return next
}

// Flow returns the flow-hash key of the signing generation at now (16
// bytes: a SipHash key; the Maglev permutations are keyed by it too).
func (r *Ring) Flow(now time.Time) ([16]byte, error) {
	g := r.Signing(now)
	if g == nil {
		return [16]byte{}, ErrNoKey
	}
	k, ok := g.Key(FlowPath)
	if !ok {
		return [16]byte{}, fmt.Errorf("%w: %s", ErrNoKey, FlowPath)
	}
	return [16]byte(k[:16]), nil
}

// Check reports what is wrong with r as one node's ring: no generation,
// two with one ID, or one without a key that node needs (needs are paths).
func (r *Ring) Check(needs ...string) error {
	if len(r.Gens) == 0 {
		return errors.New("no key generation")
	}
	seen := map[uint8]bool{}
	for i := range r.Gens {
		g := &r.Gens[i]
		if seen[g.ID] {
			return fmt.Errorf("two generations with key ID %#02x", g.ID)
		}
		seen[g.ID] = true
		if !g.Until.IsZero() && !g.From.IsZero() && !g.From.Before(g.Until) {
			return fmt.Errorf("generation %#02x: from %s is not before until %s", g.ID, g.From.Format(time.RFC3339), g.Until.Format(time.RFC3339))
		}
		for _, p := range needs {
			if !g.Has(p) {
				return fmt.Errorf("generation %#02x has no key for %s", g.ID, p)
			}
		}
	}
	return nil
}
