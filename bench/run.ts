/**
 * npm run bench [-- --quick] [--out FILE.json] [--scenario NAME]… [--engine NAME]… [--generator auto|xdp|pktgen]
 *               [--seconds S] [--rounds N] [--pace-kpps K] [--window N] [--skip-cost] [--skip-control-plane]
 *
 * Every engine on the same generated traffic, in one run (bench/topology.ts),
 * rounds interleaving the engines: Mpps at saturation for every scenario,
 * receive-CPU and program ns per packet below saturation for the pass
 * scenarios (bench/throughput.ts); ns/packet from BPF_PROG_TEST_RUN
 * (bench/cost.ts); the control plane (bench/control-plane.ts). Prints the
 * tables; --out writes the JSON and, next to it, the SVG chart. Root only;
 * makes and removes its own netns, pins and rules.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, release, totalmem } from 'node:os';
import { dirname, resolve as resolvePath } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { cleanupDaemonLeftovers, measureControlPlane } from './control-plane.js';
import { measureCost } from './cost.js';
import { ALL_ENGINES, ENGINES, REFERENCE_FOR, REFERENCES, engineRules, type Engine } from './engines.js';
import { pktgenAvailable } from './pktgen.js';
import { median, ratioStat, spread, svgChart, textReport, toJson, type Machine, type Results, type ScenarioResult, type Spread } from './report.js';
import { SCENARIOS, type Scenario } from './scenarios.js';
import { DEFAULT_WINDOW, bpfStatsLeftOn, measure, parseWindow, type Measurement } from './throughput.js';
import { Topology, cleanupOnExit } from './topology.js';

const USAGE = `usage: npm run bench [-- options]
  --quick                 2 short rounds, no no-touch references (a couple of minutes on 2 cores)
  --out FILE.json         write the results (JSON) and FILE.svg (the chart)
  --scenario NAME         only this scenario (repeatable): ${SCENARIOS.map((s) => s.name).join(', ')}
  --engine NAME           only this engine or reference (repeatable; the tables then have gaps)
  --generator G           auto (pktgen where the kernel has it and the traffic is UDP), xdp, pktgen
  --seconds S             seconds per saturation measurement (default 1 quick, 2 full)
  --rounds N              interleaved rounds, median kept (default 2 quick, 5 full)
  --pace-kpps K           the fixed load of the pass scenarios' ns/packet, thousand frames a second (default 50)
  --window N              frames the flood's generator may be ahead of the engine's NAPI, so the veth ring
                          never overflows (default ${DEFAULT_WINDOW}; 0: as fast as it can, refused frames and all)
  --skip-cost             no BPF_PROG_TEST_RUN ns/packet
  --skip-control-plane    datapath only`;

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    out: { type: 'string' },
    scenario: { type: 'string', multiple: true },
    engine: { type: 'string', multiple: true },
    generator: { type: 'string', default: 'auto' },
    seconds: { type: 'string' },
    rounds: { type: 'string' },
    'pace-kpps': { type: 'string', default: '50' },
    window: { type: 'string', default: String(DEFAULT_WINDOW) },
    'skip-cost': { type: 'boolean', default: false },
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
const seconds = args.seconds ? Number(args.seconds) : quick ? 0.75 : 1.5;
const rounds = args.rounds ? Number(args.rounds) : quick ? 2 : 5;
const pacePps = Number(args['pace-kpps']) * 1000;
/** Seconds of the paced CPU-time window, and of the program-time window after it. */
const pace = { pps: pacePps, seconds: quick ? 0.4 : 0.75, statsSeconds: quick ? 0.2 : 0.4 };
if (!(seconds > 0 && seconds <= 60)) fail('--seconds must be in (0, 60]');
if (!(Number.isInteger(rounds) && rounds >= 1 && rounds <= 20)) fail('--rounds must be an integer 1..20');
if (!(pacePps >= 1000 && pacePps <= 1e6)) fail('--pace-kpps must be in [1, 1000]');
const window = ((): number => {
  try {
    return parseWindow(args.window!);
  } catch (e) {
    return fail((e as Error).message);
  }
})();
if (!['auto', 'xdp', 'pktgen'].includes(args.generator!)) fail('--generator must be auto, xdp or pktgen');
const scenarios = args.scenario?.length ? SCENARIOS.filter((s) => args.scenario!.includes(s.name)) : SCENARIOS;
for (const n of args.scenario ?? []) if (!SCENARIOS.some((s) => s.name === n)) fail(`unknown scenario ${n}`);
for (const n of args.engine ?? []) if (!ALL_ENGINES.some((e) => e.name === n)) fail(`unknown engine ${n}: ${ALL_ENGINES.map((e) => e.name).join(', ')}`);
if (process.getuid?.() !== 0) fail('run as root (netns, XDP, BPF_PROG_TEST_RUN, kernel.bpf_stats_enabled)');
const statsOn = bpfStatsLeftOn();
if (statsOn) fail(statsOn);
for (const f of ['build/bpf/connrate.bpf.o', 'build/bpf/xdp_noop.bpf.o', 'build/bpf/xdp_ref.bpf.o', 'build/bpf/bench_gen.bpf.o', 'dist/cli.js']) {
  if (!existsSync(fileURLToPath(new URL(`../${f}`, import.meta.url)))) fail(`${f} is missing: run npm run build first`);
}

const started = performance.now();
const log = (s: string): void => void process.stderr.write(`[bench ${((performance.now() - started) / 1000).toFixed(0).padStart(4)} s] ${s}\n`);

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
    flood: window ? `at most ${window} frames ahead of the engine's NAPI (the veth ring never overflows)` : 'as fast as the generator can, frames refused at the veth ring returned by the generator',
    paced_load: `${pace.pps} frames/s, ${pace.seconds} s of CPU time then ${pace.statsSeconds} s with kernel.bpf_stats_enabled, after the saturation run on the same appliance`,
    // others' load skews every figure on a shared machine: the 1-minute load average when the run started
    load_average_at_start: Number(readFileSync('/proc/loadavg', 'utf8').split(' ')[0]),
  };
}

let topo: Topology | undefined;
const cleanup = cleanupOnExit(() => topo, log, cleanupDaemonLeftovers);

/** Share of the paced load lost at the veth ring above which the report says so. */
const PACED_LOSS_NOTE = 0.01;

/** The engines of a scenario: the three limiters, the parse-ip reference of its verdict, the no-touch one. */
function enginesFor(sc: Scenario): Engine[] {
  const ref = REFERENCE_FOR[sc.verdict];
  // --quick leaves out the no-touch reference, which nothing is compared with
  const all = [...ENGINES, REFERENCES[ref.parse], ...(quick && !args.engine?.length ? [] : [REFERENCES[ref.noTouch]])];
  return args.engine?.length ? all.filter((e) => args.engine!.includes(e.name)) : all;
}

async function runScenario(t: Topology, sc: Scenario, usePktgen: boolean): Promise<ScenarioResult> {
  const engines = enginesFor(sc);
  const ref = REFERENCE_FOR[sc.verdict];
  const notes: string[] = [];
  const generators = new Set<string>();
  const runs = new Map<string, Measurement[]>(engines.map((e) => [e.name, []]));
  // every round runs every engine, starting one further along each time, so a
  // burst of someone else's load (or a slow drift) hits them alike
  for (let i = 0; i < rounds; i++) {
    for (let j = 0; j < engines.length; j++) {
      const engine = engines[(i + j) % engines.length]!;
      const m = await measure(t, sc, engine, { seconds, usePktgen, window, ...(sc.verdict === 'pass' ? { pace } : { floodStatsSeconds: pace.statsSeconds }) });
      runs.get(engine.name)!.push(m);
      generators.add(m.saturation.generator);
      if (m.saturation.note) notes.push(`${engine.name}: ${m.saturation.note}`);
      const p = m.paced;
      log(
        `${sc.name} round ${i + 1}/${rounds} ${engine.name.padEnd(18)} ${m.saturation.mpps.toFixed(3)} Mpps/rx-CPU (${m.saturation.wallMpps.toFixed(3)} Mpps, rx CPU ${((m.saturation.rxCpuSeconds / m.saturation.seconds) * 100).toFixed(0)} %)` +
          (m.saturation.progNsPerPacket !== undefined ? `; program ${m.saturation.progNsPerPacket.toFixed(1)} ns/pkt in place` : '') +
          (p ? `; at ${p.offeredMpps.toFixed(3)} Mpps (${p.achievedMpps.toFixed(3)} achieved): ${p.rxNsPerPacket.toFixed(0)} ns/pkt receive CPU, ${p.progNsPerPacket.toFixed(1)} ns/pkt program` : '') +
          ` (set-up ${m.overhead.setupS.toFixed(1)} s, teardown ${m.overhead.teardownS.toFixed(1)} s)`,
      );
    }
  }
  const rows = (name: string): Measurement[] => runs.get(name) ?? [];
  const mppsOf = (name: string): number[] => rows(name).map((m) => m.saturation.mpps);
  const mpps: ScenarioResult['mpps'] = {};
  const spreads: Record<string, Spread> = {};
  const offered: Record<string, number> = {};
  const wall: Record<string, number> = {};
  const rxShare: Record<string, number> = {};
  const lostBy: string[] = [];
  for (const e of engines) {
    const xs = mppsOf(e.name);
    if (e.name !== ref.noTouch) mpps[e.name] = median(xs);
    spreads[e.name] = spread(xs);
    offered[e.name] = median(rows(e.name).map((m) => m.saturation.offeredMpps));
    wall[e.name] = median(rows(e.name).map((m) => m.saturation.wallMpps));
    rxShare[e.name] = median(rows(e.name).map((m) => m.saturation.rxCpuSeconds / m.saturation.seconds));
    const rs = rows(e.name);
    const passed = rs.map((m) => m.saturation.details?.xdp_passed).filter((x): x is number => x !== undefined);
    const seen = rs.map((m) => m.saturation.seen);
    if (passed.length && passed.some((p, k) => Math.abs(p - seen[k]!) > 0.02 * seen[k]!)) {
      notes.push(`${e.name}: XDP passed ${passed.join('/')} frames, the rules saw ${seen.join('/')}`);
    }
    const off = rs.map((m) => m.saturation.details?.off_rx_cpu ?? 0);
    if (off.some((n, k) => n > 0.01 * rs[k]!.saturation.seen)) {
      notes.push(`${e.name}: XDP ran elsewhere than on the receive CPU for ${off.join('/')} of ${rs.map((m) => m.saturation.seen).join('/')} packets (per round): those rounds' Mpps per receive-CPU second are too high`);
    }
    const lost = Math.max(0, ...rs.map((m) => m.paced?.lost ?? 0));
    if (lost > PACED_LOSS_NOTE) lostBy.push(`${e.name} ${(lost * 100).toFixed(1)} %`);
  }
  if (lostBy.length) {
    notes.push(
      `paced load that never reached XDP, worst round (the receive ring overflowed: the NAPI thread did not get the CPU in time, or the load was not below saturation; ns/packet counts only packets that arrived): ${lostBy.join(', ')}`,
    );
  }
  // connrate's verdicts in the round of its median
  const cr = [...rows('connrate')].sort((a, b) => a.saturation.mpps - b.saturation.mpps);
  const verdicts = cr[Math.floor(cr.length / 2)]?.saturation.details;

  const row: ScenarioResult = {
    name: sc.name,
    verdict: sc.verdict,
    reference: ref.parse,
    mpps,
    spread: spreads,
    ratios: {
      connrate_vs_reference: ratioStat(mppsOf('connrate'), mppsOf(ref.parse)),
      connrate_vs_iptables: ratioStat(mppsOf('connrate'), mppsOf('iptables-hashlimit')),
    },
    ...(runs.has(ref.noTouch) ? { reference_mpps: { [ref.noTouch]: median(mppsOf(ref.noTouch)) } } : {}),
    ns_per_packet: {},
    harness_ns_per_packet: NaN,
    what: sc.what,
    generator: [...generators].join('+'),
    offered_mpps: offered,
    mpps_wall: wall,
    rx_cpu_share: rxShare,
    ...(verdicts ? { connrate_verdicts: verdicts } : {}),
  };
  if (sc.verdict === 'drop') {
    row.prog_ns_per_packet = Object.fromEntries(engines.map((e) => [e.name, median(rows(e.name).map((m) => m.saturation.progNsPerPacket ?? NaN))]));
  }
  if (sc.verdict === 'pass') {
    const rx: Record<string, number> = {};
    const rxSpread: Record<string, Spread> = {};
    const prog: Record<string, number> = {};
    for (const e of engines) {
      const ps = rows(e.name).map((m) => m.paced!);
      rx[e.name] = median(ps.map((p) => p.rxNsPerPacket));
      rxSpread[e.name] = spread(ps.map((p) => p.rxNsPerPacket));
      prog[e.name] = median(ps.map((p) => p.progNsPerPacket));
    }
    row.paced_offered_mpps = median(engines.flatMap((e) => rows(e.name).map((m) => m.paced!.offeredMpps)));
    row.paced_achieved_mpps = Object.fromEntries(engines.map((e) => [e.name, median(rows(e.name).map((m) => m.paced!.achievedMpps))]));
    row.rx_ns_per_packet = rx;
    row.rx_ns_spread = rxSpread;
    row.prog_ns_per_packet = prog;
  }
  if (!args['skip-cost']) {
    log(`${sc.name}: ns/packet (BPF_PROG_TEST_RUN)`);
    const { harness, ...ns } = measureCost(sc, { rounds: quick ? 3 : 5, repeat: 1 << 20 });
    row.ns_per_packet = ns;
    row.harness_ns_per_packet = harness;
    log(`${sc.name}: ns/packet ${Object.entries(ns).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(', ')} (harness ${harness.toFixed(1)})`);
  }
  if (notes.length) row.notes = notes;
  return row;
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

  for (const sc of scenarios) results.scenarios.push(await runScenario(topo, sc, usePktgen));
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
