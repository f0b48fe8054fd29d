/**
 * Resolution across real appliances: three daemons (`connrate run --fleet`)
 * in their own testbeds — edge1 alone, ha-a and ha-b one HA cluster — and
 * the controller as a process, on a real etcd member.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitFor } from '../helpers/testbed.js';
import { Fleet, type FleetAppliance, VAR, entries } from './fleet.js';

let fleet: Fleet;
let edge1: FleetAppliance;
let haA: FleetAppliance;
let haB: FleetAppliance;

beforeAll(async () => {
  fleet = await Fleet.start();
  edge1 = await fleet.addAppliance('edge1', { tags: ['edge'] });
  haA = await fleet.addAppliance('ha-a', { cluster: 'ha1' });
  haB = await fleet.addAppliance('ha-b', { cluster: 'ha1' });
  // a local value that no profile sets
  edge1.app.configure({ [VAR.UDP]: '33' });
  await Promise.all([edge1.start(), haA.start(), haB.start()]);
  fleet.controller();
}, 120_000);
afterAll(async () => fleet?.destroy());

const gen = (id: string): number => fleet.appliancesJson().find((a) => a.id === id)!.desiredGeneration;
const clusterConfirmations = (): number => fleet.status().filter((e) => e.type === 'cluster' && e.appliance === 'ha1' && e.status === 'confirmed').length;

describe('resolution on real appliances', () => {
  it('priority, tags and direct assignment; cluster members get the same values; unset variables stay local', async () => {
    fleet.ok(['fleet', 'profile', 'set', 'base', '--tag', 'all', `${VAR.TCP}=10`, `${VAR.BURST}=5`]);
    fleet.ok(['fleet', 'profile', 'set', 'edge', '--tag', 'edge', '--priority', '7', `${VAR.TCP}=40`]);
    fleet.ok(['fleet', 'profile', 'set', 'primary', '--appliance', 'ha-a', '--priority', '6', `${VAR.UDP_PORTS}=[ 1194 ]`]);
    await fleet.waitStatus(
      (l) => ['edge1', 'ha-a', 'ha-b'].every((id) => entries(l, id, 'confirmed').some((e) => e.generation === gen(id))) && l.some((e) => e.type === 'cluster' && e.status === 'confirmed'),
      'every appliance and the cluster to confirm',
    );
    expect(edge1.stored()).toMatchObject({ [VAR.TCP]: '40', [VAR.BURST]: '5', [VAR.UDP]: '33', [VAR.UDP_PORTS]: '[ ]' });
    for (const m of [haA, haB]) expect(m.stored()).toMatchObject({ [VAR.TCP]: '10', [VAR.BURST]: '5', [VAR.UDP_PORTS]: '[ 1194 ]', [VAR.UDP]: '20' });
    expect(edge1.datapathStatus().inForce).toMatchObject({ [VAR.TCP]: '40', [VAR.UDP]: '33' });
    // one cluster row per configuration every member confirmed, never two for the same one
    const cl = fleet.status().filter((e) => e.type === 'cluster' && e.status === 'confirmed');
    expect(new Set(cl.map((e) => e.info)).size).toBe(cl.length);
    expect(cl[0]!.info).toContain(`ha-a generation ${gen('ha-a')}`);
    expect(cl[0]!.info).toContain(`ha-b generation ${gen('ha-b')}`);
    // the publication log of one profile: the appliances it applies to (with their cluster)
    const byProfile = fleet.status(['--profile', 'primary']);
    expect(new Set(byProfile.map((e) => e.appliance))).toEqual(new Set(['ha-a', 'ha-b', 'ha1']));
    expect(new Set(fleet.status(['--appliance', 'edge1']).map((e) => e.appliance))).toEqual(new Set(['edge1']));
    const rows = fleet.appliancesJson();
    expect(rows.map((r) => [r.id, r.cluster, r.online, r.desiredGeneration === r.confirmedGeneration])).toEqual([
      ['edge1', null, true, true], ['ha-a', 'ha1', true, true], ['ha-b', 'ha1', true, true],
    ]);
  });

  it('a conflict: status error naming the variable and both profiles; the last good configuration stays', async () => {
    const before = gen('edge1');
    const dp = edge1.datapathStatus();
    fleet.ok(['fleet', 'profile', 'set', 'rival', '--tag', 'edge', '--priority', '7', `${VAR.TCP}=50`]);
    const log = await fleet.waitStatus((l) => entries(l, 'edge1', 'error').length > 0, 'the conflict to be reported');
    const err = entries(log, 'edge1', 'error')[0]!;
    expect(err.info).toContain(VAR.TCP);
    expect(err.info).toMatch(/profile edge/);
    expect(err.info).toMatch(/profile rival/);
    expect(err.info).toContain(`generation ${before} stays in force`);
    expect(gen('edge1')).toBe(before);
    expect(edge1.datapathStatus()).toEqual(dp);
    expect(edge1.stored()[VAR.TCP]).toBe('40');
    // resolved by a priority: a new generation with the winner's value
    fleet.ok(['fleet', 'profile', 'set', 'rival', '--priority', '8']);
    await fleet.waitStatus((l) => entries(l, 'edge1', 'confirmed', before + 1).length > 0, 'edge1 to confirm the resolved configuration');
    expect(edge1.stored()[VAR.TCP]).toBe('50');
    fleet.ok(['fleet', 'profile', 'delete', 'rival']);
    await fleet.waitStatus((l) => entries(l, 'edge1', 'confirmed', before + 2).length > 0, 'edge1 to confirm after the delete');
    expect(edge1.stored()[VAR.TCP]).toBe('40');
  });

  it('an HA cluster is confirmed only once both members confirmed', async () => {
    const confirmedBefore = clusterConfirmations();
    await haB.stop('SIGTERM'); // a clean stop ends its presence at once
    await waitFor(() => fleet.appliancesJson().find((a) => a.id === 'ha-b')!.online === false, 30_000, 'ha-b offline');
    const g = gen('ha-a') + 1;
    const gb = gen('ha-b') + 1;
    fleet.ok(['fleet', 'profile', 'set', 'base', `${VAR.TCP}=12`]);
    const log = await fleet.waitStatus((l) => entries(l, 'ha-a', 'confirmed', g).length > 0 && entries(l, 'ha-b', 'offline', gb).length > 0, 'ha-a to confirm, ha-b to be offline');
    expect(entries(log, 'ha-b', 'confirmed', gb)).toHaveLength(0);
    expect(clusterConfirmations()).toBe(confirmedBefore);
    await haB.start();
    await fleet.waitStatus((l) => entries(l, 'ha-b', 'confirmed', gb).length > 0, 'ha-b to confirm on return');
    await waitFor(() => clusterConfirmations() === confirmedBefore + 1, 30_000, 'the cluster to be confirmed');
    const cluster = fleet.status().find((e) => e.type === 'cluster')!;
    expect(cluster).toMatchObject({ appliance: 'ha1', direction: 'in', status: 'confirmed' });
    expect(cluster.info).toContain('ha-a');
    expect(cluster.info).toContain('ha-b');
    for (const m of [haA, haB]) expect(m.stored()[VAR.TCP]).toBe('12');
  });
});
