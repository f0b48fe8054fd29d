/**
 * npm run bench [-- --quick] [--out FILE.json] [--scenario NAME]… [--engine NAME]…
 *               [--generator auto|xdp|pktgen] [--seconds S] [--rounds N] [--skip-control-plane]
 *
 * Every engine on the same generated traffic, in one run (bench/topology.ts);
 * ns/packet from BPF_PROG_TEST_RUN (bench/cost.ts); the control plane
 * (bench/control-plane.ts). Prints a table; --out writes the JSON and, next to
 * it, the SVG chart. Root only; makes and removes its own netns, pins and rules.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, release, totalmem } from 'node:os';
import { dirname, resolve as resolvePath } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { cleanupDaemonLeftovers, measureControlPlane } from './control-plane.js';
import { measureCost } from './cost.js';
import { ENGINE_NAMES, ENGINES, REFERENCE, engineRules, type EngineName } from './engines.js';
import { pktgenAvailable } from './pktgen.js';
import { ratios, svgChart, textReport, toJson, type Machine, type Results, type ScenarioResult } from './report.js';
import { SCENARIOS } from './scenarios.js';
import { measureThroughput, type Throughput } from './throughput.js';
import { Topology } from './topology.js';

const USAGE = `usage: npm run bench [-- options]
  --quick                 one short round per measurement (under 3 minutes on 2 cores)
  --out FILE.json         write the results (JSON) and FILE.svg (the chart)
  --scenario NAME         only this scenario (repeatable): ${SCENARIOS.map((s) => s.name).join(', ')}
  --generator G           auto (pktgen where the kernel has it and the traffic is UDP), xdp, pktgen
  --seconds S             seconds per throughput measurement (default 1 quick, 3 full)
  --rounds N              rounds per measurement, median kept (default 1 quick, 3 full)
  --skip-control-plane    datapath only`;

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    out: { type: 'string' },
    scenario: { type: 'string', multiple: true },
    generator: { type: 'string', default: 'auto' },
    seconds: { type: 'string' },
    rounds: { type: 'string' },
    'skip-control-plane': { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
  strict: true,
});

function fail(msg: string): never {
  process.stderr.write(`bench: ${msg}\n${USAGE}\n`);
  process.exit(2);
}

if (args.help) {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}
const quick = args.quick!;
const seconds = args.seconds ? Number(args.seconds) : quick ? 1 : 3;
const rounds = args.rounds ? Number(args.rounds) : quick ? 1 : 3;
if (!(seconds > 0 && seconds <= 60)) fail('--seconds must be in (0, 60]');
if (!(Number.isInteger(rounds) && rounds >= 1 && rounds <= 20)) fail('--rounds must be an integer 1..20');
if (!['auto', 'xdp', 'pktgen'].includes(args.generator!)) fail('--generator must be auto, xdp or pktgen');
const scenarios = args.scenario?.length ? SCENARIOS.filter((s) => args.scenario!.includes(s.name)) : SCENARIOS;
for (const n of args.scenario ?? []) if (!SCENARIOS.some((s) => s.name === n)) fail(`unknown scenario ${n}`);
if (process.getuid?.() !== 0) fail('run as root (netns, XDP, BPF_PROG_TEST_RUN)');
for (const f of ['build/bpf/connrate.bpf.o', 'build/bpf/xdp_noop.bpf.o', 'build/bpf/bench_gen.bpf.o', 'dist/cli.js']) {
  if (!existsSync(fileURLToPath(new URL(`../${f}`, import.meta.url)))) fail(`${f} is missing: run npm run build first`);
}

const log = (s: string): void => void process.stderr.write(`[bench] ${s}\n`);
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;

function version(argv: string[]): string {
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8' });
  return (r.stdout || r.stderr || '').trim().split('\n')[0] ?? '';
}

function machine(generator: string): Machine {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  const model = /model name\s*:\s*(.*)/.exec(cpuinfo)?.[1]?.trim() ?? cpus()[0]?.model ?? 'unknown';
  const hv = / hypervisor /.test(cpuinfo) ? (/Hypervisor vendor:\s*(.*)/.exec(version(['sh', '-c', 'lscpu | grep "Hypervisor vendor"']))?.[1] ?? 'a hypervisor') : '';
  const container = version(['systemd-detect-virt', '--container']);
  const virt = [hv && `VM (${hv})`, container && container !== 'none' && `container (${container})`].filter(Boolean).join(', ') || 'none';
  return {
    cpu: model,
    cores: cpus().length,
    kernel: release(),
    node: process.version,
    date: new Date().toISOString(),
    memory_gib: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    virtualization: virt,
    iptables: version(['iptables', '--version']),
    nftables: version(['nft', '--version']),
    generator,
    topology: 'netns crb-gen (generator, CPU 0) → veth → netns crb-dut (engine on crbd, XDP native, threaded NAPI on CPU 1)',
    quick,
    seconds_per_measurement: seconds,
    rounds,
    // others' load skews every figure on a shared machine: the 1-minute load average when the run started
    load_average_at_start: Number(readFileSync('/proc/loadavg', 'utf8').split(' ')[0]),
  };
}

let topo: Topology | undefined;
let cleaning: Promise<void> | undefined;
function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    try {
      await topo?.close();
    } catch (e) {
      log(`cleanup: ${(e as Error).message}`);
    }
    Topology.cleanupLeftovers();
    cleanupDaemonLeftovers();
  })();
  return cleaning;
}
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    log(`${sig}: cleaning up`);
    void cleanup().then(() => process.exit(130));
  });
}

async function main(): Promise<void> {
  const t0 = performance.now();
  topo = Topology.open();
  const usePktgen = args.generator === 'pktgen' || (args.generator === 'auto' && pktgenAvailable());
  if (args.generator === 'pktgen' && !pktgenAvailable()) fail('--generator pktgen: this kernel has no /proc/net/pktgen');
  const genDesc = usePktgen
    ? 'kernel pktgen for the UDP scenarios, BPF_PROG_TEST_RUN live frames (bench_gen → veth) for the rest'
    : `BPF_PROG_TEST_RUN live frames (bpf/bench_gen.bpf.c → bpf_redirect into the veth)${pktgenAvailable() ? '' : '; this kernel has no pktgen'}`;
  const results: Results = { machine: machine(genDesc), scenarios: [], control_plane: {} };
  const load = results.machine.load_average_at_start as number;
  if (load > 0.5) log(`warning: load average ${load} — something else is running; figures will be noisy`);

  for (const sc of scenarios) {
    const mpps = {} as Record<EngineName, number>;
    const offered: Record<string, number> = {};
    const notes: string[] = [];
    let verdicts: Record<string, number> | undefined;
    const generators = new Set<string>();
    let drop: number | undefined;
    // rounds interleave the engines, so a burst of someone else's load hits them alike
    const engines = [...ENGINES, REFERENCE];
    const runs = new Map<string, Throughput[]>(engines.map((e) => [e.name, []]));
    for (let i = 0; i < rounds; i++) {
      for (const engine of engines) {
        const r = await measureThroughput(topo, sc, engine, seconds, usePktgen);
        runs.get(engine.name)!.push(r);
        generators.add(r.generator);
        if (r.note) notes.push(`${engine.name}: ${r.note}`);
      }
    }
    for (const engine of engines) {
      const rs = runs.get(engine.name)!;
      const m = median(rs.map((r) => r.mpps));
      const mid = rs.find((r) => r.mpps === m)!;
      log(`${sc.name.padEnd(22)} ${engine.name.padEnd(19)} ${m.toFixed(3)} Mpps (offered ${mid.offeredMpps.toFixed(2)}; rounds ${rs.map((r) => r.mpps.toFixed(3)).join(' ')})`);
      offered[engine.name] = mid.offeredMpps;
      if (engine.name === 'xdp-drop') drop = m;
      else mpps[engine.name] = m;
      if (engine.name === 'connrate') verdicts = mid.details;
      if (mid.details?.xdp_passed !== undefined && Math.abs(mid.details.xdp_passed - mid.seen) > 0.02 * mid.seen) {
        notes.push(`${engine.name}: XDP passed ${mid.details.xdp_passed} frames, the rules saw ${mid.seen}`);
      }
    }
    log(`${sc.name}: ns/packet (BPF_PROG_TEST_RUN)`);
    const cost = measureCost(sc, { rounds: quick ? 3 : 7, repeat: 1 << 20 });
    log(`${sc.name}: ns/packet xdp-noop ${cost['xdp-noop'].toFixed(1)}, connrate ${cost.connrate.toFixed(1)} (harness ${cost.harness.toFixed(1)})`);
    const row: ScenarioResult = {
      name: sc.name,
      mpps,
      ns_per_packet: { 'xdp-noop': cost['xdp-noop'], connrate: cost.connrate },
      what: sc.what,
      generator: [...generators].join('+'),
      offered_mpps: offered,
      ...(drop !== undefined ? { reference_mpps: { 'xdp-drop': drop } } : {}),
      harness_ns_per_packet: cost.harness,
      ...(verdicts ? { connrate_verdicts: verdicts } : {}),
      ratios: ratios(mpps),
      ...(notes.length ? { notes } : {}),
    };
    results.scenarios.push(row);
  }
  await topo.close();
  topo = undefined;

  if (!args['skip-control-plane']) results.control_plane = await measureControlPlane(quick, log);
  (results.machine as Record<string, unknown>).rules = engineRules();
  (results.machine as Record<string, unknown>).load_average_at_end = Number(readFileSync('/proc/loadavg', 'utf8').split(' ')[0]);
  (results.machine as Record<string, unknown>).elapsed_s = Math.round((performance.now() - t0) / 100) / 10;

  process.stdout.write(`${textReport(results)}\n`);
  if (args.out) {
    const out = resolvePath(args.out);
    mkdirSync(dirname(out), { recursive: true });
    writeFileSync(out, toJson(results));
    const svg = out.replace(/\.json$/i, '') + '.svg';
    writeFileSync(svg, svgChart(results));
    log(`wrote ${out} and ${svg}`);
  }
  log(`done in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
}

main()
  .catch(async (e: unknown) => {
    process.stderr.write(`bench: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exitCode = 1;
  })
  .finally(() => cleanup());

export { ENGINE_NAMES };
