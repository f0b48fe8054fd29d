/**
 * Real etcd members for tests, the fleet demo and the fleet benchmark.
 *
 * Debian's `etcd-server` (/usr/bin/etcd, v3.4) on loopback only: every member
 * listens on 127.0.0.1 with free client and peer ports (never 2379/2380), and
 * optionally on a unix socket too, which a process inside a network namespace
 * can reach (a socket file is not bound to a network namespace). Data dirs
 * live under a fresh directory in the OS tmpdir. Members are started and
 * stopped by PID; destroy() kills every member and removes the directory, and
 * a process-exit hook does the same if a test dies before calling it.
 *
 * TLS: a throwaway CA and server/client certificates made with `openssl` in
 * the temp dir; `env()` gives CONNRATE_ETCD_CA/_CERT/_KEY for them. Auth:
 * `enableAuth()` creates the root user and turns authentication on.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Etcd3, type IOptions } from 'etcd3';

export const ETCD_BIN = process.env.CONNRATE_ETCD_BIN ?? '/usr/bin/etcd';
/** etcd's well-known ports: a test member never uses them, so a host etcd can never be hit by mistake. */
const RESERVED_PORTS = new Set([2379, 2380]);
const HEALTH_TIMEOUT_MS = 20_000;
const STOP_GRACE_MS = 5_000;

export interface EtcdOptions {
  /** Number of members (default 1). */
  members?: number;
  /** Serve clients and peers over TLS with client-certificate authentication. */
  tls?: boolean;
  /** Also listen on a plaintext unix socket per member (reachable from any network namespace); not with `tls`. */
  unixSockets?: boolean;
  /** --quota-backend-bytes (default: etcd's 2 GiB). */
  quotaBackendBytes?: number;
  /** Extra flags for every member. */
  extraArgs?: string[];
}

export interface EtcdTlsFiles {
  /** CA certificate (CONNRATE_ETCD_CA). */
  ca: string;
  /** Client certificate and key (CONNRATE_ETCD_CERT / _KEY), CN `connrate-client`. */
  cert: string;
  key: string;
}

export interface EtcdMember {
  readonly name: string;
  readonly index: number;
  /** http(s)://127.0.0.1:PORT */
  readonly clientUrl: string;
  readonly peerUrl: string;
  /** unix:///…/NAME.sock when `unixSockets` was asked for (for the etcd3 client / CONNRATE_ETCD). */
  readonly unixUrl: string | undefined;
  readonly dataDir: string;
  readonly logFile: string;
  /** PID of the running process, undefined while stopped. */
  readonly pid: number | undefined;
  readonly running: boolean;
}

export interface EtcdCluster {
  readonly members: readonly EtcdMember[];
  /** Client URLs of every member. */
  readonly endpoints: string[];
  /** Unix socket URLs of every member (empty unless `unixSockets`). */
  readonly unixEndpoints: string[];
  readonly tls: EtcdTlsFiles | undefined;
  /** The temp dir holding data dirs, logs and certificates. */
  readonly dir: string;
  /** CONNRATE_ETCD (comma-separated) and, with TLS, CONNRATE_ETCD_CA/_CERT/_KEY; `unix` picks the socket URLs; `auth` adds _USER/_PASSWORD. */
  env(opts?: { unix?: boolean; auth?: { user: string; password: string } }): Record<string, string>;
  /** etcd3 options for these members (TLS credentials included). */
  clientOptions(opts?: { auth?: { user: string; password: string }; members?: readonly EtcdMember[] }): IOptions;
  /** A new etcd3 client; closed by destroy() if the caller did not close it. */
  client(opts?: { auth?: { user: string; password: string }; members?: readonly EtcdMember[] }): Etcd3;
  /** SIGTERM, then SIGKILL after a grace period; waits for the exit. */
  stop(member: EtcdMember): Promise<void>;
  /** SIGKILL; waits for the exit. */
  kill(member: EtcdMember): Promise<void>;
  /** Start a stopped member again on its data dir and ports; waits until it is healthy. */
  start(member: EtcdMember): Promise<void>;
  /** stop() then start(). */
  restart(member: EtcdMember): Promise<void>;
  /** The member that is leader now, asked of the running members (waits for one up to 20 s). */
  leader(): Promise<EtcdMember>;
  /** The store's current revision. */
  revision(): Promise<number>;
  /** Compact the key-value history up to `revision` (physical: waits until it is applied). */
  compact(revision: number): Promise<void>;
  /** Backend database size in bytes as each running member reports it (`dbSize`). */
  dbSize(): Promise<number>;
  /** Create user root with role root and enable authentication; later clients need `auth`. */
  enableAuth(rootPassword: string): Promise<void>;
  /** A client certificate/key signed by the test CA with the given CN (TLS only). */
  issueClientCert(cn: string): { cert: string; key: string };
  /** Waits until every running member answers /health with a leader. */
  waitHealthy(timeoutMs?: number): Promise<void>;
  /** Kill every member by PID, close clients, remove the temp dir. Idempotent. */
  destroy(): Promise<void>;
}

interface MemberState {
  name: string;
  index: number;
  clientPort: number;
  peerPort: number;
  clientUrl: string;
  peerUrl: string;
  unixUrl: string | undefined;
  dataDir: string;
  logFile: string;
  child: ChildProcess | undefined;
  started: boolean;
}

// Every live member of this process, for the exit hook.
const live = new Set<{ child: ChildProcess; dir: string }>();
const liveDirs = new Set<string>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const { child } of live) {
      try {
        if (child.pid !== undefined) process.kill(child.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    for (const dir of liveDirs) rmSync(dir, { recursive: true, force: true });
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** `count` distinct free TCP ports on 127.0.0.1 (held open together, so they differ). */
export async function freePorts(count: number): Promise<number[]> {
  const servers = [];
  const ports: number[] = [];
  try {
    while (ports.length < count) {
      const s = createServer();
      servers.push(s);
      await new Promise<void>((resolve, reject) => {
        s.once('error', reject);
        s.listen(0, '127.0.0.1', () => resolve());
      });
      const port = (s.address() as AddressInfo).port;
      if (!RESERVED_PORTS.has(port)) ports.push(port);
    }
  } finally {
    await Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
  }
  return ports;
}

function openssl(args: string[], cwd: string): void {
  const r = spawnSync('openssl', args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  if (r.error) throw new Error(`openssl ${args[0]}: ${r.error.message} (is openssl installed? run scripts/setup.sh)`);
  if (r.status !== 0) throw new Error(`openssl ${args.join(' ')}: exit ${r.status}: ${r.stderr.trim()}`);
}

/** A CA, a server certificate for 127.0.0.1/localhost (server and client auth, for peers too), and a client certificate. */
function makeCerts(dir: string): { ca: string; caKey: string; serverCert: string; serverKey: string; issue(cn: string, base: string): { cert: string; key: string } } {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=connrate-test-ca',
    '-keyout', 'ca.key', '-out', 'ca.crt'], dir);
  let serial = 1;
  const sign = (base: string, cn: string, ext: string): { cert: string; key: string } => {
    writeFileSync(join(dir, `${base}.ext`), ext);
    openssl(['req', '-newkey', 'rsa:2048', '-nodes', '-subj', `/CN=${cn}`, '-keyout', `${base}.key`, '-out', `${base}.csr`], dir);
    openssl(['x509', '-req', '-in', `${base}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-set_serial', String(serial++),
      '-days', '2', '-extfile', `${base}.ext`, '-out', `${base}.crt`], dir);
    return { cert: join(dir, `${base}.crt`), key: join(dir, `${base}.key`) };
  };
  const server = sign('server', 'localhost',
    'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n');
  let issued = 0;
  const issue = (cn: string, base: string): { cert: string; key: string } =>
    sign(`${base}-${issued++}`, cn, 'extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n');
  return { ca: join(dir, 'ca.crt'), caKey: join(dir, 'ca.key'), serverCert: server.cert, serverKey: server.key, issue };
}

function tail(file: string, lines = 15): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  }
}

export async function startEtcd(opts: EtcdOptions = {}): Promise<EtcdCluster> {
  if (!existsSync(ETCD_BIN)) throw new Error(`${ETCD_BIN} not found: install Debian's etcd-server (scripts/setup.sh)`);
  const n = opts.members ?? 1;
  if (opts.tls && opts.unixSockets) throw new Error('startEtcd: unix sockets are plaintext; use them without tls');
  if (!Number.isInteger(n) || n < 1 || n > 9) throw new Error(`etcd members must be 1..9, got ${n}`);
  installExitHook();
  const dir = mkdtempSync(join(tmpdir(), 'connrate-etcd-'));
  liveDirs.add(dir);
  const scheme = opts.tls ? 'https' : 'http';
  const token = `connrate-${process.pid}-${Date.now().toString(36)}`;
  const clients = new Set<Etcd3>();
  let certs: ReturnType<typeof makeCerts> | undefined;
  let tls: EtcdTlsFiles | undefined;
  let destroyed: Promise<void> | undefined;

  try {
    if (opts.tls) {
      certs = makeCerts(join(dir, 'tls'));
      const client = certs.issue('connrate-client', 'client');
      tls = { ca: certs.ca, cert: client.cert, key: client.key };
    }
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    liveDirs.delete(dir);
    throw e;
  }

  const ports = await freePorts(2 * n);
  const states: MemberState[] = Array.from({ length: n }, (_, i) => {
    const name = `m${i}`;
    return {
      name,
      index: i,
      clientPort: ports[2 * i]!,
      peerPort: ports[2 * i + 1]!,
      clientUrl: `${scheme}://127.0.0.1:${ports[2 * i]}`,
      peerUrl: `${scheme}://127.0.0.1:${ports[2 * i + 1]}`,
      // etcd wants host:port even for a socket: the file is `<name>.sock:0` in its working dir.
      unixUrl: opts.unixSockets ? `unix://${join(dir, `${name}.sock:0`)}` : undefined,
      dataDir: join(dir, name),
      logFile: join(dir, `${name}.log`),
      child: undefined,
      started: false,
    };
  });
  const initialCluster = states.map((s) => `${s.name}=${s.peerUrl}`).join(',');

  const argsOf = (s: MemberState): string[] => {
    const listen = [s.clientUrl, ...(s.unixUrl ? [`unix://${s.name}.sock:0`] : [])].join(',');
    const args = [
      '--name', s.name,
      '--data-dir', s.dataDir,
      '--listen-client-urls', listen,
      '--advertise-client-urls', s.clientUrl,
      '--listen-peer-urls', s.peerUrl,
      '--initial-advertise-peer-urls', s.peerUrl,
      '--initial-cluster', initialCluster,
      '--initial-cluster-token', token,
      '--initial-cluster-state', 'new',
      '--listen-metrics-urls', '',
      '--logger', 'zap',
      '--log-outputs', 'stderr',
      '--log-level', 'warn',
      // Loopback: fast elections, so a leader kill is over in well under a second.
      '--heartbeat-interval', '50',
      '--election-timeout', '500',
    ];
    if (opts.quotaBackendBytes !== undefined) args.push('--quota-backend-bytes', String(opts.quotaBackendBytes));
    if (certs) {
      args.push(
        '--cert-file', certs.serverCert, '--key-file', certs.serverKey, '--trusted-ca-file', certs.ca, '--client-cert-auth',
        '--peer-cert-file', certs.serverCert, '--peer-key-file', certs.serverKey, '--peer-trusted-ca-file', certs.ca,
        '--peer-client-cert-auth',
      );
    }
    args.push(...(opts.extraArgs ?? []));
    return args;
  };

  const spawnMember = (s: MemberState): void => {
    if (s.child && s.child.exitCode === null && s.child.signalCode === null) throw new Error(`etcd ${s.name} is already running`);
    // A member that was killed leaves its socket file behind; etcd would refuse to bind it again.
    if (s.unixUrl) rmSync(s.unixUrl.slice('unix://'.length), { force: true });
    const fd = openSync(s.logFile, 'a');
    // Its own process group: a Ctrl-C meant for the test runner does not reach it; we end it by PID.
    const child = spawn(ETCD_BIN, argsOf(s), { cwd: dir, stdio: ['ignore', fd, fd], detached: true, env: { ...process.env, ETCDCTL_API: '3' } });
    closeSync(fd);
    child.on('error', () => {});
    const entry = { child, dir };
    live.add(entry);
    child.once('exit', () => live.delete(entry));
    s.child = child;
    s.started = true;
  };

  const running = (s: MemberState): boolean => !!s.child && s.child.exitCode === null && s.child.signalCode === null;

  const health = (s: MemberState): Promise<boolean> =>
    new Promise((resolve) => {
      const url = new URL('/health', s.clientUrl);
      const common = { hostname: url.hostname, port: url.port, path: url.pathname, timeout: 1_000 };
      const req = certs && tls
        ? httpsRequest({ ...common, servername: 'localhost', ca: readFileSync(tls.ca), cert: readFileSync(tls.cert), key: readFileSync(tls.key) })
        : httpRequest(common);
      req.on('response', (res) => {
        let body = '';
        res.setEncoding('utf8').on('data', (d: string) => (body += d)).on('end', () => {
          try {
            resolve(res.statusCode === 200 && (JSON.parse(body) as { health?: string }).health === 'true');
          } catch {
            resolve(false);
          }
        });
      });
      req.on('timeout', () => req.destroy());
      req.on('error', () => resolve(false));
      req.end();
    });

  const waitHealthy = async (timeoutMs = HEALTH_TIMEOUT_MS): Promise<void> => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      // Members meant to run (started and not stopped by us).
      const up = states.filter((s) => s.started);
      const dead = up.find((s) => !running(s));
      if (dead) throw new Error(`etcd ${dead.name} exited (${dead.child?.exitCode ?? dead.child?.signalCode}) before it was healthy:\n${tail(dead.logFile)}`);
      const ok = await Promise.all(up.map(health));
      if (up.length && ok.every(Boolean)) return;
      if (Date.now() >= deadline) {
        const s = up[ok.indexOf(false)] ?? states[0]!;
        throw new Error(`etcd ${s.name} not healthy within ${timeoutMs} ms:\n${tail(s.logFile)}`);
      }
      await sleep(50);
    }
  };

  const signalAndWait = async (s: MemberState, signal: NodeJS.Signals, graceMs: number): Promise<void> => {
    s.started = false;
    const child = s.child;
    if (!child || !running(s)) return;
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    try {
      process.kill(child.pid!, signal);
    } catch {
      /* already gone */
    }
    const timedOut = await Promise.race([exited.then(() => false), sleep(graceMs).then(() => true)]);
    if (timedOut) {
      try {
        process.kill(child.pid!, 'SIGKILL');
      } catch {
        /* gone */
      }
      await exited;
    }
  };

  const stateOf = (m: EtcdMember): MemberState => {
    const s = states[m.index];
    if (!s || s.name !== m.name) throw new Error(`not a member of this cluster: ${m.name}`);
    return s;
  };

  const memberView = (s: MemberState): EtcdMember => ({
    name: s.name,
    index: s.index,
    clientUrl: s.clientUrl,
    peerUrl: s.peerUrl,
    unixUrl: s.unixUrl,
    dataDir: s.dataDir,
    logFile: s.logFile,
    get pid() {
      return running(s) ? s.child!.pid : undefined;
    },
    get running() {
      return running(s);
    },
  });
  const members = states.map(memberView);

  const clientOptions = (o: { auth?: { user: string; password: string }; members?: readonly EtcdMember[] } = {}): IOptions => {
    const hosts = (o.members ?? members).map((m) => m.clientUrl);
    return {
      hosts,
      ...(tls
        ? { credentials: { rootCertificate: readFileSync(tls.ca), certChain: readFileSync(tls.cert), privateKey: readFileSync(tls.key) } }
        : {}),
      ...(o.auth ? { auth: { username: o.auth.user, password: o.auth.password } } : {}),
    };
  };

  const client = (o: { auth?: { user: string; password: string }; members?: readonly EtcdMember[] } = {}): Etcd3 => {
    const c = new Etcd3(clientOptions(o));
    clients.add(c);
    const close = c.close.bind(c);
    c.close = () => {
      clients.delete(c);
      close();
    };
    return c;
  };

  // Admin calls go through a short-lived client (auth once enabled).
  let rootAuth: { user: string; password: string } | undefined;
  const withClient = async <T>(fn: (c: Etcd3) => Promise<T>, only?: readonly EtcdMember[]): Promise<T> => {
    const c = client({ ...(rootAuth ? { auth: rootAuth } : {}), members: only ?? members.filter((m) => m.running) });
    try {
      return await fn(c);
    } finally {
      c.close();
    }
  };

  const cluster: EtcdCluster = {
    members,
    endpoints: members.map((m) => m.clientUrl),
    unixEndpoints: members.flatMap((m) => (m.unixUrl ? [m.unixUrl] : [])),
    tls,
    dir,
    env(o = {}) {
      const eps = o.unix ? cluster.unixEndpoints : cluster.endpoints;
      if (o.unix && !eps.length) throw new Error('env({unix: true}): this cluster was started without unixSockets');
      const env: Record<string, string> = { CONNRATE_ETCD: eps.join(',') };
      if (tls) Object.assign(env, { CONNRATE_ETCD_CA: tls.ca, CONNRATE_ETCD_CERT: tls.cert, CONNRATE_ETCD_KEY: tls.key });
      if (o.auth) Object.assign(env, { CONNRATE_ETCD_USER: o.auth.user, CONNRATE_ETCD_PASSWORD: o.auth.password });
      return env;
    },
    clientOptions,
    client,
    async stop(m) {
      await signalAndWait(stateOf(m), 'SIGTERM', STOP_GRACE_MS);
    },
    async kill(m) {
      await signalAndWait(stateOf(m), 'SIGKILL', STOP_GRACE_MS);
    },
    async start(m) {
      if (destroyed) throw new Error('etcd cluster already destroyed');
      spawnMember(stateOf(m));
      await waitHealthy();
    },
    async restart(m) {
      await cluster.stop(m);
      await cluster.start(m);
    },
    async leader() {
      const deadline = Date.now() + HEALTH_TIMEOUT_MS;
      for (;;) {
        for (const m of members.filter((x) => x.running)) {
          try {
            const st = await withClient((c) => c.maintenance.status(), [m]);
            if (st.leader !== '0' && st.leader === st.header.member_id) return m;
          } catch {
            /* not answering (yet): ask the next one */
          }
        }
        if (Date.now() >= deadline) throw new Error('etcd: no leader among the running members within 20 s');
        await sleep(50);
      }
    },
    async revision() {
      const st = await withClient((c) => c.maintenance.status());
      return Number(st.header.revision);
    },
    async compact(revision) {
      await withClient((c) => c.kv.compact({ revision: String(revision), physical: true }));
    },
    async dbSize() {
      const sizes = await Promise.all(
        members.filter((m) => m.running).map((m) => withClient((c) => c.maintenance.status(), [m]).then((s) => Number(s.dbSize))),
      );
      return Math.max(...sizes);
    },
    async enableAuth(rootPassword) {
      await withClient(async (c) => {
        const root = await c.user('root').create(rootPassword);
        await root.addRole('root');
        await c.auth.authEnable();
      });
      rootAuth = { user: 'root', password: rootPassword };
    },
    issueClientCert(cn) {
      if (!certs) throw new Error('issueClientCert: this cluster was started without tls');
      if (!/^[A-Za-z0-9_.-]{1,64}$/.test(cn)) throw new Error(`issueClientCert: bad CN ${JSON.stringify(cn)}`);
      return certs.issue(cn, 'client');
    },
    waitHealthy,
    destroy() {
      destroyed ??= (async () => {
        for (const c of [...clients]) c.close();
        await Promise.all(states.map((s) => signalAndWait(s, 'SIGKILL', STOP_GRACE_MS)));
        rmSync(dir, { recursive: true, force: true });
        liveDirs.delete(dir);
      })();
      return destroyed;
    },
  };

  try {
    states.forEach(spawnMember);
    await waitHealthy();
  } catch (e) {
    await cluster.destroy();
    throw e;
  }
  return cluster;
}
