import { describe, expect, it } from 'vitest';
import { AddressError, addrBytes, addrText, maskOf, parsePrefix, prefixText } from '../../src/domain/addr.js';
import { clockAt, periodNs, rebaseClock, tokensLeft } from '../../src/domain/limits.js';

describe('addresses', () => {
  it('keeps IPv4 as v4-mapped IPv6 and round-trips both families', () => {
    expect(addrBytes('198.18.0.1').toString('hex')).toBe('00000000000000000000ffffc6120001');
    expect(addrText(addrBytes('198.18.0.1'))).toBe('198.18.0.1');
    expect(addrText(addrBytes('2001:db8::1'))).toBe('2001:db8::1');
  });

  it('parses prefixes, zeroing host bits, and bare addresses as host prefixes', () => {
    expect(parsePrefix('198.19.1.77/24')).toMatchObject({ bits: 120, text: '198.19.1.0/24' });
    expect(parsePrefix('2001:db8:1:2::5/48')).toMatchObject({ bits: 48, text: '2001:db8:1::/48' });
    expect(parsePrefix('198.18.0.9')).toMatchObject({ bits: 128, text: '198.18.0.9/32' });
    expect(prefixText(parsePrefix('198.19.0.0/16').bytes, 112)).toBe('198.19.0.0/16');
  });

  it('refuses what is not an address, naming it', () => {
    expect(() => parsePrefix('198.18.0.0/33')).toThrow(AddressError);
    expect(() => parsePrefix('example.com')).toThrow(/"example.com" is not/);
    expect(() => addrBytes('1.2.3')).toThrow(AddressError);
  });

  it('masks IPv6 sources to a prefix', () => {
    expect(maskOf(64).toString('hex')).toBe('ffffffffffffffff0000000000000000');
    expect(maskOf(56).toString('hex')).toBe('ffffffffffffff000000000000000000');
    expect(maskOf(128).toString('hex')).toBe('ff'.repeat(16));
  });
});

describe('GCRA arithmetic', () => {
  it('spaces tokens 60/R s apart', () => {
    expect(periodNs(20)).toBe(3_000_000_000n);
    expect(periodNs(0)).toBe(0n);
  });

  it('reports whole tokens left', () => {
    const U = 1n << 20n;
    expect(tokensLeft(0n, 100n, U, 5)).toBe(5); // never seen / long idle
    expect(tokensLeft(100n + 5n * U, 100n, U, 5)).toBe(0); // just emptied
    expect(tokensLeft(100n + 5n * U, 100n + U, U, 5)).toBe(1);
    expect(tokensLeft(100n + 5n * U, 100n + U - 1n, U, 5)).toBe(0);
  });

  it('runs the token clock one token per period, and rebases it continuously', () => {
    const U = 1n << 20n;
    const s = 1_000_000_000n;
    const c = rebaseClock(undefined, periodNs(20), 100n * s, U);
    expect(clockAt(c, 100n * s, U)).toBe(0n);
    expect(clockAt(c, 103n * s, U)).toBe(U);
    expect(clockAt(c, 110n * s, U)).toBe(3n * U + U / 3n);
    const faster = rebaseClock(c, periodNs(60), 110n * s, U);
    expect(clockAt(faster, 110n * s, U)).toBe(clockAt(c, 110n * s, U));
    expect(clockAt(faster, 111n * s, U) - clockAt(faster, 110n * s, U)).toBe(U);
    expect(rebaseClock(c, periodNs(20), 500n * s, U)).toBe(c); // same rate: untouched
    const off = rebaseClock(c, 0n, 120n * s, U);
    expect(clockAt(off, 999n * s, U)).toBe(clockAt(c, 120n * s, U)); // stands still while off
  });
});
