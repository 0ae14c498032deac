//go:build linux

package xdp

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestReasonNamesFollowTheCEnum: the counters are indexed by demux.c's
// enum reason, so reasonNames must list its members, in order, by the
// same names (R_NOT_IP is "not_ip").
func TestReasonNamesFollowTheCEnum(t *testing.T) {
	src, err := os.ReadFile("demux.c")
	if err != nil {
		t.Fatal(err)
	}
	body := regexp.MustCompile(`(?s)enum reason \{(.*?)\};`).FindSubmatch(src)
	if body == nil {
		t.Fatal("demux.c: no enum reason")
	}
	var enum []string
	for _, m := range regexp.MustCompile(`(?m)^\s*R_([A-Z0-9_]+)\s*,`).FindAllSubmatch(body[1], -1) {
		if name := string(m[1]); name != "NUM" {
			enum = append(enum, strings.ToLower(name))
		}
	}
	if strings.Join(enum, " ") != strings.Join(reasonNames[:], " ") {
		t.Errorf("reasonNames do not follow demux.c's enum reason:\n  C:  %v\n  Go: %v", enum, reasonNames)
	}
	for _, name := range reasonNames {
		if v := Verdict(name); v != "sent" && v != "passed" && v != "dropped" {
			t.Errorf("reason %s: verdict %q", name, v)
		}
	}
}
