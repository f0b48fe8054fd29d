/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * connrate.h — every struct and constant that crosses the boundary between the
 * XDP program (connrate.bpf.c) and user space. User space reads the layouts
 * from the object's BTF and checks its codecs against them (tests/kernel/abi).
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

/* Default map sizes; user space may set others before load. */
#define CR_DEFAULT_BUCKETS (256 * 1024)
#define CR_DEFAULT_UDP_FLOWS (256 * 1024)
#define CR_DEFAULT_LOCAL_ADDRS 4096
#define CR_DEFAULT_PREFIXES 16384
#define CR_DEFAULT_PORT_STATS 16384
#define CR_DEFAULT_EVENT_RING (256 * 1024)

enum cr_proto {
	CR_PROTO_TCP = 0,
	CR_PROTO_UDP = 1,
	CR_PROTO_COUNT = 2,
};

/* One token in token-clock units (an enum, so user space reads it from BTF). */
enum cr_token {
	CR_TOKEN = 1 << 20,
};

enum cr_mode {
	CR_MODE_BLOCK = 0,
	CR_MODE_LOG = 1,
};

/* Global per-CPU counters: index into the `counters` PERCPU_ARRAY. */
enum cr_counter {
	/* seen = monitored + not_monitored + unparsable;
	 * monitored = established + exempt + new_allowed + new_dropped + new_would_drop */
	CR_CNT_SEEN = 0,          /* every packet the program ran on */
	CR_CNT_MONITORED,         /* TCP/UDP to a local address, limit on, port listed */
	CR_CNT_ESTABLISHED,       /* monitored, not a new connection (never limited) */
	CR_CNT_EXEMPT,            /* new connection from a non-default route or the exempt list */
	CR_CNT_NOT_MONITORED,     /* parsed, but not for a limit (foreign dst, off, port unlisted, non-TCP/UDP) */
	CR_CNT_UNPARSABLE,        /* truncated or malformed headers */
	CR_CNT_NEW_ALLOWED,       /* new connections let through */
	CR_CNT_NEW_DROPPED,       /* new connections dropped (block mode) */
	CR_CNT_NEW_WOULD_DROP,    /* new connections over the limit, passed (log mode) */
	CR_CNT_FRAGMENT,          /* non-first IPv4 fragments (also counted not monitored) */
	CR_CNT_IPV6_EXT_LIMIT,    /* IPv6 extension chain too long (also counted not monitored) */
	CR_CNT_CAS_EXHAUSTED,     /* bucket update lost CR_CAS_RETRIES races; packet dropped */
	CR_CNT_BUCKET_INSERT_FAIL,/* bucket map refused a new key; packet passed */
	CR_CNT_FLOW_INSERT_FAIL,  /* UDP flow map refused a new flow */
	CR_CNT_PORT_STATS_FULL,   /* per-port counter map full; totals still counted */
	CR_CNT_EVENTS_LOST,       /* ring buffer full: a log event was not delivered */
	CR_CNT_NO_CONFIG,         /* no configuration applied yet; packet passed */
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
 * clock (below); the rest is for admins. */
struct cr_bucket {
	__u64 tat;           /* token-clock units; updated only by compare-and-swap */
	__u64 drops;         /* atomically incremented */
	__u64 last_drop_ns;
	__u64 last_event_ns; /* compare-and-swap: one log event per key per minute */
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

/* Per (protocol, port) counters, a PERCPU_HASH. */
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

/* A protocol's token clock: C(t) = base_tokens + (t - base_ns) * CR_TOKEN / period_ns,
 * one CR_TOKEN per period. GCRA runs on C instead of on time
 * (tat' = max(tat, C) + CR_TOKEN; allow iff tat' - C <= burst * CR_TOKEN), which
 * is the same at a constant rate and lets a rate change keep every key's
 * tokens: user space rebases the clock (base = C(now)) when the period changes,
 * so C is continuous and never runs backwards. */
struct cr_token_clock {
	__u64 base_ns;
	__u64 base_tokens;
	__u64 period_ns; /* 60 s / rate; 0 = limit off (the clock stands still) */
};

/* One complete configuration. Two live in `config`; `config_slot` says which is
 * in force, so a packet sees the old configuration or the new, never a mix. */
struct cr_config {
	struct cr_token_clock clock[CR_PROTO_COUNT];
	__u64 udp_timeout_ns;
	__u64 generation;                /* bumped by user space on each apply */
	__u32 rate[CR_PROTO_COUNT];      /* connections per minute, for events */
	__u32 burst;
	__u32 mode;                      /* enum cr_mode */
	__u32 all_ports[CR_PROTO_COUNT]; /* 1: every port is monitored */
	__u32 ipv6_mask[4];              /* source mask for IPv6 buckets, network order */
	__u32 valid;                     /* 0 until user space writes the slot */
	__u32 log_anonymize;             /* for the daemon's log lines; unused here */
	__u32 exempt_count;              /* prefixes tagged with this slot; 0 skips the lookup */
	__u32 pad;
	__u64 ports[CR_PROTO_COUNT][CR_PORT_WORDS]; /* bit p set: port p monitored */
};

struct cr_config_slot {
	__u32 slot; /* 0 or 1 */
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
	__u64 drops;         /* drops of this key so far */
};

#endif /* CONNRATE_H */
