/**
 * SIMULATED appliances for bench/fleet.ts: each speaks the fleet agent's etcd
 * protocol with the agent's own schema and helpers (src/fleet/keys.ts, the
 * agent's writeReport, the extc validator, the agent's lease TTL), in the
 * agent's order (src/fleet/agent.ts):
 *
 *   1. presence/ID on its own lease, kept alive by etcd3's keep-alive stream
 *      (one stream per lease, a keep-alive every TTL/3);
 *   2. read desired/ID, watch it from the next revision;
 *   3. for each new generation: read status/ID, validate every value,
 *      report `received` (status/ID + a log entry, trimmed), "apply",
 *      report `confirmed` (status/ID + a log entry, trimmed).
 *
 * The datapath part — the store file and `system update rule` on the
 * appliance's own machine — is replaced by nothing: a real appliance does it
 * in parallel with every other one, on its own CPU. Appliances share etcd
 * client connections (round-robin over `connections` etcd3 clients): every
 * lease, keep-alive stream and watch is the appliance's own, but they ride on
 * fewer HTTP/2 connections than N real appliances would open.
 */
import type { Etcd3, IKeyValue, Lease, Watcher } from 'etcd3';
import { firstRefusal, writeReport } from '../src/fleet/agent.js';
import { DEFAULT_LEASE_TTL_SEC } from '../src/fleet/keys.js';
import { LOG_SLACK } from '../src/fleet/controller.js';
import { type ApplianceDoc, type DesiredDoc, type LogEntry, type StatusDoc, Keys, LOG_KEEP, encode, parseDesired, parseStatus } from '../src/fleet/keys.js';
import type { EtcdCluster } from '../tests/helpers/etcd.js';

const START_CONCURRENCY = 100;
const REGISTER_RETRY_MS = 500;
const MAX_RETRY_MS = 5_000;
const MAX_START_ATTEMPTS = 30;

export interface SimStats {
  /** Presence leases that ran out while their appliance was running (keep-alives that came too late). */
  leasesLost: number;
  /** Start-ups (presence, list, watch) that failed and were retried, as the agent retries. */
  startRetries: number;
  lastStartError?: string;
  /** Reports (received, confirmed) that failed and were retried, as the agent retries. */
  handleRetries: number;
  lastHandleError?: string;
}

/** `delivered`: the appliance's watch brought the desired document; `confirmed`: its confirmed status is written. */
type Confirmed = (what: 'delivered' | 'confirmed', id: string, d: DesiredDoc, at: number) => void;

class SimAppliance {
  #lease: Lease | undefined;
  #watcher: Watcher | undefined;
  #confirmed = 0;
  #busy: Promise<void> = Promise.resolve();
  #latest: DesiredDoc | undefined;
  #stopped = false;

  constructor(
    readonly id: string,
    readonly client: Etcd3,
    readonly keys: Keys,
    readonly ttl: number,
    readonly onConfirmed: Confirmed,
    readonly stats: SimStats,
  ) {}

  /** As the agent: retry (500 ms, doubling to 5 s) until presence and watch are in place. */
  async start(): Promise<void> {
    for (let delay = REGISTER_RETRY_MS, attempt = 1; ; attempt++, delay = Math.min(delay * 2, MAX_RETRY_MS)) {
      try {
        return await this.#start();
      } catch (err) {
        if (this.#stopped || attempt >= MAX_START_ATTEMPTS) throw err;
        this.stats.startRetries++;
        this.stats.lastStartError = (err as Error).message;
        await new Promise((r) => setTimeout(r, delay));
      }
    }
  }

  async #start(): Promise<void> {
    await this.#watcher?.cancel().catch(() => {});
    await this.#register();
    const res = await this.client.get(this.keys.desired(this.id)).exec();
    this.#onDesired(res.kvs[0]);
    const w = await this.client.watch().key(this.keys.desired(this.id)).startRevision((BigInt(String(res.header.revision)) + 1n).toString()).create();
    w.on('put', (kv) => this.#onDesired(kv));
    this.#watcher = w;
  }

  async #register(): Promise<void> {
    this.#lease?.release();
    const lease = this.client.lease(this.ttl, { autoKeepAlive: true });
    lease.on('lost', () => {
      if (this.#stopped || lease !== this.#lease) return;
      this.stats.leasesLost++;
      // as the agent: register again (after its retry delay, so a starved process does not spin)
      setTimeout(() => void (this.#stopped || this.#register().catch(() => {})), REGISTER_RETRY_MS);
    });
    this.#lease = lease;
    await lease.put(this.keys.presence(this.id)).value(encode({ id: this.id, since: new Date().toISOString(), pid: process.pid, host: 'simulated' }));
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#watcher?.cancel().catch(() => {});
    await this.#lease?.revoke().catch(() => {});
  }

  #onDesired(kv: IKeyValue | undefined): void {
    if (!kv) return;
    this.#latest = parseDesired(kv.key.toString(), kv.value);
    this.onConfirmed('delivered', this.id, this.#latest, performance.now());
    this.#kick(REGISTER_RETRY_MS);
  }

  /** One generation at a time, the newest when the previous one is done; on a failure, again after a delay (as the agent). */
  #kick(delay: number): void {
    this.#busy = this.#busy.then(() => this.#handle()).catch((e: unknown) => {
      if (this.#stopped) return;
      this.stats.handleRetries++;
      this.stats.lastHandleError = (e as Error).message;
      setTimeout(() => this.#kick(Math.min(delay * 2, MAX_RETRY_MS)), delay);
    });
  }

  #sinceTrim: number | undefined;

  async #report(status: StatusDoc['status'], generation: number, confirmedGeneration: number, info: string): Promise<void> {
    const time = new Date().toISOString();
    const doc: StatusDoc = { id: this.id, observedGeneration: generation, status, info, confirmedGeneration, time };
    const entry: LogEntry = { time, type: 'profile', appliance: this.id, direction: 'in', status, info, generation };
    // as the agent does: status and log entry in one transaction, the log trimmed every LOG_SLACK reports
    const trim = this.#sinceTrim === undefined || this.#sinceTrim + 1 >= LOG_SLACK;
    await writeReport(this.client, this.keys, doc, entry, trim ? LOG_KEEP : undefined);
    this.#sinceTrim = trim ? 0 : (this.#sinceTrim ?? 0) + 1;
  }

  async #handle(): Promise<void> {
    const d = this.#latest;
    if (!d || d.generation === 0 || d.generation <= this.#confirmed) return;
    const kv = (await this.client.get(this.keys.status(this.id)).exec()).kvs[0];
    const st = kv ? parseStatus(kv.key.toString(), kv.value) : undefined;
    const seen = st?.observedGeneration === d.generation ? st.status : undefined;
    const refused = firstRefusal(d.values);
    if (refused) {
      if (seen !== 'error') await this.#report('error', d.generation, this.#confirmed, `generation ${d.generation} refused: ${refused.message}`);
      return;
    }
    if (seen !== 'received') await this.#report('received', d.generation, this.#confirmed, `generation ${d.generation}: ${Object.keys(d.values).length} value(s) valid`);
    // (a real appliance stores the values and runs `system update rule` here)
    this.#confirmed = d.generation;
    await this.#report('confirmed', d.generation, d.generation, `generation ${d.generation} in force (simulated appliance)`);
    this.onConfirmed('confirmed', this.id, d, performance.now());
  }
}

export class SimFleet {
  readonly keys = new Keys();
  readonly ids: string[];
  readonly leaseTtlSeconds = DEFAULT_LEASE_TTL_SEC;
  readonly stats: SimStats = { leasesLost: 0, startRetries: 0, handleRetries: 0 };
  #clients: Etcd3[] = [];
  #sims: SimAppliance[] = [];
  #waiters: { what: 'delivered' | 'confirmed'; values: Record<string, string>; left: Set<string>; resolve(t: number): void }[] = [];

  constructor(
    readonly etcd: EtcdCluster,
    readonly n: number,
    readonly connections: number,
  ) {
    const width = String(n - 1).length;
    this.ids = Array.from({ length: n }, (_, i) => `sim-${String(i).padStart(width, '0')}`);
  }

  /**
   * The appliance documents, written directly in the schema `connrate fleet
   * appliance set` writes (a CLI process per appliance would only measure
   * node's start-up N times).
   */
  async register(admin: Etcd3): Promise<void> {
    const BATCH = 100;
    for (let i = 0; i < this.ids.length; i += BATCH) {
      await Promise.all(
        this.ids.slice(i, i + BATCH).map((id) => {
          const doc: ApplianceDoc = { id, tags: ['bench'], cluster: null };
          return admin.put(this.keys.appliance(id)).value(encode(doc));
        }),
      );
    }
  }

  /** Simulated appliances whose presence and watch are in place. */
  online = 0;

  async start(): Promise<void> {
    for (let i = 0; i < this.connections; i++) this.#clients.push(this.etcd.client());
    const onConfirmed: Confirmed = (what, id, d, at) => {
      for (const w of [...this.#waiters]) {
        if (w.what === what && Object.entries(w.values).every(([k, v]) => d.values[k] === v) && w.left.delete(id) && w.left.size === 0) w.resolve(at);
      }
    };
    this.#sims = this.ids.map((id, i) => new SimAppliance(id, this.#clients[i % this.connections]!, this.keys, this.leaseTtlSeconds, onConfirmed, this.stats));
    for (let i = 0; i < this.#sims.length; i += START_CONCURRENCY) {
      await Promise.all(this.#sims.slice(i, i + START_CONCURRENCY).map((s) => s.start().then(() => void this.online++)));
    }
  }

  /** Resolves with the time (performance.now()) when every appliance has confirmed (or been delivered) a generation carrying `values`. */
  expect(values: Record<string, string>, timeoutMs: number, what: 'delivered' | 'confirmed' = 'confirmed'): Promise<number> {
    return new Promise((resolve, reject) => {
      const done = (f: () => void): void => {
        clearTimeout(timer);
        this.#waiters = this.#waiters.filter((x) => x !== w);
        f();
      };
      const w = { what, values, left: new Set(this.ids), resolve: (t: number) => done(() => resolve(t)) };
      const timer = setTimeout(
        () => done(() => reject(new Error(`${w.left.size} of ${this.n} appliances did not get ${what} ${JSON.stringify(values)} within ${timeoutMs} ms`))),
        timeoutMs,
      );
      this.#waiters.push(w);
    });
  }

  /** Once the watch is in place: `written` resolves with the time at which it sees the profile key put. */
  async watchProfile(name: string): Promise<{ written: Promise<number> }> {
    const w = await this.#clients[0]!.watch().key(this.keys.profile(name)).create();
    const written = new Promise<number>((resolve) => {
      w.once('put', () => {
        const t = performance.now();
        void w.cancel();
        resolve(t);
      });
    });
    return { written };
  }

  async stop(): Promise<void> {
    for (let i = 0; i < this.#sims.length; i += START_CONCURRENCY) {
      await Promise.all(this.#sims.slice(i, i + START_CONCURRENCY).map((s) => s.stop()));
    }
    for (const c of this.#clients) c.close();
  }
}
