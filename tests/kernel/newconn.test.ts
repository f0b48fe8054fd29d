/**
 * New versus established: only new connections take tokens.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { APPLIANCE4, type Bench, CLIENT4, openBench, syn, udp } from './harness.js';

let bench: Bench;
afterEach(() => bench?.close());

describe('TCP', () => {
  it('never limits segments with ACK set, even from a limited source', () => {
    bench = openBench();
    expect(bench.burst(10, (i) => syn(CLIENT4, 443, 40000 + i)).drop).toBe(5);
    const ack = { src: CLIENT4, dst: APPLIANCE4, proto: 'tcp' as const, sport: 40000, dport: 443, syn: false, ack: true };
    expect(bench.burst(100, () => ack)).toEqual({ pass: 100, drop: 0 });
    // SYN-ACK (a reply to a connection the appliance opened) is not a new connection either.
    expect(bench.send({ ...ack, syn: true })).toBe('PASS');
    // Nor is a segment with no SYN and no ACK (RST, FIN probes …).
    expect(bench.send({ ...ack, ack: false })).toBe('PASS');
    const c = bench.dp.counters();
    expect(c.established).toBe(102n);
    expect(c.new_allowed).toBe(5n);
    expect(c.new_dropped).toBe(5n);
  });
});

describe('UDP flows', () => {
  it('never limits a known flow: 100 datagrams after the limit is reached all pass', () => {
    bench = openBench();
    expect(bench.send(udp(CLIENT4, 1194, 50000))).toBe('PASS'); // the legitimate flow
    expect(bench.burst(10, (i) => udp(CLIENT4, 1194, 40000 + i)).drop).toBe(6);
    expect(bench.burst(100, () => udp(CLIENT4, 1194, 50000))).toEqual({ pass: 100, drop: 0 });
    expect(bench.dp.counters().established).toBe(100n);
  });

  it('does not create a flow for a dropped first datagram', () => {
    bench = openBench();
    expect(bench.burst(5, (i) => udp(CLIENT4, 1194, 40000 + i)).pass).toBe(5);
    expect(bench.send(udp(CLIENT4, 1194, 50000))).toBe('DROP');
    // The retry is still a new flow, so still over the limit …
    expect(bench.send(udp(CLIENT4, 1194, 50000))).toBe('DROP');
    // … until a token comes back; then it is admitted and becomes established.
    bench.at(3);
    expect(bench.send(udp(CLIENT4, 1194, 50000))).toBe('PASS');
    expect(bench.burst(20, () => udp(CLIENT4, 1194, 50000)).drop).toBe(0);
  });

  it('forgets a flow idle for the UDP timeout, and keeps one that stays busy', () => {
    bench = openBench({ udpTimeoutSec: 30 });
    bench.send(udp(CLIENT4, 1194, 50000)); // flow A
    bench.send(udp(CLIENT4, 1194, 50001)); // flow B
    for (let t = 10; t <= 90; t += 10) {
      bench.at(t);
      bench.send(udp(CLIENT4, 1194, 50000)); // A stays busy
    }
    const before = bench.dp.counters();
    bench.at(95);
    bench.send(udp(CLIENT4, 1194, 50000)); // A: established
    bench.send(udp(CLIENT4, 1194, 50001)); // B: idle 95 s → new again
    const after = bench.dp.counters();
    expect(after.established - before.established).toBe(1n);
    expect(after.new_allowed - before.new_allowed).toBe(1n);
  });

  it('counts a flow idle just under the timeout as established', () => {
    bench = openBench({ udpTimeoutSec: 30 });
    bench.send(udp(CLIENT4, 1194, 50000));
    bench.at(29.9);
    bench.send(udp(CLIENT4, 1194, 50000));
    bench.at(60);
    bench.send(udp(CLIENT4, 1194, 50000));
    const c = bench.dp.counters();
    expect(c.established).toBe(1n);
    expect(c.new_allowed).toBe(2n);
  });

  it('tells flows apart by the whole 4-tuple', () => {
    bench = openBench();
    bench.send(udp(CLIENT4, 1194, 50000));
    bench.send(udp(CLIENT4, 1195, 50000)); // other dport: another flow, another bucket
    bench.send(udp(CLIENT4, 1194, 50001)); // other sport: another flow
    expect(bench.dp.counters().new_allowed).toBe(3n);
  });
});
