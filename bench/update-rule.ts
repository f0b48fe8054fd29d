/**
 * Latency of `connrate system update rule`: from starting the command to the
 * first packet judged under the new rule. The old rule is log mode (an
 * exhausted source's SYN passes as "would drop"); the new one is block mode
 * (the same SYN is dropped), so the first DROP marks the switch.
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { XDP_ACTION } from '@xdp-ts/loader';
import { Store } from '../src/config/store.js';
import { APPLICATION, resolve } from '../src/config/variables.js';
import { Datapath } from '../src/control/datapath.js';
import { PinDir } from '../src/control/pins.js';
import { frame } from '../tests/helpers/frame.js';

const ROUNDS = 5;
const BIN = fileURLToPath(new URL('../bin/connrate', import.meta.url));
const SYN = frame({ src: '198.19.7.7', dst: '198.18.0.1', proto: 'tcp', sport: 40000, dport: 443 });

export interface UpdateLatency {
  /** Command start → first packet under the new rule (ms), median and all rounds. */
  commandToPacketMs: number;
  rounds: number[];
  /** The apply itself inside the command (store read → slot flipped), median ms. */
  applyMs: number;
}

async function round(): Promise<{ total: number; apply: number }> {
  const base = mkdtempSync(join(tmpdir(), 'connrate-bench-'));
  const pins = new PinDir(join(base, 'bpf'));
  const store = new Store(join(base, 'extc.json'));
  pins.ensure(); // mounts a private bpffs at <base>/bpf
  const dp = Datapath.load({ pins, sizes: { buckets: 4096, udpFlows: 4096 } });
  try {
    dp.setLocalAddresses(['198.18.0.1']);
    store.set(APPLICATION, 'CONNECTION_RATE_LIMIT_TCP', '20');
    store.set(APPLICATION, 'CONNECTION_RATE_LIMIT_MODE', 'log');
    dp.applyConfig(resolve(store.read()));
    for (let i = 0; i < 6; i++) dp.program.testRun({ data: SYN }); // exhausted: would-drop from now on
    store.set(APPLICATION, 'CONNECTION_RATE_LIMIT_MODE', 'block');

    const t0 = performance.now();
    const child = spawn(BIN, ['system', 'update', 'rule'], {
      env: { ...process.env, CONNRATE_PIN_DIR: pins.dir, CONNRATE_STORE: store.path },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    const exited = new Promise<number | null>((r) => child.on('exit', r));
    let t1 = 0;
    for (let n = 0; !t1; n++) {
      if (dp.program.testRun({ data: SYN }).retval === XDP_ACTION.DROP) t1 = performance.now();
      else if (n % 64 === 0) await new Promise((r) => setImmediate(r));
    }
    if ((await exited) !== 0) throw new Error(`system update rule failed: ${output}`);
    const apply = Number(/\(([\d.]+) ms\)/.exec(output)?.[1] ?? NaN);
    return { total: t1 - t0, apply };
  } finally {
    dp.close();
    execFileSync('umount', [pins.dir]); // the private bpffs, and every pin in it
    rmSync(base, { recursive: true, force: true });
  }
}

function median(xs: number[]): number {
  return [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;
}

export async function measureUpdateRule(): Promise<UpdateLatency> {
  const totals: number[] = [];
  const applies: number[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    const r = await round();
    totals.push(r.total);
    applies.push(r.apply);
  }
  return { commandToPacketMs: median(totals), rounds: totals.map((t) => Math.round(t * 10) / 10), applyMs: median(applies) };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const r = await measureUpdateRule();
  console.log(`system update rule → first packet under the new rule: ${r.commandToPacketMs.toFixed(1)} ms median (rounds: ${r.rounds.join(', ')} ms)`);
  console.log(`  of which the apply itself (store read → slot flipped): ${r.applyMs.toFixed(2)} ms; the rest is starting Node and loading the CLI`);
}
