/**
 * npm run bench:calibrate [-- --scenario NAME]… [--spin R,R,…] [--rounds N] [--seconds S] [--window N] [--out FILE.json]
 *
 * How does the live drop measurement answer to a program's own time? Each
 * drop scenario's flood, as in the bench, on connrate and on xdp-drop-parse
 * made slower by a known amount of arithmetic that touches no memory
 * (bpf/xdp_ref.bpf.c, xdp_drop_parse_spin; 0 rounds is xdp-drop-parse
 * itself), interleaved: Mpps per receive-CPU second, each against
 * xdp-drop-parse round by round, the program's own ns per packet in place
 * (kernel.bpf_stats_enabled) and the rest of the receive CPU. If a program
 * only a few ns slower than xdp-drop-parse scores far below it, the ratio
 * measures the harness at that load more than the program.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, release } from 'node:os';
import { dirname, resolve as resolvePath } from 'node:path';
import { parseArgs } from 'node:util';
import { ENGINES, REFERENCES, dropParseSpin, type Engine } from './engines.js';
import { median, ratioStat, type RatioStat } from './report.js';
import { SCENARIOS } from './scenarios.js';
import { DEFAULT_WINDOW, bpfStatsLeftOn, measure, parseWindow } from './throughput.js';
import { Topology, cleanupOnExit } from './topology.js';

const USAGE = `usage: npm run bench:calibrate [-- options]
  --scenario NAME   a drop scenario (repeatable; default all): ${SCENARIOS.filter((s) => s.verdict === 'drop').map((s) => s.name).join(', ')}
  --spin R,R,…      rounds of arithmetic added to xdp-drop-parse (default 10,20,30,60)
  --rounds N        interleaved rounds (default 5)
  --seconds S       seconds per saturation measurement (default 1.5, as the bench)
  --window N        the flood's window, as the bench's (default ${DEFAULT_WINDOW}; 0: none)
  --out FILE.json   write the results`;

const { values: args } = parseArgs({
  options: {
    scenario: { type: 'string', multiple: true },
    spin: { type: 'string', default: '10,20,30,60' },
    rounds: { type: 'string', default: '5' },
    seconds: { type: 'string', default: '1.5' },
    window: { type: 'string', default: String(DEFAULT_WINDOW) },
    out: { type: 'string' },
    help: { type: 'boolean', short: 'h', default: false },
  },
  strict: true,
});

function fail(msg: string): never {
  process.stderr.write(`bench:calibrate: ${msg}\n${USAGE}\n`);
  process.exit(2);
}
if (args.help) {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}
if (process.getuid?.() !== 0) fail('run as root (netns, XDP, BPF_PROG_TEST_RUN, kernel.bpf_stats_enabled)');
const statsOn = bpfStatsLeftOn();
if (statsOn) fail(statsOn);
const SPIN_MAX = 4096; // SPIN_ROUNDS_MAX in bpf/xdp_ref.bpf.c
const spins = args.spin.split(',').map((x) => Number(x.trim()));
if (spins.some((n) => !Number.isInteger(n) || n < 1 || n > SPIN_MAX)) fail(`--spin: whole numbers of rounds from 1 to ${SPIN_MAX}, comma-separated, not "${args.spin}"`);
const rounds = Number(args.rounds);
if (!Number.isInteger(rounds) || rounds < 1) fail(`--rounds: a whole number of at least 1, not "${args.rounds}"`);
const seconds = Number(args.seconds);
if (!(seconds > 0)) fail(`--seconds: a positive number, not "${args.seconds}"`);
const window = ((): number => {
  try {
    return parseWindow(args.window);
  } catch (e) {
    return fail((e as Error).message);
  }
})();
const drops = SCENARIOS.filter((s) => s.verdict === 'drop');
const scenarios = args.scenario?.length
  ? args.scenario.map((n) => drops.find((s) => s.name === n) ?? fail(`--scenario: no drop scenario "${n}"`))
  : drops;
const STATS_SECONDS = 0.4; // the bench's second, shorter flood with bpf_stats on

const log = (msg: string): void => void process.stderr.write(`[calibrate] ${msg}\n`);

interface Row {
  label: string;
  /** Rounds of arithmetic over xdp-drop-parse; undefined for connrate. */
  spin?: number;
  mpps: number[];
  prog_ns: number[];
}

interface ScenarioCalibration {
  name: string;
  rows: (Row & { ratio: RatioStat; prog_ns_median: number; mpps_median: number; rest_ns: number })[];
}

const candidates: { label: string; spin?: number; engine: Engine }[] = [
  { label: 'xdp-drop-parse', spin: 0, engine: REFERENCES['xdp-drop-parse'] },
  ...spins.map((n) => ({ label: `xdp-drop-parse +${n}`, spin: n, engine: dropParseSpin(n) })),
  { label: 'connrate', engine: ENGINES.find((e) => e.name === 'connrate')! },
];

let topo: Topology | undefined;
const cleanup = cleanupOnExit(() => topo, log);

async function calibrate(t: Topology, sc: (typeof SCENARIOS)[number]): Promise<ScenarioCalibration> {
  const rows: Row[] = candidates.map((c) => ({ label: c.label, ...(c.spin !== undefined ? { spin: c.spin } : {}), mpps: [], prog_ns: [] }));
  for (let i = 0; i < rounds; i++) {
    for (let j = 0; j < candidates.length; j++) {
      const k = (i + j) % candidates.length; // one further along each round, as the bench
      const m = await measure(t, sc, candidates[k]!.engine, { seconds, window, floodStatsSeconds: STATS_SECONDS });
      rows[k]!.mpps.push(m.saturation.mpps);
      rows[k]!.prog_ns.push(m.saturation.progNsPerPacket ?? NaN);
      log(`${sc.name} round ${i + 1}/${rounds} ${candidates[k]!.label.padEnd(22)} ${m.saturation.mpps.toFixed(3)} Mpps/rx-CPU; program ${(m.saturation.progNsPerPacket ?? NaN).toFixed(1)} ns/pkt in place`);
    }
  }
  const ref = rows[0]!;
  return {
    name: sc.name,
    rows: rows.map((r) => {
      const mppsMedian = median(r.mpps);
      const progMedian = median(r.prog_ns);
      return { ...r, ratio: ratioStat(r.mpps, ref.mpps), mpps_median: mppsMedian, prog_ns_median: progMedian, rest_ns: 1000 / mppsMedian - progMedian };
    }),
  };
}

function table(c: ScenarioCalibration): string {
  const ref = c.rows[0]!.prog_ns_median;
  const head = ['engine', 'program ns in place', 'over xdp-drop-parse', 'Mpps/rx-CPU', 'ratio to xdp-drop-parse', 'receive CPU ns', 'rest ns'];
  const body = c.rows.map((r) => [
    r.label,
    r.prog_ns_median.toFixed(1),
    r.spin === 0 ? '—' : `${r.prog_ns_median - ref >= 0 ? '+' : ''}${(r.prog_ns_median - ref).toFixed(1)}`,
    `${r.mpps_median.toFixed(3)} [${Math.min(...r.mpps).toFixed(2)}–${Math.max(...r.mpps).toFixed(2)}]`,
    r.spin === 0 ? '1' : `${r.ratio.median.toFixed(2)}× [${r.ratio.min.toFixed(2)}–${r.ratio.max.toFixed(2)}]`,
    (1000 / r.mpps_median).toFixed(0),
    r.rest_ns.toFixed(0),
  ]);
  const w = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]): string => cells.map((x, i) => (i === 0 ? x.padEnd(w[i]!) : x.padStart(w[i]!))).join('  ');
  return [`${c.name} (median of ${rounds} interleaved rounds [min–max]; ratios round by round)`, line(head), line(w.map((n) => '-'.repeat(n))), ...body.map(line)].join('\n');
}

async function main(): Promise<void> {
  const load = Number(readFileSync('/proc/loadavg', 'utf8').split(' ')[0]);
  if (load > 0.5) log(`warning: load average ${load} — something else is running; figures will be noisy`);
  topo = Topology.open();
  const results: ScenarioCalibration[] = [];
  for (const sc of scenarios) results.push(await calibrate(topo, sc));
  await topo.close();
  topo = undefined;
  process.stdout.write(`${results.map(table).join('\n\n')}\n`);
  if (args.out) {
    const out = resolvePath(args.out);
    mkdirSync(dirname(out), { recursive: true });
    const machine = { cpu: cpus()[0]?.model ?? 'unknown', cores: cpus().length, kernel: release(), date: new Date().toISOString(), load_average_at_start: load, rounds, seconds_per_measurement: seconds, window };
    writeFileSync(out, `${JSON.stringify({ machine, scenarios: results }, null, 2)}\n`);
    log(`wrote ${out}`);
  }
}

main()
  .catch((e: unknown) => {
    process.stderr.write(`bench:calibrate: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exitCode = 1;
  })
  .finally(() => cleanup());
