/**
 * The appliance agent inside `connrate run --fleet ID`: the only part of the
 * fleet that applies configuration.
 *
 * - Presence: `presence/ID` on a lease kept alive; a lost lease is replaced.
 * - Desired configuration: read `desired/ID`, watch it from the next revision,
 *   read it again when that revision was compacted or the watch failed.
 * - For each new generation: validate every value (→ `error` with the reason,
 *   nothing changed), report `received`, store the values and apply them on
 *   the same path as `system update rule` (all or nothing), remember the
 *   generation next to the store, report `confirmed`. A generation is applied
 *   once: a restart finds it remembered and only reports what is missing.
 */
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import { hostname } from 'node:os';
import { dirname, join } from 'node:path';
import type { Etcd3, IKeyValue, Lease, Watcher } from 'etcd3';
import { type Store } from '../config/store.js';
import { APPLICATION, canonicalValue, diffValues, valuesInForce } from '../config/variables.js';
import { updateRule } from '../control/commands.js';
import { Datapath } from '../control/datapath.js';
import type { PinDir } from '../control/pins.js';
import { ConnrateError, InvalidValueError } from '../errors.js';
import { LOG_SLACK, trimLog } from './controller.js';
import { Connection, cancelWatcher, createWatcher, watchEnd } from './etcd.js';
import { DEFAULT_LEASE_TTL_SEC, type DesiredDoc, type LogEntry, type StatusDoc, FleetDataError, Keys, LOG_KEEP, encode, logSeq, parseDesired, parseStatus } from './keys.js';

const RETRY_MS = 500;
const MAX_RETRY_MS = 5_000;

export interface AgentOptions {
  readonly id: string;
  /** The etcd client; with `connect` as well, it is replaced after failures. */
  readonly client?: Etcd3;
  /** Makes a new client (after a watch failure or an etcd restart); the agent closes what it made. */
  readonly connect?: () => Etcd3;
  readonly keys: Keys;
  readonly store: Store;
  readonly pins: PinDir;
  readonly info?: (line: string) => void;
  /** Presence lease TTL in seconds. */
  readonly leaseTtlSec?: number;
  readonly logKeep?: number;
}

/** What the agent remembers next to the store: the last generation it applied. */
interface AppliedFile {
  readonly id: string;
  readonly generation: number;
}

export function appliedPath(store: Store, id: string): string {
  return join(dirname(store.path), `fleet-${id}.json`);
}

/**
 * An appliance's report: its status document and the matching `in` log entry,
 * in one transaction; then, unless `keep` is undefined, the log is trimmed.
 */
export async function writeReport(client: Etcd3, keys: Keys, status: StatusDoc, entry: LogEntry, keep: number | undefined = LOG_KEEP): Promise<void> {
  await client
    .if(keys.status(status.id), 'Version', '>', -1) // always true: a transaction only to write both at once
    .then(client.put(keys.status(status.id)).value(encode(status)), client.put(`${keys.log(status.id)}${logSeq(new Date(entry.time))}`).value(encode(entry)))
    .commit();
  if (keep !== undefined) await trimLog(client, keys.log(status.id), keep);
}

/** The first of a desired configuration's values that the extc rules refuse, if any. */
export function firstRefusal(values: Readonly<Record<string, string>>): InvalidValueError | undefined {
  for (const [name, value] of Object.entries(values)) {
    try {
      canonicalValue('fleet', name, value);
    } catch (err) {
      if (err instanceof InvalidValueError) return err;
      throw err;
    }
  }
  return undefined;
}

export class Agent {
  readonly #o: AgentOptions;
  readonly #conn: Connection;
  #renew = false;
  readonly #k: Keys;
  readonly #info: (line: string) => void;
  #lease: Lease | undefined;
  #leaseLost = true;
  #watcher: Watcher | undefined;
  #relist = true;
  #sinceTrim: number | undefined;
  #latest: DesiredDoc | undefined;
  #pending = false;
  #stopped = false;
  #wake: (() => void) | undefined;
  #done: Promise<void>;

  constructor(opts: AgentOptions) {
    this.#o = opts;
    this.#conn = new Connection(opts.connect, opts.client);
    this.#k = opts.keys;
    this.#info = opts.info ?? ((l) => process.stdout.write(`${l}\n`));
    this.#done = this.#loop();
  }

  get #c(): Etcd3 {
    return this.#conn.client;
  }

  get id(): string {
    return this.#o.id;
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#wake?.();
    await this.#done;
    if (this.#watcher) await cancelWatcher(this.#watcher);
    // a clean stop ends the presence at once (a crash lets the lease expire)
    await this.#lease?.revoke().catch(() => {});
    if (this.#o.connect) this.#conn.close();
  }

  #poke(): void {
    this.#wake?.();
  }

  async #loop(): Promise<void> {
    let retry = RETRY_MS;
    while (!this.#stopped) {
      try {
        await this.#renewIfAsked();
        if (this.#leaseLost) await this.#register();
        await this.#renewIfAsked();
        if (this.#relist) await this.#listAndWatch();
        if (this.#pending) {
          this.#pending = false;
          if (this.#latest) await this.#handle(this.#latest);
        }
        retry = RETRY_MS;
        if (!this.#leaseLost && !this.#relist && !this.#pending && !this.#stopped) await new Promise<void>((r) => (this.#wake = r));
        this.#wake = undefined;
      } catch (err) {
        if (this.#stopped) break;
        this.#info(`connrate fleet ${this.id}: ${(err as Error).message}; retrying in ${retry} ms`);
        this.#pending = true;
        this.#renew = true;
        await new Promise((r) => setTimeout(r, retry));
        retry = Math.min(retry * 2, MAX_RETRY_MS);
      }
    }
  }

  /** After a failure: a fresh client, so a fresh lease, listing and watch. */
  async #renewIfAsked(): Promise<void> {
    if (!this.#renew) return;
    this.#renew = false;
    if (this.#watcher) await cancelWatcher(this.#watcher);
    this.#watcher = undefined;
    if (this.#conn.renew()) {
      this.#lease?.release();
      this.#lease = undefined;
      this.#leaseLost = true;
    }
    this.#relist = true;
  }

  async #register(): Promise<void> {
    this.#lease?.release();
    const lease = this.#c.lease(this.#o.leaseTtlSec ?? DEFAULT_LEASE_TTL_SEC, { autoKeepAlive: true });
    lease.on('lost', (err) => {
      if (this.#stopped || lease !== this.#lease) return;
      this.#info(`connrate fleet ${this.id}: presence lease lost (${err.message}); registering again`);
      this.#leaseLost = true;
      this.#poke();
    });
    this.#lease = lease;
    const presence = { id: this.id, since: new Date().toISOString(), pid: process.pid, host: hostname() };
    await lease.put(this.#k.presence(this.id)).value(encode(presence));
    this.#leaseLost = false;
    this.#info(`connrate fleet ${this.id}: online (presence lease ${await lease.grant()})`);
  }

  async #listAndWatch(): Promise<void> {
    if (this.#watcher) await cancelWatcher(this.#watcher);
    this.#watcher = undefined;
    const res = await this.#c.get(this.#k.desired(this.id)).exec();
    this.#onDesired(res.kvs[0]);
    const w = await createWatcher(this.#c.watch().key(this.#k.desired(this.id)).startRevision((BigInt(String(res.header.revision)) + 1n).toString()));
    w.on('put', (kv) => {
      if (this.#watcher === w) this.#onDesired(kv);
    });
    w.on('error', (err) => {
      if (this.#stopped || this.#watcher !== w) return;
      this.#info(`connrate fleet ${this.id}: watch ended (${watchEnd(err)}); reading the desired configuration again`);
      this.#relist = true;
      this.#renew = true;
      this.#poke();
    });
    this.#watcher = w;
    this.#relist = false;
  }

  #onDesired(kv: IKeyValue | undefined): void {
    if (!kv) return;
    try {
      this.#latest = parseDesired(kv.key.toString(), kv.value);
    } catch (err) {
      if (!(err instanceof FleetDataError)) throw err;
      this.#info(`connrate fleet ${this.id}: ignoring ${err.message}`);
      return;
    }
    this.#pending = true;
    this.#poke();
  }

  // ------------------------------------------------------------ applying

  #applied(): number {
    try {
      const doc = JSON.parse(readFileSync(appliedPath(this.#o.store, this.id), 'utf8')) as Partial<AppliedFile>;
      return typeof doc.generation === 'number' && Number.isSafeInteger(doc.generation) && doc.id === this.id ? doc.generation : 0;
    } catch {
      return 0;
    }
  }

  #remember(generation: number): void {
    const path = appliedPath(this.#o.store, this.id);
    const tmp = `${path}.${process.pid}.tmp`;
    const fd = openSync(tmp, 'w', 0o600);
    try {
      writeSync(fd, `${JSON.stringify({ id: this.id, generation } satisfies AppliedFile)}\n`);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
  }

  async #status(): Promise<StatusDoc | undefined> {
    const kv = (await this.#c.get(this.#k.status(this.id)).exec()).kvs[0];
    if (!kv) return undefined;
    try {
      return parseStatus(kv.key.toString(), kv.value);
    } catch (err) {
      if (err instanceof FleetDataError) return undefined; // ours to overwrite
      throw err;
    }
  }

  async #report(status: StatusDoc['status'], generation: number, confirmedGeneration: number, info: string): Promise<void> {
    const time = new Date().toISOString();
    const doc: StatusDoc = { id: this.id, observedGeneration: generation, status, info, confirmedGeneration, time };
    const entry: LogEntry = { time, type: 'profile', appliance: this.id, direction: 'in', status, info, generation };
    // the log is trimmed at the first report and then every LOG_SLACK reports
    const trim = this.#sinceTrim === undefined || this.#sinceTrim + 1 >= LOG_SLACK;
    await writeReport(this.#c, this.#k, doc, entry, trim ? (this.#o.logKeep ?? LOG_KEEP) : undefined);
    this.#sinceTrim = trim ? 0 : (this.#sinceTrim ?? 0) + 1;
    this.#info(`connrate fleet ${this.id}: ${status}: ${info}`);
  }

  async #handle(d: DesiredDoc): Promise<void> {
    if (d.generation === 0) return;
    const applied = this.#applied();
    const st = await this.#status();
    if (d.generation <= applied) {
      // applied before a restart that came before the report
      if ((st?.confirmedGeneration ?? 0) < applied) await this.#report('confirmed', applied, applied, `generation ${applied} in force`);
      return;
    }
    const seen = st?.observedGeneration === d.generation ? st.status : undefined;
    // every value, before anything is changed
    const refused = firstRefusal(d.values);
    if (refused) {
      if (seen !== 'error') await this.#report('error', d.generation, applied, `generation ${d.generation} refused, nothing changed${applied ? ` (generation ${applied} stays in force)` : ''}: ${refused.message}`);
      return;
    }
    if (seen !== 'received') await this.#report('received', d.generation, applied, `generation ${d.generation}: ${Object.keys(d.values).length} value(s) valid`);
    let changed: string[];
    try {
      changed = this.#apply(d.values);
    } catch (err) {
      if (!(err instanceof ConnrateError)) throw err;
      await this.#report('error', d.generation, applied, `generation ${d.generation} not applied: ${err.message}`);
      return;
    }
    this.#remember(d.generation);
    await this.#report('confirmed', d.generation, d.generation, `generation ${d.generation} in force${changed.length ? ` (${changed.join(', ')})` : ' (no change)'}`);
  }

  /** Store the values and apply them like `system update rule`, unless they are in force already. Returns what changed. */
  #apply(values: Readonly<Record<string, string>>): string[] {
    const { store, pins } = this.#o;
    const changes = store.setMany(APPLICATION, values, 'fleet');
    const stored = store.read();
    const dp = Datapath.open('fleet', pins);
    let inForce;
    try {
      const cfg = dp.appliedConfig();
      inForce = cfg ? valuesInForce(cfg, stored) : undefined;
    } finally {
      dp.close();
    }
    // a changed daemon setting is in force only once applied: the daemon reads it with the new generation
    if (!inForce || diffValues(inForce, stored).length > 0 || changes.some((c) => c.from !== c.to)) updateRule(pins, store);
    return changes.filter((c) => c.from !== c.to).map((c) => `${c.name} ${c.from} -> ${c.to}`);
  }
}
