/**
 * ns/packet per scenario from BPF_PROG_TEST_RUN with repeat: bench_chain
 * (bpf/bench_gen.bpf.c) applies the scenario's per-packet rewrite (new source
 * port, random /64) and tail-calls the engine, so every repeat is a packet of
 * the scenario, not the same packet again. Both engines pay the same rewrite
 * and tail call; `harness` is that cost alone (the tail call to an empty slot).
 *
 * bench/ns-per-packet.ts (npm run bench:cost) has the per-path view with
 * one fixed frame.
 */
import { fileURLToPath } from 'node:url';
import { BpfObject, type Program } from '@xdp-ts/loader';
import { Datapath } from '../src/control/datapath.js';
import { benchConfig } from './engines.js';
import { wireFrame } from './frames.js';
import { REWRITE, type Scenario } from './scenarios.js';
import { NET } from './topology.js';

const OBJ = (name: string): string => fileURLToPath(new URL(`../build/bpf/${name}.bpf.o`, import.meta.url));
const MAC_A = '02:00:00:00:00:01';
const MAC_B = '02:00:00:00:00:02';

export interface Cost {
  'xdp-noop': number;
  connrate: number;
  /** The rewrite and the tail call, included in both figures above. */
  harness: number;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? NaN;
}

/** Run `target` (or nothing) behind the scenario's rewrite; returns ns/packet. */
function chained(sc: Scenario, target: Program | undefined, data: Buffer, repeat: number, prime: boolean): number {
  const obj = BpfObject.open(OBJ('bench_gen'));
  try {
    obj.setGlobal('rewrite', REWRITE[sc.rewrite]);
    obj.load();
    const chain = obj.program('bench_chain');
    const slots = obj.map('chain_target');
    try {
      if (target) {
        const fd = Buffer.alloc(4);
        fd.writeUInt32LE(target.fd);
        slots.update(Buffer.alloc(4), fd);
      }
      const frame = Buffer.from(data);
      if (prime) chain.testRun({ data: frame });
      return chain.testRun({ data: frame, repeat }).durationNs;
    } finally {
      slots.close();
      chain.close();
    }
  } finally {
    obj.close();
  }
}

export function measureCost(sc: Scenario, opts: { rounds: number; repeat: number }): Cost {
  const data = wireFrame(sc.spec, MAC_A, MAC_B);
  const prime = sc.prime ?? false;
  const noop: number[] = [];
  const ours: number[] = [];
  const harness: number[] = [];
  for (let r = 0; r < opts.rounds; r++) {
    harness.push(chained(sc, undefined, data, opts.repeat, prime));

    const nobj = BpfObject.open(OBJ('xdp_noop'));
    try {
      nobj.load();
      const p = nobj.program('xdp_noop');
      try {
        noop.push(chained(sc, p, data, opts.repeat, prime));
      } finally {
        p.close();
      }
    } finally {
      nobj.close();
    }

    const dp = Datapath.load(); // default sizes, as on an appliance
    try {
      dp.applyConfig(benchConfig());
      dp.setLocalAddresses([NET.dut4, NET.dut6]);
      dp.setRoutes([NET.link4, NET.link6]);
      ours.push(chained(sc, dp.program, data, opts.repeat, prime));
    } finally {
      dp.close();
    }
  }
  return { 'xdp-noop': median(noop), connrate: median(ours), harness: median(harness) };
}
