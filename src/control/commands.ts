/**
 * The datapath commands of the CLI: system update rule, status, stats, top,
 * detach. Each returns data; the CLI prints it as text or JSON.
 */
import { rmdirSync } from 'node:fs';
import { Link, ifIndex, ifName, xdpQuery } from '@xdp-ts/loader';
import { Store } from '../config/store.js';
import { type ExtcValues, diffValues, fromDatapath, resolve } from '../config/variables.js';
import { ConnrateError, NoDatapathError } from '../errors.js';
import { COUNTER_NAMES, type CounterName, type KeyDrops, type Proto, clockAt, decodeBucket, decodeBucketKey, tokensLeft } from './abi.js';
import { Datapath } from './datapath.js';
import type { PinDir } from './pins.js';

function withDatapath<T>(op: string, pins: PinDir, fn: (dp: Datapath) => T): T {
  const dp = Datapath.open(op, pins);
  try {
    return fn(dp);
  } finally {
    dp.close();
  }
}

// ---------------------------------------------------------------- system update rule

export interface UpdateResult {
  readonly generation: bigint;
  readonly changes: { name: string; from: string; to: string }[];
  /** ms from reading the store to the new configuration in force. */
  readonly ms: number;
}

/** Apply the stored values to the running datapath, atomically. */
export function updateRule(pins: PinDir, store: Store): UpdateResult {
  const op = 'system update rule';
  const t0 = performance.now();
  const values = store.read();
  const cfg = resolve(values);
  return withDatapath(op, pins, (dp) => {
    const lock = pins.lockApply();
    try {
      const before = dp.appliedConfig();
      const applied = dp.applyConfig(cfg, { logAnonymize: values.CONNECTION_RATE_LIMIT_LOG_ANONYMIZE === '1' });
      pins.markApplied();
      const from = before ? fromDatapath(before) : {};
      return { generation: applied.generation, changes: diffValues(from, values), ms: performance.now() - t0 };
    } finally {
      lock.release();
    }
  });
}

// ---------------------------------------------------------------- status

export interface InterfaceStatus {
  readonly ifname: string;
  readonly ifindex?: number;
  readonly mode?: string;
  readonly linkId?: number;
  readonly progId?: number;
}

export interface Status {
  readonly pinDir: string;
  readonly daemonRunning: boolean;
  readonly interfaces: InterfaceStatus[];
  readonly generation?: string;
  readonly stored: ExtcValues;
  readonly storedFrom: string;
  readonly inForce?: ExtcValues;
  /** Variables whose stored value is not in force yet. */
  readonly pending: string[];
}

/** The XDP mode attached to an interface, as the kernel reports it (bpf_xdp_query); undefined if none or no such interface. */
export function xdpMode(ifname: string): string | undefined {
  try {
    const { mode } = xdpQuery(ifIndex(ifname));
    return mode === 'none' ? undefined : mode;
  } catch {
    return undefined;
  }
}

export function status(pins: PinDir, store: Store): Status {
  const op = 'status';
  const stored = store.read();
  const storedFrom = store.exists() ? store.path : 'embedded defaults';
  if (!pins.exists()) throw new NoDatapathError(op, pins.dir);
  const interfaces = pins.linkNames().map((name): InterfaceStatus => {
    const link = Link.fromPinned(pins.linkPin(name));
    try {
      const info = link.info();
      let ifname = name;
      try {
        if (info.ifindex) ifname = ifName(info.ifindex);
      } catch {
        /* not in this network namespace */
      }
      const mode = xdpMode(ifname);
      return { ifname, ifindex: info.ifindex, linkId: info.id, progId: info.progId, ...(mode ? { mode } : {}) };
    } finally {
      link.close();
    }
  });
  return withDatapath(op, pins, (dp) => {
    const applied = dp.appliedConfig();
    const inForce = applied ? fromDatapath(applied) : undefined;
    return {
      pinDir: pins.dir,
      daemonRunning: pins.daemonRunning(),
      interfaces,
      ...(applied ? { generation: String(applied.generation) } : {}),
      stored,
      storedFrom,
      ...(inForce ? { inForce } : {}),
      pending: inForce ? diffValues(inForce, stored).map((c) => c.name) : Object.keys(stored),
    };
  });
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
    trackedBuckets: dp.map('buckets').count(BATCH),
    trackedFlows: dp.map('udp_flows').count(BATCH),
    bucketCapacity: dp.map('buckets').maxEntries,
    flowCapacity: dp.map('udp_flows').maxEntries,
  };
}

export function stats(pins: PinDir): Stats {
  return withDatapath('stats', pins, readStats);
}

export { COUNTER_NAMES };

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
  const buckets = dp.map('buckets');
  return winners.map((w): Offender => {
    const key = decodeBucketKey(dp.abi, w.key);
    const raw = buckets.lookup(w.key);
    const clock = cfg ? clockAt(cfg.clocks[key.proto], now, dp.abi.token) : 0n;
    return {
      ...key,
      drops: w.drops,
      lastDropAgoSec: Math.max(0, Number(now - w.lastDropNs) / NS_PER_SEC),
      // an evicted key starts over with a full bucket
      tokens: raw ? tokensLeft(decodeBucket(dp.abi, raw).tat, clock, dp.abi.token, cfg?.burst ?? 0) : (cfg?.burst ?? 0),
    };
  });
}

export function top(pins: PinDir, limit: number): Offender[] {
  return withDatapath('top', pins, (dp) => readTop(dp, limit));
}

// ---------------------------------------------------------------- detach

/** Remove the program from every interface and unpin everything. */
export function detach(pins: PinDir): string[] {
  const op = 'detach';
  if (!pins.exists() && pins.linkNames().length === 0) throw new NoDatapathError(op, pins.dir);
  if (pins.daemonRunning()) {
    throw new ConnrateError(op, 'EBUSY', `a connrate daemon is running on ${pins.dir}; stop it first (it leaves the datapath attached), then detach`);
  }
  const detached: string[] = [];
  for (const name of pins.linkNames()) {
    const link = Link.fromPinned(pins.linkPin(name));
    try {
      link.detach();
      link.unpin();
    } finally {
      link.close();
    }
    detached.push(name);
  }
  pins.unpinAll();
  for (const dir of [pins.links, pins.maps, pins.dir]) {
    try {
      rmdirSync(dir);
    } catch {
      /* a mount point, or not ours to remove */
    }
  }
  return detached;
}
