// Package flowhash decides which lane every packet takes. Both the
// userspace demux and the XDP fast path follow the definitions here, and
// testdata/flowhash-vectors.json holds them to it.
//
// What flows through it:
//
//	raw IP packet -> Tuple.Decode -> Hasher.Words (mode, symmetry applied)
//	  -> keyed hash (SipHash-1-3) -> flow pin, else Maglev table -> LaneID
//
// A Selector does the whole chain against an immutable Snapshot of the lane
// set, swapped atomically when lanes change; readers never wait.
//
// # The tuple
//
// Decode reads IPv4 (any IHL, options skipped) and IPv6 (hop-by-hop,
// routing, destination options and fragment headers walked, at most
// MaxIPv6ExtHeaders), then TCP, UDP and SCTP ports. ICMP and ICMPv6 echo
// request and reply carry the identifier in both ports, so request and
// reply stay together. ICMP errors (unreachable and fragmentation needed,
// packet too big, time exceeded, parameter problem) are hashed as the
// reverse of the packet they quote: an error about a packet from H to X
// travels toward H, as the X-to-H half of the flow does, and so takes that
// half's lane (with the symmetric option, both halves' lane). Other
// protocols hash on addresses and protocol. Anything malformed is a Drop
// with a reason, never a panic.
//
// # Fragments
//
// Only the first fragment of a datagram carries ports, so every fragment
// (IPv4 MF or offset, IPv6 fragment header other than an atomic one) hashes
// with ports zero: addresses, and the protocol (for IPv6, the fragment
// header's Next Header, the same in every fragment). All fragments of a
// datagram therefore take one lane, and fragmented datagrams between two
// hosts keep their order among themselves. The price: a flow that mixes
// fragmented and whole datagrams (a UDP application sending some datagrams
// above the path MTU) hashes the two kinds apart, so a fragmented datagram
// may take another lane than its whole neighbours and arrive out of order
// relative to them. TCP is unaffected (it sets DF and does PMTU discovery);
// a UDP application that needs order across sizes should use the 3-tuple
// mode, where whole and fragmented datagrams hash alike.
//
// # The hash
//
// The hash is SipHash-1-3 with the cluster's 128-bit Key over a fixed
// 40-byte message, the canonical tuple:
//
//	Src[16] Dst[16] SrcPort[2] DstPort[2] Proto[1] 0 0 0
//
// addresses as 16 bytes (IPv4 as ::ffff:a.b.c.d), ports big-endian as on
// the wire. SipHash reads the message as five little-endian 64-bit words
// (Hasher.Words), so on a little-endian machine the BPF program loads them
// straight from the packet. The canonical tuple first applies the Mode:
// 3-tuple zeroes the ports, 2-tuple the ports and protocol. Then, with the
// symmetric option, the endpoint whose (address bytes, port) compares
// smaller comes first, so both directions hash the same.
//
// Why SipHash-1-3: the key exists so that outsiders cannot craft many flows
// that land on one lane, which needs a keyed pseudo-random function, not
// just a seeded mix. jhash with a secret seed was built for speed, not to
// resist an adversary; SipHash was designed against exactly this kind of
// hash flooding. SipHash-1-3 is the kernel's hsiphash on 64-bit, has no
// tables, and on this fixed length is 5 + 1 compression rounds and 3
// finalization rounds of add-rotate-xor: straight-line code for the BPF
// verifier. It is checked
// against the published SipHash-1-3 and SipHash-2-4 vectors through a
// byte-wise reference.
//
// # The Maglev table
//
// BuildTable is the Maglev algorithm (Eisenbud et al., NSDI'16) with
// katran's weights: a prime-sized table, each lane filling slots along its
// own permutation (offset and skip from the keyed hash of its ID, so the
// table depends on (lane IDs, weights, key, size) only, never on config
// order). Lanes are named by stable LaneIDs, 1..MaxLaneID; 0 is "no lane".
// The size must be prime and at least MinSlotsPerLane x lanes.
//
// # Flow pins
//
// Pins remembers each recent flow's lane (keyed by the canonical tuple, so
// a symmetric flow has one pin) with GWLB's idle timeouts, 350 s for TCP
// and 120 s otherwise. A pin holds while the lane's pin generation in the
// snapshot matches the pin's: a lane that goes down gets generation 0, so
// all its pins die in one store, and its flows re-hash to the lanes that
// are up; a lane that comes back gets a new generation, so the flows that
// moved away stay where they went. Adding a lane, or a lane coming back,
// moves no flow that has a pin. A draining lane is out of the table but
// keeps its pins.
//
// The pin table is indexed by SipHash-1-3 of the same words under a key
// of the process's own (random at New), not the flow-hash key: a flow
// that has a pin costs one hash, as before, and a new flow two. So the
// flow-hash key can change under running flows (SetKey, a rotated
// secret): established flows keep their pins and lanes, new ones follow
// the new key's table.
//
// Measured figures are in docs/flowhash.md.
package flowhash
