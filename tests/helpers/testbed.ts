/**
 * End-to-end testbed: two network namespaces joined by one veth pair.
 *
 *   cr-<tag>-app  "the appliance"       cr-<tag>-net  "the Internet"
 *   appIf 198.18.0.1/30   <--veth-->   netIf 198.18.0.2/30
 *         2001:db8:0:1::1/64                 2001:db8:0:1::2/64
 *   default via 198.18.0.2                    lo: 198.19.1.10-13/32
 *   default via 2001:db8:0:1::2                   2001:db8:100::10-11/128
 *   198.18.100.0/24 via 198.18.0.2                198.18.100.10/32
 *
 * Only 198.18.0.0/15 and 2001:db8::/32, and no link to the host's namespace.
 * The pin dir is a bpffs mounted in the root mount namespace before anything
 * runs, so every `ip netns exec` (which makes a private mount namespace and
 * hides the host's /sys/fs/bpf) sees a copy of it.
 */
import { spawn as spawnChild, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export interface TestbedOptions {
  /** [a-z0-9]{1,10}; default: unique from pid + counter. */
  tag?: string;
}

export type ClientRequest =
  | { kind: 'tcp-connect'; src: string; dst: string; port: number; count: number; timeoutMs?: number; concurrent?: boolean }
  | { kind: 'udp-new'; src: string; dst: string; port: number; count: number; timeoutMs?: number }
  | { kind: 'udp-flow'; src: string; dst: string; port: number; count: number; timeoutMs?: number; srcPort?: number };

export interface ClientResult {
  ok: number;
  failed: number;
  ms: number;
}

export interface ExecResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

export interface ExecOptions {
  env?: Record<string, string>;
  timeoutMs?: number;
  input?: string;
}

export interface Testbed {
  readonly tag: string;
  readonly app: string;
  readonly net: string;
  readonly appIf: string;
  readonly netIf: string;
  readonly appliance4: string;
  readonly appliance6: string;
  readonly internetClients4: string[];
  readonly internetClients6: string[];
  readonly internalClient4: string;
  readonly internalPrefix4: string;
  readonly pinDir: string;
  readonly store: string;
  readonly env: Record<string, string>;
  /** Run a command in a netns (ip netns exec), argv form; env = process.env + this.env + opts.env. */
  exec(ns: string, argv: string[], opts?: ExecOptions): ExecResult;
  /** Spawn a long-running command in a netns; stdout/stderr piped; killed by destroy(). */
  spawn(ns: string, argv: string[], opts?: { env?: Record<string, string> }): ChildProcess;
  /** Start servers.mjs in the app ns; resolves once it printed `ready`. */
  startServers(opts: { tcp: number[]; udp: number[] }): Promise<{ stop(): Promise<void> }>;
  /** Run client.mjs in the net ns and return its result. */
  client(req: ClientRequest): Promise<ClientResult>;
  /** Kill every spawned process, delete both netns, unmount and remove the run dir. Idempotent. */
  destroy(): Promise<void>;
}

const SERVERS = fileURLToPath(new URL('./servers.mjs', import.meta.url));
const CLIENT = fileURLToPath(new URL('./client.mjs', import.meta.url));
const NETNS_DIR = '/run/netns';
const DEFAULT_EXEC_TIMEOUT_MS = 30_000;

let tagCounter = 0;

function runDirOf(tag: string): string {
  return `/run/connrate-test-${tag}`;
}

function nsNames(tag: string): { app: string; net: string } {
  return { app: `cr-${tag}-app`, net: `cr-${tag}-net` };
}

function tagInUse(tag: string): boolean {
  const { app, net } = nsNames(tag);
  return existsSync(`${NETNS_DIR}/${app}`) || existsSync(`${NETNS_DIR}/${net}`) || existsSync(runDirOf(tag));
}

function freshTag(): string {
  for (;;) {
    const tag = `${process.pid.toString(36)}${(tagCounter++).toString(36)}`.slice(-10);
    if (!tagInUse(tag)) return tag;
  }
}

/** Run a host command, argv form; throws with its stderr on failure. */
function run(argv: string[], timeoutMs = DEFAULT_EXEC_TIMEOUT_MS): string {
  const [cmd, ...args] = argv;
  const r = spawnSync(cmd!, args, { encoding: 'utf8', timeout: timeoutMs, stdio: ['ignore', 'pipe', 'pipe'] });
  if (r.error) throw new Error(`${argv.join(' ')}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`${argv.join(' ')}: exit ${r.status ?? r.signal}: ${r.stderr.trim()}`);
  return r.stdout;
}

/** Same, but never throws: for cleanup. */
function tryRun(argv: string[]): boolean {
  const [cmd, ...args] = argv;
  const r = spawnSync(cmd!, args, { encoding: 'utf8', timeout: 10_000, stdio: ['ignore', 'pipe', 'pipe'] });
  return !r.error && r.status === 0;
}

function isMountPoint(path: string): boolean {
  try {
    return readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .some((line) => line.split(' ')[4] === path);
  } catch {
    return false;
  }
}

/** Operationally up, real (not noop) qdisc, non-tentative IPv6 link-local. */
function linkReady(ns: string, dev: string): boolean {
  const link = spawnSync('ip', ['-n', ns, '-o', 'link', 'show', 'dev', dev], { encoding: 'utf8' }).stdout ?? '';
  if (!/ state UP /.test(link) || / qdisc noop /.test(link)) return false;
  const ll = spawnSync('ip', ['-n', ns, '-o', '-6', 'addr', 'show', 'dev', dev, 'scope', 'link'], { encoding: 'utf8' }).stdout ?? '';
  return ll.includes('fe80:') && !ll.includes('tentative');
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

function waitForSync(pred: () => boolean, timeoutMs: number, what: string): void {
  const deadline = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() >= deadline) throw new Error(`timed out waiting for ${what}`);
    sleepSync(20);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Poll `pred` every 50 ms until it holds; throws `timed out waiting for <what>`. */
export async function waitFor(
  pred: () => boolean | Promise<boolean>,
  timeoutMs: number,
  what: string,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await pred()) return;
    if (Date.now() >= deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

/** Resolves when the child has exited (immediately if it already has). */
function exitOf(child: ChildProcess): Promise<void> {
  if (exited(child)) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

/** SIGTERM the child's process group, SIGKILL after `graceMs`, wait for exit. */
async function stopChild(child: ChildProcess, graceMs = 2_000): Promise<void> {
  const pid = child.pid;
  if (pid === undefined || exited(child)) return;
  const signalGroup = (sig: NodeJS.Signals): void => {
    try {
      process.kill(-pid, sig);
    } catch {
      try {
        child.kill(sig);
      } catch {
        /* gone */
      }
    }
  };
  signalGroup('SIGTERM');
  const done = exitOf(child);
  const timedOut = await Promise.race([done.then(() => false), sleep(graceMs).then(() => true)]);
  if (timedOut) {
    signalGroup('SIGKILL');
    await Promise.race([done, sleep(2_000)]);
  }
}

export function createTestbed(opts: TestbedOptions = {}): Testbed {
  if (opts.tag !== undefined && !/^[a-z0-9]{1,10}$/.test(opts.tag)) {
    throw new Error(`testbed tag must match [a-z0-9]{1,10}: ${JSON.stringify(opts.tag)}`);
  }
  if (opts.tag !== undefined && tagInUse(opts.tag)) {
    throw new Error(`testbed tag ${opts.tag} is in use (netns cr-${opts.tag}-* or ${runDirOf(opts.tag)} exists)`);
  }
  const tag = opts.tag ?? freshTag();
  const { app, net } = nsNames(tag);
  const appIf = `cr-${tag}-a`;
  const netIf = `cr-${tag}-n`;
  const runDir = runDirOf(tag);
  const pinDir = `${runDir}/bpf`;
  const store = `${runDir}/extc.json`;
  const env: Record<string, string> = { CONNRATE_PIN_DIR: pinDir, CONNRATE_STORE: store };

  const appliance4 = '198.18.0.1';
  const peer4 = '198.18.0.2';
  const appliance6 = '2001:db8:0:1::1';
  const peer6 = '2001:db8:0:1::2';
  const internetClients4 = ['198.19.1.10', '198.19.1.11', '198.19.1.12', '198.19.1.13'];
  const internetClients6 = ['2001:db8:100::10', '2001:db8:100::11'];
  const internalClient4 = '198.18.100.10';
  const internalPrefix4 = '198.18.100.0/24';

  const children = new Set<ChildProcess>();
  let destroyed: Promise<void> | undefined;

  const mergedEnv = (extra?: Record<string, string>): NodeJS.ProcessEnv => ({ ...process.env, ...env, ...extra });

  const checkNs = (ns: string): void => {
    if (ns !== app && ns !== net) throw new Error(`testbed ${tag}: unknown netns ${ns}`);
    if (destroyed) throw new Error(`testbed ${tag}: already destroyed`);
  };

  const exec = (ns: string, argv: string[], o: ExecOptions = {}): ExecResult => {
    checkNs(ns);
    const r = spawnSync('ip', ['netns', 'exec', ns, ...argv], {
      encoding: 'utf8',
      env: mergedEnv(o.env),
      timeout: o.timeoutMs ?? DEFAULT_EXEC_TIMEOUT_MS,
      killSignal: 'SIGKILL',
      maxBuffer: 64 * 1024 * 1024,
      ...(o.input !== undefined ? { input: o.input } : { stdio: ['ignore', 'pipe', 'pipe'] as const }),
    });
    const stderr = (r.stderr ?? '') + (r.error ? `\n[testbed] ${r.error.message}` : '');
    return { status: r.status, stdout: r.stdout ?? '', stderr };
  };

  const spawn = (ns: string, argv: string[], o: { env?: Record<string, string> } = {}): ChildProcess => {
    checkNs(ns);
    // `ip netns exec` execs the command, so the child's pid is the command's.
    // Its own process group lets destroy() reach any grandchildren too.
    const child = spawnChild('ip', ['netns', 'exec', ns, ...argv], {
      env: mergedEnv(o.env),
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    children.add(child);
    child.once('exit', () => children.delete(child));
    child.on('error', () => {}); // reported through exit / the caller's own listeners
    return child;
  };

  const startServers = async (o: { tcp: number[]; udp: number[] }): Promise<{ stop(): Promise<void> }> => {
    const args = [process.execPath, SERVERS];
    if (o.tcp.length) args.push('--tcp', o.tcp.join(','));
    if (o.udp.length) args.push('--udp', o.udp.join(','));
    const child = spawn(app, args);
    let out = '';
    let err = '';
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => fail(new Error('servers.mjs: no "ready" within 10 s')), 10_000);
      const onExit = (code: number | null, sig: string | null): void =>
        fail(new Error(`servers.mjs exited (${code ?? sig}) before ready: ${err.trim()}`));
      function fail(e: Error): void {
        clearTimeout(timer);
        child.off('exit', onExit);
        void stopChild(child);
        reject(e);
      }
      child.once('exit', onExit);
      child.stdout!.setEncoding('utf8').on('data', (d: string) => {
        out += d;
        if (out.split('\n').includes('ready')) {
          clearTimeout(timer);
          child.off('exit', onExit);
          resolve();
        }
      });
    });
    return { stop: () => stopChild(child) };
  };

  const client = async (req: ClientRequest): Promise<ClientResult> => {
    const per = req.timeoutMs ?? 700;
    const budget = 10_000 + (req.kind === 'tcp-connect' && req.concurrent ? per : per * req.count);
    const child = spawn(net, [process.execPath, CLIENT, JSON.stringify(req)]);
    let out = '';
    let err = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
    const timer = setTimeout(() => void stopChild(child, 0), budget);
    const [code, sig] = await new Promise<[number | null, string | null]>((resolve) => {
      if (exited(child)) resolve([child.exitCode, child.signalCode]);
      else child.once('close', (c: number | null, s: string | null) => resolve([c, s]));
    });
    clearTimeout(timer);
    const line = out.trim().split('\n').pop() ?? '';
    if (code !== 0) throw new Error(`client.mjs ${JSON.stringify(req)}: exit ${code ?? sig}: ${err.trim()}`);
    try {
      return JSON.parse(line) as ClientResult;
    } catch {
      throw new Error(`client.mjs ${JSON.stringify(req)}: bad output ${JSON.stringify(out)} ${err.trim()}`);
    }
  };

  const teardown = async (): Promise<void> => {
    await Promise.all([...children].map((c) => stopChild(c)));
    // Anything else still living in our namespaces was started in them by
    // this testbed's user (they are ours by name): end it by pid.
    for (const ns of [app, net]) {
      if (!existsSync(`${NETNS_DIR}/${ns}`)) continue;
      const r = spawnSync('ip', ['netns', 'pids', ns], { encoding: 'utf8', timeout: 10_000 });
      const pids = (r.stdout ?? '')
        .split('\n')
        .map((s) => Number(s.trim()))
        .filter((p) => Number.isInteger(p) && p > 1 && p !== process.pid);
      for (const pid of pids) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
      await waitFor(() => pids.every((p) => !alive(p)), 3_000, `processes in ${ns} to exit`).catch(() => {});
    }
    for (const ns of [app, net]) {
      if (existsSync(`${NETNS_DIR}/${ns}`)) tryRun(['ip', 'netns', 'del', ns]);
    }
    if (isMountPoint(pinDir)) {
      if (!tryRun(['umount', pinDir])) tryRun(['umount', '-l', pinDir]);
    }
    if (!isMountPoint(pinDir)) rmSync(runDir, { recursive: true, force: true });
  };

  const destroy = (): Promise<void> => (destroyed ??= teardown());

  // --- setup (synchronous); on any failure, undo what was done and rethrow.
  try {
    mkdirSync(pinDir, { recursive: true, mode: 0o700 });
    run(['mount', '-t', 'bpf', 'bpf', pinDir]);

    run(['ip', 'netns', 'add', app]);
    run(['ip', 'netns', 'add', net]);
    for (const ns of [app, net]) {
      // Before the veth exists, so it is created with DAD off.
      run([
        'ip', 'netns', 'exec', ns, 'sysctl', '-q', '-w',
        'net.ipv6.conf.all.accept_dad=0',
        'net.ipv6.conf.default.accept_dad=0',
        'net.ipv6.conf.all.forwarding=0',
        'net.ipv4.ip_forward=0',
      ]);
      run(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
    }
    // Created inside the app ns, peer moved straight into the net ns: never
    // touches the host's namespace.
    run([
      'ip', '-n', app, 'link', 'add', appIf, 'numtxqueues', '2', 'numrxqueues', '2',
      'type', 'veth', 'peer', 'name', netIf, 'numtxqueues', '2', 'numrxqueues', '2', 'netns', net,
    ]);

    run(['ip', '-n', app, 'addr', 'add', `${appliance4}/30`, 'dev', appIf]);
    run(['ip', '-n', app, 'addr', 'add', `${appliance6}/64`, 'dev', appIf, 'nodad']);
    run(['ip', '-n', net, 'addr', 'add', `${peer4}/30`, 'dev', netIf]);
    run(['ip', '-n', net, 'addr', 'add', `${peer6}/64`, 'dev', netIf, 'nodad']);
    for (const a of [...internetClients4, internalClient4]) run(['ip', '-n', net, 'addr', 'add', `${a}/32`, 'dev', 'lo']);
    for (const a of internetClients6) run(['ip', '-n', net, 'addr', 'add', `${a}/128`, 'dev', 'lo', 'nodad']);
    run(['ip', '-n', app, 'link', 'set', appIf, 'up']);
    run(['ip', '-n', net, 'link', 'set', netIf, 'up']);

    // A veth's carrier comes up via linkwatch, which may run up to 1 s later;
    // until then its qdisc is noop and drops everything (a lost first ARP/NS
    // costs a 1 s retransmit). Wait for it, and for IPv6 link-locals.
    waitForSync(
      () => [[app, appIf], [net, netIf]].every(([ns, dev]) => linkReady(ns!, dev!)),
      5_000,
      'veth carrier and IPv6 link-local addresses',
    );

    run(['ip', '-n', app, 'route', 'add', 'default', 'via', peer4, 'dev', appIf]);
    run(['ip', '-n', app, '-6', 'route', 'add', 'default', 'via', peer6, 'dev', appIf]);
    run(['ip', '-n', app, 'route', 'add', internalPrefix4, 'via', peer4, 'dev', appIf]);
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    return failSetup(msg);
  }

  function failSetup(msg: string): never {
    // Synchronous best-effort undo (destroy() is async; nothing was spawned yet).
    for (const ns of [app, net]) if (existsSync(`${NETNS_DIR}/${ns}`)) tryRun(['ip', 'netns', 'del', ns]);
    if (isMountPoint(pinDir)) tryRun(['umount', pinDir]) || tryRun(['umount', '-l', pinDir]);
    if (!isMountPoint(pinDir)) rmSync(runDir, { recursive: true, force: true });
    throw new Error(`createTestbed(${tag}): ${msg}`);
  }

  return {
    tag,
    app,
    net,
    appIf,
    netIf,
    appliance4,
    appliance6,
    internetClients4,
    internetClients6,
    internalClient4,
    internalPrefix4,
    pinDir,
    store,
    env,
    exec,
    spawn,
    startServers,
    client,
    destroy,
  };
}
