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
import { spawnSync } from 'node:child_process';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type Bench, CLIENT4, openBench, syn } from './harness.js';

const CAPACITY = 2048;
const ATTEMPTS = 6;
let bench: Bench;
afterEach(() => bench?.close());

/**
 * The BPF LRU keeps free nodes in per-CPU lists: a run whose thread moves
 * between CPUs strands some in the list of the CPU it left, and evicts
 * earlier than the figures below. Packets of one NIC queue are handled on one
 * CPU, so the test thread (BPF_PROG_TEST_RUN runs on the caller's CPU) is
 * pinned to one for this file, and given back its CPUs after.
 */
function affinity(list?: string): string {
  const r = spawnSync('taskset', list ? ['-pc', list, String(process.pid)] : ['-pc', String(process.pid)], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`taskset: ${r.stderr.trim() || `exit ${r.status}`}`);
  return r.stdout.trim().split(': ').pop() ?? '';
}
let cpus = '';
beforeAll(() => {
  cpus = affinity();
  affinity(cpus.split(/[,-]/)[0]);
});
afterAll(() => void (cpus && affinity(cpus)));

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
