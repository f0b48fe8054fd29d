/**
 * The datapath commands of the CLI: system update rule, status, stats, top,
 * detach. Each returns data; the CLI prints it as text or JSON.
 */
import { rmdirSync } from 'node:fs';
import { Link, ifName } from '@xdp-ts/loader';
import { Store } from '../config/store.js';
import { type ExtcValues, diffValues, resolve, valuesInForce } from '../config/variables.js';
import { ConnrateError, NoDatapathError } from '../errors.js';
import { Datapath } from './datapath.js';
import type { PinDir } from './pins.js';
import { type Offender, type Stats, readStats, readTop, xdpMode } from './queries.js';

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
  return withDatapath(op, pins, (dp) =>
    pins.withApplyLock(() => {
      const before = dp.appliedConfig();
      const applied = dp.applyConfig(cfg);
      pins.markApplied();
      const from = before ? valuesInForce(before, values) : {};
      return { generation: applied.generation, changes: diffValues(from, values), ms: performance.now() - t0 };
    }),
  );
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
    const inForce = applied ? valuesInForce(applied, stored) : undefined;
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

export function stats(pins: PinDir): Stats {
  return withDatapath('stats', pins, readStats);
}

// ---------------------------------------------------------------- top

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
