/**
 * One appliance, end to end: a real etcd member, the controller as a process,
 * the real daemon as the appliance's fleet agent in a netns testbed, real
 * TCP/UDP clients. Every wait is on a condition, never on a duration.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ChildProcess } from 'node:child_process';
import { type ClientRequest, waitFor } from '../helpers/testbed.js';
import { Fleet, type FleetAppliance, PREFIX, VAR, entries } from './fleet.js';

let fleet: Fleet;
let gw: FleetAppliance;
let ctl: { child: ChildProcess; log: () => string };
let servers: { stop(): Promise<void> };

beforeAll(async () => {
  fleet = await Fleet.start();
  gw = await fleet.addAppliance('gw1', { tags: ['edge'] });
  servers = await gw.tb.startServers({ tcp: [443], udp: [1194] });
  await gw.start();
  ctl = fleet.controller();
});
afterAll(async () => {
  await servers?.stop();
  await fleet?.destroy();
});

const src = (i: number) => gw.tb.internetClients4[i]!;
const tcp = (s: string, count: number): ClientRequest => ({ kind: 'tcp-connect', src: s, dst: gw.tb.appliance4, port: 443, count });
const udp = (s: string, count: number): ClientRequest => ({ kind: 'udp-new', src: s, dst: gw.tb.appliance4, port: 1194, count, timeoutMs: 300 });

describe('a profile published to a real daemon', () => {
  it('changes what real TCP and UDP clients get, and is confirmed once', async () => {
    // embedded defaults: TCP unlimited, UDP 20/min burst 5
    expect(await gw.tb.client(tcp(src(0), 8))).toMatchObject({ ok: 8, failed: 0 });
    fleet.ok(['fleet', 'profile', 'set', 'edge-limits', '--tag', 'edge', `${VAR.TCP}=20`, `${VAR.TCP_PORTS}=[ 443 ]`, `${VAR.BURST}=3`]);
    const log = await fleet.waitStatus((l) => entries(l, 'gw1', 'confirmed', 1).length > 0, 'gw1 to confirm generation 1');
    expect(entries(log, 'gw1', 'sent', 1)).toHaveLength(1);
    expect(entries(log, 'gw1', 'received', 1)).toHaveLength(1);
    expect(entries(log, 'gw1', 'confirmed', 1)).toHaveLength(1);
    expect(entries(log, 'gw1', 'received', 1)[0]!.direction).toBe('in');
    expect(entries(log, 'gw1', 'sent', 1)[0]!.direction).toBe('out');
    expect(gw.stored()).toMatchObject({ [VAR.TCP]: '20', [VAR.TCP_PORTS]: '[ 443 ]', [VAR.BURST]: '3' });
    expect(gw.datapathStatus().inForce).toMatchObject({ [VAR.TCP]: '20', [VAR.BURST]: '3' });
    expect(await gw.tb.client(tcp(src(1), 6))).toMatchObject({ ok: 3, failed: 3 });
    expect(await gw.tb.client(udp(src(1), 6))).toMatchObject({ ok: 3, failed: 3 });
    const rows = fleet.appliancesJson();
    expect(rows).toEqual([{ id: 'gw1', tags: ['all', 'edge'], cluster: null, online: true, desiredGeneration: 1, confirmedGeneration: 1, lastSeen: expect.any(String) }]);
  });

  it('a value written straight into etcd is refused by the appliance: error with the reason, configuration kept', async () => {
    const before = gw.datapathStatus();
    const profile = JSON.parse((await fleet.root.get(`${PREFIX}profiles/edge-limits`).string())!) as { values: Record<string, string> };
    profile.values[VAR.TCP] = 'fast';
    await fleet.root.put(`${PREFIX}profiles/edge-limits`).value(JSON.stringify(profile));
    const log = await fleet.waitStatus((l) => entries(l, 'gw1', 'error', 2).length > 0, 'gw1 to refuse generation 2');
    const err = entries(log, 'gw1', 'error', 2)[0]!;
    expect(err.direction).toBe('in');
    expect(err.info).toContain(VAR.TCP);
    expect(err.info).toContain('"fast"');
    expect(err.info).toContain('generation 1 stays in force');
    expect(entries(log, 'gw1', 'confirmed', 2)).toHaveLength(0);
    expect(gw.datapathStatus()).toEqual(before);
    expect(gw.stored()[VAR.TCP]).toBe('20');
    expect(await gw.tb.client(tcp(src(2), 5))).toMatchObject({ ok: 3, failed: 2 });
    // fixed through the CLI: the next generation is confirmed
    fleet.ok(['fleet', 'profile', 'set', 'edge-limits', `${VAR.TCP}=30`]);
    await fleet.waitStatus((l) => entries(l, 'gw1', 'confirmed', 3).length > 0, 'gw1 to confirm generation 3');
    expect(gw.stored()[VAR.TCP]).toBe('30');
  });

  it('a compaction under the running watches of the controller and the agent: both list again and converge', async () => {
    // Freeze both (their watches stay registered), move etcd on, compact past
    // where they are, and break their streams: each watch resumes from a
    // compacted revision and must list again.
    const g = fleet.appliancesJson()[0]!.desiredGeneration + 1;
    const agentPid = gw.app.pid!;
    process.kill(agentPid, 'SIGSTOP');
    process.kill(ctl.child.pid!, 'SIGSTOP');
    try {
      fleet.ok(['fleet', 'profile', 'set', 'edge-limits', `${VAR.BURST}=4`]);
      // two more revisions, then compact them all: both resume below the compacted revision
      await fleet.root.put('/elsewhere/k').value('1');
      await fleet.root.put('/elsewhere/k').value('2');
      await fleet.etcd.compact(await fleet.etcd.revision());
      await fleet.etcd.restart(fleet.etcd.members[0]!);
    } finally {
      process.kill(ctl.child.pid!, 'SIGCONT');
      process.kill(agentPid, 'SIGCONT');
    }
    await fleet.waitStatus((l) => entries(l, 'gw1', 'confirmed', g).length > 0, `gw1 to confirm generation ${g} after a compaction`).catch((e: Error) => {
      throw new Error(`${e.message}\ncontroller:\n${ctl.log()}\nagent:\n${gw.app.log}`);
    });
    expect(gw.stored()[VAR.BURST]).toBe('4');
    // each found its stream ended (a compacted revision, an expired token, a dropped connection) and listed again
    await waitFor(() => /listing again|retrying/.test(ctl.log()), 10_000, 'the controller to list again');
    await waitFor(() => /reading the desired configuration again|retrying/.test(gw.app.log), 10_000, 'the agent to read again');
    expect(entries(fleet.status(), 'gw1', 'confirmed', g)).toHaveLength(1);
    expect(entries(fleet.status(), 'gw1', 'sent', g)).toHaveLength(1);
  });

  it('kill -9 of the appliance daemon: shown offline; on return only the latest generation is applied, exactly once', async () => {
    const genBefore = Number(gw.datapathStatus().generation);
    const g = fleet.appliancesJson()[0]!.desiredGeneration + 1;
    await gw.stop('SIGKILL');
    await waitFor(() => fleet.appliancesJson()[0]!.online === false, 30_000, 'gw1 to go offline (lease expiry)');
    expect(fleet.appliancesJson()[0]!.lastSeen).not.toBeNull();
    fleet.ok(['fleet', 'profile', 'set', 'edge-limits', `${VAR.BURST}=2`]);
    let log = await fleet.waitStatus((l) => entries(l, 'gw1', 'offline', g).length > 0, `generation ${g} to be shown offline`);
    fleet.ok(['fleet', 'profile', 'set', 'edge-limits', `${VAR.TCP}=25`]);
    log = await fleet.waitStatus((l) => entries(l, 'gw1', 'offline', g + 1).length > 0, `generation ${g + 1} to be shown offline`);
    expect(entries(log, 'gw1', 'sent', g)).toHaveLength(0);
    expect(entries(log, 'gw1', 'offline', g)[0]!.direction).toBe('out');
    // the datapath kept enforcing the last values while the daemon was away (burst 4)
    expect(await gw.tb.client(tcp(src(3), 6))).toMatchObject({ ok: 4, failed: 2 });
    await gw.start();
    log = await fleet.waitStatus((l) => entries(l, 'gw1', 'confirmed', g + 1).length > 0, `gw1 to confirm generation ${g + 1} on return`);
    expect(entries(log, 'gw1', 'confirmed', g)).toHaveLength(0);
    expect(Number(gw.datapathStatus().generation)).toBe(genBefore + 1);
    expect(gw.stored()).toMatchObject({ [VAR.BURST]: '2', [VAR.TCP]: '25' });
    // a clean restart does not apply it again; the next publication is applied once
    await gw.stop('SIGTERM');
    await gw.start();
    await waitFor(() => fleet.appliancesJson()[0]!.online, 30_000, 'gw1 online again');
    fleet.ok(['fleet', 'profile', 'set', 'edge-limits', `${VAR.BURST}=5`]);
    log = await fleet.waitStatus((l) => entries(l, 'gw1', 'confirmed', g + 2).length > 0, `gw1 to confirm generation ${g + 2}`);
    expect(entries(log, 'gw1', 'confirmed', g + 1)).toHaveLength(1);
    expect(entries(log, 'gw1', 'confirmed', g + 2)).toHaveLength(1);
    expect(Number(gw.datapathStatus().generation)).toBe(genBefore + 2);
    expect(fleet.appliancesJson()[0]).toMatchObject({ online: true, desiredGeneration: g + 2, confirmedGeneration: g + 2 });
  });
});
