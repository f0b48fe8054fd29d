/**
 * The fleet's etcd schema: every key under one prefix, and the JSON document
 * stored at each, with a validating parser per document.
 *
 * etcd contents are untrusted input: a parser refuses a bad document with a
 * FleetDataError that names the key and the problem. Extc values inside
 * profiles and desired configurations are carried as text and are *not*
 * judged here: the CLI validates them before writing, and each appliance's
 * agent validates them again before applying (a value written straight into
 * etcd is refused by the appliance, which reports `error`).
 *
 *   <prefix>profiles/<name>          ProfileDoc      admins (CLI)
 *   <prefix>appliances/<id>          ApplianceDoc    admins (CLI)
 *   <prefix>desired/<id>             DesiredDoc      controller; read by appliance <id>
 *   <prefix>presence/<id>            PresenceDoc     appliance <id>, on its lease
 *   <prefix>status/<id>              StatusDoc       appliance <id>
 *   <prefix>log/<id>/<seq>           LogEntry        controller (out) and appliance <id> (in)
 *   <prefix>seen/<id>                SeenDoc         controller (when a presence lease ends)
 *   <prefix>clusters/<cluster>       ClusterDoc      controller
 *   <prefix>clusterlog/<cluster>/<seq> LogEntry      controller
 *
 * The default prefix is `/connrate/`; `CONNRATE_ETCD_PREFIX` chooses another
 * one, e.g. `/connrate/tenant-a/` to keep tenants apart on one etcd cluster.
 */
import { ConnrateError, EXIT } from '../errors.js';

/** The appliance agent's presence lease, in seconds: offline this long after its last keep-alive. */
export const DEFAULT_LEASE_TTL_SEC = 10;

export const DEFAULT_PREFIX = '/connrate/';
/** Every appliance carries this tag. */
export const TAG_ALL = 'all';
export const DEFAULT_PRIORITY = 5;
/** Log entries kept per appliance (older ones are trimmed by whoever appends). */
export const LOG_KEEP = 50;

/** Profile names, appliance IDs, cluster IDs and tags. */
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
const MAX_COMMENT = 1024;
const MAX_INFO = 4096;
const MAX_LIST = 10_000;
const MIN_PRIORITY = -1_000_000;
const MAX_PRIORITY = 1_000_000;

/** etcd holds something connrate cannot use. Nothing is changed because of it. */
export class FleetDataError extends ConnrateError {
  constructor(
    readonly key: string,
    problem: string,
  ) {
    super('fleet', 'EBADMSG', `etcd key ${key}: ${problem}`, EXIT.FAILURE);
  }
}

// ---------------------------------------------------------------- keys

export function fleetPrefix(): string {
  const p = process.env.CONNRATE_ETCD_PREFIX || DEFAULT_PREFIX;
  if (!p.startsWith('/') || !p.endsWith('/') || p.includes('//')) {
    throw new ConnrateError('fleet', 'EINVAL', `CONNRATE_ETCD_PREFIX must start and end with "/" (like /connrate/ or /connrate/tenant-a/), got ${JSON.stringify(p)}`, EXIT.USAGE);
  }
  return p;
}

export type NameKind = 'profile name' | 'appliance ID' | 'cluster ID' | 'tag';

/** Whether `s` is a valid name, ID or tag: [A-Za-z0-9][A-Za-z0-9._-]{0,62}. */
export function isName(s: string): boolean {
  return NAME_RE.test(s);
}

export function nameProblem(kind: NameKind, s: string): string | undefined {
  return isName(s) ? undefined : `${kind} ${JSON.stringify(s)} is not allowed; expected 1 to 63 letters, digits, ".", "_" or "-", starting with a letter or digit`;
}

/** The keys of one fleet (one prefix). */
export class Keys {
  constructor(readonly prefix: string = fleetPrefix()) {}

  get profiles(): string { return `${this.prefix}profiles/`; }
  get appliances(): string { return `${this.prefix}appliances/`; }
  get desiredAll(): string { return `${this.prefix}desired/`; }
  get presenceAll(): string { return `${this.prefix}presence/`; }
  get statusAll(): string { return `${this.prefix}status/`; }
  get logAll(): string { return `${this.prefix}log/`; }
  get seenAll(): string { return `${this.prefix}seen/`; }
  get clustersAll(): string { return `${this.prefix}clusters/`; }
  get clusterLogAll(): string { return `${this.prefix}clusterlog/`; }

  profile(name: string): string { return `${this.profiles}${name}`; }
  appliance(id: string): string { return `${this.appliances}${id}`; }
  desired(id: string): string { return `${this.desiredAll}${id}`; }
  presence(id: string): string { return `${this.presenceAll}${id}`; }
  status(id: string): string { return `${this.statusAll}${id}`; }
  /** Prefix of one appliance's log entries (ends with "/", so "a1" never covers "a10"). */
  log(id: string): string { return `${this.logAll}${id}/`; }
  seen(id: string): string { return `${this.seenAll}${id}`; }
  cluster(id: string): string { return `${this.clustersAll}${id}`; }
  clusterLog(id: string): string { return `${this.clusterLogAll}${id}/`; }

  /** The last path element of a key under `dir` (a name or ID), or undefined if it has more. */
  leaf(dir: string, key: string): string | undefined {
    if (!key.startsWith(dir)) return undefined;
    const rest = key.slice(dir.length);
    return rest && !rest.includes('/') ? rest : undefined;
  }
}

/**
 * A log entry's key suffix: time-ordered (13-digit ms), then a random part so
 * two writers in one millisecond never collide.
 */
export function logSeq(time: Date): string {
  const rand = Math.floor(Math.random() * 0x1_0000_0000).toString(16).padStart(8, '0');
  return `${String(time.getTime()).padStart(13, '0')}-${rand}`;
}

// ---------------------------------------------------------------- documents

/** A named set of extc values with a priority, assigned by appliance ID or tag. */
export interface ProfileDoc {
  readonly name: string;
  /** Higher wins; default 5. */
  readonly priority: number;
  /** Applies to every appliance carrying at least one of these tags. */
  readonly tags: readonly string[];
  /** Applies to these appliances (by ID). */
  readonly appliances: readonly string[];
  readonly comment: string;
  /** Variable name → value text (canonical when written by the CLI). */
  readonly values: Readonly<Record<string, string>>;
}

export interface ApplianceDoc {
  readonly id: string;
  /** As set by the admin; the implicit tag `all` is not stored (see applianceTags). */
  readonly tags: readonly string[];
  /** HA cluster ID: every member receives the same configuration. */
  readonly cluster: string | null;
}

/** How the controller last announced a generation (the `out` direction). */
export type Delivery = 'sent' | 'pending' | 'offline';

/** The configuration an appliance should have in force (desired state). */
export interface DesiredDoc {
  readonly id: string;
  /** 1 for the first publication, +1 whenever the resolved values change (0: nothing published yet, e.g. a conflict). */
  readonly generation: number;
  /** Variables set by the fleet; every other variable keeps the appliance's local value. */
  readonly values: Readonly<Record<string, string>>;
  /** Profiles that contributed, highest priority first. */
  readonly profiles: readonly string[];
  readonly cluster: string | null;
  /** When this generation was published (ISO 8601). */
  readonly time: string;
  /** The last publication status the controller logged for this generation. */
  readonly delivery: Delivery;
  /** An unresolved conflict (the generation above stays the last good one), or null. */
  readonly conflict: string | null;
}

/** Written by the appliance's agent on its lease: present while it runs. */
export interface PresenceDoc {
  readonly id: string;
  /** When this agent started (ISO 8601). */
  readonly since: string;
  readonly pid: number;
  readonly host: string;
}

export type ApplianceState = 'received' | 'confirmed' | 'error';

/** Written by the appliance's agent (status with observedGeneration). */
export interface StatusDoc {
  readonly id: string;
  /** The desired generation this status is about. */
  readonly observedGeneration: number;
  readonly status: ApplianceState;
  readonly info: string;
  /** The newest generation in force on the appliance (0: none yet). */
  readonly confirmedGeneration: number;
  readonly time: string;
}

/** Written by the controller when an appliance's presence lease ends. */
export interface SeenDoc {
  readonly id: string;
  readonly lastSeen: string;
}

/** Written by the controller: the cluster's members and its last confirmed configuration. */
export interface ClusterDoc {
  readonly id: string;
  readonly members: readonly string[];
  /** Fingerprint of the values every member confirmed, or null. */
  readonly confirmedValues: string | null;
  readonly time: string;
}

export type Direction = 'out' | 'in';
export type LogStatus = 'pending' | 'sent' | 'received' | 'confirmed' | 'offline' | 'error';
export type LogType = 'profile' | 'cluster';

/** One row of the publication status (as `fleet status --json` prints it). */
export interface LogEntry {
  readonly time: string;
  readonly type: LogType;
  /** Appliance ID (for type `cluster`: the cluster ID). */
  readonly appliance: string;
  /** `out` controller → appliance, `in` appliance → controller. */
  readonly direction: Direction;
  readonly status: LogStatus;
  readonly info: string;
  readonly generation: number;
}

export const LOG_STATUSES: readonly LogStatus[] = ['pending', 'sent', 'received', 'confirmed', 'offline', 'error'];

// ---------------------------------------------------------------- parsing

type Json = Record<string, unknown>;

class Reader {
  constructor(
    readonly key: string,
    readonly doc: Json,
  ) {}

  fail(problem: string): never {
    throw new FleetDataError(this.key, problem);
  }

  str(field: string, max = MAX_INFO): string {
    const v = this.doc[field];
    if (typeof v !== 'string') this.fail(`field "${field}" must be text, got ${describe(v)}`);
    if (v.length > max) this.fail(`field "${field}" is longer than ${max} characters`);
    return v;
  }

  name(field: string, kind: NameKind): string {
    const v = this.str(field);
    const p = nameProblem(kind, v);
    if (p) this.fail(`field "${field}": ${p}`);
    return v;
  }

  nullableName(field: string, kind: NameKind): string | null {
    const v = this.doc[field];
    if (v === null || v === undefined) return null;
    return this.name(field, kind);
  }

  nullableStr(field: string): string | null {
    const v = this.doc[field];
    if (v === null || v === undefined) return null;
    return this.str(field);
  }

  int(field: string, min: number, max: number): number {
    const v = this.doc[field];
    if (typeof v !== 'number' || !Number.isSafeInteger(v)) this.fail(`field "${field}" must be an integer, got ${describe(v)}`);
    if (v < min || v > max) this.fail(`field "${field}" must be from ${min} to ${max}, got ${v}`);
    return v;
  }

  time(field: string): string {
    const v = this.str(field, 64);
    if (Number.isNaN(Date.parse(v))) this.fail(`field "${field}" is not a time: ${JSON.stringify(v)}`);
    return v;
  }

  names(field: string, kind: NameKind): string[] {
    const v = this.doc[field];
    if (!Array.isArray(v)) this.fail(`field "${field}" must be a list, got ${describe(v)}`);
    if (v.length > MAX_LIST) this.fail(`field "${field}" has more than ${MAX_LIST} entries`);
    return v.map((item, i) => {
      if (typeof item !== 'string') this.fail(`field "${field}"[${i}] must be text, got ${describe(item)}`);
      const p = nameProblem(kind, item);
      if (p) this.fail(`field "${field}"[${i}]: ${p}`);
      return item;
    });
  }

  values(field: string): Record<string, string> {
    const v = this.doc[field];
    if (typeof v !== 'object' || v === null || Array.isArray(v)) this.fail(`field "${field}" must be an object of VARIABLE: "value", got ${describe(v)}`);
    const out: Record<string, string> = {};
    for (const [name, value] of Object.entries(v as Json)) {
      if (typeof value !== 'string') this.fail(`field "${field}": ${name} must be text, got ${describe(value)}`);
      if (name.length > 128 || value.length > 65_536) this.fail(`field "${field}": ${name.slice(0, 128)} is too long`);
      out[name] = value;
    }
    return out;
  }

  oneOf<T extends string>(field: string, choices: readonly T[]): T {
    const v = this.str(field, 64);
    if (!(choices as readonly string[]).includes(v)) this.fail(`field "${field}" must be one of ${choices.join(', ')}, got ${JSON.stringify(v)}`);
    return v as T;
  }

  /** The field must equal the ID in the key. */
  matches(field: string, expected: string | undefined, kind: NameKind): string {
    const v = this.name(field, kind);
    if (expected !== undefined && v !== expected) this.fail(`field "${field}" is ${JSON.stringify(v)} but the key names ${JSON.stringify(expected)}`);
    return v;
  }
}

function describe(v: unknown): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  return typeof v === 'string' ? JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v) : typeof v === 'object' ? 'an object' : String(v);
}

function reader(key: string, text: string | Buffer): Reader {
  const s = typeof text === 'string' ? text : text.toString('utf8');
  let doc: unknown;
  try {
    doc = JSON.parse(s);
  } catch {
    throw new FleetDataError(key, `is not valid JSON: ${JSON.stringify(s.length > 60 ? `${s.slice(0, 60)}…` : s)}`);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new FleetDataError(key, 'is not a JSON object');
  return new Reader(key, doc as Json);
}

/** The last element of a key (the name or ID the key is about). */
function keyLeaf(key: string): string | undefined {
  const leaf = key.slice(key.lastIndexOf('/') + 1);
  return leaf || undefined;
}

export function parseProfile(key: string, text: string | Buffer): ProfileDoc {
  const r = reader(key, text);
  return {
    name: r.matches('name', keyLeaf(key), 'profile name'),
    priority: r.int('priority', MIN_PRIORITY, MAX_PRIORITY),
    tags: r.names('tags', 'tag'),
    appliances: r.names('appliances', 'appliance ID'),
    comment: r.str('comment', MAX_COMMENT),
    values: r.values('values'),
  };
}

export function parseAppliance(key: string, text: string | Buffer): ApplianceDoc {
  const r = reader(key, text);
  return {
    id: r.matches('id', keyLeaf(key), 'appliance ID'),
    tags: r.names('tags', 'tag').filter((t) => t !== TAG_ALL),
    cluster: r.nullableName('cluster', 'cluster ID'),
  };
}

/** An appliance's tags including the implicit `all`, sorted. */
export function applianceTags(a: ApplianceDoc): string[] {
  return [...new Set([TAG_ALL, ...a.tags])].sort();
}

export function parseDesired(key: string, text: string | Buffer): DesiredDoc {
  const r = reader(key, text);
  return {
    id: r.matches('id', keyLeaf(key), 'appliance ID'),
    generation: r.int('generation', 0, Number.MAX_SAFE_INTEGER),
    values: r.values('values'),
    profiles: r.names('profiles', 'profile name'),
    cluster: r.nullableName('cluster', 'cluster ID'),
    time: r.time('time'),
    delivery: r.oneOf('delivery', ['sent', 'pending', 'offline'] as const),
    conflict: r.nullableStr('conflict'),
  };
}

export function parsePresence(key: string, text: string | Buffer): PresenceDoc {
  const r = reader(key, text);
  return {
    id: r.matches('id', keyLeaf(key), 'appliance ID'),
    since: r.time('since'),
    pid: r.int('pid', 0, 2 ** 31),
    host: r.str('host', 255),
  };
}

export function parseStatus(key: string, text: string | Buffer): StatusDoc {
  const r = reader(key, text);
  return {
    id: r.matches('id', keyLeaf(key), 'appliance ID'),
    observedGeneration: r.int('observedGeneration', 0, Number.MAX_SAFE_INTEGER),
    status: r.oneOf('status', ['received', 'confirmed', 'error'] as const),
    info: r.str('info'),
    confirmedGeneration: r.int('confirmedGeneration', 0, Number.MAX_SAFE_INTEGER),
    time: r.time('time'),
  };
}

export function parseSeen(key: string, text: string | Buffer): SeenDoc {
  const r = reader(key, text);
  return { id: r.matches('id', keyLeaf(key), 'appliance ID'), lastSeen: r.time('lastSeen') };
}

export function parseCluster(key: string, text: string | Buffer): ClusterDoc {
  const r = reader(key, text);
  return {
    id: r.matches('id', keyLeaf(key), 'cluster ID'),
    members: r.names('members', 'appliance ID'),
    confirmedValues: r.nullableStr('confirmedValues'),
    time: r.time('time'),
  };
}

export function parseLogEntry(key: string, text: string | Buffer): LogEntry {
  const r = reader(key, text);
  const type = r.oneOf('type', ['profile', 'cluster'] as const);
  return {
    time: r.time('time'),
    type,
    appliance: r.name('appliance', type === 'cluster' ? 'cluster ID' : 'appliance ID'),
    direction: r.oneOf('direction', ['out', 'in'] as const),
    status: r.oneOf('status', LOG_STATUSES),
    info: r.str('info'),
    generation: r.int('generation', 0, Number.MAX_SAFE_INTEGER),
  };
}

/** A document as stored: JSON, one line. */
export function encode(doc: object): string {
  return JSON.stringify(doc);
}
