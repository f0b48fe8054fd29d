/**
 * The fleet commands of the CLI: profiles, appliances (with their etcd users),
 * the appliance list and the publication log. Each validates everything
 * before it writes to etcd and returns data; the CLI prints it.
 */
import { randomBytes } from 'node:crypto';
import type { Etcd3 } from 'etcd3';
import { EtcdPermissionDeniedError, EtcdRoleExistsError, EtcdUserExistsError, Range } from 'etcd3';
import { canonicalValue, lookupVariable } from '../config/variables.js';
import { ConnrateError, EXIT, InvalidValueError } from '../errors.js';
import { applies, membersOf } from './resolve.js';
import {
  type ApplianceDoc, type LogEntry, type ProfileDoc, DEFAULT_PREFIX, DEFAULT_PRIORITY, FleetDataError, Keys, TAG_ALL, applianceTags, encode,
  nameProblem, parseAppliance, parseDesired, parseLogEntry, parsePresence, parseProfile, parseSeen, parseStatus,
} from './keys.js';

function checkName(op: string, kind: Parameters<typeof nameProblem>[0], s: string): void {
  const p = nameProblem(kind, s);
  if (p) throw new InvalidValueError(op, p);
}

/** Parse documents under a prefix; a bad one is reported once on stderr and skipped. */
async function listDocs<T>(c: Etcd3, dir: string, parse: (key: string, text: Buffer) => T, warn: (msg: string) => void): Promise<T[]> {
  const res = await c.getAll().prefix(dir).exec();
  const out: T[] = [];
  for (const kv of res.kvs) {
    try {
      out.push(parse(kv.key.toString(), kv.value));
    } catch (err) {
      if (!(err instanceof FleetDataError)) throw err;
      warn(`ignoring ${err.message}`);
    }
  }
  return out;
}

// ---------------------------------------------------------------- profiles

export interface ProfileSetOptions {
  readonly priority?: number;
  readonly tags?: readonly string[];
  readonly appliances?: readonly string[];
  readonly comment?: string;
  /** VARIABLE=VALUE; VARIABLE= removes the variable from the profile. */
  readonly assignments: readonly string[];
}

export interface ProfileSetResult {
  readonly profile: ProfileDoc;
  readonly created: boolean;
}

/** Validate everything, then create or update the profile (options given replace; values merge). */
export async function profileSet(c: Etcd3, k: Keys, name: string, o: ProfileSetOptions): Promise<ProfileSetResult> {
  const op = 'fleet profile set';
  checkName(op, 'profile name', name);
  for (const t of o.tags ?? []) checkName(op, 'tag', t);
  for (const a of o.appliances ?? []) checkName(op, 'appliance ID', a);
  if (o.comment !== undefined && o.comment.length > 1024) throw new InvalidValueError(op, 'the comment is longer than 1024 characters');
  const set: Record<string, string> = {};
  const unset: string[] = [];
  for (const a of o.assignments) {
    const eq = a.indexOf('=');
    if (eq <= 0) throw new InvalidValueError(op, `${JSON.stringify(a)} is not VARIABLE=VALUE (e.g. CONNECTION_RATE_LIMIT_TCP=20)`);
    const variable = a.slice(0, eq);
    const value = a.slice(eq + 1);
    lookupVariable(op, variable);
    if (value.trim() === '') unset.push(variable);
    else set[variable] = canonicalValue(op, variable, value);
  }
  const key = k.profile(name);
  const res = await c.get(key).exec();
  const kv = res.kvs[0];
  let old: ProfileDoc | undefined;
  if (kv) {
    try {
      old = parseProfile(key, kv.value);
    } catch (err) {
      if (!(err instanceof FleetDataError)) throw err; // a bad stored document is replaced
    }
  }
  const values: Record<string, string> = { ...(old?.values ?? {}), ...set };
  for (const u of unset) delete values[u];
  const doc: ProfileDoc = {
    name,
    priority: o.priority ?? old?.priority ?? DEFAULT_PRIORITY,
    tags: o.tags ? [...new Set(o.tags)] : (old?.tags ?? []),
    appliances: o.appliances ? [...new Set(o.appliances)] : (old?.appliances ?? []),
    comment: o.comment ?? old?.comment ?? '',
    values,
  };
  const t = await c.if(key, 'Mod', '==', kv ? String(kv.mod_revision) : '0').then(c.put(key).value(encode(doc))).commit();
  if (!t.succeeded) throw new ConnrateError(op, 'EAGAIN', `profile ${name} was changed by someone else meanwhile; nothing written, run the command again`);
  return { profile: doc, created: !kv };
}

export async function profileDelete(c: Etcd3, k: Keys, name: string): Promise<void> {
  const op = 'fleet profile delete';
  checkName(op, 'profile name', name);
  const res = await c.delete().key(k.profile(name)).exec();
  if (Number(res.deleted) === 0) throw new ConnrateError(op, 'ENOENT', `no profile named ${name}`, EXIT.USAGE);
}

export async function profileList(c: Etcd3, k: Keys, warn: (m: string) => void): Promise<ProfileDoc[]> {
  return (await listDocs(c, k.profiles, parseProfile, warn)).sort((a, b) => b.priority - a.priority || a.name.localeCompare(b.name));
}

// ---------------------------------------------------------------- appliances and their etcd users

export interface Credentials {
  readonly user: string;
  /** Only when the user was created (or given a new password) now. */
  readonly password?: string;
  readonly role: string;
  /** Set when this client may not manage users: what an etcd root user should run. */
  readonly etcdctl?: string[];
}

/** The etcd user and role of one appliance (also unique per prefix). */
export function applianceUser(k: Keys, id: string): string {
  return k.prefix === DEFAULT_PREFIX ? `connrate-appliance-${id}` : `connrate-appliance-${id}@${k.prefix}`;
}

/** What the appliance's role may do: read its desired configuration, write its own presence, status and log. */
export function appliancePermissions(k: Keys, id: string): { permission: 'Read' | 'Readwrite'; key?: string; prefix?: string }[] {
  return [
    { permission: 'Read', key: k.desired(id) },
    { permission: 'Readwrite', key: k.presence(id) },
    { permission: 'Readwrite', key: k.status(id) },
    { permission: 'Readwrite', prefix: k.log(id) },
  ];
}

function etcdctlCommands(k: Keys, id: string, password: string): string[] {
  const user = applianceUser(k, id);
  return [
    `etcdctl role add ${user}`,
    ...appliancePermissions(k, id).map((p) => `etcdctl role grant-permission ${user} ${p.permission === 'Read' ? 'read' : 'readwrite'} ${p.key ?? p.prefix}${p.prefix ? ' --prefix=true' : ''}`),
    `etcdctl user add ${user}:${password}`,
    `etcdctl user grant-role ${user} ${user}`,
  ];
}

async function ensureUser(c: Etcd3, k: Keys, id: string, newPassword: boolean): Promise<Credentials> {
  const name = applianceUser(k, id);
  const password = randomBytes(18).toString('base64url');
  try {
    try {
      await c.role(name).create();
    } catch (err) {
      if (!(err instanceof EtcdRoleExistsError)) throw err;
    }
    for (const p of appliancePermissions(k, id)) {
      await c.role(name).grant(p.key ? { permission: p.permission, key: p.key } : { permission: p.permission, range: Range.prefix(p.prefix!) });
    }
    let created = true;
    try {
      await c.user(name).create(password);
    } catch (err) {
      if (!(err instanceof EtcdUserExistsError)) throw err;
      created = false;
      if (newPassword) await c.user(name).setPassword(password);
    }
    await c.user(name).addRole(name);
    return { user: name, role: name, ...(created || newPassword ? { password } : {}) };
  } catch (err) {
    if (!(err instanceof EtcdPermissionDeniedError)) throw err;
    return { user: name, role: name, password, etcdctl: etcdctlCommands(k, id, password) };
  }
}

export interface ApplianceSetResult {
  readonly appliance: ApplianceDoc;
  readonly credentials: Credentials;
}

export async function applianceSet(c: Etcd3, k: Keys, id: string, o: { tags?: readonly string[]; cluster?: string; newPassword?: boolean }): Promise<ApplianceSetResult> {
  const op = 'fleet appliance set';
  checkName(op, 'appliance ID', id);
  for (const t of o.tags ?? []) checkName(op, 'tag', t);
  if (o.cluster !== undefined && o.cluster !== '') checkName(op, 'cluster ID', o.cluster);
  const key = k.appliance(id);
  const kv = (await c.get(key).exec()).kvs[0];
  let old: ApplianceDoc | undefined;
  if (kv) {
    try {
      old = parseAppliance(key, kv.value);
    } catch (err) {
      if (!(err instanceof FleetDataError)) throw err;
    }
  }
  const doc: ApplianceDoc = {
    id,
    tags: o.tags ? [...new Set(o.tags.filter((t) => t !== TAG_ALL))] : (old?.tags ?? []),
    cluster: o.cluster === undefined ? (old?.cluster ?? null) : o.cluster === '' ? null : o.cluster,
  };
  const t = await c.if(key, 'Mod', '==', kv ? String(kv.mod_revision) : '0').then(c.put(key).value(encode(doc))).commit();
  if (!t.succeeded) throw new ConnrateError(op, 'EAGAIN', `appliance ${id} was changed by someone else meanwhile; nothing written, run the command again`);
  return { appliance: doc, credentials: await ensureUser(c, k, id, o.newPassword ?? false) };
}

export interface ApplianceRow {
  readonly id: string;
  readonly tags: string[];
  readonly cluster: string | null;
  readonly online: boolean;
  readonly desiredGeneration: number;
  readonly confirmedGeneration: number;
  readonly lastSeen: string | null;
}

export async function appliances(c: Etcd3, k: Keys, warn: (m: string) => void): Promise<ApplianceRow[]> {
  const [list, desired, status, presence, seen] = await Promise.all([
    listDocs(c, k.appliances, parseAppliance, warn),
    listDocs(c, k.desiredAll, parseDesired, warn),
    listDocs(c, k.statusAll, parseStatus, warn),
    listDocs(c, k.presenceAll, parsePresence, warn),
    listDocs(c, k.seenAll, parseSeen, warn),
  ]);
  const by = <T extends { id: string }>(xs: T[]): Map<string, T> => new Map(xs.map((x) => [x.id, x]));
  const [d, s, p, seenBy] = [by(desired), by(status), by(presence), by(seen)];
  const now = new Date().toISOString();
  return list
    .sort((a, b) => a.id.localeCompare(b.id))
    .map((a) => {
      const online = p.has(a.id);
      const last = [seenBy.get(a.id)?.lastSeen, s.get(a.id)?.time].filter((x): x is string => !!x).sort().pop();
      return {
        id: a.id,
        tags: applianceTags(a),
        cluster: a.cluster,
        online,
        desiredGeneration: d.get(a.id)?.generation ?? 0,
        confirmedGeneration: s.get(a.id)?.confirmedGeneration ?? 0,
        lastSeen: online ? now : (last ?? null),
      };
    });
}

// ---------------------------------------------------------------- the publication log

export async function publicationLog(c: Etcd3, k: Keys, o: { appliance?: string; profile?: string }, warn: (m: string) => void): Promise<LogEntry[]> {
  const op = 'fleet status';
  if (o.appliance !== undefined) checkName(op, 'appliance ID', o.appliance);
  if (o.profile !== undefined) checkName(op, 'profile name', o.profile);
  let only: Set<string> | undefined;
  let clustersOnly: Set<string> | undefined;
  if (o.appliance !== undefined) {
    only = new Set([o.appliance]);
    const a = (await listDocs(c, k.appliances, parseAppliance, warn)).find((x) => x.id === o.appliance);
    clustersOnly = new Set(a?.cluster ? [a.cluster] : []);
  }
  if (o.profile !== undefined) {
    const profiles = await listDocs(c, k.profiles, parseProfile, warn);
    const p = profiles.find((x) => x.name === o.profile);
    if (!p) throw new ConnrateError(op, 'ENOENT', `no profile named ${o.profile}`, EXIT.USAGE);
    const all = await listDocs(c, k.appliances, parseAppliance, warn);
    const ids = all.filter((a) => applies(p, membersOf(a, all))).map((a) => a.id);
    only = new Set(only ? ids.filter((i) => only!.has(i)) : ids);
    const cl = new Set(all.filter((a) => a.cluster && only!.has(a.id)).map((a) => a.cluster!));
    clustersOnly = clustersOnly ? new Set([...cl].filter((x) => clustersOnly!.has(x))) : cl;
  }
  const dirs = only ? [...only].map((id) => k.log(id)) : [k.logAll];
  const cdirs = clustersOnly ? [...clustersOnly].map((id) => k.clusterLog(id)) : [k.clusterLogAll];
  const entries = (await Promise.all([...dirs, ...cdirs].map((d) => c.getAll().prefix(d).exec()))).flatMap((r) => r.kvs);
  const rows: { key: string; e: LogEntry }[] = [];
  for (const kv of entries) {
    const key = kv.key.toString();
    try {
      rows.push({ key: key.slice(key.lastIndexOf('/') + 1), e: parseLogEntry(key, kv.value) });
    } catch (err) {
      if (!(err instanceof FleetDataError)) throw err;
      warn(`ignoring ${err.message}`);
    }
  }
  // newest first: by time, then by the key's sequence
  return rows.sort((a, b) => b.e.time.localeCompare(a.e.time) || b.key.localeCompare(a.key)).map((r) => r.e);
}
