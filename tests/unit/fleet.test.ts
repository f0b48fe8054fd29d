/**
 * The fleet's pure parts: resolution by priority, tags, direct assignment and
 * clusters, conflicts; the schema's parsers refuse bad etcd documents with the
 * key and the problem.
 */
import { describe, expect, it } from 'vitest';
import { type ApplianceDoc, type ProfileDoc, FleetDataError, Keys, applianceTags, logSeq, parseAppliance, parseDesired, parseLogEntry, parseProfile, parseStatus } from '../../src/fleet/keys.js';
import { fingerprint, resolveFor } from '../../src/fleet/resolve.js';

const TCP = 'CONNECTION_RATE_LIMIT_TCP';
const BURST = 'CONNECTION_RATE_LIMIT_BURST';
const PORTS = 'CONNECTION_RATE_LIMIT_TCP_PORTS';

const profile = (name: string, p: Partial<ProfileDoc>): ProfileDoc => ({ name, priority: 5, tags: [], appliances: [], comment: '', values: {}, ...p });
const appliance = (id: string, tags: string[] = [], cluster: string | null = null): ApplianceDoc => ({ id, tags, cluster });

describe('resolution', () => {
  const a1 = appliance('a1', ['edge']);
  const a2 = appliance('a2');
  const all = [a1, a2];

  it('takes each variable from the highest-priority profile that sets it', () => {
    const r = resolveFor(a1, all, [
      profile('base', { tags: ['all'], values: { [TCP]: '10', [BURST]: '5' } }),
      profile('edge', { tags: ['edge'], priority: 7, values: { [TCP]: '40' } }),
    ]);
    expect(r).toEqual({ values: { [TCP]: '40', [BURST]: '5' }, profiles: ['edge', 'base'], conflicts: [] });
  });

  it('applies a profile by tag (every appliance has "all") or by appliance ID, and nothing else', () => {
    const ps = [profile('direct', { appliances: ['a2'], values: { [TCP]: '7' } }), profile('edge', { tags: ['edge'], values: { [BURST]: '3' } })];
    expect(resolveFor(a2, all, ps).values).toEqual({ [TCP]: '7' });
    expect(resolveFor(a1, all, ps).values).toEqual({ [BURST]: '3' });
    expect(applianceTags(a2)).toEqual(['all']);
  });

  it('variables no profile sets are not in the result (they keep the local value)', () => {
    expect(resolveFor(a2, all, [profile('p', { tags: ['all'], values: { [TCP]: '1' } })]).values).toEqual({ [TCP]: '1' });
  });

  it('equal priority, different values: a conflict naming the variable and both profiles', () => {
    const r = resolveFor(a1, all, [profile('x', { tags: ['all'], values: { [TCP]: '10', [BURST]: '2' } }), profile('y', { tags: ['edge'], values: { [TCP]: '20' } })]);
    expect(r.conflicts).toEqual([`conflict: ${TCP} is 10 in profile x and 20 in profile y, both priority 5`]);
    expect(r.values).toEqual({ [BURST]: '2' });
  });

  it('equal priority, same value (in canonical form) is no conflict', () => {
    const r = resolveFor(a1, all, [profile('x', { tags: ['all'], values: { [PORTS]: '[443 22]' } }), profile('y', { tags: ['edge'], values: { [PORTS]: '[ 22 443 ]' } })]);
    expect(r).toMatchObject({ values: { [PORTS]: '[ 22 443 ]' }, conflicts: [] });
  });

  it('HA cluster members get the same configuration, whichever member a profile names', () => {
    const m1 = appliance('m1', [], 'ha');
    const m2 = appliance('m2', ['dmz'], 'ha');
    const ps = [profile('primary', { appliances: ['m1'], values: { [TCP]: '9' } }), profile('dmz', { tags: ['dmz'], values: { [BURST]: '4' } })];
    const r1 = resolveFor(m1, [m1, m2, a2], ps);
    const r2 = resolveFor(m2, [m1, m2, a2], ps);
    expect(r1.values).toEqual({ [TCP]: '9', [BURST]: '4' });
    expect(fingerprint(r1.values)).toBe(fingerprint(r2.values));
    expect(resolveFor(a2, [m1, m2, a2], ps).values).toEqual({});
  });

  it('a value that fails validation is carried as it is (the appliance refuses it)', () => {
    expect(resolveFor(a2, all, [profile('p', { tags: ['all'], values: { [TCP]: 'fast' } })]).values).toEqual({ [TCP]: 'fast' });
  });
});

describe('schema', () => {
  const k = new Keys('/connrate/');

  it('names every key under the prefix; log keys sort by time', () => {
    expect([k.profile('p'), k.appliance('a'), k.desired('a'), k.presence('a'), k.status('a'), k.log('a'), k.seen('a'), k.cluster('c'), k.clusterLog('c')]).toEqual([
      '/connrate/profiles/p', '/connrate/appliances/a', '/connrate/desired/a', '/connrate/presence/a', '/connrate/status/a', '/connrate/log/a/', '/connrate/seen/a', '/connrate/clusters/c', '/connrate/clusterlog/c/',
    ]);
    expect(logSeq(new Date(1000)) < logSeq(new Date(2000))).toBe(true);
    expect(k.leaf(k.profiles, '/connrate/profiles/p')).toBe('p');
    expect(k.leaf(k.profiles, '/connrate/profiles/p/x')).toBeUndefined();
  });

  const bad = (fn: () => unknown, message: RegExp): void => {
    let err: unknown;
    try {
      fn();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(FleetDataError);
    expect((err as Error).message).toMatch(message);
  };

  it('refuse bad documents naming the key and the problem', () => {
    bad(() => parseProfile('/connrate/profiles/p', 'not json'), /^etcd key \/connrate\/profiles\/p: is not valid JSON/);
    bad(() => parseProfile('/connrate/profiles/p', '[]'), /is not a JSON object/);
    bad(() => parseProfile('/connrate/profiles/p', JSON.stringify({ name: 'q', priority: 5, tags: [], appliances: [], comment: '', values: {} })), /field "name" is "q" but the key names "p"/);
    bad(() => parseProfile('/connrate/profiles/p', JSON.stringify({ name: 'p', priority: 1.5, tags: [], appliances: [], comment: '', values: {} })), /field "priority" must be an integer/);
    bad(() => parseProfile('/connrate/profiles/p', JSON.stringify({ name: 'p', priority: 5, tags: ['a b'], appliances: [], comment: '', values: {} })), /field "tags"\[0\]: tag "a b" is not allowed/);
    bad(() => parseProfile('/connrate/profiles/p', JSON.stringify({ name: 'p', priority: 5, tags: [], appliances: [], comment: '', values: { X: 1 } })), /field "values": X must be text/);
    bad(() => parseAppliance('/connrate/appliances/a', JSON.stringify({ id: 'a', tags: [], cluster: 5 })), /field "cluster" must be text/);
    bad(() => parseDesired('/connrate/desired/a', JSON.stringify({ id: 'a', generation: -1, values: {}, profiles: [], cluster: null, time: new Date().toISOString(), delivery: 'sent', conflict: null })), /field "generation" must be from 0/);
    bad(() => parseStatus('/connrate/status/a', JSON.stringify({ id: 'a', observedGeneration: 1, status: 'great', info: '', confirmedGeneration: 0, time: new Date().toISOString() })), /field "status" must be one of received, confirmed, error/);
    bad(() => parseLogEntry('/connrate/log/a/1', JSON.stringify({ time: 'yesterday', type: 'profile', appliance: 'a', direction: 'in', status: 'sent', info: '', generation: 1 })), /field "time" is not a time/);
  });

  it('parse good documents; the implicit tag "all" is never stored', () => {
    expect(parseAppliance('/connrate/appliances/a', JSON.stringify({ id: 'a', tags: ['all', 'edge'], cluster: null }))).toEqual({ id: 'a', tags: ['edge'], cluster: null });
    const p = { name: 'p', priority: 5, tags: ['all'], appliances: ['a'], comment: 'c', values: { [TCP]: '20' } };
    expect(parseProfile('/connrate/profiles/p', JSON.stringify(p))).toEqual(p);
  });
});
