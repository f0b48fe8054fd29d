/**
 * The fleet at scale: one `connrate fleet profile set` reaching N appliances.
 *
 * SIMULATION OF APPLIANCES — the controller (`connrate fleet controller`, a real
 * process), the CLI and etcd (Debian's etcd-server, real members on loopback)
 * are real; the appliances are simulated: each speaks the agent's etcd protocol
 * (presence on its own lease, a watch on its desired configuration, status and
 * publication-log writes) through the agent's own code, with the datapath part
 * (store write + `system update rule`) replaced by validation only. Appliances
 * share client connections (`--connections`, default one per 20 appliances):
 * etcd sees every lease, keep-alive stream and watch of every appliance, but
 * fewer TCP/HTTP2 connections than N real appliances would open.
 *
 *   npm run bench:fleet [-- --appliances 1000,10000 --rounds 5 --connections 50]
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { cpus, totalmem, loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { Etcd3 } from 'etcd3';
import { type EtcdCluster, startEtcd } from '../tests/helpers/etcd.js';
import { SimFleet } from './fleet-sim.js';

const BIN = fileURLToPath(new URL('../bin/connrate', import.meta.url));
const PROFILE = 'bench';
const IDLE_WINDOW_S = 15;
const CONFIRM_TIMEOUT_MS = 300_000;

const { values: argv } = parseArgs({
  options: {
    appliances: { type: 'string', default: '1000,10000' },
    rounds: { type: 'string', default: '5' },
    connections: { type: 'string' },
    'per-connection': { type: 'string', default: '20' },
    out: { type: 'string' },
    /** Write a V8 CPU profile of the controller into this directory (node --cpu-prof). */
    'controller-prof': { type: 'string' },
  },
});

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const round1 = (x: number): number => Math.round(x * 10) / 10;

/** utime+stime of a process in seconds. */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100; // USER_HZ
}

function statusKiB(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1] ?? NaN);
}

/** Unary requests etcd handled, by method (Range, Put, Txn, DeleteRange, …), and raft proposals committed. */
async function etcdRequests(url: string): Promise<Record<string, number>> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const out: Record<string, number> = {};
  for (const line of text.split('\n')) {
    const m = /^grpc_server_handled_total\{.*grpc_method="(\w+)".*grpc_type="unary".*\} (\S+)$/.exec(line);
    if (m) out[m[1]!] = (out[m[1]!] ?? 0) + Number(m[2]);
    const p = /^etcd_server_proposals_committed_total (\S+)$/.exec(line);
    if (p) out.proposalsCommitted = Number(p[1]);
  }
  return out;
}

function perRound(before: Record<string, number>, after: Record<string, number>, rounds: number): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(after)) {
    const d = (v - (before[k] ?? 0)) / rounds;
    if (d > 0) out[k] = Math.round(d);
  }
  return out;
}

/** One counter (summed over label sets) from etcd's Prometheus endpoint. */
async function etcdMetric(url: string, name: string, match: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith(`${name}{`) && line.includes(match)) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

function cli(env: NodeJS.ProcessEnv, args: string[]): void {
  const r = spawnSync(BIN, args, { env, encoding: 'utf8', timeout: 60_000 });
  if (r.status !== 0) throw new Error(`connrate ${args.join(' ')}: exit ${r.status ?? r.signal}: ${(r.stderr ?? '').trim()}`);
}

interface ScaleResult {
  appliances: number;
  connections: number;
  leaseTtlSeconds: number;
  /** `profile set` started (CLI process spawned) → every appliance's confirmed status acknowledged by etcd. */
  confirmMs: { median: number; min: number; max: number; rounds: number[] };
  /** The profile key written (seen by a watch) → every appliance confirmed. */
  confirmFromWriteMs: { median: number; min: number; max: number };
  /** The profile key written → every appliance's watch has brought its new desired configuration (the controller's part). */
  deliveredFromWriteMs: { median: number; min: number; max: number };
  /** `connrate fleet profile set` spawned → the profile key written (node start-up, validation, one etcd write). */
  cliMs: { median: number; min: number; max: number };
  dbSizeBytes: { empty: number; registered: number; afterRounds: number };
  controller: { rssMiB: number; peakRssMiB: number; cpuSecondsPerRound: number };
  keepalive: { requestsPerSecond: number; etcdCpuPercent: number; controllerCpuPercent: number; windowSeconds: number };
  etcdCpuSecondsPerRound: number;
  /** CPU of this process (every simulated appliance, the etcd3 clients) per publication. */
  simulatedAppliancesCpuSecondsPerRound: number;
  /** etcd's unary requests by method and raft proposals committed, per publication (after the warm-up). */
  etcdRequestsPerRound: Record<string, number>;
  /** Presence leases of simulated appliances that expired while they ran (their keep-alives came too late: the bench process was starved). */
  leasesLost: number;
  /** Simulated appliances' start-ups that failed and were retried (as the agent retries). */
  startRetries: number;
  lastStartError?: string;
  /** Simulated appliances' reports that failed and were retried (as the agent retries). */
  handleRetries: number;
  lastHandleError?: string;
}

async function scale(n: number, rounds: number, connections: number): Promise<ScaleResult> {
  const etcd: EtcdCluster = await startEtcd({ quotaBackendBytes: 8 * 2 ** 30 });
  let controller: ChildProcess | undefined;
  let sims: SimFleet | undefined;
  let admin: Etcd3 | undefined;
  let stopping = false;
  try {
    const env = { ...process.env, ...etcd.env() };
    const etcdPid = etcd.members[0]!.pid!;
    const url = etcd.endpoints[0]!;
    const empty = await etcd.dbSize();
    admin = etcd.client();

    process.stdout.write(`  ${n} appliances: registering…`);
    sims = new SimFleet(etcd, n, connections);
    await sims.register(admin);
    process.stdout.write(' starting the controller…');
    let controllerLog = '';
    const prof = argv['controller-prof'] ? ['--cpu-prof', '--cpu-prof-dir', argv['controller-prof']] : [];
    controller = spawn(process.execPath, [...prof, BIN, 'fleet', 'controller'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    controller.stdout!.on('data', (d: Buffer) => void (controllerLog = (controllerLog + d.toString()).slice(-4000)));
    controller.stderr!.on('data', (d: Buffer) => void (controllerLog = (controllerLog + d.toString()).slice(-4000)));
    // ended with this process whatever happens (a signal ends the benchmark through process.exit)
    const ctl = controller;
    const killController = (): void => void ctl.kill('SIGKILL');
    process.once('exit', killController);
    controller.once('exit', () => process.off('exit', killController));
    controller.once('exit', (code, sig) => {
      if (!stopping) process.stderr.write(`\ncontroller exited (${code ?? sig}):\n${controllerLog}\n`);
    });
    process.stdout.write(' appliances online…');
    const progress = setInterval(() => process.stdout.write(` [${sims!.online} online, ${sims!.stats.startRetries} retries${sims!.stats.lastStartError ? `: ${sims!.stats.lastStartError}` : ''}]`), 30_000);
    await sims.start().finally(() => clearInterval(progress));
    const registered = await etcd.dbSize();

    const confirm: number[] = [];
    const fromWrite: number[] = [];
    const deliveredFromWrite: number[] = [];
    const cliMs: number[] = [];
    const ctlCpu0 = cpuSeconds(controller.pid!);
    const simCpu0 = process.cpuUsage();
    let req0 = await etcdRequests(url);
    const etcdCpu0 = cpuSeconds(etcdPid);
    // Round 0 is a warm-up (first desired documents, connection set-up); not counted.
    for (let r = 0; r <= rounds; r++) {
      const value = String(100 + r);
      const done = sims.expect({ CONNECTION_RATE_LIMIT_TCP: value }, CONFIRM_TIMEOUT_MS);
      const delivered = sims.expect({ CONNECTION_RATE_LIMIT_TCP: value }, CONFIRM_TIMEOUT_MS, 'delivered');
      const { written } = await sims.watchProfile(PROFILE);
      const t0 = performance.now();
      cli(env, ['fleet', 'profile', 'set', PROFILE, '--tag', 'all', `CONNECTION_RATE_LIMIT_TCP=${value}`]);
      const tEnd = await done;
      const tWrite = await written;
      const tDelivered = await delivered;
      if (r > 0) {
        confirm.push(tEnd - t0);
        fromWrite.push(tEnd - tWrite);
        deliveredFromWrite.push(tDelivered - tWrite);
        cliMs.push(tWrite - t0);
      }
      process.stdout.write(` ${r === 0 ? 'warm-up' : `#${r}`} ${Math.round(tEnd - t0)} ms${sims.stats.handleRetries ? ` (${sims.stats.handleRetries} retries so far)` : ''}`);
      if (r === 0) req0 = await etcdRequests(url);
    }
    const ctlCpuPerRound = (cpuSeconds(controller.pid!) - ctlCpu0) / (rounds + 1);
    const etcdCpuPerRound = (cpuSeconds(etcdPid) - etcdCpu0) / (rounds + 1);
    const simCpu = process.cpuUsage(simCpu0);
    const simCpuPerRound = (simCpu.user + simCpu.system) / 1e6 / (rounds + 1);
    const afterRounds = await etcd.dbSize();
    const requests = perRound(req0, await etcdRequests(url), rounds);

    // Idle: only the appliances' lease keep-alives (and the controller's watches) run.
    const metric = (): Promise<number> => etcdMetric(url, 'grpc_server_msg_received_total', 'grpc_method="LeaseKeepAlive"');
    const k0 = await metric();
    const e0 = cpuSeconds(etcdPid);
    const c0 = cpuSeconds(controller.pid!);
    const w0 = performance.now();
    await sleep(IDLE_WINDOW_S * 1000);
    const secs = (performance.now() - w0) / 1000;
    const k1 = await metric();
    const keepalive = {
      requestsPerSecond: round1((k1 - k0) / secs),
      etcdCpuPercent: round1((100 * (cpuSeconds(etcdPid) - e0)) / secs),
      controllerCpuPercent: round1((100 * (cpuSeconds(controller.pid!) - c0)) / secs),
      windowSeconds: round1(secs),
    };
    const rss = statusKiB(controller.pid!, 'VmRSS') / 1024;
    const hwm = statusKiB(controller.pid!, 'VmHWM') / 1024;
    process.stdout.write('\n');
    const stat = (xs: number[]): { median: number; min: number; max: number } => ({
      median: Math.round(median(xs)),
      min: Math.round(Math.min(...xs)),
      max: Math.round(Math.max(...xs)),
    });
    return {
      appliances: n,
      connections,
      leaseTtlSeconds: sims.leaseTtlSeconds,
      confirmMs: { ...stat(confirm), rounds: confirm.map(Math.round) },
      confirmFromWriteMs: stat(fromWrite),
      deliveredFromWriteMs: stat(deliveredFromWrite),
      cliMs: stat(cliMs),
      dbSizeBytes: { empty, registered, afterRounds },
      controller: { rssMiB: round1(rss), peakRssMiB: round1(hwm), cpuSecondsPerRound: round1(ctlCpuPerRound) },
      keepalive,
      etcdCpuSecondsPerRound: round1(etcdCpuPerRound),
      simulatedAppliancesCpuSecondsPerRound: round1(simCpuPerRound),
      etcdRequestsPerRound: requests,
      leasesLost: sims.stats.leasesLost,
      startRetries: sims.stats.startRetries,
      ...(sims.stats.lastStartError ? { lastStartError: sims.stats.lastStartError } : {}),
      handleRetries: sims.stats.handleRetries,
      ...(sims.stats.lastHandleError ? { lastHandleError: sims.stats.lastHandleError } : {}),
    };
  } catch (e) {
    process.stderr.write(`\n  ${n} appliances: ${(e as Error).message}\n`);
    throw e;
  } finally {
    stopping = true;
    if (controller && controller.exitCode === null && controller.signalCode === null) {
      const exited = new Promise((r) => controller!.once('exit', r));
      controller.kill('SIGTERM');
      await Promise.race([exited, sleep(5_000)]);
      if (controller.exitCode === null && controller.signalCode === null) controller.kill('SIGKILL');
    }
    // bounded: a starved run must still end and remove etcd
    await Promise.race([sims?.stop(), sleep(60_000)]);
    admin?.close();
    await etcd.destroy();
  }
}

// Ctrl-C / SIGTERM: exit through process.exit so the exit hooks end the controller and etcd.
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => process.exit(sig === 'SIGINT' ? 130 : 143));

async function main(): Promise<void> {
  const sizes = argv.appliances!.split(',').map(Number);
  const rounds = Number(argv.rounds);
  const perConnection = Number(argv['per-connection']);
  console.log('connrate fleet benchmark — a SIMULATION of appliances (their etcd protocol, no datapath);');
  console.log('the controller, the CLI and etcd (one member, loopback) are real.');
  const results: (ScaleResult | { appliances: number; connections: number; error: string })[] = [];
  for (const n of sizes) {
    const connections = argv.connections ? Number(argv.connections) : Math.max(1, Math.ceil(n / perConnection));
    try {
      results.push(await scale(n, rounds, connections));
    } catch (e) {
      // one size the machine does not hold does not lose the others' figures
      results.push({ appliances: n, connections, error: (e as Error).message });
    }
    console.log(JSON.stringify(results.at(-1)));
  }
  const version = spawnSync('/usr/bin/etcd', ['--version'], { encoding: 'utf8' }).stdout.split('\n')[0];
  const out = {
    what: 'fleet: profile set → every appliance confirmed; SIMULATED appliances (agent etcd protocol, no datapath), real controller, CLI and etcd',
    date: new Date().toISOString(),
    machine: { cpus: cpus().length, model: cpus()[0]?.model, memGiB: round1(totalmem() / 2 ** 30), loadavg: loadavg().map(round1), etcd: version },
    rounds,
    results,
  };
  const file = argv.out ?? `bench/results/fleet-${new Date().toISOString().slice(0, 10)}.json`;
  writeFileSync(file, `${JSON.stringify(out, null, 2)}\n`);
  console.log(`wrote ${file}`);
  // simulated appliances of a starved size may still hold timers (keep-alives, retries)
  process.exit(0);
}

main().catch((e: unknown) => {
  console.error(`bench:fleet: ${(e as Error).stack ?? String(e)}`);
  process.exit(1);
});
