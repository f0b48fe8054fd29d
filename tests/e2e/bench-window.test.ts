/**
 * The benchmark's flood generator and its window (bench/gen-worker.ts,
 * bpf/bench_gen.bpf.c): with a window, the generator is never more than that
 * many frames ahead of the engine's NAPI, so the veth ring never refuses a
 * frame, however slow the engine; without one, a slow engine's ring refuses
 * most of them. Counts, not times: every frame the generator sent reaches the
 * engine's XDP program.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dropParseSpin } from '../../bench/engines.js';
import { SCENARIOS } from '../../bench/scenarios.js';
import { DEFAULT_WINDOW, measure } from '../../bench/throughput.js';
import { Topology } from '../../bench/topology.js';

/** Arithmetic rounds that make xdp-drop-parse a few µs a packet: far slower than the generator. */
const SLOW = 4096;
const SECONDS = 0.3;
/** Frames of the generator netns' own (not the generator's) a run may see. */
const STRAY_MAX = 8;
const flood = SCENARIOS.find((s) => s.name === 'syn-flood-one-source')!;

describe('bench generator window', () => {
  let t: Topology;
  beforeAll(() => {
    t = Topology.open();
  });
  afterAll(async () => {
    await t?.close();
  });

  it('refuses no frame at the veth ring with a window, and most of them without one', async () => {
    const engine = dropParseSpin(SLOW);
    const windowed = (await measure(t, flood, engine, { seconds: SECONDS, window: DEFAULT_WINDOW })).saturation;
    expect(windowed.frames).toBeGreaterThan(0);
    // every frame sent arrived; the generator's netns may add a stray frame of its own
    // (an IPv6 multicast listener report) through the same veth
    expect(windowed.seen - windowed.frames).toBeGreaterThanOrEqual(0);
    expect(windowed.seen - windowed.frames).toBeLessThanOrEqual(STRAY_MAX);

    const unbounded = (await measure(t, flood, engine, { seconds: SECONDS })).saturation;
    expect(unbounded.seen).toBeLessThan(unbounded.frames / 2);
  });

  it('rejects a window the ring cannot hold', async () => {
    await expect(measure(t, flood, dropParseSpin(1), { seconds: SECONDS, window: 256 })).rejects.toThrow(/window must be a whole number of frames from 128 to 192, got 256/);
  });
});
