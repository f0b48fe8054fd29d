/**
 * The bench topology: two network namespaces joined by one veth pair, only
 * 198.18.0.0/15 and 2001:db8::/32, nothing linked to the host's namespace.
 *
 *   crb-gen "the Internet"                     crb-dut "the appliance"
 *   crbg  (XDP: bench_sink drops replies)  <->  crbd  (XDP: the engine)
 *   198.18.0.2/30  2001:db8::2/64               198.18.0.1/30  2001:db8::1/64
 *   gen-worker.ts on CPU 0: live-frames          default via 198.18.0.2 / 2001:db8::2
 *   BPF_PROG_TEST_RUN → bpf_redirect(crbg)       threaded NAPI on CPU 1
 *
 * The generator transmits into crbg, so frames arrive on crbd's receive queue
 * and are handled by crbd's NAPI thread — pinned to the other CPU, like a NIC
 * queue's interrupt would be. The engine's XDP program runs there; what it
 * passes goes up crbd's stack (conntrack, iptables, nftables, sockets).
 *
 * crb-gen and the generator live for the whole run; crb-dut (and the veth
 * pair) is made fresh for every measurement, so no engine inherits state
 * (conntrack entries, hashlimit tables, LRU maps) from another.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { cpus } from 'node:os';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

export const NET = {
  genNs: 'crb-gen',
  dutNs: 'crb-dut',
  genIf: 'crbg',
  dutIf: 'crbd',
  dut4: '198.18.0.1',
  gen4: '198.18.0.2',
  link4: '198.18.0.0/30',
  dut6: '2001:db8::1',
  gen6: '2001:db8::2',
  link6: '2001:db8::/64',
  runDir: '/run/crb-bench',
  pinDir: '/run/crb-bench/bpf',
} as const;

const WORKER = fileURLToPath(new URL('./gen-worker.ts', import.meta.url));

/** Run a command, argv form; throws with its stderr. */
export function sh(argv: string[], opts: { input?: string; timeoutMs?: number } = {}): string {
  const [cmd, ...args] = argv;
  const r = spawnSync(cmd!, args, { encoding: 'utf8', input: opts.input, timeout: opts.timeoutMs ?? 30_000, stdio: ['pipe', 'pipe', 'pipe'] });
  if (r.error) throw new Error(`${argv.join(' ')}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`${argv.join(' ')}: exit ${r.status ?? r.signal}: ${r.stderr.trim()}`);
  return r.stdout;
}

/** Same, never throws: for cleanup. */
export function trySh(argv: string[]): boolean {
  const [cmd, ...args] = argv;
  const r = spawnSync(cmd!, args, { encoding: 'utf8', timeout: 10_000, stdio: ['ignore', 'pipe', 'pipe'] });
  return !r.error && r.status === 0;
}

/** `ip netns exec NS argv…` */
export function inNs(ns: string, argv: string[], opts?: { input?: string }): string {
  return sh(['ip', 'netns', 'exec', ns, ...argv], opts);
}

function nsExists(ns: string): boolean {
  return existsSync(`/run/netns/${ns}`);
}

function isMountPoint(path: string): boolean {
  return readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] === path);
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

function mac(ns: string, dev: string): string {
  return (JSON.parse(sh(['ip', '-n', ns, '-j', 'link', 'show', 'dev', dev])) as { address: string }[])[0]!.address;
}

export interface GenReply {
  ok: boolean;
  error?: string;
  frames?: number;
  /** Wall clock of the request. */
  elapsedNs?: number;
  /** Time the generator's run loops ran (without each call's set-up and teardown, or preemption). */
  busyNs?: number;
}

/** The generator worker, inside crb-gen, on `cpu`. */
class Generator {
  #child: ChildProcess;
  #pending: ((r: GenReply) => void)[] = [];
  #exited = false;

  constructor(cpu: number) {
    this.#child = spawn('ip', ['netns', 'exec', NET.genNs, 'taskset', '-c', String(cpu), process.execPath, '--import', 'tsx', WORKER], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    createInterface({ input: this.#child.stdout! }).on('line', (line) => this.#pending.shift()?.(JSON.parse(line) as GenReply));
    this.#child.on('exit', () => {
      this.#exited = true;
      for (const p of this.#pending.splice(0)) p({ ok: false, error: 'the generator exited' });
    });
  }

  async request(req: Record<string, unknown>): Promise<GenReply> {
    if (this.#exited) throw new Error('the generator exited');
    const reply = await new Promise<GenReply>((resolve) => {
      this.#pending.push(resolve);
      this.#child.stdin!.write(`${JSON.stringify(req)}\n`);
    });
    if (!reply.ok) throw new Error(`generator: ${reply.error}`);
    return reply;
  }

  async stop(): Promise<void> {
    if (this.#exited) return;
    const gone = new Promise<void>((r) => this.#child.once('exit', () => r()));
    this.#child.stdin!.end();
    const timer = setTimeout(() => this.#child.kill('SIGKILL'), 3000);
    await gone;
    clearTimeout(timer);
  }
}

export interface Dut {
  dutMac: string;
  genMac: string;
}

export class Topology {
  readonly genCpu: number;
  readonly rxCpu: number;
  readonly gen: Generator;
  #dutProcs: ChildProcess[] = [];
  #dut: Dut | undefined;
  #napi: number[] = [];

  private constructor() {
    const n = cpus().length;
    this.genCpu = 0;
    this.rxCpu = n > 1 ? 1 : 0;
    this.gen = new Generator(this.genCpu);
  }

  /** Remove whatever an interrupted run left behind (only our own names). */
  static cleanupLeftovers(): void {
    trySh(['ip', '-n', NET.genNs, 'link', 'del', NET.genIf]);
    for (const ns of [NET.dutNs, NET.genNs]) if (nsExists(ns)) trySh(['ip', 'netns', 'del', ns]);
    if (existsSync(NET.pinDir) && isMountPoint(NET.pinDir)) trySh(['umount', NET.pinDir]);
    rmSync(NET.runDir, { recursive: true, force: true });
  }

  static open(): Topology {
    Topology.cleanupLeftovers();
    mkdirSync(NET.pinDir, { recursive: true, mode: 0o700 });
    sh(['mount', '-t', 'bpf', 'crb-bench', NET.pinDir]); // under /run: visible inside `ip netns exec`
    sh(['ip', 'netns', 'add', NET.genNs]);
    sh(['ip', '-n', NET.genNs, 'link', 'set', 'lo', 'up']);
    return new Topology();
  }

  get dut(): Dut {
    if (!this.#dut) throw new Error('no dut namespace');
    return this.#dut;
  }

  /** A fresh crb-dut and veth pair; the generator's sink on crbg. */
  async createDut(): Promise<Dut> {
    await this.destroyDut();
    const { genNs, dutNs, genIf, dutIf } = NET;
    sh(['ip', 'netns', 'add', dutNs]);
    sh(['ip', 'link', 'add', genIf, 'netns', genNs, 'type', 'veth', 'peer', 'name', dutIf, 'netns', dutNs]);
    const sysctls = [
      'net.ipv4.conf.all.rp_filter=0', 'net.ipv4.conf.default.rp_filter=0', `net.ipv4.conf.${dutIf}.rp_filter=0`,
      `net.ipv6.conf.${dutIf}.accept_ra=0`, `net.ipv6.conf.${dutIf}.router_solicitations=0`, `net.ipv6.conf.${dutIf}.accept_dad=0`,
    ];
    inNs(dutNs, ['sysctl', '-q', '-w', ...sysctls]);
    inNs(genNs, ['sysctl', '-q', '-w', `net.ipv6.conf.${genIf}.accept_dad=0`, `net.ipv6.conf.${genIf}.router_solicitations=0`]);
    // one `ip -batch` per namespace and step: spawning is most of the set-up time on a busy machine
    const batch = (ns: string, lines: string[]): string => sh(['ip', '-n', ns, '-batch', '-'], { input: `${lines.join('\n')}\n` });
    batch(dutNs, ['link set lo up', `addr add ${NET.dut4}/30 dev ${dutIf}`, `addr add ${NET.dut6}/64 dev ${dutIf} nodad`, `link set ${dutIf} up`]);
    batch(genNs, [`addr add ${NET.gen4}/30 dev ${genIf}`, `addr add ${NET.gen6}/64 dev ${genIf} nodad`, `link set ${genIf} up`]);
    const genMac = mac(genNs, genIf);
    const dutMac = mac(dutNs, dutIf);
    // replies leave through the generator's side without ARP/ND (its sink drops everything)
    batch(dutNs, [
      `neigh replace ${NET.gen4} lladdr ${genMac} dev ${dutIf} nud permanent`,
      `neigh replace ${NET.gen6} lladdr ${genMac} dev ${dutIf} nud permanent`,
      `route add default via ${NET.gen4} dev ${dutIf}`,
      `route add ::/0 via ${NET.gen6} dev ${dutIf}`,
    ]);
    this.#dut = { dutMac, genMac };
    await this.gen.request({ cmd: 'attach', dev: genIf });
    return this.#dut;
  }

  /**
   * Attach the pinned XDP program at `pin` to crbd (native mode), then move
   * crbd's receive processing to a NAPI thread on the receive CPU.
   */
  attachDut(pin: string): void {
    sh(['ip', '-n', NET.dutNs, 'link', 'set', 'dev', NET.dutIf, 'xdpdrv', 'pinned', pin]);
    inNs(NET.dutNs, ['sh', '-c', `echo 1 > /sys/class/net/${NET.dutIf}/threaded`]);
    const threads = napiThreads(NET.dutIf);
    if (threads.length === 0) throw new Error(`no NAPI thread for ${NET.dutIf}`);
    for (const pid of threads) sh(['taskset', '-p', '-c', String(this.rxCpu), String(pid)]);
    this.#napi = threads;
    const deadline = Date.now() + 5000;
    while (!/state UP/.test(sh(['ip', '-n', NET.dutNs, 'link', 'show', 'dev', NET.dutIf]))) {
      if (Date.now() > deadline) throw new Error(`${NET.dutIf} did not come up`);
      sleepSync(20);
    }
  }

  /**
   * CPU time crbd's NAPI threads have run so far, ns (/proc/PID/schedstat, first
   * field): all of crbd's receive processing — XDP, then whatever the stack
   * does with a passed frame, replies included — runs in these threads.
   */
  napiCpuNs(): bigint {
    if (this.#napi.length === 0) throw new Error(`${NET.dutIf} has no NAPI thread (nothing attached)`);
    let ns = 0n;
    for (const pid of this.#napi) {
      const comm = readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
      if (!comm.startsWith(`napi/${NET.dutIf}-`)) throw new Error(`NAPI thread ${pid} of ${NET.dutIf} is gone`);
      ns += BigInt(readFileSync(`/proc/${pid}/schedstat`, 'utf8').split(' ')[0]!);
    }
    return ns;
  }

  /** The id of the XDP program attached to crbd. */
  dutProgId(): number {
    const links = JSON.parse(sh(['ip', '-n', NET.dutNs, '-j', 'link', 'show', 'dev', NET.dutIf])) as { xdp?: { prog?: { id?: number } } }[];
    const id = links[0]?.xdp?.prog?.id;
    if (!id) throw new Error(`no XDP program on ${NET.dutIf}`);
    return id;
  }

  /** Start a process inside crb-dut (killed by destroyDut). Resolves on its first stdout line. */
  async spawnInDut(argv: string[]): Promise<{ child: ChildProcess; lines: AsyncIterator<string> }> {
    const child = spawn('ip', ['netns', 'exec', NET.dutNs, ...argv], { stdio: ['ignore', 'pipe', 'inherit'], detached: true });
    this.#dutProcs.push(child);
    const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
    const first = await Promise.race([lines.next(), new Promise<never>((_, rej) => setTimeout(() => rej(new Error(`${argv.join(' ')}: no output`)), 5000))]);
    if (first.done) throw new Error(`${argv.join(' ')} exited`);
    return { child, lines };
  }

  async destroyDut(): Promise<void> {
    for (const c of this.#dutProcs.splice(0)) {
      if (c.exitCode === null && c.signalCode === null && c.pid) {
        const gone = new Promise<void>((r) => c.once('exit', () => r()));
        try {
          process.kill(-c.pid, 'SIGKILL');
        } catch {
          c.kill('SIGKILL');
        }
        await gone;
      }
    }
    if (this.#dut) await this.gen.request({ cmd: 'detach' }).catch(() => undefined);
    this.#dut = undefined;
    this.#napi = [];
    trySh(['ip', '-n', NET.genNs, 'link', 'del', NET.genIf]); // both ends, now
    if (nsExists(NET.dutNs)) trySh(['ip', 'netns', 'del', NET.dutNs]);
  }

  async close(): Promise<void> {
    try {
      await this.destroyDut();
      await this.gen.stop();
    } finally {
      Topology.cleanupLeftovers();
    }
  }
}

/** PIDs of the NAPI kernel threads of `dev` (named napi/<dev>-<id>). */
function napiThreads(dev: string): number[] {
  const out: number[] = [];
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      if (readFileSync(`/proc/${pid}/comm`, 'utf8').trim().startsWith(`napi/${dev}-`)) out.push(Number(pid));
    } catch {
      /* gone */
    }
  }
  return out;
}

/**
 * The clean-up of a benchmark process: close the topology `current()` returns,
 * then remove leftovers by name (and `extra`), once, whether the run ends or
 * is interrupted (SIGINT, SIGTERM: exit 130 after it).
 */
export function cleanupOnExit(current: () => Topology | undefined, log: (msg: string) => void, extra?: () => void): () => Promise<void> {
  let cleaning: Promise<void> | undefined;
  const cleanup = (): Promise<void> => {
    cleaning ??= (async () => {
      try {
        await current()?.close();
      } catch (e) {
        log(`cleanup: ${(e as Error).message}`);
      }
      Topology.cleanupLeftovers();
      extra?.();
    })();
    return cleaning;
  };
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.on(sig, () => {
      log(`${sig}: cleaning up`);
      void cleanup().then(() => process.exit(130));
    });
  }
  return cleanup;
}
