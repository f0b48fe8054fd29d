/**
 * Configuration in the datapath: live changes apply to the next
 * packet and keep bucket state; log mode passes and counts; every counter.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { CrConfig } from '../../src/control/datapath.gen.js';
import { ETH_HLEN, ETH_P_IP, rawEthernet } from '../helpers/frame.js';
import { BASE_CONFIG, type Bench, CLIENT4, openBench, syn, udp } from './harness.js';

let bench: Bench;
afterEach(() => bench?.close());

describe('live configuration', () => {
  it('applies a new rate to the next packet and keeps the buckets’ state', () => {
    bench = openBench(); // 20/min: T = 3 s
    expect(bench.burst(6, (i) => syn(CLIENT4, 443, 40000 + i)).drop).toBe(1);
    bench.dp.applyConfig({ ...BASE_CONFIG, tcp: { rate: 60, ports: [] } }); // T = 1 s
    // the bucket was not reset: still empty right now
    expect(bench.send(syn(CLIENT4, 443, 41000))).toBe('DROP');
    bench.at(1); // under the old rate this would still be refused
    expect(bench.send(syn(CLIENT4, 443, 41001))).toBe('PASS');
  });

  it('keeps a limited source limited when the rate is lowered (no tokens handed out)', () => {
    bench = openBench(); // 20/min
    expect(bench.burst(6, (i) => syn(CLIENT4, 443, 40000 + i)).drop).toBe(1);
    bench.at(2);
    bench.dp.applyConfig({ ...BASE_CONFIG, tcp: { rate: 10, ports: [] } }); // T = 6 s from now on
    expect(bench.send(syn(CLIENT4, 443, 41000))).toBe('DROP');
    // 2 s of a token earned at 20/min (2/3 token) + 2 s at 10/min (1/3 token) = 1 token at t = 4 s
    bench.at(3.9);
    expect(bench.send(syn(CLIENT4, 443, 41001))).toBe('DROP');
    bench.at(4);
    expect(bench.send(syn(CLIENT4, 443, 41002))).toBe('PASS');
  });

  it('turns a protocol off and on again without forgetting the buckets', () => {
    bench = openBench();
    bench.burst(5, (i) => udp(CLIENT4, 1194, 40000 + i));
    bench.dp.applyConfig({ ...BASE_CONFIG, udp: { rate: 0, ports: [] } });
    expect(bench.burst(20, (i) => udp(CLIENT4, 1194, 41000 + i)).drop).toBe(0);
    bench.dp.applyConfig(BASE_CONFIG);
    expect(bench.send(udp(CLIENT4, 1194, 42000))).toBe('DROP');
  });

  it('reports the configuration in force, and counts generations', () => {
    bench = openBench();
    const cfg = { ...BASE_CONFIG, tcp: { rate: 30, ports: [443, 11115, 1, 65535] }, mode: 'log' as const, ipv6Prefix: 56 };
    const first = bench.dp.appliedConfig()!;
    bench.dp.applyConfig(cfg);
    const applied = bench.dp.appliedConfig()!;
    expect(applied.generation).toBe(first.generation + 1n);
    expect(applied).toMatchObject({ tcp: { rate: 30, ports: [1, 443, 11115, 65535] }, udp: BASE_CONFIG.udp, mode: 'log', ipv6Prefix: 56, burst: 5, udpTimeoutSec: 30 });
  });

  it('gives the UDP flow filter epochs that cover the timeout, and are less than twice it', () => {
    bench = openBench();
    for (const udpTimeoutSec of [1, 30, 31, 86_400]) {
      bench.dp.applyConfig({ ...BASE_CONFIG, udpTimeoutSec });
      const slot = bench.dp.maps.inForce.lookup(0)!.configSlot & 1;
      const shift = BigInt(bench.dp.maps.config.lookup(slot)!.flowEpochShift);
      const timeoutNs = BigInt(udpTimeoutSec) * 1_000_000_000n;
      expect(1n << shift).toBeGreaterThanOrEqual(timeoutNs);
      expect(1n << (shift - 1n)).toBeLessThan(timeoutNs);
    }
  });

  it('passes everything before any configuration is applied', () => {
    bench = openBench();
    for (const slot of [0, 1]) bench.dp.maps.config.update(slot, CrConfig.zero());
    expect(bench.burst(10, (i) => syn(CLIENT4, 443, 40000 + i)).drop).toBe(0);
    expect(bench.dp.counters().no_config).toBe(10n);
  });
});

describe('log mode', () => {
  it('passes what it would drop and counts it as would-drop', () => {
    bench = openBench({ mode: 'log' });
    expect(bench.burst(8, (i) => udp(CLIENT4, 1194, 40000 + i))).toEqual({ pass: 8, drop: 0 });
    const c = bench.dp.counters();
    expect(c.new_allowed).toBe(5n);
    expect(c.new_would_drop).toBe(3n);
    expect(c.new_dropped).toBe(0n);
    expect(bench.dp.portStats()).toEqual([{ proto: 'udp', port: 1194, allowed: 5n, dropped: 0n, wouldDrop: 3n }]);
    // a would-drop datagram was let through, so its flow exists now
    expect(bench.send(udp(CLIENT4, 1194, 40007))).toBe('PASS');
    expect(bench.dp.counters().established).toBe(1n);
  });
});

describe('counters', () => {
  it('add up to exactly the traffic sent', () => {
    bench = openBench({ tcp: { rate: 20, ports: [443] } });
    bench.burst(7, (i) => syn(CLIENT4, 443, 40000 + i)); // 5 allowed, 2 dropped
    bench.burst(3, () => ({ ...syn(CLIENT4, 443, 40000), syn: false, ack: true })); // established
    bench.burst(4, (i) => syn(CLIENT4, 80, 40000 + i)); // port not listed
    bench.burst(2, (i) => udp(CLIENT4, 53, 40000 + i)); // 2 allowed
    bench.sendRaw(rawEthernet(ETH_P_IP).subarray(0, ETH_HLEN)); // IPv4 ethertype, no IP header: unparsable
    expect(bench.dp.counters()).toMatchObject({
      seen: 17n,
      monitored: 12n,
      established: 3n,
      exempt: 0n,
      not_monitored: 4n,
      unparsable: 1n,
      new_allowed: 7n,
      new_dropped: 2n,
      new_would_drop: 0n,
    });
    expect(bench.dp.portStats()).toEqual([
      { proto: 'tcp', port: 443, allowed: 5n, dropped: 2n, wouldDrop: 0n },
      { proto: 'udp', port: 53, allowed: 2n, dropped: 0n, wouldDrop: 0n },
    ]);
  });
});
