/**
 * A 3-member etcd cluster whose leader is killed (SIGKILL) in the middle of a
 * publication: the controller has written the first appliance's new desired
 * configuration, the rest is still in flight. The CLI, the controller and both
 * agents (real daemons in netns testbeds) know every member; every appliance
 * must confirm the latest generation in the end, each applied exactly once.
 * Every wait is on a condition, never on a duration.
 */
import type { ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitFor } from '../helpers/testbed.js';
import { Fleet, type FleetAppliance, PREFIX, VAR, entries } from './fleet.js';

let fleet: Fleet;
let apps: FleetAppliance[];
let ctl: { child: ChildProcess; log: () => string };

beforeAll(async () => {
  fleet = await Fleet.start({ members: 3 });
  apps = [await fleet.addAppliance('ha1', { tags: ['core'] }), await fleet.addAppliance('ha2', { tags: ['core'] })];
  for (const a of apps) await a.start();
  ctl = fleet.controller();
  await waitFor(() => fleet.appliancesJson().every((r) => r.online), 30_000, 'both appliances online');
});
afterAll(async () => {
  await fleet?.destroy();
});

const confirmedEverywhere = (g: number) => (log: Parameters<typeof entries>[0]) => apps.every((a) => entries(log, a.id, 'confirmed', g).length > 0);

describe('the etcd leader of a 3-member cluster killed during a publication', () => {
  it('every appliance confirms the latest generation in the end, applied exactly once', async () => {
    expect(fleet.etcd.members).toHaveLength(3);
    fleet.ok(['fleet', 'profile', 'set', 'core-limits', '--tag', 'core', `${VAR.TCP}=20`, `${VAR.TCP_PORTS}=[ 443 ]`]);
    await fleet.waitStatus(confirmedEverywhere(1), 'both appliances to confirm generation 1');
    const before = apps.map((a) => Number(a.datapathStatus().generation));

    // "During the publication": as soon as the controller has written ha1's generation 2.
    const watch = await fleet.root.watch().key(`${PREFIX}desired/ha1`).create();
    const published = new Promise<void>((resolve) => watch.on('put', () => resolve()));
    const leader = await fleet.etcd.leader();
    fleet.ok(['fleet', 'profile', 'set', 'core-limits', `${VAR.BURST}=2`]);
    await published;
    await fleet.etcd.kill(leader);
    await watch.cancel().catch(() => {});
    expect(leader.running).toBe(false);

    const next = await fleet.etcd.leader();
    expect(next.name).not.toBe(leader.name);
    const log = await fleet.waitStatus(confirmedEverywhere(2), 'both appliances to confirm generation 2 after the leader was killed', 90_000);
    for (const [i, a] of apps.entries()) {
      expect(entries(log, a.id, 'confirmed', 2)).toHaveLength(1);
      expect(Number(a.datapathStatus().generation)).toBe(before[i]! + 1);
      expect(a.stored()).toMatchObject({ [VAR.TCP]: '20', [VAR.BURST]: '2' });
    }
    expect(fleet.appliancesJson().map((r) => [r.id, r.desiredGeneration, r.confirmedGeneration])).toEqual([
      ['ha1', 2, 2],
      ['ha2', 2, 2],
    ]);
    // the controller survived it (it retries; it was not restarted)
    expect(ctl.child.exitCode).toBeNull();

    // The killed member comes back, catches up, and the next publication goes through it too.
    await fleet.etcd.start(leader);
    fleet.ok(['fleet', 'profile', 'set', 'core-limits', `${VAR.BURST}=4`]);
    await fleet.waitStatus(confirmedEverywhere(3), 'both appliances to confirm generation 3');
    const only = fleet.etcd.client({ members: [leader], auth: { user: 'root', password: 'fleet-test-root' } });
    await expect
      .poll(async () => JSON.parse((await only.get(`${PREFIX}desired/ha2`).string()) ?? '{}').generation, { timeout: 30_000 })
      .toBe(3);
  }, 240_000);
});
