// Package flowhash decides which lane every packet takes.
//
// Packets flow through it as: raw IP bytes -> Tuple (Decode) -> canonical
// tuple (Hasher.Canonical: mode and symmetric option applied) -> keyed hash
// (SipHash-1-3) -> flow pin, or else the Maglev table -> LaneID.
package flowhash
