/**
 * The results: the JSON other tools read (shape fixed by the issue), the
 * aligned table on stdout, and an SVG chart of Mpps by scenario and engine.
 */
import type { ControlPlane } from './control-plane.js';
import type { Cost } from './cost.js';
import { ENGINE_NAMES, type EngineName } from './engines.js';

export interface ScenarioResult {
  name: string;
  mpps: Record<EngineName, number>;
  ns_per_packet: { 'xdp-noop': number; connrate: number };
  // extras (allowed by the shape): how to read the figures above
  what: string;
  generator: string;
  offered_mpps: Record<string, number>;
  reference_mpps?: { 'xdp-drop': number };
  harness_ns_per_packet: number;
  connrate_verdicts?: Record<string, number>;
  ratios: { connrate_vs_noop: number; connrate_vs_iptables: number };
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

const round = (x: number, d: number): number => (Number.isFinite(x) ? Math.round(x * 10 ** d) / 10 ** d : x);

/** Numbers rounded for the file (Mpps to 4 decimals, ns to 1). */
export function toJson(r: Results): string {
  return `${JSON.stringify(
    r,
    (k, v: unknown) => (typeof v === 'number' && !Number.isInteger(v) ? round(v, k.endsWith('_ns') || k.endsWith('ms') || k.endsWith('MiB') ? 2 : 4) : v),
    2,
  )}\n`;
}

function table(head: string[], rows: string[][], align: ('l' | 'r')[]): string {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string => cells.map((c, i) => (align[i] === 'l' ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  ').trimEnd();
  return [line(head), w.map((n) => '-'.repeat(n)).join('  '), ...rows.map(line)].join('\n');
}

const f = (x: number | undefined, d = 3): string => (x === undefined || !Number.isFinite(x) ? '—' : x.toFixed(d));

export function textReport(r: Results): string {
  const out: string[] = [];
  const m = r.machine;
  out.push(`connrate bench — ${m.cpu}, ${m.cores} cores, Linux ${m.kernel}, node ${m.node}, ${m.date}`);
  out.push(`generator: ${String(m.generator)}; ${String(m.topology ?? '')}`);
  out.push('');
  out.push('Mpps handled by the engine (its own counters), same traffic for every engine:');
  out.push(
    table(
      ['scenario', ...ENGINE_NAMES, 'xdp-drop*', 'offered*', 'cr/noop', 'cr/iptables'],
      r.scenarios.map((s) => [
        s.name,
        ...ENGINE_NAMES.map((e) => f(s.mpps[e])),
        f(s.reference_mpps?.['xdp-drop']),
        f(Math.max(...Object.values(s.offered_mpps))),
        `${f(s.ratios.connrate_vs_noop, 2)}×`,
        `${f(s.ratios.connrate_vs_iptables, 2)}×`,
      ]),
      ['l', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r'],
    ),
  );
  out.push('  * xdp-drop: an XDP program that counts and drops (the fastest refusal); offered: what the generator transmitted.');
  out.push('');
  out.push('ns/packet, BPF_PROG_TEST_RUN with repeat (the scenario\'s rewrite + a tail call, included in both; "harness" alone):');
  out.push(
    table(
      ['scenario', 'xdp-noop', 'connrate', 'harness', 'connrate − noop'],
      r.scenarios.map((s) => [s.name, f(s.ns_per_packet['xdp-noop'], 1), f(s.ns_per_packet.connrate, 1), f(s.harness_ns_per_packet, 1), f(s.ns_per_packet.connrate - s.ns_per_packet['xdp-noop'], 1)]),
      ['l', 'r', 'r', 'r', 'r'],
    ),
  );
  const notes = r.scenarios.flatMap((s) => (s.notes ?? []).map((n) => `  ${s.name}: ${n}`));
  if (notes.length) out.push('', 'notes:', ...notes);
  const cp = r.control_plane as Partial<ControlPlane>;
  if (cp.extc) {
    out.push('', 'Control plane:');
    out.push(
      table(
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

const COLORS: Record<EngineName, string> = {
  'xdp-noop': '#9aa5b1',
  connrate: '#1f77b4',
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

/** Grouped bars: Mpps by scenario (groups) and engine (bars). */
export function svgChart(r: Results): string {
  const W = 960;
  const H = 460;
  const L = 60;
  const R = 20;
  const T = 64;
  const B = 70;
  const plotW = W - L - R;
  const plotH = H - T - B;
  const max = niceMax(Math.max(...r.scenarios.flatMap((s) => ENGINE_NAMES.map((e) => s.mpps[e] ?? 0))));
  const y = (v: number): number => T + plotH - (v / max) * plotH;
  const groupW = plotW / Math.max(1, r.scenarios.length);
  const barW = (groupW * 0.8) / ENGINE_NAMES.length;
  const parts: string[] = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  parts.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  parts.push(`<text x="${L}" y="22" font-size="16" font-weight="bold">Mpps by scenario and engine (higher is better)</text>`);
  parts.push(`<text x="${L}" y="40" fill="#555">${esc(`${r.machine.cpu}, ${r.machine.cores} cores, Linux ${r.machine.kernel} — ${r.machine.date.slice(0, 10)} — generator: ${String(r.machine.generator)}`)}</text>`);
  for (let i = 0; i <= 5; i++) {
    const v = (max * i) / 5;
    parts.push(`<line x1="${L}" x2="${W - R}" y1="${y(v)}" y2="${y(v)}" stroke="#e5e5e5"/>`);
    parts.push(`<text x="${L - 6}" y="${y(v) + 4}" text-anchor="end" fill="#555">${v.toFixed(max < 2 ? 2 : 1)}</text>`);
  }
  parts.push(`<text x="16" y="${T + plotH / 2}" transform="rotate(-90 16 ${T + plotH / 2})" text-anchor="middle" fill="#555">Mpps</text>`);
  r.scenarios.forEach((s, gi) => {
    const gx = L + gi * groupW + groupW * 0.1;
    ENGINE_NAMES.forEach((e, bi) => {
      const v = s.mpps[e] ?? 0;
      const x = gx + bi * barW;
      parts.push(`<rect x="${x.toFixed(1)}" y="${y(v).toFixed(1)}" width="${(barW - 2).toFixed(1)}" height="${(T + plotH - y(v)).toFixed(1)}" fill="${COLORS[e]}"><title>${esc(`${s.name} / ${e}: ${v.toFixed(3)} Mpps`)}</title></rect>`);
      parts.push(`<text x="${(x + barW / 2 - 1).toFixed(1)}" y="${(y(v) - 4).toFixed(1)}" text-anchor="middle" font-size="10">${v >= 10 ? v.toFixed(1) : v.toFixed(2)}</text>`);
    });
    parts.push(`<text x="${(L + gi * groupW + groupW / 2).toFixed(1)}" y="${T + plotH + 18}" text-anchor="middle">${esc(s.name)}</text>`);
  });
  parts.push(`<line x1="${L}" x2="${W - R}" y1="${T + plotH}" y2="${T + plotH}" stroke="#333"/>`);
  ENGINE_NAMES.forEach((e, i) => {
    const x = L + i * 170;
    parts.push(`<rect x="${x}" y="${H - 30}" width="12" height="12" fill="${COLORS[e]}"/><text x="${x + 18}" y="${H - 20}">${e}</text>`);
  });
  parts.push('</svg>');
  return `${parts.join('\n')}\n`;
}

export function ratios(mpps: Record<EngineName, number>): ScenarioResult['ratios'] {
  return {
    connrate_vs_noop: mpps.connrate / mpps['xdp-noop'],
    connrate_vs_iptables: mpps.connrate / mpps['iptables-hashlimit'],
  };
}

export type { Cost };
