//go:build ignore

// sink.c decapsulates GENEVE in XDP for the fast path's benchmark: the
// bench's "gateway" hands the inner packet to its own kernel, so iperf3
// can measure across the demux where Linux's geneve module is absent.
// UDP to the discard port (9), the generator's frames (bench/xdpgen), ends
// here, plain or decapsulated, so the sink's XDP drop count is what arrived.
// Not part of the data path.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

char __license[] SEC("license") = "Dual MIT/GPL";

#define ENCAP (sizeof(struct iphdr) + 8 + 8)

static __always_inline int to_discard(void *data, void *end)
{
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	__u8 *udp = (void *)(ip + 1);
	return (void *)(udp + 4) <= end && eth->h_proto == bpf_htons(ETH_P_IP) && ip->ihl == 5 &&
	       ip->protocol == IPPROTO_UDP && *(__be16 *)(udp + 2) == bpf_htons(9);
}

SEC("xdp")
int xdp_geneve_sink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	__u8 *udp = (void *)(ip + 1);
	__u8 *gnv = udp + 8;
	// Plain GENEVE, or sealed (the 6-word option of dataplane/geneveauth,
	// not checked here: the sink measures the demux, not the gateway).
	if ((void *)(gnv + 8) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 ||
	    ip->protocol != IPPROTO_UDP || *(__be16 *)(udp + 2) != bpf_htons(6081) ||
	    ((gnv[0] & 0x3f) != 0 && (gnv[0] & 0x3f) != 6))
		return to_discard(data, end) ? XDP_DROP : XDP_PASS;
	int opts = (gnv[0] & 0x3f) * 4;
	struct ethhdr e;
	__builtin_memcpy(&e, eth, sizeof(e));
	e.h_proto = *(__be16 *)(gnv + 2);
	if (bpf_xdp_adjust_head(ctx, ENCAP + opts))
		return XDP_DROP;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > end)
		return XDP_DROP;
	__builtin_memcpy(eth, &e, sizeof(e));
	return to_discard(data, end) ? XDP_DROP : XDP_PASS;
}
