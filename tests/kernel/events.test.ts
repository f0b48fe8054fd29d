/**
 * Block-log events: a ring-buffer record when a key starts being
 * limited, at most one per key per minute; a full ring loses events, counted,
 * and never blocks the datapath. And `top` from the bucket map.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { RingBufferReader } from '@xdp-ts/loader';
import { type RateLimitEvent, decodeEvent } from '../../src/control/abi.js';
import { readTop } from '../../src/control/queries.js';
import { waitFor } from '../helpers/testbed.js';
import { type Bench, CLIENT4, CLIENT4B, CLIENT6, openBench, syn, udp } from './harness.js';

let bench: Bench;
let reader: RingBufferReader | undefined;
afterEach(async () => {
  await reader?.close();
  reader = undefined;
  bench?.close();
});

function collect(b: Bench): RateLimitEvent[] {
  const events: RateLimitEvent[] = [];
  reader = new RingBufferReader(b.dp.maps.events, (records) => {
    for (const r of records) events.push(decodeEvent(r));
  });
  return events;
}

describe('events', () => {
  it('fire once when a key starts being limited, then at most once a minute', async () => {
    bench = openBench();
    const events = collect(bench);
    bench.burst(20, (i) => udp(CLIENT4, 1194, 40000 + i)); // 5 allowed, 15 dropped: one event
    bench.at(30);
    bench.burst(10, (i) => udp(CLIENT4, 1194, 41000 + i)); // still within the minute: none
    bench.at(61);
    bench.burst(10, (i) => udp(CLIENT4, 1194, 42000 + i)); // a minute after the first: one more
    await waitFor(() => events.length >= 2, 2000, 'two events');
    await new Promise((r) => setTimeout(r, 100));
    expect(events).toHaveLength(2);
    expect(events[0]).toMatchObject({ src: CLIENT4, dport: 1194, proto: 'udp', wouldDrop: false, rate: 20, burst: 5, drops: 1n });
    expect(events[1]!.tsNs - events[0]!.tsNs).toBe(61_000_000_000n);
    expect(bench.dp.counters().events_lost).toBe(0n);
  });

  it('fire per key, with the bucket’s source (an IPv6 /64), and say would-drop in log mode', async () => {
    bench = openBench({ mode: 'log' });
    const events = collect(bench);
    bench.burst(7, (i) => syn(CLIENT4, 443, 40000 + i));
    bench.burst(7, (i) => syn(CLIENT4, 22, 40000 + i));
    bench.burst(7, (i) => syn(CLIENT4B, 443, 40000 + i));
    bench.burst(7, (i) => syn(CLIENT6, 443, 40000 + i));
    await waitFor(() => events.length >= 4, 2000, 'four events');
    expect(events.map((e) => `${e.src} ${e.dport}/${e.proto} ${e.wouldDrop}`).sort()).toEqual([
      `${CLIENT4} 22/tcp true`,
      `${CLIENT4} 443/tcp true`,
      `${CLIENT4B} 443/tcp true`,
      '2001:db8:1:2:: 443/tcp true',
    ]);
  });

  it('are lost, and counted, when nobody drains a full ring — the datapath goes on', () => {
    bench = openBench({}, { eventRing: 4096 }); // one page: a few dozen records
    const keys = 500;
    for (let k = 0; k < keys; k++) {
      const src = `198.19.${k >> 8}.${k & 0xff}`;
      bench.burst(6, (i) => syn(src, 443, 40000 + i)); // each key: 5 allowed, 1 dropped, 1 event
    }
    const c = bench.dp.counters();
    expect(c.new_dropped).toBe(BigInt(keys));
    expect(c.events_lost).toBeGreaterThan(0n);
    expect(c.events_lost).toBeLessThan(BigInt(keys));
  });
});

describe('top', () => {
  it('orders keys by drops and reports tokens left on the token clock', () => {
    bench = openBench();
    bench.burst(5 + 9, (i) => syn(CLIENT4, 443, 40000 + i)); // 9 drops
    bench.burst(5 + 2, (i) => udp(CLIENT4B, 1194, 40000 + i)); // 2 drops
    bench.burst(5 + 4, (i) => syn(CLIENT6, 22, 40000 + i)); // 4 drops
    bench.burst(3, (i) => syn('198.19.9.9', 443, 40000 + i)); // no drops: not listed
    bench.at(7); // 7 s at 20/min: 2 tokens back (one every 3 s)
    const top = readTop(bench.dp, 10);
    expect(top.map((t) => [t.src, t.dport, t.proto, t.drops])).toEqual([
      [CLIENT4, 443, 'tcp', 9n],
      ['2001:db8:1:2::', 22, 'tcp', 4n],
      [CLIENT4B, 1194, 'udp', 2n],
    ]);
    expect(top.map((t) => t.tokens)).toEqual([2, 2, 2]);
    expect(top[0]!.lastDropAgoSec).toBeCloseTo(7, 5);
    expect(readTop(bench.dp, 1)).toHaveLength(1);
  });
});
