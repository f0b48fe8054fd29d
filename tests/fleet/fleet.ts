/**
 * Fleet fixtures on real parts: an etcd member (auth on, a unix socket that
 * the appliances' network namespaces reach), the CLI and the controller as
 * processes, appliances as real daemons (`connrate run --fleet ID`) in their
 * own netns testbeds, each with its own etcd user.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { Etcd3 } from 'etcd3';
import { Appliance, BIN } from '../helpers/appliance.js';
import { type EtcdCluster, type EtcdOptions, startEtcd } from '../helpers/etcd.js';
import { type Testbed, createTestbed, waitFor } from '../helpers/testbed.js';
import type { LogEntry } from '../../src/fleet/keys.js';

export const ROOT_PASSWORD = 'fleet-test-root';
export const PREFIX = '/connrate/';
export const VAR = {
  TCP: 'CONNECTION_RATE_LIMIT_TCP',
  TCP_PORTS: 'CONNECTION_RATE_LIMIT_TCP_PORTS',
  UDP: 'CONNECTION_RATE_LIMIT_UDP',
  UDP_PORTS: 'CONNECTION_RATE_LIMIT_UDP_PORTS',
  BURST: 'CONNECTION_RATE_LIMIT_BURST',
} as const;

export interface CliResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

export class Fleet {
  readonly appliances: FleetAppliance[] = [];
  #controllers = new Set<ChildProcess>();
  #root: Etcd3 | undefined;

  private constructor(readonly etcd: EtcdCluster) {}

  /** One etcd member with a unix socket and authentication on. */
  static async start(opts: EtcdOptions & { auth?: boolean } = {}): Promise<Fleet> {
    const { auth = true, ...etcdOpts } = opts;
    const etcd = await startEtcd({ unixSockets: !etcdOpts.tls, ...etcdOpts });
    try {
      if (auth) await etcd.enableAuth(ROOT_PASSWORD);
      const f = new Fleet(etcd);
      f.#auth = auth;
      return f;
    } catch (err) {
      await etcd.destroy();
      throw err;
    }
  }

  #auth = true;

  /** The admin's environment (root user when auth is on). */
  adminEnv(): Record<string, string> {
    return this.etcd.env(this.#auth ? { auth: { user: 'root', password: ROOT_PASSWORD } } : {});
  }

  /** A root client (closed by destroy()). */
  get root(): Etcd3 {
    return (this.#root ??= this.etcd.client(this.#auth ? { auth: { user: 'root', password: ROOT_PASSWORD } } : {}));
  }

  cli(args: string[], env: Record<string, string> = {}): CliResult {
    const r = spawnSync(BIN, args, { env: { ...process.env, ...this.adminEnv(), ...env }, encoding: 'utf8', timeout: 60_000 });
    return { status: r.status, stdout: r.stdout ?? '', stderr: (r.stderr ?? '') + (r.error ? String(r.error) : '') };
  }

  /** cli() that must succeed. */
  ok(args: string[], env: Record<string, string> = {}): string {
    const r = this.cli(args, env);
    if (r.status !== 0) throw new Error(`connrate ${args.join(' ')}: exit ${r.status}\n${r.stdout}${r.stderr}`);
    return r.stdout;
  }

  /** `connrate fleet controller` as a process; its output collected. */
  controller(): { child: ChildProcess; log: () => string } {
    const child = spawn(BIN, ['fleet', 'controller'], { env: { ...process.env, ...this.adminEnv() }, stdio: ['ignore', 'pipe', 'pipe'] });
    let log = '';
    child.stdout!.on('data', (d: Buffer) => (log += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (log += d.toString()));
    this.#controllers.add(child);
    child.once('exit', () => this.#controllers.delete(child));
    return { child, log: () => log };
  }

  async killController(child: ChildProcess, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const done = new Promise((r) => child.once('exit', r));
    child.kill(signal);
    await done;
  }

  /** Register appliance ID (its etcd user is created) and give it a testbed; the daemon is not started. */
  async addAppliance(id: string, opts: { tags?: string[]; cluster?: string } = {}): Promise<FleetAppliance> {
    const args = ['fleet', 'appliance', 'set', id, ...(opts.tags ?? []).flatMap((t) => ['--tag', t]), ...(opts.cluster ? ['--cluster', opts.cluster] : [])];
    const out = this.ok(args);
    const user = /CONNRATE_ETCD_USER=(\S+)/.exec(out)?.[1];
    const password = /CONNRATE_ETCD_PASSWORD=(\S+)/.exec(out)?.[1];
    const tb = createTestbed();
    const a = new FleetAppliance(this, id, tb, user && password ? { user, password } : undefined);
    this.appliances.push(a);
    return a;
  }

  /** The publication log as `fleet status --json` prints it. */
  status(args: string[] = []): LogEntry[] {
    return JSON.parse(this.ok(['fleet', 'status', '--json', ...args])) as LogEntry[];
  }

  appliancesJson(): { id: string; tags: string[]; cluster: string | null; online: boolean; desiredGeneration: number; confirmedGeneration: number; lastSeen: string | null }[] {
    return JSON.parse(this.ok(['fleet', 'appliances', '--json'])) as ReturnType<Fleet['appliancesJson']>;
  }

  /** Wait until `pred` holds for the publication log. */
  async waitStatus(pred: (log: LogEntry[]) => boolean, what: string, timeoutMs = 45_000): Promise<LogEntry[]> {
    let log: LogEntry[] = [];
    await waitFor(() => pred((log = this.status())), timeoutMs, what).catch((err: Error) => {
      throw new Error(`${err.message}\nlog:\n${log.map((e) => `${e.time} ${e.appliance} ${e.direction} ${e.status} g${e.generation} ${e.info}`).join('\n')}`);
    });
    return log;
  }

  async destroy(): Promise<void> {
    await Promise.all([...this.#controllers].map((c) => this.killController(c)));
    for (const a of this.appliances) await a.destroy();
    this.#root?.close();
    await this.etcd.destroy();
  }
}

export class FleetAppliance {
  readonly app: Appliance;

  constructor(
    readonly fleet: Fleet,
    readonly id: string,
    readonly tb: Testbed,
    readonly credentials: { user: string; password: string } | undefined,
  ) {
    this.app = new Appliance(tb);
  }

  /** The agent's environment: the etcd member's unix socket and its own user. */
  env(): Record<string, string> {
    return this.fleet.etcd.env({ unix: true, ...(this.credentials ? { auth: this.credentials } : {}) });
  }

  /** `connrate run --fleet ID` in the testbed (lease TTL 2 s so offline shows quickly). */
  async start(): Promise<void> {
    await this.app.start(['--metrics', 'off', '--fleet', this.id, '--fleet-lease-ttl', '2'], this.env());
  }

  stop(signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM'): Promise<number | null> {
    return this.app.stop(signal);
  }

  /** The stored extc values, as `extc value get` prints them. */
  stored(): Record<string, string> {
    const r = this.app.cli(['extc', 'value', 'get', 'application', 'securepoint_firewall']);
    const values: Record<string, string> = {};
    for (const line of r.stdout.split('\n').slice(2)) {
      const [, name, value] = line.split('|');
      if (name && value !== undefined) values[name.trim()] = value.trim();
    }
    return values;
  }

  /** `connrate status --json` of the appliance's datapath. */
  datapathStatus(): { generation?: string; inForce?: Record<string, string> } {
    const r = this.app.cli(['status', '--json']);
    if (r.status !== 0) throw new Error(`status: ${r.stderr}`);
    return JSON.parse(r.stdout) as { generation?: string; inForce?: Record<string, string> };
  }

  async destroy(): Promise<void> {
    await this.app.reset();
    await this.tb.destroy();
  }
}

/** Entries of one appliance with one status. */
export function entries(log: readonly LogEntry[], appliance: string, status?: LogEntry['status'], generation?: number): LogEntry[] {
  return log.filter((e) => e.appliance === appliance && (status === undefined || e.status === status) && (generation === undefined || e.generation === generation));
}
