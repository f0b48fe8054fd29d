/**
 * Exact on every CPU: two CPUs hitting one key at the same instant
 * admit no more than one CPU would — for buckets (compare-and-swap) and for
 * the UDP flow table (one flow is never counted twice).
 */
import { cpus } from 'node:os';
import { Worker } from 'node:worker_threads';
import { afterEach, describe, expect, it } from 'vitest';
import { numPossibleCpus } from '@xdp-ts/loader';
import { frame } from '../helpers/frame.js';
import { APPLIANCE4, type Bench, openBench } from './harness.js';

const WORKER = new URL('../helpers/race-worker.mjs', import.meta.url);
const MAX_BURST = 10_000;

let bench: Bench;
afterEach(() => bench?.close());

/** Both workers run every frame of rounds[r] `repeat` times, starting each round together. */
async function race(rounds: Buffer[][], repeat: number): Promise<void> {
  const barrier = new Int32Array(new SharedArrayBuffer(4));
  const progId = bench.dp.program.info().id;
  const data = rounds.map((frames) => frames.map((f) => new Uint8Array(f)));
  await Promise.all(
    [0, 1].map(
      () =>
        new Promise<void>((resolve, reject) => {
          const w = new Worker(WORKER, { workerData: { progId, rounds: data, repeat, barrier } });
          w.once('message', () => resolve());
          w.once('error', reject);
        }),
    ),
  );
}

/** Per-CPU allowed counts of one port's counters. */
function allowedPerCpu(proto: 'tcp' | 'udp', port: number): bigint[] {
  return bench.dp.portStatsPerCpu({ proto, port }).map((s) => s.allowed);
}

describe('two CPUs at once', () => {
  it('runs on a machine with at least two CPUs', () => {
    expect(cpus().length).toBeGreaterThanOrEqual(2);
    expect(numPossibleCpus()).toBeGreaterThanOrEqual(2);
  });

  it('admit exactly the burst when both hammer one bucket for the whole round', async () => {
    // time stands still (test clock) and the burst is 10000: each CPU sends 6000 SYNs at one key,
    // so the CPUs contend on the bucket's compare-and-swap all round long; lost updates would admit more
    const ROUNDS = Number(process.env.CONNRATE_SOAK_CPU_ROUNDS ?? 40);
    const PER_CPU = 6000;
    bench = openBench({ tcp: { rate: 1, ports: [] }, burst: MAX_BURST });
    const rounds = Array.from({ length: ROUNDS }, (_, r) => [frame({ src: '198.19.1.10', dst: APPLIANCE4, proto: 'tcp', sport: 40000, dport: 10000 + r })]);
    await race(rounds, PER_CPU);
    let shared = 0;
    for (let r = 0; r < ROUNDS; r++) {
      const perCpu = allowedPerCpu('tcp', 10000 + r);
      expect(perCpu.reduce((a, b) => a + b, 0n), `round ${r}`).toBe(BigInt(MAX_BURST));
      if (perCpu.filter((n) => n > 0n).length > 1) shared++;
    }
    const c = bench.dp.counters();
    expect(c.new_allowed).toBe(BigInt(MAX_BURST * ROUNDS));
    expect(c.new_dropped).toBe(BigInt((2 * PER_CPU - MAX_BURST) * ROUNDS));
    console.log(`cpus: ${ROUNDS} rounds x ${2 * PER_CPU} SYNs on one key: exactly ${MAX_BURST} admitted each; tokens taken on both CPUs in ${shared} rounds; CAS retries exhausted ${c.cas_exhausted}`);
    expect(shared).toBeGreaterThan(ROUNDS / 4); // the CPUs really contended
  }, 600_000);

  it('count each UDP flow once when both CPUs see its first datagram together', async () => {
    const ROUNDS = Number(process.env.CONNRATE_SOAK_CPU_ROUNDS ?? 20);
    const FLOWS = 500;
    bench = openBench({ burst: MAX_BURST }, { udpFlows: 2 * ROUNDS * FLOWS, portStats: ROUNDS + 16 });
    // both CPUs walk the same 500 new flows in the same order, in step
    const rounds = Array.from({ length: ROUNDS }, (_, r) =>
      Array.from({ length: FLOWS }, (_, f) => frame({ src: '198.19.1.10', dst: APPLIANCE4, proto: 'udp', sport: 30000 + f, dport: 20000 + r })),
    );
    await race(rounds, 1);
    let shared = 0;
    for (let r = 0; r < ROUNDS; r++) {
      const perCpu = allowedPerCpu('udp', 20000 + r);
      expect(perCpu.reduce((a, b) => a + b, 0n), `round ${r}`).toBe(BigInt(FLOWS));
      if (perCpu.filter((n) => n > 0n).length > 1) shared++;
    }
    const c = bench.dp.counters();
    expect(c.new_allowed).toBe(BigInt(ROUNDS * FLOWS));
    expect(c.established).toBe(BigInt(ROUNDS * FLOWS));
    console.log(`cpus: ${ROUNDS} rounds x ${FLOWS} flows raced on two CPUs: each counted once; flows created on both CPUs in ${shared} rounds`);
    expect(shared).toBeGreaterThan(0); // both CPUs created flows: the lockstep really ran in parallel
  }, 600_000);
});
