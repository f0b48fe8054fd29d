#!/usr/bin/env node
// `npm test`: vitest over unit, kernel and end-to-end tests, closing with one
// "N passed, N failed" line that CI logs can be read by.
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';

if (process.getuid?.() !== 0) {
  console.error('npm test: run as root — the tests load BPF programs and create network namespaces');
  process.exit(1);
}
mkdirSync('build', { recursive: true });
const report = 'build/vitest-report.json';
const run = spawnSync(
  'npx',
  ['vitest', 'run', '--reporter=default', '--reporter=json', `--outputFile.json=${report}`, ...process.argv.slice(2)],
  { stdio: 'inherit' },
);
let summary = 'no test report';
try {
  const r = JSON.parse(readFileSync(report, 'utf8'));
  const skipped = r.numPendingTests + r.numTodoTests;
  summary = `${r.numPassedTests} passed, ${r.numFailedTests} failed${skipped ? `, ${skipped} skipped` : ''}`;
} catch {
  /* vitest did not get far enough to write a report */
}
console.log(summary);
process.exit(run.status ?? 1);
