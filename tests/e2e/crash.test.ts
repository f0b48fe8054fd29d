/**
 * Crashes: kill -9 of the daemon at random moments under traffic
 * leaves the limit enforced and loses no counter; each restart adopts.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Appliance } from '../helpers/appliance.js';
import { type ClientRequest, type Testbed, createTestbed } from '../helpers/testbed.js';

const KILLS = Number(process.env.CONNRATE_SOAK_KILLS ?? 6);
const ATTEMPTS = 12; // per source, concurrent: 5 admitted, 7 dropped

let tb: Testbed;
let app: Appliance;
let servers: { stop(): Promise<void> };

beforeAll(async () => {
  tb = createTestbed();
  app = new Appliance(tb);
  servers = await tb.startServers({ tcp: [443], udp: [] });
  app.configure({ CONNECTION_RATE_LIMIT_TCP: '20' });
});
afterAll(async () => {
  await app?.reset();
  await servers?.stop();
  await tb?.destroy();
});

describe('kill -9 under traffic', () => {
  it(`survives ${KILLS} kills at random moments: limits enforced, every new connection counted`, async () => {
    let admitted = 0;
    for (let k = 0; k < KILLS; k++) {
      await app.start();
      // a fresh source each round, hammering while the daemon is killed
      const src = `198.19.2.${10 + k}`;
      tb.exec(tb.net, ['ip', 'addr', 'add', `${src}/32`, 'dev', 'lo']);
      const req: ClientRequest = { kind: 'tcp-connect', src, dst: tb.appliance4, port: 443, count: ATTEMPTS, concurrent: true };
      const traffic = tb.client(req);
      await new Promise((r) => setTimeout(r, Math.floor(Math.random() * 200)));
      await app.stop('SIGKILL');
      const r = await traffic;
      expect(r.ok, `round ${k}`).toBe(5); // enforced before, during and after the kill
      admitted += r.ok;
    }
    await app.start();
    expect(app.log).toContain('adopted the datapath');
    const s = JSON.parse(app.cli(['stats', '--json']).stdout) as { ports: { proto: string; port: number; allowed: number; dropped: number }[] };
    expect(s.ports).toEqual([{ proto: 'tcp', port: 443, allowed: admitted, dropped: KILLS * ATTEMPTS - admitted, wouldDrop: 0 }]);
  }, 120_000 + KILLS * 5_000);
});
