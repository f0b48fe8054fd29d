/**
 * Security and refusals on a real etcd member: each appliance's own etcd user
 * reaches only its own keys; the CLI refuses bad input with exit 2 and
 * nothing written; TLS with client certificates works.
 */
import { EtcdPermissionDeniedError, type Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Fleet, PREFIX, VAR } from './fleet.js';

describe('appliance users (auth on)', () => {
  let fleet: Fleet;
  let a: { user: string; password: string };
  let asA: Etcd3;

  beforeAll(async () => {
    fleet = await Fleet.start();
    const creds = (out: string) => ({ user: /CONNRATE_ETCD_USER=(\S+)/.exec(out)![1]!, password: /CONNRATE_ETCD_PASSWORD=(\S+)/.exec(out)![1]! });
    a = creds(fleet.ok(['fleet', 'appliance', 'set', 'sec-a']));
    fleet.ok(['fleet', 'appliance', 'set', 'sec-b']);
    fleet.ok(['fleet', 'profile', 'set', 'p', '--tag', 'all', `${VAR.TCP}=20`]);
    const ctl = fleet.controller();
    await fleet.waitStatus((l) => l.filter((e) => e.status === 'pending').length === 2, 'both appliances to get generation 1');
    await fleet.killController(ctl.child, 'SIGTERM');
    asA = fleet.etcd.client({ auth: a });
  });
  afterAll(async () => {
    asA?.close();
    await fleet?.destroy();
  });

  const denied = async (what: Promise<unknown>): Promise<void> => {
    await expect(what).rejects.toBeInstanceOf(EtcdPermissionDeniedError);
  };

  it('appliance A reads its own desired configuration, not B\'s', async () => {
    const mine = JSON.parse((await asA.get(`${PREFIX}desired/sec-a`).string())!) as { generation: number; values: Record<string, string> };
    expect(mine).toMatchObject({ generation: 1, values: { [VAR.TCP]: '20' } });
    await denied(asA.get(`${PREFIX}desired/sec-b`).string());
    await denied(asA.getAll().prefix(`${PREFIX}desired/`).keys());
    await denied(asA.get(`${PREFIX}status/sec-b`).string());
    await denied(asA.get(`${PREFIX}profiles/p`).string());
  });

  it('appliance A writes its own presence, status and log, not B\'s', async () => {
    const lease = asA.lease(5);
    await lease.put(`${PREFIX}presence/sec-a`).value(JSON.stringify({ id: 'sec-a', since: new Date().toISOString(), pid: 1, host: 'h' }));
    await asA.put(`${PREFIX}status/sec-a`).value(JSON.stringify({ id: 'sec-a', observedGeneration: 1, status: 'received', info: '', confirmedGeneration: 0, time: new Date().toISOString() }));
    await asA.put(`${PREFIX}log/sec-a/0000000000000-00000000`).value('{}');
    await denied(lease.put(`${PREFIX}presence/sec-b`).value('{}'));
    await denied(asA.put(`${PREFIX}status/sec-b`).value('{}'));
    await denied(asA.put(`${PREFIX}log/sec-b/0000000000000-00000000`).value('{}'));
    // trimming its own log is one range delete inside its prefix; B's is out of reach
    const { Range } = await import('etcd3');
    await asA.delete().range(new Range(`${PREFIX}log/sec-a/`, `${PREFIX}log/sec-a/0000000000000-00000000\0`)).exec();
    await denied(asA.delete().range(new Range(`${PREFIX}log/sec-b/`, `${PREFIX}log/sec-b/0000000000000-00000000\0`)).exec());
    await denied(asA.put(`${PREFIX}desired/sec-a`).value('{}'));
    await denied(asA.put(`${PREFIX}profiles/mine`).value('{}'));
    await denied(asA.put(`${PREFIX}appliances/sec-a`).value('{}'));
    await lease.revoke();
    expect(await fleet.root.get(`${PREFIX}status/sec-b`).string()).toBeNull();
    expect(await fleet.root.get(`${PREFIX}presence/sec-b`).string()).toBeNull();
  });

  it('an appliance user cannot run admin commands (exit 1, nothing written)', () => {
    const r = fleet.cli(['fleet', 'profile', 'set', 'evil', '--tag', 'all', `${VAR.TCP}=1`], { CONNRATE_ETCD_USER: a.user, CONNRATE_ETCD_PASSWORD: a.password });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/permission denied/i);
  });

  it('an admin without user management gets the etcdctl commands to run', async () => {
    const ops = await fleet.root.user('ops').create('ops-password');
    const role = await fleet.root.role('fleet-admin').create();
    const { Range } = await import('etcd3');
    await role.grant({ permission: 'Readwrite', range: Range.prefix(PREFIX) });
    await ops.addRole('fleet-admin');
    const r = fleet.cli(['fleet', 'appliance', 'set', 'sec-c', '--tag', 'dmz'], { CONNRATE_ETCD_USER: 'ops', CONNRATE_ETCD_PASSWORD: 'ops-password' });
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('etcdctl role add connrate-appliance-sec-c');
    expect(r.stdout).toContain(`etcdctl role grant-permission connrate-appliance-sec-c read ${PREFIX}desired/sec-c`);
    expect(r.stdout).toContain(`etcdctl role grant-permission connrate-appliance-sec-c readwrite ${PREFIX}log/sec-c/ --prefix=true`);
    expect(r.stdout).toMatch(/etcdctl user add connrate-appliance-sec-c:\S+/);
    expect(r.stdout).toMatch(/CONNRATE_ETCD_PASSWORD=\S+/);
  });
});

describe('CLI refusals: exit 2, nothing written to etcd', () => {
  let fleet: Fleet;
  beforeAll(async () => {
    fleet = await Fleet.start({ auth: false });
    fleet.ok(['fleet', 'profile', 'set', 'keep', '--tag', 'all', `${VAR.TCP}=20`]);
  });
  afterAll(async () => fleet?.destroy());

  const cases: [string, string[], RegExp][] = [
    ['a bad value', ['fleet', 'profile', 'set', 'keep', `${VAR.TCP}=fast`], /CONNECTION_RATE_LIMIT_TCP: "fast" is not allowed/],
    ['one bad value among good ones', ['fleet', 'profile', 'set', 'keep', `${VAR.BURST}=3`, `${VAR.TCP_PORTS}=[ 70000 ]`], /port 70000 is out of range/],
    ['an unknown variable', ['fleet', 'profile', 'set', 'keep', 'CONNECTION_RATE_LIMIT_FOO=1'], /unknown variable "CONNECTION_RATE_LIMIT_FOO"/],
    ['no VARIABLE=VALUE', ['fleet', 'profile', 'set', 'keep', 'CONNECTION_RATE_LIMIT_TCP'], /is not VARIABLE=VALUE/],
    ['a bad profile name', ['fleet', 'profile', 'set', 'a/b', `${VAR.TCP}=1`], /profile name "a\/b" is not allowed/],
    ['a bad priority', ['fleet', 'profile', 'set', 'keep', '--priority', 'high'], /--priority must be an integer/],
    ['a bad tag', ['fleet', 'profile', 'set', 'keep', '--tag', 'x y'], /tag "x y" is not allowed/],
    ['a bad appliance ID', ['fleet', 'appliance', 'set', '../x'], /appliance ID "..\/x" is not allowed/],
    ['a bad cluster', ['fleet', 'appliance', 'set', 'ok1', '--cluster', 'c!'], /cluster ID "c!" is not allowed/],
    ['deleting a missing profile', ['fleet', 'profile', 'delete', 'nope'], /no profile named nope/],
    ['an unknown option', ['fleet', 'appliances', '--bogus'], /unknown option/],
    ['a bad endpoint', ['fleet', 'appliances'], /CONNRATE_ETCD: "ftp:\/\/x" is not an endpoint/],
  ];
  for (const [what, args, message] of cases) {
    it(`refuses ${what}`, async () => {
      const before = await fleet.etcd.revision();
      const r = fleet.cli(args, what === 'a bad endpoint' ? { CONNRATE_ETCD: 'ftp://x' } : {});
      expect(r.status).toBe(2);
      expect(r.stdout + r.stderr).toMatch(message);
      expect(await fleet.etcd.revision()).toBe(before);
    });
  }

  it('an unreachable etcd is a runtime failure (exit 1)', () => {
    const r = fleet.cli(['fleet', 'appliances'], { CONNRATE_ETCD: 'unix:///nonexistent/etcd.sock' });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/etcd/);
  });
});

describe('TLS', () => {
  let fleet: Fleet;
  beforeAll(async () => {
    fleet = await Fleet.start({ tls: true, auth: false });
  });
  afterAll(async () => fleet?.destroy());

  it('the CLI and the controller work over TLS with a client certificate', async () => {
    expect(fleet.adminEnv().CONNRATE_ETCD).toMatch(/^https:\/\//);
    expect(fleet.adminEnv().CONNRATE_ETCD_CA).toBeTruthy();
    fleet.ok(['fleet', 'appliance', 'set', 'tls-a', '--tag', 'edge']);
    fleet.ok(['fleet', 'profile', 'set', 'p', '--tag', 'edge', `${VAR.TCP}=20`]);
    fleet.controller();
    await fleet.waitStatus((l) => l.some((e) => e.appliance === 'tls-a' && e.generation === 1), 'tls-a to get generation 1 over TLS');
    expect(fleet.appliancesJson()).toMatchObject([{ id: 'tls-a', desiredGeneration: 1 }]);
  });

  it('without the CA the server is not trusted (exit 1)', () => {
    const r = fleet.cli(['fleet', 'appliances'], { CONNRATE_ETCD_CA: '', CONNRATE_ETCD_CERT: '', CONNRATE_ETCD_KEY: '' });
    expect(r.status).toBe(1);
  });
});
