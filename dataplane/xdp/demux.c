//go:build ignore

// demux.c is the demux's XDP fast path. It makes the choice the Go demux
// makes (flowhash: tuple, keyed SipHash-1-3, flow pin, else Maglev table)
// and sends the packet inside GENEVE to the lane's local gateway, in the
// driver. Stages:
//
//   ethernet to us? -> IPv4/IPv6 header, destination in the remote network?
//     -> anything this program does not handle: XDP_PASS (the kernel routes
//        it into the userspace demux's TUN, which hashes by the same rules)
//     -> tuple words -> its pin (lane, outer source port), else SipHash-1-3
//        -> Maglev slot -> lane (then pinned)
//     -> TTL/hop limit - 1, trim link padding -> (sealed: counter, SipHash-2-4
//        tag over header and inner packet) -> push outer Ethernet, IPv4,
//        UDP, GENEVE -> XDP_TX (gateway on this interface) or redirect
//
// Passed to userspace: IPv4 with a bad header checksum (the kernel drops
// it), IPv4 options, fragments, IPv6 extension headers,
// ICMP errors, protocols other than TCP/UDP/SCTP/ICMP, TTL <= 1 (the
// kernel sends time exceeded), packets over the lane MTU (userspace sends
// the ICMP error), lanes without a resolved gateway, anything malformed,
// and, for a moment after a lane change, packets of flows that have one
// still with the userspace demux (the hand-over ledger, below). Every
// verdict is counted by reason in a per-CPU array.
//
// The snapshot (per-lane pin generations and the Maglev table) is one
// inner map, swapped whole by userspace, so a packet sees one consistent
// lane set. Little-endian only: the hash words are the packet's own bytes
// loaded as little-endian 64-bit words, as flowhash defines them.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

char __license[] SEC("license") = "Dual MIT/GPL";

#define LANE_SLOTS 4096 // lane IDs 1..4095; 0 is "no lane"
#define GENEVE_LEN 8
#define ENCAP4_LEN (sizeof(struct iphdr) + 8 + GENEVE_LEN)
#define SEAL_OPT_LEN 24 // geneveauth.OptionLen: the authentication option
#define SEAL_MAX_LEN 9216 // the largest inner packet a sealed lane may carry

#define PROTO_SCTP 132
#define ETH_ALEN_ 6
#define KEY_WORDS 4 // the snapshot's flow-hash key, in 32-bit map values
#define KEY_EPOCH (LANE_SLOTS + table_size + KEY_WORDS) // the key's epoch's slot in the snapshot

// Set by the loader before the program is loaded: constants to the
// verifier, so the mode and symmetric branches fold away.
volatile const __u64 key0, key1;     // the flow-hash key at load (xdp_hash; xdp_demux reads its snapshot's)
volatile const __u32 table_size = 1; // Maglev table slots (a prime)
volatile const __u32 hash_mode;      // 0: 5-tuple, 1: 3-tuple, 2: 2-tuple
volatile const __u32 symmetric;      // order endpoints so both directions hash alike
volatile const __u32 lane_mtu = 1420; // largest inner packet a lane carries
volatile const __u32 vni;            // GENEVE virtual network identifier
volatile const __u32 pin_tcp_idle = 350, pin_other_idle = 120; // seconds
volatile const __u8 ingress_mac[ETH_ALEN_]; // frames to other addresses are not ours
volatile const __u32 sealed;         // security.geneve_auth: seal every frame (dataplane/geneveauth)
volatile const __u32 seal_sender;    // this demux's sender number in the option
// The remote network, when it has at most REMOTE_INLINE prefixes, as
// constants in the trie's form (remote_key.addr, two words, and each
// prefix's mask): a masked compare of two words each instead of the
// trie's walk (10-40 ns a packet). remote_inline: how many; 0: more than
// that, the trie (remote) decides.
#define REMOTE_INLINE 4
volatile const __u32 remote_inline;
volatile const __u64 remote_addr[REMOTE_INLINE][2], remote_mask[REMOTE_INLINE][2];

// Verdict reasons; the Go side names them (reasonNames) in this order.
enum reason {
	R_TX,           // sent to a gateway on the ingress interface (XDP_TX)
	R_REDIRECT,     // sent to a gateway on another interface
	R_NOT_IP,       // not IPv4/IPv6, or VLAN-tagged: passed
	R_NOT_OURS,     // Ethernet destination is not this interface
	R_NOT_REMOTE,   // destination outside the remote network
	R_MALFORMED,    // truncated or inconsistent header (the kernel judges)
	R_IP_OPTIONS,   // IPv4 header with options
	R_FRAGMENT,     // IPv4 or IPv6 fragment
	R_IPV6_EXT,     // IPv6 extension headers
	R_ICMP_ERROR,   // hashed by the packet it quotes: userspace
	R_PROTO,        // a protocol other than TCP, UDP, SCTP, ICMP
	R_TTL,          // TTL or hop limit would expire
	R_TOO_BIG,      // over the lane MTU: userspace sends the ICMP error
	R_NO_SNAPSHOT,  // userspace has not published lanes yet
	R_NO_TARGET,    // the lane's gateway is not resolved (or not XDP-capable)
	R_NO_LANE,      // no lane is up: dropped, as the Go demux does
	R_ENCAP_FAILED, // the headroom could not be grown: dropped
	R_HANDOVER,     // a packet of its bucket is still with userspace: passed behind it
	R_NUM,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, R_NUM);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

struct lane_counter {
	__u64 packets, bytes; // inner packets and bytes sent into the lane
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LANE_SLOTS);
	__type(key, __u32);
	__type(value, struct lane_counter);
} lane_stats SEC(".maps");

// The snapshot: [0] the target bank in use, [1..4095] each lane's pin
// generation (0: pins to it are void), [LANE_SLOTS + i] Maglev slot i,
// then the flow-hash key the table goes with (KEY_WORDS 32-bit words,
// little-endian k0 then k1): a new key (a rotated secret) and its table
// switch together; then the key's epoch (KEY_EPOCH: Publish counts it
// up, 16 bits, when the key changes).
struct snapshot {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LANE_SLOTS + 1); // the loader sets LANE_SLOTS + table_size + KEY_WORDS + 1
	__type(key, __u32);
	__type(value, __u32);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct snapshot);
} snapshots SEC(".maps");

// A lane's gateway as this host reaches it. Two banks: userspace fills the
// bank not in use, then swaps in a snapshot that names it.
struct target {
	__u8 dst_mac[ETH_ALEN_];
	__u8 src_mac[ETH_ALEN_];
	__u32 ifindex; // egress; 0: not resolved, pass to userspace
	__be32 saddr, daddr;
	__be16 dport;
	__u8 key_id;   // sealed: the generation the key belongs to
	__u8 pad;
	__u64 seal_k0, seal_k1; // sealed: the demux-gateway pair's SipHash key
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * LANE_SLOTS);
	__type(key, __u32);
	__type(value, struct target);
} targets SEC(".maps");

// Each lane's next seal counter, shared with the userspace demux's
// sealer of the lane through a memory mapping (geneveauth.NewSealerOn):
// the gateway's replay window is per sender, so the program's frames
// and userspace's (packets passed up, probes) count in one sequence.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LANE_SLOTS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
} seal_counters SEC(".maps");

// The tags of the frames sealed lately, by all lanes, shared with the
// userspace sealers (geneveauth.Recent): the demux tells an ICMP error
// about a frame it sent from a forged one by the tag it quotes.
#define RECENT_SLOTS (1 << 16) // geneveauth.RecentSlots
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RECENT_SLOTS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
} seal_recent SEC(".maps");

// The hand-over ledger, shared with the userspace demux through a memory
// mapping (xdp.Program.Finished): per bucket of flows, [b] counts the
// packets this program passed up after parsing them whole and within the
// lane MTU (no snapshot, no target, hand-over), which the kernel forwards
// into the userspace demux's TUN as they are, and [HANDOVER_BUCKETS + b] those the userspace
// demux has finished with (sent on, or dropped). While the gate is set
// (after userspace changed the lane set: a flow may move from the
// userspace path to this one), a packet this program would send is
// passed up too while its bucket has one still with userspace, so that
// it cannot overtake it: a flow's packets leave in order by construction,
// however long the userspace demux is held up.
#define HANDOVER_BUCKETS 4096 // xdp.handoverBuckets
#define HANDOVER_GATE (2 * HANDOVER_BUCKETS)
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * HANDOVER_BUCKETS + 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
} handover SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} tx_ports SEC(".maps");

// The canonical tuple as SipHash reads it (flowhash.Words).
struct words {
	__u64 w[5];
};

struct pin {
	__u32 gen;
	__u32 last_seen; // seconds
	__u16 lane;
	__u8 tcp;
	__u8 pad;
	// The outer UDP source port the flow's hash gives (outer_sport, low
	// 16 bits) and the key epoch it was hashed under (high 16 bits), in
	// one word, so that one store replaces both: while the epoch holds,
	// a pinned flow's packets need no SipHash.
	__u32 port;
	// Packets since the flow was pinned, for `demux flows --top`: a plain
	// add to the line the lookup just read, not an atomic one (a flow is on
	// one CPU but for a moment when RSS moves it; a count lost then is a
	// statistic's error, not a forwarding one).
	__u64 packets;
};

// The pins: a plain hash, not an LRU one, because a kernel LRU evicts
// by its own order, a pin whose flow it then moves among them. Here the
// kernel evicts nothing: when the map is full a new flow goes unpinned
// (it follows the table, counted), and userspace (Program.SweepPins)
// deletes idle pins and, under pressure, pins the table agrees with,
// whose loss moves no flow.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 20); // the loader sets hash.pin_flows
	__type(key, struct words);
	__type(value, struct pin);
} pins SEC(".maps");

enum pin_counter {
	P_INSERTS,  // pins written for new flows (the map holds inserts - userspace's deletes)
	P_UNPINNED, // new flows not pinned: the map was full
	P_NUM,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, P_NUM);
	__type(key, __u32);
	__type(value, __u64);
} pin_stats SEC(".maps");

struct remote_key {
	__u32 prefixlen;
	__u8 addr[16]; // IPv4 as ::ffff:a.b.c.d
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 256);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct remote_key);
	__type(value, __u8);
} remote SEC(".maps");

// is_remote reports whether rk's address is in the remote network.
static __always_inline int is_remote(const struct remote_key *rk)
{
	if (!remote_inline)
		return bpf_map_lookup_elem(&remote, rk) != 0;
	__u64 a[2];
	__builtin_memcpy(a, rk->addr, 16);
#pragma unroll
	for (int i = 0; i < REMOTE_INLINE; i++)
		if (i < remote_inline && (a[0] & remote_mask[i][0]) == remote_addr[i][0] &&
		    (a[1] & remote_mask[i][1]) == remote_addr[i][1])
			return 1;
	return 0;
}

static __always_inline int count(__u32 r, int verdict)
{
	__u64 *c = bpf_map_lookup_elem(&stats, &r);
	if (c)
		*c += 1;
	return verdict;
}

#define ROTL(x, b) (__u64)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                               \
	do {                                                                   \
		v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);     \
		v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                         \
		v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                         \
		v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);     \
	} while (0)

// sip13 is flowhash's SipHash-1-3 of the fixed 40-byte message under
// the key k0, k1.
static __always_inline __u64 sip13(__u64 key0, __u64 key1, const struct words *m)
{
	__u64 v0 = key0 ^ 0x736f6d6570736575ULL;
	__u64 v1 = key1 ^ 0x646f72616e646f6dULL;
	__u64 v2 = key0 ^ 0x6c7967656e657261ULL;
	__u64 v3 = key1 ^ 0x7465646279746573ULL;
#pragma unroll
	for (int i = 0; i < 5; i++) {
		v3 ^= m->w[i];
		SIPROUND;
		v0 ^= m->w[i];
	}
	const __u64 last = 40ULL << 56;
	v3 ^= last;
	SIPROUND;
	v0 ^= last;
	v2 ^= 0xff;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}

// canonical applies the hash mode and the symmetric order to the words
// (flowhash.Hasher.Words). ports is the two ports as on the wire, loaded
// little-endian; proto the transport protocol.
static __always_inline void canonical(struct words *k, __u32 ports, __u8 proto)
{
	if (hash_mode >= 1)
		ports = 0;
	if (hash_mode >= 2)
		proto = 0;
	if (symmetric) {
		__u64 s0 = bpf_be64_to_cpu(k->w[0]), d0 = bpf_be64_to_cpu(k->w[2]);
		__u64 s1 = bpf_be64_to_cpu(k->w[1]), d1 = bpf_be64_to_cpu(k->w[3]);
		__u16 sp = bpf_ntohs((__u16)ports), dp = bpf_ntohs((__u16)(ports >> 16));
		int swap = s0 != d0 ? s0 > d0 : s1 != d1 ? s1 > d1 : sp > dp;
		if (swap) {
			__u64 t0 = k->w[0], t1 = k->w[1];
			k->w[0] = k->w[2];
			k->w[1] = k->w[3];
			k->w[2] = t0;
			k->w[3] = t1;
			ports = (ports >> 16) | (ports << 16);
		}
	}
	k->w[4] = (__u64)ports | (__u64)proto << 32;
}

#define SIP_BLOCK(m)                                                           \
	do {                                                                   \
		v3 ^= (m);                                                     \
		SIPROUND;                                                      \
		SIPROUND;                                                      \
		v0 ^= (m);                                                     \
	} while (0)

// sip24 is geneveauth's tag: SipHash-2-4 under k0, k1 of the three
// words h0..h2 (the sealed GENEVE header's first 24 bytes) and then the
// len bytes at inner, which the caller has checked lie before end.
static __always_inline __u64 sip24(__u64 k0, __u64 k1, __u64 h0, __u64 h1, __u64 h2, void *inner,
				   void *end, __u32 len)
{
	__u64 v0 = k0 ^ 0x736f6d6570736575ULL;
	__u64 v1 = k1 ^ 0x646f72616e646f6dULL;
	__u64 v2 = k0 ^ 0x6c7967656e657261ULL;
	__u64 v3 = k1 ^ 0x7465646279746573ULL;
	SIP_BLOCK(h0);
	SIP_BLOCK(h1);
	SIP_BLOCK(h2);
	if (len < 8 || len > SEAL_MAX_LEN)
		return 0; // never: an IP packet has 20 bytes, and the MTU check came first
	__u32 words = len >> 3;
	// A bounded loop the verifier walks word by word: w is at a constant
	// offset from inner in each pass, and dead after the loop, so the
	// states leaving it prune. The barrier keeps clang from rewriting
	// the bounds check into arithmetic on end, which the verifier refuses.
	void *w = inner;
	for (__u32 i = 0; i < SEAL_MAX_LEN / 8; i++) {
		if (i >= words)
			break;
		void *next = w + 8;
		asm volatile("" : "+r"(next));
		if (next > end)
			return 0;
		SIP_BLOCK(*(__u64 *)w);
		w = next;
	}
	// The last block: the 0..7 bytes left, read as the top of the
	// packet's last 8 bytes, under the message length.
	__u64 m = (__u64)(len + 24) << 56;
	__u32 rest = len & 7;
	if (rest) {
		void *last = inner + (len - 8);
		void *stop = last + 8;
		asm volatile("" : "+r"(stop));
		if (stop > end)
			return 0;
		m |= *(__u64 *)last >> (64 - 8 * rest);
	}
	SIP_BLOCK(m);
	v2 ^= 0xff;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}

// fold64 folds a ones' complement sum of 16- or 32-bit words, as loaded
// from the packet, to 16 bits (not complemented).
static __always_inline __u16 fold64(__u64 s)
{
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

// csum_fold is the checksum of a sum: folded and complemented.
static __always_inline __u16 csum_fold(__u32 sum)
{
	return (__u16)~fold64(sum);
}

// l4_ports reads what the tuple takes from the transport header at l4,
// which has avail bytes inside the IP packet (end is the frame's end, for
// the verifier): the ports, or the ICMP echo identifier in both. It
// returns a reason to pass the packet, or R_NUM.
static __always_inline __u32 l4_ports(void *l4, void *end, __u32 avail, __u8 proto, int v6,
				      __u32 *ports)
{
	*ports = 0;
	switch (proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case PROTO_SCTP:
		if (avail < 4 || l4 + 4 > end)
			return R_MALFORMED;
		*ports = *(__u32 *)l4;
		return R_NUM;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		if ((proto == IPPROTO_ICMPV6) != v6)
			return R_PROTO;
		if (avail < 8 || l4 + 8 > end)
			return R_MALFORMED;
		__u8 type = *(__u8 *)l4;
		__u16 id = *(__u16 *)(l4 + 4);
		if (v6 ? (type == 128 || type == 129) : (type == 8 || type == 0)) {
			*ports = (__u32)id | (__u32)id << 16;
			return R_NUM;
		}
		if (v6 ? (type >= 1 && type <= 4) : (type == 3 || type == 11 || type == 12))
			return R_ICMP_ERROR;
		return R_NUM; // other ICMP: addresses and protocol only
	}
	}
	return R_PROTO;
}

// handover_bucket is a flow's bucket in the hand-over ledger, from its
// canonical words (xdp.handoverBucket). Unkeyed, so that it stays the
// same across a flow-hash key rotation: flows that collide only share a
// wait.
static __always_inline __u32 handover_bucket(const struct words *k)
{
	const __u64 m = 0x9e3779b97f4a7c15ULL;
	__u64 x = k->w[0];
#pragma unroll
	for (int i = 1; i < 5; i++)
		x = (x ^ k->w[i]) * m;
	return (__u32)(x >> 52);
}

// pass_up passes a packet parse took whole (its canonical words k) up to
// the kernel, noting it in its bucket of the ledger.
static __always_inline int pass_up(__u32 r, const struct words *k)
{
	__u32 b = handover_bucket(k);
	__u64 *n = bpf_map_lookup_elem(&handover, &b);
	if (n)
		__sync_fetch_and_add(n, 1);
	return count(r, XDP_PASS);
}

// handover_pending reports whether the gate is set and the flow's bucket
// has a packet the userspace demux has not finished with. (The bucket is
// hashed only while the gate is set: most packets pay one load.)
static __always_inline int handover_pending(const struct words *k)
{
	__u32 gi = HANDOVER_GATE;
	__u64 *gate = bpf_map_lookup_elem(&handover, &gi);
	if (!gate || !*gate)
		return 0;
	__u32 b = handover_bucket(k), di = HANDOVER_BUCKETS + b;
	__u64 *passed = bpf_map_lookup_elem(&handover, &b);
	__u64 *done = bpf_map_lookup_elem(&handover, &di);
	return passed && done && *passed != *done;
}

// outer_sport is the outer UDP source port of a flow whose hash is sum:
// it spreads flows for receive-side scaling (RFC 8926 section 3.3), the
// top 14 bits of the hash in 49152..65535.
static __always_inline __be16 outer_sport(__u64 sum)
{
	return bpf_htons(0xc000 | (__u16)(sum >> 50));
}

// pinned returns the lane of the flow's pin while the pin's generation
// holds (0 if it has none that holds), and in *port the pin's port word
// (0 if none). *found is the pin, held or not (choose replaces it).
static __always_inline __u32 pinned(void *snap, const struct words *k, __u32 now, struct pin **found,
				    __u32 *port)
{
	struct pin *p = bpf_map_lookup_elem(&pins, k);
	*found = p;
	if (!p)
		return 0;
	__u32 idle = p->tcp ? pin_tcp_idle : pin_other_idle;
	__u32 lane = p->lane;
	if ((__s32)(now - p->last_seen) > (__s32)idle || lane == 0 || lane >= LANE_SLOTS)
		return 0;
	__u32 *gen = bpf_map_lookup_elem(snap, &lane);
	if (!gen || *gen == 0 || *gen != p->gen)
		return 0;
	if (p->last_seen != now)
		p->last_seen = now; // once a second per flow
	p->packets++;
	*port = p->port;
	return lane;
}

// choose returns the lane of a flow that pinned found no lane for: the
// Maglev slot of its hash sum (then pinned, replacing p, with port). 0:
// no lane is up.
static __always_inline __u32 choose(void *snap, const struct words *k, __u64 sum, int tcp, __u32 now,
				    struct pin *p, __u32 port)
{
	__u32 slot = LANE_SLOTS + (__u32)(sum % table_size);
	__u32 *l = bpf_map_lookup_elem(snap, &slot);
	if (!l || *l == 0 || *l >= LANE_SLOTS)
		return 0;
	__u32 lane = *l;
	__u32 *gen = bpf_map_lookup_elem(snap, &lane);
	struct pin np = {.gen = gen ? *gen : 0, .last_seen = now, .lane = lane, .tcp = tcp,
			 .port = port, .packets = 1};
	if (p) {
		// The flow's pin was idle or void: replaced whole (readers on
		// other CPUs see the old or the new), the count unchanged.
		bpf_map_update_elem(&pins, k, &np, BPF_EXIST);
		return lane;
	}
	long err = bpf_map_update_elem(&pins, k, &np, BPF_NOEXIST);
	__u32 c = err == 0 ? P_INSERTS : P_UNPINNED;
	if (err != -17 /* EEXIST: another CPU pinned it first */) {
		__u64 *n = bpf_map_lookup_elem(&pin_stats, &c);
		if (n)
			*n += 1;
	}
	return lane;
}

// gnv is the GENEVE header and, sealed, its option up to the counter.
struct gnv {
	__u64 w[3];
};

// geneve_words is the header a frame to t gets, as the Go demux writes it
// (packet.PutGeneve, geneveauth.Sealer.Seal), in the tag's words.
static __always_inline void geneve_words(struct gnv *g, const struct target *t, __be16 inner_proto,
					 __u64 counter)
{
	__u8 *b = (__u8 *)g->w;
	b[0] = sealed ? SEAL_OPT_LEN / 4 : 0; // version 0, option length in words
	b[1] = sealed ? 0x40 : 0;             // not OAM; a critical option follows
	*(__be16 *)(b + 2) = inner_proto;
	*(__be32 *)(b + 4) = bpf_htonl(vni << 8);
	if (!sealed)
		return;
	*(__be16 *)(b + 8) = bpf_htons(0xfff0); // packet.GeneveAuthClass
	b[10] = 0x81;                           // packet.GeneveAuthType
	b[11] = SEAL_OPT_LEN / 4 - 1;
	b[12] = seal_sender;
	b[13] = t->key_id;
	b[14] = 0;
	b[15] = 0;
	g->w[2] = bpf_cpu_to_be64(counter);
}

// encap pushes outer Ethernet, IPv4, UDP and GENEVE (sealed: with the
// authentication option g and tag) in front of the inner packet of
// inner_len bytes (which starts after the Ethernet header).
static __always_inline int encap(struct xdp_md *ctx, const struct target *t, __u32 inner_len,
				 const struct gnv *g, __u64 tag, __be16 sport, int summed, __u64 isum)
{
	const __u32 glen = sealed ? GENEVE_LEN + SEAL_OPT_LEN : GENEVE_LEN;
	if (bpf_xdp_adjust_head(ctx, -(int)(ENCAP4_LEN - GENEVE_LEN + glen)))
		return -1;
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	__u8 *udp = (void *)(ip + 1);
	__u8 *gnv = udp + 8;
	if ((void *)(gnv + GENEVE_LEN + SEAL_OPT_LEN) > end)
		return -1;

	__builtin_memcpy(eth->h_dest, t->dst_mac, ETH_ALEN_);
	__builtin_memcpy(eth->h_source, t->src_mac, ETH_ALEN_);
	eth->h_proto = bpf_htons(ETH_P_IP);

	__u16 tot = sizeof(*ip) + 8 + glen + inner_len;
	ip->version = 4;
	ip->ihl = 5;
	ip->tos = 0;
	ip->tot_len = bpf_htons(tot);
	ip->id = 0;
	ip->frag_off = bpf_htons(0x4000); // DF, as the kernel's UDP sockets send
	ip->ttl = 64;
	ip->protocol = IPPROTO_UDP;
	ip->check = 0;
	ip->saddr = t->saddr;
	ip->daddr = t->daddr;
	__u32 csum = 0;
	__u16 *w = (__u16 *)ip;
#pragma unroll
	for (int i = 0; i < 10; i++)
		csum += w[i];
	ip->check = csum_fold(csum);

	*(__be16 *)udp = sport;
	*(__be16 *)(udp + 2) = t->dport;
	*(__be16 *)(udp + 4) = bpf_htons(8 + glen + inner_len);
	// The UDP checksum, from the inner packet's sum (inner_sum): RFC 8926
	// allows none over IPv4, but a receiver's GRO coalesces only UDP
	// that has one, and a gateway reading its frames one by one pays
	// several times as much per packet. Without the inner sum, none.
	__u16 check = 0;
	if (summed) {
		__u64 s = isum + (__u64)t->saddr + t->daddr + bpf_htons(IPPROTO_UDP) + 2 * (__u64)bpf_htons(8 + glen + inner_len) +
			  sport + t->dport + (__u32)g->w[0] + (g->w[0] >> 32);
		if (sealed)
			s += (__u32)g->w[1] + (g->w[1] >> 32) + (__u32)g->w[2] + (g->w[2] >> 32) +
			     (__u32)bpf_cpu_to_be64(tag) + (bpf_cpu_to_be64(tag) >> 32);
		check = ~fold64(s);
		if (check == 0)
			check = 0xffff; // 0 means none (RFC 768)
	}
	*(__u16 *)(udp + 6) = check;

	*(__u64 *)gnv = g->w[0];
	if (sealed) {
		*(__u64 *)(gnv + 8) = g->w[1];
		*(__u64 *)(gnv + 16) = g->w[2];
		*(__u64 *)(gnv + 24) = bpf_cpu_to_be64(tag);
	}
	return 0;
}

// flow is what parse finds in a frame.
struct flow {
	struct words k; // canonical words, after canonical()
	__u32 inner_len; // the IP packet's length, without link padding
	__u8 proto;
	__u8 v6;
};

// inner_sum sets *sum to the ones' complement sum of the inner packet
// (inner_len bytes at l3) from its headers alone, as the kernel's local
// checksum offload reasons for tunnels: a packet whose checksums hold
// sums to what its pseudo-header implies, so no byte of its payload is
// read. It returns 0 where the checksums do not pin the sum (UDP
// without one or shorter than its packet, SCTP's CRC); the frame then
// goes without an outer one.
static __always_inline int inner_sum(void *l3, void *end, const struct flow *f, __u64 *sum)
{
	__u64 hdr, pseudo = 0;
	__u32 hlen;
	if (f->v6) {
		struct ipv6hdr *ip6 = l3;
		if ((void *)(ip6 + 1) > end)
			return 0;
		hdr = 0;
#pragma unroll
		for (int i = 0; i < 10; i++)
			hdr += ((__u32 *)ip6)[i];
#pragma unroll
		for (int i = 0; i < 8; i++)
			pseudo += ((__u32 *)&ip6->saddr)[i]; // and daddr, which follows
		hlen = sizeof(*ip6);
	} else {
		struct iphdr *ip = l3;
		if ((void *)(ip + 1) > end)
			return 0;
		hdr = 0xffff; // its checksum holds (parse checked it; the TTL's update kept it)
		pseudo = (__u64)ip->saddr + ip->daddr;
		hlen = sizeof(*ip);
	}
	void *l4 = l3 + hlen;
	switch (f->proto) {
	case IPPROTO_UDP: // its checksum covers its own length, which must be the packet's
		if (l4 + 8 > end || *(__u16 *)(l4 + 6) == 0 || bpf_ntohs(*(__be16 *)(l4 + 4)) != f->inner_len - hlen)
			return 0;
		break;
	case IPPROTO_TCP:
	case IPPROTO_ICMPV6:
		break;
	case IPPROTO_ICMP: // no pseudo-header: the message sums to 0xffff
		*sum = hdr + 0xffff;
		return 1;
	default:
		return 0;
	}
	pseudo += bpf_htons(f->proto) + bpf_htons((__u16)(f->inner_len - hlen));
	*sum = hdr + (__u16)~fold64(pseudo); // the segment sums to the pseudo-header's complement
	return 1;
}

// parse reads the frame at ctx into f. It returns R_NUM
// for a packet this program forwards, else the reason to pass it up.
// check_dst: the Ethernet and IP destinations must be ours and remote
// (off only for xdp_hash, which checks the hash vectors).
static __always_inline __u32 parse(struct xdp_md *ctx, struct flow *f, int check_dst)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return R_NOT_IP;
	if (check_dst &&
	    (eth->h_dest[0] != ingress_mac[0] || eth->h_dest[1] != ingress_mac[1] ||
	     eth->h_dest[2] != ingress_mac[2] || eth->h_dest[3] != ingress_mac[3] ||
	     eth->h_dest[4] != ingress_mac[4] || eth->h_dest[5] != ingress_mac[5]))
		return R_NOT_OURS;

	struct remote_key rk = {.prefixlen = 128};
	void *l3 = eth + 1;
	__u32 ports, r;

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = l3;
		if ((void *)(ip + 1) > end || ip->version != 4)
			return R_MALFORMED;
		rk.addr[10] = 0xff;
		rk.addr[11] = 0xff;
		*(__u32 *)&rk.addr[12] = ip->daddr;
		if (check_dst && !is_remote(&rk))
			return R_NOT_REMOTE;
		if (ip->ihl != 5)
			return ip->ihl < 5 ? R_MALFORMED : R_IP_OPTIONS;
		// The header checksum, as the kernel's ip_rcv checks it before
		// routing: a corrupt header must not enter a lane (a gateway's
		// TUN coalescing would write it a valid checksum).
		__u32 hsum = 0;
#pragma unroll
		for (int i = 0; i < 10; i++)
			hsum += ((__u16 *)ip)[i];
		if (csum_fold(hsum) != 0)
			return R_MALFORMED;
		f->inner_len = bpf_ntohs(ip->tot_len);
		if (f->inner_len < sizeof(*ip) || l3 + f->inner_len > end)
			return R_MALFORMED;
		if (ip->frag_off & bpf_htons(0x3fff))
			return R_FRAGMENT;
		f->proto = ip->protocol;
		f->k.w[1] = 0xffff0000ULL | (__u64)ip->saddr << 32;
		f->k.w[3] = 0xffff0000ULL | (__u64)ip->daddr << 32;
		r = l4_ports(ip + 1, end, f->inner_len - sizeof(*ip), f->proto, 0, &ports);
		if (r != R_NUM)
			return r;
		if (ip->ttl <= 1)
			return R_TTL;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;
		if ((void *)(ip6 + 1) > end || ip6->version != 6)
			return R_MALFORMED;
		__builtin_memcpy(rk.addr, &ip6->daddr, 16);
		if (check_dst && !is_remote(&rk))
			return R_NOT_REMOTE;
		__u32 plen = bpf_ntohs(ip6->payload_len);
		f->inner_len = sizeof(*ip6) + plen;
		if (plen == 0 || l3 + f->inner_len > end)
			return R_MALFORMED;
		f->proto = ip6->nexthdr;
		switch (f->proto) {
		case 0:  // hop-by-hop options
		case 43: // routing
		case 60: // destination options
			return R_IPV6_EXT;
		case 44:
			return R_FRAGMENT;
		}
		__builtin_memcpy(&f->k.w[0], &ip6->saddr, 16);
		__builtin_memcpy(&f->k.w[2], &ip6->daddr, 16);
		f->v6 = 1;
		r = l4_ports(ip6 + 1, end, plen, f->proto, 1, &ports);
		if (r != R_NUM)
			return r;
		if (ip6->hop_limit <= 1)
			return R_TTL;
	} else {
		return R_NOT_IP;
	}
	canonical(&f->k, ports, f->proto);
	return R_NUM;
}

SEC("xdp")
int xdp_demux(struct xdp_md *ctx)
{
	struct flow f = {};
	__u32 r = parse(ctx, &f, 1);
	if (r != R_NUM)
		return count(r, XDP_PASS);
	if (f.inner_len > lane_mtu)
		return count(R_TOO_BIG, XDP_PASS); // the kernel drops it (DF) or fragments it: not counted

	__u32 zero = 0;
	void *snap = bpf_map_lookup_elem(&snapshots, &zero);
	if (!snap)
		return pass_up(R_NO_SNAPSHOT, &f.k);
	__u32 *b = bpf_map_lookup_elem(snap, &zero);
	if (!b)
		return pass_up(R_NO_SNAPSHOT, &f.k);
	__u32 bank = *b & 1;
	__u32 ei = KEY_EPOCH;
	__u32 *epoch = bpf_map_lookup_elem(snap, &ei);
	if (!epoch)
		return pass_up(R_NO_SNAPSHOT, &f.k);
	__u32 now = (__u32)(bpf_ktime_get_coarse_ns() / 1000000000ULL);
	struct pin *p;
	__u32 port = 0;
	__u32 lane = pinned(snap, &f.k, now, &p, &port);
	if (lane == 0 || port >> 16 != (*epoch & 0xffff)) {
		// A new flow, one whose pin went idle or void, or one pinned
		// under another key: hashed.
		__u32 kw[KEY_WORDS];
#pragma unroll
		for (int i = 0; i < KEY_WORDS; i++) {
			__u32 ki = LANE_SLOTS + table_size + i;
			__u32 *w = bpf_map_lookup_elem(snap, &ki);
			if (!w)
				return pass_up(R_NO_SNAPSHOT, &f.k);
			kw[i] = *w;
		}
		__u64 sum = sip13((__u64)kw[0] | (__u64)kw[1] << 32, (__u64)kw[2] | (__u64)kw[3] << 32, &f.k);
		port = (*epoch & 0xffff) << 16 | outer_sport(sum);
		if (lane == 0) {
			lane = choose(snap, &f.k, sum, f.proto == IPPROTO_TCP, now, p, port);
			if (lane == 0)
				return count(R_NO_LANE, XDP_DROP);
		} else if (p) {
			p->port = port; // one store: other CPUs read the old word or this one
		}
	}
	__be16 sport = (__be16)port;
	__u32 ti = bank * LANE_SLOTS + lane;
	struct target *t = bpf_map_lookup_elem(&targets, &ti);
	if (!t || t->ifindex == 0)
		return pass_up(R_NO_TARGET, &f.k);
	if (handover_pending(&f.k))
		return pass_up(R_HANDOVER, &f.k);

	// Forward as a router does: decrement TTL (RFC 1624 incremental
	// checksum, as the kernel's ip_decrease_ttl) or hop limit.
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (f.v6) {
		struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
		if ((void *)(ip6 + 1) > end)
			return count(R_MALFORMED, XDP_PASS);
		ip6->hop_limit--;
	} else {
		struct iphdr *ip = data + sizeof(struct ethhdr);
		if ((void *)(ip + 1) > end)
			return count(R_MALFORMED, XDP_PASS);
		__u32 check = ip->check;
		check += bpf_htons(0x0100);
		ip->check = (__u16)(check + (check >= 0xffff));
		ip->ttl--;
	}
	// Drop the Ethernet padding of short frames: the inner packet ends
	// where its IP length says.
	__s64 extra = (__s64)(end - data) - (__s64)(sizeof(struct ethhdr) + f.inner_len);
	if (extra > 0 && bpf_xdp_adjust_tail(ctx, -(int)extra))
		return count(R_ENCAP_FAILED, XDP_DROP);

	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	__u64 isum = 0;
	int summed = inner_sum(data + sizeof(struct ethhdr), end, &f, &isum);

	struct gnv g = {};
	__u64 tag = 0;
	if (sealed) {
		__u64 *ctr = bpf_map_lookup_elem(&seal_counters, &lane);
		if (!ctr)
			return count(R_ENCAP_FAILED, XDP_DROP);
		__u64 c = __sync_fetch_and_add(ctr, 1);
		geneve_words(&g, t, f.v6 ? bpf_htons(ETH_P_IPV6) : bpf_htons(ETH_P_IP), c);
		data = (void *)(long)ctx->data;
		end = (void *)(long)ctx->data_end;
		void *inner = data + sizeof(struct ethhdr);
		if (inner + f.inner_len > end)
			return count(R_MALFORMED, XDP_PASS);
		tag = sip24(t->seal_k0, t->seal_k1, g.w[0], g.w[1], g.w[2], inner, end, f.inner_len);
		// geneveauth.RecentSlot
		__u32 slot = (__u32)(c ^ ((__u64)lane * 0x9e3779b97f4a7c15ULL)) & (RECENT_SLOTS - 1);
		__u64 *r = bpf_map_lookup_elem(&seal_recent, &slot);
		if (r)
			*r = tag;
	} else {
		geneve_words(&g, t, f.v6 ? bpf_htons(ETH_P_IPV6) : bpf_htons(ETH_P_IP), 0);
	}
	if (encap(ctx, t, f.inner_len, &g, tag, sport, summed, isum))
		return count(R_ENCAP_FAILED, XDP_DROP);

	struct lane_counter *lc = bpf_map_lookup_elem(&lane_stats, &lane);
	if (lc) {
		lc->packets++;
		lc->bytes += f.inner_len;
	}
	if (t->ifindex == ctx->ingress_ifindex)
		return count(R_TX, XDP_TX);
	count(R_REDIRECT, 0);
	return bpf_redirect_map(&tx_ports, t->ifindex, 0);
}

// hash_out receives xdp_hash's result: the flow hash, and the canonical
// words it hashed.
struct hash_result {
	__u64 sum;
	struct words k;
	__u32 reason;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct hash_result);
} hash_out SEC(".maps");

// xdp_hash is for tests only (BPF_PROG_TEST_RUN, never attached): it runs
// the data path's parse and hash on a frame and stores the result, so
// the Go tests can hold the BPF hash to testdata/flowhash-vectors.json.
SEC("xdp")
int xdp_hash(struct xdp_md *ctx)
{
	struct flow f = {};
	struct hash_result res = {};
	__u32 zero = 0;
	res.reason = parse(ctx, &f, 0);
	if (res.reason == R_NUM)
		res.sum = sip13(key0, key1, &f.k);
	res.k = f.k;
	bpf_map_update_elem(&hash_out, &zero, &res, BPF_ANY);
	return XDP_PASS;
}
