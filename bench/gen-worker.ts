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
 *     [,"window":n,"peer":name]                        at most n frames ahead of what the peer's NAPI
 *                                                      took (bench_drained): the ring never overflows
 *   {"cmd":"pace","frame":hex,"rewrite":n,"pps":n,"seconds":s}
 *                                                      `pps` frames a second for `seconds`: bursts of
 *                                                      PACE_BURST frames (bench_pace)
 * Replies: {"ok":true,"frames":n,"elapsedNs":n,"busyNs":n} or {"ok":false,"error":"..."}.
 * elapsedNs is the wall clock; busyNs the time the kernel spent in the
 * generator's run loops (BPF_PROG_TEST_RUN's duration × repeat), without each
 * call's set-up and teardown and without time the generator was preempted:
 * rates are taken over busyNs.
 */
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { BpfObject, TEST_RUN_XDP_LIVE_FRAMES, ifIndex, type Link, type Program } from '@xdp-ts/loader';

const OBJECT = fileURLToPath(new URL('../build/bpf/bench_gen.bpf.o', import.meta.url));
/** Frames a BPF_PROG_TEST_RUN batch; a power of two (bench_gen's window counts batches with a mask). */
const BATCH = 64;

type Request =
  | { cmd: 'attach'; dev: string }
  | { cmd: 'detach' }
  | { cmd: 'send'; frame: string; rewrite: number; count: number; dev: string }
  | { cmd: 'run'; frame: string; rewrite: number; seconds: number; dev: string; window?: number; peer?: string }
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

/** The veth ring's size (VETH_RING_SIZE): a window must leave room for the frames the ring frees in batches. */
const VETH_RING = 256;

interface Window {
  frames: number;
  /** The veth's peer, in another netns: its name. */
  peer: string;
}

function generator(dev: string, rewrite: number, opts: { pace?: { periodNs: number; burst: number }; window?: Window } = {}): { obj: BpfObject; prog: Program; close(): void } {
  const { pace, window } = opts;
  const obj = BpfObject.open(OBJECT);
  obj.setGlobal('out_ifindex', ifIndex(dev));
  obj.setGlobal('rewrite', rewrite);
  if (pace) {
    obj.setGlobal('pace_period_ns', BigInt(Math.round(pace.periodNs)));
    obj.setGlobal('pace_burst', pace.burst);
  }
  if (window) {
    // the peer's ifindex, as its netns numbers it, is this veth's iflink
    const peerIndex = Number(readFileSync(`/sys/class/net/${dev}/iflink`, 'utf8').trim());
    const name = Buffer.alloc(8);
    name.write(window.peer, 'latin1');
    obj.setGlobal('gen_window', window.frames);
    obj.setGlobal('gen_batch', BATCH);
    obj.setGlobal('drain_ifindex', peerIndex);
    obj.setGlobal('drain_name', name.readBigUInt64LE(0));
  }
  obj.load();
  const prog = obj.program(pace ? 'bench_pace' : 'bench_gen');
  let drained: { prog: Program; link: Link } | undefined;
  if (window) {
    const p = obj.program('bench_drained');
    drained = { prog: p, link: p.attachTracing() };
  }
  return {
    obj,
    prog,
    close() {
      drained?.link.close();
      drained?.prog.close();
      prog.close();
      obj.close();
    },
  };
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
    // whole batches: bench_gen's window counts frames in BATCH-frame batches from its first
    chunk = BATCH * Math.max(1, Math.min(1 << 20, Math.round(Math.min(CHUNK_NS, left) / Math.max(perRepeat, 1) / BATCH)));
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
      let window: Window | undefined;
      if (req.cmd === 'run' && req.window !== undefined) {
        if (!(Number.isInteger(req.window) && req.window >= 2 * BATCH && req.window <= VETH_RING - BATCH)) {
          throw new Error(`run: window must be a whole number of frames from ${2 * BATCH} to ${VETH_RING - BATCH}, got ${req.window}`);
        }
        if (!req.peer || Buffer.byteLength(req.peer) >= 8) throw new Error(`run: a window needs the peer's name, shorter than 8 bytes, got ${JSON.stringify(req.peer)}`);
        window = { frames: req.window, peer: req.peer };
      }
      const g = generator(req.dev, req.rewrite, { ...(window ? { window } : {}) });
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
        g.close();
      }
    }
    case 'pace': {
      if (!(req.pps > 0 && req.seconds > 0)) throw new Error(`pace: pps and seconds must be positive, got ${req.pps} and ${req.seconds}`);
      const burst = Math.max(1, Math.min(PACE_BURST, Math.floor(req.pps / 1000)));
      const g = generator(req.dev, req.rewrite, { pace: { periodNs: (burst * 1e9) / req.pps, burst } });
      const state = g.obj.map('pace');
      try {
        const r = chunked(g.prog, Buffer.from(req.frame, 'hex'), req.seconds);
        const frames = Number(state.lookup(Buffer.alloc(4))!.readBigUInt64LE(8));
        return { frames, elapsedNs: r.elapsedNs, busyNs: r.busyNs };
      } finally {
        state.close();
        g.close();
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
