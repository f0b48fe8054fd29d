// SPDX-License-Identifier: GPL-2.0-only
/*
 * cost_chain.bpf.c — per-packet rewrites for `npm run bench:cost`
 * (bench/ns-per-packet.ts). cost_chain runs under BPF_PROG_TEST_RUN with
 * repeat, rewrites the frame's IPv6 source and tail-calls the program under
 * test (connrate_xdp, xdp_pass_parse, xdp_drop_parse) put in chain_target[0],
 * so every repeat is a packet from another source. Every program measured
 * behind it pays the same rewrite and tail call.
 *
 * The packet count is per CPU, so two CPUs running the chain at once share no
 * cache line here. Checksums are not updated: nothing under test reads them.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

enum cost_rewrite {
	COST_FIXED = 0,  /* the frame as it is */
	COST_SPOOF6 = 1, /* source bits 32..63 random: a new /64 every packet */
	COST_CYCLE6 = 2, /* source bits 32..63 = (count + cpu offset) % cycle: `cycle` sources in turn */
};

#define IPV6_SADDR_WORD1 (14 + 8 + 4) /* byte offset of the source's bits 32..63 */

const volatile __u32 rewrite = COST_FIXED;
const volatile __u32 cycle = 1;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sent SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} chain_target SEC(".maps");

SEC("xdp")
int cost_chain(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0, *w = data + IPV6_SADDR_WORD1;
	__u64 *n = bpf_map_lookup_elem(&sent, &zero);

	if (!n || (void *)(w + 1) > data_end)
		return XDP_ABORTED;
	if (rewrite == COST_SPOOF6)
		*w = bpf_get_prandom_u32();
	else if (rewrite == COST_CYCLE6)
		*w = bpf_htonl((__u32)(*n % cycle));
	*n += 1;
	bpf_tail_call(ctx, &chain_target, 0);
	return XDP_ABORTED;
}
