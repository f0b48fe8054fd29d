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
 * Replies: {"ok":true,"frames":n,"elapsedNs":n} or {"ok":false,"error":"..."}.
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
  | { cmd: 'run'; frame: string; rewrite: number; seconds: number; dev: string };

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

function generator(dev: string, rewrite: number): { obj: BpfObject; prog: Program } {
  const obj = BpfObject.open(OBJECT);
  obj.setGlobal('out_ifindex', ifIndex(dev));
  obj.setGlobal('rewrite', rewrite);
  obj.load();
  return { obj, prog: obj.program('bench_gen') };
}

function send(prog: Program, data: Buffer, repeat: number): void {
  prog.testRun({ data, repeat, flags: TEST_RUN_XDP_LIVE_FRAMES, batchSize: BATCH });
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
          send(g.prog, data, req.count);
          return { frames: req.count, elapsedNs: Number(process.hrtime.bigint() - t0) };
        }
        // chunks of ~50 ms, until the time is up
        const budget = BigInt(Math.round(req.seconds * 1e9));
        let chunk = 1 << 16;
        let frames = 0;
        const t0 = process.hrtime.bigint();
        let elapsed = 0n;
        while (elapsed < budget) {
          const c0 = process.hrtime.bigint();
          send(g.prog, data, chunk);
          const c1 = process.hrtime.bigint();
          frames += chunk;
          elapsed = c1 - t0;
          const perFrame = Number(c1 - c0) / chunk;
          chunk = Math.max(BATCH, Math.min(1 << 24, Math.round(50e6 / Math.max(perFrame, 1))));
        }
        return { frames, elapsedNs: Number(elapsed) };
      } finally {
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
