/**
 * The etcd harness itself: real Debian etcd members on loopback, started and
 * ended by PID, with free ports and temporary data dirs.
 */
import { existsSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { type EtcdCluster, startEtcd } from '../helpers/etcd.js';
import { createTestbed } from '../helpers/testbed.js';

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

describe('etcd harness', () => {
  let cluster: EtcdCluster | undefined;
  afterEach(async () => {
    await cluster?.destroy();
    cluster = undefined;
  });

  it('starts one member on loopback, never on 2379, and destroy() removes process and data dir', async () => {
    cluster = await startEtcd();
    const [m] = cluster.members;
    expect(m!.clientUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(m!.clientUrl).not.toMatch(/:2379$/);
    expect(cluster.env()).toEqual({ CONNRATE_ETCD: m!.clientUrl });
    const c = cluster.client();
    await c.put('k').value('v');
    expect(await c.get('k').string()).toBe('v');
    const pid = m!.pid!;
    const dir = cluster.dir;
    expect(alive(pid)).toBe(true);
    await cluster.destroy();
    await cluster.destroy(); // idempotent
    expect(alive(pid)).toBe(false);
    expect(existsSync(dir)).toBe(false);
  });

  it('compacts, and a restarted member keeps its data', async () => {
    cluster = await startEtcd();
    const c = cluster.client();
    await c.put('a').value('1');
    await c.put('a').value('2');
    const rev = await cluster.revision();
    await cluster.compact(rev);
    await expect(c.get('a').revision(rev - 1).string()).rejects.toThrow(/compacted/);
    await cluster.restart(cluster.members[0]!);
    expect(await c.get('a').string()).toBe('2');
    expect(await cluster.dbSize()).toBeGreaterThan(0);
  });

  it('a 3-member cluster elects a leader and survives the leader being killed', async () => {
    cluster = await startEtcd({ members: 3 });
    const first = await cluster.leader();
    const c = cluster.client();
    await c.put('before').value('1');
    await cluster.kill(first);
    expect(first.running).toBe(false);
    const second = await cluster.leader();
    expect(second.name).not.toBe(first.name);
    await c.put('after').value('2');
    expect(await c.get('before').string()).toBe('1');
    await cluster.start(first);
    expect(first.running).toBe(true);
    const only = cluster.client({ members: [first] });
    await expect.poll(() => only.get('after').string(), { timeout: 10_000 }).toBe('2');
  });

  it('serves TLS with client certificates, and enables auth with a root user', async () => {
    cluster = await startEtcd({ tls: true });
    expect(cluster.endpoints[0]).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    const env = cluster.env();
    expect(Object.keys(env).sort()).toEqual(['CONNRATE_ETCD', 'CONNRATE_ETCD_CA', 'CONNRATE_ETCD_CERT', 'CONNRATE_ETCD_KEY']);
    const c = cluster.client();
    await c.put('tls').value('yes');
    expect(await c.get('tls').string()).toBe('yes');

    await cluster.enableAuth('root-pw');
    const anon = cluster.client();
    await expect(anon.get('tls').string()).rejects.toThrow();
    const root = cluster.client({ auth: { user: 'root', password: 'root-pw' } });
    expect(await root.get('tls').string()).toBe('yes');
  });

  it('listens on a unix socket for clients in other network namespaces', async () => {
    cluster = await startEtcd({ unixSockets: true });
    const url = cluster.unixEndpoints[0]!;
    expect(url).toMatch(/^unix:\/\/\//);
    expect(cluster.env({ unix: true })).toEqual({ CONNRATE_ETCD: url });
    const tb = createTestbed();
    try {
      const script = `const { Etcd3 } = require('etcd3');
        const c = new Etcd3({ hosts: [process.env.CONNRATE_ETCD] });
        c.put('u').value('from-netns').then(() => c.get('u').string()).then((v) => { console.log(v); c.close(); },
          (e) => { console.error(e.message); process.exit(1); });`;
      const r = tb.exec(tb.app, [process.execPath, '-e', script], { env: cluster.env({ unix: true }) });
      expect(r.stderr).toBe('');
      expect(r.stdout.trim()).toBe('from-netns');
    } finally {
      await tb.destroy();
    }
    const c = cluster.client();
    expect(await c.get('u').string()).toBe('from-netns');
    // a killed member leaves its socket file; it starts again on it
    await cluster.kill(cluster.members[0]!);
    await cluster.start(cluster.members[0]!);
    expect(await c.get('u').string()).toBe('from-netns');
  });
});
