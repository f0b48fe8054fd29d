// SPDX-License-Identifier: GPL-2.0-only
/*
 * xdp_ref.bpf.c — the benchmark references, after xdp-bench's `drop`/`pass`
 * with `parse-ip`: each program reads the headers connrate reads (Ethernet, up
 * to CR_VLAN_MAX VLAN tags, IPv4 or IPv6, the TCP or UDP ports), counts the
 * packet in a per-CPU array, and returns its fixed verdict.
 *
 * connrate's drop path is measured against xdp_drop_parse and its pass paths
 * against xdp_pass_parse: the same parsing and one per-CPU counter, so the
 * difference is what the limiter itself costs.
 *
 * xdp_drop_parse_spin is xdp_drop_parse plus spin_rounds steps of arithmetic
 * that touch no memory, each depending on the last and on the parse: a
 * program a known number of ns slower, which calibrates how a live
 * measurement answers to a program's own time.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "connrate.h"

char LICENSE[] SEC("license") = "GPL";

#define IPV4_MIN_IHL 5
#define SPIN_ROUNDS_MAX 4096
#define SPIN_MULT 0x9e3779b97f4a7c15ULL
#define SPIN_SHIFT 29

const volatile __u32 spin_rounds = 0;

struct ref_vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

/* Index 0: packets parsed to L4; index 1: packets that were not. */
enum ref_counter {
	REF_CNT_PARSED = 0,
	REF_CNT_UNPARSED = 1,
	REF_CNT_COUNT = 2,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, REF_CNT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} packets SEC(".maps");

/* The L4 ports, read so the parse cannot be optimised away. */
struct ref_ports {
	__u16 sport;
	__u16 dport;
};

static __always_inline int parse(struct xdp_md *ctx, struct ref_ports *ports)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	void *cursor;
	__u16 proto;
	__u8 l4;

	if ((void *)(eth + 1) > data_end)
		return -1;
	proto = eth->h_proto;
	cursor = eth + 1;

#pragma unroll
	for (int i = 0; i < CR_VLAN_MAX; i++) {
		struct ref_vlan_hdr *vlan = cursor;

		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		if ((void *)(vlan + 1) > data_end)
			return -1;
		proto = vlan->encap_proto;
		cursor = vlan + 1;
	}

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = cursor;

		if ((void *)(ip + 1) > data_end || ip->ihl < IPV4_MIN_IHL)
			return -1;
		l4 = ip->protocol;
		cursor = (void *)ip + ip->ihl * 4;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = cursor;

		if ((void *)(ip6 + 1) > data_end)
			return -1;
		l4 = ip6->nexthdr;
		cursor = ip6 + 1;
	} else {
		return -1;
	}

	if (l4 != IPPROTO_TCP && l4 != IPPROTO_UDP)
		return -1;
	/* TCP and UDP both start with the two ports; a UDP header's size covers them. */
	struct udphdr *l4h = cursor;

	if ((void *)(l4h + 1) > data_end)
		return -1;
	ports->sport = bpf_ntohs(l4h->source);
	ports->dport = bpf_ntohs(l4h->dest);
	return 0;
}

static __always_inline void count(__u32 idx)
{
	__u64 *n = bpf_map_lookup_elem(&packets, &idx);

	if (n)
		*n += 1;
}

static __always_inline int judge(struct xdp_md *ctx, int verdict)
{
	struct ref_ports ports = {};

	if (parse(ctx, &ports) < 0 || ports.dport == 0) {
		count(REF_CNT_UNPARSED);
		return XDP_PASS;
	}
	count(REF_CNT_PARSED);
	return verdict;
}

SEC("xdp")
int xdp_drop_parse(struct xdp_md *ctx)
{
	return judge(ctx, XDP_DROP);
}

SEC("xdp")
int xdp_pass_parse(struct xdp_md *ctx)
{
	return judge(ctx, XDP_PASS);
}

SEC("xdp")
int xdp_drop_parse_spin(struct xdp_md *ctx)
{
	int verdict = judge(ctx, XDP_DROP);
	__u64 x = verdict;
	__u32 i;

	for (i = 0; i < SPIN_ROUNDS_MAX; i++) {
		if (i >= spin_rounds)
			break;
		x = (x * SPIN_MULT) ^ (x >> SPIN_SHIFT);
		asm volatile("" : "+r"(x)); /* one step after another, none folded */
	}
	asm volatile("" : : "r"(x)); /* the chain's result is used */
	return verdict;
}
