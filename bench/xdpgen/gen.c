//go:build ignore

// gen.c is the benchmark's packet generator: run through BPF_PROG_TEST_RUN
// in live-frames mode, every run of it sends one frame out of the interface
// named in the context (XDP_TX becomes a redirect to it), the UDP source
// port stepped so the frames spread over `flows` 5-tuples.
//
// Paced (gap_ns > 0), a run sends only when the schedule is due and drops
// its frame otherwise: a call of BPF_PROG_TEST_RUN costs ~24 ms here before
// its first frame, so the pacing cannot be a call per millisecond from
// userspace. A schedule more than a millisecond behind (the CPU was taken,
// or between calls) starts afresh rather than catching up in a burst.
//
// The kernel recycles the frames' pages, and whoever received a frame may
// have written to it (a TTL decrement, a rewritten Ethernet header, GENEVE
// pushed over the old one), so every run writes all the headers afresh
// from the template.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

char __license[] SEC("license") = "Dual MIT/GPL";

#define HEADERS (sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct udphdr))

// The template's headers in words (the last 6 bytes unused), read through
// volatile: a memcpy from it would be folded to its all-zero initializer.
volatile const __u64 headers[6];
volatile const __u16 port_base = 10000;
volatile const __u16 flows = 1;
volatile const __u64 gap_ns = 0;

// sent counts frames sent; one CPU runs the generator, so no atomics.
__u64 sent = 0;
__u64 next_ns = 0;

SEC("xdp")
int xdp_gen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (data + HEADERS > end)
		return XDP_ABORTED;
#pragma unroll
	for (int i = 0; i < 5; i++)
		((__u64 *)data)[i] = headers[i];
	*(__u16 *)(data + 40) = (__u16)headers[5];
	if (gap_ns) {
		__u64 now = bpf_ktime_get_ns();
		if (now < next_ns)
			return XDP_DROP;
		if (now - next_ns > 1000000)
			next_ns = now;
		next_ns += gap_ns;
	}
	struct udphdr *udp = data + sizeof(struct ethhdr) + sizeof(struct iphdr);
	__u64 n = sent++;
	udp->source = bpf_htons(port_base + (__u16)(n % flows));
	return XDP_TX;
}
