package keyring

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// A node's key file, as `demux keys` writes it (owner-only, like every
// secret file): a generation line, then the keys of that generation,
// newest generation first; '#' starts a comment.
//
//	# clusterpeer keys of gw-a1 (peering cpdemo)
//	generation 0x5c from 2026-12-07T06:00:00Z until -
//	key probe/a/1 9f2c...(64 hex digits)
//	key probe/b/1 41d0...

// MaxFile bounds a key file: a node holds a few keys per generation.
const MaxFile = 64 << 10

// Marshal writes r in the file format, headed by comment lines.
func (r *Ring) Marshal(comment ...string) []byte {
	var b bytes.Buffer
	for _, c := range comment {
		fmt.Fprintf(&b, "# %s\n", c)
	}
	for i := range r.Gens {
		g := &r.Gens[i]
		fmt.Fprintf(&b, "generation %#02x from %s until %s\n", g.ID, stamp(g.From), stamp(g.Until))
		for _, p := range g.Paths() {
			name := p
			if name == "" {
				name = "root"
			}
			k := g.held[p]
			fmt.Fprintf(&b, "key %s %s\n", name, hex.EncodeToString(k[:]))
		}
	}
	return b.Bytes()
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339Nano) // to the nanosecond: a switch must not come early
}

func parseStamp(s string) (time.Time, error) {
	if s == "-" {
		return time.Time{}, nil
	}
	return time.Parse(time.RFC3339, s)
}

// Parse reads a key file. Errors name the line. The generations come
// back newest first, whatever their order in the file.
func Parse(b []byte) (*Ring, error) {
	if len(b) > MaxFile {
		return nil, fmt.Errorf("longer than %d bytes; a key file holds a few keys", MaxFile)
	}
	r := &Ring{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = strings.TrimSpace(line[:i])
		}
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		bad := func(format string, a ...any) error {
			return fmt.Errorf("line %d: %s", n, fmt.Sprintf(format, a...))
		}
		switch f[0] {
		case "generation":
			if len(f) != 6 || f[2] != "from" || f[4] != "until" {
				return nil, bad("want `generation ID from TIME|- until TIME|-`")
			}
			id, err := strconv.ParseUint(f[1], 0, 8)
			if err != nil {
				return nil, bad("key ID %q: want a byte (0x00-0xff)", f[1])
			}
			from, err := parseStamp(f[3])
			if err != nil {
				return nil, bad("from %q: want RFC 3339 time or -", f[3])
			}
			until, err := parseStamp(f[5])
			if err != nil {
				return nil, bad("until %q: want RFC 3339 time or -", f[5])
			}
			r.Gens = append(r.Gens, Gen{ID: uint8(id), From: from, Until: until, held: map[string]Key{}})
		case "key":
			if len(f) != 3 {
				return nil, bad("want `key PATH HEX`")
			}
			if len(r.Gens) == 0 {
				return nil, bad("a key before any generation line")
			}
			path := f[1]
			if path == "root" {
				path = ""
			} else if !validPath(path) {
				return nil, bad("%q names no key (flow, probe/SIDE[/LANE], geneve/SIDE/SENDER[/LANE], root)", f[1])
			}
			raw, err := hex.DecodeString(f[2])
			if err != nil || len(raw) != KeyLen {
				return nil, bad("key %s: want %d hex digits", f[1], 2*KeyLen)
			}
			g := &r.Gens[len(r.Gens)-1]
			if _, dup := g.held[path]; dup {
				return nil, bad("key %s given twice", f[1])
			}
			g.held[path] = Key(raw)
		default:
			return nil, bad("unknown line %q: want generation or key", f[0])
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	slices.SortStableFunc(r.Gens, func(a, b Gen) int { return b.From.Compare(a.From) })
	return r, nil
}
