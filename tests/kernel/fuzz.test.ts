/**
 * Hostile frames: a million random and structure-aware mutated frames through
 * BPF_PROG_TEST_RUN, each compared with an independent reference classifier
 * as soon as it has run. Every verdict is PASS or DROP; only a monitored new
 * connection is ever dropped, and a drop is counted as one; every frame is
 * counted in exactly the class (unparsable / not monitored / monitored) the
 * reference gives it.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { XDP_ACTION } from '@xdp-ts/loader';
import { COUNTER_INDEX, type CounterName } from '../../src/control/abi.js';
import { CrCounters } from '../../src/control/datapath.gen.js';
import { type ClassifyConfig, classify, localSet } from '../helpers/classify.js';
import { ETH_P_8021AD, ETH_P_8021Q, type FrameSpec, IPV6_EXT, frame } from '../helpers/frame.js';
import { APPLIANCE4, APPLIANCE6, type Bench, openBench } from './harness.js';

const FRAMES = Number(process.env.CONNRATE_FUZZ_FRAMES ?? 1_000_000);
const CHUNK = 2000;
const SEED = Number(process.env.CONNRATE_FUZZ_SEED ?? 0x5eed);

/** mulberry32: small, fast, deterministic. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const rnd = prng(SEED);
const int = (n: number): number => Math.floor(rnd() * n);
const pick = <T,>(xs: readonly T[]): T => xs[int(xs.length)]!;
const EXT_KINDS = Object.keys(IPV6_EXT) as (keyof typeof IPV6_EXT)[];

function baseSpec(): FrameSpec {
  const v6 = rnd() < 0.4;
  // a small pool of sources and ports: keys repeat, so most judgeable frames meet an empty bucket
  const src = v6 ? `2001:db8:1:${int(4)}::${1 + int(0xfff)}` : `198.19.1.${int(8)}`;
  const spec: FrameSpec = {
    src,
    dst: rnd() < 0.9 ? (v6 ? APPLIANCE6 : APPLIANCE4) : v6 ? '2001:db8::99' : '198.18.0.99',
    proto: rnd() < 0.5 ? 'tcp' : 'udp',
    sport: int(65536),
    dport: rnd() < 0.95 ? pick([53, 443, 1194]) : int(65536),
    syn: rnd() < 0.8,
    ack: rnd() < 0.2,
    payload: int(40),
  };
  if (rnd() < 0.2) spec.vlans = pick([[ETH_P_8021Q], [ETH_P_8021AD, ETH_P_8021Q], [ETH_P_8021Q, ETH_P_8021Q, ETH_P_8021Q]]);
  if (!v6 && rnd() < 0.2) spec.ipOptions = 4 * (1 + int(10));
  if (!v6 && rnd() < 0.1) spec.fragOffset = int(2) * (1 + int(0x1ffe));
  if (!v6 && rnd() < 0.1) spec.moreFragments = true;
  if (v6 && rnd() < 0.4) {
    spec.ext = Array.from({ length: int(9) }, () => pick(EXT_KINDS));
    if (rnd() < 0.3) spec.ext6FragOffset = int(0x1fff);
  }
  if (rnd() < 0.05) spec.tcpDoff = int(16);
  if (!v6 && rnd() < 0.05) spec.ihl = int(16);
  if (!v6 && rnd() < 0.05) spec.totLen = int(120);
  return spec;
}

function mutate(f: Buffer): Buffer {
  const out = Buffer.from(f);
  const flips = rnd() < 0.5 ? 0 : 1 + int(4);
  for (let i = 0; i < flips; i++) out[int(Math.min(out.length, 96))] = int(256);
  return rnd() < 0.4 ? out.subarray(0, 14 + int(out.length - 13)) : out;
}

function randomFrame(): Buffer {
  const b = Buffer.alloc(14 + int(120));
  for (let i = 0; i < b.length; i++) b[i] = int(256);
  if (rnd() < 0.7) b.writeUInt16BE(pick([0x0800, 0x86dd, ETH_P_8021Q, ETH_P_8021AD]), 12);
  return b;
}

function nextFrame(): Buffer {
  const r = rnd();
  if (r < 0.15) return randomFrame();
  const f = frame(baseSpec());
  return r < 0.7 ? mutate(f) : f;
}

/** Reads a few datapath counters, summed over CPUs: one map lookup, and only those counters decoded. */
function counterReader(bench: Bench): (...names: CounterName[]) => bigint[] {
  const { raw, key } = bench.dp.maps.counters;
  const zero = key.encode(0);
  return (...names) => {
    const perCpu = raw.lookup(zero)!; // each CPU's struct cr_counters, one every cpuStride bytes
    return names.map((n) => {
      let sum = 0n;
      for (let at = 0; at < perCpu.length; at += raw.cpuStride) sum += CrCounters.at.n(perCpu, at, COUNTER_INDEX[n]);
      return sum;
    });
  };
}

describe('fuzzed frames', () => {
  let bench: Bench;
  afterAll(() => bench?.close());

  it(`judge ${FRAMES.toLocaleString('en')} hostile frames exactly as the reference classifier, frame by frame, dropping only new connections`, () => {
    // rate 1/min, burst 1: nearly every judgeable new connection is dropped, so a wrong drop would show
    bench = openBench({ tcp: { rate: 1, ports: [] }, udp: { rate: 1, ports: [] }, burst: 1 });
    const cfg: ClassifyConfig = { local: localSet([APPLIANCE4, APPLIANCE6]), tcpPorts: 'all', udpPorts: 'all' };
    const read = counterReader(bench);
    const totals = { frames: 0, drops: 0, unparsable: 0, not_monitored: 0, monitored: 0 };
    let [unparsable, notMonitored, dropped] = read('unparsable', 'not_monitored', 'new_dropped') as [bigint, bigint, bigint];
    const t0 = performance.now();
    for (let done = 0; done < FRAMES; done += CHUNK) {
      const [monitored0, other0, unparsable0] = read('monitored', 'not_monitored', 'unparsable') as [bigint, bigint, bigint];
      let monitored = 0n;
      for (let i = 0; i < CHUNK; i++) {
        const f = nextFrame();
        const want = classify(f, cfg);
        const { retval } = bench.dp.program.testRun({ data: f });
        // the frame's class, from the counters it moved: one of unparsable and not_monitored, or neither (monitored)
        const [u, n] = read('unparsable', 'not_monitored') as [bigint, bigint];
        const got = u === unparsable + 1n && n === notMonitored ? 'unparsable' : n === notMonitored + 1n && u === unparsable ? 'not_monitored' : u === unparsable && n === notMonitored ? 'monitored' : 'miscounted';
        unparsable = u;
        notMonitored = n;
        const where = (): string => `frame ${done + i} (${f.toString('hex')})`;
        if (got !== want.class) throw new Error(`${where()}: counted as ${got}, the reference classifier says ${want.class}`);
        if (retval !== XDP_ACTION.PASS && retval !== XDP_ACTION.DROP) throw new Error(`${where()}: verdict ${retval}`);
        if (got === 'monitored') {
          monitored++;
          const [d] = read('new_dropped') as [bigint];
          if ((retval === XDP_ACTION.DROP) !== (d === dropped + 1n)) throw new Error(`${where()}: verdict ${retval === XDP_ACTION.DROP ? 'DROP' : 'PASS'} but new_dropped moved by ${d - dropped}`);
          dropped = d;
        }
        if (retval === XDP_ACTION.DROP) {
          totals.drops++;
          if (!want.newConnection) throw new Error(`${where()}: dropped a monitored frame that is not a new connection`);
        } else if (retval !== XDP_ACTION.PASS) {
          throw new Error(`${where()}: verdict ${retval}`);
        }
        totals[want.class]++;
      }
      // every frame was counted once, in one of the three, and the ones counted as neither of the two as monitored
      const [monitored1, other1, unparsable1] = read('monitored', 'not_monitored', 'unparsable') as [bigint, bigint, bigint];
      expect(monitored1 - monitored0 + other1 - other0 + unparsable1 - unparsable0, `frames counted in the chunk at ${done}`).toBe(BigInt(CHUNK));
      expect(monitored1 - monitored0, `monitored in the chunk at ${done}`).toBe(monitored);
      totals.frames += CHUNK;
    }
    const seconds = (performance.now() - t0) / 1000;
    const c = bench.dp.counters();
    expect(c.seen).toBe(BigInt(totals.frames));
    expect(c.new_dropped).toBe(BigInt(totals.drops));
    expect({ unparsable: c.unparsable, not_monitored: c.not_monitored, monitored: c.monitored }).toEqual({
      unparsable: BigInt(totals.unparsable),
      not_monitored: BigInt(totals.not_monitored),
      monitored: BigInt(totals.monitored),
    });
    console.log(`fuzz: ${totals.frames} frames (seed ${SEED}) in ${seconds.toFixed(1)} s, each checked: ${totals.unparsable} unparsable, ${totals.not_monitored} not monitored, ${totals.monitored} monitored, ${totals.drops} dropped`);
    expect(totals.unparsable).toBeGreaterThan(FRAMES / 20);
    expect(totals.monitored).toBeGreaterThan(FRAMES / 20);
    expect(totals.drops).toBeGreaterThan(0);
  }, Math.max(600_000, FRAMES / 20));
});
