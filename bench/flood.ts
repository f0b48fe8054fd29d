/**
 * A spoofed flood: at least 10M distinct IPv6 sources (random /64s of
 * 2001:db8::/32) through the live-frames generator into connrate on the
 * bench topology. While it runs — the flood on one CPU, connrate's receive
 * path on the other — a legitimate source must still get exactly its burst
 * and an established flow must never be limited (checked through
 * BPF_PROG_TEST_RUN against the same attached program and its flood-filled
 * maps: on the wire, the saturated veth ring would lose frames before XDP).
 * The maps must stay at their capacity and memory must not grow.
 *
 *   npm run bench:flood [-- --sources 10000000]
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { XDP_ACTION } from '@xdp-ts/loader';
import { Datapath } from '../src/control/datapath.js';
import { frame } from '../tests/helpers/frame.js';
import { attach, benchConfig } from './engines.js';
import { wireFrame } from './frames.js';
import { REWRITE, SCENARIOS } from './scenarios.js';
import { NET, Topology } from './topology.js';

const CHUNK_SECONDS = 10;
const MAX_CHUNKS = 30;

function meminfoKiB(field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync('/proc/meminfo', 'utf8'));
  return Number(m?.[1] ?? NaN);
}

function mapMemlock(id: number): number {
  const j = JSON.parse(execFileSync('bpftool', ['-j', 'map', 'show', 'id', String(id)], { encoding: 'utf8' })) as { bytes_memlock?: number };
  return j.bytes_memlock ?? NaN;
}

interface Memory {
  bucketsMemlockMiB: number;
  flowsMemlockMiB: number;
  slabMiB: number;
  percpuMiB: number;
  rssMiB: number;
}

function memory(dp: Datapath): Memory {
  const MiB = 2 ** 20;
  return {
    bucketsMemlockMiB: mapMemlock(dp.maps.buckets.raw.info().id) / MiB,
    flowsMemlockMiB: mapMemlock(dp.maps.udpFlows.raw.info().id) / MiB,
    slabMiB: meminfoKiB('Slab') / 1024,
    percpuMiB: meminfoKiB('Percpu') / 1024,
    rssMiB: process.memoryUsage().rss / MiB,
  };
}

/** During the flood: a fresh legitimate source gets exactly its burst; an established UDP flow is never limited. */
function legitimateCheck(dp: Datapath, k: number): { burstAdmitted: number; establishedPassed: number; establishedCounted: bigint } {
  const src = `198.19.50.${k % 250}`;
  let burstAdmitted = 0;
  for (let i = 0; i < 8; i++) {
    const syn = frame({ src, dst: NET.dut4, proto: 'tcp', sport: 41000 + 10 * k + i, dport: 443 });
    if (dp.program.testRun({ data: syn }).retval === XDP_ACTION.PASS) burstAdmitted++;
  }
  const flow = frame({ src: `198.19.60.${k % 250}`, dst: NET.dut4, proto: 'udp', sport: 42000 + k, dport: 1194, payload: 32 });
  dp.program.testRun({ data: flow }); // its first datagram: a new flow, admitted
  const before = dp.counters().established;
  let establishedPassed = 0;
  for (let i = 0; i < 100; i++) if (dp.program.testRun({ data: flow }).retval === XDP_ACTION.PASS) establishedPassed++;
  return { burstAdmitted, establishedPassed, establishedCounted: dp.counters().established - before };
}

export async function flood(sources: number): Promise<Record<string, unknown>> {
  const t = Topology.open();
  let dp: Datapath | undefined;
  try {
    const dut = await t.createDut();
    dp = Datapath.load();
    dp.applyConfig(benchConfig());
    dp.setLocalAddresses([NET.dut4, NET.dut6]);
    dp.setRoutes([NET.link4, NET.link6]);
    attach(t, dp.program, 'connrate_xdp');
    const sc = SCENARIOS.find((s) => s.name === 'spoofed-syn-flood')!;
    const req = { cmd: 'run', dev: NET.genIf, frame: wireFrame(sc.spec, dut.genMac, dut.dutMac).toString('hex'), rewrite: REWRITE[sc.rewrite], seconds: CHUNK_SECONDS };
    const capacity = { buckets: dp.maps.buckets.raw.maxEntries, flows: dp.maps.udpFlows.raw.maxEntries };
    const before = memory(dp);
    const chunks: { seen: number; mpps: number; trackedBuckets: number; burstAdmitted: number; establishedPassed: number }[] = [];
    let seen = 0;
    for (let k = 0; seen < sources && k < MAX_CHUNKS; k++) {
      const s0 = dp.counters().seen;
      const running = t.gen.request(req);
      await new Promise((r) => setTimeout(r, (CHUNK_SECONDS * 1000) / 2)); // the flood is on: check mid-chunk
      const legit = legitimateCheck(dp, k);
      const r = await running;
      const delta = Number(dp.counters().seen - s0) - 108; // the check's own test runs are counted too
      seen += delta;
      const trackedBuckets = dp.maps.buckets.count();
      chunks.push({ seen: delta, mpps: delta / (r.elapsedNs! / 1e9) / 1e6, trackedBuckets, burstAdmitted: legit.burstAdmitted, establishedPassed: legit.establishedPassed });
      process.stderr.write(`[flood] ${(seen / 1e6).toFixed(2)}M sources, ${chunks.at(-1)!.mpps.toFixed(3)} Mpps, buckets ${trackedBuckets}/${capacity.buckets}, legit burst ${legit.burstAdmitted}, established ${legit.establishedPassed}/100 (counted ${legit.establishedCounted})\n`);
      if (trackedBuckets > capacity.buckets) throw new Error('the bucket map grew past its capacity');
      if (legit.burstAdmitted !== 5 || legit.establishedPassed !== 100 || legit.establishedCounted !== 100n) throw new Error('a legitimate source was not treated exactly during the flood');
    }
    const after = memory(dp);
    const c = dp.counters();
    return {
      sources: seen,
      // random /64s from 2^32: expected repeats n²/2^33, ~0.1 % at 10M
      distinctSourcesEstimate: Math.round(seen - (seen * seen) / 2 ** 33),
      mppsHeld: chunks.map((x) => Number(x.mpps.toFixed(3))),
      capacity,
      trackedBuckets: dp.maps.buckets.count(),
      trackedFlows: dp.maps.udpFlows.count(),
      legitimate: { rounds: chunks.length, burstAdmittedEachRound: [...new Set(chunks.map((x) => x.burstAdmitted))], establishedPassedEachRound: [...new Set(chunks.map((x) => x.establishedPassed))] },
      counters: { new_allowed: Number(c.new_allowed), new_dropped: Number(c.new_dropped), bucket_fallback: Number(c.bucket_fallback) },
      memoryBefore: before,
      memoryAfter: after,
    };
  } finally {
    dp?.close();
    await t.close();
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({ options: { sources: { type: 'string', default: '10000000' }, out: { type: 'string' } } });
  const r = await flood(Number(values.sources));
  const text = JSON.stringify(r, null, 2);
  console.log(text);
  if (values.out) writeFileSync(values.out, `${text}\n`);
}
