/**
 * What admins see, end to end: counters, metrics and log lines equal
 * the exact traffic of a scripted scene; top stays ordered under traffic.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Appliance, BIN } from '../helpers/appliance.js';
import { type ClientRequest, type Testbed, createTestbed } from '../helpers/testbed.js';

let tb: Testbed;
let app: Appliance;
let servers: { stop(): Promise<void> };
const METRICS = '127.0.0.1:9470';
const STARTED = Date.now();

beforeAll(async () => {
  tb = createTestbed();
  app = new Appliance(tb);
  servers = await tb.startServers({ tcp: [22, 443], udp: [1194] });
  app.configure({
    CONNECTION_RATE_LIMIT_TCP: '20',
    CONNECTION_RATE_LIMIT_TCP_PORTS: '[ 443 ]',
    CONNECTION_RATE_LIMIT_UDP_PORTS: '[ 1194 ]',
  });
  await app.start(['--metrics', METRICS]);
});
afterAll(async () => {
  await app?.reset();
  await servers?.stop();
  await tb?.destroy();
});

const A = () => tb.internetClients4[0]!;
const B = () => tb.internetClients4[1]!;
const tcp = (src: string, port: number, count: number): ClientRequest => ({ kind: 'tcp-connect', src, dst: tb.appliance4, port, count });
const udpNew = (src: string, port: number, count: number): ClientRequest => ({ kind: 'udp-new', src, dst: tb.appliance4, port, count, timeoutMs: 300 });

/** GET a path of the metrics endpoint from inside the appliance namespace. */
function http(path: string, method = 'GET'): { status: number; body: string } {
  const script = `fetch('http://${METRICS}${path}',{method:'${method}'}).then(async r=>process.stdout.write(JSON.stringify({status:r.status,body:await r.text()})))`;
  const r = tb.exec(tb.app, [process.execPath, '-e', script]);
  if (r.status !== 0) throw new Error(r.stderr);
  return JSON.parse(r.stdout) as { status: number; body: string };
}

function metric(body: string, name: string, labels: Record<string, string>): number | undefined {
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  for (const line of body.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (want.every((w) => line.includes(w))) return Number(line.split(' ').pop());
  }
  return undefined;
}

interface StatsJson {
  counters: Record<string, number>;
  ports: { proto: string; port: number; allowed: number; dropped: number; wouldDrop: number }[];
}

describe('a scripted scene', () => {
  it('is counted exactly: per port, per outcome, in stats, metrics and the log', async () => {
    expect(await tb.client(tcp(A(), 443, 8))).toMatchObject({ ok: 5, failed: 3 });
    expect(await tb.client(udpNew(A(), 1194, 8))).toMatchObject({ ok: 5, failed: 3 });
    expect(await tb.client(tcp(B(), 443, 3))).toMatchObject({ ok: 3 });
    expect(await tb.client(tcp(tb.internalClient4, 443, 4))).toMatchObject({ ok: 4 });
    expect(await tb.client(tcp(A(), 22, 2))).toMatchObject({ ok: 2 });

    const r = app.cli(['stats', '--json'], tb.net);
    expect(r.status, r.stderr).toBe(0);
    const s = JSON.parse(r.stdout) as StatsJson;
    expect(s.ports).toEqual([
      { proto: 'tcp', port: 443, allowed: 8, dropped: 3, wouldDrop: 0 },
      { proto: 'udp', port: 1194, allowed: 5, dropped: 3, wouldDrop: 0 },
    ]);
    const c = s.counters;
    expect(c).toMatchObject({ new_allowed: 13, new_dropped: 6, new_would_drop: 0, exempt: 4, unparsable: 0 });
    expect(c.seen).toBe(c.monitored! + c.not_monitored! + c.unparsable!);
    expect(c.monitored).toBe(c.established! + c.exempt! + c.new_allowed! + c.new_dropped! + c.new_would_drop!);

    const m = http('/metrics');
    expect(m.status).toBe(200);
    expect(metric(m.body, 'connrate_new_connections_total', { proto: 'tcp', port: '443', verdict: 'allowed' })).toBe(8);
    expect(metric(m.body, 'connrate_new_connections_total', { proto: 'tcp', port: '443', verdict: 'dropped' })).toBe(3);
    expect(metric(m.body, 'connrate_new_connections_total', { proto: 'udp', port: '1194', verdict: 'dropped' })).toBe(3);
    expect(metric(m.body, 'connrate_new_connections_total', { proto: 'tcp', port: '22' })).toBeUndefined(); // never monitored
    expect(metric(m.body, 'connrate_packets_total', { result: 'exempt' })).toBe(4);
    expect(metric(m.body, 'connrate_packets_total', { result: 'new_dropped' })).toBe(6);
    // the results partition the packets seen: no "seen" or "monitored" beside their parts, no error counts
    const results = m.body.split('\n').filter((l) => l.startsWith('connrate_packets_total{')).map((l) => /result="(\w+)"/.exec(l)?.[1]);
    expect(results.sort()).toEqual(['established', 'exempt', 'new_allowed', 'new_dropped', 'new_would_drop', 'not_monitored', 'unparsable']);
    expect(results.reduce((sum, r) => sum + metric(m.body, 'connrate_packets_total', { result: r! })!, 0)).toBeGreaterThanOrEqual(c.seen!);
    for (const kind of ['cas_exhausted', 'flow_insert_fail', 'port_stats_full']) expect(metric(m.body, 'connrate_errors_total', { kind })).toBe(0);
    expect(metric(m.body, 'connrate_bucket_fallback_total', {})).toBe(0);
    expect(metric(m.body, 'connrate_events_lost_total', {})).toBe(0);
    expect(m.body).toMatch(/^connrate_build_info\{version="\d+\.\d+\.\d+[^"]*",abi="[0-9a-f]{12}",node="\d+\.\d+\.\d+"\} 1$/m);
    expect(metric(m.body, 'connrate_config_generation', {})).toBe(1);
    const appliedAt = metric(m.body, 'connrate_config_last_apply_timestamp_seconds', {})!;
    expect(appliedAt).toBeGreaterThan(STARTED / 1000 - 1);
    expect(appliedAt).toBeLessThanOrEqual(Date.now() / 1000);
    expect(metric(m.body, 'process_cpu_seconds_total', {})).toBeGreaterThan(0);
    expect(metric(m.body, 'connrate_tracked_buckets', {})).toBe(3); // A/443, A/1194, B/443
    expect(metric(m.body, 'connrate_map_capacity', { map: 'buckets' })).toBe(262144);
    expect(metric(m.body, 'connrate_info', { interface: tb.appIf, xdp_mode: 'native' })).toBe(1);

    const lines = app.log.split('\n').filter((l) => l.includes('RATE-LIMIT'));
    expect(lines.sort()).toEqual([
      `connrate: RATE-LIMIT DROP src=${A()} dport=1194 proto=udp rate=20/min burst=5`,
      `connrate: RATE-LIMIT DROP src=${A()} dport=443 proto=tcp rate=20/min burst=5`,
    ]);
  });

  it('stats as text: a row per configured port (nothing to fold into "other"), the same with --all-ports', () => {
    for (const args of [['stats'], ['stats', '--all-ports']]) {
      const r = app.cli(args);
      expect(r.status, r.stderr).toBe(0);
      const rows = r.stdout.split('\n').filter((l) => /^(proto|tcp|udp|total)\b/.test(l)).map((l) => l.split(/\s{2,}/));
      expect(rows, args.join(' ')).toEqual([
        ['proto', 'port', 'allowed', 'dropped', 'would drop'],
        ['tcp', '443', '8', '3', '0'],
        ['udp', '1194', '5', '3', '0'],
        ['total', '13', '6', '0'],
      ]);
    }
  });

  it('the datapath commands end quietly when the reader closes the pipe early', async () => {
    for (const args of [['stats'], ['stats', '--json'], ['top'], ['status']]) {
      const child = tb.spawn(tb.app, [BIN, ...args]);
      child.stdout!.destroy(); // the reader is gone before connrate writes
      let stderr = '';
      child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
      const status = await new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
      expect({ status, stderr }, args.join(' ')).toEqual({ status: 0, stderr: '' });
    }
  });

  it('logs a limited key once per minute however often it is dropped', async () => {
    const before = app.log.split('\n').filter((l) => l.includes('RATE-LIMIT')).length;
    const r = await tb.client(tcp(A(), 443, 10)); // tokens come back meanwhile (one per 3 s), but never more than the burst of 5
    expect(r.failed).toBeGreaterThanOrEqual(5);
    expect(app.log.split('\n').filter((l) => l.includes('RATE-LIMIT')).length).toBe(before);
  });

  it('anonymizes log sources when asked; the metrics show the new configuration and when it was applied', async () => {
    app.configure({ CONNECTION_RATE_LIMIT_LOG_ANONYMIZE: '1' });
    const before = Date.now() / 1000;
    expect(app.updateRule().status).toBe(0);
    const m = http('/metrics').body;
    expect(metric(m, 'connrate_config_generation', {})).toBe(2);
    expect(metric(m, 'connrate_config_last_apply_timestamp_seconds', {})).toBeGreaterThanOrEqual(Math.floor(before));
    expect(await tb.client(tcp(tb.internetClients4[2]!, 443, 7))).toMatchObject({ ok: 5 });
    await new Promise((r) => setTimeout(r, 200));
    expect(app.log).toContain('connrate: RATE-LIMIT DROP src=198.19.1.0 dport=443 proto=tcp rate=20/min burst=5');
    expect(app.log).not.toContain(`src=${tb.internetClients4[2]} `);
  });

  it('keeps counters and metrics through a daemon crash and restart', async () => {
    const before = http('/metrics').body;
    await app.stop('SIGKILL');
    await app.start(['--metrics', METRICS]);
    const after = http('/metrics').body;
    for (const verdict of ['allowed', 'dropped']) {
      expect(metric(after, 'connrate_new_connections_total', { proto: 'tcp', port: '443', verdict })).toBe(
        metric(before, 'connrate_new_connections_total', { proto: 'tcp', port: '443', verdict }),
      );
    }
  });
});

describe('top', () => {
  it('lists the most limited first, and stays ordered while packets arrive', async () => {
    const hammer = tb.client(udpNew(tb.internetClients4[3]!, 1194, 30));
    let previous = new Map<string, number>();
    for (let i = 0; i < 5; i++) {
      const r = app.cli(['top', '--json'], tb.net);
      expect(r.status, r.stderr).toBe(0);
      const rows = JSON.parse(r.stdout) as { src: string; dport: number; proto: string; drops: number }[];
      const drops = rows.map((x) => x.drops);
      expect(drops).toEqual([...drops].sort((a, b) => b - a));
      for (const x of rows) {
        const k = `${x.src}/${x.dport}/${x.proto}`;
        expect(x.drops).toBeGreaterThanOrEqual(previous.get(k) ?? 0);
      }
      previous = new Map(rows.map((x) => [`${x.src}/${x.dport}/${x.proto}`, x.drops]));
      await new Promise((r) => setTimeout(r, 300));
    }
    await hammer;
    const text = app.cli(['top', '--limit', '2']).stdout.trim().split('\n');
    expect(text[0]).toMatch(/^source\s+port\s+proto\s+drops\s+last drop\s+tokens$/);
    expect(text).toHaveLength(4); // header, rule, 2 rows
  });
});

describe('the metrics endpoint', () => {
  it('listens on loopback only by default, serves GET /metrics and 404s everything else', () => {
    expect(http('/').status).toBe(404);
    expect(http('/metrics/../config').status).toBe(404);
    expect(http('/metrics', 'POST').status).toBe(405);
    const ss = tb.exec(tb.app, ['ss', '-Hltn', 'sport', '= :9470']).stdout;
    expect(ss).toContain('127.0.0.1:9470');
    expect(ss).not.toContain('0.0.0.0:9470');
  });

  it('refuses a bad --metrics value before touching anything', () => {
    const r = app.cli(['run', '--metrics', 'localhost']);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('--metrics "localhost"');
  });
});
