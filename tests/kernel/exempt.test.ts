/**
 * What is never limited: traffic to other addresses, and
 * sources behind non-default routes or on the admin exempt list.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { APPLIANCE4, BASE_CONFIG, type Bench, CLIENT4, CLIENT6, FOREIGN4, openBench, syn, udp } from './harness.js';

let bench: Bench;
afterEach(() => bench?.close());

describe('destinations', () => {
  it('passes traffic to addresses that are not the appliance’s (forwarded traffic)', () => {
    bench = openBench();
    expect(bench.burst(50, (i) => ({ ...syn(CLIENT4, 443, 40000 + i), dst: FOREIGN4 })).drop).toBe(0);
    expect(bench.dp.counters().not_monitored).toBe(50n);
  });

  it('follows the local address list', () => {
    bench = openBench();
    bench.dp.setLocalAddresses([FOREIGN4]);
    expect(bench.burst(10, (i) => syn(CLIENT4, 443, 40000 + i)).drop).toBe(0); // APPLIANCE4 no longer local
    expect(bench.burst(10, (i) => ({ ...syn(CLIENT4, 443, 41000 + i), dst: FOREIGN4 })).drop).toBe(5);
  });
});

describe('sources', () => {
  it('exempts sources inside a non-default route', () => {
    bench = openBench();
    bench.dp.setRoutes(['198.19.1.0/24', '2001:db8:1::/48']);
    expect(bench.burst(30, (i) => syn(CLIENT4, 443, 40000 + i)).drop).toBe(0);
    expect(bench.burst(30, (i) => syn(CLIENT6, 443, 40000 + i)).drop).toBe(0);
    expect(bench.burst(8, (i) => syn('198.19.2.10', 443, 40000 + i)).drop).toBe(3); // outside the route
    expect(bench.dp.counters().exempt).toBe(60n);
    expect(bench.dp.routes().sort()).toEqual(['198.19.1.0/24', '2001:db8:1::/48']);
  });

  it('limits a source again once its route is withdrawn', () => {
    bench = openBench();
    bench.dp.setRoutes(['198.19.0.0/16']);
    expect(bench.burst(10, (i) => syn(CLIENT4, 443, 40000 + i)).drop).toBe(0);
    bench.dp.setRoutes([]);
    expect(bench.burst(10, (i) => syn(CLIENT4, 443, 41000 + i)).drop).toBe(5);
  });

  it('exempts the admin list, IPv4 and IPv6, and swaps it atomically with the config', () => {
    bench = openBench({ exempt: ['198.19.1.10/32', '2001:db8:1::/48'] });
    expect(bench.burst(20, (i) => udp(CLIENT4, 1194, 40000 + i)).drop).toBe(0);
    expect(bench.burst(20, (i) => udp(CLIENT6, 1194, 40000 + i)).drop).toBe(0);
    expect(bench.dp.appliedConfig()?.exempt.sort()).toEqual(['198.19.1.10/32', '2001:db8:1::/48']);
    bench.dp.applyConfig({ ...BASE_CONFIG, exempt: ['2001:db8:1::/48'] });
    expect(bench.burst(8, (i) => udp(CLIENT4, 1194, 41000 + i)).drop).toBe(3);
    expect(bench.burst(20, (i) => udp(CLIENT6, 1194, 41000 + i)).drop).toBe(0);
    expect(bench.dp.appliedConfig()?.exempt).toEqual(['2001:db8:1::/48']);
  });

  it('counts exempt new connections as exempt, and their later packets as established', () => {
    bench = openBench({ exempt: ['198.19.0.0/16'] });
    const ack = { ...syn(CLIENT4, 443), dst: APPLIANCE4, syn: false, ack: true };
    expect(bench.burst(10, () => ack).drop).toBe(0);
    expect(bench.burst(10, (i) => udp(CLIENT4, 53, 40000 + (i % 2))).drop).toBe(0); // two flows
    const c = bench.dp.counters();
    expect(c.exempt).toBe(2n);
    expect(c.established).toBe(18n);
    expect(c.monitored).toBe(20n);
  });
});
