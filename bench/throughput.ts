/**
 * Mpps of one engine on one scenario: a fresh appliance namespace, the engine
 * on crbd, the generator flooding for `seconds`; the rate is what the engine's
 * own counters saw, divided by the generator's running time.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Engine } from './engines.js';
import { wireFrame } from './frames.js';
import { pktgenCan, pktgenRun } from './pktgen.js';
import { REWRITE, type Scenario } from './scenarios.js';
import { NET, type Topology } from './topology.js';

export interface Throughput {
  /** Packets per second the engine handled, in millions. */
  mpps: number;
  /** What the generator offered (frames it transmitted into the veth), Mpps. */
  offeredMpps: number;
  seen: number;
  seconds: number;
  details?: Record<string, number>;
  /** Which generator made the traffic. */
  generator: 'bpf-live-frames' | 'pktgen';
  note?: string;
}

export type GeneratorChoice = 'auto' | 'xdp' | 'pktgen';

/** Answers the first datagram on the UDP port, then closes: the flow is now a reply-seen one. */
const PRIMER = `
const s = require('node:dgram').createSocket('udp4');
s.on('message', (m, r) => s.send('ok', r.port, r.address, () => { console.log('replied'); s.close(); }));
s.bind(Number(process.argv[1]), () => console.log('ready'));
setTimeout(() => process.exit(1), 10000);
`;

export async function measureThroughput(t: Topology, sc: Scenario, engine: Engine, seconds: number, usePktgen = false): Promise<Throughput> {
  const dut = await t.createDut();
  const run = engine.setup(t);
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
    let r: { frames?: number; elapsedNs?: number } | undefined;
    let generator: Throughput['generator'] = 'bpf-live-frames';
    let note: string | undefined;
    if (usePktgen && pktgenCan(sc.spec, sc.rewrite)) {
      try {
        r = await pktgenRun(sc.spec, sc.rewrite, dut.dutMac, t.genCpu, seconds);
        generator = 'pktgen';
      } catch (e) {
        note = `pktgen failed (${(e as Error).message}); used the XDP generator`;
      }
    }
    r ??= await t.gen.request({ cmd: 'run', ...base, seconds });
    await sleep(100); // the veth ring drains
    const seen = Number(run.seen() - s0);
    const d1 = run.details?.();
    const secs = r.elapsedNs! / 1e9;
    const details = d0 && d1 ? Object.fromEntries(Object.entries(d1).map(([k, v]) => [k, v - (d0[k] ?? 0)])) : undefined;
    return {
      mpps: seen / secs / 1e6,
      offeredMpps: r.frames! / secs / 1e6,
      seen,
      seconds: secs,
      generator,
      ...(details ? { details } : {}),
      ...(note ? { note } : {}),
    };
  } finally {
    run.close();
    await t.destroyDut();
  }
}
