/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * connrate.h — every struct and constant that crosses the boundary between the
 * XDP program (connrate.bpf.c) and user space. User space's codecs are
 * generated from the object's BTF (src/control/datapath.gen.ts, `npm run gen`).
 *
 * Conventions: addresses are 16 bytes, IPv4 as v4-mapped IPv6 (::ffff:a.b.c.d),
 * in network byte order. Ports are in host byte order. Times are nanoseconds of
 * CLOCK_MONOTONIC (bpf_ktime_get_ns).
 */
#ifndef CONNRATE_H
#define CONNRATE_H

#ifdef __bpf__
#include <linux/types.h>
#else
#include <stdint.h>
typedef uint8_t __u8;
typedef uint16_t __u16;
typedef uint32_t __u32;
typedef uint64_t __u64;
#endif

#define CR_ADDR_LEN 16
#define CR_PORT_WORDS (65536 / 64) /* u64 words in a port bitmap */
#define CR_CONFIG_SLOTS 2          /* double-buffered configuration */
#define CR_NS_PER_SEC 1000000000ULL
#define CR_VLAN_MAX 2              /* 802.1Q / 802.1ad tags walked */
#define CR_IPV6_EXT_MAX 6          /* IPv6 extension headers walked */
#define CR_CAS_RETRIES 8           /* compare-and-swap attempts per packet */
#define CR_EVENT_INTERVAL_NS (60ULL * CR_NS_PER_SEC) /* one log event per key per minute */
#define CR_PORTS 65536             /* ports per protocol */
#define CR_DROP_CACHE_SLOTS 4096   /* per CPU: keys known to be over their limit */
#define CR_FIRST_SEEN_WAYS 7         /* first-seen records per group (with has_bucket: one cache line) */
#define CR_FIRST_SEEN_GROUPS (1 << 17) /* groups, half per protocol: 2^20 records */
#define CR_FIRST_SEEN_CLOCK_BITS 40   /* a record: token clock's low 40 bits, fingerprint above */
#define CR_TICK_MAX_NS 10000000ULL /* a kernel tick (jiffy) lasts at most 10 ms (HZ >= 100) */
#define CR_FLOW_FILTER_SLOTS (1 << 15) /* UDP flow filters, one per hash of the key */
#define CR_FLOW_FILTER_WORDS 8       /* word pairs in a flow filter (an even and an odd epoch) */
#define CR_FLOW_FILTER_TAG_SHIFT 48  /* a flow filter word: its tag above 48 bits of filter */
#define CR_FLOW_EPOCH_BITS 10        /* a tag: the epoch shift above the epoch's low 10 bits */
#define CR_LOCALS_V4 8             /* local addresses checked inline, per family; */
#define CR_LOCALS_V6 4             /* more than that: the local_addrs hash */

/* Default map sizes; user space may set others before load. */
#define CR_DEFAULT_BUCKETS (256 * 1024)
#define CR_DEFAULT_UDP_FLOWS (256 * 1024)
#define CR_DEFAULT_LOCAL_ADDRS 4096
#define CR_DEFAULT_PREFIXES 16384
#define CR_DEFAULT_PORT_STATS 16384 /* (protocol, port) slots */
#define CR_DEFAULT_EVENT_RING (256 * 1024)

enum cr_proto {
	CR_PROTO_TCP = 0,
	CR_PROTO_UDP = 1,
	CR_PROTO_COUNT = 2,
};

/* One token in token-clock units (an enum, so user space reads it from BTF). */
enum cr_token {
	CR_TOKEN_SHIFT = 20,
	CR_TOKEN = 1 << 20,
};

enum cr_mode {
	CR_MODE_BLOCK = 0,
	CR_MODE_LOG = 1,
};

/* Global per-CPU counters: index into struct cr_counters, the one value of the
 * `counters` PERCPU_ARRAY. */
enum cr_counter {
	/* The ones a drop from the drop cache counts (monitored, new_dropped,
	 * cache_drop, flow_filter_drop) are neighbours: fewer cache lines.
	 * seen = monitored + not_monitored + unparsable;
	 * monitored = established + exempt + new_allowed + new_dropped + new_would_drop */
	CR_CNT_SEEN = 0,          /* every packet the program ran on: not counted here, user
				   * space sums the three it is made of (one increment a
				   * packet fewer) */
	CR_CNT_MONITORED,         /* TCP/UDP to a local address, limit on, port listed */
	CR_CNT_ESTABLISHED,       /* monitored, not a new connection (never limited) */
	CR_CNT_EXEMPT,            /* new connection from a non-default route or the exempt list */
	CR_CNT_NOT_MONITORED,     /* parsed, but not for a limit (foreign dst, off, port unlisted, non-TCP/UDP) */
	CR_CNT_UNPARSABLE,        /* truncated or malformed headers */
	CR_CNT_NEW_ALLOWED,       /* new connections let through */
	CR_CNT_NEW_DROPPED,       /* new connections dropped (block mode) */
	CR_CNT_CACHE_DROP,        /* new connections dropped by the per-CPU over-limit cache
				   * (also counted new_dropped) */
	CR_CNT_FLOW_FILTER_DROP,  /* UDP cache drops decided by the flow filter, without a
				   * flow-table lookup (also counted cache_drop) */
	CR_CNT_NEW_WOULD_DROP,    /* new connections over the limit, passed (log mode) */
	CR_CNT_FRAGMENT,          /* non-first IPv4 fragments (also counted not monitored) */
	CR_CNT_IPV6_EXT_LIMIT,    /* IPv6 extension chain too long (also counted not monitored) */
	CR_CNT_CAS_EXHAUSTED,     /* bucket update lost CR_CAS_RETRIES races; packet dropped */
	CR_CNT_BUCKET_FALLBACK,   /* new key not stored (map refused it): judged by the shared
				   * fallback bucket of its (protocol, port) */
	CR_CNT_FLOW_INSERT_FAIL,  /* UDP flow map refused a new flow */
	CR_CNT_PORT_STATS_FULL,   /* per-port counter map full; totals still counted */
	CR_CNT_EVENTS_LOST,       /* ring buffer full: a log event was not delivered */
	CR_CNT_NO_CONFIG,         /* no configuration applied yet; packet passed */
	CR_CNT_FIRST_SEEN,        /* new keys admitted by a first-seen record, no bucket stored */
	CR_CNT_FIRST_SEEN_BUSY,   /* first-seen record slot held by another key: bucket map used */
	CR_CNT_COUNT,
};

/* A 16-byte address, v4-mapped for IPv4. */
struct cr_addr {
	__u8 bytes[CR_ADDR_LEN];
};

/* Bucket key: (source, destination port, protocol). IPv6 sources are masked to
 * the configured prefix. */
struct cr_bucket_key {
	struct cr_addr src;
	__u16 dport;
	__u8 proto; /* enum cr_proto */
	__u8 pad;
};

/* GCRA state: `tat` is the theoretical arrival time on the protocol's token
 * clock (below). Shared by every CPU; written only when a token is taken and
 * (once a minute at most) to claim a log event. Drops are counted per CPU
 * (struct cr_drop_stats, struct cr_drop_cache), never here. */
struct cr_bucket {
	__u64 tat;           /* token-clock units; updated only by compare-and-swap */
	__u64 last_event_ns; /* compare-and-swap: one log event per key per minute */
};

/* Per-CPU drops of a key (the `drop_stats` LRU_PERCPU_HASH, keyed by
 * cr_bucket_key): what each CPU's drop cache flushed when it gave the key's
 * slot to another key. A key's drops are these plus its live cache entries;
 * user space folds both. */
struct cr_drop_stats {
	__u64 drops;
	__u64 last_drop_ns;
};

/* One slot of the per-CPU drop cache (`drop_cache`, a PERCPU_ARRAY indexed by
 * a hash of the key): "this key is over its limit for the rest of kernel tick
 * `tick`" (jiffies), valid only for the configuration and routes generations
 * it was made under. It is made from the key's bucket only when the bucket
 * has no token before that tick ends, so it can only drop; every admission
 * goes through the bucket, and in the next tick the bucket is read again. It
 * also holds this CPU's drops of the key since it took the slot. */
struct cr_drop_cache {
	struct cr_bucket_key key;
	__u32 port_slot;    /* the key's (protocol, port) slot in port_stats */
	__u32 config_gen;   /* low 32 bits of cr_config.generation */
	__u32 routes_gen;   /* low 32 bits of cr_in_force.routes_gen */
	__u32 flow_epoch;   /* UDP: the flow filter's epoch when the entry was made */
	__u32 flow_ok;      /* UDP: 1 when the flow filter may be read under this configuration */
	__u64 tick;         /* drop while the kernel tick is this one */
	__u64 drops;        /* this CPU's drops of key since it took the slot */
	__u64 last_drop_ns; /* when the entry was last made from the bucket: this
			     * CPU's last drop of key, at most one tick early */
};

/* UDP flow key: the 4-tuple, unmasked. */
struct cr_flow_key {
	struct cr_addr src;
	struct cr_addr dst;
	__u16 sport;
	__u16 dport;
};

struct cr_flow {
	__u64 last_seen_ns;
};

/* The UDP flows seen lately of the keys with one hash (`flow_filter`, an ARRAY
 * indexed by a hash of the bucket key). Time is cut into epochs of
 * 2^flow_epoch_shift ns (cr_config; at least the UDP timeout), and w[i][e & 1]
 * holds epoch e (a flow's two words side by side, in one cache line). Each
 * word is tagged (bits 48..63) with the shift and the low bits of the epoch
 * its bits belong to; a flow has two bits in its word (they may
 * coincide), chosen by a hash of its 4-tuple. Before a flow's last-seen time
 * is written, its bits are set in the word of that time's epoch (a refresh
 * within one epoch finds them set). So a flow seen within the timeout has
 * both bits set in the current epoch's word or the previous one's, and a bit
 * clear in each means "not established" without a flow-table lookup. Bits
 * are only ever added to a word, except when it is retagged for a later epoch
 * of the same shift (two epochs on: every flow it held has expired). Keys
 * sharing a filter, and flows sharing bits, only send more datagrams to the
 * flow table. */
struct cr_flow_filter {
	__u64 w[CR_FLOW_FILTER_WORDS][2];
};

/* A group of first-seen records (`first_seen`, an ARRAY indexed by a hash of
 * the key): each record is (fingerprint << CR_FIRST_SEEN_CLOCK_BITS) | the
 * token clock's low bits when the key took its first token; 0 = empty.
 * has_bucket has one bit (chosen by the key's hash) set before any key of the
 * group is given a bucket, never cleared: a key whose bit is clear has no
 * bucket, and its new connection skips the bucket-map lookup. */
struct cr_first_seen {
	__u64 has_bucket;
	__u64 rec[CR_FIRST_SEEN_WAYS];
};

/* Per (protocol, port) counters: `port_slots` (a HASH) gives the pair's slot
 * in `port_stats` (a PERCPU_ARRAY of cr_port_stats); slots are handed out by
 * the datapath, in order, from `port_slot_next`. */
struct cr_port_key {
	__u16 port;
	__u8 proto; /* enum cr_proto */
	__u8 pad;
};

struct cr_port_stats {
	__u64 allowed;
	__u64 dropped;
	__u64 would_drop;
};

/* LPM trie keys. `tag` selects the configuration slot for the admin exempt list
 * (so a new list is written beside the old one and swapped with the config);
 * routes use CR_TAG_ROUTE. prefixlen counts the tag's 8 bits. */
enum cr_lpm_tag {
	CR_TAG_ROUTE = 0xff,
	CR_TAG_BITS = 8, /* the tag's share of prefixlen */
};
struct cr_lpm_key {
	__u32 prefixlen;
	__u8 tag;
	__u8 addr[CR_ADDR_LEN];
	__u8 pad[3];
};

/* A protocol's token clock: C(t) = base_tokens + e * CR_TOKEN / period_ns for
 * e = t - base_ns, one CR_TOKEN per period, computed without a division:
 *   q = mul_shift(e, q_mult, q_shift)         ~ e / period, never more
 *   r = e - q * period   (q corrected up while r >= period, twice at most)
 *   C = base_tokens + q * CR_TOKEN + mul_shift(r, f_mult, f_shift)
 * where mul_shift(x, m, s) = (x_hi * m) >> (s - 32) + (x_lo * m) >> s for
 * x = x_hi * 2^32 + x_lo (no overflow: m < 2^32). User space picks each mult
 * as floor(ratio * 2^shift) with the largest shift that keeps it below 2^32,
 * so C is exact at every whole period and at most one unit (2^-20 token)
 * behind within one — never ahead: stricter, never looser.
 * GCRA runs on C instead of on time (tat' = max(tat, C) + CR_TOKEN; allow iff
 * tat' - C <= burst * CR_TOKEN), which is the same at a constant rate and lets
 * a rate change keep every key's tokens: user space rebases the clock
 * (base = C(now)) when the period changes, so C is continuous and never runs
 * backwards. */
struct cr_token_clock {
	__u64 base_ns;
	__u64 base_tokens;
	__u64 period_ns; /* 60 s / rate; 0 = limit off (the clock stands still) */
	__u32 q_mult;    /* 1 / period_ns */
	__u32 q_shift;
	__u32 f_mult;    /* CR_TOKEN / period_ns */
	__u32 f_shift;
};

/* One complete configuration. Two live in `config`; `in_force` says which is
 * in force, so a packet sees the old configuration or the new, never a mix.
 * What a monitored packet reads up to a cached drop comes first, in the
 * value's first cache line (the map's values start on lines); the token
 * clocks, read when a bucket is, follow. */
struct cr_config {
	__u64 generation;                /* bumped by user space on each apply */
	__u64 udp_timeout_ns;
	__u32 rate[CR_PROTO_COUNT];      /* connections per minute; 0 = limit off */
	__u32 all_ports[CR_PROTO_COUNT]; /* 1: every port is monitored */
	__u32 burst;
	__u32 mode;                      /* enum cr_mode */
	__u32 flow_epoch_shift;          /* flow filter epochs of 2^shift ns >= udp_timeout_ns */
	__u32 valid;                     /* 0 until user space writes the slot */
	__u32 exempt_count;              /* prefixes tagged with this slot; 0 skips the lookup */
	__u32 pad;
	__u32 ipv6_mask[4];              /* source mask for IPv6 buckets, network order */
	struct cr_token_clock clock[CR_PROTO_COUNT];
	__u64 ports[CR_PROTO_COUNT][CR_PORT_WORDS]; /* bit p set: port p monitored */
	__u32 pad_end[10];               /* a whole number of cache lines */
};

/* What is in force (`in_force`, an ARRAY of one), read by every packet
 * before anything else it judges by, in one line. User space rewrites the
 * whole value, one writer at a time (the apply lock). */
struct cr_in_force {
	__u32 config_slot; /* config[config_slot & 1] is in force */
	__u32 locals_gen;  /* counts switches of the local addresses:
			    * locals[locals_gen & 1] is in force */
	__u64 routes_gen;  /* bumped after every change of the routes:
			    * drop-cache entries made under another are void */
};

/* The local addresses, checked inline when there are few (`locals`, an ARRAY
 * of two, double-buffered like the configuration: `in_force` says which is
 * in force). With more than fit, use_map sends the check to `local_addrs`. */
struct cr_locals {
	__u32 v4_count;
	__u32 v6_count;
	__u32 use_map;
	__u32 pad;
	__u32 v4[CR_LOCALS_V4];              /* IPv4, network order: the first cache line */
	struct cr_addr v6[CR_LOCALS_V6];
	__u32 pad_end[4];                    /* a whole number of cache lines */
};

/* This CPU's last drop from its drop cache: the packet as parsed and what it
 * was judged under. A packet that parses the same (addresses, destination
 * port, protocol; TCP: a SYN), in the same kernel tick, under the same
 * configuration, routes and local addresses, has the same key and the same
 * drop-cache entry, still in force: it drops from that entry without the
 * local-address check, the port list or its key. Any entry made on this CPU
 * voids it (meta 0). */
struct cr_last_drop {
	__u64 tick;       /* the kernel tick it was made in */
	__u32 meta;       /* CR_LAST_DROP_VALID | is_v6 << 24 | proto << 16 | dport; 0: none */
	__u32 cidx;       /* the key's drop-cache slot */
	__u32 src[4];     /* as parsed: an IPv4 address in the last word only */
	__u32 dst[4];
	__u32 config_gen; /* low 32 bits of cr_config.generation */
	__u32 routes_gen; /* low 32 bits of cr_in_force.routes_gen */
	__u32 locals_gen; /* cr_in_force.locals_gen */
	__u32 flow_idx;   /* UDP: the key's flow-filter slot */
};

#define CR_LAST_DROP_VALID (1U << 31)
#define CR_LAST_DROP_V6_SHIFT 24
#define CR_LAST_DROP_PROTO_SHIFT 16

/* The global counters of one CPU, indexed by enum cr_counter, after the
 * datapath's own words that no one else reads: they share the lines of the
 * counters every packet increments, so a drop path reads no line more. */
struct cr_counters {
	struct cr_last_drop last_drop;
	__u64 udp_tick; /* the last kernel tick in which this CPU made a UDP
			 * drop-cache entry that drops: while it is not the current
			 * tick, no UDP entry can hit, so a datagram asks the flow
			 * table first and an established flow never builds its key */
	__u64 n[CR_CNT_COUNT];
};

/* The ABI fingerprint: user space writes a SHA-256 of every layout and enum in
 * this header (read from BTF) when it creates the maps, and refuses to adopt
 * pinned maps whose fingerprint differs from its own build's. */
#define CR_ABI_ID_LEN 32
struct cr_abi_id {
	__u8 sha256[CR_ABI_ID_LEN];
};

/* Ring-buffer record: a (source, port, protocol) started being limited. */
struct cr_event {
	__u64 ts_ns;
	struct cr_addr src;  /* the bucket's (masked) source */
	__u16 dport;
	__u8 proto;          /* enum cr_proto */
	__u8 would_drop;     /* 1 in log mode */
	__u32 rate;          /* connections per minute in force */
	__u32 burst;
	__u32 pad;
	__u64 drops;         /* this CPU's drops of this key while it was in the drop cache */
};

#endif /* CONNRATE_H */
