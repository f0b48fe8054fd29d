import { closeSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { flock } from '../src/index.js';

const dir = mkdtempSync(join(tmpdir(), 'xtl-flock-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('flock', () => {
  it('excludes a second open file description until the first closes', () => {
    const path = join(dir, 'lock');
    const a = openSync(path, 'w');
    const b = openSync(path, 'r');
    expect(flock(a, 'exclusive', false)).toBe(true);
    expect(flock(b, 'exclusive', false)).toBe(false);
    expect(flock(b, 'shared', false)).toBe(false);
    closeSync(a); // the kernel drops the lock with the last fd
    expect(flock(b, 'exclusive', false)).toBe(true);
    flock(b, 'unlock');
    closeSync(b);
  });

  it('locks directories too (as pin directories are locked)', () => {
    const a = openSync(dir, 'r');
    const b = openSync(dir, 'r');
    expect(flock(a, 'exclusive', false)).toBe(true);
    expect(flock(b, 'exclusive', false)).toBe(false);
    closeSync(a);
    closeSync(b);
  });

  it('throws a BpfError naming the call for a bad fd', () => {
    expect(() => flock(987654, 'exclusive', false)).toThrow(/flock\(987654, exclusive\).*EBADF/);
  });
});
