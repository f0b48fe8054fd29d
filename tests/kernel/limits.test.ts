/**
 * The bucket: burst 5, then one every 60/R s, per
 * (source, destination port, protocol).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { type Bench, CLIENT4, CLIENT4B, CLIENT6, openBench, syn, udp } from './harness.js';

let bench: Bench;
afterEach(() => bench?.close());

describe('GCRA bucket', () => {
  it('admits 5 at once, then one every 60/R s (R = 20: every 3 s)', () => {
    bench = openBench();
    // Each attempt comes from a new source port: a new connection each time.
    expect(bench.burst(6, (i) => syn(CLIENT4, 443, 40000 + i))).toEqual({ pass: 5, drop: 1 });
    bench.at(2.9);
    expect(bench.send(syn(CLIENT4, 443, 41000))).toBe('DROP');
    bench.at(3);
    expect(bench.burst(2, (i) => syn(CLIENT4, 443, 41100 + i))).toEqual({ pass: 1, drop: 1 });
    bench.at(6);
    expect(bench.burst(2, (i) => syn(CLIENT4, 443, 41200 + i))).toEqual({ pass: 1, drop: 1 });
  });

  it('lets 3 more through 10 s after the first (the documented example)', () => {
    bench = openBench();
    expect(bench.burst(5, (i) => syn(CLIENT4, 11115, 40000 + i)).pass).toBe(5);
    bench.at(10);
    expect(bench.burst(10, (i) => syn(CLIENT4, 11115, 42000 + i))).toEqual({ pass: 3, drop: 7 });
  });

  it('spreads the rate evenly: one per T whatever the pace of attempts', () => {
    bench = openBench({ tcp: { rate: 60, ports: [] } }); // T = 1 s
    expect(bench.burst(5, (i) => syn(CLIENT4, 22, 40000 + i)).pass).toBe(5);
    let passed = 0;
    for (let t = 1; t <= 60; t += 0.25) {
      bench.at(t);
      if (bench.send(syn(CLIENT4, 22, 43000 + t * 4)) === 'PASS') passed++;
    }
    expect(passed).toBe(60); // one per second over 60 s
  });

  it('never holds more than the burst, however long the source is idle', () => {
    bench = openBench();
    bench.burst(5, (i) => syn(CLIENT4, 443, 40000 + i));
    bench.at(3600);
    expect(bench.burst(8, (i) => syn(CLIENT4, 443, 44000 + i))).toEqual({ pass: 5, drop: 3 });
  });

  it('honours another burst size', () => {
    bench = openBench({ burst: 2 });
    expect(bench.burst(4, (i) => syn(CLIENT4, 443, 40000 + i))).toEqual({ pass: 2, drop: 2 });
  });

  it('limits at R = 1 per minute and R = 6000 per minute', () => {
    bench = openBench({ tcp: { rate: 1, ports: [] }, udp: { rate: 6000, ports: [] } });
    bench.burst(5, (i) => syn(CLIENT4, 443, 40000 + i));
    bench.at(59.9);
    expect(bench.send(syn(CLIENT4, 443, 45000))).toBe('DROP');
    bench.at(60);
    expect(bench.send(syn(CLIENT4, 443, 45001))).toBe('PASS');
    // UDP at 6000/min: T = 10 ms
    bench.at(100);
    expect(bench.burst(6, (i) => udp(CLIENT4, 53, 46000 + i))).toEqual({ pass: 5, drop: 1 });
    bench.at(100.01);
    expect(bench.send(udp(CLIENT4, 53, 46100))).toBe('PASS');
  });
});

describe('isolation', () => {
  it('blocking one (source, port) leaves that source free on other ports', () => {
    bench = openBench();
    expect(bench.burst(8, (i) => syn(CLIENT4, 443, 40000 + i)).drop).toBe(3);
    expect(bench.burst(5, (i) => syn(CLIENT4, 11115, 40000 + i))).toEqual({ pass: 5, drop: 0 });
    expect(bench.send(syn(CLIENT4, 443, 40100))).toBe('DROP');
  });

  it('blocking one source leaves other sources free on the same port', () => {
    bench = openBench();
    bench.burst(8, (i) => syn(CLIENT4, 443, 40000 + i));
    expect(bench.burst(5, (i) => syn(CLIENT4B, 443, 40000 + i))).toEqual({ pass: 5, drop: 0 });
    expect(bench.burst(5, (i) => syn(CLIENT6, 443, 40000 + i))).toEqual({ pass: 5, drop: 0 });
  });

  it('keeps TCP and UDP buckets apart on the same port number', () => {
    bench = openBench();
    expect(bench.burst(7, (i) => syn(CLIENT4, 1194, 40000 + i)).drop).toBe(2);
    expect(bench.burst(5, (i) => udp(CLIENT4, 1194, 40000 + i))).toEqual({ pass: 5, drop: 0 });
  });
});

describe('ports and on/off', () => {
  it('limits only the listed ports when a list is given', () => {
    bench = openBench({ tcp: { rate: 20, ports: [443, 11115] }, udp: { rate: 20, ports: [1194, 1195] } });
    expect(bench.burst(8, (i) => syn(CLIENT4, 443, 40000 + i)).drop).toBe(3);
    expect(bench.burst(8, (i) => syn(CLIENT4, 11115, 40000 + i)).drop).toBe(3);
    expect(bench.burst(20, (i) => syn(CLIENT4, 80, 40000 + i)).drop).toBe(0);
    expect(bench.burst(8, (i) => udp(CLIENT4, 1195, 40000 + i)).drop).toBe(3);
    expect(bench.burst(20, (i) => udp(CLIENT4, 53, 40000 + i)).drop).toBe(0);
    expect(bench.dp.counters().not_monitored).toBe(40n);
  });

  it('limits every port when the list is empty, ports 1 and 65535 included', () => {
    bench = openBench();
    for (const port of [1, 80, 65535]) {
      expect(bench.burst(6, (i) => udp(CLIENT4, port, 40000 + i)).drop).toBe(1);
    }
  });

  it('treats rate 0 as off for that protocol only', () => {
    bench = openBench({ tcp: { rate: 0, ports: [] } });
    expect(bench.burst(50, (i) => syn(CLIENT4, 443, 40000 + i)).drop).toBe(0);
    expect(bench.burst(6, (i) => udp(CLIENT4, 443, 40000 + i)).drop).toBe(1);
  });
});
