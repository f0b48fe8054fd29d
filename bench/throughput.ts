/**
 * One engine on one scenario, on a fresh appliance namespace:
 *
 * 1. saturation: the generator floods for `seconds`, at most `window` frames
 *    ahead of what crbd's NAPI took, so the ring never overflows and the
 *    engine always has frames; Mpps is what the engine's own counters saw,
 *    divided by the CPU time crbd's NAPI thread ran (and, as `wallMpps`, by
 *    the generator's running time);
 * 2. (pass scenarios) a fixed load below saturation, `pace.pps` frames a
 *    second: the receive CPU's ns per packet, from the CPU time of crbd's NAPI
 *    thread (its schedstat) over the packets its XDP program ran on;
 * 3. (pass scenarios) the same load with kernel.bpf_stats_enabled on: the
 *    attached XDP program's own time, run_time_ns / run_cnt, in place;
 *    (drop scenarios) a second, shorter flood with the statistics on: the
 *    program's own time per packet under the flood, apart from everything
 *    else the receive CPU does (the veth ring, returning each frame's page).
 *
 * Step 2 runs with BPF statistics as they were (off unless someone turned them
 * on), since their two clock reads a packet would count in the CPU time.
 * The paced steps follow the flood, so every engine is measured in the state
 * a flood leaves it in (conntrack, hashlimit and bucket tables filled).
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { Program } from '@xdp-ts/loader';
import type { Engine, EngineRun } from './engines.js';
import { wireFrame } from './frames.js';
import { pktgenCan, pktgenRun } from './pktgen.js';
import { REWRITE, type Scenario } from './scenarios.js';
import { NET, type Topology } from './topology.js';

/**
 * The flood's default window (MeasureOptions.window): the generator starts a
 * 64-frame batch only while at most 96 frames are in flight, so the veth's
 * 256-frame ring never holds more than 160, with room for the slots it frees
 * in batches.
 */
export const DEFAULT_WINDOW = 160;
/** What bench/gen-worker.ts accepts: two batches, up to the ring less a batch. */
export const WINDOW_MIN = 128;
export const WINDOW_MAX = 192;

/** A --window option: 0 (none) or WINDOW_MIN..WINDOW_MAX frames; throws naming the problem. */
export function parseWindow(text: string): number {
  const n = Number(text);
  if (n === 0 || (Number.isInteger(n) && n >= WINDOW_MIN && n <= WINDOW_MAX)) return n;
  throw new Error(`--window must be 0 or a whole number of frames from ${WINDOW_MIN} to ${WINDOW_MAX}, not "${text}"`);
}

export interface Throughput {
  /**
   * Millions of packets the engine handled per second of receive CPU: its
   * own counters over the CPU time crbd's NAPI thread ran. At saturation that
   * thread runs whenever it gets the CPU, so this is the rate of a receive CPU
   * of its own, whatever else the machine runs.
   */
  mpps: number;
  /** The same packets over the generator's busy time: the rate this machine gave, sharing its CPUs. */
  wallMpps: number;
  /** What the generator offered (frames it transmitted into the veth) over its busy time, Mpps. */
  offeredMpps: number;
  /** Frames the generator transmitted into the veth. */
  frames: number;
  seen: number;
  /** The generator's busy time (see bench/gen-worker.ts), s. */
  seconds: number;
  /** CPU time of crbd's NAPI thread during the run, s. */
  rxCpuSeconds: number;
  details?: Record<string, number>;
  /** Drop scenarios: the attached XDP program's run_time_ns / run_cnt during a second flood (kernel.bpf_stats_enabled), ns. */
  progNsPerPacket?: number;
  /** Which generator made the traffic. */
  generator: 'bpf-live-frames' | 'pktgen';
  note?: string;
}

export interface Paced {
  /** The fixed load offered (the generator's schedule), Mpps. */
  offeredMpps: number;
  /**
   * Frames transmitted over the wall clock of the window, Mpps: lower than
   * offered when the generator lost its CPU to others (it does not catch up
   * after a gap) and during each generator call's set-up and teardown.
   */
  achievedMpps: number;
  /** Packets crbd's XDP program ran on during the CPU-time window. */
  packets: number;
  /** Share of the offered frames that never reached XDP (ring full: the load was not below saturation). */
  lost: number;
  /** Receive-CPU ns per packet: the NAPI thread's CPU time / packets. */
  rxNsPerPacket: number;
  /** The attached XDP program's run_time_ns / run_cnt (kernel.bpf_stats_enabled), ns. */
  progNsPerPacket: number;
  progRuns: number;
}

export interface Measurement {
  saturation: Throughput;
  paced?: Paced;
  /** Wall-clock seconds of the steps around the measurement (set-up: namespace and engine; teardown). */
  overhead: { setupS: number; teardownS: number };
}

export interface MeasureOptions {
  seconds: number;
  usePktgen?: boolean;
  /** Below-saturation measurement: offered frames a second, seconds of CPU time, seconds of program time. */
  pace?: { pps: number; seconds: number; statsSeconds: number };
  /** Seconds of a second flood with kernel.bpf_stats_enabled, for the program's own time (drop scenarios). */
  floodStatsSeconds?: number;
  /**
   * Flood with at most this many frames between what the generator sent and
   * what the engine's NAPI took (bench/gen-worker.ts): no frame is refused at
   * the veth ring. 0 or absent: the generator sends as fast as it can.
   */
  window?: number;
}

/** Answers the first datagram on the UDP port, then closes: the flow is now a reply-seen one. */
const PRIMER = `
const s = require('node:dgram').createSocket('udp4');
s.on('message', (m, r) => s.send('ok', r.port, r.address, () => { console.log('replied'); s.close(); }));
s.bind(Number(process.argv[1]), () => console.log('ready'));
setTimeout(() => process.exit(1), 10000);
`;

const BPF_STATS = '/proc/sys/kernel/bpf_stats_enabled';
/** After a run: the veth ring drains into the engine before its counters are read. */
const DRAIN_MS = 100;

/**
 * Why a benchmark must not start, if kernel.bpf_stats_enabled is on (left so by
 * something else): every BPF program run, the generator's and the references'
 * too, then pays two clock reads, tens of ns each in a VM, which skews every
 * figure. Undefined when it is off.
 */
export function bpfStatsLeftOn(): string | undefined {
  const v = readFileSync(BPF_STATS, 'utf8').trim();
  if (v === '0') return undefined;
  return `kernel.bpf_stats_enabled is ${v}: every BPF program run, the generator's and the references' too, would pay two clock reads and skew every figure; turn it off (sysctl -w kernel.bpf_stats_enabled=0) and run again`;
}

/** Run `fn` with kernel.bpf_stats_enabled = 1, then put back what was there. */
async function withBpfStats<T>(fn: () => Promise<T>): Promise<T> {
  const before = readFileSync(BPF_STATS, 'utf8').trim();
  writeFileSync(BPF_STATS, '1');
  try {
    return await fn();
  } finally {
    writeFileSync(BPF_STATS, before);
  }
}

/** The attached program's run_time_ns / run_cnt over `run` (kernel.bpf_stats_enabled on meanwhile). */
async function programTime(t: Topology, run: () => Promise<unknown>): Promise<{ runs: number; nsPerPacket: number }> {
  const prog = Program.fromId(t.dutProgId());
  try {
    return await withBpfStats(async () => {
      const i0 = prog.info();
      await run();
      await sleep(DRAIN_MS);
      const i1 = prog.info();
      const runs = Number(i1.runCount - i0.runCount);
      return { runs, nsPerPacket: runs ? Number(i1.runTimeNs - i0.runTimeNs) / runs : NaN };
    });
  } finally {
    prog.close();
  }
}

async function paced(t: Topology, run: EngineRun, base: Record<string, unknown>, pace: NonNullable<MeasureOptions['pace']>): Promise<Paced> {
  const a0 = run.arrived();
  const c0 = t.napiCpuNs();
  const r = await t.gen.request({ cmd: 'pace', ...base, pps: pace.pps, seconds: pace.seconds });
  await sleep(DRAIN_MS);
  const cpu = Number(t.napiCpuNs() - c0);
  const packets = Number(run.arrived() - a0);
  if (packets === 0) throw new Error('paced run: no packet reached the XDP program');

  const { runs, nsPerPacket } = await programTime(t, () => t.gen.request({ cmd: 'pace', ...base, pps: pace.pps, seconds: pace.statsSeconds }));
  return {
    offeredMpps: pace.pps / 1e6,
    achievedMpps: r.frames! / (r.elapsedNs! / 1e9) / 1e6,
    packets,
    lost: Math.max(0, 1 - packets / r.frames!),
    rxNsPerPacket: cpu / packets,
    progNsPerPacket: nsPerPacket,
    progRuns: runs,
  };
}

export async function measure(t: Topology, sc: Scenario, engine: Engine, opts: MeasureOptions): Promise<Measurement> {
  const t0 = performance.now();
  const dut = await t.createDut();
  const run = engine.setup(t);
  const overhead = { setupS: (performance.now() - t0) / 1000, teardownS: NaN };
  try {
    const frame = wireFrame(sc.spec, dut.genMac, dut.dutMac).toString('hex');
    const base = { dev: NET.genIf, frame, rewrite: REWRITE[sc.rewrite] };
    if (sc.prime && engine.passes !== false) {
      const { lines } = await t.spawnInDut([process.execPath, '-e', PRIMER, String(sc.spec.dport)]);
      await t.gen.request({ cmd: 'send', ...base, count: 1 });
      const next = await Promise.race([lines.next(), sleep(3000).then(() => ({ done: true, value: undefined }))]);
      if (next.done || next.value !== 'replied') throw new Error(`${sc.name}: the flow was not answered`);
    }
    const s0 = run.seen();
    const d0 = run.details?.();
    const c0 = t.napiCpuNs();
    let r: { frames?: number; elapsedNs?: number; busyNs?: number } | undefined;
    let generator: Throughput['generator'] = 'bpf-live-frames';
    let note: string | undefined;
    if (opts.usePktgen && pktgenCan(sc.spec, sc.rewrite)) {
      try {
        r = await pktgenRun(sc.spec, sc.rewrite, dut.dutMac, t.genCpu, opts.seconds);
        generator = 'pktgen';
      } catch (e) {
        note = `pktgen failed (${(e as Error).message}); used the XDP generator`;
      }
    }
    const flood = { cmd: 'run', ...base, ...(opts.window ? { window: opts.window, peer: NET.dutIf } : {}) };
    r ??= await t.gen.request({ ...flood, seconds: opts.seconds });
    await sleep(DRAIN_MS);
    const seen = Number(run.seen() - s0);
    const d1 = run.details?.();
    const cpu = Number(t.napiCpuNs() - c0) / 1e9;
    const secs = (r.busyNs ?? r.elapsedNs!) / 1e9;
    const details = d0 && d1 ? Object.fromEntries(Object.entries(d1).map(([k, v]) => [k, v - (d0[k] ?? 0)])) : undefined;
    const prog = opts.floodStatsSeconds
      ? await programTime(t, () => t.gen.request({ ...flood, seconds: opts.floodStatsSeconds }))
      : undefined;
    const saturation: Throughput = {
      ...(prog ? { progNsPerPacket: prog.nsPerPacket } : {}),
      mpps: seen / cpu / 1e6,
      wallMpps: seen / secs / 1e6,
      offeredMpps: r.frames! / secs / 1e6,
      frames: r.frames!,
      seen,
      seconds: secs,
      rxCpuSeconds: cpu,
      generator,
      ...(details ? { details } : {}),
      ...(note ? { note } : {}),
    };
    return { saturation, ...(opts.pace ? { paced: await paced(t, run, base, opts.pace) } : {}), overhead };
  } finally {
    const t1 = performance.now();
    run.close();
    await t.destroyDut();
    overhead.teardownS = (performance.now() - t1) / 1000;
  }
}
