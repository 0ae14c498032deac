package gateway

import (
	"strings"
	"testing"
	"time"
)

// The handshake rule: a new peer gets HandshakeGrace for its first
// handshake; a session expires RejectAfterTime after its handshake; a
// new key starts the grace again.
func TestHandshakeWatch(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	var w HandshakeWatch
	peer := PeerStatus{PublicKey: "AAAAAAAAAAAAkey1"}
	for _, c := range []struct {
		name string
		p    PeerStatus
		at   time.Duration
		want string // a substring; "" for no condition
	}{
		{"new peer, no handshake yet", peer, 0, ""},
		{"still within the grace", peer, HandshakeGrace - time.Second, ""},
		{"grace over, none", peer, HandshakeGrace, "no handshake with peer AAAAAAAA... in 10s"},
		{"a handshake", PeerStatus{PublicKey: peer.PublicKey, LastHandshake: t0.Add(11 * time.Second)}, 12 * time.Second, ""},
		{"two minutes on, not renewed yet", PeerStatus{PublicKey: peer.PublicKey, LastHandshake: t0.Add(11 * time.Second)}, 131 * time.Second, ""},
		{"expired", PeerStatus{PublicKey: peer.PublicKey, LastHandshake: t0.Add(11 * time.Second)}, 191 * time.Second, "3m0s ago: its session has expired"},
		{"a new key: its own grace", PeerStatus{PublicKey: "BBBBBBBBBBBBkey2"}, 200 * time.Second, ""},
		{"the new key's grace over", PeerStatus{PublicKey: "BBBBBBBBBBBBkey2"}, 210 * time.Second, "no handshake with peer BBBBBBBB..."},
	} {
		got := w.Check(c.p, t0.Add(c.at))
		if (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
}
