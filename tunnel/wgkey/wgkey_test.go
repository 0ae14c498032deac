package wgkey

import (
	"encoding/hex"
	"os/exec"
	"strings"
	"testing"
)

// RFC 7748 section 6.1: Alice's key pair.
func TestPublicRFC7748(t *testing.T) {
	var priv Key
	hex.Decode(priv[:], []byte("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
	if got := hex.EncodeToString(func() []byte { p := priv.Public(); return p[:] }()); got != "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a" {
		t.Errorf("public key %s", got)
	}
}

func TestGenerateParseRoundTrip(t *testing.T) {
	k, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	if k[0]&7 != 0 || k[31]&0x80 != 0 || k[31]&0x40 == 0 {
		t.Errorf("key not clamped: %x", k)
	}
	back, err := Parse(k.Base64())
	if err != nil || back != k {
		t.Errorf("round trip: %v", err)
	}
	for _, bad := range []string{"", "abc", k.Base64()[:40], strings.Repeat("A", 43) + "=="} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}

// TestMatchesWG: `wg pubkey` agrees, where wireguard-tools is installed.
func TestMatchesWG(t *testing.T) {
	if _, err := exec.LookPath("wg"); err != nil {
		t.Skip("wg (wireguard-tools) not installed")
	}
	k, _ := Generate()
	cmd := exec.Command("wg", "pubkey")
	cmd.Stdin = strings.NewReader(k.Base64() + "\n")
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(out)); got != k.Public().Base64() {
		t.Errorf("wg pubkey %s, we %s", got, k.Public().Base64())
	}
}
