/**
 * The hot-path mechanisms, each against the exact bucket it stands in for:
 * the per-CPU drop cache (void after a configuration apply, a route change or
 * the key's eviction; writes nothing shared), the UDP flow filter it drops new
 * flows by (never an established one), drops counted per CPU and folded
 * by user space, first-seen records (a collision only charges more), and the
 * shared fallback bucket when a key cannot be stored.
 */
import { createHash } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { afterEach, describe, expect, it, onTestFinished } from 'vitest';
import { BpfMap, numPossibleCpus } from '@xdp-ts/loader';
import { readStats, readTop } from '../../src/control/queries.js';
import { ConnrateMetrics } from '../../src/control/metrics.js';
import { pinToOneCpu } from '../helpers/affinity.js';
import { frame } from '../helpers/frame.js';
import { APPLIANCE4, APPLIANCE6, BASE_CONFIG, type Bench, CLIENT4, CLIENT4B, FOREIGN4, openBench, syn, udp } from './harness.js';

const WORKER = new URL('../helpers/race-worker.mjs', import.meta.url);
let bench: Bench;
afterEach(() => bench?.close());

/** Burst, then one more: the key is over its limit and in this CPU's drop cache. */
function limit(src: string, port = 443): void {
  expect(bench.burst(BASE_CONFIG.burst + 1, (i) => syn(src, port, 40000 + i))).toEqual({ pass: BASE_CONFIG.burst, drop: 1 });
}

function cacheDrops(): bigint {
  return bench.dp.counters().cache_drop;
}

describe('the drop cache', () => {
  it('drops a key over its limit without the bucket, and lets its next token through on time', () => {
    bench = openBench();
    limit(CLIENT4);
    expect(bench.burst(50, (i) => syn(CLIENT4, 443, 41000 + i))).toEqual({ pass: 0, drop: 50 });
    expect(cacheDrops()).toBe(50n);
    bench.at(2.999); // one token every 3 s
    expect(bench.send(syn(CLIENT4, 443, 42000))).toBe('DROP');
    bench.at(3);
    expect(bench.send(syn(CLIENT4, 443, 42001))).toBe('PASS');
    expect(bench.send(syn(CLIENT4, 443, 42002))).toBe('DROP');
  });

  it('is void after a configuration apply (system update rule): a raised burst admits at once', () => {
    bench = openBench();
    limit(CLIENT4);
    bench.send(syn(CLIENT4, 443, 41000));
    expect(cacheDrops()).toBe(1n);
    bench.dp.applyConfig({ ...BASE_CONFIG, burst: BASE_CONFIG.burst + 2 });
    expect(bench.burst(3, (i) => syn(CLIENT4, 443, 42000 + i))).toEqual({ pass: 2, drop: 1 });
    expect(cacheDrops()).toBe(1n); // judged by the bucket after the apply
  });

  it('is void after a route change: a source now behind a non-default route is exempt at once', () => {
    bench = openBench();
    limit(CLIENT4);
    bench.send(syn(CLIENT4, 443, 41000));
    expect(cacheDrops()).toBe(1n);
    bench.dp.setRoutes(['198.19.1.0/24']);
    expect(bench.send(syn(CLIENT4, 443, 42000))).toBe('PASS');
    expect(bench.dp.counters().exempt).toBe(1n);
    bench.dp.setRoutes([]);
    expect(bench.send(syn(CLIENT4, 443, 42001))).toBe('DROP'); // limited again, its bucket kept
  });

  it('is void once its key is evicted: the key starts over as any evicted key does', () => {
    const CAPACITY = 2048;
    const unpin = pinToOneCpu(); // the LRU's order depends on the thread's CPU (tests/helpers/affinity.ts)
    onTestFinished(unpin);
    const evictAndTry = (evict: boolean): string => {
      bench = openBench({}, { buckets: CAPACITY });
      limit(CLIENT4);
      if (evict) {
        // sources that come back (three SYNs each) compete with it in the LRU
        for (let n = 0; n < 8 * CAPACITY; n++) {
          const s = syn(`198.18.${128 + ((n >> 8) & 0x7f)}.${n & 0xff}`, 443 + (n >> 15), 1000);
          for (let k = 0; k < 3; k++) bench.send({ ...s, sport: 1000 + k });
        }
      }
      bench.at(0.011); // past the tick its cache entry was made in, far before the next token
      const v = bench.send(syn(CLIENT4, 443, 43000));
      bench.close();
      return v;
    };
    expect(evictAndTry(false)).toBe('DROP');
    expect(evictAndTry(true)).toBe('PASS');
  });

  it('writes no shared map on a drop it decides: only per-CPU counters change', () => {
    bench = openBench();
    limit(CLIENT4);
    bench.send(syn(CLIENT4, 443, 41000)); // in the cache now
    const m = bench.dp.maps;
    const shared = [m.config, m.inForce, m.locals, m.localAddrs, m.srcPrefixes, m.buckets, m.firstSeen, m.fallback, m.udpFlows, m.portSlots, m.portSlotNext].map((t) => t.raw);
    const before = shared.map(digest);
    const hits = cacheDrops();
    expect(bench.burst(1000, (i) => syn(CLIENT4, 443, 42000 + i)).drop).toBe(1000);
    // The cache is per CPU: were the test thread moved to another CPU mid-burst, that
    // CPU's first packet is judged from the bucket (read only) and cached there.
    expect(cacheDrops() - hits).toBeGreaterThanOrEqual(1000n - BigInt(numPossibleCpus() - 1));
    expect(shared.map(digest)).toEqual(before);
  });
});

/** key_hash (connrate.bpf.c) of an IPv4 (source, destination port, protocol) key: its slot in a drop cache of `slots`. */
function dropCacheSlot(src: string, dport: number, proto: 'tcp' | 'udp', slots: number): number {
  const M = (1n << 64n) - 1n;
  const key = Buffer.alloc(20);
  key.writeUInt16BE(0xffff, 10);
  for (const [i, b] of src.split('.').entries()) key[12 + i] = Number(b);
  key.writeUInt16LE(dport, 16);
  key[18] = proto === 'tcp' ? 0 : 1;
  const w = (i: number): bigint => BigInt(key.readUInt32LE(4 * i));
  let h = (((w(0) << 32n) | w(1)) * 0x9e3779b97f4a7c15n) & M;
  h ^= (((w(2) << 32n) | w(3)) * 0xc2b2ae3d27d4eb4fn) & M;
  h ^= (w(4) * 0x165667b19e3779f9n) & M;
  h ^= h >> 33n;
  h = (h * 0xff51afd7ed558ccdn) & M;
  h ^= h >> 33n;
  return Number((h >> 20n) & BigInt(slots - 1));
}

describe("this CPU's last cached drop", () => {
  // The configuration-apply and route-change tests above void it too: their
  // key's last packet before the change was a cache drop.
  const lastDropSet = (): boolean => (bench.dp.maps.counters.lookup(0) ?? []).some((c) => c.lastDrop.meta !== 0);

  it("drops the key's next packets from its entry, and judges any other packet in full", () => {
    bench = openBench();
    limit(CLIENT4);
    expect(bench.send(syn(CLIENT4, 443, 41000))).toBe('DROP');
    expect(lastDropSet()).toBe(true);
    const hits = cacheDrops();
    expect(bench.burst(20, (i) => syn(CLIENT4, 443, 42000 + i))).toEqual({ pass: 0, drop: 20 });
    expect(cacheDrops() - hits).toBe(20n);
    expect(bench.send({ ...syn(CLIENT4, 443, 42000), ack: true, syn: false })).toBe('PASS'); // established
    expect(bench.send(syn(CLIENT4, 444, 42000))).toBe('PASS'); // another port: its own bucket
    expect(bench.send(syn(CLIENT4B, 443, 42000))).toBe('PASS'); // another source
    expect(bench.send(udp(CLIENT4, 443, 42000))).toBe('PASS'); // another protocol
    expect(bench.send({ ...syn(CLIENT4, 443, 42000), dst: FOREIGN4 })).toBe('PASS'); // not ours
    expect(bench.send(syn(CLIENT4, 443, 42001))).toBe('DROP');
    expect(readTop(bench.dp, 1)[0]).toMatchObject({ src: CLIENT4, dport: 443, drops: 1n + 1n + 20n + 1n });
  });

  it('is void after a local-address change, also after two: a destination no longer ours is not monitored', () => {
    bench = openBench();
    limit(CLIENT4);
    expect(bench.send(syn(CLIENT4, 443, 41000))).toBe('DROP');
    const unmonitored = bench.dp.counters().not_monitored;
    // Two switches bring the same locals slot back in force: the generation tells them apart.
    bench.dp.setLocalAddresses([APPLIANCE6]);
    bench.dp.setLocalAddresses([APPLIANCE6, '198.18.0.2']);
    expect(bench.send(syn(CLIENT4, 443, 42000))).toBe('PASS');
    expect(bench.dp.counters().not_monitored - unmonitored).toBe(1n);
    bench.dp.setLocalAddresses([APPLIANCE4, APPLIANCE6]);
    expect(bench.send(syn(CLIENT4, 443, 42001))).toBe('DROP'); // limited again, its bucket kept
  });

  it("is void once another key takes its entry's slot: each key's drops stay its own", () => {
    const unpin = pinToOneCpu(); // the drop cache is per CPU
    onTestFinished(unpin);
    bench = openBench();
    const slots = bench.dp.maps.dropCache.raw.maxEntries;
    const mine = dropCacheSlot(CLIENT4, 443, 'tcp', slots);
    let other = '';
    for (let n = 0; n < 1 << 16 && !other; n++) {
      const src = `198.19.${2 + (n >> 8)}.${n & 0xff}`;
      if (dropCacheSlot(src, 443, 'tcp', slots) === mine) other = src;
    }
    expect(other).not.toBe('');
    limit(CLIENT4);
    expect(bench.send(syn(CLIENT4, 443, 41000))).toBe('DROP');
    const held = (src: string): boolean =>
      bench.dp.maps.dropCache.lookup(mine)!.some((e) => e.drops > 0n && e.key.src.bytes.subarray(12).join('.') === src);
    expect(held(CLIENT4)).toBe(true); // the slot key_hash gives, as the test computes it
    limit(other); // its drop takes the slot
    expect(held(other)).toBe(true);
    expect(bench.send(syn(CLIENT4, 443, 41001))).toBe('DROP'); // from its bucket: it takes the slot back
    expect(held(CLIENT4)).toBe(true);
    const top = readTop(bench.dp, 2);
    expect(top.find((t) => t.src === CLIENT4)?.drops).toBe(3n);
    expect(top.find((t) => t.src === other)?.drops).toBe(1n);
  });
});

/** SHA-256 of every (key, value) of a map; '' for a ring buffer (no entries: its position is checked by the events test). */
function digest(m: BpfMap): string {
  const h = createHash('sha256');
  for (const key of m.keys()) {
    h.update(key);
    h.update(m.lookup(key) ?? Buffer.alloc(0));
  }
  return h.digest('hex');
}

describe('drops per CPU', () => {
  it('fold into top and stats exactly, also when keys share drop-cache slots', () => {
    bench = openBench({}, { buckets: 16384 });
    const SOURCES = 6000; // more than the 4096 slots: keys take each other's slots and flush
    const src = (n: number): string => `198.18.${128 + (n >> 8)}.${n & 0xff}`;
    for (let n = 0; n < SOURCES; n++) bench.burst(BASE_CONFIG.burst, (i) => syn(src(n), 443, 40000 + i));
    for (let round = 0; round < 3; round++) {
      for (let n = 0; n < SOURCES; n++) expect(bench.send(syn(src(n), 443, 41000 + round))).toBe('DROP');
    }
    const top = readTop(bench.dp, 2 * SOURCES);
    expect(top).toHaveLength(SOURCES);
    expect(top.every((t) => t.drops === 3n && t.tokens === 0)).toBe(true);
    const stats = readStats(bench.dp);
    expect(stats.counters.new_dropped).toBe(BigInt(3 * SOURCES));
    expect(stats.ports.find((p) => p.port === 443 && p.proto === 'tcp')?.dropped).toBe(BigInt(3 * SOURCES));
  });

  it('fold exactly when two CPUs drop one key at once', async () => {
    bench = openBench({ tcp: { rate: 1, ports: [] } });
    const data = frame(syn(CLIENT4, 443));
    const REPEAT = 20_000;
    const barrier = new Int32Array(new SharedArrayBuffer(4));
    const progId = bench.dp.program.info().id;
    await Promise.all(
      [0, 1].map(
        () =>
          new Promise<void>((resolve, reject) => {
            const w = new Worker(WORKER, { workerData: { progId, rounds: [[new Uint8Array(data)]], repeat: REPEAT, barrier } });
            w.once('message', () => resolve());
            w.once('error', reject);
          }),
      ),
    );
    const dropped = BigInt(2 * REPEAT - BASE_CONFIG.burst);
    const [top] = readTop(bench.dp, 1);
    expect(top).toMatchObject({ src: CLIENT4, dport: 443, proto: 'tcp', drops: dropped });
    expect(bench.dp.counters()).toMatchObject({ new_allowed: BigInt(BASE_CONFIG.burst), new_dropped: dropped });
    const perCpu = bench.dp.portStatsPerCpu({ proto: 'tcp', port: 443 });
    expect(perCpu.reduce((a, s) => a + s.dropped, 0n)).toBe(dropped);
    console.log(`drops per CPU: ${perCpu.map((s) => s.dropped).join(' + ')}`);
  }, 60_000);
});

/** New UDP flows from `src` until one is dropped: the key is over its limit and in this CPU's drop cache. */
function limitUdp(src: string, from: number): void {
  for (let sport = from; sport < from + 2 * BASE_CONFIG.burst + 2; sport++) {
    if (bench.send(udp(src, 1194, sport)) === 'DROP') return;
  }
  throw new Error(`${src} was never limited`);
}

function filterDrops(): bigint {
  return bench.dp.counters().flow_filter_drop;
}

describe('the UDP flow filter', () => {
  it('drops new flows of a limited key without the flow table, and every established flow still passes', () => {
    bench = openBench();
    expect(bench.send(udp(CLIENT4, 1194, 50000))).toBe('PASS');
    expect(bench.send(udp(CLIENT4, 1194, 50001))).toBe('PASS');
    limitUdp(CLIENT4, 40000); // three more flows admitted, then a drop
    const cached = cacheDrops();
    expect(bench.burst(400, (i) => udp(CLIENT4, 1194, 41000 + i))).toEqual({ pass: 0, drop: 400 });
    expect(cacheDrops() - cached).toBe(400n);
    // Five flows of the key hold two bits of 384 each: a new flow nearly always finds one of its bits clear.
    expect(filterDrops()).toBeGreaterThanOrEqual(360n);
    for (const sport of [50000, 50001, 40000, 40001, 40002]) {
      expect(bench.burst(10, () => udp(CLIENT4, 1194, sport))).toEqual({ pass: 10, drop: 0 });
    }
    // Another key's flows are its own: a source nobody limited is admitted.
    expect(bench.send(udp(CLIENT4B, 1194, 41000))).toBe('PASS');
  });

  it('still decides nearly every new flow of a limited key that has about thirty established ones', () => {
    bench = openBench({ udp: { rate: 600, ports: [] } }); // a token every 0.1 s
    const established: number[] = [];
    for (let i = 0; i < 24; i++) {
      bench.at(i / 10);
      expect(bench.send(udp(CLIENT4, 1194, 50000 + i))).toBe('PASS');
      established.push(50000 + i);
    }
    for (let sport = 40000; bench.send(udp(CLIENT4, 1194, sport)) === 'PASS'; sport++) established.push(sport);
    expect(established.length).toBeGreaterThanOrEqual(24 + BASE_CONFIG.burst - 1);
    const before = filterDrops();
    expect(bench.burst(2000, (i) => udp(CLIENT4, 1194, 20000 + i))).toEqual({ pass: 0, drop: 2000 });
    // A flow sets two bits of its word's 48: with about four flows a word, a
    // new flow finds both of its bits set about one time in fifty (one bit
    // would be set one time in thirteen).
    expect(filterDrops() - before).toBeGreaterThanOrEqual(1920n);
    for (const sport of established) expect(bench.send(udp(CLIENT4, 1194, sport))).toBe('PASS');
  });

  it('keeps a busy flow across epochs and forgets an idle one, while its key stays limited', () => {
    bench = openBench({ udpTimeoutSec: 30 }); // epochs of 2^35 ns (34.4 s): four boundaries pass
    expect(bench.send(udp(CLIENT4, 1194, 50000))).toBe('PASS'); // busy
    expect(bench.send(udp(CLIENT4, 1194, 50001))).toBe('PASS'); // idle from now on
    let sport = 20000;
    for (let t = 10; t <= 150; t += 10) {
      bench.at(t);
      limitUdp(CLIENT4, sport);
      sport += 20;
      const before = filterDrops();
      expect(bench.burst(20, (i) => udp(CLIENT4, 1194, sport + i)).drop).toBe(20);
      expect(filterDrops() - before).toBeGreaterThan(0n);
      sport += 20;
      expect(bench.send(udp(CLIENT4, 1194, 50000))).toBe('PASS');
      if (t >= 30) expect(bench.send(udp(CLIENT4, 1194, 50001))).toBe('DROP'); // idle 30 s or more: new
    }
  });

  it('never drops an established flow when the UDP timeout, and so the epoch, changes', () => {
    bench = openBench({ udpTimeoutSec: 30 });
    expect(bench.send(udp(CLIENT4, 1194, 50000))).toBe('PASS');
    bench.dp.applyConfig({ ...BASE_CONFIG, udpTimeoutSec: 100 }); // epochs of 2^37 ns
    bench.at(50);
    limitUdp(CLIENT4, 40000);
    expect(bench.burst(50, (i) => udp(CLIENT4, 1194, 41000 + i)).drop).toBe(50);
    expect(bench.send(udp(CLIENT4, 1194, 50000))).toBe('PASS'); // idle 50 s of 100
    bench.dp.applyConfig({ ...BASE_CONFIG, udpTimeoutSec: 10 }); // epochs of 2^34 ns
    bench.at(55);
    limitUdp(CLIENT4, 42000);
    expect(bench.send(udp(CLIENT4, 1194, 50000))).toBe('PASS'); // idle 5 s of 10
    bench.at(70);
    limitUdp(CLIENT4, 43000);
    expect(bench.send(udp(CLIENT4, 1194, 50000))).toBe('DROP'); // idle 15 s of 10: new, over the limit
  });

  it('passes a flow opened while its source was exempt, after the exemption ends', () => {
    bench = openBench();
    bench.dp.setRoutes(['198.19.1.0/24']);
    expect(bench.send(udp(CLIENT4, 1194, 50000))).toBe('PASS');
    expect(bench.dp.counters().exempt).toBe(1n);
    bench.dp.setRoutes([]);
    limitUdp(CLIENT4, 40000);
    expect(bench.burst(50, (i) => udp(CLIENT4, 1194, 41000 + i)).drop).toBe(50);
    expect(bench.burst(10, () => udp(CLIENT4, 1194, 50000))).toEqual({ pass: 10, drop: 0 });
  });

  it('writes no shared map on a drop it decides', () => {
    bench = openBench();
    limitUdp(CLIENT4, 40000);
    bench.send(udp(CLIENT4, 1194, 41000)); // in the cache now
    const m = bench.dp.maps;
    const shared = [m.config, m.buckets, m.firstSeen, m.fallback, m.udpFlows, m.flowFilter, m.portSlots, m.portSlotNext].map((t) => t.raw);
    const before = shared.map(digest);
    const hits = filterDrops();
    expect(bench.burst(1000, (i) => udp(CLIENT4, 1194, 42000 + i)).drop).toBe(1000);
    expect(filterDrops() - hits).toBeGreaterThanOrEqual(900n);
    expect(shared.map(digest)).toEqual(before);
  });
});

describe('first-seen records', () => {
  it('admit a new key without storing a bucket, and store it on its second packet', () => {
    bench = openBench();
    expect(bench.send(syn(CLIENT4, 443))).toBe('PASS');
    expect(bench.dp.maps.buckets.count()).toBe(0);
    expect(bench.dp.counters().first_seen).toBe(1n);
    expect(bench.burst(5, (i) => syn(CLIENT4, 443, 40001 + i))).toEqual({ pass: 4, drop: 1 });
    expect(bench.dp.maps.buckets.count()).toBe(1);
  });

  it('give a key its token back after one token period: a one-packet source is new again', () => {
    bench = openBench({ burst: 1 });
    expect(bench.send(syn(CLIENT4, 443, 40000))).toBe('PASS');
    expect(bench.send(syn(CLIENT4, 443, 40001))).toBe('DROP');
    bench.at(2.999);
    expect(bench.send(syn(CLIENT4, 443, 40002))).toBe('DROP');
    bench.at(3);
    expect(bench.send(syn(CLIENT4, 443, 40003))).toBe('PASS');
    expect(bench.dp.counters().first_seen).toBe(2n);
  });

  it('only ever charge more on a collision: keys sharing a record share its token', () => {
    // every key in one group with one fingerprint: B's first packet finds A's record
    bench = openBench({}, {}, { testFirstSeenCollide: true });
    expect(bench.send(syn(CLIENT4, 443))).toBe('PASS'); // A: a first-seen record
    const b = bench.burst(10, (i) => syn(CLIENT4B, 443, 40000 + i));
    expect(b).toEqual({ pass: BASE_CONFIG.burst - 1, drop: 10 - (BASE_CONFIG.burst - 1) }); // charged A's token
    const a = bench.burst(10, (i) => syn(CLIENT4, 443, 41000 + i));
    expect(a.pass).toBe(BASE_CONFIG.burst - 1); // A: exactly its burst in all
    // UDP records live apart from TCP ones
    expect(bench.send(udp(CLIENT4, 1194))).toBe('PASS');
  });
});

describe('a key that cannot be stored', () => {
  it('is judged by its (protocol, port) fallback bucket: bounded, counted, and a metric', async () => {
    bench = openBench({}, {}, { testInsertFail: true });
    expect(bench.burst(20, (i) => syn(CLIENT4, 443, 40000 + i))).toEqual({ pass: BASE_CONFIG.burst, drop: 15 });
    // a second source on the port: its first-seen token, then the shared bucket, already empty
    expect(bench.burst(20, (i) => syn(CLIENT4B, 443, 40000 + i))).toEqual({ pass: 1, drop: 19 });
    // another port has its own fallback bucket
    expect(bench.burst(20, (i) => syn(CLIENT4B, 22, 40000 + i)).pass).toBe(BASE_CONFIG.burst);
    expect(bench.dp.maps.buckets.count()).toBe(0);
    const c = bench.dp.counters();
    expect(c.bucket_fallback).toBe(3n * 19n);
    expect(c.new_allowed).toBe(BigInt(2 * BASE_CONFIG.burst + 1));
    const text = await new ConnrateMetrics({ dp: bench.dp, attachments: () => [] }).scrape();
    expect(text).toMatch(/^connrate_bucket_fallback_total 57$/m);
  });
});
