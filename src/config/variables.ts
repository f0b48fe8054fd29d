/**
 * The extc variables: parse, validate, print canonically, defaults,
 * and their meaning for the datapath.
 */
import { ALL_ADDRESSES, ALL_IPV4, AddressError, type Prefix, addrBytes, coversAll, parsePrefix } from '../domain/addr.js';
import type { DatapathConfig } from '../domain/limits.js';
import { InvalidValueError } from '../errors.js';

export const APPLICATION = 'securepoint_firewall';

const MAX_RATE = 1_000_000; // per minute: 60 µs between tokens
const MAX_BURST = 10_000;
const MAX_PORT = 65535;
const MAX_UDP_TIMEOUT = 86_400;
const MIN_IPV6_PREFIX = 32;
const MAX_IPV6_PREFIX = 128;
const MAX_EXEMPT = 4096;

type Kind =
  | { readonly type: 'int'; readonly min: number; readonly max: number }
  | { readonly type: 'ports' }
  | { readonly type: 'prefixes' }
  | { readonly type: 'choice'; readonly choices: readonly string[] };

export interface VariableDef {
  readonly name: string;
  readonly kind: Kind;
  /** Canonical text of the fresh-install value. */
  readonly default: string;
  readonly help: string;
}

/** In the order `extc value get` prints them. */
export const VARIABLES: readonly VariableDef[] = [
  { name: 'CONNECTION_RATE_LIMIT_TCP', kind: { type: 'int', min: 0, max: MAX_RATE }, default: '0', help: 'new TCP connections per minute per (source, port); 0 = off' },
  { name: 'CONNECTION_RATE_LIMIT_TCP_PORTS', kind: { type: 'ports' }, default: '[ ]', help: 'TCP ports monitored; empty = all' },
  { name: 'CONNECTION_RATE_LIMIT_UDP', kind: { type: 'int', min: 0, max: MAX_RATE }, default: '20', help: 'new UDP connections per minute per (source, port); 0 = off' },
  { name: 'CONNECTION_RATE_LIMIT_UDP_PORTS', kind: { type: 'ports' }, default: '[ ]', help: 'UDP ports monitored; empty = all' },
  { name: 'CONNECTION_RATE_LIMIT_BURST', kind: { type: 'int', min: 1, max: MAX_BURST }, default: '5', help: 'connections a source may open at once' },
  { name: 'CONNECTION_RATE_LIMIT_MODE', kind: { type: 'choice', choices: ['block', 'log'] }, default: 'block', help: 'block, or log only (drop nothing)' },
  { name: 'CONNECTION_RATE_LIMIT_EXEMPT', kind: { type: 'prefixes' }, default: '[ ]', help: 'source prefixes never limited, e.g. admin networks' },
  { name: 'CONNECTION_RATE_LIMIT_IPV6_PREFIX', kind: { type: 'int', min: MIN_IPV6_PREFIX, max: MAX_IPV6_PREFIX }, default: '64', help: 'IPv6 sources share a limit per prefix of this length' },
  { name: 'CONNECTION_RATE_LIMIT_UDP_TIMEOUT', kind: { type: 'int', min: 1, max: MAX_UDP_TIMEOUT }, default: '30', help: 'seconds a UDP flow stays established without packets' },
  { name: 'CONNECTION_RATE_LIMIT_LOG_ANONYMIZE', kind: { type: 'int', min: 0, max: 1 }, default: '0', help: '1: log lines show sources with the host part zeroed' },
];

const BY_NAME = new Map(VARIABLES.map((v) => [v.name, v]));

/** Every variable's canonical value, by name. */
export type ExtcValues = Readonly<Record<string, string>>;

export function defaults(): ExtcValues {
  return Object.fromEntries(VARIABLES.map((v) => [v.name, v.default]));
}

function allowed(kind: Kind): string {
  switch (kind.type) {
    case 'int':
      return `an integer from ${kind.min} to ${kind.max}`;
    case 'ports':
      return `a list of ports 1..${MAX_PORT} like [ 443 11115 ], or [ ] for all ports`;
    case 'prefixes':
      return 'a list of addresses or CIDR prefixes like [ 198.51.100.0/24 2001:db8::/32 ], or [ ]';
    case 'choice':
      return kind.choices.join(' or ');
  }
}

function refuse(op: string, def: VariableDef, value: string, why?: string): never {
  const detail = why ? ` (${why})` : '';
  throw new InvalidValueError(op, `${def.name}: ${JSON.stringify(value)} is not allowed${detail}; expected ${allowed(def.kind)}`);
}

export function lookupVariable(op: string, name: string): VariableDef {
  const def = BY_NAME.get(name);
  if (!def) {
    throw new InvalidValueError(op, `unknown variable ${JSON.stringify(name)} of application ${APPLICATION}; known: ${VARIABLES.map((v) => v.name).join(', ')}`);
  }
  return def;
}

export function checkApplication(op: string, app: string): void {
  if (app !== APPLICATION) {
    throw new InvalidValueError(op, `unknown application ${JSON.stringify(app)}; connrate keeps ${APPLICATION}`);
  }
}

/** "[ 443 11115 ]" or "[443 11115]" → ["443", "11115"]; anything else → undefined. */
function listItems(value: string): string[] | undefined {
  const m = /^\[(.*)\]$/s.exec(value.trim());
  if (!m) return undefined;
  const body = (m[1] ?? '').trim();
  return body === '' ? [] : body.split(/\s+/);
}

/** Validate `value` for `name` and return its canonical text. Throws InvalidValueError. */
export function canonicalValue(op: string, name: string, value: string): string {
  const def = lookupVariable(op, name);
  const kind = def.kind;
  switch (kind.type) {
    case 'int': {
      const t = value.trim();
      if (!/^\d+$/.test(t)) refuse(op, def, value);
      const n = Number(t);
      if (!Number.isSafeInteger(n) || n < kind.min || n > kind.max) refuse(op, def, value, 'out of range');
      return String(n);
    }
    case 'choice': {
      const t = value.trim();
      if (!kind.choices.includes(t)) refuse(op, def, value);
      return t;
    }
    case 'ports': {
      const items = listItems(value);
      if (!items) refuse(op, def, value, 'not a bracketed list');
      const ports = new Set<number>();
      for (const item of items) {
        if (!/^\d+$/.test(item)) refuse(op, def, value, `${JSON.stringify(item)} is not a port number`);
        const p = Number(item);
        if (p < 1 || p > MAX_PORT) refuse(op, def, value, `port ${item} is out of range`);
        ports.add(p);
      }
      return formatList([...ports].sort((a, b) => a - b).map(String));
    }
    case 'prefixes': {
      const items = listItems(value);
      if (!items) refuse(op, def, value, 'not a bracketed list');
      if (items.length > MAX_EXEMPT) refuse(op, def, value, `more than ${MAX_EXEMPT} prefixes`);
      const prefixes = new Set<string>();
      for (const item of items) {
        let p: Prefix;
        try {
          p = parsePrefix(item);
        } catch (err) {
          if (err instanceof AddressError) refuse(op, def, value, err.message);
          throw err;
        }
        const slash = item.indexOf('/');
        if (slash >= 0 && !addrBytes(item.slice(0, slash)).equals(p.bytes)) {
          const host = parsePrefix(item.slice(0, slash)).text;
          refuse(op, def, value, `${item} has host bits set: write the network ${p.text}, or the single address ${host}`);
        }
        prefixes.add(p.text);
      }
      return formatList([...prefixes].sort());
    }
  }
}

/**
 * What a valid value does that an admin should confirm: today, an exempt list
 * that covers every IPv4 or every IPv6 source (nothing of that family would
 * ever be limited). Empty when there is nothing to say.
 */
export function valueWarnings(name: string, canonical: string): string[] {
  if (name !== 'CONNECTION_RATE_LIMIT_EXEMPT') return [];
  const prefixes = (listItems(canonical) ?? []).map((p) => parsePrefix(p));
  const v4 = coversAll(prefixes, ALL_IPV4);
  const v6 = coversAll([...prefixes, ALL_IPV4], ALL_ADDRESSES);
  const family = v4 && v6 ? '' : v4 ? 'IPv4 ' : v6 ? 'IPv6 ' : undefined;
  return family === undefined ? [] : [`${name} ${canonical} exempts every ${family}source: no ${family}source would ever be limited`];
}

function formatList(items: readonly string[]): string {
  return items.length === 0 ? '[ ]' : `[ ${items.join(' ')} ]`;
}

function intOf(values: ExtcValues, name: string): number {
  return Number(values[name] ?? lookupVariable('resolve', name).default);
}

function listOf(values: ExtcValues, name: string): string[] {
  return listItems(values[name] ?? lookupVariable('resolve', name).default) ?? [];
}

/** What the datapath should enforce for these (canonical) values. */
export function resolve(values: ExtcValues): DatapathConfig {
  const mode = values.CONNECTION_RATE_LIMIT_MODE ?? 'block';
  return {
    tcp: { rate: intOf(values, 'CONNECTION_RATE_LIMIT_TCP'), ports: listOf(values, 'CONNECTION_RATE_LIMIT_TCP_PORTS').map(Number) },
    udp: { rate: intOf(values, 'CONNECTION_RATE_LIMIT_UDP'), ports: listOf(values, 'CONNECTION_RATE_LIMIT_UDP_PORTS').map(Number) },
    burst: intOf(values, 'CONNECTION_RATE_LIMIT_BURST'),
    mode: mode === 'log' ? 'log' : 'block',
    exempt: listOf(values, 'CONNECTION_RATE_LIMIT_EXEMPT'),
    ipv6Prefix: intOf(values, 'CONNECTION_RATE_LIMIT_IPV6_PREFIX'),
    udpTimeoutSec: intOf(values, 'CONNECTION_RATE_LIMIT_UDP_TIMEOUT'),
  };
}

/** Log sources with the host part zeroed? (The daemon's setting: the datapath does not hold it.) */
export function anonymizeLogs(values: ExtcValues): boolean {
  return intOf(values, 'CONNECTION_RATE_LIMIT_LOG_ANONYMIZE') === 1;
}

/**
 * The extc values in force: the datapath's configuration, and the daemon's
 * settings (CONNECTION_RATE_LIMIT_LOG_ANONYMIZE), which the daemon reads from
 * the store whenever a configuration is applied: their `stored` values.
 */
export function valuesInForce(cfg: DatapathConfig, stored: ExtcValues): ExtcValues {
  const list = (items: readonly (string | number)[]): string => formatList(items.map(String));
  return {
    CONNECTION_RATE_LIMIT_TCP: String(cfg.tcp.rate),
    CONNECTION_RATE_LIMIT_TCP_PORTS: list(cfg.tcp.ports),
    CONNECTION_RATE_LIMIT_UDP: String(cfg.udp.rate),
    CONNECTION_RATE_LIMIT_UDP_PORTS: list(cfg.udp.ports),
    CONNECTION_RATE_LIMIT_BURST: String(cfg.burst),
    CONNECTION_RATE_LIMIT_MODE: cfg.mode,
    CONNECTION_RATE_LIMIT_EXEMPT: list([...cfg.exempt].sort()),
    CONNECTION_RATE_LIMIT_IPV6_PREFIX: String(cfg.ipv6Prefix),
    CONNECTION_RATE_LIMIT_UDP_TIMEOUT: String(cfg.udpTimeoutSec),
    CONNECTION_RATE_LIMIT_LOG_ANONYMIZE: anonymizeLogs(stored) ? '1' : '0',
  };
}

/** Variables whose values differ, in table order. */
export function diffValues(from: ExtcValues, to: ExtcValues): { name: string; from: string; to: string }[] {
  return VARIABLES.filter((v) => from[v.name] !== to[v.name]).map((v) => ({ name: v.name, from: from[v.name] ?? '', to: to[v.name] ?? '' }));
}
