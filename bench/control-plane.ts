/**
 * Control-plane benchmarks:
 *  - extc values: parse and validate (benchmark.js);
 *  - `system update rule`: command start → first packet under the new rule (bench/update-rule.ts);
 *  - `top` and `stats` over 1M tracked keys (bench/top.ts, in-process), and the
 *    same commands as an admin runs them (the CLI, wall clock) against a daemon
 *    holding 1M keys;
 *  - that daemon's memory (RSS) and the kernel memory of its bucket map.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import Benchmark from 'benchmark';
import { BpfMap } from '@xdp-ts/loader';
import { canonicalValue, defaults, resolve, VARIABLES } from '../src/config/variables.js';
import { Datapath } from '../src/control/datapath.js';
import { PinDir } from '../src/control/pins.js';
import { fillKeys } from './keys.js';
import { measureTop } from './top.js';
import { measureUpdateRule } from './update-rule.js';
import { NET, sh, trySh } from './topology.js';

const BIN = fileURLToPath(new URL('../bin/connrate', import.meta.url));
const LAUNCHER = fileURLToPath(new URL('./daemon-1m.ts', import.meta.url));
const KEYS = 1 << 20;

export interface SuiteResult {
  name: string;
  opsPerSec: number;
  meanUs: number;
  rmePct: number;
  samples: number;
}

// ------------------------------------------------------------------ extc (benchmark.js)

const SAMPLE: Readonly<Record<string, string>> = {
  CONNECTION_RATE_LIMIT_TCP: '20',
  CONNECTION_RATE_LIMIT_TCP_PORTS: '[ 443 11115 8443 ]',
  CONNECTION_RATE_LIMIT_UDP: '20',
  CONNECTION_RATE_LIMIT_UDP_PORTS: '[1194 51820]',
  CONNECTION_RATE_LIMIT_BURST: '5',
  CONNECTION_RATE_LIMIT_MODE: 'block',
  CONNECTION_RATE_LIMIT_EXEMPT: '[ 198.18.0.0/24 198.19.128.0/17 2001:db8:ff::/48 ]',
  CONNECTION_RATE_LIMIT_IPV6_PREFIX: '64',
  CONNECTION_RATE_LIMIT_UDP_TIMEOUT: '30',
  CONNECTION_RATE_LIMIT_LOG_ANONYMIZE: '0',
};

function validateAll(values: Readonly<Record<string, string>>): Record<string, string> {
  const out: Record<string, string> = { ...defaults() };
  for (const v of VARIABLES) if (values[v.name] !== undefined) out[v.name] = canonicalValue('bench', v.name, values[v.name]!);
  return out;
}

export function extcSuite(quick: boolean): Promise<SuiteResult[]> {
  const suite = new Benchmark.Suite('extc');
  const opts = quick ? { maxTime: 0.5, minSamples: 5 } : { maxTime: 2, minSamples: 20 };
  let sink: unknown;
  suite
    .add('parse+validate a port list', () => (sink = canonicalValue('bench', 'CONNECTION_RATE_LIMIT_TCP_PORTS', '[ 443 11115 8443 ]')), opts)
    .add('parse+validate an exempt list (3 CIDRs)', () => (sink = canonicalValue('bench', 'CONNECTION_RATE_LIMIT_EXEMPT', SAMPLE.CONNECTION_RATE_LIMIT_EXEMPT!)), opts)
    .add('refuse a bad value', () => {
      try {
        canonicalValue('bench', 'CONNECTION_RATE_LIMIT_TCP_PORTS', '[ 443 70000 ]');
      } catch (e) {
        sink = e;
      }
    }, opts)
    .add('validate all 10 variables + resolve', () => (sink = resolve(validateAll(SAMPLE))), opts);
  return new Promise((done, fail) => {
    suite.on('error', (e: { target: { error: unknown } }) => fail(e.target.error));
    suite.on('complete', function (this: Benchmark.Suite) {
      void sink;
      const out: SuiteResult[] = [];
      this.forEach((b: Benchmark) => {
        out.push({ name: String(b.name), opsPerSec: b.hz, meanUs: b.stats.mean * 1e6, rmePct: b.stats.rme, samples: b.stats.sample.length });
      });
      done(out);
    });
    suite.run({ async: true });
  });
}

// ------------------------------------------------------------------ a daemon with 1M keys

export interface DaemonMemory {
  keys: number;
  /** The daemon's resident set, just started and after the keys were added and read through it. */
  rssIdleMiB: number;
  rssWith1MKeysMiB: number;
  /** Kernel memory of the bucket map (bpftool's bytes_memlock). */
  bucketMapMiB: number;
  /** The CLI as admins run it, wall clock (Node start included). */
  cliTopMs: number;
  cliStatsMs: number;
  /** GET /metrics from the daemon (gauges count the keys). */
  metricsScrapeMs: number;
}

const CP_NS = 'crb-cp';
const CP_DIR = `${NET.runDir}/cp`;

function vmRssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

/** The daemon's node process: the launcher runs under `ip netns exec`, which execs it (same pid). */
function timed(argv: string[], env: NodeJS.ProcessEnv): number {
  const t0 = performance.now();
  const r = spawnSync(argv[0]!, argv.slice(1), { env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 });
  const ms = performance.now() - t0;
  if (r.status !== 0) throw new Error(`${argv.join(' ')}: exit ${r.status}: ${r.stderr}`);
  return ms;
}

export function cleanupDaemonLeftovers(): void {
  trySh(['ip', 'netns', 'del', CP_NS]);
  const pinDir = `${CP_DIR}/bpf`;
  if (readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] === pinDir)) trySh(['umount', pinDir]);
  rmSync(CP_DIR, { recursive: true, force: true });
}

export async function measureDaemonMemory(keys = KEYS): Promise<DaemonMemory> {
  cleanupDaemonLeftovers();
  mkdirSync(CP_DIR, { recursive: true, mode: 0o700 });
  const pins = new PinDir(`${CP_DIR}/bpf`);
  pins.ensure(); // a bpffs of our own, mounted before the netns exec so the daemon sees it
  const env = { ...process.env, CONNRATE_PIN_DIR: pins.dir, CONNRATE_STORE: `${CP_DIR}/extc.json`, CRB_BUCKETS: String(Math.ceil(keys * 1.25)), CRB_INTERFACE: 'crbc0' };
  sh(['ip', 'netns', 'add', CP_NS]);
  let daemon: ReturnType<typeof spawn> | undefined;
  try {
    sh(['ip', '-n', CP_NS, 'link', 'add', 'crbc0', 'type', 'veth', 'peer', 'name', 'crbc1']);
    sh(['ip', '-n', CP_NS, 'addr', 'add', '198.18.2.1/30', 'dev', 'crbc0']);
    for (const dev of ['lo', 'crbc0', 'crbc1']) sh(['ip', '-n', CP_NS, 'link', 'set', dev, 'up']);
    sh(['ip', '-n', CP_NS, 'route', 'add', 'default', 'via', '198.18.2.2', 'dev', 'crbc0']);

    daemon = spawn('ip', ['netns', 'exec', CP_NS, process.execPath, '--import', 'tsx', LAUNCHER], { env, stdio: ['ignore', 'pipe', 'inherit'] });
    const lines = createInterface({ input: daemon.stdout! })[Symbol.asyncIterator]();
    const first = await Promise.race([lines.next(), new Promise<never>((_, rej) => setTimeout(() => rej(new Error('the daemon did not start')), 30_000))]);
    if (first.done || !String(first.value).startsWith('ready')) throw new Error('the daemon did not start');
    const pid = daemon.pid!;
    const rssIdleMiB = vmRssMiB(pid);

    // 1M keys, as if 1M (source, port) pairs had opened connections
    const dp = Datapath.open('bench', pins);
    let bucketMapMiB: number;
    try {
      fillKeys(dp, keys, (i) => BigInt((i * 7919) % 100_003)); // 198.18.0.0/15, v4-mapped
      const info = JSON.parse(sh(['bpftool', '-j', 'map', 'show', 'id', String(mapId(dp.maps.buckets.raw))])) as { bytes_memlock?: number };
      bucketMapMiB = (info.bytes_memlock ?? NaN) / 2 ** 20;
    } finally {
      dp.close();
    }

    const cliTopMs = timed([BIN, 'top', '--limit', '20', '--json'], env);
    const cliStatsMs = timed([BIN, 'stats', '--json'], env);
    const scrape = `const t=performance.now();fetch('http://127.0.0.1:9470/metrics').then(r=>r.text()).then(b=>{if(!b.includes('connrate_'))process.exit(1);console.log(performance.now()-t)})`;
    const metricsScrapeMs = Number(sh(['ip', 'netns', 'exec', CP_NS, process.execPath, '-e', scrape]).trim());
    const rssWith1MKeysMiB = vmRssMiB(pid);
    return { keys, rssIdleMiB, rssWith1MKeysMiB, bucketMapMiB, cliTopMs, cliStatsMs, metricsScrapeMs };
  } finally {
    if (daemon && daemon.exitCode === null) {
      const gone = new Promise((r) => daemon!.once('exit', r));
      daemon.kill('SIGTERM');
      const t = setTimeout(() => daemon!.kill('SIGKILL'), 5000);
      await gone;
      clearTimeout(t);
    }
    trySh(['ip', 'netns', 'exec', CP_NS, 'env', `CONNRATE_PIN_DIR=${pins.dir}`, `CONNRATE_STORE=${CP_DIR}/extc.json`, BIN, 'detach']);
    cleanupDaemonLeftovers();
  }
}

function mapId(m: BpfMap): number {
  return m.info().id;
}

// ------------------------------------------------------------------ all of it

export interface ControlPlane {
  extc: SuiteResult[];
  update_rule: { command_to_packet_ms: number; apply_ms: number; rounds_ms: number[] };
  top_1m: { keys: number; top_ms: number; stats_ms: number; fill_ms: number };
  daemon_1m: DaemonMemory;
}

export async function measureControlPlane(quick: boolean, log: (s: string) => void): Promise<ControlPlane> {
  log('control plane: extc parse/validate (benchmark.js)');
  const extc = await extcSuite(quick);
  log('control plane: system update rule → first packet under the new rule');
  const u = await measureUpdateRule();
  log('control plane: top/stats over 1M keys (in-process)');
  const top = measureTop();
  log('control plane: a daemon with 1M keys (memory, CLI top/stats, metrics)');
  const daemon = await measureDaemonMemory();
  return {
    extc,
    update_rule: { command_to_packet_ms: u.commandToPacketMs, apply_ms: u.applyMs, rounds_ms: u.rounds },
    top_1m: { keys: top.keys, top_ms: top.topMs, stats_ms: top.statsMs, fill_ms: top.fillMs },
    daemon_1m: daemon,
  };
}
