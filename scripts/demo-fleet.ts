/**
 * The fleet on its embedded default: a local etcd (one member on loopback and a
 * unix socket, temporary data dir, authentication on), the fleet controller,
 * and two appliances, each a real `connrate run --fleet ID` daemon in its own
 * network-namespace testbed (198.18.0.0/15 only) and its own etcd user. A profile is published, the publication status
 * shown, enforcement proven with real TCP; then one appliance is taken offline,
 * a change is published, the appliance comes back and confirms. Everything is
 * removed at the end. Run: npm run demo:fleet (as root).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { Appliance, BIN } from '../tests/helpers/appliance.js';
import { type EtcdCluster, startEtcd } from '../tests/helpers/etcd.js';
import { createTestbed, type Testbed, waitFor } from '../tests/helpers/testbed.js';

const say = (s: string): void => void process.stdout.write(`${s}\n`);
const step = (s: string): void => say(`\n== ${s}`);
const PORT = 443;

interface ApplianceRow {
  id: string;
  online: boolean;
  desiredGeneration: number;
  confirmedGeneration: number;
}

/** `connrate fleet …` on the host (the admin's and controller's side), against the demo's etcd. */
function fleet(args: string[], show = true): string {
  const r = spawnSync(BIN, ['fleet', ...args], { encoding: 'utf8', env: process.env, timeout: 30_000 });
  if (show) say(`$ connrate fleet ${args.map((a) => (/[\s[\]]/.test(a) ? `'${a}'` : a)).join(' ')}`);
  if (r.status !== 0) throw new Error(`connrate fleet ${args.join(' ')}: exit ${r.status ?? r.signal}: ${(r.stderr ?? '').trim()}`);
  if (show && r.stdout.trim()) say(r.stdout.trimEnd());
  return r.stdout;
}

function appliances(): ApplianceRow[] {
  return JSON.parse(fleet(['appliances', '--json'], false)) as ApplianceRow[];
}

async function waitForRows(what: string, pred: (rows: Map<string, ApplianceRow>) => boolean): Promise<void> {
  await waitFor(() => pred(new Map(appliances().map((r) => [r.id, r]))), 60_000, what);
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('the demo creates network namespaces and loads XDP: run it as root');
  let etcd: EtcdCluster | undefined;
  let controller: ChildProcess | undefined;
  let controllerLog = '';
  const beds: Testbed[] = [];
  const apps: Appliance[] = [];
  const servers: { stop(): Promise<void> }[] = [];
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      for (const app of apps) {
        await app.stop('SIGTERM').catch(() => undefined);
        app.cli(['detach']);
      }
      for (const s of servers) await s.stop().catch(() => undefined);
      if (controller && controller.exitCode === null && controller.signalCode === null) {
        const exited = new Promise((r) => controller!.once('exit', r));
        controller.kill('SIGTERM');
        await exited;
      }
      for (const tb of beds) await tb.destroy();
      await etcd?.destroy();
    })());
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => void stop().then(() => process.exit(sig === 'SIGINT' ? 130 : 143)));

  try {
    step('a local etcd: Debian etcd-server, one member on loopback (free port) and a unix socket, temporary data dir, authentication on');
    etcd = await startEtcd({ unixSockets: true });
    const root = { user: 'root', password: randomBytes(12).toString('base64url') };
    await etcd.enableAuth(root.password);
    // A unix socket reaches etcd from inside the appliances' network namespaces too.
    // The admin's CLI and the controller run as root; each appliance as its own user.
    Object.assign(process.env, etcd.env({ unix: true, auth: root }));
    say(`etcd ${etcd.endpoints[0]} (pid ${etcd.members[0]!.pid}), CONNRATE_ETCD=${process.env.CONNRATE_ETCD}, admin user root`);

    step('two appliances, each a testbed: its own network namespaces, 198.18.0.0/15 only');
    for (const id of ['fw-a', 'fw-b']) {
      const tb = createTestbed();
      beds.push(tb);
      apps.push(new Appliance(tb));
      servers.push(await tb.startServers({ tcp: [PORT], udp: [] }));
      say(`${id}: appliance ${tb.appliance4} in netns ${tb.app}, clients in netns ${tb.net}`);
    }
    const [a, b] = apps as [Appliance, Appliance];

    step('register the appliances (both tagged "branch"); each gets its own etcd user');
    const creds = new Map<string, Record<string, string>>();
    for (const id of ['fw-a', 'fw-b']) {
      const out = fleet(['appliance', 'set', id, '--tag', 'branch']);
      const user = /CONNRATE_ETCD_USER=(\S+)/.exec(out)?.[1];
      const password = /CONNRATE_ETCD_PASSWORD=(\S+)/.exec(out)?.[1];
      if (!user || !password) throw new Error(`connrate fleet appliance set ${id} printed no credentials`);
      creds.set(id, { ...etcd.env({ unix: true, auth: { user, password } }) });
    }
    const run = (app: Appliance, id: string): Promise<void> => app.start(['--metrics', 'off', '--fleet', id], creds.get(id));

    step('start the controller: connrate fleet controller');
    controller = spawn(BIN, ['fleet', 'controller'], { env: process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    controller.stdout!.on('data', (d: Buffer) => void (controllerLog += d.toString()));
    controller.stderr!.on('data', (d: Buffer) => void (controllerLog += d.toString()));

    step('start the daemons: connrate run --fleet ID, each in its appliance namespace, as its own etcd user');
    await run(a, 'fw-a');
    await run(b, 'fw-b');
    await waitForRows('both appliances online', (m) => !!m.get('fw-a')?.online && !!m.get('fw-b')?.online);
    fleet(['appliances']);

    step(`publish a profile: TCP ${PORT} limited to 6 new connections per minute per source, burst 5`);
    fleet(['profile', 'set', 'branch-limits', '--priority', '10', '--tag', 'branch', '--comment', 'branch offices',
      'CONNECTION_RATE_LIMIT_TCP=6', `CONNECTION_RATE_LIMIT_TCP_PORTS=[ ${PORT} ]`, 'CONNECTION_RATE_LIMIT_BURST=5']);
    await waitForRows('both appliances to confirm', (m) =>
      ['fw-a', 'fw-b'].every((id) => (m.get(id)?.confirmedGeneration ?? 0) >= 1 && m.get(id)!.confirmedGeneration === m.get(id)!.desiredGeneration));
    fleet(['status']);
    fleet(['appliances']);

    step('enforcement, with real traffic: one Internet client opens 10 TCP connections to each appliance');
    for (const [i, app] of apps.entries()) {
      const tb = app.tb;
      const r = await tb.client({ kind: 'tcp-connect', src: tb.internetClients4[0]!, dst: tb.appliance4, port: PORT, count: 10, concurrent: true, timeoutMs: 700 });
      say(`${i === 0 ? 'fw-a' : 'fw-b'}: ${r.ok} connected, ${r.failed} dropped (the burst is 5)`);
      if (r.ok !== 5 || r.failed !== 5) throw new Error(`expected exactly the burst (5) to connect, got ${r.ok}`);
    }

    step('take fw-b offline: stop its daemon (the datapath stays attached, its etcd lease ends)');
    await b.stop('SIGTERM');
    await waitForRows('fw-b to be offline', (m) => m.get('fw-b')?.online === false);
    fleet(['appliances']);

    step('publish a change while fw-b is away: burst 3');
    fleet(['profile', 'set', 'branch-limits', '--priority', '10', '--tag', 'branch', '--comment', 'branch offices',
      'CONNECTION_RATE_LIMIT_TCP=6', `CONNECTION_RATE_LIMIT_TCP_PORTS=[ ${PORT} ]`, 'CONNECTION_RATE_LIMIT_BURST=3']);
    await waitForRows('fw-a to confirm generation 2', (m) => (m.get('fw-a')?.confirmedGeneration ?? 0) >= 2);
    fleet(['status', '--appliance', 'fw-b']);

    step('bring fw-b back: connrate run --fleet fw-b; it gets the latest generation and confirms it once');
    await run(b, 'fw-b');
    await waitForRows('fw-b to confirm generation 2', (m) => (m.get('fw-b')?.confirmedGeneration ?? 0) >= 2);
    fleet(['status']);
    fleet(['appliances']);

    step('the change is in force on fw-b: a new client gets exactly the new burst');
    const tb = b.tb;
    const r = await tb.client({ kind: 'tcp-connect', src: tb.internetClients4[1]!, dst: tb.appliance4, port: PORT, count: 10, concurrent: true, timeoutMs: 700 });
    say(`fw-b: ${r.ok} connected, ${r.failed} dropped (the burst is now 3)`);
    if (r.ok !== 3) throw new Error(`expected exactly the new burst (3) to connect, got ${r.ok}`);

    step('cleanup: stop the daemons, connrate detach, stop the controller, remove the testbeds and etcd');
  } catch (e) {
    if (controllerLog) process.stderr.write(`controller log:\n${controllerLog}\n`);
    for (const [i, app] of apps.entries()) if (app.log) process.stderr.write(`fw-${'ab'[i]} daemon log:\n${app.log}\n`);
    throw e;
  } finally {
    await stop();
  }
  say('done');
}

main().catch((err: unknown) => {
  process.stderr.write(`demo:fleet: ${(err as Error).message}\n`);
  process.exit(1);
});
