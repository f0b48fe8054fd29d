// SPDX-License-Identifier: GPL-2.0-only
/*
 * bench_gen.bpf.c — the benchmark's traffic generator and its reply sink.
 *
 * bench_gen runs under BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES: for
 * every repeat it may rewrite the frame, then redirects it into a veth, whose
 * peer (another netns) carries the engine under test. The kernel keeps the
 * frame's bytes between runs of the same page, so every rewrite reads the
 * current value from the frame and adjusts the checksums incrementally.
 *
 * bench_pace is bench_gen at a fixed rate below saturation: bursts of
 * pace_burst frames every pace_period_ns. Between bursts the program waits
 * (bpf_loop on the clock) instead of dropping frames: a frame the generator
 * drops goes back to its page pool under the lock the receive CPU takes to
 * return every frame it handled, and thousands of them a burst would make the
 * receive CPU wait for it.
 *
 * With a window (gen_window > 0), bench_gen keeps at most that many frames
 * between what it has sent and what the peer's NAPI has taken (bench_drained,
 * on the napi_poll tracepoint, counts the latter; batches of gen_batch frames
 * are whole BPF_PROG_TEST_RUN batches, which user space keeps aligned by
 * running whole batches only): the veth's ring never
 * overflows, so no frame is refused. A refused frame goes back to the
 * generator's page pool under the lock the receive CPU takes to return every
 * frame it handled: refusals, thousands a millisecond when the engine is
 * slower than the generator, would make the receive CPU wait on the
 * generator, and the slower engine the more. The window holds the receive
 * CPU at saturation the way a NIC's ring does, whose overflow costs the host
 * nothing. bench_drained runs once per NAPI poll (up to 64 frames) on the
 * receive CPU, for every engine alike.
 *
 * bench_sink drops whatever the engine's side sends back (TCP RSTs, ICMP), so
 * replies cost the appliance its transmit, and not a second stack.
 *
 * Frames are untagged Ethernet + IPv4 (no options) or IPv6 (no extension
 * headers) + TCP or UDP, as bench/frames.ts builds them.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

enum gen_rewrite {
	GEN_FIXED = 0,      /* send the frame as it is */
	GEN_SPORT = 1,      /* a new source port every frame: new flows from one source */
	GEN_SPOOF6 = 2,     /* a random IPv6 source /64 (bits 32..63) every frame */
};

const volatile __u32 out_ifindex = 0;
const volatile __u32 rewrite = GEN_FIXED;

/* frames generated (one CPU runs the generator; a plain counter is enough) */
__u64 generated = 0;

/* RFC 1624: fold a 16-bit field change old -> new into a checksum. */
static __always_inline __u16 csum_replace2(__u16 check, __u16 old, __u16 new)
{
	__u32 sum = (__u16)~check + (__u16)~old + new;

	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} chain_target SEC(".maps");

static __always_inline void rewrite_frame(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u64 n = generated++;
	__u8 proto;
	void *l4;

	if (rewrite == GEN_FIXED)
		return;
	if ((void *)(eth + 1) > data_end)
		goto out;

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		__u8 *ip = (void *)(eth + 1);

		if ((void *)(ip + 20) > data_end)
			goto out;
		proto = ip[9];
		l4 = ip + 20;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		__u8 *ip6 = (void *)(eth + 1);
		__u16 *w, *check, old;
		__u32 r;

		if ((void *)(ip6 + 40) > data_end)
			goto out;
		proto = ip6[6];
		l4 = ip6 + 40;
		if (rewrite == GEN_SPOOF6) {
			/* source words 2 and 3 (bytes 12..15 of the header's saddr at 8) */
			w = (__u16 *)(ip6 + 12);
			check = 0;
			if (proto == IPPROTO_TCP && l4 + 20 <= data_end)
				check = (__u16 *)(l4 + 16);
			else if (proto == IPPROTO_UDP && l4 + 8 <= data_end)
				check = (__u16 *)(l4 + 6);
			if (!check)
				goto out;
			r = bpf_get_prandom_u32();
			old = w[0];
			w[0] = (__u16)r;
			*check = csum_replace2(*check, old, w[0]);
			old = w[1];
			w[1] = (__u16)(r >> 16);
			*check = csum_replace2(*check, old, w[1]);
			goto out;
		}
	} else {
		goto out;
	}

	if (rewrite == GEN_SPORT) {
		/* source ports 1024..65535, in turn */
		__u16 port = bpf_htons(1024 + (__u16)(n % 64512));
		__u16 *sport = l4, *check = 0, old;

		if (proto == IPPROTO_TCP && l4 + 20 <= data_end)
			check = (__u16 *)(l4 + 16);
		else if (proto == IPPROTO_UDP && l4 + 8 <= data_end)
			check = (__u16 *)(l4 + 6);
		if (!check)
			goto out;
		old = *sport;
		*sport = port;
		/* IPv4 UDP may carry no checksum (0); leave it so */
		if (!(proto == IPPROTO_UDP && *check == 0))
			*check = csum_replace2(*check, old, port);
	}
out:
	return;
}

/* bpf_loop's bound (BPF_MAX_LOOPS): tens of ms of clock reads or counter
 * reads, more than any wait between bursts or for the peer's NAPI; a longer
 * wait only sends early. */
#define GEN_WAIT_LOOPS (1 << 23)

/* The window: frames sent and not yet taken by the peer's NAPI (0: no window). */
const volatile __u32 gen_window = 0;
/* The peer, whose NAPI polls bench_drained counts: its ifindex, and its name's
 * first 8 bytes (zero-padded), since ifindexes repeat across namespaces. */
const volatile __u32 drain_ifindex = 0;
const volatile __u64 drain_name = 0;

/* Frames the peer's NAPI polls took (written by the receive CPU, read by the
 * generator's). In a section of its own, so on a page of its own: not on the
 * line of `generated`, which the generator writes every frame. */
__u64 drained SEC(".data.drained") = 0;

struct net_device {
	char name[16];
	int ifindex;
} __attribute__((preserve_access_index));

struct napi_struct {
	struct net_device *dev;
} __attribute__((preserve_access_index));

/* napi_poll(napi, work, budget) */
SEC("tp_btf/napi_poll")
int bench_drained(__u64 *ctx)
{
	struct napi_struct *napi = (void *)ctx[0];
	int work = (int)ctx[1];
	struct net_device *dev = napi->dev;
	__u64 name = 0;

	if (work <= 0 || !dev || dev->ifindex != (int)drain_ifindex)
		return 0;
	bpf_probe_read_kernel(&name, sizeof(name), dev->name);
	if (name == drain_name)
		__sync_fetch_and_add(&drained, work);
	return 0;
}

/* Frames a BPF_PROG_TEST_RUN batch (its batch_size, a power of two): the
 * kernel kicks the peer's NAPI only when it flushes, at the end of each batch,
 * so the generator waits for room only before a batch's first frame, and for
 * a whole batch's. */
const volatile __u32 gen_batch = 64;

/* bpf_loop callback: stop once the window has room for a batch. */
static long window_wait(__u64 i, void *ctx)
{
	return generated + gen_batch - *(volatile __u64 *)&drained <= gen_window;
}

/* The generator: rewrite, then transmit through the veth. */
SEC("xdp")
int bench_gen(struct xdp_md *ctx)
{
	if (gen_window && (generated & (gen_batch - 1)) == 0 && !window_wait(0, 0))
		bpf_loop(GEN_WAIT_LOOPS, window_wait, 0, 0);
	rewrite_frame(ctx);
	return bpf_redirect(out_ifindex, 0);
}

/* Per-packet cost under the same rewrites: rewrite, then tail-call the engine
 * (connrate_xdp or xdp_noop) put in chain_target[0]. */
SEC("xdp")
int bench_chain(struct xdp_md *ctx)
{
	rewrite_frame(ctx);
	bpf_tail_call(ctx, &chain_target, 0);
	return XDP_ABORTED;
}

/* Pacing: how far behind schedule a burst may start before the schedule
 * restarts from now instead of catching up (a catch-up of many bursts back to
 * back would overflow the receiver's ring, i.e. not be the offered rate). */
#define PACE_MAX_LAG_PERIODS 4

const volatile __u64 pace_period_ns = 1;
const volatile __u32 pace_burst = 1;

struct pace_state {
	__u64 next_ns;	/* when the next burst is due */
	__u64 sent;	/* frames transmitted so far */
	__u32 left;	/* frames left in the current burst */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pace_state);
} pace SEC(".maps");

/* bpf_loop callback: stop once the clock reaches *due. */
static long pace_wait(__u64 i, void *due)
{
	return bpf_ktime_get_ns() >= *(__u64 *)due;
}

SEC("xdp")
int bench_pace(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct pace_state *st = bpf_map_lookup_elem(&pace, &zero);

	if (!st)
		return XDP_ABORTED;
	if (st->left == 0) {
		__u64 due = st->next_ns, now = bpf_ktime_get_ns();

		if (now < due)
			bpf_loop(GEN_WAIT_LOOPS, pace_wait, &due, 0);
		now = bpf_ktime_get_ns();
		if (now - st->next_ns > PACE_MAX_LAG_PERIODS * pace_period_ns)
			st->next_ns = now;
		st->next_ns += pace_period_ns;
		st->left = pace_burst;
	}
	st->left--;
	st->sent++;
	rewrite_frame(ctx);
	return bpf_redirect(out_ifindex, 0);
}

SEC("xdp")
int bench_sink(struct xdp_md *ctx)
{
	return XDP_DROP;
}

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} dropped SEC(".maps");

/* A reference engine for the report: count and drop, the fastest anything
 * can refuse a frame at the veth. */
SEC("xdp")
int bench_drop(struct xdp_md *ctx)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&dropped, &zero);

	if (n)
		*n += 1;
	return XDP_DROP;
}
