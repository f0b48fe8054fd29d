/** Capabilities from /proc/self/status, and what the datapath commands need of them. */
import { describe, expect, it } from 'vitest';
import { CAP, effectiveCaps, missingDatapathCaps } from '../../src/caps.js';

const set = (...caps: (keyof typeof CAP)[]): bigint => caps.reduce((m, c) => m | (1n << BigInt(CAP[c])), 0n);

describe('capabilities', () => {
  it('are read from CapEff', () => {
    expect(effectiveCaps('Name:\tnode\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\nCapBnd:\t0\n')).toBe((1n << 41n) - 1n);
    expect(effectiveCaps('CapEff:\t0000000000000000\n')).toBe(0n);
    expect(effectiveCaps()).toBeTypeOf('bigint'); // this process
  });

  it.each([
    [{}, set('BPF', 'NET_ADMIN'), []],
    [{}, set('SYS_ADMIN', 'NET_ADMIN'), []],
    [{}, set('BPF'), ['CAP_NET_ADMIN']],
    [{}, set('NET_ADMIN', 'PERFMON'), ['CAP_BPF']],
    [{}, 0n, ['CAP_BPF', 'CAP_NET_ADMIN']],
    [{ load: true }, set('BPF', 'NET_ADMIN'), ['CAP_PERFMON']],
    [{ load: true }, set('BPF', 'PERFMON', 'NET_ADMIN'), []],
    [{ load: true }, set('SYS_ADMIN', 'NET_ADMIN'), []],
    [{ load: true }, 0n, ['CAP_BPF', 'CAP_PERFMON', 'CAP_NET_ADMIN']],
  ])('%j with %s lacks %j', (need, caps, missing) => {
    expect(missingDatapathCaps(need, caps)).toEqual(missing);
  });
});
