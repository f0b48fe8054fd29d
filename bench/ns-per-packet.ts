/**
 * `npm run bench:cost`: what the connrate program costs per packet, from
 * BPF_PROG_TEST_RUN with repeat and the real clock, on each path, next to the
 * parse-ip references of bpf/xdp_ref.bpf.c in the same run:
 *
 *   drop path (a key over its limit)            vs xdp_drop_parse
 *   UDP drop path (a new flow of such a key)    vs xdp_drop_parse
 *   established TCP, established UDP,
 *   a non-local destination, a spoofed source   vs xdp_pass_parse
 *
 * Rounds are interleaved (connrate and its reference alternate, the order
 * flipping every round); each figure is the median over the rounds with the
 * spread (min–max). Per-packet rewrites (a new source every packet, a cycle of
 * 2^20 sources) come from bpf/cost_chain.bpf.c, which the reference passes
 * through too, so both pay the same rewrite and tail call.
 *
 * Cold variants: the drop path over 2^20 distinct keys already over their
 * limit (every packet another key, the bucket map holding all of them), and
 * the spoofed path with the bucket map filled to capacity beforehand.
 *
 * --cpus adds the two-CPU runs: one process pinned to each CPU (taskset), both
 * running the same path at once, against each alone: one key on both CPUs,
 * a different key on each, spoofed sources on both. The difference is what
 * sharing costs (cache lines bouncing between the CPUs).
 *
 * --json prints every sample; --quick runs fewer rounds.
 */
import { spawn } from 'node:child_process';
import { cpus } from 'node:os';
import { fileURLToPath } from 'node:url';
import { BpfObject, type Program } from '@xdp-ts/loader';
import { TOKEN } from '../src/control/abi.js';
import { CrBucketKey, CrProto } from '../src/control/datapath.gen.js';
import { addrBytes, v4Bytes } from '../src/domain/addr.js';
import { type DatapathConfig, clockAt } from '../src/domain/limits.js';
import { Datapath, type MapSizes } from '../src/control/datapath.js';
import { frame, type FrameSpec } from '../tests/helpers/frame.js';
import { bpfStatsLeftOn } from './throughput.js';

const OBJ = (name: string): string => fileURLToPath(new URL(`../build/bpf/${name}.bpf.o`, import.meta.url));
const WORKER = fileURLToPath(new URL('./cost-worker.mjs', import.meta.url));

const APPLIANCE4 = '198.18.0.1';
const APPLIANCE6 = '2001:db8::1';
const FOREIGN4 = '198.18.0.99';
const SOURCE4 = '198.19.7.7';
const SOURCE4B = '198.19.7.8';
const SOURCE6 = '2001:db8:1:1::1';
const ROUTES = ['198.18.0.0/30', '2001:db8::/64'];
const QUICK = process.argv.includes('--quick');
const ROUNDS = QUICK ? 5 : 11;
const COLD_ROUNDS = QUICK ? 3 : 5;
const REPEAT = 200_000;
const COLD_KEYS = 1 << 20;

const CONFIG: DatapathConfig = {
  tcp: { rate: 20, ports: [443] },
  udp: { rate: 20, ports: [1194] },
  burst: 5,
  mode: 'block',
  exempt: [],
  ipv6Prefix: 64,
  udpTimeoutSec: 30,
};

/** enum cost_rewrite of bpf/cost_chain.bpf.c */
const REWRITE = { fixed: 0, spoof6: 1, cycle6: 2 } as const;
type Rewrite = keyof typeof REWRITE;

type Ref = 'xdp_drop_parse' | 'xdp_pass_parse';

interface Case {
  readonly name: string;
  readonly ref: Ref;
  readonly spec: FrameSpec;
  readonly rewrite: Rewrite;
  readonly cycle?: number;
  readonly sizes?: MapSizes;
  readonly repeat: number;
  readonly cold?: boolean;
  /** Put the datapath where `repeat` runs of the frame stay on this path. */
  prepare(dp: Datapath, data: Buffer): void;
}

const syn4: FrameSpec = { src: SOURCE4, dst: APPLIANCE4, proto: 'tcp', sport: 40000, dport: 443 };
const syn6: FrameSpec = { src: SOURCE6, dst: APPLIANCE6, proto: 'tcp', sport: 40000, dport: 443 };
const udp4: FrameSpec = { src: SOURCE4, dst: APPLIANCE4, proto: 'udp', sport: 40000, dport: 1194, payload: 18 };

function overLimit(dp: Datapath, data: Buffer): void {
  for (let i = 0; i < CONFIG.burst + 1; i++) dp.program.testRun({ data });
}

/** A UDP source that opened its burst of flows, then one more (dropped): the measured datagram is yet another new flow. */
const udpFlood4: FrameSpec = { ...udp4, src: '198.19.9.9' };
function overLimitUdp(dp: Datapath, data: Buffer): void {
  for (let i = 0; i < CONFIG.burst + 1; i++) dp.program.testRun({ data: frame({ ...udpFlood4, sport: 30000 + i }) });
  dp.program.testRun({ data });
}

/** Fill the bucket map with `n` keys: IPv6 /64s 2001:db8:<i>::/64 (the cycle6 sources) or v4 sources on another port. */
function prefill(dp: Datapath, n: number, kind: 'cycle6' | 'other', ahead: bigint): void {
  const buckets = dp.maps.buckets;
  const cfg = dp.appliedConfig();
  if (!cfg) throw new Error('prefill: no configuration applied');
  const value = { tat: clockAt(cfg.clocks.tcp, dp.now(), TOKEN) + ahead * TOKEN, lastEventNs: 0n };
  // cycle6: 2001:db8:<i>::/64; other: 198.19.0.0/16 and on, port 444 (never sent by this bench)
  const src = kind === 'cycle6' ? addrBytes('2001:db8::') : addrBytes('198.19.0.0');
  const bits = kind === 'cycle6' ? src.subarray(4, 8) : v4Bytes(src);
  const word = new DataView(bits.buffer, bits.byteOffset, 4);
  const key = { ...CrBucketKey.zero(), src: { bytes: src }, dport: kind === 'cycle6' ? 443 : 444, proto: CrProto.CR_PROTO_TCP };
  for (let i = 0; i < n; i++) {
    word.setUint32(0, kind === 'cycle6' ? i : 0xc6130000 + i);
    buckets.update(key, value);
  }
}

const HOT: Case[] = [
  { name: 'drop path (SYN, key over its limit)', ref: 'xdp_drop_parse', spec: syn4, rewrite: 'fixed', repeat: REPEAT, prepare: overLimit },
  { name: 'UDP drop path (new flow, key over its limit)', ref: 'xdp_drop_parse', spec: udpFlood4, rewrite: 'fixed', repeat: REPEAT, prepare: overLimitUdp },
  { name: 'established TCP (ACK)', ref: 'xdp_pass_parse', spec: { ...syn4, syn: false, ack: true }, rewrite: 'fixed', repeat: REPEAT, prepare: () => {} },
  { name: 'established UDP (known flow)', ref: 'xdp_pass_parse', spec: udp4, rewrite: 'fixed', repeat: REPEAT, prepare: (dp, data) => void dp.program.testRun({ data }) },
  { name: 'non-local destination (UDP)', ref: 'xdp_pass_parse', spec: { ...udp4, dst: FOREIGN4 }, rewrite: 'fixed', repeat: REPEAT, prepare: () => {} },
  { name: 'spoofed new source (SYN, new /64 each)', ref: 'xdp_pass_parse', spec: syn6, rewrite: 'spoof6', repeat: REPEAT, prepare: () => {} },
];

const COLD: Case[] = [
  {
    name: 'cold drop path (2^20 keys over their limit, in turn)',
    ref: 'xdp_drop_parse',
    spec: syn6,
    rewrite: 'cycle6',
    cycle: COLD_KEYS,
    sizes: { buckets: COLD_KEYS + COLD_KEYS / 4 },
    repeat: COLD_KEYS,
    cold: true,
    prepare: (dp) => prefill(dp, COLD_KEYS, 'cycle6', 1_000_000n),
  },
  {
    name: 'cold spoofed new source (bucket map full)',
    ref: 'xdp_pass_parse',
    spec: syn6,
    rewrite: 'spoof6',
    repeat: REPEAT,
    cold: true,
    prepare: (dp) => prefill(dp, dp.maps.buckets.raw.maxEntries, 'other', 0n),
  },
];

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

class Chain {
  readonly #obj: BpfObject;
  readonly program: Program;
  constructor(rewrite: Rewrite, cycle: number, target: Program) {
    this.#obj = BpfObject.open(OBJ('cost_chain'));
    this.#obj.setGlobal('rewrite', REWRITE[rewrite]);
    this.#obj.setGlobal('cycle', cycle);
    this.#obj.load();
    this.program = this.#obj.program('cost_chain');
    const fd = Buffer.alloc(4);
    fd.writeUInt32LE(target.fd);
    const slots = this.#obj.map('chain_target');
    slots.update(Buffer.alloc(4), fd);
    slots.close();
  }
  close(): void {
    this.program.close();
    this.#obj.close();
  }
}

/** ns per packet of `prog` (behind the chain when the case rewrites). */
function run(c: Case, prog: Program, data: Buffer): number {
  if (c.rewrite === 'fixed') return prog.testRun({ data: Buffer.from(data), repeat: c.repeat }).durationNs;
  const chain = new Chain(c.rewrite, c.cycle ?? 1, prog);
  try {
    return chain.program.testRun({ data: Buffer.from(data), repeat: c.repeat }).durationNs;
  } finally {
    chain.close();
  }
}

function loadDatapath(c: Case): Datapath {
  const dp = Datapath.load({ sizes: c.sizes ?? {} }); // default sizes, as on an appliance
  dp.applyConfig(CONFIG);
  dp.setLocalAddresses([APPLIANCE4, APPLIANCE6]);
  dp.setRoutes(ROUTES);
  return dp;
}

export interface Row {
  readonly path: string;
  readonly ref: Ref;
  readonly connrate: number[];
  readonly reference: number[];
}

export interface Summary {
  readonly path: string;
  readonly ref: Ref;
  readonly connrateNs: number;
  readonly referenceNs: number;
  /** Median over rounds of (connrate − reference) within the round, and its min–max. */
  readonly overNs: number;
  readonly overMin: number;
  readonly overMax: number;
}

function measureCases(cases: readonly Case[], rounds: number, refs: Readonly<Record<Ref, Program>>): Row[] {
  const rows = cases.map((c): Row => ({ path: c.name, ref: c.ref, connrate: [], reference: [] }));
  for (let r = 0; r < rounds; r++) {
    cases.forEach((c, i) => {
      const data = frame(c.spec);
      const row = rows[i]!;
      const dp = loadDatapath(c);
      try {
        c.prepare(dp, data);
        const ours = (): void => void row.connrate.push(run(c, dp.program, data));
        const theirs = (): void => void row.reference.push(run(c, refs[c.ref], data));
        if (r % 2) {
          theirs();
          ours();
        } else {
          ours();
          theirs();
        }
      } finally {
        dp.close();
      }
    });
  }
  return rows;
}

export function summarize(rows: readonly Row[]): Summary[] {
  return rows.map((row) => {
    const over = row.connrate.map((v, i) => v - row.reference[i]!);
    return {
      path: row.path,
      ref: row.ref,
      connrateNs: median(row.connrate),
      referenceNs: median(row.reference),
      overNs: median(over),
      overMin: Math.min(...over),
      overMax: Math.max(...over),
    };
  });
}

// ---------------------------------------------------------------- two CPUs

interface Job {
  readonly progId: number;
  readonly data: Buffer;
  readonly repeat: number;
}

/** Run each job in a process pinned to CPU i; all start at the same instant. Returns ns/packet per job. */
async function pinned(jobs: readonly Job[]): Promise<number[]> {
  const startAt = Date.now() + 400;
  return Promise.all(
    jobs.map(
      (j, cpu) =>
        new Promise<number>((resolve, reject) => {
          const p = spawn('taskset', ['-c', String(cpu), process.execPath, WORKER, String(j.progId), String(j.repeat), j.data.toString('hex'), String(startAt)], {
            stdio: ['ignore', 'pipe', 'inherit'],
          });
          let out = '';
          p.stdout.on('data', (d: Buffer) => (out += d.toString()));
          p.once('error', reject);
          p.once('exit', (code) => (code === 0 ? resolve(Number(out.trim())) : reject(new Error(`cost worker on CPU ${cpu} exited ${code}`))));
        }),
    ),
  );
}

interface PairCase {
  readonly name: string;
  /** The frames of CPU 0 and CPU 1. */
  readonly specs: readonly [FrameSpec, FrameSpec];
  readonly rewrite: Rewrite;
  readonly ref: Ref;
  prepare(dp: Datapath, data: readonly Buffer[]): void;
}

const PAIRS: PairCase[] = [
  { name: 'drop path, one key on both CPUs', specs: [syn4, syn4], rewrite: 'fixed', ref: 'xdp_drop_parse', prepare: (dp, d) => overLimit(dp, d[0]!) },
  {
    name: 'drop path, a different key on each CPU',
    specs: [syn4, { ...syn4, src: SOURCE4B }],
    rewrite: 'fixed',
    ref: 'xdp_drop_parse',
    prepare: (dp, d) => d.forEach((f) => overLimit(dp, f)),
  },
  { name: 'spoofed new sources on both CPUs', specs: [syn6, syn6], rewrite: 'spoof6', ref: 'xdp_pass_parse', prepare: () => {} },
];

export interface PairSummary {
  readonly path: string;
  readonly aloneNs: number;
  readonly togetherNs: number;
  /** Median over rounds of (together − alone), both CPUs averaged. */
  readonly penaltyNs: number;
  readonly penaltyMin: number;
  readonly penaltyMax: number;
  readonly refPenaltyNs: number;
}

async function measurePairs(rounds: number, refs: Readonly<Record<Ref, Program>>): Promise<PairSummary[]> {
  const out: PairSummary[] = [];
  for (const pc of PAIRS) {
    const alone: number[] = [];
    const together: number[] = [];
    const refPenalty: number[] = [];
    for (let r = 0; r < rounds; r++) {
      const data = pc.specs.map((s) => frame(s));
      // spoofed sources: the alone and together runs share one datapath, so few enough new keys
      // that its first-seen records (live for a token period) stay well below their capacity
      const repeat = pc.rewrite === 'fixed' ? REPEAT * 5 : REPEAT / 4;
      const c: Case = { name: pc.name, ref: pc.ref, spec: pc.specs[0], rewrite: pc.rewrite, repeat, prepare: () => {} };
      const dp = loadDatapath(c);
      const chains: Chain[] = [];
      try {
        pc.prepare(dp, data);
        const target = (prog: Program): Program => {
          if (pc.rewrite === 'fixed') return prog;
          const ch = new Chain(pc.rewrite, 1, prog);
          chains.push(ch);
          return ch.program;
        };
        const measure = async (prog: Program): Promise<[number, number]> => {
          const id = prog.info().id;
          const jobs = data.map((d) => ({ progId: id, data: d, repeat: c.repeat }));
          const solo = [(await pinned([jobs[0]!]))[0]!, (await pinned([jobs[1]!]))[0]!];
          const both = await pinned(jobs);
          return [(solo[0]! + solo[1]!) / 2, (both[0]! + both[1]!) / 2];
        };
        const [a, t] = await measure(target(dp.program));
        const [ra, rt] = await measure(target(refs[pc.ref]));
        alone.push(a);
        together.push(t);
        refPenalty.push(rt - ra);
      } finally {
        for (const ch of chains) ch.close();
        dp.close();
      }
    }
    const pen = together.map((t, i) => t - alone[i]!);
    out.push({
      path: pc.name,
      aloneNs: median(alone),
      togetherNs: median(together),
      penaltyNs: median(pen),
      penaltyMin: Math.min(...pen),
      penaltyMax: Math.max(...pen),
      refPenaltyNs: median(refPenalty),
    });
  }
  return out;
}

// ---------------------------------------------------------------- main

function openRefs(): { refs: Record<Ref, Program>; close(): void } {
  const obj = BpfObject.open(OBJ('xdp_ref'));
  obj.load();
  const refs = { xdp_drop_parse: obj.program('xdp_drop_parse'), xdp_pass_parse: obj.program('xdp_pass_parse') };
  return {
    refs,
    close: () => {
      refs.xdp_drop_parse.close();
      refs.xdp_pass_parse.close();
      obj.close();
    },
  };
}

const f1 = (n: number): string => n.toFixed(1);

function printTable(title: string, s: readonly Summary[]): void {
  const w = Math.max(...s.map((r) => r.path.length));
  console.log(`\n${title}`);
  console.log(`${'path'.padEnd(w)}  ${'connrate'.padStart(9)}  ${'reference'.padStart(9)}  ${'over ref (median [min..max])'.padEnd(28)}  reference program`);
  for (const r of s) {
    console.log(`${r.path.padEnd(w)}  ${f1(r.connrateNs).padStart(9)}  ${f1(r.referenceNs).padStart(9)}  ${`+${f1(r.overNs)} [${f1(r.overMin)}..${f1(r.overMax)}]`.padEnd(28)}  ${r.ref}`);
  }
}

async function main(): Promise<void> {
  const statsOn = bpfStatsLeftOn();
  if (statsOn) {
    process.stderr.write(`bench:cost: ${statsOn}\n`);
    process.exit(2);
  }
  const { refs, close } = openRefs();
  try {
    const hot = summarize(measureCases(HOT, ROUNDS, refs));
    const cold = process.argv.includes('--no-cold') ? [] : summarize(measureCases(COLD, COLD_ROUNDS, refs));
    const pairs = process.argv.includes('--cpus') && cpus().length >= 2 ? await measurePairs(QUICK ? 3 : 5, refs) : [];
    if (process.argv.includes('--json')) {
      console.log(JSON.stringify({ rounds: ROUNDS, coldRounds: COLD_ROUNDS, repeat: REPEAT, hot, cold, pairs }, null, 2));
      return;
    }
    console.log(`ns per packet, BPF_PROG_TEST_RUN, real clock; ${ROUNDS} interleaved rounds (cold: ${COLD_ROUNDS}), ${REPEAT} repeats`);
    printTable('hot paths', hot);
    if (cold.length) printTable('cold variants', cold);
    if (pairs.length) {
      const w = Math.max(...pairs.map((r) => r.path.length));
      console.log('\ntwo CPUs (one pinned process each, same path at once) vs each alone');
      console.log(`${'path'.padEnd(w)}  ${'alone'.padStart(7)}  ${'both'.padStart(7)}  ${'penalty (median [min..max])'.padEnd(28)}  reference's penalty`);
      for (const p of pairs) {
        console.log(`${p.path.padEnd(w)}  ${f1(p.aloneNs).padStart(7)}  ${f1(p.togetherNs).padStart(7)}  ${`+${f1(p.penaltyNs)} [${f1(p.penaltyMin)}..${f1(p.penaltyMax)}]`.padEnd(28)}  +${f1(p.refPenaltyNs)}`);
      }
    }
  } finally {
    close();
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await main();
