/**
 * Spoofed floods and eviction. The bucket map is a BPF LRU of fixed size: it
 * never grows. A source's first new connection only writes a first-seen
 * record (no bucket); its second stores the bucket; from the third on the
 * bucket is looked up. Eviction takes keys that were never looked up again
 * first, so a flood of one- or two-packet sources evicts itself, not a limited
 * source that keeps trying. Sources that come back (three packets or more) do
 * compete: when about `capacity` of them arrive between two attempts of a
 * limited source, its key is evicted and it starts over with a fresh bucket.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { pinToOneCpu } from '../helpers/affinity.js';
import { type Bench, CLIENT4, openBench, syn } from './harness.js';

const CAPACITY = 2048;
const ATTEMPTS = 6;
let bench: Bench;
afterEach(() => bench?.close());

// The LRU's order depends on the thread's CPU (tests/helpers/affinity.ts): pinned for this file.
let unpin: (() => void) | undefined;
beforeAll(() => {
  unpin = pinToOneCpu();
});
afterAll(() => unpin?.());

/**
 * A limited source makes ATTEMPTS SYNs; before each, `between` spoofed sources
 * send `perSource` SYNs each. Returns how many attempts were admitted.
 */
function floodRun(between: number, perSource: number): { admitted: number; tracked: number } {
  bench = openBench({}, { buckets: CAPACITY });
  bench.burst(5, (i) => syn(CLIENT4, 443, 40000 + i)); // limited from now on
  let admitted = 0;
  let n = 0;
  for (let a = 0; a < ATTEMPTS; a++) {
    for (let i = 0; i < between; i++, n++) {
      const spoofed = syn(`198.18.${128 + ((n >> 8) & 0x7f)}.${n & 0xff}`, 443, 1000 + (n >> 15));
      for (let k = 0; k < perSource; k++) bench.send(spoofed);
    }
    if (bench.send(syn(CLIENT4, 443, 50000 + a)) === 'PASS') admitted++;
  }
  return { admitted, tracked: bench.dp.maps.buckets.count() };
}

describe('a spoofed flood against the bucket map', () => {
  it('of one packet per source never evicts a limited source, even at 8x the capacity between its attempts', () => {
    const r = floodRun(CAPACITY * 8, 1);
    expect(r.admitted).toBe(0);
    expect(r.tracked).toBeLessThanOrEqual(CAPACITY);
  });

  it('of two packets per source never evicts a limited source, even at 2x the capacity between its attempts', () => {
    const r = floodRun(CAPACITY * 2, 2);
    expect(r.admitted).toBe(0);
    expect(r.tracked).toBeLessThanOrEqual(CAPACITY);
  });

  it('of returning sources leaves it limited below the capacity between attempts', () => {
    expect(floodRun(CAPACITY / 2, 3).admitted).toBe(0);
  });

  it('of returning sources evicts it at the capacity between attempts: a fresh bucket each time, the map never grows', () => {
    const r = floodRun(CAPACITY * 4, 3); // the LRU evicts through per-CPU lists: a margin over "about capacity"
    expect(r.admitted).toBe(ATTEMPTS);
    expect(r.tracked).toBeLessThanOrEqual(CAPACITY);
    expect(bench.dp.counters().bucket_fallback).toBe(0n);
  });
});
