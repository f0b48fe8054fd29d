/**
 * The control plane end to end: the real daemon on the testbed,
 * real TCP/UDP clients on the Internet side, every CLI command in its own
 * `ip netns exec`.
 */
import { existsSync, readFileSync } from 'node:fs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Appliance } from '../helpers/appliance.js';
import { type ClientRequest, type Testbed, createTestbed } from '../helpers/testbed.js';

let tb: Testbed;
let app: Appliance;
let servers: { stop(): Promise<void> };

beforeAll(async () => {
  tb = createTestbed();
  app = new Appliance(tb);
  servers = await tb.startServers({ tcp: [22, 443, 11115], udp: [53, 1194, 1195] });
});
afterEach(async () => app.reset());
afterAll(async () => {
  await servers?.stop();
  await tb?.destroy();
});

const A = () => tb.internetClients4[0]!;
const B = () => tb.internetClients4[1]!;

function tcp(src: string, port: number, count: number): ClientRequest {
  return { kind: 'tcp-connect', src, dst: tb.appliance4, port, count };
}
function udpNew(src: string, port: number, count: number): ClientRequest {
  return { kind: 'udp-new', src, dst: tb.appliance4, port, count, timeoutMs: 300 };
}

describe('embedded defaults (no store file)', () => {
  it('limit UDP to 20/min on every port and leave TCP alone', async () => {
    expect(existsSync(tb.store)).toBe(false);
    await app.start();
    expect(app.log).toContain('applied the embedded defaults');
    expect(await tb.client(udpNew(A(), 1194, 8))).toMatchObject({ ok: 5, failed: 3 });
    expect(await tb.client(udpNew(A(), 53, 8))).toMatchObject({ ok: 5, failed: 3 });
    expect(await tb.client(tcp(A(), 443, 12))).toMatchObject({ ok: 12, failed: 0 });
  });
});

describe('limits from extc values', () => {
  it('limit TCP on a port list and UDP on a list, and nothing else', async () => {
    app.configure({
      CONNECTION_RATE_LIMIT_TCP: '20',
      CONNECTION_RATE_LIMIT_TCP_PORTS: '[ 443 11115 ]',
      CONNECTION_RATE_LIMIT_UDP_PORTS: '[ 1194 1195 ]',
    });
    await app.start();
    expect(await tb.client(tcp(A(), 443, 8))).toMatchObject({ ok: 5, failed: 3 });
    expect(await tb.client(tcp(A(), 22, 10))).toMatchObject({ ok: 10 }); // not listed
    expect(await tb.client(udpNew(A(), 1195, 8))).toMatchObject({ ok: 5, failed: 3 });
    expect(await tb.client(udpNew(A(), 53, 10))).toMatchObject({ ok: 10 }); // not listed
  });

  it('leave other ports of a limited source, and other sources, unaffected', async () => {
    // 2/min: a token comes back every 30 s, so "still limited" holds however slow the machine is
    app.configure({ CONNECTION_RATE_LIMIT_TCP: '2', CONNECTION_RATE_LIMIT_TCP_PORTS: '[ 443 11115 ]' });
    await app.start();
    expect(await tb.client(tcp(A(), 443, 8))).toMatchObject({ ok: 5, failed: 3 });
    expect(await tb.client(tcp(A(), 11115, 5))).toMatchObject({ ok: 5 });
    expect(await tb.client(tcp(B(), 443, 5))).toMatchObject({ ok: 5 });
    expect(await tb.client({ ...tcp(tb.internetClients6[0]!, 443, 5), dst: tb.appliance6 })).toMatchObject({ ok: 5 });
    expect(await tb.client(tcp(A(), 443, 1))).toMatchObject({ ok: 0 }); // still limited
  });

  it('never limit the internal network (a non-default route) or the exempt list', async () => {
    app.configure({ CONNECTION_RATE_LIMIT_TCP: '20', CONNECTION_RATE_LIMIT_EXEMPT: `[ ${tb.internetClients4[3]}/32 ]` });
    await app.start();
    expect(await tb.client(tcp(tb.internalClient4, 443, 15))).toMatchObject({ ok: 15 });
    expect(await tb.client(udpNew(tb.internalClient4, 1194, 15))).toMatchObject({ ok: 15 });
    expect(await tb.client(tcp(tb.internetClients4[3]!, 443, 15))).toMatchObject({ ok: 15 });
    expect(await tb.client(tcp(A(), 443, 8))).toMatchObject({ ok: 5 });
  });

  it('never limit an established UDP flow: 100 datagrams after the limit is reached', async () => {
    await app.start();
    const flow: ClientRequest = { kind: 'udp-flow', src: A(), dst: tb.appliance4, port: 1194, count: 1, srcPort: 45000, timeoutMs: 300 };
    expect(await tb.client(flow)).toMatchObject({ ok: 1 });
    expect(await tb.client(udpNew(A(), 1194, 8))).toMatchObject({ ok: 4, failed: 4 }); // the flow took one token
    expect(await tb.client({ ...flow, count: 100 })).toMatchObject({ ok: 100, failed: 0 });
  });
});

describe('system update rule', () => {
  it('changes the rate live, from another network and mount namespace, and says what changed', async () => {
    // 2/min: a token comes back every 30 s, so "still empty" holds however slow the machine is
    app.configure({ CONNECTION_RATE_LIMIT_TCP: '2' });
    await app.start();
    expect(await tb.client(tcp(A(), 443, 7))).toMatchObject({ ok: 5, failed: 2 });
    app.configure({ CONNECTION_RATE_LIMIT_TCP: '0' });
    const r = app.updateRule(tb.net);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain('CONNECTION_RATE_LIMIT_TCP: 2 -> 0');
    expect(await tb.client(tcp(A(), 443, 10))).toMatchObject({ ok: 10 });
    app.configure({ CONNECTION_RATE_LIMIT_TCP: '2' });
    expect(app.updateRule().status).toBe(0);
    // the source's bucket kept its state through the change: still empty
    expect(await tb.client(tcp(A(), 443, 2))).toMatchObject({ ok: 0 });
  });

  it('exits 3 with a clear message when no datapath is running', () => {
    const r = app.updateRule();
    expect(r.status).toBe(3);
    expect(r.stderr).toBe(`connrate: system update rule: no connrate datapath at ${tb.pinDir}: is it loaded? Start it with "connrate run"\n`);
  });

  it('refuses bad extc values with exit 2 and leaves the store untouched', () => {
    app.configure({ CONNECTION_RATE_LIMIT_TCP: '20' });
    const before = readFileSync(tb.store);
    for (const [name, value] of [
      ['CONNECTION_RATE_LIMIT_TCP', '-5'],
      ['CONNECTION_RATE_LIMIT_TCP_PORTS', '[ 443 99999 ]'],
      ['CONNECTION_RATE_LIMIT_MODE', 'drop'],
      ['CONNECTION_RATE_LIMIT_EXEMPT', '[ not-an-address ]'],
      ['NO_SUCH_VARIABLE', '1'],
    ] as const) {
      const r = app.set(name, value);
      expect(r.status, `${name}=${value}`).toBe(2);
      expect(r.stderr).toContain(name);
    }
    expect(readFileSync(tb.store).equals(before)).toBe(true);
  });
});

describe('the daemon', () => {
  it('keeps the limit enforced after kill -9, and a restart adopts the state', async () => {
    // 2/min: a token comes back every 30 s, so "still enforced" holds across a slow restart
    app.configure({ CONNECTION_RATE_LIMIT_TCP: '2' });
    await app.start();
    expect(await tb.client(tcp(A(), 443, 6))).toMatchObject({ ok: 5 });
    await app.stop('SIGKILL');
    expect(await tb.client(tcp(A(), 443, 2))).toMatchObject({ ok: 0 }); // still enforced, same bucket
    expect(await tb.client(tcp(B(), 443, 7))).toMatchObject({ ok: 5 });
    await app.start();
    expect(app.log).toContain('adopted the datapath');
    expect(app.log).toMatch(/adopted the pinned XDP link/);
    expect(await tb.client(tcp(B(), 443, 1))).toMatchObject({ ok: 0 }); // state survived
    const links = tb.exec(tb.app, ['ip', '-d', 'link', 'show', tb.appIf]).stdout.match(/prog\/xdp id/g) ?? [];
    expect(links.length).toBe(1); // attached once
  });

  it('exits cleanly on SIGTERM and leaves the datapath enforcing', async () => {
    app.configure({ CONNECTION_RATE_LIMIT_TCP: '20' });
    await app.start();
    expect(await app.stop('SIGTERM')).toBe(0);
    expect(app.log).toContain('stays attached');
    expect(await tb.client(tcp(A(), 443, 7))).toMatchObject({ ok: 5, failed: 2 });
  });

  it('refuses a second daemon on the same pin dir', async () => {
    await app.start();
    const second = app.cli(['run', '--metrics', 'off']);
    expect(second.status).toBe(1);
    expect(second.stderr).toMatch(/^connrate: lock: \S+ is locked by another connrate daemon \(is one already running\?\)$/m);
  });

  it('shows status from another namespace, and detach stops limiting', async () => {
    app.configure({ CONNECTION_RATE_LIMIT_TCP: '20' });
    await app.start();
    const s = app.cli(['status', '--json'], tb.net);
    expect(s.status, s.stderr).toBe(0);
    const st = JSON.parse(s.stdout) as { daemonRunning: boolean; interfaces: { ifname: string }[]; inForce: Record<string, string>; pending: string[] };
    expect(st.daemonRunning).toBe(true);
    expect(st.interfaces).toHaveLength(1);
    expect(st.inForce.CONNECTION_RATE_LIMIT_TCP).toBe('20');
    expect(st.pending).toEqual([]);
    expect(app.cli(['detach']).status).toBe(1); // refused while the daemon runs
    await app.stop();
    const d = app.cli(['detach']);
    expect(d.status, d.stderr).toBe(0);
    expect(await tb.client(tcp(A(), 443, 10))).toMatchObject({ ok: 10 });
    expect(app.cli(['status']).status).toBe(3);
  });
});
