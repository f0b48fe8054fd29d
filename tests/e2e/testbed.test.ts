/**
 * The end-to-end testbed itself, without connrate: namespaces, addressing,
 * routes, queues, servers and clients, and a clean teardown.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestbed, waitFor, type Testbed } from '../helpers/testbed.js';

const TCP = 443;
const UDP = 1194;

describe('e2e testbed', () => {
  let tb: Testbed;
  let servers: { stop(): Promise<void> } | undefined;

  beforeAll(async () => {
    tb = createTestbed();
    servers = await tb.startServers({ tcp: [TCP], udp: [UDP] });
  });

  afterAll(async () => {
    await servers?.stop();
    await tb?.destroy();
  });

  it('names fit IFNAMSIZ and the env points at the pin dir', () => {
    expect(tb.appIf.length).toBeLessThanOrEqual(15);
    expect(tb.netIf.length).toBeLessThanOrEqual(15);
    expect(tb.env).toEqual({ CONNRATE_PIN_DIR: tb.pinDir, CONNRATE_STORE: tb.store });
  });

  it('the pin dir is a bpffs, visible inside the netns', () => {
    const r = tb.exec(tb.app, ['stat', '-f', '-c', '%T', tb.pinDir]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe('bpf_fs');
    expect(tb.exec(tb.app, ['sh', '-c', 'echo "$CONNRATE_PIN_DIR $CONNRATE_STORE"']).stdout.trim()).toBe(
      `${tb.pinDir} ${tb.store}`,
    );
  });

  it('the veth has 2 rx and 2 tx queues on both ends', () => {
    for (const [ns, dev] of [
      [tb.app, tb.appIf],
      [tb.net, tb.netIf],
    ] as const) {
      const r = tb.exec(ns, ['ls', `/sys/class/net/${dev}/queues`]);
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout.split(/\s+/).filter(Boolean).sort()).toEqual(['rx-0', 'rx-1', 'tx-0', 'tx-1']);
    }
  });

  it('the appliance routes: default via the net side, internal prefix via a non-default route', () => {
    const r4 = tb.exec(tb.app, ['ip', '-4', 'route', 'show']).stdout;
    expect(r4).toContain(`default via 198.18.0.2 dev ${tb.appIf}`);
    expect(r4).toContain(`${tb.internalPrefix4} via 198.18.0.2 dev ${tb.appIf}`);
    expect(tb.exec(tb.app, ['ip', '-6', 'route', 'show', 'default']).stdout).toContain('via 2001:db8:0:1::2');
  });

  it('IPv4 TCP: 10 new connections from an Internet client', async () => {
    const r = await tb.client({
      kind: 'tcp-connect',
      src: tb.internetClients4[0]!,
      dst: tb.appliance4,
      port: TCP,
      count: 10,
    });
    expect(r).toMatchObject({ ok: 10, failed: 0 });
  });

  it('IPv4 TCP, concurrent, from every Internet client', async () => {
    for (const src of tb.internetClients4) {
      const r = await tb.client({ kind: 'tcp-connect', src, dst: tb.appliance4, port: TCP, count: 5, concurrent: true });
      expect(r, src).toMatchObject({ ok: 5, failed: 0 });
    }
  });

  it('IPv6 TCP: 3 new connections', async () => {
    for (const src of tb.internetClients6) {
      const r = await tb.client({ kind: 'tcp-connect', src, dst: tb.appliance6, port: TCP, count: 3 });
      expect(r, src).toMatchObject({ ok: 3, failed: 0 });
    }
  });

  it('a closed port fails fast (RST), not by timeout', async () => {
    const r = await tb.client({
      kind: 'tcp-connect',
      src: tb.internetClients4[1]!,
      dst: tb.appliance4,
      port: 9,
      count: 2,
    });
    expect(r).toMatchObject({ ok: 0, failed: 2 });
    expect(r.ms).toBeLessThan(500);
  });

  it('UDP: 10 new flows, and one flow of 100 datagrams', async () => {
    const src = tb.internetClients4[0]!;
    expect(await tb.client({ kind: 'udp-new', src, dst: tb.appliance4, port: UDP, count: 10 })).toMatchObject({
      ok: 10,
      failed: 0,
    });
    expect(
      await tb.client({ kind: 'udp-flow', src, dst: tb.appliance4, port: UDP, count: 100, srcPort: 40000 }),
    ).toMatchObject({ ok: 100, failed: 0 });
  });

  it('UDP over IPv6', async () => {
    const src = tb.internetClients6[0]!;
    expect(await tb.client({ kind: 'udp-new', src, dst: tb.appliance6, port: UDP, count: 3 })).toMatchObject({
      ok: 3,
      failed: 0,
    });
    expect(await tb.client({ kind: 'udp-flow', src, dst: tb.appliance6, port: UDP, count: 10 })).toMatchObject({
      ok: 10,
      failed: 0,
    });
  });

  it('UDP to a port with no server fails', async () => {
    const r = await tb.client({
      kind: 'udp-new',
      src: tb.internetClients4[0]!,
      dst: tb.appliance4,
      port: 1195,
      count: 1,
      timeoutMs: 200,
    });
    expect(r).toMatchObject({ ok: 0, failed: 1 });
  });

  it('the internal client connects', async () => {
    const r = await tb.client({ kind: 'tcp-connect', src: tb.internalClient4, dst: tb.appliance4, port: TCP, count: 3 });
    expect(r).toMatchObject({ ok: 3, failed: 0 });
  });

  // Last: tears the shared testbed down (afterAll's destroy() is then a no-op).
  it('destroy() kills spawned processes and removes namespaces, mount and run dir; idempotent', async () => {
    const sleeper = tb.spawn(tb.app, ['sleep', '600']);
    await waitFor(() => sleeper.pid !== undefined, 2_000, 'sleep to start');
    const pid = sleeper.pid!;
    expect(mounted(tb.pinDir)).toBe(true);

    await servers?.stop();
    servers = undefined;
    await Promise.all([tb.destroy(), tb.destroy()]);
    await tb.destroy();

    expect(() => process.kill(pid, 0)).toThrow();
    const left = existsSync('/run/netns') ? readdirSync('/run/netns') : [];
    expect(left.filter((n) => n.startsWith(`cr-${tb.tag}-`))).toEqual([]);
    expect(mounted(tb.pinDir)).toBe(false);
    expect(existsSync(`/run/connrate-test-${tb.tag}`)).toBe(false);
    expect(() => tb.exec(tb.app, ['true'])).toThrow(/destroyed/);
  });
});

function mounted(path: string): boolean {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .some((line) => line.split(' ')[4] === path);
}
