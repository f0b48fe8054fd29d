/**
 * npx tsx bench/tables.ts FILE.json [--svg] [--readme README.md]
 *
 * The datapath tables of a bench run as Markdown, from its JSON. --svg also
 * rewrites FILE.svg (the chart); --readme puts the tables into that file
 * between the lines `<!-- bench-tables:begin -->` and `<!-- bench-tables:end -->`
 * instead of printing them (how bench/results/README.md is refreshed). No root,
 * no kernel: reads the JSON only.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { basename } from 'node:path';
import { parseArgs } from 'node:util';
import { datapathTables, svgChart, type Results } from './report.js';

const BEGIN = '<!-- bench-tables:begin -->';
const END = '<!-- bench-tables:end -->';

const { values, positionals } = parseArgs({ options: { svg: { type: 'boolean', default: false }, readme: { type: 'string' } }, allowPositionals: true });
const file = positionals[0];
if (!file || positionals.length !== 1) {
  process.stderr.write('usage: npx tsx bench/tables.ts FILE.json [--svg] [--readme README.md]\n');
  process.exit(2);
}
let r: Results;
try {
  r = JSON.parse(readFileSync(file, 'utf8')) as Results;
} catch (e) {
  process.stderr.write(`bench/tables.ts: ${file}: ${(e as Error).message}\n`);
  process.exit(1);
}
if (!Array.isArray(r.scenarios) || !r.scenarios.every((s) => s.verdict && s.spread && s.ratios?.connrate_vs_reference)) {
  process.stderr.write(`bench/tables.ts: ${file} is not a results file of this harness (scenarios need verdict, spread and ratios.connrate_vs_reference)\n`);
  process.exit(1);
}
const m = r.machine;
const text =
  `Run: ${m.date}, ${m.cpu}, ${m.cores} cores, Linux ${m.kernel}; ${String(m.rounds)} rounds × ${String(m.seconds_per_measurement)} s; ` +
  `load average ${String(m.load_average_at_start)} at start, ${String(m.load_average_at_end)} at end; ${String(m.elapsed_s)} s in all ` +
  `([${basename(file)}](${basename(file)})).\n\n${datapathTables(r, 'md')}`;
if (values.readme) {
  const readme = readFileSync(values.readme, 'utf8');
  const a = readme.indexOf(BEGIN);
  const b = readme.indexOf(END);
  if (a < 0 || b < a) {
    process.stderr.write(`bench/tables.ts: ${values.readme} has no ${BEGIN} … ${END} block\n`);
    process.exit(1);
  }
  writeFileSync(values.readme, `${readme.slice(0, a + BEGIN.length)}\n${text}${readme.slice(b)}`);
  process.stderr.write(`updated ${values.readme}\n`);
} else {
  process.stdout.write(text);
}
if (values.svg) {
  const svg = file.replace(/\.json$/i, '') + '.svg';
  writeFileSync(svg, svgChart(r));
  process.stderr.write(`wrote ${svg}\n`);
}
