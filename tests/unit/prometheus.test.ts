/**
 * The shipped Prometheus alert rules pass `promtool check rules`, and fire
 * exactly as `promtool test rules` expects on synthetic series (the daemon
 * down, sources limited, events lost, a table near capacity, datapath errors).
 * The Grafana dashboard is valid JSON whose panels all query Prometheus.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const DIR = fileURLToPath(new URL('../../packaging/prometheus/', import.meta.url));
const promtool = (...args: string[]): string => execFileSync('promtool', args, { cwd: DIR, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

describe('Prometheus rules', () => {
  it('pass promtool check rules', () => {
    expect(promtool('check', 'rules', 'connrate.rules.yml')).toContain('SUCCESS: 6 rules found');
  });

  it('fire as expected on synthetic series (promtool test rules)', () => {
    expect(promtool('test', 'rules', 'connrate.rules.test.yml')).toMatch(/Unit Testing: {2}connrate\.rules\.test\.yml\n {2}SUCCESS/);
  });

  it('have a unit test for every alert', () => {
    const rules = [...readFileSync(`${DIR}/connrate.rules.yml`, 'utf8').matchAll(/- alert: (\w+)/g)].map((m) => m[1]);
    const tested = new Set([...readFileSync(`${DIR}/connrate.rules.test.yml`, 'utf8').matchAll(/alertname: (\w+)/g)].map((m) => m[1]));
    expect(rules.filter((r) => !tested.has(r))).toEqual([]);
  });
});

describe('Grafana dashboard', () => {
  it('is JSON whose every panel queries Prometheus', () => {
    const d = JSON.parse(readFileSync(new URL('../../packaging/grafana/connrate.json', import.meta.url), 'utf8')) as {
      uid: string;
      panels: { type: string; title: string; datasource?: { type: string }; targets?: { expr: string }[] }[];
    };
    expect(d.uid).toBe('connrate');
    const panels = d.panels.filter((p) => p.type !== 'row');
    expect(panels.length).toBeGreaterThan(8);
    for (const p of panels) {
      expect(p.datasource?.type, p.title).toBe('prometheus');
      expect(p.targets?.length, p.title).toBeGreaterThan(0);
      for (const t of p.targets ?? []) expect(t.expr, p.title).toMatch(/connrate_|process_|up\{/);
    }
  });

  it('has only valid PromQL (checked by promtool as recording rules, Grafana variables filled in)', () => {
    const text = readFileSync(new URL('../../packaging/grafana/connrate.json', import.meta.url), 'utf8');
    const exprs = [...text.matchAll(/"expr": ("(?:[^"\\]|\\.)*")/g)].map((m) => JSON.parse(m[1]!) as string);
    expect(exprs.length).toBeGreaterThan(10);
    const filled = exprs.map((e) => e.replaceAll('$__rate_interval', '5m').replaceAll('$job', 'connrate').replaceAll('$instance', '.*'));
    const dir = mkdtempSync(join(tmpdir(), 'connrate-dashboard-'));
    try {
      const rules = { groups: [{ name: 'dashboard', rules: filled.map((expr, i) => ({ record: `dashboard:expr_${i}`, expr })) }] };
      writeFileSync(join(dir, 'dashboard.rules.json'), JSON.stringify(rules)); // YAML is a superset of JSON
      expect(promtool('check', 'rules', join(dir, 'dashboard.rules.json'))).toContain(`SUCCESS: ${filled.length} rules found`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
