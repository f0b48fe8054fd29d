/**
 * The results: the JSON other tools read, the tables (plain text on stdout,
 * Markdown for bench/results/README.md: bench/tables.ts) and an SVG chart.
 *
 * Ratios are only ever taken between programs of the same verdict: connrate
 * over the parse-ip reference of the scenario's verdict, and connrate over
 * iptables-hashlimit (both limiters, same rules).
 */
import type { ControlPlane } from './control-plane.js';
import { ENGINE_NAMES, REFERENCE_FOR, type EngineName, type ReferenceName, type Verdict } from './engines.js';

/** How far the rounds of one measurement lie apart. */
export interface Spread {
  min: number;
  max: number;
  /** (max − min) / median */
  relative: number;
  rounds: number[];
}

/** A ratio taken round by round (both figures from the same round), then summarised. */
export interface RatioStat {
  median: number;
  min: number;
  max: number;
}

export interface ScenarioResult {
  name: string;
  /** What connrate does with the scenario's packets; sets the reference. */
  verdict: Verdict;
  /** The parse-ip reference of that verdict. */
  reference: ReferenceName;
  /**
   * Median Mpps at saturation, per second of receive CPU (the engine's counters
   * over the CPU time of crbd's NAPI thread): connrate, iptables-hashlimit,
   * nft-meter and the reference.
   */
  mpps: Partial<Record<EngineName | ReferenceName, number>>;
  /** The same packets over the generator's busy time (what this shared machine gave), median. */
  mpps_wall?: Record<string, number>;
  /** Share of the generator's busy time the NAPI thread ran at saturation, median. */
  rx_cpu_share?: Record<string, number>;
  /** Per engine (and the no-touch reference): the rounds behind the median. */
  spread: Record<string, Spread>;
  ratios: { connrate_vs_reference: RatioStat; connrate_vs_iptables: RatioStat };
  /** The no-touch reference of the same verdict (xdp-drop / xdp-noop), median Mpps. */
  reference_mpps?: Partial<Record<ReferenceName, number>>;
  // pass scenarios: a fixed load below saturation
  paced_offered_mpps?: number;
  /** Frames the paced generator transmitted over the wall clock (less when it lost its CPU), median. */
  paced_achieved_mpps?: Record<string, number>;
  /** Receive-CPU ns per packet (NAPI thread schedstat / packets), median of the rounds. */
  rx_ns_per_packet?: Record<string, number>;
  rx_ns_spread?: Record<string, Spread>;
  /** The attached XDP program's run_time_ns / run_cnt (kernel.bpf_stats_enabled), median: below saturation (pass scenarios), under a flood (drop scenarios). */
  prog_ns_per_packet?: Record<string, number>;
  /** BPF_PROG_TEST_RUN ns/packet (bench/cost.ts); `harness_ns_per_packet` is included in each. */
  ns_per_packet: Record<string, number>;
  harness_ns_per_packet: number;
  // how to read the figures above
  what: string;
  generator: string;
  offered_mpps: Record<string, number>;
  connrate_verdicts?: Record<string, number>;
  notes?: string[];
}

export interface Machine {
  cpu: string;
  cores: number;
  kernel: string;
  node: string;
  date: string;
  [k: string]: unknown;
}

export interface Results {
  machine: Machine;
  scenarios: ScenarioResult[];
  control_plane: ControlPlane | Record<string, never>;
}

export const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

export function spread(rounds: readonly number[]): Spread {
  const min = Math.min(...rounds);
  const max = Math.max(...rounds);
  return { min, max, relative: (max - min) / median(rounds), rounds: [...rounds] };
}

/** a[i] / b[i] for each round i, summarised. */
export function ratioStat(a: readonly number[], b: readonly number[]): RatioStat {
  const r = a.map((x, i) => x / b[i]!).filter((x) => Number.isFinite(x));
  if (r.length === 0) return { median: NaN, min: NaN, max: NaN };
  return { median: median(r), min: Math.min(...r), max: Math.max(...r) };
}

const round = (x: number, d: number): number => (Number.isFinite(x) ? Math.round(x * 10 ** d) / 10 ** d : x);

/** Numbers rounded for the file (Mpps and ratios to 4 decimals, ns and ms to 2). */
export function toJson(r: Results): string {
  return `${JSON.stringify(
    r,
    (k, v: unknown) => (typeof v === 'number' && !Number.isInteger(v) ? round(v, k.endsWith('_ns') || k.endsWith('ms') || k.endsWith('MiB') ? 2 : 4) : v),
    2,
  )}\n`;
}

// ------------------------------------------------------------------ tables

type Style = 'text' | 'md';

function table(style: Style, head: string[], rows: string[][], align: ('l' | 'r')[]): string {
  if (style === 'md') {
    const sep = align.map((a) => (a === 'r' ? '---:' : '---'));
    return [head, sep, ...rows].map((r) => `| ${r.join(' | ')} |`).join('\n');
  }
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string => cells.map((c, i) => (align[i] === 'l' ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  ').trimEnd();
  return [line(head), w.map((n) => '-'.repeat(n)).join('  '), ...rows.map(line)].join('\n');
}

const f = (x: number | undefined, d = 3): string => (x === undefined || !Number.isFinite(x) ? '—' : x.toFixed(d));
/** "1.914 ±4%": the median and half the rounds' range, relative to it. */
const withSpread = (x: number | undefined, s: Spread | undefined, d = 3): string =>
  x === undefined ? '—' : s && s.rounds.length > 1 ? `${f(x, d)} ±${f((s.relative * 100) / 2, 0)}%` : f(x, d);
const ratio = (r: RatioStat | undefined): string => (r && Number.isFinite(r.median) ? `${f(r.median, 2)}× [${f(r.min, 2)}–${f(r.max, 2)}]` : '—');

/** The Mpps table of the scenarios of one verdict. */
function mppsTable(r: Results, verdict: Verdict, style: Style): string | undefined {
  const rows = r.scenarios.filter((s) => s.verdict === verdict);
  if (rows.length === 0) return undefined;
  const ref = REFERENCE_FOR[verdict];
  const b = (x: string): string => (style === 'md' ? `**${x}**` : x);
  return table(
    style,
    ['scenario', 'connrate', ref.parse, 'iptables-hashlimit', 'nft-meter', `${ref.noTouch}¹`, `connrate / ${ref.parse}`, 'connrate / iptables'],
    rows.map((s) => [
      s.name,
      b(withSpread(s.mpps.connrate, s.spread.connrate)),
      withSpread(s.mpps[ref.parse], s.spread[ref.parse]),
      withSpread(s.mpps['iptables-hashlimit'], s.spread['iptables-hashlimit']),
      withSpread(s.mpps['nft-meter'], s.spread['nft-meter']),
      withSpread(s.reference_mpps?.[ref.noTouch], s.spread[ref.noTouch]),
      ratio(s.ratios.connrate_vs_reference),
      ratio(s.ratios.connrate_vs_iptables),
    ]),
    ['l', 'r', 'r', 'r', 'r', 'r', 'r', 'r'],
  );
}

/** Receive-CPU and program ns per packet of the pass scenarios, below saturation. */
function nsTable(r: Results, style: Style): string | undefined {
  const rows = r.scenarios.filter((s) => s.rx_ns_per_packet);
  if (rows.length === 0) return undefined;
  const ref = REFERENCE_FOR.pass;
  const rx = (s: ScenarioResult, e: string): string => withSpread(s.rx_ns_per_packet?.[e], s.rx_ns_spread?.[e], 0);
  return table(
    style,
    ['scenario', 'connrate', ref.parse, 'iptables-hashlimit', 'nft-meter', `${ref.noTouch}¹`, `connrate − ${ref.parse}`, 'connrate − iptables', 'program: connrate', `program: ${ref.parse}`, 'program: connrate − ref'],
    rows.map((s) => {
      const x = s.rx_ns_per_packet!;
      const p = s.prog_ns_per_packet ?? {};
      return [
        s.name,
        rx(s, 'connrate'),
        rx(s, ref.parse),
        rx(s, 'iptables-hashlimit'),
        rx(s, 'nft-meter'),
        rx(s, ref.noTouch),
        f(x.connrate! - x[ref.parse]!, 0),
        f(x.connrate! - x['iptables-hashlimit']!, 0),
        f(p.connrate, 1),
        f(p[ref.parse], 1),
        f(p.connrate! - p[ref.parse]!, 1),
      ];
    }),
    ['l', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r'],
  );
}

/** The drop scenarios' XDP program time per packet in place, under the flood. */
function floodProgTable(r: Results, style: Style): string | undefined {
  const rows = r.scenarios.filter((s) => s.verdict === 'drop' && s.prog_ns_per_packet);
  if (rows.length === 0) return undefined;
  const ref = REFERENCE_FOR.drop;
  // receive-CPU ns per packet at saturation (1000 / Mpps per receive-CPU second), and what is not the program
  const rx = (s: ScenarioResult, e: EngineName | ReferenceName): number => 1000 / (s.mpps[e] ?? NaN);
  const rest = (s: ScenarioResult, e: EngineName | ReferenceName): number => rx(s, e) - (s.prog_ns_per_packet?.[e] ?? NaN);
  return table(
    style,
    ['scenario', 'program: connrate', ref.parse, `${ref.noTouch}¹`, `connrate − ${ref.parse}`, 'receive CPU: connrate', ref.parse, 'rest: connrate', ref.parse],
    rows.map((s) => {
      const p = s.prog_ns_per_packet!;
      return [
        s.name,
        f(p.connrate, 1),
        f(p[ref.parse], 1),
        f(p[ref.noTouch], 1),
        f(p.connrate! - p[ref.parse]!, 1),
        f(rx(s, 'connrate'), 0),
        f(rx(s, ref.parse), 0),
        f(rest(s, 'connrate'), 0),
        f(rest(s, ref.parse), 0),
      ];
    }),
    ['l', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r'],
  );
}

/**
 * BPF_PROG_TEST_RUN ns/packet (bench/cost.ts), whatever programs it measured;
 * a difference only against the scenario's own reference (same verdict).
 */
function costTable(r: Results, style: Style): string | undefined {
  const keys = [...new Set(r.scenarios.flatMap((s) => Object.keys(s.ns_per_packet)))];
  if (keys.length === 0) return undefined;
  return table(
    style,
    ['scenario', ...keys, 'harness', 'connrate − reference of its verdict'],
    r.scenarios.map((s) => [
      s.name,
      ...keys.map((k) => f(s.ns_per_packet[k], 1)),
      f(s.harness_ns_per_packet, 1),
      s.reference in s.ns_per_packet ? `${f((s.ns_per_packet.connrate ?? NaN) - s.ns_per_packet[s.reference]!, 1)} (${s.reference})` : '—',
    ]),
    ['l', ...keys.map(() => 'r' as const), 'r', 'r'],
  );
}

/** What the drop scenarios must reach: connrate over its reference, and over iptables-hashlimit. */
export const TARGETS = { connrate_vs_reference: 0.7, connrate_vs_iptables: 3 } as const;

/** The targets, scenario by scenario: met when the median ratio reaches them. */
function targetsTable(r: Results, style: Style): string | undefined {
  const rows = r.scenarios.filter((s) => s.verdict === 'drop');
  if (rows.length === 0) return undefined;
  const verdict = (x: RatioStat, goal: number): string =>
    !Number.isFinite(x.median) ? '—' : x.median >= goal ? (x.min >= goal ? 'met' : 'met (median; not in every round)') : 'not met';
  return table(
    style,
    ['scenario', 'target', 'result: median [min–max]', 'verdict'],
    rows.flatMap((s) => [
      [s.name, `connrate ≥ ${TARGETS.connrate_vs_reference}× ${s.reference}`, ratio(s.ratios.connrate_vs_reference), verdict(s.ratios.connrate_vs_reference, TARGETS.connrate_vs_reference)],
      [s.name, `connrate ≥ ${TARGETS.connrate_vs_iptables}× iptables-hashlimit`, ratio(s.ratios.connrate_vs_iptables), verdict(s.ratios.connrate_vs_iptables, TARGETS.connrate_vs_iptables)],
    ]),
    ['l', 'l', 'r', 'l'],
  );
}

/** The datapath tables, with their captions, in one style. */
export function datapathTables(r: Results, style: Style): string {
  const out: string[] = [];
  const m = r.machine;
  const rounds = String(m.rounds ?? '?');
  const spreadNote = `median of ${rounds} interleaved rounds; ±: half the rounds' range, relative to the median; ratios taken round by round, median [min–max]`;
  const drop = mppsTable(r, 'drop', style);
  if (drop) {
    out.push(
      `Drop scenarios — Mpps at saturation per second of receive CPU (the engine's own counters over the CPU time of the receive NAPI thread; ${spreadNote}):`,
      '',
      drop,
      '',
    );
  }
  const floodProg = floodProgTable(r, style);
  if (floodProg) {
    out.push(
      'Drop scenarios — the XDP program alone, ns per packet under the flood (run_time_ns / run_cnt over a second, ' +
        'shorter flood with kernel.bpf_stats_enabled, whose two clock reads a packet it includes; median of the rounds), ' +
        'next to the receive CPU\'s ns per packet at saturation (1000 / Mpps above) and the rest (receive CPU − program: ' +
        'the veth ring, and returning each frame\'s page to the generator\'s page pool; the flood\'s window keeps the ring ' +
        'from refusing frames, which the generator would return under the same lock):',
      '',
      floodProg,
      '',
    );
  }
  const pass = mppsTable(r, 'pass', style);
  if (pass) out.push(`Pass scenarios — Mpps at saturation per second of receive CPU (${spreadNote}):`, '', pass, '');
  const ns = nsTable(r, style);
  if (ns) {
    const load = r.scenarios.find((s) => s.paced_offered_mpps)?.paced_offered_mpps;
    out.push(
      `Pass scenarios — ns per packet at a fixed ${f(load, 3)} Mpps (below every engine's saturation): the receive CPU ` +
        '(crbd\'s NAPI thread, schedstat CPU time / packets: XDP and everything the stack does after it), and the XDP ' +
        'program alone (run_time_ns / run_cnt with kernel.bpf_stats_enabled; for iptables and nft that is the xdp-noop in front):',
      '',
      ns,
      '',
    );
  }
  out.push('¹ the no-touch reference of the same verdict (counts, never reads the packet): not compared, it shows what the parse costs.', '');
  const targets = targetsTable(r, style);
  if (targets) out.push('Targets (drop scenarios, live Mpps ratios taken round by round):', '', targets, '');
  const cost = costTable(r, style);
  if (cost) out.push('BPF_PROG_TEST_RUN ns/packet (bench/cost.ts; the scenario\'s rewrite and a tail call, "harness", included in each):', '', cost, '');
  return out.join('\n');
}

export function textReport(r: Results): string {
  const out: string[] = [];
  const m = r.machine;
  out.push(`connrate bench — ${m.cpu}, ${m.cores} cores, Linux ${m.kernel}, node ${m.node}, ${m.date}`);
  out.push(`generator: ${String(m.generator)}; ${String(m.topology ?? '')}`);
  out.push('');
  out.push(datapathTables(r, 'text'));
  const notes = r.scenarios.flatMap((s) => (s.notes ?? []).map((n) => `  ${s.name}: ${n}`));
  if (notes.length) out.push('notes:', ...notes);
  const cp = r.control_plane as Partial<ControlPlane>;
  if (cp.extc) {
    out.push('', 'Control plane:');
    out.push(
      table(
        'text',
        ['extc (benchmark.js)', 'ops/s', 'mean µs', '±%'],
        cp.extc.map((b) => [b.name, Math.round(b.opsPerSec).toLocaleString('en-US'), f(b.meanUs, 2), f(b.rmePct, 1)]),
        ['l', 'r', 'r', 'r'],
      ),
    );
  }
  if (cp.update_rule && cp.top_1m && cp.daemon_1m) {
    const d = cp.daemon_1m;
    out.push('');
    out.push(
      table(
        'text',
        ['measure', 'value'],
        [
          ['system update rule → first packet under the new rule (median)', `${f(cp.update_rule.command_to_packet_ms, 1)} ms`],
          ['  of which the apply (store read → slot flipped)', `${f(cp.update_rule.apply_ms, 2)} ms`],
          [`top over ${cp.top_1m.keys.toLocaleString('en-US')} keys (in-process)`, `${f(cp.top_1m.top_ms, 0)} ms`],
          [`stats over ${cp.top_1m.keys.toLocaleString('en-US')} keys (in-process)`, `${f(cp.top_1m.stats_ms, 0)} ms`],
          ['`connrate top` CLI, 1M keys (wall clock, Node start included)', `${f(d.cliTopMs, 0)} ms`],
          ['`connrate stats` CLI, 1M keys (wall clock)', `${f(d.cliStatsMs, 0)} ms`],
          ['GET /metrics, 1M keys', `${f(d.metricsScrapeMs, 0)} ms`],
          ['daemon RSS: started / with 1M keys', `${f(d.rssIdleMiB, 0)} / ${f(d.rssWith1MKeysMiB, 0)} MiB`],
          ['bucket map, kernel memory (1.31M entries)', `${f(d.bucketMapMiB, 0)} MiB`],
        ],
        ['l', 'r'],
      ),
    );
  }
  return out.join('\n');
}

// ------------------------------------------------------------------ chart

/** The four compared bars of a group: connrate, the parse reference, then the two packet filters. */
const BARS = ['connrate', 'reference', 'iptables-hashlimit', 'nft-meter'] as const;
const COLORS: Record<(typeof BARS)[number], string> = {
  connrate: '#1f77b4',
  reference: '#9aa5b1',
  'iptables-hashlimit': '#d62728',
  'nft-meter': '#ff7f0e',
};

const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

function niceMax(x: number): number {
  if (!(x > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(x));
  for (const k of [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (k * p >= x) return k * p;
  return 10 * p;
}

const barEngine = (s: ScenarioResult, b: (typeof BARS)[number]): string => (b === 'reference' ? s.reference : b);

/** One panel: the scenarios of one verdict, bars with the rounds' range as whiskers, connrate / reference above each group. */
function panel(scenarios: ScenarioResult[], verdict: Verdict, x0: number, width: number, top: number, height: number): string[] {
  const parts: string[] = [];
  // headroom above the highest whisker for its label
  const max = niceMax(1.1 * Math.max(...scenarios.flatMap((s) => BARS.map((b) => s.spread[barEngine(s, b)]?.max ?? s.mpps[barEngine(s, b) as EngineName] ?? 0))));
  const y = (v: number): number => top + height - (v / max) * height;
  const L = x0 + 44;
  const plotW = width - 54;
  parts.push(`<text x="${L}" y="${top - 24}" font-size="14" font-weight="bold">${verdict === 'drop' ? 'Drop scenarios: connrate drops every packet' : 'Pass scenarios: connrate passes every packet'}</text>`);
  parts.push(`<text x="${L}" y="${top - 8}" fill="#555">Mpps at saturation; grey: ${REFERENCE_FOR[verdict].parse}; whiskers: rounds' min–max</text>`);
  for (let i = 0; i <= 5; i++) {
    const v = (max * i) / 5;
    parts.push(`<line x1="${L}" x2="${L + plotW}" y1="${y(v)}" y2="${y(v)}" stroke="#e5e5e5"/>`);
    parts.push(`<text x="${L - 6}" y="${y(v) + 4}" text-anchor="end" fill="#555">${v.toFixed(max < 2 ? 2 : 1)}</text>`);
  }
  const groupW = plotW / Math.max(1, scenarios.length);
  const barW = (groupW * 0.8) / BARS.length;
  scenarios.forEach((s, gi) => {
    const gx = L + gi * groupW + groupW * 0.1;
    BARS.forEach((b, bi) => {
      const e = barEngine(s, b);
      const v = s.mpps[e as EngineName] ?? 0;
      const sp = s.spread[e];
      const x = gx + bi * barW;
      const cx = x + barW / 2 - 1;
      parts.push(`<rect x="${x.toFixed(1)}" y="${y(v).toFixed(1)}" width="${(barW - 2).toFixed(1)}" height="${(top + height - y(v)).toFixed(1)}" fill="${COLORS[b]}"><title>${esc(`${s.name} / ${e}: ${v.toFixed(3)} Mpps`)}</title></rect>`);
      if (sp && sp.rounds.length > 1) parts.push(`<line x1="${cx.toFixed(1)}" x2="${cx.toFixed(1)}" y1="${y(sp.min).toFixed(1)}" y2="${y(sp.max).toFixed(1)}" stroke="#222"/>`);
      parts.push(`<text x="${cx.toFixed(1)}" y="${(Math.min(y(v), sp ? y(sp.max) : y(v)) - 4).toFixed(1)}" text-anchor="middle" font-size="10">${v >= 10 ? v.toFixed(1) : v.toFixed(2)}</text>`);
    });
    const cx = L + gi * groupW + groupW / 2;
    parts.push(`<text x="${cx.toFixed(1)}" y="${top + height + 16}" text-anchor="middle">${esc(s.name)}</text>`);
    parts.push(`<text x="${cx.toFixed(1)}" y="${top + height + 31}" text-anchor="middle" fill="#1f77b4">${esc(`connrate / ref ${f(s.ratios.connrate_vs_reference.median, 2)}×`)}</text>`);
  });
  parts.push(`<line x1="${L}" x2="${L + plotW}" y1="${top + height}" y2="${top + height}" stroke="#333"/>`);
  return parts;
}

/** Two panels (drop and pass scenarios, each on its own scale) of grouped bars. */
export function svgChart(r: Results): string {
  const drop = r.scenarios.filter((s) => s.verdict === 'drop');
  const pass = r.scenarios.filter((s) => s.verdict === 'pass');
  const W = 1100;
  const H = 480;
  const T = 100;
  const plotH = H - T - 90;
  const share = drop.length && pass.length ? drop.length / (drop.length + pass.length) : drop.length ? 1 : 0;
  const parts: string[] = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  parts.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  parts.push(`<text x="20" y="24" font-size="16" font-weight="bold">connrate against the XDP reference of the same verdict and against iptables/nftables (Mpps, higher is better)</text>`);
  parts.push(`<text x="20" y="42" fill="#555">${esc(`${r.machine.cpu}, ${r.machine.cores} cores, Linux ${r.machine.kernel} — ${r.machine.date.slice(0, 10)} — median of ${String(r.machine.rounds ?? "?")} interleaved rounds; Mpps per second of receive CPU`)}</text>`);
  const leftW = Math.round((W - 20) * share);
  if (drop.length) parts.push(...panel(drop, 'drop', 10, leftW, T, plotH));
  if (pass.length) parts.push(...panel(pass, 'pass', 10 + leftW, W - 20 - leftW, T, plotH));
  const legend = [
    ['connrate', COLORS.connrate],
    ['xdp-drop-parse / xdp-pass-parse (reference)', COLORS.reference],
    ['iptables-hashlimit', COLORS['iptables-hashlimit']],
    ['nft-meter', COLORS['nft-meter']],
  ] as const;
  let lx = 54;
  for (const [name, color] of legend) {
    parts.push(`<rect x="${lx}" y="${H - 26}" width="12" height="12" fill="${color}"/><text x="${lx + 18}" y="${H - 16}">${esc(name)}</text>`);
    lx += 40 + name.length * 7;
  }
  parts.push('</svg>');
  return `${parts.join('\n')}\n`;
}

