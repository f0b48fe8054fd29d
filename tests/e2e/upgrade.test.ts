/**
 * Crashes and upgrades: a newer build over pinned state keeps the
 * state when the layout is compatible, or refuses with a clear message and
 * never half-applies; two daemons started at once never attach twice.
 */
import { rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Appliance, BIN } from '../helpers/appliance.js';
import { buildVariant } from '../helpers/build.js';
import { type ClientRequest, type Testbed, createTestbed, waitFor } from '../helpers/testbed.js';

let tb: Testbed;
let app: Appliance;
let servers: { stop(): Promise<void> };
const variants: string[] = [];

beforeAll(async () => {
  tb = createTestbed();
  app = new Appliance(tb);
  servers = await tb.startServers({ tcp: [443], udp: [1194] });
});
afterEach(async () => app.reset());
afterAll(async () => {
  await servers?.stop();
  await tb?.destroy();
  for (const v of variants) rmSync(dirname(v), { recursive: true, force: true });
});

const tcp = (src: string, count: number): ClientRequest => ({ kind: 'tcp-connect', src, dst: tb.appliance4, port: 443, count });

function progId(): string | undefined {
  return /prog\/xdp id (\d+)/.exec(tb.exec(tb.app, ['ip', '-d', 'link', 'show', tb.appIf]).stdout)?.[1];
}

function variant(edit: (h: string) => string): string {
  const v = buildVariant(edit);
  variants.push(v);
  return v;
}

describe('upgrades over pinned state', () => {
  it('a compatible build is adopted: new program, same maps, state kept', async () => {
    const rebuilt = variant((h) => h.replace('#define CR_CAS_RETRIES 8 ', '#define CR_CAS_RETRIES 16'));
    app.configure({ CONNECTION_RATE_LIMIT_TCP: '20' });
    await app.start();
    expect(await tb.client(tcp(tb.internetClients4[0]!, 6))).toMatchObject({ ok: 5 });
    const before = progId();
    await app.stop();
    const upgraded = tb.spawn(tb.app, [BIN, 'run', '--metrics', 'off'], { env: { CONNRATE_BPF_OBJECT: rebuilt } });
    let log = '';
    upgraded.stdout?.on('data', (d: Buffer) => (log += d.toString()));
    await waitFor(() => log.includes('running on'), 15_000, 'the upgraded daemon');
    expect(log).toContain('adopted the pinned XDP link');
    expect(progId()).not.toBe(before); // the new build's program is in force
    expect(await tb.client(tcp(tb.internetClients4[0]!, 1))).toMatchObject({ ok: 0 }); // the bucket survived
    upgraded.kill('SIGTERM');
    await new Promise((r) => upgraded.on('exit', r));
  });

  it.each([
    ['a field added to the bucket', (h: string) => h.replace('__u64 last_event_ns; /*', '__u64 extra;\n\t__u64 last_event_ns; /*')],
    ['two bucket fields swapped (same sizes)', (h: string) => h.replace(/(\t__u64 tat;[^\n]*\n)(\t__u64 last_event_ns;[^\n]*\n)/, '$2$1')],
  ])('an incompatible build (%s) is refused and the running datapath is untouched', async (_what, edit) => {
    const incompatible = variant(edit);
    app.configure({ CONNECTION_RATE_LIMIT_TCP: '20' });
    await app.start();
    expect(await tb.client(tcp(tb.internetClients4[1]!, 6))).toMatchObject({ ok: 5 });
    const before = progId();
    await app.stop();
    const r = tb.exec(tb.app, [BIN, 'run', '--metrics', 'off'], { env: { CONNRATE_BPF_OBJECT: incompatible } });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/incompatible connrate build .*run "connrate detach"/);
    expect(r.stderr).not.toMatch(/\n\s+at /); // a message, not a stack trace
    expect(progId()).toBe(before);
    expect(await tb.client(tcp(tb.internetClients4[1]!, 1))).toMatchObject({ ok: 0 }); // still enforcing, same state
    const status = tb.exec(tb.net, [BIN, 'status'], { env: { CONNRATE_BPF_OBJECT: incompatible } });
    expect(status.status).toBe(1);
    expect(status.stderr).toMatch(/^connrate: status: the datapath pinned at .* was made by an incompatible connrate build \(ABI fingerprint [0-9a-f]{12}…, this build has [0-9a-f]{12}…\); run "connrate detach" to remove it/);
  });
});

describe('map sizes', () => {
  it('are set at creation, adopted by a restart, and a different size is refused with the way to resize', async () => {
    await app.start(['--metrics', 'off', '--buckets', '4096', '--udp-flows', '2048']);
    const capacity = () => (JSON.parse(app.cli(['stats', '--json']).stdout) as { bucketCapacity: number; flowCapacity: number });
    expect(capacity()).toMatchObject({ bucketCapacity: 4096, flowCapacity: 2048 });
    await app.stop();
    await app.start(); // no size given: the pinned one stays
    expect(capacity()).toMatchObject({ bucketCapacity: 4096, flowCapacity: 2048 });
    await app.stop();
    const before = progId();
    const r = app.cli(['run', '--metrics', 'off', '--buckets', '8192']);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/buckets is pinned .* with 4096 entries, not 8192.*connrate detach/);
    expect(progId()).toBe(before);
    expect(app.cli(['run', '--buckets', '10']).stderr).toMatch(/--buckets must be an integer ≥ 1024/);
  });
});

describe('two daemons at once', () => {
  it('attach once: one runs, the other is refused by the lock', async () => {
    const a = tb.spawn(tb.app, [BIN, 'run', '--metrics', 'off']);
    const b = tb.spawn(tb.app, [BIN, 'run', '--metrics', 'off']);
    const outputs = [a, b].map((c) => {
      const o = { text: '', exited: false, code: null as number | null };
      c.stdout?.on('data', (d: Buffer) => (o.text += d.toString()));
      c.stderr?.on('data', (d: Buffer) => (o.text += d.toString()));
      c.on('exit', (code) => Object.assign(o, { exited: true, code }));
      return o;
    });
    await waitFor(() => outputs.some((o) => o.text.includes('running on')) && outputs.some((o) => o.exited), 15_000, 'one daemon up, one refused').catch((e: Error) => {
      throw new Error(`${e.message}; the two daemons so far: ${JSON.stringify(outputs)}`);
    });
    const refused = outputs.find((o) => o.exited)!;
    expect(refused.code).toBe(1);
    expect(refused.text).toMatch(/^connrate: lock: \S+ is locked by another connrate daemon \(is one already running\?\)$/m);
    expect(tb.exec(tb.app, ['ip', '-d', 'link', 'show', tb.appIf]).stdout.match(/prog\/xdp id/g)).toHaveLength(1);
    for (const c of [a, b]) if (c.exitCode === null) c.kill('SIGTERM');
    await Promise.all([a, b].map((c) => (c.exitCode === null && c.signalCode === null ? new Promise((r) => c.on('exit', r)) : undefined)));
  });
});
