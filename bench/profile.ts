/**
 * npm run bench:profile -- --scenario NAME [--engine connrate] [--seconds 5] [--window N]
 *
 * Where does the receive CPU go? One engine on one scenario, as in the bench,
 * with `perf record` sampling the receive CPU (the engine's NAPI thread) while
 * the generator runs, with the bench's window (0: none); prints the hottest
 * symbols. (`bpftool prog profile`
 * needs a bpftool built with skeletons and hardware counters, which VMs often
 * lack; perf's cpu-clock sampling works everywhere.)
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ALL_ENGINES } from './engines.js';
import { wireFrame } from './frames.js';
import { REWRITE, SCENARIOS } from './scenarios.js';
import { DEFAULT_WINDOW, parseWindow } from './throughput.js';
import { NET, Topology } from './topology.js';

const { values: a } = parseArgs({
  options: { scenario: { type: 'string' }, engine: { type: 'string', default: 'connrate' }, seconds: { type: 'string', default: '5' }, window: { type: 'string', default: String(DEFAULT_WINDOW) }, top: { type: 'string', default: '30' } },
});
const sc = SCENARIOS.find((s) => s.name === a.scenario);
const engine = ALL_ENGINES.find((e) => e.name === a.engine);
if (!sc || !engine) {
  process.stderr.write(`usage: npm run bench:profile -- --scenario ${SCENARIOS.map((s) => s.name).join('|')} [--engine ${ALL_ENGINES.map((e) => e.name).join('|')}] [--seconds S] [--window N]\n`);
  process.exit(2);
}
const seconds = Number(a.seconds);
let window: number;
try {
  window = parseWindow(a.window!);
} catch (e) {
  process.stderr.write(`bench:profile: ${(e as Error).message}\n`);
  process.exit(2);
}
const dir = mkdtempSync(join(tmpdir(), 'crb-perf-'));
const t = Topology.open();
const stop = (): void => {
  void t.close().finally(() => {
    rmSync(dir, { recursive: true, force: true });
    process.exit(130);
  });
};
process.once('SIGINT', stop);
process.once('SIGTERM', stop);
try {
  const dut = await t.createDut();
  const run = engine.setup(t);
  try {
    const frame = wireFrame(sc.spec, dut.genMac, dut.dutMac).toString('hex');
    const data = join(dir, 'perf.data');
    const perf = spawn('perf', ['record', '-q', '-F', '2999', '-g', '-C', String(t.rxCpu), '-o', data, '--', 'sleep', String(seconds)], { stdio: 'inherit' });
    const done = new Promise<number | null>((r) => perf.once('exit', r));
    const s0 = run.seen();
    const r = await t.gen.request({ cmd: 'run', dev: NET.genIf, frame, rewrite: REWRITE[sc.rewrite], seconds, ...(window ? { window, peer: NET.dutIf } : {}) });
    const seen = Number(run.seen() - s0);
    await done;
    const busy = (r.busyNs ?? r.elapsedNs!) / 1e9;
    console.log(`${sc.name} / ${engine.name}: ${(seen / busy / 1e6).toFixed(3)} Mpps seen, ${(r.frames! / busy / 1e6).toFixed(2)} Mpps offered`);
    const rep = spawnSync('perf', ['report', '-i', data, '--no-children', '--sort', 'symbol', '--percent-limit', '0.5', '-g', 'none', '--stdio'], { encoding: 'utf8' });
    if (process.env.CRB_PERF_KEEP) spawnSync('cp', [data, process.env.CRB_PERF_KEEP]);
    console.log(rep.stdout.split('\n').filter((l) => l.includes('%')).slice(0, Number(a.top)).join('\n'));
  } finally {
    run.close();
  }
} finally {
  await t.close();
  rmSync(dir, { recursive: true, force: true });
}
