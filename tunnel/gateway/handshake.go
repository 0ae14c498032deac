package gateway

import (
	"fmt"
	"time"

	"golang.zx2c4.com/wireguard/device"
)

// HandshakeGrace is how long a peer may go without its first handshake
// before the lane is reported as having none: two of wireguard-go's
// handshake retries (RekeyTimeout, 5 s) failed. A peer that answers
// completes its first handshake within milliseconds of the first packet,
// and the demux's probes send one every few milliseconds.
const HandshakeGrace = 2 * device.RekeyTimeout

// HandshakeWatch judges from the peer's last WireGuard handshake whether
// the lane has a session at all: wireguard-go drops a session's keys
// RejectAfterTime (180 s) after its handshake, and with the probes
// crossing the lane all the time, a working lane renews its session
// every two minutes. What no handshake means, the demuxes learn from the
// gateway's notice (probe.DiagNoHandshake), not by silence alone.
type HandshakeWatch struct {
	key   string
	since time.Time // when this peer key was first seen
}

// Check returns why the lane has no valid session with peer p at now, or
// "" if it has one (or the peer is new, within HandshakeGrace).
func (w *HandshakeWatch) Check(p PeerStatus, now time.Time) string {
	if p.PublicKey != w.key {
		w.key, w.since = p.PublicKey, now
	}
	switch {
	case p.LastHandshake.IsZero():
		if wait := now.Sub(w.since); wait >= HandshakeGrace {
			return fmt.Sprintf("no handshake with peer %s in %s", short(p.PublicKey), wait.Round(time.Second))
		}
	case now.Sub(p.LastHandshake) >= device.RejectAfterTime:
		return fmt.Sprintf("last handshake with peer %s %s ago: its session has expired", short(p.PublicKey), now.Sub(p.LastHandshake).Round(time.Second))
	}
	return ""
}

// short is a public key as logs name it: its first 8 characters.
func short(key string) string {
	if len(key) > 8 {
		return key[:8] + "..."
	}
	return key
}
