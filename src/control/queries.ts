/**
 * Reading the datapath: its counters, the sources it limits most, and the
 * XDP mode of an interface. Shared by the CLI commands, the daemon and the
 * metrics.
 */
import { ifIndex, xdpQuery } from '@xdp-ts/loader';
import { type Proto, clockAt, tokensLeft } from '../domain/limits.js';
import { type CounterName, TOKEN, bucketKeyOf } from './abi.js';
import { CrBucketKey } from './datapath.gen.js';
import type { Datapath, KeyDrops } from './datapath.js';

/** The XDP mode attached to an interface, as the kernel reports it (bpf_xdp_query); undefined if none or no such interface. */
export function xdpMode(ifname: string): string | undefined {
  try {
    const { mode } = xdpQuery(ifIndex(ifname));
    return mode === 'none' ? undefined : mode;
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------- stats

export interface PortCounters {
  readonly proto: Proto;
  readonly port: number;
  readonly allowed: bigint;
  readonly dropped: bigint;
  readonly wouldDrop: bigint;
}

export interface Stats {
  readonly counters: Record<CounterName, bigint>;
  readonly ports: PortCounters[];
  readonly trackedBuckets: number;
  readonly trackedFlows: number;
  readonly bucketCapacity: number;
  readonly flowCapacity: number;
}

const BATCH = 4096;

export function readStats(dp: Datapath): Stats {
  return {
    counters: dp.counters(),
    ports: dp.portStats(),
    trackedBuckets: dp.maps.buckets.count(BATCH),
    trackedFlows: dp.maps.udpFlows.count(BATCH),
    bucketCapacity: dp.maps.buckets.raw.maxEntries,
    flowCapacity: dp.maps.udpFlows.raw.maxEntries,
  };
}

// ---------------------------------------------------------------- top

export interface Offender {
  readonly src: string;
  readonly dport: number;
  readonly proto: Proto;
  readonly drops: bigint;
  /** Seconds since the last drop. */
  readonly lastDropAgoSec: number;
  readonly tokens: number;
}

const NS_PER_SEC = 1e9;

/**
 * Keys with drops, most drops first (the latest drop first among equals).
 * Drops are counted per CPU (drop_stats and the CPUs' drop caches); one pass
 * folds them per key and keeps only the `limit` best, whose buckets alone are
 * read for their tokens.
 */
export function readTop(dp: Datapath, limit: number): Offender[] {
  const winners: ({ key: Buffer } & KeyDrops)[] = []; // sorted, best first, at most `limit`
  const beats = (drops: bigint, lastDropNs: bigint, w: KeyDrops): boolean => drops > w.drops || (drops === w.drops && lastDropNs > w.lastDropNs);
  dp.forEachKeyDrops((key, drops, lastDropNs) => {
    if (winners.length === limit && !beats(drops, lastDropNs, winners[winners.length - 1]!)) return;
    let at = winners.length;
    while (at > 0 && beats(drops, lastDropNs, winners[at - 1]!)) at--;
    winners.splice(at, 0, { key: Buffer.from(key), drops, lastDropNs });
    if (winners.length > limit) winners.pop();
  }, BATCH);
  const cfg = dp.appliedConfig();
  const now = dp.now();
  return winners.map((w): Offender => {
    const raw = CrBucketKey.decode(w.key);
    const key = bucketKeyOf(raw);
    const bucket = dp.maps.buckets.lookup(raw);
    const clock = cfg ? clockAt(cfg.clocks[key.proto], now, TOKEN) : 0n;
    return {
      ...key,
      drops: w.drops,
      lastDropAgoSec: Math.max(0, Number(now - w.lastDropNs) / NS_PER_SEC),
      // an evicted key starts over with a full bucket
      tokens: bucket ? tokensLeft(bucket.tat, clock, TOKEN, cfg?.burst ?? 0) : (cfg?.burst ?? 0),
    };
  });
}
