/**
 * Parsing: VLANs, IPv4 options and fragments, IPv6 extension
 * headers and /64 keying, and frames that are truncated or malformed — which
 * always pass and are counted.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, IPPROTO_ICMP, frame, rawEthernet } from '../helpers/frame.js';
import { APPLIANCE4, APPLIANCE6, type Bench, CLIENT4, openBench, syn, udp } from './harness.js';

let bench: Bench;
afterEach(() => bench?.close());

describe('IPv6 sources', () => {
  it('share one bucket per /64 by default', () => {
    bench = openBench();
    const a = (i: number) => syn(`2001:db8:1:2::${(i + 1).toString(16)}`, 443, 40000 + i);
    expect(bench.burst(8, a)).toEqual({ pass: 5, drop: 3 }); // 8 addresses, one /64
    expect(bench.burst(5, (i) => syn(`2001:db8:1:3::${i + 1}`, 443, 40000 + i)).drop).toBe(0); // next /64
  });

  it('key by the configured prefix length', () => {
    bench = openBench({ ipv6Prefix: 128 });
    expect(bench.burst(8, (i) => syn(`2001:db8:1:2::${i + 1}`, 443, 40000)).drop).toBe(0);
    bench.dp.applyConfig({ ...bench.dp.appliedConfig()!, ipv6Prefix: 48, exempt: [] });
    expect(bench.burst(8, (i) => syn(`2001:db8:1:${i + 10}::1`, 443, 41000 + i)).drop).toBe(3);
  });

  it('walk extension headers to the transport header', () => {
    bench = openBench();
    const s = { ...syn('2001:db8:5::1', 443), ext: ['hop', 'dst', 'routing'] as ('hop' | 'dst' | 'routing')[] };
    expect(bench.burst(7, (i) => ({ ...s, sport: 40000 + i }))).toEqual({ pass: 5, drop: 2 });
    // a first fragment (offset 0) carries the header and is judged too
    expect(bench.send({ ...s, sport: 41000, ext: ['frag'] })).toBe('DROP');
  });

  it('do not monitor chains longer than the walk, nor non-first fragments', () => {
    bench = openBench();
    const long = { ...syn('2001:db8:5::1', 443), ext: Array(7).fill('dst') as 'dst'[] };
    expect(bench.burst(20, (i) => ({ ...long, sport: 40000 + i })).drop).toBe(0);
    const frag = { ...udp('2001:db8:5::1', 53), ext: ['frag'] as 'frag'[], ext6FragOffset: 100 };
    expect(bench.burst(20, () => frag).drop).toBe(0);
    const c = bench.dp.counters();
    expect(c.ipv6_ext_limit).toBe(20n);
    expect(c.fragment).toBe(20n);
    expect(c.not_monitored).toBe(40n);
    expect(c.monitored).toBe(0n);
  });
});

describe('IPv4', () => {
  it('reads the transport header past IP options', () => {
    bench = openBench();
    expect(bench.burst(7, (i) => ({ ...syn(CLIENT4, 443, 40000 + i), ipOptions: 40 }))).toEqual({ pass: 5, drop: 2 });
  });

  it('judges first fragments and passes later ones unmonitored', () => {
    bench = openBench();
    expect(bench.burst(7, (i) => ({ ...udp(CLIENT4, 1194, 40000 + i), moreFragments: true }))).toEqual({ pass: 5, drop: 2 });
    expect(bench.burst(20, () => ({ ...udp(CLIENT4, 1194, 49000), fragOffset: 185 })).drop).toBe(0);
    expect(bench.dp.counters().fragment).toBe(20n);
  });

  it('passes other IP protocols and other ethertypes unmonitored', () => {
    bench = openBench();
    expect(bench.send({ src: CLIENT4, dst: APPLIANCE4, proto: IPPROTO_ICMP })).toBe('PASS');
    expect(bench.sendRaw(rawEthernet(ETH_P_ARP))).toBe('PASS');
    expect(bench.dp.counters().not_monitored).toBe(2n);
  });
});

describe('VLAN tags', () => {
  it('are walked: 802.1Q, and 802.1ad + 802.1Q (QinQ)', () => {
    bench = openBench();
    expect(bench.burst(6, (i) => ({ ...syn(CLIENT4, 443, 40000 + i), vlans: [ETH_P_8021Q] }))).toEqual({ pass: 5, drop: 1 });
    expect(bench.burst(6, (i) => ({ ...syn(CLIENT4, 22, 40000 + i), vlans: [ETH_P_8021AD, ETH_P_8021Q] }))).toEqual({ pass: 5, drop: 1 });
    expect(bench.burst(6, (i) => ({ ...syn('2001:db8:9::1', 22, 40000 + i), vlans: [ETH_P_8021Q] }))).toEqual({ pass: 5, drop: 1 });
  });

  it('stop after two: a third tag is not monitored', () => {
    bench = openBench();
    const s = (i: number) => ({ ...syn(CLIENT4, 443, 40000 + i), vlans: [ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q] });
    expect(bench.burst(10, s).drop).toBe(0);
    expect(bench.dp.counters().not_monitored).toBe(10n);
  });
});

describe('malformed frames', () => {
  it('pass at every truncated length and are counted, even from a limited source', () => {
    bench = openBench();
    const specs = [
      syn(CLIENT4, 443),
      udp(CLIENT4, 443),
      { ...syn(CLIENT4, 443), vlans: [ETH_P_8021AD, ETH_P_8021Q] },
      { ...syn('2001:db8:7::1', 443), ext: ['hop', 'frag'] as ('hop' | 'frag')[] },
    ];
    for (const spec of specs) {
      // exhaust the key first, so a parsable frame would be dropped
      bench.burst(6, (i) => ({ ...spec, sport: 30000 + i }));
      const full = frame({ ...spec, sport: 30100 });
      expect(bench.sendRaw(full)).toBe('DROP');
      // BPF_PROG_TEST_RUN needs at least an Ethernet header; shorter frames never reach XDP.
      for (let len = ETH_HLEN; len < full.length; len++) {
        const before = bench.dp.counters();
        expect(bench.sendRaw(full.subarray(0, len)), `${len} of ${full.length} bytes`).toBe('PASS');
        const after = bench.dp.counters();
        const counted = after.unparsable - before.unparsable + (after.not_monitored - before.not_monitored);
        expect(counted, `${len} bytes counted`).toBe(1n);
      }
    }
  });

  it('with a bad IHL, a total length below the header, or a TCP data offset below 5, pass as unparsable', () => {
    bench = openBench();
    bench.burst(6, (i) => syn(CLIENT4, 443, 30000 + i)); // exhausted
    expect(bench.send({ ...syn(CLIENT4, 443, 1), ihl: 4 })).toBe('PASS');
    expect(bench.send({ ...syn(CLIENT4, 443, 2), totLen: 19 })).toBe('PASS');
    expect(bench.send({ ...syn(CLIENT4, 443, 3), totLen: 30 })).toBe('PASS'); // TCP header outside the datagram
    expect(bench.send({ ...syn(CLIENT4, 443, 4), tcpDoff: 4 })).toBe('PASS');
    expect(bench.send({ ...syn(CLIENT4, 443, 5), ihl: 15 })).toBe('PASS'); // options run past the frame
    expect(bench.dp.counters().unparsable).toBe(5n);
  });
});

describe('IPv6 destinations', () => {
  it('are local only when listed', () => {
    bench = openBench();
    expect(bench.burst(6, (i) => ({ ...syn('2001:db8:9::1', 443, 40000 + i), dst: APPLIANCE6 })).drop).toBe(1);
    expect(bench.burst(6, (i) => ({ ...syn('2001:db8:9::1', 443, 40000 + i), dst: '2001:db8::2' })).drop).toBe(0);
  });
});
