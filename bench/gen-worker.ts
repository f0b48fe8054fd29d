/**
 * The generator, as a worker process that runs inside the generator's netns
 * (`ip netns exec crb-gen taskset -c 0 tsx bench/gen-worker.ts`): live-frames
 * BPF_PROG_TEST_RUN with bpf/bench_gen.bpf.c, redirecting into the veth whose
 * peer carries the engine. BPF_PROG_TEST_RUN resolves the redirect target in
 * the caller's netns, hence a process of its own.
 *
 * Protocol: one JSON request per stdin line, one JSON reply per stdout line.
 *   {"cmd":"attach","dev":"crbg"}                      drop-sink on dev for the engine's replies
 *   {"cmd":"detach"}
 *   {"cmd":"send","frame":hex,"rewrite":n,"count":n}   exactly `count` frames
 *   {"cmd":"run","frame":hex,"rewrite":n,"seconds":s}  as many frames as fit in `seconds`
 *   {"cmd":"pace","frame":hex,"rewrite":n,"pps":n,"seconds":s}
 *                                                      `pps` frames a second for `seconds`: bursts of
 *                                                      PACE_BURST frames (bench_pace)
 * Replies: {"ok":true,"frames":n,"elapsedNs":n,"busyNs":n} or {"ok":false,"error":"..."}.
 * elapsedNs is the wall clock; busyNs the time the kernel spent in the
 * generator's run loops (BPF_PROG_TEST_RUN's duration × repeat), without each
 * call's set-up and teardown and without time the generator was preempted:
 * rates are taken over busyNs.
 */
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { BpfObject, TEST_RUN_XDP_LIVE_FRAMES, ifIndex, type Link, type Program } from '@xdp-ts/loader';

const OBJECT = fileURLToPath(new URL('../build/bpf/bench_gen.bpf.o', import.meta.url));
const BATCH = 64;

type Request =
  | { cmd: 'attach'; dev: string }
  | { cmd: 'detach' }
  | { cmd: 'send'; frame: string; rewrite: number; count: number; dev: string }
  | { cmd: 'run'; frame: string; rewrite: number; seconds: number; dev: string }
  | { cmd: 'pace'; frame: string; rewrite: number; pps: number; seconds: number; dev: string };

/** Frames of a paced burst, sent back to back. */
const PACE_BURST = 32;
/** Each BPF_PROG_TEST_RUN call has a fixed cost (page pool set-up and teardown, tens of ms here): calls of about this long. */
const CHUNK_NS = 250e6;

let sink: { obj: BpfObject; prog: Program; link: Link } | undefined;

function detach(): void {
  if (!sink) return;
  sink.link.detach();
  sink.link.close();
  sink.prog.close();
  sink.obj.close();
  sink = undefined;
}

function attach(dev: string): void {
  detach();
  const obj = BpfObject.open(OBJECT);
  obj.load();
  const prog = obj.program('bench_sink');
  const link = prog.attachXdp(ifIndex(dev), { mode: 'native' });
  sink = { obj, prog, link };
}

function generator(dev: string, rewrite: number, pace?: { periodNs: number; burst: number }): { obj: BpfObject; prog: Program } {
  const obj = BpfObject.open(OBJECT);
  obj.setGlobal('out_ifindex', ifIndex(dev));
  obj.setGlobal('rewrite', rewrite);
  if (pace) {
    obj.setGlobal('pace_period_ns', BigInt(Math.round(pace.periodNs)));
    obj.setGlobal('pace_burst', pace.burst);
  }
  obj.load();
  return { obj, prog: obj.program(pace ? 'bench_pace' : 'bench_gen') };
}

/** Run `repeat` times; returns the kernel's busy time, ns. */
function send(prog: Program, data: Buffer, repeat: number): number {
  return prog.testRun({ data, repeat, flags: TEST_RUN_XDP_LIVE_FRAMES, batchSize: BATCH }).durationNs * repeat;
}

/** Repeats in chunks of about CHUNK_NS until `seconds` of wall clock have passed. */
function chunked(prog: Program, data: Buffer, seconds: number): { repeats: number; elapsedNs: number; busyNs: number } {
  const budget = BigInt(Math.round(seconds * 1e9));
  let chunk = 1 << 16;
  let repeats = 0;
  let busyNs = 0;
  const t0 = process.hrtime.bigint();
  let elapsed = 0n;
  while (elapsed < budget) {
    const busy = send(prog, data, chunk);
    busyNs += busy;
    repeats += chunk;
    elapsed = process.hrtime.bigint() - t0;
    const left = Number(budget - elapsed);
    const perRepeat = busy / chunk;
    chunk = Math.max(BATCH, Math.min(1 << 26, Math.round(Math.min(CHUNK_NS, left) / Math.max(perRepeat, 1))));
  }
  return { repeats, elapsedNs: Number(elapsed), busyNs };
}

function handle(req: Request): Record<string, unknown> {
  switch (req.cmd) {
    case 'attach':
      attach(req.dev);
      return {};
    case 'detach':
      detach();
      return {};
    case 'send':
    case 'run': {
      const g = generator(req.dev, req.rewrite);
      try {
        const data = Buffer.from(req.frame, 'hex');
        if (req.cmd === 'send') {
          const t0 = process.hrtime.bigint();
          const busyNs = send(g.prog, data, req.count);
          return { frames: req.count, elapsedNs: Number(process.hrtime.bigint() - t0), busyNs };
        }
        const r = chunked(g.prog, data, req.seconds);
        return { frames: r.repeats, elapsedNs: r.elapsedNs, busyNs: r.busyNs };
      } finally {
        g.prog.close();
        g.obj.close();
      }
    }
    case 'pace': {
      if (!(req.pps > 0 && req.seconds > 0)) throw new Error(`pace: pps and seconds must be positive, got ${req.pps} and ${req.seconds}`);
      const burst = Math.max(1, Math.min(PACE_BURST, Math.floor(req.pps / 1000)));
      const g = generator(req.dev, req.rewrite, { periodNs: (burst * 1e9) / req.pps, burst });
      const state = g.obj.map('pace');
      try {
        const r = chunked(g.prog, Buffer.from(req.frame, 'hex'), req.seconds);
        const frames = Number(state.lookup(Buffer.alloc(4))!.readBigUInt64LE(8));
        return { frames, elapsedNs: r.elapsedNs, busyNs: r.busyNs };
      } finally {
        state.close();
        g.prog.close();
        g.obj.close();
      }
    }
    default:
      throw new Error(`unknown command ${JSON.stringify(req)}`);
  }
}

const rl = createInterface({ input: process.stdin });
rl.on('line', (line) => {
  let reply: Record<string, unknown>;
  try {
    reply = { ok: true, ...handle(JSON.parse(line) as Request) };
  } catch (e) {
    reply = { ok: false, error: e instanceof Error ? e.message : String(e) };
  }
  process.stdout.write(`${JSON.stringify(reply)}\n`);
});
rl.on('close', () => {
  detach();
  process.exit(0);
});
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => { detach(); process.exit(0); });
