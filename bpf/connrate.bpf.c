// SPDX-License-Identifier: GPL-2.0-only
/*
 * connrate.bpf.c — per-(source, destination port, protocol) new-connection rate
 * limiting in XDP. Layouts shared with user space: connrate.h.
 *
 * Per packet, in this order: parse (VLANs, IPv4/IPv6, TCP/UDP) → the
 * configuration in force (none applied yet: pass) → is the destination local
 * (inline for a few addresses) → is the limit on for this protocol and port
 * → TCP: is it a new connection (SYN without ACK) → the key's has_bucket bit,
 * in its first-seen group; set: this CPU's drop cache (a key known to be over
 * its limit in this tick: drop, touching only per-CPU lines) → UDP: is its
 * flow established (seen within the timeout; while this CPU holds a UDP
 * drop-cache entry made in this tick, the drop cache and the key's flow filter
 * come first: a new flow of a key over its limit drops without a flow-table
 * lookup) → is the source exempt (a non-default route or
 * the admin list) → has_bucket clear: the first-seen group admits a new key
 * (one record, one CAS) without a bucket lookup; set, or a second packet
 * within a token, or a full group: its GCRA bucket, updated by
 * compare-and-swap so the limit is exact across CPUs → the shared fallback
 * bucket when a key cannot be stored → a drop fills this CPU's drop cache and
 * (once a minute per key) sends a log event.
 *
 * Shared cache lines written, per path (everything else is per CPU):
 *   drop, key in the drop cache ......... none
 *   drop decided through the bucket ..... none (a hot key: once per tick per CPU);
 *                                          drop_stats' LRU lists when a key's
 *                                          counts first leave a drop cache
 *   established TCP, not monitored ...... none
 *   drop of a new UDP flow, key cached .. none (the flow filter is read only)
 *   established UDP ..................... the flow's last-seen, once per ms, and
 *                                          its bits in the key's flow filter (a
 *                                          write once per flow per epoch)
 *   new UDP flow ........................ its flow-filter bits, the flow insert
 *   new key, first packet ............... its first-seen group (one CAS)
 *   new key, second packet .............. has_bucket (once per bit), the bucket
 *                                          insert (the LRU's lists)
 *   token taken from a bucket ........... the bucket's tat (one CAS)
 *   a key starts being limited .......... its last_event_ns (CAS, once a minute)
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/errno.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "connrate.h"

char LICENSE[] SEC("license") = "GPL";

/* Set only by tests: read "now" from the test_clock map (cr_test_clock), and
 * make every bucket insert fail (cr_test_insert_fail). The verifier removes
 * these branches when they are false. */
const volatile __u8 cr_test_clock = 0;
const volatile __u8 cr_test_insert_fail = 0;
/* Set only by tests: every key of a protocol falls in one first-seen group
 * with one fingerprint (collisions on demand). */
const volatile __u8 cr_test_first_seen_collide = 0;

#define IPV4_FRAG_OFFSET_MASK 0x1fff
#define IPV6_FRAG_OFFSET_MASK 0xfff8
#define IPV4_MIN_IHL 5
#define TCP_MIN_DOFF 5
#define FLOW_REFRESH_NS 1000000ULL /* refresh a UDP flow's last-seen at most once per ms */
#define COARSE_LAG_MAX_NS CR_TICK_MAX_NS  /* the coarse clock lags by at most one tick */
#define TEST_TICK_SHIFT 22                /* under the test clock, a tick is 2^22 ns (4.2 ms) */
#define COARSE_MIN_PERIOD_NS 1000000000ULL /* coarse first-seen decisions only at 1 s a token or slower */
#define PORT_SLOT_NONE 0xffffffffU
#define PORT_SLOT_GUARD (1U << 24) /* stop handing out port slots long before the counter wraps */
#define CACHE_LINE 64
_Static_assert(sizeof(struct cr_first_seen) == CACHE_LINE, "a first-seen group is one cache line");
_Static_assert(sizeof(struct cr_flow_filter) == 2 * CACHE_LINE, "a flow filter is two cache lines");
_Static_assert(sizeof(struct cr_config) % CACHE_LINE == 0, "each configuration starts on a line");
_Static_assert(__builtin_offsetof(struct cr_config, ipv6_mask) <= CACHE_LINE - sizeof(__u64),
	       "a cached drop of an IPv4 key reads the configuration's first line (and its port word)");
_Static_assert(sizeof(struct cr_locals) % CACHE_LINE == 0, "each locals copy starts on a line");
_Static_assert(__builtin_offsetof(struct cr_locals, v6) <= CACHE_LINE, "the IPv4 locals are one line");
#define FS_HALF (CR_FIRST_SEEN_GROUPS / CR_PROTO_COUNT)
#define FS_NONE 0xff
#define FS_CLOCK_MASK (((__u64)1 << CR_FIRST_SEEN_CLOCK_BITS) - 1)
#define DROP_CACHE_HASH_SHIFT 20 /* key_hash bits 20..31: apart from the first-seen index (0..15) */
#define HAS_BUCKET_HASH_SHIFT 32 /* key_hash bits 32..37: the key's has_bucket bit */
#define HAS_BUCKET_BIT_MASK 63
#define FLOW_FILTER_HASH_SHIFT 44 /* key_hash bits 44..58: the key's flow filter */
#define FLOW_PAYLOAD_MASK ((1ULL << CR_FLOW_FILTER_TAG_SHIFT) - 1)
#define FLOW_EPOCH_MASK ((1U << CR_FLOW_EPOCH_BITS) - 1)
#define FLOW_EPOCH_HALF (1U << (CR_FLOW_EPOCH_BITS - 1)) /* tag distances below it are later epochs */
#define FLOW_SHIFT_MAX 63
#define FLOW_WORD_HASH_SHIFT 61 /* flow_hash bits 61..63 pick the word, */
#define FLOW_BIT_HASH_SHIFT 29  /* 29..44 and 45..60 the bits */
#define FLOW_BIT_HASH_BITS 16
#define FLOW_BIT_HASH_MASK ((1U << FLOW_BIT_HASH_BITS) - 1)
_Static_assert(CR_FLOW_FILTER_WORDS == 1 << (64 - FLOW_WORD_HASH_SHIFT), "the word index is the hash's top bits");
_Static_assert(FLOW_BIT_HASH_SHIFT + 2 * FLOW_BIT_HASH_BITS == FLOW_WORD_HASH_SHIFT, "the bits lie below the word index");
#define FLOW_BIT_SCALE_SHIFT 16 /* (16 hash bits * 48) >> 16: a bit of 48, without a division */
#define HASH_K4 0x27d4eb2f165667c5ULL
#define U32_BITS 32
#define U32_MASK 0xffffffffULL
#define HASH_K1 0x9e3779b97f4a7c15ULL
#define HASH_K2 0xc2b2ae3d27d4eb4fULL
#define HASH_K3 0x165667b19e3779f9ULL
#define HASH_FMIX 0xff51afd7ed558ccdULL
#define HASH_FMIX_SHIFT 33

#ifndef READ_ONCE
#define READ_ONCE(x) (*(volatile typeof(x) *)&(x))
#endif
#ifndef WRITE_ONCE
#define WRITE_ONCE(x, v) (*(volatile typeof(x) *)&(x) = (v))
#endif

struct vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

struct ipv6_ext_hdr {
	__u8 nexthdr;
	__u8 hdrlen;
};

struct ipv6_frag_hdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;
	__be32 identification;
};

/* The two configurations (connrate.h). Mmapable only for its layout, like
 * the locals: values start on a page, so a value's first fields share a line. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CR_CONFIG_SLOTS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct cr_config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cr_in_force);
} in_force SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} test_clock SEC(".maps");

/* Never read here: pinned beside the other maps for user space (connrate.h). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cr_abi_id);
} abi_id SEC(".maps");

/* The local addresses: inline (locals[in_force.locals_gen & 1]) when few, else this hash. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CR_DEFAULT_LOCAL_ADDRS);
	__type(key, struct cr_addr);
	__type(value, __u8);
} local_addrs SEC(".maps");

/* The inline local addresses, double-buffered (in_force.locals_gen). Mmapable only
 * for its layout: values start on a page, so the IPv4 ones share one line. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CR_CONFIG_SLOTS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct cr_locals);
} locals SEC(".maps");

/* Non-default routes (tag CR_TAG_ROUTE) and the admin exempt list (tag = config
 * slot), one trie for both families (IPv4 v4-mapped). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, CR_DEFAULT_PREFIXES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct cr_lpm_key);
	__type(value, __u8);
} src_prefixes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CR_DEFAULT_BUCKETS);
	__type(key, struct cr_bucket_key);
	__type(value, struct cr_bucket);
} buckets SEC(".maps");

/* Per-CPU drops of keys that left a CPU's drop cache (connrate.h). User space
 * sizes it like `buckets`. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, CR_DEFAULT_BUCKETS);
	__type(key, struct cr_bucket_key);
	__type(value, struct cr_drop_stats);
} drop_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CR_DROP_CACHE_SLOTS);
	__type(key, __u32);
	__type(value, struct cr_drop_cache);
} drop_cache SEC(".maps");

/* First-seen records (connrate.h): one group per hash of the key, TCP groups
 * in the first half, UDP in the second. Mmapable only for its layout: such an
 * array's values start on a page, so every group is exactly one cache line. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CR_FIRST_SEEN_GROUPS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct cr_first_seen);
} first_seen SEC(".maps");

/* UDP flow filters (connrate.h), one per hash of the key. Mmapable only for
 * its layout: values start on a page, so a flow's two words share a line. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CR_FLOW_FILTER_SLOTS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct cr_flow_filter);
} flow_filter SEC(".maps");

/* GCRA tat of the shared bucket of each (protocol, port), for keys that could
 * not be stored. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CR_PROTO_COUNT * CR_PORTS);
	__type(key, __u32);
	__type(value, __u64);
} fallback SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CR_DEFAULT_UDP_FLOWS);
	__type(key, struct cr_flow_key);
	__type(value, struct cr_flow);
} udp_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CR_DEFAULT_PORT_STATS);
	__type(key, struct cr_port_key);
	__type(value, __u32);
} port_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CR_DEFAULT_PORT_STATS);
	__type(key, __u32);
	__type(value, struct cr_port_stats);
} port_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} port_slot_next SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cr_counters);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, CR_DEFAULT_EVENT_RING);
} events SEC(".maps");

/* Keep the enums and the event in BTF, so user space reads their layout and
 * values from the object instead of copying them. */
struct cr_abi {
	enum cr_proto proto;
	enum cr_mode mode;
	enum cr_counter counter;
	enum cr_lpm_tag tag;
	enum cr_token token;
	struct cr_event event;
};
const volatile struct cr_abi cr_abi_types = {};

/* What the parser found: enough to judge the packet. */
struct packet {
	struct cr_addr src;
	struct cr_addr dst;
	__u16 sport;
	__u16 dport;
	__u8 proto; /* enum cr_proto */
	__u8 is_v6;
	__u8 tcp_new; /* TCP: SYN set, ACK clear */
};

enum parse_result {
	PARSE_OK = 0,
	PARSE_UNPARSABLE,
	PARSE_NOT_MONITORED, /* well-formed, but not something connrate judges */
	PARSE_FRAGMENT,
	PARSE_EXT_LIMIT,
};

#define COUNT(cnt, idx) ((cnt)->n[(idx)]++)

/*
 * Clocks. Admissions read the precise clock (bpf_ktime_get_ns): GCRA stores
 * tat' = max(tat, C(now)) + T, and a clock that lags would store a smaller
 * tat', admitting the next packet up to the lag early. Everything that can
 * only drop or only expire reads the coarse clock (bpf_ktime_get_coarse_ns,
 * the last tick: it lags the precise clock by at most one tick, 1–10 ms, and
 * never leads it):
 *  - the drop cache reads no clock at all, only the tick count (jiffies, one
 *    load): an entry drops for the rest of the tick it was made in, and is
 *    made only when its bucket has no token for CR_TICK_MAX_NS after the
 *    precise clock read before it — more than the rest of any tick. It never
 *    drops a packet the bucket would admit;
 *  - the UDP flow table: a lagging last-seen makes a flow expire at most one
 *    tick early, so at most one more datagram counts as new — stricter only.
 *  - the first-seen stage (a new key with no bucket) decides on the coarse
 *    clock and its bound, coarse <= now <= coarse + COARSE_LAG_MAX_NS: record
 *    ages are taken against the lower bound (records live longer) and a new
 *    record holds the upper one (its token counts as taken up to 10 ms late),
 *    stricter only. It does so only when a token takes 1 s or more, so the
 *    bound costs a new key at most 1% of a token.
 * Why not the coarse clock for admissions: GCRA stores tat' = max(tat, C) + T,
 * so a lagging C would store a smaller tat' — the next token up to the lag
 * early, looser. Deciding to drop on a lagging clock is stricter (it sees fewer
 * tokens); storing from one is not.
 * A TCP packet on the drop path reads the tick count and no clock; established
 * TCP reads none; UDP reads the coarse clock for its flow; a spoofed source's
 * first packet reads the coarse clock; only a new connection judged by a
 * bucket reads the precise one.
 */
static __always_inline __u64 test_now(void)
{
	__u32 zero = 0;
	__u64 *t = bpf_map_lookup_elem(&test_clock, &zero);

	return t ? *t : 0;
}

static __always_inline __u64 now_ns(void)
{
	if (cr_test_clock)
		return test_now();
	return bpf_ktime_get_ns();
}

static __always_inline __u64 coarse_now_ns(void)
{
	if (cr_test_clock)
		return test_now();
	return bpf_ktime_get_coarse_ns();
}

/* The kernel tick (jiffies: inlined, one load); under the test clock, the
 * test clock in ticks of 2^TEST_TICK_SHIFT ns (shorter than CR_TICK_MAX_NS). */
static __always_inline __u64 tick_now(void)
{
	if (cr_test_clock)
		return test_now() >> TEST_TICK_SHIFT;
	return bpf_jiffies64();
}

#define CR_ADDR_WORDS (CR_ADDR_LEN / sizeof(__u32))
#define V4_MAPPED_WORD2 0x0000ffff /* ::ffff:a.b.c.d */

/* Complete an IPv4 packet's addresses to their v4-mapped form (the parser
 * wrote only the last word of each). */
static __always_inline void v4_mapped(struct packet *p)
{
	__u32 *s = (__u32 *)p->src.bytes, *d = (__u32 *)p->dst.bytes;

	if (p->is_v6)
		return;
	s[0] = 0;
	s[1] = 0;
	s[2] = bpf_htonl(V4_MAPPED_WORD2);
	d[0] = 0;
	d[1] = 0;
	d[2] = bpf_htonl(V4_MAPPED_WORD2);
}

static __always_inline int parse_l4(void *l4, void *data_end, __u8 ipproto, struct packet *p)
{
	if (ipproto == IPPROTO_TCP) {
		struct tcphdr *th = l4;

		if ((void *)(th + 1) > data_end)
			return PARSE_UNPARSABLE;
		if (th->doff < TCP_MIN_DOFF)
			return PARSE_UNPARSABLE;
		p->proto = CR_PROTO_TCP;
		p->sport = bpf_ntohs(th->source);
		p->dport = bpf_ntohs(th->dest);
		p->tcp_new = th->syn && !th->ack;
		return PARSE_OK;
	}
	if (ipproto == IPPROTO_UDP) {
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) > data_end)
			return PARSE_UNPARSABLE;
		p->proto = CR_PROTO_UDP;
		p->sport = bpf_ntohs(uh->source);
		p->dport = bpf_ntohs(uh->dest);
		return PARSE_OK;
	}
	return PARSE_NOT_MONITORED;
}

static __always_inline int parse_ipv4(void *l3, void *data_end, struct packet *p)
{
	struct iphdr *iph = l3;
	__u32 hlen;

	if ((void *)(iph + 1) > data_end)
		return PARSE_UNPARSABLE;
	if (iph->version != 4 || iph->ihl < IPV4_MIN_IHL)
		return PARSE_UNPARSABLE;
	hlen = iph->ihl * 4;
	if (bpf_ntohs(iph->tot_len) < hlen)
		return PARSE_UNPARSABLE;
	if (bpf_ntohs(iph->frag_off) & IPV4_FRAG_OFFSET_MASK)
		return PARSE_FRAGMENT;
	/* The last words only: v4_mapped() writes the rest once the packet is
	 * monitored (is_local() reads only these for IPv4). */
	((__u32 *)p->src.bytes)[CR_ADDR_WORDS - 1] = iph->saddr;
	((__u32 *)p->dst.bytes)[CR_ADDR_WORDS - 1] = iph->daddr;
	p->is_v6 = 0;
	if (iph->protocol != IPPROTO_TCP && iph->protocol != IPPROTO_UDP)
		return PARSE_NOT_MONITORED;
	/* The L4 header must lie inside the datagram, not just the frame. */
	if (bpf_ntohs(iph->tot_len) < hlen + (iph->protocol == IPPROTO_TCP ?
						   sizeof(struct tcphdr) : sizeof(struct udphdr)))
		return PARSE_UNPARSABLE;
	return parse_l4(l3 + hlen, data_end, iph->protocol, p);
}

static __always_inline int parse_ipv6(void *l3, void *data_end, struct packet *p)
{
	struct ipv6hdr *ip6h = l3;
	void *cur = ip6h + 1;
	__u8 nexthdr;
	int i;

	if (cur > data_end)
		return PARSE_UNPARSABLE;
	if (ip6h->version != 6)
		return PARSE_UNPARSABLE;
	__builtin_memcpy(p->src.bytes, &ip6h->saddr, CR_ADDR_LEN);
	__builtin_memcpy(p->dst.bytes, &ip6h->daddr, CR_ADDR_LEN);
	p->is_v6 = 1;
	nexthdr = ip6h->nexthdr;

	for (i = 0; i < CR_IPV6_EXT_MAX; i++) {
		switch (nexthdr) {
		case IPPROTO_TCP:
		case IPPROTO_UDP:
			return parse_l4(cur, data_end, nexthdr, p);
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS: {
			struct ipv6_ext_hdr *eh = cur;

			if ((void *)(eh + 1) > data_end)
				return PARSE_UNPARSABLE;
			nexthdr = eh->nexthdr;
			cur += (eh->hdrlen + 1) * 8;
			break;
		}
		case IPPROTO_AH: {
			struct ipv6_ext_hdr *eh = cur;

			if ((void *)(eh + 1) > data_end)
				return PARSE_UNPARSABLE;
			nexthdr = eh->nexthdr;
			cur += (eh->hdrlen + 2) * 4;
			break;
		}
		case IPPROTO_FRAGMENT: {
			struct ipv6_frag_hdr *fh = cur;

			if ((void *)(fh + 1) > data_end)
				return PARSE_UNPARSABLE;
			if (bpf_ntohs(fh->frag_off) & IPV6_FRAG_OFFSET_MASK)
				return PARSE_FRAGMENT;
			nexthdr = fh->nexthdr;
			cur = fh + 1;
			break;
		}
		default:
			return PARSE_NOT_MONITORED; /* ICMPv6, ESP, no next header, … */
		}
	}
	if (nexthdr == IPPROTO_TCP || nexthdr == IPPROTO_UDP)
		return parse_l4(cur, data_end, nexthdr, p);
	return PARSE_EXT_LIMIT;
}

static __always_inline int parse(struct xdp_md *ctx, struct packet *p)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	void *cur = eth + 1;
	__u16 h_proto;
	int i;

	if (cur > data_end)
		return PARSE_UNPARSABLE;
	h_proto = eth->h_proto;

	for (i = 0; i < CR_VLAN_MAX; i++) {
		struct vlan_hdr *vh = cur;

		if (h_proto != bpf_htons(ETH_P_8021Q) && h_proto != bpf_htons(ETH_P_8021AD))
			break;
		if ((void *)(vh + 1) > data_end)
			return PARSE_UNPARSABLE;
		h_proto = vh->encap_proto;
		cur = vh + 1;
	}

	if (h_proto == bpf_htons(ETH_P_IP))
		return parse_ipv4(cur, data_end, p);
	if (h_proto == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(cur, data_end, p);
	return PARSE_NOT_MONITORED; /* ARP, a third VLAN tag, … */
}

static __always_inline int port_listed(const struct cr_config *cfg, __u8 proto, __u16 port)
{
	if (cfg->all_ports[proto & 1])
		return 1;
	return (cfg->ports[proto & 1][port / 64] >> (port % 64)) & 1;
}

/* Is the destination one of ours, under locals generation `gen`? Inline for a
 * few addresses, else the hash. */
static __always_inline int is_local(struct packet *p, __u32 gen)
{
	__u32 slot = gen & 1;
	const struct cr_locals *l;
	const __u32 *d = (const __u32 *)p->dst.bytes;
	int i;

	l = bpf_map_lookup_elem(&locals, &slot);
	if (!l)
		return 0;
	if (l->use_map) {
		v4_mapped(p);
		return bpf_map_lookup_elem(&local_addrs, &p->dst) != NULL;
	}
	if (!p->is_v6) {
		for (i = 0; i < CR_LOCALS_V4; i++) {
			if (i >= l->v4_count)
				return 0;
			if (l->v4[i] == d[3])
				return 1;
		}
		return 0;
	}
	for (i = 0; i < CR_LOCALS_V6; i++) {
		const __u32 *a = (const __u32 *)l->v6[i].bytes;

		if (i >= l->v6_count)
			return 0;
		if (a[0] == d[0] && a[1] == d[1] && a[2] == d[2] && a[3] == d[3])
			return 1;
	}
	return 0;
}

static __always_inline int source_exempt(const struct packet *p, __u32 slot,
					 const struct cr_config *cfg)
{
	struct cr_lpm_key k = {
		.prefixlen = CR_TAG_BITS + CR_ADDR_LEN * 8,
		.tag = CR_TAG_ROUTE,
	};

	__builtin_memcpy(k.addr, p->src.bytes, CR_ADDR_LEN);
	if (bpf_map_lookup_elem(&src_prefixes, &k))
		return 1;
	if (!cfg->exempt_count)
		return 0;
	k.tag = slot;
	return bpf_map_lookup_elem(&src_prefixes, &k) != NULL;
}

/* The (protocol, port)'s slot in port_stats, handed out on first use. */
static __always_inline __u32 port_slot_of(const struct packet *p)
{
	struct cr_port_key k = { .port = p->dport, .proto = p->proto };
	__u32 zero = 0, slot, *s, *next;
	long err;

	s = bpf_map_lookup_elem(&port_slots, &k);
	if (s)
		return *s;
	next = bpf_map_lookup_elem(&port_slot_next, &zero);
	if (!next || READ_ONCE(*next) >= PORT_SLOT_GUARD)
		return PORT_SLOT_NONE;
	slot = __sync_fetch_and_add(next, 1);
	err = bpf_map_update_elem(&port_slots, &k, &slot, BPF_NOEXIST);
	if (err == -EEXIST) {
		s = bpf_map_lookup_elem(&port_slots, &k); /* another CPU was first; its slot */
		return s ? *s : PORT_SLOT_NONE;
	}
	return err ? PORT_SLOT_NONE : slot;
}

static __always_inline void count_port(struct cr_counters *cnt, __u32 slot, __u32 verdict_cnt)
{
	struct cr_port_stats *ps = bpf_map_lookup_elem(&port_stats, &slot);

	if (!ps) {
		COUNT(cnt, CR_CNT_PORT_STATS_FULL);
		return;
	}
	if (verdict_cnt == CR_CNT_NEW_ALLOWED)
		ps->allowed++;
	else if (verdict_cnt == CR_CNT_NEW_DROPPED)
		ps->dropped++;
	else
		ps->would_drop++;
}

/* (x * mult) >> shift without overflow for any x, mult < 2^32 (connrate.h). */
static __always_inline __u64 mul_shift(__u64 x, __u32 mult, __u32 shift)
{
	__u64 hi = (x >> U32_BITS) * mult;
	__u64 lo = (x & U32_MASK) * mult;

	shift &= 63;
	if (shift >= U32_BITS)
		return (hi >> (shift - U32_BITS)) + (lo >> shift);
	return (hi << (U32_BITS - shift)) + (lo >> shift);
}

/* C(now) of a token clock (connrate.h). */
static __always_inline __u64 token_clock(const struct cr_token_clock *c, __u64 now)
{
	__u64 e, q, r, period = c->period_ns;

	if (now <= c->base_ns || !period)
		return c->base_tokens;
	e = now - c->base_ns;
	q = mul_shift(e, c->q_mult, c->q_shift);
	r = e - q * period;
	if (r >= period) {
		q++;
		r -= period;
	}
	if (r >= period) {
		q++;
		r -= period;
	}
	return c->base_tokens + (q << CR_TOKEN_SHIFT) + mul_shift(r, c->f_mult, c->f_shift);
}

/* The bucket key as the five 32-bit words it is hashed and compared by. */
#define KEY_WORDS (sizeof(struct cr_bucket_key) / sizeof(__u32))
_Static_assert(sizeof(struct cr_bucket_key) % sizeof(__u32) == 0, "bucket key is whole words");

/* The key's last word: dport, proto and pad as they lie in memory. */
union key_tail {
	struct {
		__u16 dport;
		__u8 proto;
		__u8 pad;
	} f;
	__u32 w;
};
_Static_assert(sizeof(union key_tail) == sizeof(struct cr_bucket_key) - sizeof(struct cr_addr),
	       "key_tail is the bucket key after its source");

/* The bucket key of a packet: IPv6 sources masked to the configured prefix.
 * Written one whole word at a time, as key_hash and key_equal read it: a word
 * read back from narrower stores would stall store forwarding. */
static __always_inline void bucket_key_of(const struct packet *p, const struct cr_config *cfg,
					  struct cr_bucket_key *key)
{
	const __u32 *s = (const __u32 *)p->src.bytes;
	__u32 *w = (__u32 *)key;
	union key_tail t = { .f = { .dport = p->dport, .proto = p->proto, .pad = 0 } };

	if (p->is_v6) {
		w[0] = s[0] & cfg->ipv6_mask[0];
		w[1] = s[1] & cfg->ipv6_mask[1];
		w[2] = s[2] & cfg->ipv6_mask[2];
		w[3] = s[3] & cfg->ipv6_mask[3];
	} else {
		w[0] = s[0];
		w[1] = s[1];
		w[2] = s[2];
		w[3] = s[3];
	}
	w[KEY_WORDS - 1] = t.w;
}

/* murmur3's 64-bit finalizer: every input bit reaches every output bit. */
static __always_inline __u64 fmix64(__u64 h)
{
	h ^= h >> HASH_FMIX_SHIFT;
	h *= HASH_FMIX;
	h ^= h >> HASH_FMIX_SHIFT;
	return h;
}

/* 64-bit hash of a bucket key (its five 32-bit words), one multiply per pair
 * and a murmur3 finalizer. The first-seen records index by bits 0..18, the
 * drop cache by bits 20..31, first-seen fingerprints are bits 40..63. */
static __always_inline __u64 key_hash(const struct cr_bucket_key *k)
{
	const __u32 *w = (const __u32 *)k;
	__u64 h;

	h = (((__u64)w[0] << U32_BITS) | w[1]) * HASH_K1;
	h ^= (((__u64)w[2] << U32_BITS) | w[3]) * HASH_K2;
	h ^= (__u64)w[4] * HASH_K3;
	return fmix64(h);
}

static __always_inline int key_equal(const struct cr_bucket_key *a, const struct cr_bucket_key *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;

	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3] && x[4] == y[4];
}

/* No token right now (GCRA: taking one would put tat' - C over the limit). */
static __always_inline int bucket_empty(__u64 tat, __u64 clock, __u64 limit)
{
	return (tat > clock ? tat : clock) + (__u64)CR_TOKEN - clock > limit;
}

/* GCRA on a shared tat: tat' = max(tat, C, floor) + 1 token; allow iff
 * tat' - C <= burst tokens, stored by compare-and-swap so CPUs racing on one
 * key admit no more than one CPU would. `floor` charges tokens the key is known
 * to have used elsewhere (0: none). Returns 1 when allowed. */
static __always_inline int gcra_take(__u64 *tatp, __u64 clock, __u64 limit, __u64 floor,
				     struct cr_counters *cnt)
{
	int i;

	for (i = 0; i < CR_CAS_RETRIES; i++) {
		__u64 old = READ_ONCE(*tatp);
		__u64 tat = old > clock ? old : clock;

		if (floor > tat)
			tat = floor;
		tat += (__u64)CR_TOKEN;
		if (tat - clock > limit)
			return 0;
		if (__sync_val_compare_and_swap(tatp, old, tat) == old)
			return 1;
	}
	COUNT(cnt, CR_CNT_CAS_EXHAUSTED);
	return 0;
}

/* Insert a key's bucket already holding `tat` (NOEXIST). Returns 0 when stored,
 * -EEXIST when another CPU stored it first, another error when the map refused. */
static __always_inline long bucket_insert(const struct cr_bucket_key *key, __u64 tat)
{
	struct cr_bucket fresh = { .tat = tat };

	if (cr_test_insert_fail)
		return -ENOMEM;
	return bpf_map_update_elem(&buckets, key, &fresh, BPF_NOEXIST);
}

/* A key that could not be stored: its (protocol, port)'s shared bucket judges
 * it, charged with what the key is known to have used (floor). Bounded by one
 * bucket per (protocol, port), and stricter for every key that shares it. */
static __always_inline int fallback_take(const struct cr_bucket_key *key, __u64 clock, __u64 limit,
					 __u64 floor, struct cr_counters *cnt)
{
	__u32 idx = (__u32)(key->proto & 1) * CR_PORTS + key->dport;
	__u64 *tat = bpf_map_lookup_elem(&fallback, &idx);

	COUNT(cnt, CR_CNT_BUCKET_FALLBACK);
	if (!tat)
		return 0;
	return gcra_take(tat, clock, limit, floor, cnt);
}

/* The bucket path of a key that may take a token: CAS on its bucket, or store a
 * new bucket holding `tat` (the token taken) — the caller has set the key's
 * has_bucket bit — or the fallback. */
static __always_inline int bucket_take(const struct cr_bucket_key *key, struct cr_bucket **bp,
				       __u64 clock, __u64 limit, __u64 floor,
				       int *inserted, struct cr_counters *cnt)
{
	struct cr_bucket *b = *bp;

	if (!b) {
		__u64 tat = (floor > clock ? floor : clock) + (__u64)CR_TOKEN;
		long err;

		if (tat - clock > limit)
			return 0;
		err = bucket_insert(key, tat);
		if (!err) {
			*inserted = 1;
			return 1;
		}
		if (err == -EEXIST)
			b = bpf_map_lookup_elem(&buckets, key); /* another CPU stored it just now */
		*bp = b;
		if (!b)
			return fallback_take(key, clock, limit, floor, cnt);
	}
	return gcra_take(&b->tat, clock, limit, floor, cnt);
}

/*
 * First-seen stage: a new key (no bucket) is admitted by writing one 64-bit
 * record — a fingerprint of the key and the token clock C1 (its low 40 bits,
 * exact) — into a free way of the key's group with one compare-and-swap,
 * instead of a bucket insert (an LRU insert and an eviction). A key sending
 * one packet never costs more. The record stands for "this key took one token
 * at C1"; it is void once C has advanced one token past C1 (the key has that
 * token back: a new key again, exactly). A group is one cache line of
 * CR_FIRST_SEEN_WAYS records:
 *  - a live record with this key's fingerprint: its second packet within a
 *    token — the caller stores a bucket charged with that token (floor). Two
 *    keys of one group with the same fingerprint share the charge: stricter.
 *  - none, and a void or empty way: claim the first by CAS (a lost CAS scans
 *    again). Then look once more for another live record of this key: two
 *    CPUs that claimed two ways for one key at once both find the other's, or
 *    at least the later one does (each CAS is a full barrier before its own
 *    second look), and whoever finds one does not count as new — so two CPUs
 *    never both see "new".
 *  - none, and every way live with other keys: BUSY, the caller stores a
 *    bucket as for any new key (exact; nothing live is overwritten). A group
 *    fills when its keys' first tokens arrive faster than one per way per
 *    token period.
 * C's low 40 bits wrap after 2^20 tokens; a record that old may look live
 * again, which only charges a token (stricter) or sends a key to the bucket
 * map (exact).
 */
enum fs_result {
	FS_NEW = 0,
	FS_AGAIN,
	FS_BUSY,
};

/* The key's group of first-seen records. */
static __always_inline struct cr_first_seen *first_seen_group(const struct cr_bucket_key *key, __u64 h)
{
	__u32 idx = ((__u32)h & (FS_HALF - 1)) + (key->proto & 1) * FS_HALF;

	if (cr_test_first_seen_collide)
		idx = (key->proto & 1) * FS_HALF;
	return bpf_map_lookup_elem(&first_seen, &idx);
}

/* A record's age on the token clock `lo` (a lower bound of now): signed, as a
 * record written by another CPU from a clock a little ahead is younger than 0
 * (and live). */
static __always_inline __s64 fs_age(__u64 r, __u64 lo)
{
	return (__s64)((lo - r) << (64 - CR_FIRST_SEEN_CLOCK_BITS)) >> (64 - CR_FIRST_SEEN_CLOCK_BITS);
}

/* Is record r live at `lo`, and the key's own? Raises *floor to its C1 + 1 token. */
static __always_inline int fs_own(__u64 r, __u64 fp, __u64 lo, __u64 *floor)
{
	__s64 age = fs_age(r, lo);

	if (!r || age >= (__s64)CR_TOKEN || (r >> CR_FIRST_SEEN_CLOCK_BITS) != fp)
		return 0;
	if (lo - age + (__u64)CR_TOKEN > *floor)
		*floor = lo - age + (__u64)CR_TOKEN;
	return 1;
}

static __always_inline int fs_void(__u64 r, __u64 lo)
{
	return !r || fs_age(r, lo) >= (__s64)CR_TOKEN;
}

/* `lo` and `hi` bound the token clock now (lo <= C(now) <= hi; equal when read
 * from the precise clock): ages are taken against lo, so records look younger
 * (live longer); a new record holds hi, so it lives longer and charges a later
 * C1. Both only make it stricter. */
static __always_inline int first_seen_claim(struct cr_first_seen *g, __u64 h, __u64 lo, __u64 hi,
					    __u64 *floor)
{
	__u64 fp = cr_test_first_seen_collide ? 1 : (h >> CR_FIRST_SEEN_CLOCK_BITS) | 1;
	__u64 rec = (fp << CR_FIRST_SEEN_CLOCK_BITS) | (hi & FS_CLOCK_MASK);
	__u32 i, way;
	int attempt, own;
	__u64 r, seen;

	if (!g)
		return FS_BUSY;
	for (attempt = 0; attempt < 2; attempt++) {
		own = 0;
		way = FS_NONE;
		seen = 0;
		for (i = 0; i < CR_FIRST_SEEN_WAYS; i++) {
			r = READ_ONCE(g->rec[i]);
			if (fs_own(r, fp, lo, floor))
				own = 1;
			else if (way == FS_NONE && fs_void(r, lo)) {
				way = i;
				seen = r;
			}
		}
		if (own)
			return FS_AGAIN;
		if (way >= CR_FIRST_SEEN_WAYS)
			return FS_BUSY;
		if (__sync_val_compare_and_swap(&g->rec[way], seen, rec) != seen)
			continue; /* another CPU wrote that way first: look again */
		for (i = 0; i < CR_FIRST_SEEN_WAYS; i++) {
			if (i != way && fs_own(READ_ONCE(g->rec[i]), fp, lo, floor))
				own = 1;
		}
		return own ? FS_AGAIN : FS_NEW;
	}
	return FS_BUSY;
}

/* Raise *floor to cover every live record of this key (fingerprint fp) in its
 * group; returns the ways that hold one (a live record never changes its way
 * or value). A global function: the verifier checks it once, not once per
 * path into it. */
__noinline __u32 first_seen_charge(struct cr_first_seen *g, __u64 fp, __u64 lo, __u64 *floor)
{
	__u32 i, ways = 0;

	if (!g || !floor)
		return 0;
	for (i = 0; i < CR_FIRST_SEEN_WAYS; i++) {
		if (fs_own(READ_ONCE(g->rec[i]), fp, lo, floor))
			ways |= 1U << i;
	}
	return ways;
}

static __always_inline __u64 first_seen_fp(__u64 h)
{
	return cr_test_first_seen_collide ? 1 : (h >> CR_FIRST_SEEN_CLOCK_BITS) | 1;
}

/*
 * UDP flow filter (struct cr_flow_filter). A datagram of a key in this CPU's
 * drop cache is dropped without a flow-table lookup (a miss there is a random
 * line of a large table: every datagram of a flood from new source ports)
 * when one of its flow's bits is clear in its key's filter: no flow of the
 * key seen within the timeout has both, so the flow is not established.
 * While the entry holds, the key has no token, so no flow of it can be
 * created: only flows that already exist, with their bits set, can be
 * established.
 */

/* A UDP datagram's flow (source, destination, source port; the destination
 * port is in its key), hashed by multiplying: a product's high bits depend on
 * every bit of its factor, so the word and the bits are taken from the top
 * (61..63 the word, 29..60 the bits) and no finalizer is needed. */
static __always_inline __u64 flow_hash(const struct packet *p)
{
	const __u32 *s = (const __u32 *)p->src.bytes, *d = (const __u32 *)p->dst.bytes;
	__u64 h;

	h = (((__u64)s[3] << U32_BITS) | d[3]) * HASH_K1;
	h ^= (((__u64)s[2] << U32_BITS) | p->sport) * HASH_K2;
	if (p->is_v6) {
		h ^= (((__u64)s[0] << U32_BITS) | s[1]) * HASH_K3;
		h ^= (((__u64)d[0] << U32_BITS) | d[1]) * HASH_K4;
		h ^= (__u64)d[2] * HASH_FMIX;
	}
	return h;
}

/* A flow's word pair in its key's filter. */
static __always_inline __u32 flow_word(__u64 fh)
{
	return (__u32)(fh >> FLOW_WORD_HASH_SHIFT) & (CR_FLOW_FILTER_WORDS - 1);
}

/* One bit of a word's 48, from 16 bits of the flow hash. */
static __always_inline __u64 flow_bit_at(__u64 fh, __u32 at)
{
	return 1ULL << ((((fh >> at) & FLOW_BIT_HASH_MASK) * CR_FLOW_FILTER_TAG_SHIFT) >> FLOW_BIT_SCALE_SHIFT);
}

/* A flow's bits in its word: two (they may coincide), so that a word with a
 * few flows in it rarely has both bits of another flow set. */
static __always_inline __u64 flow_bits(__u64 fh)
{
	return flow_bit_at(fh, FLOW_BIT_HASH_SHIFT) | flow_bit_at(fh, FLOW_BIT_HASH_SHIFT + FLOW_BIT_HASH_BITS);
}

/* The key's flow-filter slot. */
static __always_inline __u32 flow_filter_idx(__u64 h)
{
	return (__u32)(h >> FLOW_FILTER_HASH_SHIFT) & (CR_FLOW_FILTER_SLOTS - 1);
}

/* The key's flow filter. */
static __always_inline struct cr_flow_filter *flow_filter_of(__u64 h)
{
	__u32 idx = flow_filter_idx(h);

	return bpf_map_lookup_elem(&flow_filter, &idx);
}

/* The flow filter of a packet's key, for a caller that has not built the key. */
static __always_inline struct cr_flow_filter *flow_filter_for(const struct packet *p, const struct cr_config *cfg)
{
	struct cr_bucket_key key __attribute__((aligned(8)));

	bucket_key_of(p, cfg, &key);
	return flow_filter_of(key_hash(&key));
}

/* Does the configuration's epoch cover its UDP timeout (user space sets it
 * so; a slot that does not is never read, only written)? */
static __always_inline int flow_epoch_ok(const struct cr_config *cfg)
{
	__u32 shift = cfg->flow_epoch_shift;

	return shift <= FLOW_SHIFT_MAX && (1ULL << shift) >= cfg->udp_timeout_ns;
}

/* Set the flow's bits in its key's filter, in the word of the epoch of `now`:
 * before the flow's last-seen time becomes `now`. Retagging a word for this
 * epoch resets it when it held an earlier epoch of the same shift (two epochs
 * on, each of its flows has expired) and keeps the bits of another shift. */
static __always_inline void flow_filter_note(struct cr_flow_filter *ff, __u32 shift, __u64 fh, __u64 now)
{
	__u64 e, tag, bits, old, new, *wp;
	int i;

	if (!ff)
		return;
	shift &= FLOW_SHIFT_MAX;
	e = now >> shift;
	tag = ((__u64)shift << CR_FLOW_EPOCH_BITS) | (e & FLOW_EPOCH_MASK);
	wp = &ff->w[flow_word(fh)][e & 1];
	bits = flow_bits(fh);
	for (i = 0; i < CR_CAS_RETRIES; i++) {
		old = READ_ONCE(*wp);
		if ((old >> CR_FLOW_FILTER_TAG_SHIFT) == tag) {
			if ((old & bits) != bits)
				__sync_fetch_and_or(wp, bits);
			return;
		}
		new = (tag << CR_FLOW_FILTER_TAG_SHIFT) | bits;
		if (old && (old >> (CR_FLOW_FILTER_TAG_SHIFT + CR_FLOW_EPOCH_BITS)) != shift)
			new |= old & FLOW_PAYLOAD_MASK;
		if (__sync_val_compare_and_swap(wp, old, new) == old)
			return;
	}
	/* Every retry lost to another CPU's retag, which can only be to this
	 * epoch or to another shift (whose words are never read as empty). */
	__sync_fetch_and_or(wp, bits);
}

/* May the flow have been seen within the timeout? 0 only when, in the words
 * of both epochs that could hold it, one of its bits is clear. `e` (low 32
 * bits) is the epoch when the drop-cache entry was made, at most one tick
 * ago: the current one is e or e + 1, and a word already in e + 1 is not
 * ruled out. */
static __always_inline int flow_filter_maybe(const struct cr_flow_filter *ff, __u32 shift, __u32 e, __u64 fh)
{
	__u64 w, bits = flow_bits(fh);
	__u32 i, x, tag;

	if (!ff)
		return 1;
	for (i = 0; i < 2; i++) {
		x = e - i;
		w = READ_ONCE(ff->w[flow_word(fh)][x & 1]);
		if (!w)
			continue; /* never written */
		tag = (__u32)(w >> CR_FLOW_FILTER_TAG_SHIFT);
		if ((tag >> CR_FLOW_EPOCH_BITS) != (shift & FLOW_SHIFT_MAX))
			return 1; /* another shift's bits: not known to have expired */
		if (((tag - x) & FLOW_EPOCH_MASK) == 0) {
			if ((w & bits) == bits)
				return 1;
		} else if (((tag - x) & FLOW_EPOCH_MASK) < FLOW_EPOCH_HALF) {
			return 1; /* a later epoch than x */
		}
		/* else an earlier epoch: its flows have expired */
	}
	return 0;
}

/* Give back this CPU's drops of the key in a drop-cache slot to drop_stats,
 * before the slot goes to another key. */
static __always_inline void drop_cache_flush(struct cr_drop_cache *e)
{
	struct cr_drop_stats *d;
	int i;

	for (i = 0; i < 2; i++) {
		d = bpf_map_lookup_elem(&drop_stats, &e->key);
		if (d) {
			d->drops += e->drops;
			if (e->last_drop_ns > d->last_drop_ns)
				d->last_drop_ns = e->last_drop_ns;
			return;
		} else {
			struct cr_drop_stats v = { .drops = e->drops, .last_drop_ns = e->last_drop_ns };

			if (bpf_map_update_elem(&drop_stats, &e->key, &v, BPF_NOEXIST) != -EEXIST)
				return;
		}
	}
}

/* A drop decided through the bucket (or without one): count it in the key's
 * drop-cache slot, and let the slot drop the key's next packets for the rest
 * of `tick` (read before `now`) when `until` (the bucket's next token; 0: none
 * known) is at least CR_TICK_MAX_NS after `now`: that tick ends before then.
 * Returns the key's drops on this CPU. */
static __always_inline __u64 drop_cache_fill(struct cr_drop_cache *e, const struct cr_bucket_key *key,
					     const struct cr_config *cfg, __u32 rt_gen, __u32 port_slot,
					     __u64 tick, __u64 until, __u64 now, __u64 coarse)
{
	if (!key_equal(&e->key, key)) {
		if (e->drops)
			drop_cache_flush(e);
		e->key = *key;
		e->drops = 0;
		e->last_drop_ns = 0;
	}
	e->port_slot = port_slot;
	e->config_gen = (__u32)cfg->generation;
	e->routes_gen = rt_gen;
	/* UDP: the flow filter's epoch now (coarse: the clock flows are seen on) */
	e->flow_ok = key->proto == CR_PROTO_UDP && flow_epoch_ok(cfg);
	e->flow_epoch = (__u32)(coarse >> (cfg->flow_epoch_shift & FLOW_SHIFT_MAX));
	/* tick - 1 has passed: it never matches again */
	e->tick = until && until - now >= CR_TICK_MAX_NS ? tick : tick - 1;
	e->last_drop_ns = now;
	return ++e->drops;
}

/* When the bucket will next have a token, in ns (rounded down: the entry ends
 * no later than the bucket would admit). need = tat + T - limit - C > 0 token
 * units; capped at one token (a lowered burst can leave more, and an earlier
 * end only means the bucket is read again). */
static __always_inline __u64 token_due(__u64 tat, __u64 clock, __u64 limit, __u64 period, __u64 now)
{
	__u64 need = tat + (__u64)CR_TOKEN - limit - clock;

	if (!bucket_empty(tat, clock, limit))
		return 0; /* a token is there (lost CAS races): nothing to cache */

	if (need > (__u64)CR_TOKEN)
		need = (__u64)CR_TOKEN;
	return now + ((need * period) >> CR_TOKEN_SHIFT);
}

static __always_inline void emit_event(const struct cr_bucket_key *key, struct cr_bucket *b,
				       const struct cr_config *cfg, __u64 now, __u64 drops,
				       struct cr_counters *cnt)
{
	__u64 last = READ_ONCE(b->last_event_ns);
	struct cr_event *ev;

	if (last && now - last < CR_EVENT_INTERVAL_NS)
		return;
	if (__sync_val_compare_and_swap(&b->last_event_ns, last, now) != last)
		return; /* another CPU is logging this key */
	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		COUNT(cnt, CR_CNT_EVENTS_LOST);
		return;
	}
	ev->ts_ns = now;
	ev->src = key->src;
	ev->dport = key->dport;
	ev->proto = key->proto;
	ev->would_drop = cfg->mode == CR_MODE_LOG;
	ev->rate = cfg->rate[key->proto & 1];
	ev->burst = cfg->burst;
	ev->pad = 0;
	ev->drops = drops;
	bpf_ringbuf_submit(ev, 0);
}

/* What the flow table knew of a UDP packet's flow. */
struct flow_seen {
	struct cr_flow *f; /* an expired entry, or NULL */
	__u64 last;        /* its last-seen time, for the claim */
};

/* UDP: is the packet's flow established (seen within the timeout)? Refreshes it
 * when it is. Read-only otherwise. */
static __always_inline int udp_established(const struct cr_flow_key *fk,
					   const struct cr_config *cfg, __u64 now,
					   struct flow_seen *seen, struct cr_flow_filter *ff,
					   const struct packet *p)
{
	struct cr_flow *f = bpf_map_lookup_elem(&udp_flows, fk);

	seen->f = f;
	seen->last = 0;
	if (!f)
		return 0;
	seen->last = READ_ONCE(f->last_seen_ns);
	if ((__s64)(now - seen->last) >= (__s64)cfg->udp_timeout_ns)
		return 0;
	if (now - seen->last >= FLOW_REFRESH_NS) {
		flow_filter_note(ff ? ff : flow_filter_for(p, cfg), cfg->flow_epoch_shift, flow_hash(p), now);
		WRITE_ONCE(f->last_seen_ns, now);
	}
	return 1;
}

/* The datagram's flow key, the coarse clock, and is its flow established? */
static __always_inline int udp_flow_established(const struct packet *p, const struct cr_config *cfg,
						struct cr_flow_key *fk, __u64 *coarse,
						struct flow_seen *seen, struct cr_flow_filter *ff)
{
	fk->src = p->src;
	fk->dst = p->dst;
	fk->sport = p->sport;
	fk->dport = p->dport;
	*coarse = coarse_now_ns();
	return udp_established(fk, cfg, *coarse, seen, ff, p);
}

/* Claim a new (or expired) flow, so two CPUs never count one flow twice.
 * Returns 1 when this packet owns it, 0 when another CPU claimed it first
 * (this packet then belongs to an established flow). */
static __always_inline int udp_claim(const struct cr_flow_key *fk, const struct flow_seen *seen,
				     __u64 now, struct cr_flow_filter *ff, const struct cr_config *cfg,
				     const struct packet *p, struct cr_counters *cnt)
{
	struct cr_flow fresh = { .last_seen_ns = now };
	long err;

	flow_filter_note(ff, cfg->flow_epoch_shift, flow_hash(p), now);
	if (seen->f)
		return __sync_val_compare_and_swap(&seen->f->last_seen_ns, seen->last, now) == seen->last;
	err = bpf_map_update_elem(&udp_flows, fk, &fresh, BPF_NOEXIST);
	if (err == -EEXIST)
		return 0;
	if (err)
		COUNT(cnt, CR_CNT_FLOW_INSERT_FAIL); /* judged as new all the same */
	return 1;
}

/* The packet's cr_last_drop.meta: never 0. */
static __always_inline __u32 last_drop_meta(const struct packet *p)
{
	return CR_LAST_DROP_VALID | (__u32)p->is_v6 << CR_LAST_DROP_V6_SHIFT |
	       (__u32)p->proto << CR_LAST_DROP_PROTO_SHIFT | p->dport;
}

/* Does the packet parse as this CPU's last cached drop did (TCP: a SYN)? */
static __always_inline int last_drop_same(const struct cr_last_drop *l, const struct packet *p)
{
	const __u32 *s = (const __u32 *)p->src.bytes, *d = (const __u32 *)p->dst.bytes;

	/* established TCP, then the destination (forwarded traffic differs
	 * there), then the source: most packets that are not a flood's leave
	 * after one or two compares */
	if ((p->proto == CR_PROTO_TCP && !p->tcp_new) || l->dst[CR_ADDR_WORDS - 1] != d[CR_ADDR_WORDS - 1] ||
	    l->src[CR_ADDR_WORDS - 1] != s[CR_ADDR_WORDS - 1] || l->meta != last_drop_meta(p))
		return 0;
	if (!p->is_v6)
		return 1; /* IPv4: the last word is the address */
	return l->src[0] == s[0] && l->src[1] == s[1] && l->src[2] == s[2] &&
	       l->dst[0] == d[0] && l->dst[1] == d[1] && l->dst[2] == d[2];
}

/* A drop from the drop cache: the packet's (the key's) last_drop, so that the
 * key's next packets in this tick find the entry without their key. */
static __always_inline void last_drop_note(struct cr_last_drop *l, const struct packet *p, __u64 tick,
					   __u32 cidx, __u32 cfg_gen, __u32 rt_gen, __u32 locals_gen, __u64 h)
{
	const __u32 *s = (const __u32 *)p->src.bytes, *d = (const __u32 *)p->dst.bytes;
	int i;

	for (i = 0; i < CR_ADDR_WORDS; i++) {
		l->src[i] = s[i];
		l->dst[i] = d[i];
	}
	l->tick = tick;
	l->cidx = cidx;
	l->config_gen = cfg_gen;
	l->routes_gen = rt_gen;
	l->locals_gen = locals_gen;
	l->flow_idx = flow_filter_idx(h);
	l->meta = last_drop_meta(p);
}

/* A packet that parses as this CPU's last cached drop did, in its tick:
 * dropped from the same entry when the configuration, routes and local
 * addresses are still those it was made under (so are the packet's key,
 * its slot, the entry and the verdict), and, for UDP, when the flow filter
 * rules out an established flow. Returns -1 to judge the packet in full. */
static __always_inline int last_drop_again(struct cr_counters *cnt, struct packet *p)
{
	const struct cr_last_drop *l = &cnt->last_drop;
	const struct cr_in_force *inf;
	const struct cr_config *cfg;
	struct cr_flow_filter *ff;
	struct cr_drop_cache *e;
	__u32 zero = 0, slot, idx;

	inf = bpf_map_lookup_elem(&in_force, &zero);
	if (!inf || inf->locals_gen != l->locals_gen || (__u32)inf->routes_gen != l->routes_gen)
		return -1;
	slot = inf->config_slot & 1;
	cfg = bpf_map_lookup_elem(&config, &slot);
	if (!cfg || (__u32)cfg->generation != l->config_gen)
		return -1;
	idx = l->cidx;
	e = bpf_map_lookup_elem(&drop_cache, &idx);
	if (!e)
		return -1;
	if (p->proto == CR_PROTO_UDP) {
		if (!e->flow_ok)
			return -1;
		idx = l->flow_idx;
		ff = bpf_map_lookup_elem(&flow_filter, &idx);
		v4_mapped(p); /* flow_hash reads the mapped address */
		if (flow_filter_maybe(ff, cfg->flow_epoch_shift, e->flow_epoch, flow_hash(p)))
			return -1;
		COUNT(cnt, CR_CNT_FLOW_FILTER_DROP);
	}
	e->drops++;
	COUNT(cnt, CR_CNT_MONITORED);
	COUNT(cnt, CR_CNT_CACHE_DROP);
	COUNT(cnt, CR_CNT_NEW_DROPPED);
	count_port(cnt, e->port_slot, CR_CNT_NEW_DROPPED);
	return XDP_DROP;
}

SEC("xdp")
int connrate_xdp(struct xdp_md *ctx)
{
	struct packet p __attribute__((aligned(8)));
	struct cr_bucket_key key __attribute__((aligned(8)));
	struct cr_flow_key fk;
	struct flow_seen seen = {};
	const struct cr_config *cfg;
	const struct cr_token_clock *tc;
	const struct cr_in_force *inf;
	struct cr_counters *cnt;
	struct cr_drop_cache *e;
	struct cr_bucket *b;
	__u32 zero = 0, slot, verdict_cnt, cidx, cfg_gen, rt_gen, pslot, locals_gen;
	__u64 now, coarse = 0, tick, clock, lo, hi, limit, h, floor = 0, until = 0, drops, *hb = NULL, hbit;
	__u32 ways = 0;
	int inserted = 0, no_bucket;
	struct cr_first_seen *g = NULL;
	struct cr_flow_filter *ff = NULL;
	int res, allowed, block, hit, udp_first = 0;

	cnt = bpf_map_lookup_elem(&counters, &zero);
	if (!cnt)
		return XDP_PASS;
	res = parse(ctx, &p);
	switch (res) {
	case PARSE_OK:
		break;
	case PARSE_UNPARSABLE:
		COUNT(cnt, CR_CNT_UNPARSABLE);
		return XDP_PASS;
	case PARSE_FRAGMENT:
		COUNT(cnt, CR_CNT_FRAGMENT);
		COUNT(cnt, CR_CNT_NOT_MONITORED);
		return XDP_PASS;
	case PARSE_EXT_LIMIT:
		COUNT(cnt, CR_CNT_IPV6_EXT_LIMIT);
		COUNT(cnt, CR_CNT_NOT_MONITORED);
		return XDP_PASS;
	default:
		COUNT(cnt, CR_CNT_NOT_MONITORED);
		return XDP_PASS;
	}
	/* A flood's packets are mostly this CPU's last cached drop again. */
	if (last_drop_same(&cnt->last_drop, &p) && cnt->last_drop.tick == tick_now()) {
		res = last_drop_again(cnt, &p);
		if (res >= 0)
			return res;
	}

	inf = bpf_map_lookup_elem(&in_force, &zero);
	if (!inf)
		return XDP_PASS;
	slot = READ_ONCE(inf->config_slot) & 1;
	locals_gen = READ_ONCE(inf->locals_gen); /* once: the last drop notes what is_local decided under */
	cfg = bpf_map_lookup_elem(&config, &slot);
	if (!cfg)
		return XDP_PASS;
	/* The destination first: most of what an appliance sees is forwarded,
	 * and is_local alone sends it on. A slot never written is all zeros (no
	 * rate: the limit is off), so it is told apart (valid) only on the way
	 * out. */
	tc = &cfg->clock[p.proto & 1];
	if (!is_local(&p, locals_gen) || !cfg->rate[p.proto & 1] || !port_listed(cfg, p.proto, p.dport)) {
		if (!cfg->valid)
			COUNT(cnt, CR_CNT_NO_CONFIG);
		COUNT(cnt, CR_CNT_NOT_MONITORED);
		return XDP_PASS;
	}
	COUNT(cnt, CR_CNT_MONITORED);

	/* Established TCP first: it never needs the key or the exemption
	 * lookups, whoever sends it. UDP asks the flow table first too, unless
	 * this CPU made a UDP drop-cache entry in this tick (a flood: then the
	 * drop cache and the flow filter come first). */
	if (p.proto == CR_PROTO_TCP && !p.tcp_new) {
		COUNT(cnt, CR_CNT_ESTABLISHED);
		return XDP_PASS;
	}
	v4_mapped(&p);
	block = cfg->mode != CR_MODE_LOG;
	tick = tick_now(); /* before any clock read below */
	if (p.proto == CR_PROTO_UDP) {
		udp_first = cnt->udp_tick == tick;
		if (!udp_first && udp_flow_established(&p, cfg, &fk, &coarse, &seen, NULL)) {
			COUNT(cnt, CR_CNT_ESTABLISHED);
			return XDP_PASS;
		}
	}

	/* The drop cache: a key this CPU found over its limit, under this
	 * configuration and these routes (so not exempt), until its next token.
	 * A hit writes only this CPU's lines. */
	bucket_key_of(&p, cfg, &key);
	h = key_hash(&key);
	/* The key's first-seen group: its has_bucket bit clear means the key
	 * has no bucket, so no drop-cache entry either (entries that drop are
	 * made from a bucket): a spoofed SYN reads one cache line, not two. UDP
	 * skips it here: its established flows would read it for nothing, and a
	 * spoofed datagram's flow insert costs far more than a cache slot. */
	g = first_seen_group(&key, h);
	hbit = 1ULL << ((h >> HAS_BUCKET_HASH_SHIFT) & HAS_BUCKET_BIT_MASK);
	if (g)
		hb = &g->has_bucket;
	no_bucket = p.proto == CR_PROTO_TCP && hb && !(READ_ONCE(*hb) & hbit);
	cidx = (__u32)(h >> DROP_CACHE_HASH_SHIFT) & (CR_DROP_CACHE_SLOTS - 1);
	e = bpf_map_lookup_elem(&drop_cache, &cidx);
	if (!e)
		return XDP_PASS;
	rt_gen = (__u32)READ_ONCE(inf->routes_gen);
	cfg_gen = (__u32)cfg->generation;
	hit = block && !no_bucket && e->tick == tick &&
	      e->config_gen == cfg_gen && e->routes_gen == rt_gen && key_equal(&e->key, &key);
	if (p.proto == CR_PROTO_UDP) {
		/* A hit whose flow's bits are not both set in the key's flow
		 * filter: not established, dropped without a flow-table lookup.
		 * Else the flow table says whether the datagram is established. */
		ff = flow_filter_of(h);
		if (!udp_first) {
			/* not established (asked above) */
		} else if (hit && e->flow_ok &&
			   !flow_filter_maybe(ff, cfg->flow_epoch_shift, e->flow_epoch, flow_hash(&p))) {
			COUNT(cnt, CR_CNT_FLOW_FILTER_DROP);
		} else if (udp_flow_established(&p, cfg, &fk, &coarse, &seen, ff)) {
			COUNT(cnt, CR_CNT_ESTABLISHED);
			return XDP_PASS;
		}
	}
	if (hit) {
		last_drop_note(&cnt->last_drop, &p, tick, cidx, cfg_gen, rt_gen, locals_gen, h);
		e->drops++;
		COUNT(cnt, CR_CNT_CACHE_DROP);
		COUNT(cnt, CR_CNT_NEW_DROPPED);
		count_port(cnt, e->port_slot, CR_CNT_NEW_DROPPED);
		return XDP_DROP;
	}

	if (p.proto == CR_PROTO_TCP)
		coarse = coarse_now_ns(); /* UDP read it for its flow */

	if (source_exempt(&p, slot, cfg)) {
		/* An exempt source's UDP flow is recorded: its next packets are established. */
		if (p.proto == CR_PROTO_UDP)
			udp_claim(&fk, &seen, coarse, ff, cfg, &p, cnt);
		COUNT(cnt, CR_CNT_EXEMPT);
		return XDP_PASS;
	}

	limit = (__u64)cfg->burst * (__u64)CR_TOKEN;
	/* The bucket map is looked up only for a key whose has_bucket bit is set:
	 * a spoofed source's first packet costs one cache line (its group), not a
	 * miss in the bucket map as well. */
	no_bucket = hb && !(READ_ONCE(*hb) & hbit); /* again: another CPU may have set it */
	if (no_bucket && tc->period_ns >= COARSE_MIN_PERIOD_NS) {
		/* No bucket: the first-seen stage decides, on the coarse clock and
		 * its bound (see first_seen_claim); the precise clock is read only
		 * if the key goes on to a bucket. */
		now = coarse;
		lo = token_clock(tc, coarse);
		hi = token_clock(tc, coarse + (cr_test_clock ? 0 : COARSE_LAG_MAX_NS));
		b = NULL;
	} else {
		now = now_ns();
		lo = hi = token_clock(tc, now);
		b = hb && !(READ_ONCE(*hb) & hbit) ? NULL : bpf_map_lookup_elem(&buckets, &key);
	}
	clock = lo;
	if (b && bucket_empty(READ_ONCE(b->tat), clock, limit)) {
		/* Over the limit, read-only: nothing to claim or swap (the common
		 * case under a flood from one source). */
		allowed = 0;
		if (p.proto == CR_PROTO_UDP && !block)
			udp_claim(&fk, &seen, coarse, ff, cfg, &p, cnt); /* it passes: its flow exists from now on */
	} else {
		if (p.proto == CR_PROTO_UDP && !udp_claim(&fk, &seen, coarse, ff, cfg, &p, cnt)) {
			COUNT(cnt, CR_CNT_ESTABLISHED); /* another CPU just opened this flow */
			return XDP_PASS;
		}
		if (b) {
			allowed = bucket_take(&key, &b, clock, limit, 0, &inserted, cnt);
		} else if ((__u64)CR_TOKEN > limit) {
			allowed = 0; /* burst 0: nothing is ever allowed */
		} else {
			res = g ? first_seen_claim(g, h, lo, hi, &floor) : FS_BUSY;
			/* Another CPU may be storing this key's bucket right now
			 * (its group was full). It sets the bit, reads the records,
			 * inserts, and reads them again; we wrote our record (CAS),
			 * then read the bit and, if set, look for the bucket. Each
			 * step after a full barrier, so either it finds our record
			 * (and charges it) or we find its bucket (and take our token
			 * there, our record charged as well). */
			if (res == FS_NEW && hb && (READ_ONCE(*hb) & hbit) &&
			    bpf_map_lookup_elem(&buckets, &key))
				res = FS_AGAIN;
			if (res == FS_NEW) {
				allowed = 1;
				COUNT(cnt, CR_CNT_FIRST_SEEN);
			} else {
				if (res == FS_BUSY)
					COUNT(cnt, CR_CNT_FIRST_SEEN_BUSY);
				if (hb && !(READ_ONCE(*hb) & hbit))
					__sync_fetch_and_or(hb, hbit);
				if (g)
					ways = first_seen_charge(g, first_seen_fp(h), lo, &floor);
				/* A token from a bucket: exact time, read after the
				 * records were, so a record seen was written with a
				 * C1 <= clock; its C1 is then at most clock, which
				 * keeps the floor exact when the record holds the
				 * coarse upper bound. */
				now = now_ns();
				clock = token_clock(tc, now);
				if (floor > clock + (__u64)CR_TOKEN)
					floor = clock + (__u64)CR_TOKEN;
				allowed = bucket_take(&key, &b, clock, limit, floor, &inserted, cnt);
				if (inserted && hb && g) {
					/* read the records again after the insert (the
					 * fetch_or is the barrier): one written meanwhile
					 * is a token the new bucket does not hold yet */
					__sync_fetch_and_or(hb, hbit);
					if (first_seen_charge(g, first_seen_fp(h), lo, &floor) & ~ways) {
						b = bpf_map_lookup_elem(&buckets, &key);
						if (b)
							__sync_fetch_and_add(&b->tat, (__u64)CR_TOKEN);
					}
				}
			}
		}
		/* A dropped first packet does not create the flow. */
		if (!allowed && p.proto == CR_PROTO_UDP && block)
			bpf_map_delete_elem(&udp_flows, &fk);
	}

	pslot = port_slot_of(&p);
	if (allowed) {
		verdict_cnt = CR_CNT_NEW_ALLOWED;
	} else {
		verdict_cnt = block ? CR_CNT_NEW_DROPPED : CR_CNT_NEW_WOULD_DROP;
		if (b && block)
			until = token_due(READ_ONCE(b->tat), clock, limit, tc->period_ns, now);
		cnt->last_drop.meta = 0; /* the entry it names may be another key's now */
		drops = drop_cache_fill(e, &key, cfg, rt_gen, pslot, tick, until, now, coarse);
		if (p.proto == CR_PROTO_UDP && e->tick == tick)
			cnt->udp_tick = tick; /* a UDP entry that drops: ask it first in this tick */
		if (b)
			emit_event(&key, b, cfg, now, drops, cnt);
	}
	COUNT(cnt, verdict_cnt);
	count_port(cnt, pslot, verdict_cnt);
	return verdict_cnt == CR_CNT_NEW_DROPPED ? XDP_DROP : XDP_PASS;
}
