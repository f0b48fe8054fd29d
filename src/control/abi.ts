/**
 * Between the datapath's structs (datapath.gen.ts, generated from the BTF of
 * bpf/connrate.h as compiled) and the control plane's types: configuration,
 * keys, counters and events, and the ABI fingerprint. Every layout comes
 * from the generated module; this file only converts values.
 */
import type { BpfObject } from '@xdp-ts/loader';
import { addrText, isV4Mapped, maskOf, parsePrefix, prefixText, v4Bytes } from '../domain/addr.js';
import { type AppliedConfig, type Clocks, type DatapathConfig, type Mode, NS_PER_SEC, PROTOS, type Proto, type ProtoLimit } from '../domain/limits.js';
import * as gen from './datapath.gen.js';

/** One token in token-clock units. */
export const TOKEN = BigInt(gen.CrToken.CR_TOKEN);
/** The LPM tag of routes (exempt lists are tagged with their configuration slot). */
export const TAG_ROUTE = gen.CrLpmTag.CR_TAG_ROUTE;

/**
 * The ABI fingerprint: SHA-256 of every struct and enum of the generated
 * module as `obj`'s BTF describes them. Two builds share pinned maps only
 * when their fingerprints are equal.
 */
export function abiFingerprint(obj: BpfObject): Buffer {
  return Buffer.from(gen.fingerprint(obj), 'hex');
}

// ---------------------------------------------------------------- enums

const PROTO_VALUE: Readonly<Record<Proto, number>> = { tcp: gen.CrProto.CR_PROTO_TCP, udp: gen.CrProto.CR_PROTO_UDP };
const MODE_VALUE: Readonly<Record<Mode, number>> = { block: gen.CrMode.CR_MODE_BLOCK, log: gen.CrMode.CR_MODE_LOG };

function protoOf(v: number): Proto {
  return v === PROTO_VALUE.tcp ? 'tcp' : 'udp';
}

type CounterOf<K> = K extends `CR_CNT_${infer N}` ? (N extends 'COUNT' ? never : Lowercase<N>) : never;
/** A datapath counter (enum cr_counter) in the name admins see: CR_CNT_NEW_DROPPED is new_dropped. */
export type CounterName = CounterOf<keyof typeof gen.CrCounter>;

/** Every counter with its index in struct cr_counters, in the enum's order. */
const COUNTERS: readonly (readonly [CounterName, number])[] = Object.entries(gen.CrCounter)
  .filter(([k]) => k !== 'CR_CNT_COUNT')
  .map(([k, v]) => [k.slice('CR_CNT_'.length).toLowerCase() as CounterName, v]);
export const COUNTER_NAMES: readonly CounterName[] = COUNTERS.map(([name]) => name);
/** Each counter's index in struct cr_counters' `n`. */
export const COUNTER_INDEX: Readonly<Record<CounterName, number>> = Object.fromEntries(COUNTERS) as Record<CounterName, number>;

/** The global counters, summed over CPUs (one struct cr_counters per CPU). */
export function sumCounters(perCpu: readonly gen.CrCounters[]): Record<CounterName, bigint> {
  const out = {} as Record<CounterName, bigint>;
  for (const [name, i] of COUNTERS) out[name] = perCpu.reduce((sum, c) => sum + (c.n[i] ?? 0n), 0n);
  // The datapath does not count `seen`: every packet is one of these three.
  out.seen = out.monitored + out.not_monitored + out.unparsable;
  return out;
}

// ---------------------------------------------------------------- configuration

/** Ports per u64 word of struct cr_config's port bitmaps. */
const WORD_BITS = 64;

/** The u32 members that hold network-order bytes, as the host-order numbers the codecs take. */
function u32sOf(bytes: Uint8Array): number[] {
  return Array.from(new Uint32Array(Uint8Array.from(bytes).buffer));
}

function bytesOfU32s(words: readonly number[]): Buffer {
  return Buffer.from(Uint32Array.from(words).buffer);
}

/** struct cr_config for a configuration, its generation and its protocols' token clocks. */
export function encodeConfig(cfg: DatapathConfig, generation: bigint, clocks: Clocks): gen.CrConfig {
  const c = gen.CrConfig.zero();
  for (const p of PROTOS) {
    const i = PROTO_VALUE[p];
    const words = c.ports[i]!;
    c.clock[i] = { ...clocks[p] };
    c.rate[i] = cfg[p].rate;
    c.allPorts[i] = cfg[p].ports.length === 0 ? 1 : 0;
    for (const port of cfg[p].ports) {
      const w = Math.floor(port / WORD_BITS);
      const word = words[w];
      if (word === undefined) throw new RangeError(`port ${port} is out of range`);
      words[w] = word | (1n << BigInt(port % WORD_BITS));
    }
  }
  return {
    ...c,
    udpTimeoutNs: BigInt(cfg.udpTimeoutSec) * NS_PER_SEC,
    generation,
    burst: cfg.burst,
    mode: MODE_VALUE[cfg.mode],
    ipv6Mask: u32sOf(maskOf(cfg.ipv6Prefix)),
    valid: 1,
    exemptCount: cfg.exempt.length,
    flowEpochShift: flowEpochShift(BigInt(cfg.udpTimeoutSec) * NS_PER_SEC),
  };
}

/** The UDP flow filter's epoch, 2^shift ns: the smallest power of two that covers the timeout. */
export function flowEpochShift(timeoutNs: bigint): number {
  return timeoutNs <= 1n ? 0 : (timeoutNs - 1n).toString(2).length;
}

export function decodeConfig(c: gen.CrConfig): AppliedConfig {
  const limit = (p: Proto): ProtoLimit => {
    const i = PROTO_VALUE[p];
    const ports: number[] = [];
    if (!c.allPorts[i]) {
      (c.ports[i] ?? []).forEach((word, w) => {
        for (let bit = 0; word !== 0n && bit < WORD_BITS; bit++) if ((word >> BigInt(bit)) & 1n) ports.push(w * WORD_BITS + bit);
      });
    }
    return { rate: c.rate[i] ?? 0, ports };
  };
  const clock = (p: Proto): gen.CrTokenClock => c.clock[PROTO_VALUE[p]]!;
  let ipv6Prefix = 0;
  for (const byte of bytesOfU32s(c.ipv6Mask)) ipv6Prefix += byte.toString(2).replace(/0/g, '').length;
  return {
    tcp: limit('tcp'),
    udp: limit('udp'),
    burst: c.burst,
    mode: c.mode === MODE_VALUE.log ? 'log' : 'block',
    ipv6Prefix,
    udpTimeoutSec: Number(c.udpTimeoutNs / NS_PER_SEC),
    generation: c.generation,
    valid: c.valid !== 0,
    clocks: { tcp: clock('tcp'), udp: clock('udp') },
  };
}

// ---------------------------------------------------------------- keys and values

/** The LPM key of a source prefix under a tag (a configuration slot, or TAG_ROUTE). */
export function lpmKey(tag: number, prefix: string): gen.CrLpmKey {
  const p = parsePrefix(prefix);
  return { ...gen.CrLpmKey.zero(), prefixlen: gen.CrLpmTag.CR_TAG_BITS + p.bits, tag, addr: p.bytes };
}

/** The prefix an LPM key stands for, as people write it. */
export function lpmPrefix(k: gen.CrLpmKey): string {
  return prefixText(k.addr, k.prefixlen - gen.CrLpmTag.CR_TAG_BITS);
}

/**
 * The inline local-address set (struct cr_locals): IPv4 and IPv6 addresses
 * while each family fits, else use_map (the datapath looks in local_addrs).
 * `addrs` are 16-byte addresses, IPv4 v4-mapped.
 */
export function encodeLocals(addrs: readonly Buffer[]): gen.CrLocals {
  const l = gen.CrLocals.zero();
  const v4 = addrs.filter((a) => isV4Mapped(a));
  const v6 = addrs.filter((a) => !isV4Mapped(a));
  if (v4.length > l.v4.length || v6.length > l.v6.length) return { ...l, useMap: 1 };
  v4.forEach((a, i) => (l.v4[i] = u32sOf(v4Bytes(a))[0]!)); // network order, as on the wire
  v6.forEach((a, i) => (l.v6[i] = { bytes: a }));
  return { ...l, v4Count: v4.length, v6Count: v6.length };
}

export interface BucketKey {
  readonly src: string;
  readonly dport: number;
  readonly proto: Proto;
}

export function bucketKeyOf(k: gen.CrBucketKey): BucketKey {
  return { src: addrText(k.src.bytes), dport: k.dport, proto: protoOf(k.proto) };
}

export interface PortKey {
  readonly port: number;
  readonly proto: Proto;
}

export function portKeyOf(k: gen.CrPortKey): PortKey {
  return { port: k.port, proto: protoOf(k.proto) };
}

export function portKey(k: PortKey): gen.CrPortKey {
  return { ...gen.CrPortKey.zero(), port: k.port, proto: PROTO_VALUE[k.proto] };
}

export interface PortStats {
  readonly allowed: bigint;
  readonly dropped: bigint;
  readonly wouldDrop: bigint;
}

/** Sum per-CPU cr_port_stats values. */
export function sumPortStats(perCpu: readonly gen.CrPortStats[]): PortStats {
  let allowed = 0n;
  let dropped = 0n;
  let wouldDrop = 0n;
  for (const v of perCpu) {
    allowed += v.allowed;
    dropped += v.dropped;
    wouldDrop += v.wouldDrop;
  }
  return { allowed, dropped, wouldDrop };
}

/** A ring-buffer record: a key started being limited. */
export interface RateLimitEvent {
  readonly tsNs: bigint;
  readonly src: string;
  readonly dport: number;
  readonly proto: Proto;
  readonly wouldDrop: boolean;
  readonly rate: number;
  readonly burst: number;
  readonly drops: bigint;
}

/** A struct cr_event record from the `events` ring buffer. */
export function decodeEvent(record: Buffer): RateLimitEvent {
  const e = gen.CrEvent.decode(record);
  return {
    tsNs: e.tsNs,
    src: addrText(e.src.bytes),
    dport: e.dport,
    proto: protoOf(e.proto),
    wouldDrop: e.wouldDrop === 1,
    rate: e.rate,
    burst: e.burst,
    drops: e.drops,
  };
}
