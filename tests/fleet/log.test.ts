/**
 * The publication log stays bounded per appliance on a real etcd member:
 * the newest entries are kept, the oldest go in one range delete.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Etcd3 } from 'etcd3';
import { type EtcdCluster, startEtcd } from '../helpers/etcd.js';
import { LOG_SLACK, appendLog } from '../../src/fleet/controller.js';
import { Keys, type LogEntry } from '../../src/fleet/keys.js';

let etcd: EtcdCluster;
let c: Etcd3;
beforeAll(async () => {
  etcd = await startEtcd();
  c = etcd.client();
});
afterAll(async () => etcd?.destroy());

describe('the publication log', () => {
  it('keeps the newest entries of each appliance, never more than keep + slack, and leaves others alone', async () => {
    const k = new Keys('/connrate/');
    const keep = 20;
    const entry = (i: number, id = 'a1'): LogEntry => ({ time: new Date(Date.UTC(2026, 0, 1, 0, 0, i)).toISOString(), type: 'profile', appliance: id, direction: 'in', status: 'confirmed', info: `#${i}`, generation: i });
    await appendLog(c, k.log('a10'), entry(0, 'a10'), keep);
    for (let i = 1; i <= 100; i++) {
      await appendLog(c, k.log('a1'), entry(i), keep);
      expect(await c.getAll().prefix(k.log('a1')).count()).toBeLessThanOrEqual(keep + LOG_SLACK);
    }
    const left = Object.values(await c.getAll().prefix(k.log('a1')).sort('Key', 'Ascend').strings()).map((v) => (JSON.parse(v) as LogEntry).generation);
    expect(left.length).toBeGreaterThanOrEqual(keep);
    expect(left[left.length - 1]).toBe(100);
    expect(left).toEqual(Array.from({ length: left.length }, (_, i) => 101 - left.length + i));
    expect(await c.getAll().prefix(k.log('a10')).count()).toBe(1); // "a1/" never covers "a10/"
  });
});
