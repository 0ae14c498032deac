package membership

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"net/netip"
	"testing"
	"time"

	"github.com/clusterpeer/clusterpeer/config"
	"github.com/clusterpeer/clusterpeer/tunnel/wgkey"
)

func testRecord(t testing.TB) Record {
	k, err := wgkey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return Record{
		Version: recordVersion, Peering: "example", Side: config.SideA, Slot: 3, Name: "gw-a3", State: StateUp,
		PublicKey: k.Public().Base64(), Endpoint: "198.18.3.1:51820", Geneve: "10.1.0.23:6081", Weight: 1,
		Lease: 0x1234, Serial: 1, Issued: time.Unix(1700000000, 0).UTC(),
	}
}

func testKey(t testing.TB) ed25519.PrivateKey {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestSealOpen(t *testing.T) {
	key := testKey(t)
	pub := key.Public().(ed25519.PublicKey)
	r := testRecord(t)
	val, err := Seal(r, key)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Open(val, pub)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if got != r {
		t.Fatalf("Open = %+v, want %+v", got, r)
	}
	keys := Keys{Prefix: "/clusterpeer/", Peering: "example"}
	if err := keys.Check(keys.Slot(config.SideA, 3), 0x1234, got); err != nil {
		t.Fatalf("Check at its own key: %v", err)
	}

	other, _ := Seal(r, testKey(t))
	tampered := bytes.Replace(val, []byte(`\"weight\":1`), []byte(`\"weight\":9`), 1)
	if bytes.Equal(tampered, val) {
		tampered = bytes.Replace(val, []byte(`"weight":1`), []byte(`"weight":9`), 1)
	}
	if bytes.Equal(tampered, val) {
		t.Fatalf("test did not tamper with %s", val)
	}
	bad := r
	bad.Weight = 0
	invalid, _ := Seal(bad, key)
	for _, c := range []struct {
		name  string
		value []byte
		want  Reject
	}{
		{"another key", other, RejectSignature},
		{"tampered", tampered, RejectSignature},
		{"not json", []byte("gw-a3"), RejectMalformed},
		{"empty", nil, RejectMalformed},
		{"huge", bytes.Repeat([]byte{' '}, maxRecord+1), RejectMalformed},
		{"signed but invalid", invalid, RejectInvalid},
	} {
		if _, err := Open(c.value, pub); ReasonOf(err) != c.want {
			t.Errorf("%s: Open = %v, want %s", c.name, err, c.want)
		}
	}
	for _, c := range []struct {
		name  string
		key   string
		lease int64
		want  Reject
	}{
		{"copied to another slot", keys.Slot(config.SideA, 4), 0x1234, RejectKey},
		{"copied to the other side", keys.Slot(config.SideB, 3), 0x1234, RejectKey},
		{"another peering", Keys{Prefix: "/clusterpeer/", Peering: "other"}.Slot(config.SideA, 3), 0x1234, RejectKey},
		{"under another lease", keys.Slot(config.SideA, 3), 0x9999, RejectLease},
		{"under no lease", keys.Slot(config.SideA, 3), 0, RejectLease},
	} {
		if err := keys.Check(c.key, c.lease, got); ReasonOf(err) != c.want {
			t.Errorf("%s: Check = %v, want %s", c.name, err, c.want)
		}
	}
}

func TestKeysParse(t *testing.T) {
	k := Keys{Prefix: "/cp/", Peering: "p"}
	if side, slot, ok := k.Parse(k.Slot(config.SideB, 17)); !ok || side != config.SideB || slot != 17 {
		t.Fatalf("Parse(Slot(b, 17)) = %s %d %v", side, slot, ok)
	}
	for _, key := range []string{"/cp/p/gateways/c/0001", "/cp/p/gateways/a/1", "/cp/p/gateways/a/00x1", "/cp/q/gateways/a/0001", "/cp/p/gateways/a"} {
		if _, _, ok := k.Parse(key); ok {
			t.Errorf("Parse(%q) accepted", key)
		}
	}
}

// FuzzOpen: no stored value makes a reader panic, and whatever opens is
// a record the lanes can use.
func FuzzOpen(f *testing.F) {
	key := testKey(f)
	val, err := Seal(testRecord(f), key)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(val)
	f.Add([]byte(`{"record":{"v":1},"sig":""}`))
	f.Add([]byte(`{"record":null}`))
	pub := key.Public().(ed25519.PublicKey)
	f.Fuzz(func(t *testing.T, value []byte) {
		r, err := Open(value, pub)
		if err != nil {
			if ReasonOf(err) == "" {
				t.Fatalf("Open error without a reason: %v", err)
			}
			return
		}
		g := r.Gateway()
		if !g.Geneve.IsValid() || !g.Endpoint.IsValid() {
			t.Fatalf("opened %+v, gateway addresses invalid", r)
		}
	})
}

func mustAP(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
