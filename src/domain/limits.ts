/**
 * What the datapath enforces, in the control plane's terms: the limits per
 * protocol, and the token clock the limits run on (its multipliers, and C(t)
 * computed exactly as the datapath computes it). No I/O and no layouts: the
 * extc variables resolve to these types, and the datapath codecs encode them.
 */

export type Proto = 'tcp' | 'udp';
export const PROTOS: readonly Proto[] = ['tcp', 'udp'];
export type Mode = 'block' | 'log';

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

export const NS_PER_SEC = 1_000_000_000n;
const NS_PER_MINUTE = 60n * NS_PER_SEC;

/** GCRA emission interval: 60 s / rate, in ns (0 when the limit is off). */
export function periodNs(rate: number): bigint {
  return rate > 0 ? NS_PER_MINUTE / BigInt(rate) : 0n;
}

/**
 * A protocol's token clock: C(t) advances one token every period, as
 * base_tokens + mul_shift(t − base_ns) (no division in the datapath). Buckets
 * hold times on this clock, so a rate change that rebases it keeps every
 * key's tokens.
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

export type Clocks = Readonly<Record<Proto, TokenClock>>;

/** The configuration in force, as the datapath holds it (the exempt list is read separately). */
export interface AppliedConfig extends Omit<DatapathConfig, 'exempt'> {
  readonly generation: bigint;
  readonly valid: boolean;
  readonly clocks: Clocks;
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

/** The multipliers of a token clock with this period. */
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

/** C(now), exactly as the datapath computes it (bpf/connrate.h, struct cr_token_clock). `token` is a power of two. */
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

/** Whole tokens a bucket holds when its protocol's clock reads `clock`: burst − ceil((tat − C) / token). */
export function tokensLeft(tat: bigint, clock: bigint, token: bigint, burst: number): number {
  const debt = tat > clock ? tat - clock : 0n;
  const used = (debt + token - 1n) / token;
  const left = BigInt(burst) - used;
  return Number(left < 0n ? 0n : left);
}
