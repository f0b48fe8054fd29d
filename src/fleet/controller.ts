/**
 * The fleet controller: lists profiles, appliances, desired configurations,
 * presence and status at one revision, watches them from the next one (and
 * lists again when that revision was compacted or a watch fails), and
 * reconciles:
 *
 * - each appliance's resolved values; a new generation of `desired/ID` only
 *   when they change, with a `sent` (online), `offline` (registered before,
 *   not online) or `pending` (never registered) log entry in the same
 *   transaction;
 * - a conflict recorded in `desired/ID` (no new generation) with an `error` entry;
 * - presence: an appliance that comes back with an unconfirmed generation gets
 *   `sent`, one whose lease ends before it confirmed gets `offline`;
 * - clusters: one `confirmed` entry of type `cluster` once every member has
 *   confirmed the same values.
 *
 * Every write is a transaction that compares the mod revision of the key it
 * replaces, so a restarted or duplicate controller never publishes one change
 * twice: the loser re-reads and finds nothing left to do. It is safe to kill
 * at any moment.
 */
import { hostname } from 'node:os';
import { type Etcd3, type IKeyValue, Range, type Watcher } from 'etcd3';
import { Connection, cancelWatcher, createWatcher, watchEnd } from './etcd.js';
import { resolveFor, fingerprint } from './resolve.js';
import {
  type ApplianceDoc, type ClusterDoc, type Delivery, type DesiredDoc, type LogEntry, type PresenceDoc, type ProfileDoc, type StatusDoc,
  FleetDataError, Keys, LOG_KEEP, encode, logSeq, parseAppliance, parseCluster, parseDesired, parsePresence, parseProfile, parseStatus,
} from './keys.js';

/** One appliance's planned write: its desired document, log entries, and a line for the controller's output. */
interface Write {
  readonly id: string;
  /** The mod revision of desired/ID the plan was made from ("0": absent); the write only happens if it is still that. */
  readonly expect: string;
  readonly doc: DesiredDoc;
  readonly entries: LogEntry[];
  readonly line?: string;
}

interface Versioned<T> {
  readonly doc: T;
  readonly modRevision: string;
}

export interface ControllerOptions {
  /** The etcd client; with `connect` as well, it is replaced after failures. */
  readonly client?: Etcd3;
  /** Makes a new client (after a watch failure or an etcd restart). */
  readonly connect?: () => Etcd3;
  readonly keys: Keys;
  /** Informational lines. */
  readonly info?: (line: string) => void;
  /** Log entries kept per appliance. */
  readonly logKeep?: number;
}

const RETRY_MS = 500;
/** Transactions in flight at once. */
const CONCURRENCY = 8;
/** Appliances written per transaction (two operations each, within etcd's default 128). */
const BATCH = 32;
const MAX_RETRY_MS = 5_000;

/** Append a log entry under `dir` and drop the oldest beyond `keep`. */
export async function appendLog(client: Etcd3, dir: string, entry: LogEntry, keep: number): Promise<void> {
  await client.put(`${dir}${logSeq(new Date(entry.time))}`).value(encode(entry));
  await trimLog(client, dir, keep);
}

/** Entries a log may hold beyond `keep` before it is trimmed (one delete per this many appends). */
export const LOG_SLACK = 10;

/**
 * Keep the newest `keep` entries under `dir`: once there are more than
 * `keep + LOG_SLACK`, the oldest go in one range delete.
 */
export async function trimLog(client: Etcd3, dir: string, keep: number): Promise<void> {
  const n = await client.getAll().prefix(dir).count();
  if (n <= keep + LOG_SLACK) return;
  const old = await client.getAll().prefix(dir).sort('Key', 'Ascend').limit(n - keep).keys();
  const last = old[old.length - 1];
  if (last !== undefined) await client.delete().range(new Range(dir, `${last}\0`)).exec();
}

export class Controller {
  readonly #conn: Connection;
  readonly #k: Keys;
  readonly #info: (line: string) => void;
  readonly #keep: number;
  #profiles = new Map<string, ProfileDoc>();
  #appliances = new Map<string, ApplianceDoc>();
  #desired = new Map<string, Versioned<DesiredDoc>>();
  #presence = new Map<string, PresenceDoc>();
  #status = new Map<string, StatusDoc>();
  #clusters = new Map<string, Versioned<ClusterDoc>>();
  #watchers: Watcher[] = [];
  #stopped = false;
  #wake: (() => void) | undefined;
  /** Reconcile every appliance (a profile or an appliance changed, or a listing). */
  #dirtyAll = true;
  /** Reconcile these appliances (their desired configuration, presence or status changed). */
  #dirtyIds = new Set<string>();
  #relist = true;
  /** Bad documents already reported (key → message), so each is said once. */
  #reported = new Map<string, string>();
  #done: Promise<void> | undefined;

  constructor(opts: ControllerOptions) {
    this.#conn = new Connection(opts.connect, opts.client);
    this.#ownsClient = !!opts.connect;
    this.#k = opts.keys;
    this.#info = opts.info ?? ((l) => process.stdout.write(`${l}\n`));
    this.#keep = opts.logKeep ?? LOG_KEEP;
  }

  get #c(): Etcd3 {
    return this.#conn.client;
  }

  /** Run until stop(). */
  run(): Promise<void> {
    return (this.#done ??= this.#loop());
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#wake?.();
    await this.#cancelWatchers();
    await this.#done;
    if (this.#ownsClient) this.#conn.close();
  }

  async #loop(): Promise<void> {
    let retry = RETRY_MS;
    while (!this.#stopped) {
      try {
        if (this.#relist) {
          this.#relist = false;
          await this.#cancelWatchers();
          if (this.#renew) {
            this.#renew = false;
            this.#conn.renew();
          }
          const rev = await this.#list();
          await this.#watch(rev);
          this.#dirtyAll = true;
        }
        if (this.#dirty) await this.#reconcile();
        retry = RETRY_MS;
        if (!this.#dirty && !this.#relist && !this.#stopped) await new Promise<void>((r) => (this.#wake = r));
        this.#wake = undefined;
      } catch (err) {
        if (this.#stopped) break;
        this.#info(`connrate fleet controller: ${(err as Error).message}; retrying in ${retry} ms`);
        this.#relist = true;
        this.#renew = true;
        await new Promise((r) => setTimeout(r, retry));
        retry = Math.min(retry * 2, MAX_RETRY_MS);
      }
    }
  }

  #renew = false;
  /** Clients made by `connect` are closed by stop(); a given client is the caller's. */
  readonly #ownsClient: boolean;

  get #dirty(): boolean {
    return this.#dirtyAll || this.#dirtyIds.size > 0;
  }

  /** Something changed: list again, reconcile one appliance, or (no ID) every appliance. */
  #poke(relist = false, id?: string): void {
    if (relist) {
      this.#relist = true;
      this.#renew = true;
    }
    if (id === undefined) this.#dirtyAll = true;
    else this.#dirtyIds.add(id);
    this.#wake?.();
  }

  /** Which appliances an event under `dir` concerns: one (by ID) or all. */
  #pokeFor(dir: string, key: string): void {
    const perAppliance = dir === this.#k.desiredAll || dir === this.#k.presenceAll || dir === this.#k.statusAll;
    const id = perAppliance ? this.#k.leaf(dir, key) : undefined;
    if (perAppliance && id === undefined) return;
    if (dir === this.#k.clustersAll) return this.#poke(false, ''); // only the cluster pass
    this.#poke(false, id);
  }

  #parse<T>(kv: IKeyValue, parse: (key: string, text: Buffer) => T): T | undefined {
    const key = kv.key.toString();
    try {
      const doc = parse(key, kv.value);
      this.#reported.delete(key);
      return doc;
    } catch (err) {
      if (!(err instanceof FleetDataError)) throw err;
      if (this.#reported.get(key) !== err.message) this.#info(`connrate fleet controller: ignoring ${err.message}`);
      this.#reported.set(key, err.message);
      return undefined;
    }
  }

  /** Everything at one revision; returns that revision. */
  async #list(): Promise<string> {
    const first = await this.#c.getAll().prefix(this.#k.profiles).exec();
    const rev = String(first.header.revision);
    const at = (dir: string) => this.#c.getAll().prefix(dir).revision(rev).exec();
    const [appl, desired, presence, status, clusters] = await Promise.all([
      at(this.#k.appliances), at(this.#k.desiredAll), at(this.#k.presenceAll), at(this.#k.statusAll), at(this.#k.clustersAll),
    ]);
    this.#profiles = new Map();
    this.#appliances = new Map();
    this.#desired = new Map();
    this.#presence = new Map();
    this.#status = new Map();
    this.#clusters = new Map();
    for (const kv of first.kvs) this.#onPut(this.#k.profiles, kv);
    for (const [dir, res] of [[this.#k.appliances, appl], [this.#k.desiredAll, desired], [this.#k.presenceAll, presence], [this.#k.statusAll, status], [this.#k.clustersAll, clusters]] as const) {
      for (const kv of res.kvs) this.#onPut(dir, kv);
    }
    return rev;
  }

  /** The directories whose documents the controller keeps (log, clusterlog and seen are write-only here). */
  #dirOf(key: string): string | undefined {
    const k = this.#k;
    return [k.profiles, k.appliances, k.desiredAll, k.presenceAll, k.statusAll, k.clustersAll].find((d) => key.startsWith(d));
  }

  /**
   * One watch over the whole prefix from the revision after the listing (one
   * watcher per client: a fresh client, and so a fresh stream, for each listing).
   */
  async #watch(rev: string): Promise<void> {
    const next = (BigInt(rev) + 1n).toString();
    const w = await createWatcher(this.#c.watch().prefix(this.#k.prefix).startRevision(next));
    w.on('put', (kv) => {
      const dir = this.#dirOf(kv.key.toString());
      if (!dir) return;
      this.#onPut(dir, kv);
      this.#pokeFor(dir, kv.key.toString());
    });
    w.on('delete', (kv) => {
      const dir = this.#dirOf(kv.key.toString());
      if (!dir) return;
      this.#onDelete(dir, kv);
      this.#pokeFor(dir, kv.key.toString());
    });
    // a compacted start revision, a cancelled watch: list again from scratch, on a fresh client
    w.on('error', (err) => {
      if (this.#stopped || !this.#watchers.includes(w)) return;
      this.#watchers = this.#watchers.filter((x) => x !== w);
      this.#info(`connrate fleet controller: watch on ${this.#k.prefix} ended (${watchEnd(err)}); listing again`);
      this.#poke(true);
    });
    this.#watchers.push(w);
  }

  async #cancelWatchers(): Promise<void> {
    const ws = this.#watchers;
    this.#watchers = [];
    await Promise.all(ws.map((w) => cancelWatcher(w)));
  }

  #onPut(dir: string, kv: IKeyValue): void {
    const id = this.#k.leaf(dir, kv.key.toString());
    if (id === undefined) return;
    const mod = String(kv.mod_revision);
    switch (dir) {
      case this.#k.profiles: {
        const d = this.#parse(kv, parseProfile);
        if (d) this.#profiles.set(id, d);
        else this.#profiles.delete(id);
        return;
      }
      case this.#k.appliances: {
        const d = this.#parse(kv, parseAppliance);
        if (d) this.#appliances.set(id, d);
        else this.#appliances.delete(id);
        return;
      }
      case this.#k.desiredAll: {
        const d = this.#parse(kv, parseDesired);
        // a bad desired document is replaced by the next publication (compared by its mod revision)
        if (d) {
          const known = this.#desired.get(id);
          if (!known || BigInt(known.modRevision) <= BigInt(mod)) this.#desired.set(id, { doc: d, modRevision: mod });
        } else this.#badDesired.set(id, mod);
        return;
      }
      case this.#k.presenceAll: {
        const d = this.#parse(kv, parsePresence);
        if (d) this.#presence.set(id, d);
        return;
      }
      case this.#k.statusAll: {
        const d = this.#parse(kv, parseStatus);
        if (d) this.#status.set(id, d);
        return;
      }
      case this.#k.clustersAll: {
        const d = this.#parse(kv, parseCluster);
        if (d) this.#clusters.set(id, { doc: d, modRevision: mod });
        return;
      }
    }
  }

  #badDesired = new Map<string, string>();

  #onDelete(dir: string, kv: IKeyValue): void {
    const id = this.#k.leaf(dir, kv.key.toString());
    if (id === undefined) return;
    switch (dir) {
      case this.#k.profiles: this.#profiles.delete(id); return;
      case this.#k.appliances: this.#appliances.delete(id); return;
      case this.#k.desiredAll: this.#desired.delete(id); this.#badDesired.delete(id); return;
      case this.#k.statusAll: this.#status.delete(id); return;
      case this.#k.clustersAll: this.#clusters.delete(id); return;
      case this.#k.presenceAll:
        this.#presence.delete(id);
        void this.#c.put(this.#k.seen(id)).value(encode({ id, lastSeen: new Date().toISOString() })).catch(() => {});
        return;
    }
  }

  /** The mod revision a write of desired/ID must find: "0" when the key must not exist. */
  #desiredRevision(id: string): string {
    return this.#desired.get(id)?.modRevision ?? this.#badDesired.get(id) ?? '0';
  }

  /**
   * Several appliances' writes in one transaction that compares each
   * desired/ID's mod revision; if any lost a race, each is tried on its own.
   */
  async #publishBatch(batch: readonly Write[]): Promise<void> {
    if (batch.length === 1) return void (await this.#write(batch[0]!));
    const now = new Date();
    const [first, ...rest] = batch;
    let txn = this.#c.if(this.#k.desired(first!.id), 'Mod', '==', first!.expect);
    for (const w of rest) txn = txn.and(this.#k.desired(w.id), 'Mod', '==', w.expect);
    const ops = batch.flatMap((w) => [
      this.#c.put(this.#k.desired(w.id)).value(encode(w.doc)),
      ...w.entries.map((e) => this.#c.put(`${this.#k.log(w.id)}${logSeq(now)}`).value(encode(e))),
    ]);
    const res = await txn.then(...ops).commit();
    if (!res.succeeded) {
      for (const w of batch) await this.#write(w);
      return;
    }
    for (const w of batch) await this.#written(w, String(res.header.revision));
  }

  async #write(w: Write): Promise<boolean> {
    const ok = await this.#publish(w.id, w.expect, w.doc, w.entries);
    if (ok && w.line) this.#info(`connrate fleet controller: ${w.id}: ${w.line}`);
    return ok;
  }

  /** Remember what we wrote, unless the watch already brought something newer. */
  #cacheDesired(id: string, doc: DesiredDoc, revision: string): void {
    const known = this.#desired.get(id);
    if (known && BigInt(known.modRevision) > BigInt(revision)) return;
    this.#desired.set(id, { doc, modRevision: revision });
    this.#badDesired.delete(id);
  }

  async #written(w: Write, revision: string): Promise<void> {
    this.#cacheDesired(w.id, w.doc, revision);
    if (w.line) this.#info(`connrate fleet controller: ${w.id}: ${w.line}`);
    if (w.entries.length) await this.#maybeTrim(this.#k.log(w.id), w.entries.length);
  }

  /** Write desired/ID if it is still at the revision the plan was made from; with log entries. False: lost the race. */
  async #publish(id: string, expect: string, doc: DesiredDoc, entries: LogEntry[]): Promise<boolean> {
    const key = this.#k.desired(id);
    const now = new Date();
    const res = await this.#c
      .if(key, 'Mod', '==', expect)
      .then(
        this.#c.put(key).value(encode(doc)),
        ...entries.map((e) => this.#c.put(`${this.#k.log(id)}${logSeq(now)}`).value(encode(e))),
      )
      .commit();
    if (!res.succeeded) {
      this.#dirtyIds.add(id); // the watch brings the newer document; reconcile again then
      return false;
    }
    this.#cacheDesired(id, doc, String(res.header.revision));
    if (entries.length) await this.#maybeTrim(this.#k.log(id), entries.length);
    return true;
  }

  /** Log entries appended per log since this controller last trimmed it. */
  #appended = new Map<string, number>();

  /** Trim a log at its first append and then every LOG_SLACK appends (not a count per publication). */
  async #maybeTrim(dir: string, added: number): Promise<void> {
    const since = this.#appended.get(dir);
    if (since !== undefined && since + added < LOG_SLACK) {
      this.#appended.set(dir, since + added);
      return;
    }
    this.#appended.set(dir, 0);
    await trimLog(this.#c, dir, this.#keep);
  }

  #entry(id: string, status: LogEntry['status'], generation: number, info: string, direction: LogEntry['direction'] = 'out'): LogEntry {
    return { time: new Date().toISOString(), type: 'profile', appliance: id, direction, status, info, generation };
  }

  /** sent (online), offline (it has run before), pending (it never registered). */
  #delivery(id: string): Delivery {
    if (this.#presence.has(id)) return 'sent';
    return this.#status.has(id) ? 'offline' : 'pending';
  }

  #deliveryInfo(d: Delivery, generation: number, profiles: readonly string[]): string {
    const what = `generation ${generation} (${profiles.length ? `profiles ${profiles.join(', ')}` : 'no profile'})`;
    switch (d) {
      case 'sent': return `${what} published; the appliance is online`;
      case 'offline': return `${what} published; the appliance is offline and gets it when it returns`;
      case 'pending': return `${what} published; the appliance has never registered`;
    }
  }

  async #reconcile(): Promise<void> {
    const all = [...this.#appliances.values()];
    const ids = this.#dirtyIds;
    const todo = this.#dirtyAll ? all : all.filter((a) => ids.has(a.id));
    this.#dirtyAll = false;
    this.#dirtyIds = new Set();
    const writes = todo.map((a) => this.#plan(a, all)).filter((w): w is Write => w !== undefined);
    // appliances are independent: BATCH of them per transaction, a bounded number of transactions in flight
    const batches: Write[][] = [];
    for (let i = 0; i < writes.length; i += BATCH) batches.push(writes.slice(i, i + BATCH));
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < batches.length && !this.#stopped) await this.#publishBatch(batches[next++]!);
    };
    await Promise.all(Array.from({ length: Math.min(CONCURRENCY, batches.length) }, worker));
    if (!this.#stopped) await this.#reconcileClusters(all);
  }

  /** What appliance `a` needs written, if anything. */
  #plan(a: ApplianceDoc, all: readonly ApplianceDoc[]): Write | undefined {
    const r = resolveFor(a, all, this.#profiles.values());
    const expect = this.#desiredRevision(a.id);
    const cur = this.#desired.get(a.id)?.doc;
    const confirmed = this.#status.get(a.id)?.confirmedGeneration ?? 0;
    const time = new Date().toISOString();
    if (r.conflicts.length) {
      const conflict = r.conflicts.join('; ');
      if (cur?.conflict === conflict) return undefined;
      const gen = cur?.generation ?? 0;
      const doc: DesiredDoc = cur
        ? { ...cur, conflict }
        : { id: a.id, generation: 0, values: {}, profiles: r.profiles, cluster: a.cluster, time, delivery: 'pending', conflict };
      const info = `${conflict}; ${gen ? `generation ${gen} stays in force` : 'nothing published'}`;
      return { id: a.id, expect, doc, entries: [this.#entry(a.id, 'error', gen, info)], line: info };
    }
    if (!cur || fingerprint(cur.values) !== fingerprint(r.values) || (cur.generation === 0 && Object.keys(r.values).length > 0)) {
      if (!cur && Object.keys(r.values).length === 0 && r.profiles.length === 0) return undefined; // nothing to publish yet
      const generation = (cur?.generation ?? 0) + 1;
      const delivery = this.#delivery(a.id);
      const doc: DesiredDoc = { id: a.id, generation, values: r.values, profiles: r.profiles, cluster: a.cluster, time, delivery, conflict: null };
      const info = this.#deliveryInfo(delivery, generation, r.profiles);
      return { id: a.id, expect, doc, entries: [this.#entry(a.id, delivery, generation, info)], line: info };
    }
    if (cur.conflict !== null || cur.cluster !== a.cluster) {
      return { id: a.id, expect, doc: { ...cur, conflict: null, cluster: a.cluster }, entries: [] };
    }
    // presence changes for a generation not confirmed yet
    if (cur.generation > confirmed && cur.generation > 0) {
      const online = this.#presence.has(a.id);
      if (online && cur.delivery !== 'sent') {
        // an appliance that already reported on this generation needs no `sent` row after its own
        const reported = (this.#status.get(a.id)?.observedGeneration ?? 0) >= cur.generation;
        const info = `generation ${cur.generation} sent: the appliance is back online`;
        return { id: a.id, expect, doc: { ...cur, delivery: 'sent' }, entries: reported ? [] : [this.#entry(a.id, 'sent', cur.generation, info)] };
      } else if (!online && cur.delivery === 'sent') {
        const info = `generation ${cur.generation} not confirmed: the appliance's presence lease expired`;
        return { id: a.id, expect, doc: { ...cur, delivery: 'offline' }, entries: [this.#entry(a.id, 'offline', cur.generation, info)] };
      }
    }
    return undefined;
  }

  async #reconcileClusters(all: readonly ApplianceDoc[]): Promise<void> {
    const clusters = new Map<string, ApplianceDoc[]>();
    for (const a of all) if (a.cluster) clusters.set(a.cluster, [...(clusters.get(a.cluster) ?? []), a]);
    for (const [id, members] of clusters) {
      const desired = members.map((m) => this.#desired.get(m.id)?.doc);
      const allConfirmed = desired.every((d, i) => d && d.generation > 0 && d.conflict === null && (this.#status.get(members[i]!.id)?.confirmedGeneration ?? 0) >= d.generation);
      const prints = new Set(desired.map((d) => (d ? fingerprint(d.values) : '')));
      const known = this.#clusters.get(id);
      const names = members.map((m) => m.id).sort();
      const confirmedValues = allConfirmed && prints.size === 1 ? [...prints][0]! : null;
      if (known && (confirmedValues === null || known.doc.confirmedValues === confirmedValues) && known.doc.members.join() === names.join()) continue;
      if (!known && confirmedValues === null && names.length === 0) continue;
      const doc: ClusterDoc = { id, members: names, confirmedValues: confirmedValues ?? known?.doc.confirmedValues ?? null, time: new Date().toISOString() };
      const key = this.#k.cluster(id);
      const ops = [this.#c.put(key).value(encode(doc))];
      const newlyConfirmed = confirmedValues !== null && known?.doc.confirmedValues !== confirmedValues;
      const gens = members.map((m, i) => `${m.id} generation ${desired[i]?.generation ?? 0}`).join(', ');
      if (newlyConfirmed) {
        const entry: LogEntry = { time: doc.time, type: 'cluster', appliance: id, direction: 'in', status: 'confirmed', info: `every member confirmed the same configuration (${gens})`, generation: Math.max(...desired.map((d) => d?.generation ?? 0)) };
        ops.push(this.#c.put(`${this.#k.clusterLog(id)}${logSeq(new Date())}`).value(encode(entry)));
      }
      const res = await this.#c.if(key, 'Mod', '==', known?.modRevision ?? '0').then(...ops).commit();
      if (res.succeeded) {
        this.#clusters.set(id, { doc, modRevision: String(res.header.revision) });
        if (newlyConfirmed) {
          this.#info(`connrate fleet controller: cluster ${id}: confirmed by every member (${gens})`);
          await this.#maybeTrim(this.#k.clusterLog(id), 1);
        }
      } else this.#dirtyIds.add('');
    }
  }
}

/** Who runs this controller (for its log lines). */
export function controllerName(): string {
  return `${hostname()}:${process.pid}`;
}
