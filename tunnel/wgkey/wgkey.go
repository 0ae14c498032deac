// Package wgkey handles WireGuard keys as `wg` writes them: 32 bytes of
// Curve25519, base64 in files and configs, hex on wireguard-go's UAPI.
// Private keys never leave through String, logs or status; only
// UAPIHex writes them, to the device itself.
package wgkey

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"

	"golang.org/x/crypto/curve25519"
)

// Key is a public or private Curve25519 key.
type Key [32]byte

// Parse reads a base64 key, as `wg genkey` and `wg pubkey` print it.
func Parse(s string) (Key, error) {
	var k Key
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != len(k) {
		return k, fmt.Errorf("not a WireGuard key: want 44 base64 characters encoding 32 bytes")
	}
	copy(k[:], b)
	return k, nil
}

// Generate makes a new private key, clamped as RFC 7748 says.
func Generate() (Key, error) {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return k, fmt.Errorf("generate key: %w", err)
	}
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
	return k, nil
}

// Public derives the public key of a private key.
func (k Key) Public() Key {
	var pub Key
	curve25519.ScalarBaseMult((*[32]byte)(&pub), (*[32]byte)(&k))
	return pub
}

// Base64 is the form files and configs hold.
func (k Key) Base64() string { return base64.StdEncoding.EncodeToString(k[:]) }

// UAPIHex is the form wireguard-go's configuration protocol takes.
func (k Key) UAPIHex() string { return hex.EncodeToString(k[:]) }

// IsZero reports whether the key is unset.
func (k Key) IsZero() bool { return k == Key{} }
