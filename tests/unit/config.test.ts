/**
 * extc variables and the store: validation names the variable, the
 * value and what is allowed; refusals leave the store byte-for-byte as it was.
 */
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Store } from '../../src/config/store.js';
import { APPLICATION, canonicalValue, defaults, diffValues, resolve, valueWarnings, valuesInForce } from '../../src/config/variables.js';
import { InvalidValueError, StoreError } from '../../src/errors.js';

const set = (name: string, value: string) => canonicalValue('test', name, value);

describe('values', () => {
  it('are the fresh-install defaults without a store: UDP 20 on all ports, TCP off', () => {
    expect(resolve(defaults())).toEqual({
      tcp: { rate: 0, ports: [] },
      udp: { rate: 20, ports: [] },
      burst: 5,
      mode: 'block',
      exempt: [],
      ipv6Prefix: 64,
      udpTimeoutSec: 30,
    });
  });

  it('accept port lists with or without inner spaces, printed spaced, sorted, deduplicated', () => {
    expect(set('CONNECTION_RATE_LIMIT_TCP_PORTS', '[ 443 11115 ]')).toBe('[ 443 11115 ]');
    expect(set('CONNECTION_RATE_LIMIT_TCP_PORTS', '[11115 443 443]')).toBe('[ 443 11115 ]');
    expect(set('CONNECTION_RATE_LIMIT_UDP_PORTS', '[ ]')).toBe('[ ]');
    expect(set('CONNECTION_RATE_LIMIT_UDP_PORTS', '[]')).toBe('[ ]');
    expect(set('CONNECTION_RATE_LIMIT_UDP_PORTS', '[ 1 65535 ]')).toBe('[ 1 65535 ]');
  });

  it('normalise exempt prefixes: a bare address is a host prefix', () => {
    expect(set('CONNECTION_RATE_LIMIT_EXEMPT', '[ 198.51.100.0/24 2001:db8::1 198.51.100.7 ]')).toBe('[ 198.51.100.0/24 198.51.100.7/32 2001:db8::1/128 ]');
  });

  it('refuse a prefix with host bits set, naming the variable, the value and the network', () => {
    expect(() => set('CONNECTION_RATE_LIMIT_EXEMPT', '[ 198.51.100.7/24 ]')).toThrow(
      'CONNECTION_RATE_LIMIT_EXEMPT: "[ 198.51.100.7/24 ]" is not allowed (198.51.100.7/24 has host bits set: write the network 198.51.100.0/24, or the single address 198.51.100.7/32)',
    );
    expect(() => set('CONNECTION_RATE_LIMIT_EXEMPT', '[ 2001:db8::1/32 ]')).toThrow('2001:db8::1/32 has host bits set: write the network 2001:db8::/32');
  });

  it('refuse an empty value, naming the variable', () => {
    expect(() => set('CONNECTION_RATE_LIMIT_UDP', '')).toThrow('CONNECTION_RATE_LIMIT_UDP: "" is not allowed; expected an integer from 0 to 1000000');
    expect(() => set('CONNECTION_RATE_LIMIT_UDP_PORTS', '')).toThrow('CONNECTION_RATE_LIMIT_UDP_PORTS: "" is not allowed (not a bracketed list)');
  });

  it.each([
    ['[ 0.0.0.0/0 ]', 'exempts every IPv4 source: no IPv4 source would ever be limited'],
    ['[ 0.0.0.0/1 128.0.0.0/1 ]', 'exempts every IPv4 source'],
    ['[ ::/0 ]', 'exempts every source: no source would ever be limited'],
    ['[ 0.0.0.0/0 ::/1 8000::/1 ]', 'exempts every source'],
    ['[ ::/1 8000::/1 ]', 'exempts every source'], // ::ffff:0:0/96, IPv4, lies inside ::/1
    ['[ 2000::/3 ::/3 4000::/2 8000::/1 ]', 'exempts every source'],
  ])('warn before exempting everything: %s', (value, warning) => {
    expect(valueWarnings('CONNECTION_RATE_LIMIT_EXEMPT', set('CONNECTION_RATE_LIMIT_EXEMPT', value)).join()).toContain(warning);
  });

  it.each([['[ ]'], ['[ 0.0.0.0/1 ]'], ['[ 198.51.100.0/24 2001:db8::/32 ]'], ['[ 2000::/3 ]']])('say nothing about a partial exempt list: %s', (value) => {
    expect(valueWarnings('CONNECTION_RATE_LIMIT_EXEMPT', set('CONNECTION_RATE_LIMIT_EXEMPT', value))).toEqual([]);
  });

  it.each([
    ['CONNECTION_RATE_LIMIT_TCP', 'abc', /CONNECTION_RATE_LIMIT_TCP: "abc" is not allowed; expected an integer from 0/],
    ['CONNECTION_RATE_LIMIT_TCP', '-1', /"-1" is not allowed/],
    ['CONNECTION_RATE_LIMIT_TCP', '2.5', /"2.5" is not allowed/],
    ['CONNECTION_RATE_LIMIT_UDP', '99999999', /out of range/],
    ['CONNECTION_RATE_LIMIT_TCP_PORTS', '[ 443 70000 ]', /port 70000 is out of range/],
    ['CONNECTION_RATE_LIMIT_TCP_PORTS', '[ 0 ]', /port 0 is out of range/],
    ['CONNECTION_RATE_LIMIT_TCP_PORTS', '443 11115', /not a bracketed list/],
    ['CONNECTION_RATE_LIMIT_TCP_PORTS', '[ 443, 11115 ]', /"443," is not a port number/],
    ['CONNECTION_RATE_LIMIT_EXEMPT', '[ 198.51.100.0/33 ]', /CONNECTION_RATE_LIMIT_EXEMPT: .*198.51.100.0\/33/],
    ['CONNECTION_RATE_LIMIT_MODE', 'drop', /expected block or log/],
    ['CONNECTION_RATE_LIMIT_IPV6_PREFIX', '16', /from 32 to 128/],
    ['CONNECTION_RATE_LIMIT_BURST', '0', /from 1 to/],
    ['CONNECTION_RATE_LIMIT_NOPE', '1', /unknown variable "CONNECTION_RATE_LIMIT_NOPE"/],
  ])('refuse %s = %s, naming the problem', (name, value, message) => {
    expect(() => set(name, value)).toThrow(InvalidValueError);
    expect(() => set(name, value)).toThrow(message);
  });

  it('map a configuration in force back to values, and diff them', () => {
    const values = { ...defaults(), CONNECTION_RATE_LIMIT_TCP: '20', CONNECTION_RATE_LIMIT_TCP_PORTS: '[ 443 ]' };
    expect(valuesInForce(resolve(values), values)).toEqual(values);
    // the daemon's setting is not in the datapath: in force as stored
    const anonymized = { ...values, CONNECTION_RATE_LIMIT_LOG_ANONYMIZE: '1' };
    expect(valuesInForce(resolve(values), anonymized)).toEqual(anonymized);
    expect(diffValues(defaults(), values).map((c) => c.name)).toEqual(['CONNECTION_RATE_LIMIT_TCP', 'CONNECTION_RATE_LIMIT_TCP_PORTS']);
  });
});

describe('store', () => {
  let dir: string;
  let store: Store;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'connrate-store-'));
    store = new Store(join(dir, 'sub', 'extc.json'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('reads the embedded defaults when there is no file', () => {
    expect(store.exists()).toBe(false);
    expect(store.read()).toEqual(defaults());
  });

  it('writes root-only files in a root-only directory', () => {
    store.set(APPLICATION, 'CONNECTION_RATE_LIMIT_TCP', '20');
    expect(statSync(store.path).mode & 0o777).toBe(0o600);
    expect(statSync(join(dir, 'sub')).mode & 0o777).toBe(0o700);
    expect(new Store(store.path).read().CONNECTION_RATE_LIMIT_TCP).toBe('20');
  });

  it('reports what changed', () => {
    expect(store.set(APPLICATION, 'CONNECTION_RATE_LIMIT_UDP_PORTS', '[1195 1194]')).toEqual({ name: 'CONNECTION_RATE_LIMIT_UDP_PORTS', from: '[ ]', to: '[ 1194 1195 ]' });
  });

  it('leaves the file byte-for-byte unchanged on every refusal', () => {
    store.set(APPLICATION, 'CONNECTION_RATE_LIMIT_TCP', '20');
    const before = readFileSync(store.path);
    expect(() => store.set(APPLICATION, 'CONNECTION_RATE_LIMIT_TCP', 'x')).toThrow(InvalidValueError);
    expect(() => store.set('other_app', 'CONNECTION_RATE_LIMIT_TCP', '5')).toThrow(/unknown application "other_app"/);
    expect(() => store.set(APPLICATION, 'NOPE', '5')).toThrow('unknown variable "NOPE" of application securepoint_firewall; known: CONNECTION_RATE_LIMIT_TCP,');
    expect(readFileSync(store.path).equals(before)).toBe(true);
  });

  it('stores several values in one write, or none of them when one is bad', () => {
    store.set(APPLICATION, 'CONNECTION_RATE_LIMIT_TCP', '20');
    const before = readFileSync(store.path);
    expect(() => store.setMany(APPLICATION, { CONNECTION_RATE_LIMIT_BURST: '3', CONNECTION_RATE_LIMIT_TCP_PORTS: '[ 70000 ]' })).toThrow(/CONNECTION_RATE_LIMIT_TCP_PORTS/);
    expect(() => store.setMany(APPLICATION, { CONNECTION_RATE_LIMIT_BURST: '3', NOPE: '1' })).toThrow(/unknown variable/);
    expect(readFileSync(store.path).equals(before)).toBe(true);
    const changes = store.setMany(APPLICATION, { CONNECTION_RATE_LIMIT_BURST: '3', CONNECTION_RATE_LIMIT_TCP_PORTS: '[443 22]', CONNECTION_RATE_LIMIT_TCP: '20' });
    expect(changes).toEqual([
      { name: 'CONNECTION_RATE_LIMIT_BURST', from: '5', to: '3' },
      { name: 'CONNECTION_RATE_LIMIT_TCP_PORTS', from: '[ ]', to: '[ 22 443 ]' },
      { name: 'CONNECTION_RATE_LIMIT_TCP', from: '20', to: '20' },
    ]);
    expect(store.read()).toMatchObject({ CONNECTION_RATE_LIMIT_BURST: '3', CONNECTION_RATE_LIMIT_TCP_PORTS: '[ 22 443 ]', CONNECTION_RATE_LIMIT_TCP: '20' });
  });

  it('refuses a corrupted or truncated file by name and never overwrites it', () => {
    store.set(APPLICATION, 'CONNECTION_RATE_LIMIT_TCP', '20');
    const full = readFileSync(store.path, 'utf8');
    for (const bad of [full.slice(0, full.length / 2), '', 'null', '{"version":1,"application":"securepoint_firewall","values":{"CONNECTION_RATE_LIMIT_TCP":"abc"}}']) {
      writeFileSync(store.path, bad);
      expect(() => store.read()).toThrow(StoreError);
      expect(() => store.read()).toThrow(store.path);
      expect(() => store.set(APPLICATION, 'CONNECTION_RATE_LIMIT_UDP', '10')).toThrow(StoreError);
      expect(readFileSync(store.path, 'utf8')).toBe(bad);
    }
  });

  it('resets a variable to its fresh-install default', () => {
    store.set(APPLICATION, 'CONNECTION_RATE_LIMIT_UDP', '10');
    expect(store.reset(APPLICATION, 'CONNECTION_RATE_LIMIT_UDP')).toEqual({ name: 'CONNECTION_RATE_LIMIT_UDP', from: '10', to: '20' });
    expect(store.read().CONNECTION_RATE_LIMIT_UDP).toBe('20');
    expect(() => store.reset(APPLICATION, 'NOPE')).toThrow('unknown variable "NOPE" of application securepoint_firewall');
  });

  it('keeps variables and fields it does not know, warns once, and writes them back unchanged', () => {
    const warnings: string[] = [];
    const newer = {
      version: 1,
      application: APPLICATION,
      written_by: 'a newer connrate',
      values: { CONNECTION_RATE_LIMIT_TCP: '20', CONNECTION_RATE_LIMIT_FUTURE: '[ 1 2 ]', CONNECTION_RATE_LIMIT_OBJECT: { nested: true } },
    };
    store.set(APPLICATION, 'CONNECTION_RATE_LIMIT_TCP', '5'); // creates the directory
    writeFileSync(store.path, JSON.stringify(newer));
    const s = new Store(store.path, (w) => warnings.push(w));
    expect(s.read()).toEqual({ ...defaults(), CONNECTION_RATE_LIMIT_TCP: '20' });
    expect(s.read()).toEqual({ ...defaults(), CONNECTION_RATE_LIMIT_TCP: '20' });
    expect(warnings).toEqual([
      `${store.path}: ignoring CONNECTION_RATE_LIMIT_FUTURE, CONNECTION_RATE_LIMIT_OBJECT, field written_by, unknown to this connrate (written by a newer version?); kept as they are`,
    ]);
    s.set(APPLICATION, 'CONNECTION_RATE_LIMIT_UDP', '10');
    const after = JSON.parse(readFileSync(store.path, 'utf8')) as typeof newer & { values: Record<string, unknown> };
    expect(after.written_by).toBe('a newer connrate');
    expect(after.values).toMatchObject({ ...newer.values, CONNECTION_RATE_LIMIT_UDP: '10' });
  });

  it('names a store it cannot read, or one that is not a connrate store', () => {
    expect(() => new Store(dir).read()).toThrow(`${dir}: cannot read`); // a directory: EISDIR
    writeFileSync(join(dir, 'other.json'), '{}');
    expect(() => new Store(join(dir, 'other.json')).read()).toThrow(/format version/);
  });
});
