/**
 * Per-packet cost from BPF_PROG_TEST_RUN with repeat: connrate on each path
 * (allowed, dropped, established, not monitored) next to the no-op XDP program
 * on the same frame, in one run. Prints a table; --json prints JSON.
 */
import { fileURLToPath } from 'node:url';
import { BpfObject, type Program } from '@xdp-ts/loader';
import type { DatapathConfig } from '../src/control/abi.js';
import { Datapath } from '../src/control/datapath.js';
import { frame, type FrameSpec } from '../tests/helpers/frame.js';

const APPLIANCE = '198.18.0.1';
const SOURCE = '198.19.7.7';
const ROUNDS = 7;
const REPEAT = 200_000;
const MAX_BURST = 10_000;

const CONFIG: DatapathConfig = {
  tcp: { rate: 20, ports: [443] },
  udp: { rate: 20, ports: [1194] },
  burst: 5,
  mode: 'block',
  exempt: [],
  ipv6Prefix: 64,
  udpTimeoutSec: 30,
};

interface Case {
  name: string;
  spec: FrameSpec;
  /** Prepare the datapath so that `repeat` runs stay on this path. */
  prepare(dp: Datapath, data: Buffer): void;
  repeat: number;
}

const syn: FrameSpec = { src: SOURCE, dst: APPLIANCE, proto: 'tcp', sport: 40000, dport: 443 };
const CASES: Case[] = [
  {
    name: 'allowed (new TCP, token taken)',
    spec: syn,
    // every repeat is a new attempt: a burst as large as the run keeps them all allowed
    prepare: (dp) => dp.applyConfig({ ...CONFIG, burst: MAX_BURST }),
    repeat: MAX_BURST - 1,
  },
  {
    name: 'dropped (new TCP, over the limit)',
    spec: syn,
    prepare: (dp, data) => {
      dp.applyConfig(CONFIG);
      for (let i = 0; i < 6; i++) dp.program.testRun({ data });
    },
    repeat: REPEAT,
  },
  {
    name: 'established (TCP ACK)',
    spec: { ...syn, syn: false, ack: true },
    prepare: (dp) => dp.applyConfig(CONFIG),
    repeat: REPEAT,
  },
  {
    name: 'established (UDP, known flow)',
    spec: { src: SOURCE, dst: APPLIANCE, proto: 'udp', sport: 40000, dport: 1194, payload: 64 },
    prepare: (dp, data) => {
      dp.applyConfig(CONFIG);
      dp.program.testRun({ data });
    },
    repeat: REPEAT,
  },
  {
    name: 'not monitored (port not listed)',
    spec: { ...syn, dport: 80 },
    prepare: (dp) => dp.applyConfig(CONFIG),
    repeat: REPEAT,
  },
];

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? NaN;
}

function nsPerPacket(prog: Program, data: Buffer, repeat: number): number {
  return prog.testRun({ data, repeat }).durationNs;
}

export interface CostRow {
  case: string;
  connrate: number;
  noop: number;
}

export function measure(): CostRow[] {
  const noopObj = BpfObject.open(fileURLToPath(new URL('../build/bpf/xdp_noop.bpf.o', import.meta.url)));
  noopObj.load();
  const noop = noopObj.program('xdp_noop');
  const rows: CostRow[] = [];
  try {
    for (const c of CASES) {
      const data = frame(c.spec);
      const ours: number[] = [];
      const ceiling: number[] = [];
      for (let r = 0; r < ROUNDS; r++) {
        const dp = Datapath.load({ sizes: { buckets: 65536, udpFlows: 65536 } });
        try {
          dp.setLocalAddresses([APPLIANCE]);
          c.prepare(dp, data);
          ours.push(nsPerPacket(dp.program, data, c.repeat));
          ceiling.push(nsPerPacket(noop, data, c.repeat));
        } finally {
          dp.program.close();
          dp.close();
        }
      }
      rows.push({ case: c.name, connrate: median(ours), noop: median(ceiling) });
    }
  } finally {
    noop.close();
    noopObj.close();
  }
  return rows;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const rows = measure();
  if (process.argv.includes('--json')) {
    console.log(JSON.stringify(rows, null, 2));
  } else {
    const w = Math.max(...rows.map((r) => r.case.length));
    console.log(`${'path'.padEnd(w)}  connrate ns  xdp-noop ns  ratio`);
    for (const r of rows) {
      console.log(`${r.case.padEnd(w)}  ${String(r.connrate).padStart(11)}  ${String(r.noop).padStart(11)}  ${(r.connrate / r.noop).toFixed(2).padStart(5)}`);
    }
  }
}
