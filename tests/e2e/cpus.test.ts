/**
 * Exact on every CPU, on the wire: on the testbed's veth with two
 * queues, two senders pinned to two CPUs open new UDP flows from one source to
 * one port at the same instant; exactly the burst is admitted, every round.
 */
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Appliance } from '../helpers/appliance.js';
import { type Testbed, createTestbed } from '../helpers/testbed.js';

const ROUNDS = 12;
const FIRST_PORT = 30000;
const PER_SENDER = 8;
const SENDER = fileURLToPath(new URL('../helpers/burst-sender.mjs', import.meta.url));

let tb: Testbed;
let app: Appliance;
let servers: { stop(): Promise<void> };

beforeAll(async () => {
  tb = createTestbed();
  app = new Appliance(tb);
  servers = await tb.startServers({ tcp: [], udp: Array.from({ length: ROUNDS }, (_, r) => FIRST_PORT + r) });
  await app.start(); // embedded defaults: UDP 20/min, burst 5, every port
});
afterAll(async () => {
  await app?.reset();
  await servers?.stop();
  await tb?.destroy();
});

describe('two senders on two CPUs', () => {
  it(`admit exactly the burst of 5 new flows per (source, port), in each of ${ROUNDS} rounds`, async () => {
    const src = tb.internetClients4[0]!;
    for (let r = 0; r < ROUNDS; r++) {
      const port = FIRST_PORT + r; // a fresh bucket each round
      const startAt = Date.now() + 400;
      const senders = [0, 1].map((cpu) => {
        const req = JSON.stringify({ src, dst: tb.appliance4, port, count: PER_SENDER, startAt, waitMs: 400 });
        const child = tb.spawn(tb.net, ['taskset', '-c', String(cpu), process.execPath, SENDER, req]);
        let out = '';
        child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
        return new Promise<{ ok: number }>((resolve, reject) =>
          child.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out) as { ok: number }) : reject(new Error(`sender exited ${code}`)))),
        );
      });
      const [a, b] = await Promise.all(senders);
      expect(a!.ok + b!.ok, `round ${r} (cpu0 ${a!.ok}, cpu1 ${b!.ok})`).toBe(5);
    }
    const s = JSON.parse(app.cli(['stats', '--json']).stdout) as { ports: { port: number; allowed: number; dropped: number }[] };
    for (let r = 0; r < ROUNDS; r++) {
      expect(s.ports.find((p) => p.port === FIRST_PORT + r)).toMatchObject({ allowed: 5, dropped: 2 * PER_SENDER - 5 });
    }
  }, 120_000);
});
