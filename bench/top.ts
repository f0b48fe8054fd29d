/**
 * `connrate top` and `stats` over 1M tracked keys: fill the bucket map (and
 * the per-CPU drop counts) of a loaded datapath with one million (source,
 * port, protocol) keys, then time the batch reads the commands do.
 */
import { fileURLToPath } from 'node:url';
import { Datapath } from '../src/control/datapath.js';
import { readStats, readTop } from '../src/control/queries.js';
import { fillKeys } from './keys.js';
import { BASE_CONFIG } from '../tests/kernel/harness.js';

const KEYS = 1 << 20;

export interface TopBench {
  keys: number;
  fillMs: number;
  topMs: number;
  statsMs: number;
  rssMiB: number;
}

export function measureTop(keys = KEYS): TopBench {
  // headroom: an LRU map evicts a little before it is full (per-CPU free lists)
  const dp = Datapath.load({ sizes: { buckets: Math.ceil(keys * 1.25), udpFlows: 1024 } });
  try {
    dp.applyConfig(BASE_CONFIG);
    const t0 = performance.now();
    // 198.18.0.0/15 sources, v4-mapped; one port; drops vary so top has to sort
    fillKeys(dp, keys, (i) => BigInt((i * 7919) % 100_003));
    const fillMs = performance.now() - t0;
    const t1 = performance.now();
    const top = readTop(dp, 20);
    const topMs = performance.now() - t1;
    if (top.length !== 20) throw new Error('top returned too few rows');
    const t2 = performance.now();
    const stats = readStats(dp);
    const statsMs = performance.now() - t2;
    if (stats.trackedBuckets !== keys) throw new Error(`stats counted ${stats.trackedBuckets} buckets, expected ${keys}`);
    return { keys, fillMs, topMs, statsMs, rssMiB: process.memoryUsage().rss / 2 ** 20 };
  } finally {
    dp.close();
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const r = measureTop();
  console.log(`${r.keys} keys: top ${r.topMs.toFixed(0)} ms, stats ${r.statsMs.toFixed(0)} ms (fill ${r.fillMs.toFixed(0)} ms), rss ${r.rssMiB.toFixed(0)} MiB`);
}
