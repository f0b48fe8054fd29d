/**
 * The controller under kills and duplicates, on a real etcd member: 1,000
 * registered appliances (documents only) and one real appliance daemon.
 * `kill -9` in the middle of a publication, then a restart, must converge
 * with every generation published once and applied once; two controllers
 * at once must not publish anything twice.
 */
import type { IKeyValue } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitFor } from '../helpers/testbed.js';
import { type LogEntry, parseDesired, parseLogEntry } from '../../src/fleet/keys.js';
import { Fleet, type FleetAppliance, PREFIX, VAR } from './fleet.js';

const COUNT = 1000;
const TXN_OPS = 100;
let fleet: Fleet;
let gw: FleetAppliance;

beforeAll(async () => {
  fleet = await Fleet.start();
  gw = await fleet.addAppliance('gw', { tags: ['edge'] });
  for (let i = 0; i < COUNT; i += TXN_OPS) {
    const ops = [];
    for (let j = i; j < Math.min(COUNT, i + TXN_OPS); j++) {
      const id = `sim${String(j).padStart(4, '0')}`;
      ops.push(fleet.root.put(`${PREFIX}appliances/${id}`).value(JSON.stringify({ id, tags: ['edge'], cluster: null })));
    }
    await fleet.root.if(`${PREFIX}nothing`, 'Version', '==', 0).then(...ops).commit();
  }
  await gw.start();
}, 120_000);
afterAll(async () => fleet?.destroy());

async function desiredGenerations(): Promise<Map<string, number>> {
  const res = await fleet.root.getAll().prefix(`${PREFIX}desired/`).exec();
  return new Map(res.kvs.map((kv: IKeyValue) => { const d = parseDesired(kv.key.toString(), kv.value); return [d.id, d.generation]; }));
}

async function logEntries(): Promise<LogEntry[]> {
  const res = await fleet.root.getAll().prefix(`${PREFIX}log/`).exec();
  return res.kvs.map((kv: IKeyValue) => parseLogEntry(kv.key.toString(), kv.value));
}

/** Out entries per (appliance, generation). */
function outCounts(log: LogEntry[], generation: number): Map<string, number> {
  const m = new Map<string, number>();
  for (const e of log) if (e.direction === 'out' && e.generation === generation) m.set(e.appliance, (m.get(e.appliance) ?? 0) + 1);
  return m;
}

describe('the controller', () => {
  it('kill -9 in the middle of a publication: a restart converges, nothing published or applied twice', async () => {
    const dpGen = Number(gw.datapathStatus().generation);
    const ctl = fleet.controller();
    await waitFor(() => ctl.log().includes('watching'), 30_000, 'the controller to start');
    // kill it at its first publication
    const w = await fleet.root.watch().prefix(`${PREFIX}desired/`).create();
    const killed = new Promise<void>((resolve) => w.once('put', () => {
      process.kill(ctl.child.pid!, 'SIGKILL');
      resolve();
    }));
    fleet.ok(['fleet', 'profile', 'set', 'edge', '--tag', 'edge', `${VAR.TCP}=20`]);
    await killed;
    await w.cancel();
    await new Promise((r) => ctl.child.exitCode !== null || ctl.child.signalCode !== null ? r(null) : ctl.child.once('exit', r));
    const partial = await desiredGenerations();
    expect(partial.size).toBeGreaterThan(0);
    expect(partial.size).toBeLessThan(COUNT + 1); // it was killed mid-way
    fleet.controller();
    await waitFor(async () => [...(await desiredGenerations()).values()].filter((g) => g === 1).length === COUNT + 1, 60_000, 'every appliance to get generation 1');
    await fleet.waitStatus((l) => l.some((e) => e.appliance === 'gw' && e.status === 'confirmed' && e.generation === 1), 'gw to confirm generation 1');
    const log = await logEntries();
    const outs = outCounts(log, 1);
    expect(outs.size).toBe(COUNT + 1);
    expect([...outs.values()].every((n) => n === 1)).toBe(true);
    expect(log.filter((e) => e.appliance === 'gw' && e.status === 'confirmed')).toHaveLength(1);
    expect(Number(gw.datapathStatus().generation)).toBe(dpGen + 1);
    expect(gw.stored()[VAR.TCP]).toBe('20');
  });

  it('two controllers at once publish each generation once', async () => {
    const dpGen = Number(gw.datapathStatus().generation);
    fleet.controller(); // a second one, next to the restarted one
    fleet.ok(['fleet', 'profile', 'set', 'edge', `${VAR.TCP}=30`]);
    await waitFor(async () => [...(await desiredGenerations()).values()].filter((g) => g === 2).length === COUNT + 1, 60_000, 'every appliance to get generation 2');
    await fleet.waitStatus((l) => l.some((e) => e.appliance === 'gw' && e.status === 'confirmed' && e.generation === 2), 'gw to confirm generation 2');
    const log = await logEntries();
    const outs = outCounts(log, 2);
    expect(outs.size).toBe(COUNT + 1);
    expect([...outs.values()].every((n) => n === 1)).toBe(true);
    expect(log.filter((e) => e.appliance === 'gw' && e.status === 'confirmed' && e.generation === 2)).toHaveLength(1);
    expect(Number(gw.datapathStatus().generation)).toBe(dpGen + 1);
  });
});
