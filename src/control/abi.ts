/**
 * The datapath ABI, read from the BPF object's BTF: every struct layout and enum
 * value comes from bpf/connrate.h as compiled, never from offsets written here.
 */
import { createHash } from 'node:crypto';
import { endianness } from 'node:os';
import type { BpfObject, BtfStruct } from '@xdp-ts/loader';
import { ADDR_LEN, addrText, maskOf, parsePrefix } from './addr.js';

export type Proto = 'tcp' | 'udp';
export const PROTOS: readonly Proto[] = ['tcp', 'udp'];
export type Mode = 'block' | 'log';

/** The counters of `enum cr_counter`, in the names admins see. */
export const COUNTER_NAMES = [
  'seen',
  'monitored',
  'established',
  'exempt',
  'not_monitored',
  'unparsable',
  'new_allowed',
  'new_dropped',
  'new_would_drop',
  'fragment',
  'ipv6_ext_limit',
  'cas_exhausted',
  'bucket_fallback',
  'flow_insert_fail',
  'port_stats_full',
  'events_lost',
  'no_config',
  'cache_drop',
  'first_seen',
  'first_seen_busy',
] as const;
export type CounterName = (typeof COUNTER_NAMES)[number];

export class AbiError extends Error {
  constructor(message: string) {
    super(`BPF object ABI: ${message}`);
    this.name = 'AbiError';
  }
}

interface Field {
  readonly offset: number;
  readonly size: number;
}

/** A struct's layout as BTF describes it. */
export class Layout {
  readonly name: string;
  readonly size: number;
  readonly #fields: ReadonlyMap<string, Field>;

  constructor(s: BtfStruct) {
    this.name = s.name;
    this.size = s.size;
    this.#fields = new Map(s.members.map((m) => [m.name, { offset: m.offset, size: m.size }]));
  }

  field(name: string): Field {
    const f = this.#fields.get(name);
    if (!f) throw new AbiError(`struct ${this.name} has no member ${name}`);
    return f;
  }

  alloc(): Buffer {
    return Buffer.alloc(this.size);
  }
}

const LE = endianness() === 'LE';
export function readU16(b: Buffer, off: number): number {
  return LE ? b.readUInt16LE(off) : b.readUInt16BE(off);
}
export function writeU16(b: Buffer, off: number, v: number): void {
  if (LE) b.writeUInt16LE(v, off);
  else b.writeUInt16BE(v, off);
}
export function readU32(b: Buffer, off: number): number {
  return LE ? b.readUInt32LE(off) : b.readUInt32BE(off);
}
export function writeU32(b: Buffer, off: number, v: number): void {
  if (LE) b.writeUInt32LE(v, off);
  else b.writeUInt32BE(v, off);
}
export function readU64(b: Buffer, off: number): bigint {
  return LE ? b.readBigUInt64LE(off) : b.readBigUInt64BE(off);
}
export function writeU64(b: Buffer, off: number, v: bigint): void {
  if (LE) b.writeBigUInt64LE(v, off);
  else b.writeBigUInt64BE(v, off);
}

export interface Abi {
  readonly config: Layout;
  readonly clock: Layout;
  readonly configSlot: Layout;
  readonly bucketKey: Layout;
  readonly bucket: Layout;
  readonly flowKey: Layout;
  readonly flow: Layout;
  readonly lpmKey: Layout;
  readonly portKey: Layout;
  readonly portStats: Layout;
  readonly dropStats: Layout;
  readonly dropCache: Layout;
  readonly locals: Layout;
  readonly counterSet: Layout;
  readonly event: Layout;
  /** enum cr_counter: index of each counter in the `counters` map. */
  readonly counters: ReadonlyMap<CounterName, number>;
  readonly proto: Readonly<Record<Proto, number>>;
  readonly mode: Readonly<Record<Mode, number>>;
  readonly tagRoute: number;
  readonly tagBits: number;
  /** One token in token-clock units (1 << tokenShift). */
  readonly token: bigint;
  readonly tokenShift: number;
}

function enumValue(values: ReadonlyMap<string, number>, enumName: string, name: string): number {
  const v = values.get(name);
  if (v === undefined) throw new AbiError(`enum ${enumName} has no ${name}`);
  return v;
}

const ABI_STRUCTS = [
  'cr_addr', 'cr_bucket_key', 'cr_bucket', 'cr_flow_key', 'cr_flow', 'cr_port_key', 'cr_port_stats',
  'cr_lpm_key', 'cr_token_clock', 'cr_config', 'cr_config_slot', 'cr_event', 'cr_abi_id',
  'cr_drop_stats', 'cr_drop_cache', 'cr_locals', 'cr_counters', 'cr_first_seen',
] as const;
const ABI_ENUMS = ['cr_proto', 'cr_mode', 'cr_counter', 'cr_lpm_tag', 'cr_token'] as const;

/**
 * SHA-256 over every layout and enum of connrate.h, as BTF describes them: two
 * builds share pinned maps only when their fingerprints are equal.
 */
export function abiFingerprint(obj: BpfObject): Buffer {
  const doc = {
    structs: ABI_STRUCTS.map((n) => obj.btfStruct(n)),
    enums: ABI_ENUMS.map((n) => [n, [...obj.btfEnum(n)].sort(([a], [b]) => a.localeCompare(b))]),
  };
  return createHash('sha256').update(JSON.stringify(doc)).digest();
}

/** Read the ABI from an opened (not necessarily loaded) connrate object. */
export function readAbi(obj: BpfObject): Abi {
  const layout = (name: string): Layout => new Layout(obj.btfStruct(name));
  const cnt = obj.btfEnum('cr_counter');
  const counters = new Map<CounterName, number>();
  for (const name of COUNTER_NAMES) {
    counters.set(name, enumValue(cnt, 'cr_counter', `CR_CNT_${name.toUpperCase()}`));
  }
  const known = new Set([...counters.values()]);
  for (const [name, value] of cnt) {
    if (name !== 'CR_CNT_COUNT' && !known.has(value)) throw new AbiError(`counter ${name} is unknown to this build`);
  }
  const proto = obj.btfEnum('cr_proto');
  const mode = obj.btfEnum('cr_mode');
  const tag = obj.btfEnum('cr_lpm_tag');
  const token = obj.btfEnum('cr_token');
  return {
    config: layout('cr_config'),
    clock: layout('cr_token_clock'),
    configSlot: layout('cr_config_slot'),
    bucketKey: layout('cr_bucket_key'),
    bucket: layout('cr_bucket'),
    flowKey: layout('cr_flow_key'),
    flow: layout('cr_flow'),
    lpmKey: layout('cr_lpm_key'),
    portKey: layout('cr_port_key'),
    portStats: layout('cr_port_stats'),
    dropStats: layout('cr_drop_stats'),
    dropCache: layout('cr_drop_cache'),
    locals: layout('cr_locals'),
    counterSet: layout('cr_counters'),
    event: layout('cr_event'),
    counters,
    proto: { tcp: enumValue(proto, 'cr_proto', 'CR_PROTO_TCP'), udp: enumValue(proto, 'cr_proto', 'CR_PROTO_UDP') },
    mode: { block: enumValue(mode, 'cr_mode', 'CR_MODE_BLOCK'), log: enumValue(mode, 'cr_mode', 'CR_MODE_LOG') },
    tagRoute: enumValue(tag, 'cr_lpm_tag', 'CR_TAG_ROUTE'),
    tagBits: enumValue(tag, 'cr_lpm_tag', 'CR_TAG_BITS'),
    token: BigInt(enumValue(token, 'cr_token', 'CR_TOKEN')),
    tokenShift: enumValue(token, 'cr_token', 'CR_TOKEN_SHIFT'),
  };
}

// ---------------------------------------------------------------- configuration

export interface ProtoLimit {
  /** New connections per minute per (source, port); 0 = off. */
  readonly rate: number;
  /** Monitored destination ports; empty = every port. */
  readonly ports: readonly number[];
}

/** What the datapath enforces: the extc values, resolved. */
export interface DatapathConfig {
  readonly tcp: ProtoLimit;
  readonly udp: ProtoLimit;
  readonly burst: number;
  readonly mode: Mode;
  /** Source prefixes never limited. */
  readonly exempt: readonly string[];
  /** IPv6 sources share a bucket per prefix of this length. */
  readonly ipv6Prefix: number;
  readonly udpTimeoutSec: number;
}

const NS_PER_SEC = 1_000_000_000n;
const NS_PER_MINUTE = 60n * NS_PER_SEC;
const PORT_WORD_BITS = 64;

/** GCRA emission interval: 60 s / rate, in ns (0 when the limit is off). */
export function periodNs(rate: number): bigint {
  return rate > 0 ? NS_PER_MINUTE / BigInt(rate) : 0n;
}

/**
 * A protocol's token clock (struct cr_token_clock): C(t) advances one token
 * every period, as base_tokens + mul_shift(t − base_ns) (no division in the
 * datapath). Buckets hold times on this clock, so a rate change that rebases
 * it keeps every key's tokens.
 */
export interface TokenClock {
  readonly baseNs: bigint;
  readonly baseTokens: bigint;
  readonly periodNs: bigint;
  /** ~1/period as qMult / 2^qShift (never more). */
  readonly qMult: number;
  readonly qShift: number;
  /** ~token/period as fMult / 2^fShift (never more). */
  readonly fMult: number;
  readonly fShift: number;
}

const U32 = 1n << 32n;
const U64_MASK = (1n << 64n) - 1n;
const MAX_SHIFT = 63;

/** mult/2^shift ≈ num/den, never more: the largest shift (≤ 63) with mult < 2^32. */
function scale(num: bigint, den: bigint): [mult: number, shift: number] {
  for (let shift = MAX_SHIFT; shift >= 0; shift--) {
    const mult = (num << BigInt(shift)) / den;
    if (mult < U32) return [Number(mult), shift];
  }
  throw new RangeError(`a token period of ${den} ns is too short for the token clock`);
}

/** The multipliers of a token clock with this period (struct cr_token_clock). */
export function clockScale(periodNs: bigint, token: bigint): Pick<TokenClock, 'qMult' | 'qShift' | 'fMult' | 'fShift'> {
  if (periodNs === 0n) return { qMult: 0, qShift: 0, fMult: 0, fShift: 0 };
  const [qMult, qShift] = scale(1n, periodNs);
  const [fMult, fShift] = scale(token, periodNs);
  return { qMult, qShift, fMult, fShift };
}

/** (x · mult) >> shift as the datapath computes it: 32-bit halves, 64-bit wrap. */
function mulShift(x: bigint, mult: number, shift: number): bigint {
  const m = BigInt(mult);
  const hi = ((x >> 32n) * m) & U64_MASK;
  const lo = ((x & (U32 - 1n)) * m) & U64_MASK;
  const s = BigInt(shift & MAX_SHIFT);
  if (s >= 32n) return ((hi >> (s - 32n)) + (lo >> s)) & U64_MASK;
  return (((hi << (32n - s)) & U64_MASK) + (lo >> s)) & U64_MASK;
}

const CLOCK_CORRECTIONS = 2;

/** C(now), exactly as the datapath computes it (connrate.h, struct cr_token_clock). `token` is a power of two. */
export function clockAt(c: TokenClock, now: bigint, token: bigint): bigint {
  if (now <= c.baseNs || c.periodNs === 0n) return c.baseTokens;
  const e = now - c.baseNs;
  let q = mulShift(e, c.qMult, c.qShift);
  let r = (e - q * c.periodNs) & U64_MASK;
  for (let i = 0; i < CLOCK_CORRECTIONS && r >= c.periodNs; i++) {
    q++;
    r -= c.periodNs;
  }
  return (c.baseTokens + ((q * token) & U64_MASK) + mulShift(r, c.fMult, c.fShift)) & U64_MASK;
}

/** The clock to use from `now` on for a new period: unchanged, or rebased so C is continuous. */
export function rebaseClock(old: TokenClock | undefined, periodNs: bigint, now: bigint, token: bigint): TokenClock {
  const s = clockScale(periodNs, token);
  if (!old) return { baseNs: now, baseTokens: 0n, periodNs, ...s };
  if (old.periodNs === periodNs && old.qMult === s.qMult && old.fMult === s.fMult && old.qShift === s.qShift && old.fShift === s.fShift) return old;
  return { baseNs: now, baseTokens: clockAt(old, now, token), periodNs, ...s };
}

export type Clocks = Readonly<Record<Proto, TokenClock>>;

export function encodeConfig(abi: Abi, cfg: DatapathConfig, generation: bigint, clocks: Clocks, logAnonymize = false): Buffer {
  const L = abi.config;
  const C = abi.clock;
  const b = L.alloc();
  const clock = L.field('clock');
  const rate = L.field('rate');
  const allPorts = L.field('all_ports');
  const ports = L.field('ports');
  const words = ports.size / 8 / PROTOS.length;
  for (const p of PROTOS) {
    const i = abi.proto[p];
    const lim = cfg[p];
    const at = clock.offset + i * C.size;
    writeU64(b, at + C.field('base_ns').offset, clocks[p].baseNs);
    writeU64(b, at + C.field('base_tokens').offset, clocks[p].baseTokens);
    writeU64(b, at + C.field('period_ns').offset, clocks[p].periodNs);
    writeU32(b, at + C.field('q_mult').offset, clocks[p].qMult);
    writeU32(b, at + C.field('q_shift').offset, clocks[p].qShift);
    writeU32(b, at + C.field('f_mult').offset, clocks[p].fMult);
    writeU32(b, at + C.field('f_shift').offset, clocks[p].fShift);
    writeU32(b, rate.offset + i * 4, lim.rate);
    writeU32(b, allPorts.offset + i * 4, lim.ports.length === 0 ? 1 : 0);
    for (const port of lim.ports) {
      const off = ports.offset + (i * words + Math.floor(port / PORT_WORD_BITS)) * 8;
      writeU64(b, off, readU64(b, off) | (1n << BigInt(port % PORT_WORD_BITS)));
    }
  }
  writeU64(b, L.field('udp_timeout_ns').offset, BigInt(cfg.udpTimeoutSec) * NS_PER_SEC);
  writeU64(b, L.field('generation').offset, generation);
  writeU32(b, L.field('burst').offset, cfg.burst);
  writeU32(b, L.field('mode').offset, abi.mode[cfg.mode]);
  maskOf(cfg.ipv6Prefix).copy(b, L.field('ipv6_mask').offset);
  writeU32(b, L.field('valid').offset, 1);
  writeU32(b, L.field('log_anonymize').offset, logAnonymize ? 1 : 0);
  writeU32(b, L.field('exempt_count').offset, cfg.exempt.length);
  return b;
}

export interface AppliedConfig extends Omit<DatapathConfig, 'exempt'> {
  readonly generation: bigint;
  readonly valid: boolean;
  readonly logAnonymize: boolean;
  readonly clocks: Clocks;
}

export function decodeConfig(abi: Abi, b: Buffer): AppliedConfig {
  const L = abi.config;
  const C = abi.clock;
  const ports = L.field('ports');
  const words = ports.size / 8 / PROTOS.length;
  const limit = (p: Proto): ProtoLimit => {
    const i = abi.proto[p];
    const all = readU32(b, L.field('all_ports').offset + i * 4) !== 0;
    const list: number[] = [];
    if (!all) {
      for (let w = 0; w < words; w++) {
        const word = readU64(b, ports.offset + (i * words + w) * 8);
        if (word === 0n) continue;
        for (let bit = 0; bit < PORT_WORD_BITS; bit++) {
          if ((word >> BigInt(bit)) & 1n) list.push(w * PORT_WORD_BITS + bit);
        }
      }
    }
    return { rate: readU32(b, L.field('rate').offset + i * 4), ports: list };
  };
  const clock = (p: Proto): TokenClock => {
    const at = L.field('clock').offset + abi.proto[p] * C.size;
    return {
      baseNs: readU64(b, at + C.field('base_ns').offset),
      baseTokens: readU64(b, at + C.field('base_tokens').offset),
      periodNs: readU64(b, at + C.field('period_ns').offset),
      qMult: readU32(b, at + C.field('q_mult').offset),
      qShift: readU32(b, at + C.field('q_shift').offset),
      fMult: readU32(b, at + C.field('f_mult').offset),
      fShift: readU32(b, at + C.field('f_shift').offset),
    };
  };
  const mask = b.subarray(L.field('ipv6_mask').offset, L.field('ipv6_mask').offset + ADDR_LEN);
  let ipv6Prefix = 0;
  for (const byte of mask) ipv6Prefix += byte.toString(2).replace(/0/g, '').length;
  return {
    tcp: limit('tcp'),
    udp: limit('udp'),
    burst: readU32(b, L.field('burst').offset),
    mode: readU32(b, L.field('mode').offset) === abi.mode.log ? 'log' : 'block',
    ipv6Prefix,
    udpTimeoutSec: Number(readU64(b, L.field('udp_timeout_ns').offset) / NS_PER_SEC),
    generation: readU64(b, L.field('generation').offset),
    valid: readU32(b, L.field('valid').offset) !== 0,
    logAnonymize: readU32(b, L.field('log_anonymize').offset) !== 0,
    clocks: { tcp: clock('tcp'), udp: clock('udp') },
  };
}

// ---------------------------------------------------------------- keys and values

/** An LPM key for a source prefix under a tag (a config slot, or routes). */
export function encodeLpmKey(abi: Abi, tag: number, prefix: string): Buffer {
  const p = parsePrefix(prefix);
  const L = abi.lpmKey;
  const b = L.alloc();
  writeU32(b, L.field('prefixlen').offset, abi.tagBits + p.bits);
  b[L.field('tag').offset] = tag;
  p.bytes.copy(b, L.field('addr').offset);
  return b;
}

/**
 * The inline local-address set (struct cr_locals): IPv4 and IPv6 addresses
 * while each family fits, else use_map (the datapath looks in local_addrs).
 * `addrs` are 16-byte addresses, IPv4 v4-mapped.
 */
export function encodeLocals(abi: Abi, addrs: readonly Buffer[]): Buffer {
  const L = abi.locals;
  const b = L.alloc();
  const v4 = addrs.filter(isV4Mapped);
  const v6 = addrs.filter((a) => !isV4Mapped(a));
  const v4Slots = L.field('v4').size / 4;
  const v6Slots = L.field('v6').size / ADDR_LEN;
  if (v4.length > v4Slots || v6.length > v6Slots) {
    writeU32(b, L.field('use_map').offset, 1);
    return b;
  }
  writeU32(b, L.field('v4_count').offset, v4.length);
  writeU32(b, L.field('v6_count').offset, v6.length);
  v4.forEach((a, i) => a.copy(b, L.field('v4').offset + i * 4, 12, 16)); // network order, as on the wire
  v6.forEach((a, i) => a.copy(b, L.field('v6').offset + i * ADDR_LEN));
  return b;
}

const V4_MAPPED_PREFIX = Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
function isV4Mapped(a: Buffer): boolean {
  return a.subarray(0, 12).equals(V4_MAPPED_PREFIX);
}

export interface BucketKey {
  readonly src: string;
  readonly dport: number;
  readonly proto: Proto;
}

function protoName(abi: Abi, v: number): Proto {
  return v === abi.proto.tcp ? 'tcp' : 'udp';
}

export function decodeBucketKey(abi: Abi, b: Buffer): BucketKey {
  const L = abi.bucketKey;
  const src = L.field('src').offset;
  return {
    src: addrText(b.subarray(src, src + ADDR_LEN)),
    dport: readU16(b, L.field('dport').offset),
    proto: protoName(abi, b[L.field('proto').offset] ?? 0),
  };
}

export interface Bucket {
  /** GCRA theoretical arrival time, on the protocol's token clock. */
  readonly tat: bigint;
  readonly lastEventNs: bigint;
}

export function decodeBucket(abi: Abi, b: Buffer): Bucket {
  const L = abi.bucket;
  return {
    tat: readU64(b, L.field('tat').offset),
    lastEventNs: readU64(b, L.field('last_event_ns').offset),
  };
}

/** A key's drops, folded over CPUs (struct cr_drop_stats and live cr_drop_cache entries). */
export interface KeyDrops {
  readonly drops: bigint;
  readonly lastDropNs: bigint;
}

/** Fold one more per-CPU (drops, last drop) into a running total. */
export function addDrops(into: KeyDrops | undefined, drops: bigint, lastDropNs: bigint): KeyDrops {
  if (!into) return { drops, lastDropNs };
  return { drops: into.drops + drops, lastDropNs: lastDropNs > into.lastDropNs ? lastDropNs : into.lastDropNs };
}

/** Whole tokens a bucket holds when its protocol's clock reads `clock`: burst − ceil((tat − C) / token). */
export function tokensLeft(tat: bigint, clock: bigint, token: bigint, burst: number): number {
  const debt = tat > clock ? tat - clock : 0n;
  const used = (debt + token - 1n) / token;
  const left = BigInt(burst) - used;
  return Number(left < 0n ? 0n : left);
}

export interface PortKey {
  readonly port: number;
  readonly proto: Proto;
}

export function decodePortKey(abi: Abi, b: Buffer): PortKey {
  const L = abi.portKey;
  return { port: readU16(b, L.field('port').offset), proto: protoName(abi, b[L.field('proto').offset] ?? 0) };
}

export function encodePortKey(abi: Abi, k: PortKey): Buffer {
  const L = abi.portKey;
  const b = L.alloc();
  writeU16(b, L.field('port').offset, k.port);
  b[L.field('proto').offset] = abi.proto[k.proto];
  return b;
}

export interface PortStats {
  readonly allowed: bigint;
  readonly dropped: bigint;
  readonly wouldDrop: bigint;
}

/** Sum per-CPU cr_port_stats values. */
export function sumPortStats(abi: Abi, perCpu: readonly Buffer[]): PortStats {
  const L = abi.portStats;
  let allowed = 0n;
  let dropped = 0n;
  let wouldDrop = 0n;
  for (const v of perCpu) {
    allowed += readU64(v, L.field('allowed').offset);
    dropped += readU64(v, L.field('dropped').offset);
    wouldDrop += readU64(v, L.field('would_drop').offset);
  }
  return { allowed, dropped, wouldDrop };
}

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

export function decodeEvent(abi: Abi, b: Buffer): RateLimitEvent {
  const L = abi.event;
  const src = L.field('src').offset;
  return {
    tsNs: readU64(b, L.field('ts_ns').offset),
    src: addrText(b.subarray(src, src + ADDR_LEN)),
    dport: readU16(b, L.field('dport').offset),
    proto: protoName(abi, b[L.field('proto').offset] ?? 0),
    wouldDrop: b[L.field('would_drop').offset] === 1,
    rate: readU32(b, L.field('rate').offset),
    burst: readU32(b, L.field('burst').offset),
    drops: readU64(b, L.field('drops').offset),
  };
}
