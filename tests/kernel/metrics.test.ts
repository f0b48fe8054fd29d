/**
 * The Prometheus metrics of a real datapath (BPF_PROG_TEST_RUN, test clock):
 * connrate_packets_total partitions the packets seen, errors and losses are
 * metrics of their own, per-port series stay bounded and only grow, and every
 * metric the shipped dashboard and alert rules use exists.
 */
import { readFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { COUNTER_EXPORT, ConnrateMetrics, PortSeries, portRows } from '../../src/control/metrics.js';
import type { PortCounters } from '../../src/control/queries.js';
import { APPLIANCE4, type Bench, CLIENT4, CLIENT4B, FOREIGN4, openBench, syn, udp } from './harness.js';

type Sample = { name: string; labels: Record<string, string>; value: number };

function parse(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    const m = /^([a-z_:]+)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) continue;
    const labels = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1]!, x[2]!]));
    out.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return out;
}
const series = (s: Sample[], name: string): Sample[] => s.filter((x) => x.name === name);
const sum = (s: Sample[]): number => s.reduce((a, x) => a + x.value, 0);

let bench: Bench;
afterAll(() => bench?.close());
const APPLIED_AT = 1_700_000_000_123;

describe('metrics of a real datapath', () => {
  let metrics: ConnrateMetrics;

  it('partition the packets seen: the results sum to every packet, errors and losses apart', async () => {
    bench = openBench({ tcp: { rate: 20, ports: [] }, udp: { rate: 20, ports: [53] }, exempt: [`${CLIENT4B}/32`] });
    metrics = new ConnrateMetrics({ dp: bench.dp, attachments: () => [{ ifname: 'eth0', mode: 'native' }], appliedAt: () => APPLIED_AT }, { topPorts: 3 });
    // port 2000+i gets i+1 new connections: 5 allowed (the burst), the rest dropped
    for (let i = 0; i < 30; i++) for (let j = 0; j <= i; j++) bench.send(syn(CLIENT4, 2000 + i, 30000 + j));
    for (let j = 0; j < 7; j++) bench.send(udp(CLIENT4, 53, 30000 + j));
    bench.send(udp(CLIENT4, 54)); // UDP port not listed: not monitored
    bench.send({ ...syn(CLIENT4, 443), syn: false, ack: true }); // established
    bench.send(syn(CLIENT4B, 443)); // exempt
    bench.send({ ...syn(CLIENT4, 443), dst: FOREIGN4 }); // not for the appliance
    bench.sendRaw(Buffer.alloc(20)); // unparsable
    const c = bench.dp.counters();
    const s = parse(await metrics.scrape());

    const packets = series(s, 'connrate_packets_total');
    expect(packets.map((x) => x.labels.result).sort()).toEqual(['established', 'exempt', 'new_allowed', 'new_dropped', 'new_would_drop', 'not_monitored', 'unparsable']);
    expect(sum(packets)).toBe(Number(c.seen));
    for (const x of packets) expect(x.value, x.labels.result).toBe(Number(c[x.labels.result as keyof typeof c]));
    const tcpDropped = Array.from({ length: 30 }, (_, i) => Math.max(0, i + 1 - 5)).reduce((a, b) => a + b, 0);
    expect(packets.find((x) => x.labels.result === 'new_dropped')?.value).toBe(tcpDropped + 2);
    expect(packets.find((x) => x.labels.result === 'exempt')?.value).toBe(1);
    expect(packets.find((x) => x.labels.result === 'established')?.value).toBe(1);

    // every other counter is in the metric COUNTER_EXPORT gives it, with the datapath's value
    const placed = (metric: string): string[] => Object.entries(COUNTER_EXPORT).filter(([, how]) => how.metric === metric).map(([name]) => name).sort();
    expect(placed('errors')).toContain('cas_exhausted');
    expect(series(s, 'connrate_errors_total').map((x) => [x.labels.kind, x.value]).sort()).toEqual(placed('errors').map((k) => [k, Number(c[k as keyof typeof c])]));
    expect(placed('not_monitored_reason')).toEqual(['fragment', 'ipv6_ext_limit', 'no_config']);
    expect(series(s, 'connrate_not_monitored_packets_total').map((x) => [x.labels.reason, x.value]).sort()).toEqual(placed('not_monitored_reason').map((k) => [k, Number(c[k as keyof typeof c])]));
    for (const [counter, how] of Object.entries(COUNTER_EXPORT)) {
      if (how.metric === 'own') expect(series(s, how.name), how.name).toEqual([{ name: how.name, labels: {}, value: Number(c[counter as keyof typeof c]) }]);
    }
    expect(series(s, 'connrate_events_lost_total')).toHaveLength(1);
  });

  it('name the configured ports and the busiest others; the rest add up in port="other"', async () => {
    const s = parse(await metrics.scrape());
    const conns = series(s, 'connrate_new_connections_total');
    const ports = (proto: string): string[] => [...new Set(conns.filter((x) => x.labels.proto === proto).map((x) => x.labels.port!))].sort();
    expect(ports('tcp')).toEqual(['2027', '2028', '2029', 'other']); // the 3 busiest of 30, no port configured
    expect(ports('udp')).toEqual(['53']); // configured
    const other = (verdict: string): number | undefined => conns.find((x) => x.labels.proto === 'tcp' && x.labels.port === 'other' && x.labels.verdict === verdict)?.value;
    expect(other('allowed')).toBe(27 * 5 - 10); // ports 2000..2026: 1+2+3+4 then 5 each
    // nothing is lost: the series add up to the packet counts
    for (const [verdict, result] of [['allowed', 'new_allowed'], ['dropped', 'new_dropped'], ['would_drop', 'new_would_drop']]) {
      expect(sum(conns.filter((x) => x.labels.verdict === verdict)), verdict).toBe(series(s, 'connrate_packets_total').find((x) => x.labels.result === result)?.value);
    }
  });

  it('keep the named ports named, so every series only grows', async () => {
    const before = parse(await metrics.scrape());
    for (let j = 0; j < 40; j++) bench.send(syn(CLIENT4, 2000, 31000 + j)); // now the busiest port, but 3 others are named already
    const after = parse(await metrics.scrape());
    const key = (x: Sample): string => `${x.name}${JSON.stringify(x.labels)}`;
    const now = new Map(after.map((x) => [key(x), x.value]));
    for (const x of series(before, 'connrate_new_connections_total')) expect(now.get(key(x)), key(x)).toBeGreaterThanOrEqual(x.value);
    expect(series(after, 'connrate_new_connections_total').some((x) => x.labels.port === '2000')).toBe(false);
  });

  it('say which build runs, which configuration is in force since when, and how the process does', async () => {
    const s = parse(await metrics.scrape());
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
    const info = series(s, 'connrate_build_info');
    expect(info).toHaveLength(1);
    expect(info[0]!.labels).toEqual({ version: pkg.version, abi: bench.dp.abiFingerprint()!.slice(0, 12), node: process.versions.node });
    expect(info[0]!.labels.abi).toMatch(/^[0-9a-f]{12}$/);
    expect(series(s, 'connrate_config_generation')[0]?.value).toBe(1);
    expect(series(s, 'connrate_config_last_apply_timestamp_seconds')[0]?.value).toBe(APPLIED_AT / 1000);
    expect(series(s, 'connrate_info')[0]?.labels).toEqual({ interface: 'eth0', xdp_mode: 'native' });
    for (const name of ['process_cpu_seconds_total', 'process_start_time_seconds', 'process_resident_memory_bytes', 'nodejs_eventloop_lag_seconds']) {
      expect(series(s, name), name).toHaveLength(1);
    }
  });

  it('include every metric the Grafana dashboard and the Prometheus rules use', async () => {
    const exported = new Set(parse(await metrics.scrape()).map((x) => x.name));
    for (const file of ['../../packaging/grafana/connrate.json', '../../packaging/prometheus/connrate.rules.yml']) {
      const text = readFileSync(new URL(file, import.meta.url), 'utf8');
      const used = new Set([...text.matchAll(/\b((?:connrate|process|nodejs)_[a-z_]+)\b/g)].map((m) => m[1]!));
      expect(used.size, file).toBeGreaterThan(3);
      for (const name of used) expect(exported.has(name), `${file}: ${name}`).toBe(true);
    }
  });
});

describe('per-port series', () => {
  const port = (p: number, allowed: number, dropped = 0): PortCounters => ({ proto: 'udp', port: p, allowed: BigInt(allowed), dropped: BigInt(dropped), wouldDrop: 0n });
  const value = (rows: ReturnType<PortSeries['series']>, p: string, verdict = 'allowed'): bigint | undefined => rows.find(([, q, v]) => q === p && v === verdict)?.[3];

  it('carry what a port had counted under "other" when it gets a series of its own', () => {
    const ps = new PortSeries(0);
    let rows = ps.series([port(53, 7), port(54, 3)], { tcp: [], udp: [] });
    expect(value(rows, 'other')).toBe(10n);
    rows = ps.series([port(53, 9), port(54, 3)], { tcp: [], udp: [53] }); // 53 is configured now
    expect(value(rows, '53')).toBe(9n);
    expect(value(rows, 'other')).toBe(10n); // 3 of port 54, and the 7 port 53 had counted there
    rows = ps.series([port(53, 9), port(54, 4)], { tcp: [], udp: [] }); // configured no more: it stays named
    expect(value(rows, '53')).toBe(9n);
    expect(value(rows, 'other')).toBe(11n);
  });

  it('give `connrate stats` its rows: configured ports, the busiest others, then "other" per protocol', () => {
    const tcp = (p: number, allowed: number): PortCounters => ({ ...port(p, allowed), proto: 'tcp' });
    const ports = [tcp(22, 1), tcp(80, 50), tcp(443, 2), tcp(8080, 9), port(53, 30, 4), port(123, 1), port(1194, 5)];
    const rows = portRows(new PortSeries(2), ports, { tcp: [443], udp: [1194] });
    expect(rows.map((r) => `${r.proto}/${r.port}:${r.allowed}/${r.dropped}`)).toEqual([
      'tcp/80:50/0', // the busiest others: tcp/80 (50) and udp/53 (34)
      'tcp/443:2/0', // configured
      'tcp/other:10/0', // 22 and 8080
      'udp/53:30/4',
      'udp/1194:5/0', // configured
      'udp/other:1/0', // 123
    ]);
    // the rows add up to every port
    const sum = (xs: readonly { allowed: bigint; dropped: bigint }[]): bigint => xs.reduce((n, r) => n + r.allowed + r.dropped, 0n);
    expect(sum(rows)).toBe(sum(ports));
    // nothing to fold: no "other" row
    expect(portRows(new PortSeries(10), ports, { tcp: [], udp: [] }).map((r) => r.port)).toEqual(['22', '80', '443', '8080', '53', '123', '1194']);
  });
});
