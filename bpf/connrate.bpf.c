// SPDX-License-Identifier: GPL-2.0-only
/*
 * connrate.bpf.c — per-(source, destination port, protocol) new-connection rate
 * limiting in XDP. See SPEC §1–2 and connrate.h.
 *
 * Per packet: parse (VLANs, IPv4/IPv6, TCP/UDP) → is the limit on for this
 * protocol and port → is the destination local → is the source exempt (a
 * non-default route or the admin list) → is it a new connection (TCP SYN
 * without ACK; UDP flow not seen within the timeout) → GCRA bucket, updated by
 * compare-and-swap so the limit is exact across CPUs.
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

/* Set only by tests: read "now" from the test_clock map. The verifier removes
 * the branch when it is false. */
const volatile __u8 cr_test_clock = 0;

#define IPV4_FRAG_OFFSET_MASK 0x1fff
#define IPV6_FRAG_OFFSET_MASK 0xfff8
#define IPV4_MIN_IHL 5
#define TCP_MIN_DOFF 5
#define FLOW_REFRESH_NS 1000000ULL /* refresh a UDP flow's last-seen at most once per ms */

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

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CR_CONFIG_SLOTS);
	__type(key, __u32);
	__type(value, struct cr_config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cr_config_slot);
} config_slot SEC(".maps");

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

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CR_DEFAULT_LOCAL_ADDRS);
	__type(key, struct cr_addr);
	__type(value, __u8);
} local_addrs SEC(".maps");

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

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CR_DEFAULT_UDP_FLOWS);
	__type(key, struct cr_flow_key);
	__type(value, struct cr_flow);
} udp_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, CR_DEFAULT_PORT_STATS);
	__type(key, struct cr_port_key);
	__type(value, struct cr_port_stats);
} port_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CR_CNT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
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

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);

	if (v)
		*v += 1;
}

static __always_inline __u64 now_ns(void)
{
	if (cr_test_clock) {
		__u32 zero = 0;
		__u64 *t = bpf_map_lookup_elem(&test_clock, &zero);

		return t ? *t : 0;
	}
	return bpf_ktime_get_ns();
}

/* For the UDP flow table: seconds-scale timeouts need no more than the tick's
 * resolution, and the coarse clock is several times cheaper to read. */
static __always_inline __u64 coarse_now_ns(void)
{
	if (cr_test_clock)
		return now_ns();
	return bpf_ktime_get_coarse_ns();
}

static __always_inline void set_v4_mapped(struct cr_addr *a, __be32 v4)
{
	__u32 *w = (__u32 *)a->bytes;

	w[0] = 0;
	w[1] = 0;
	w[2] = bpf_htonl(0x0000ffff);
	w[3] = v4;
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
	set_v4_mapped(&p->src, iph->saddr);
	set_v4_mapped(&p->dst, iph->daddr);
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

static __always_inline void count_port(const struct packet *p, __u32 verdict_cnt)
{
	struct cr_port_key k = { .port = p->dport, .proto = p->proto };
	struct cr_port_stats *ps = bpf_map_lookup_elem(&port_stats, &k);

	if (!ps) {
		struct cr_port_stats zero = {};

		bpf_map_update_elem(&port_stats, &k, &zero, BPF_NOEXIST);
		ps = bpf_map_lookup_elem(&port_stats, &k);
		if (!ps) {
			count(CR_CNT_PORT_STATS_FULL);
			return;
		}
	}
	if (verdict_cnt == CR_CNT_NEW_ALLOWED)
		ps->allowed++;
	else if (verdict_cnt == CR_CNT_NEW_DROPPED)
		ps->dropped++;
	else
		ps->would_drop++;
}

static __always_inline void emit_event(const struct cr_bucket_key *key, struct cr_bucket *b,
				       const struct cr_config *cfg, __u64 now)
{
	__u64 last = b->last_event_ns;
	struct cr_event *ev;

	if (last && now - last < CR_EVENT_INTERVAL_NS)
		return;
	if (__sync_val_compare_and_swap(&b->last_event_ns, last, now) != last)
		return; /* another CPU is logging this key */
	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		count(CR_CNT_EVENTS_LOST);
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
	ev->drops = b->drops;
	bpf_ringbuf_submit(ev, 0);
}

/* C(now) of a token clock (connrate.h). q and r keep the products in range:
 * r < period <= 60 s, so r * CR_TOKEN < 2^56. */
static __always_inline __u64 token_clock(const struct cr_token_clock *c, __u64 now)
{
	__u64 elapsed, q, r;

	if (now <= c->base_ns || !c->period_ns)
		return c->base_tokens;
	elapsed = now - c->base_ns;
	q = elapsed / c->period_ns;
	r = elapsed - q * c->period_ns;
	return c->base_tokens + q * (__u64)CR_TOKEN + r * (__u64)CR_TOKEN / c->period_ns;
}

/* The bucket key of a packet: IPv6 sources masked to the configured prefix. */
static __always_inline void bucket_key_of(const struct packet *p, const struct cr_config *cfg,
					  struct cr_bucket_key *key)
{
	__u32 *w = (__u32 *)key->src.bytes;

	key->src = p->src;
	key->dport = p->dport;
	key->proto = p->proto;
	key->pad = 0;
	if (p->is_v6) {
		w[0] &= cfg->ipv6_mask[0];
		w[1] &= cfg->ipv6_mask[1];
		w[2] &= cfg->ipv6_mask[2];
		w[3] &= cfg->ipv6_mask[3];
	}
}

/* No token right now (GCRA: taking one would put tat' - C over the limit). */
static __always_inline int bucket_empty(struct cr_bucket *b, __u64 clock, __u64 limit)
{
	__u64 tat = READ_ONCE(b->tat);

	return (tat > clock ? tat : clock) + (__u64)CR_TOKEN - clock > limit;
}

/* GCRA on the token clock: tat' = max(tat, C) + 1 token; allow iff
 * tat' - C <= burst tokens, stored by compare-and-swap so CPUs racing on one
 * key admit no more than one CPU would. *bp may be NULL (a new key starts
 * full); on return it points at the bucket, if there is one. Returns 1 when
 * allowed. */
static __always_inline int bucket_take(const struct cr_bucket_key *key, struct cr_bucket **bp,
				       __u64 clock, __u64 limit)
{
	struct cr_bucket *b = *bp;
	int i;

	if (!b) {
		struct cr_bucket fresh = { .tat = clock + (__u64)CR_TOKEN };

		if ((__u64)CR_TOKEN > limit)
			return 0; /* burst 0: nothing is ever allowed */
		if (!bpf_map_update_elem(&buckets, key, &fresh, BPF_NOEXIST))
			return 1;
		b = bpf_map_lookup_elem(&buckets, key); /* another CPU inserted it just now */
		*bp = b;
		if (!b) {
			count(CR_CNT_BUCKET_INSERT_FAIL);
			return 1;
		}
	}
	for (i = 0; i < CR_CAS_RETRIES; i++) {
		__u64 old = READ_ONCE(b->tat);
		__u64 tat = (old > clock ? old : clock) + (__u64)CR_TOKEN;

		if (tat - clock > limit)
			return 0;
		if (__sync_val_compare_and_swap(&b->tat, old, tat) == old)
			return 1;
	}
	count(CR_CNT_CAS_EXHAUSTED);
	return 0;
}

/* Bookkeeping for a key over its limit: drops, last drop, the log event. */
static __always_inline void bucket_over(const struct cr_bucket_key *key, struct cr_bucket *b,
					const struct cr_config *cfg, __u64 now)
{
	__sync_fetch_and_add(&b->drops, 1);
	b->last_drop_ns = now;
	emit_event(key, b, cfg, now);
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
					   struct flow_seen *seen)
{
	struct cr_flow *f = bpf_map_lookup_elem(&udp_flows, fk);

	seen->f = f;
	seen->last = 0;
	if (!f)
		return 0;
	seen->last = READ_ONCE(f->last_seen_ns);
	if ((__s64)(now - seen->last) >= (__s64)cfg->udp_timeout_ns)
		return 0;
	if (now - seen->last >= FLOW_REFRESH_NS)
		WRITE_ONCE(f->last_seen_ns, now);
	return 1;
}

/* Claim a new (or expired) flow, so two CPUs never count one flow twice.
 * Returns 1 when this packet owns it, 0 when another CPU claimed it first
 * (this packet then belongs to an established flow). */
static __always_inline int udp_claim(const struct cr_flow_key *fk, const struct flow_seen *seen,
				     __u64 now)
{
	struct cr_flow fresh = { .last_seen_ns = now };
	long err;

	if (seen->f)
		return __sync_val_compare_and_swap(&seen->f->last_seen_ns, seen->last, now) == seen->last;
	err = bpf_map_update_elem(&udp_flows, fk, &fresh, BPF_NOEXIST);
	if (err == -EEXIST)
		return 0;
	if (err)
		count(CR_CNT_FLOW_INSERT_FAIL); /* judged as new all the same */
	return 1;
}

SEC("xdp")
int connrate_xdp(struct xdp_md *ctx)
{
	struct packet p = {};
	struct cr_flow_key fk = {};
	struct flow_seen seen = {};
	struct cr_bucket_key key;
	const struct cr_config *cfg;
	struct cr_config_slot *cs;
	struct cr_bucket *b;
	__u32 zero = 0, slot, verdict_cnt;
	__u64 now, clock, limit, coarse = 0;
	int res, allowed;

	count(CR_CNT_SEEN);
	res = parse(ctx, &p);
	switch (res) {
	case PARSE_OK:
		break;
	case PARSE_UNPARSABLE:
		count(CR_CNT_UNPARSABLE);
		return XDP_PASS;
	case PARSE_FRAGMENT:
		count(CR_CNT_FRAGMENT);
		count(CR_CNT_NOT_MONITORED);
		return XDP_PASS;
	case PARSE_EXT_LIMIT:
		count(CR_CNT_IPV6_EXT_LIMIT);
		count(CR_CNT_NOT_MONITORED);
		return XDP_PASS;
	default:
		count(CR_CNT_NOT_MONITORED);
		return XDP_PASS;
	}

	cs = bpf_map_lookup_elem(&config_slot, &zero);
	if (!cs)
		return XDP_PASS;
	slot = cs->slot & 1;
	cfg = bpf_map_lookup_elem(&config, &slot);
	if (!cfg || !cfg->valid) {
		count(CR_CNT_NO_CONFIG);
		count(CR_CNT_NOT_MONITORED);
		return XDP_PASS;
	}
	if (!cfg->clock[p.proto & 1].period_ns || !port_listed(cfg, p.proto, p.dport) ||
	    !bpf_map_lookup_elem(&local_addrs, &p.dst)) {
		count(CR_CNT_NOT_MONITORED);
		return XDP_PASS;
	}
	count(CR_CNT_MONITORED);

	/* New or established first: established packets never need the
	 * exemption lookups, whoever sends them. */
	if (p.proto == CR_PROTO_TCP) {
		if (!p.tcp_new) {
			count(CR_CNT_ESTABLISHED);
			return XDP_PASS;
		}
	} else {
		fk.src = p.src;
		fk.dst = p.dst;
		fk.sport = p.sport;
		fk.dport = p.dport;
		coarse = coarse_now_ns();
		if (udp_established(&fk, cfg, coarse, &seen)) {
			count(CR_CNT_ESTABLISHED);
			return XDP_PASS;
		}
	}
	if (source_exempt(&p, slot, cfg)) {
		/* An exempt source's UDP flow is recorded: its next packets are established. */
		if (p.proto == CR_PROTO_UDP)
			udp_claim(&fk, &seen, coarse);
		count(CR_CNT_EXEMPT);
		return XDP_PASS;
	}

	now = now_ns();
	bucket_key_of(&p, cfg, &key);
	clock = token_clock(&cfg->clock[p.proto & 1], now);
	limit = (__u64)cfg->burst * (__u64)CR_TOKEN;
	b = bpf_map_lookup_elem(&buckets, &key);
	if (b && bucket_empty(b, clock, limit)) {
		/* Over the limit, read-only: nothing to claim or swap (the common
		 * case under a flood from one source). */
		allowed = 0;
		if (p.proto == CR_PROTO_UDP && cfg->mode == CR_MODE_LOG)
			udp_claim(&fk, &seen, coarse); /* it passes: its flow exists from now on */
	} else {
		if (p.proto == CR_PROTO_UDP && !udp_claim(&fk, &seen, coarse)) {
			count(CR_CNT_ESTABLISHED); /* another CPU just opened this flow */
			return XDP_PASS;
		}
		allowed = bucket_take(&key, &b, clock, limit);
		/* A dropped first packet does not create the flow. */
		if (!allowed && p.proto == CR_PROTO_UDP && cfg->mode != CR_MODE_LOG)
			bpf_map_delete_elem(&udp_flows, &fk);
	}

	if (allowed) {
		verdict_cnt = CR_CNT_NEW_ALLOWED;
	} else {
		if (b)
			bucket_over(&key, b, cfg, now);
		verdict_cnt = cfg->mode == CR_MODE_LOG ? CR_CNT_NEW_WOULD_DROP : CR_CNT_NEW_DROPPED;
	}
	count(verdict_cnt);
	count_port(&p, verdict_cnt);
	return verdict_cnt == CR_CNT_NEW_DROPPED ? XDP_DROP : XDP_PASS;
}
