/**
 * File locks: flock(2) taken through util-linux flock(1) (no native addon) and
 * through the addon exclude each other, and are dropped on release.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { flock } from '@xdp-ts/loader';
import { afterAll, describe, expect, it } from 'vitest';
import { FileLock, flockByUtility } from '../../src/lock.js';

const dir = mkdtempSync(join(tmpdir(), 'connrate-lock-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const addon = (fd: number): boolean => flock(fd, 'exclusive', false);

describe('FileLock', () => {
  it.each([
    ['flock(1), then flock(1)', flockByUtility, flockByUtility],
    ['the addon, then flock(1)', addon, flockByUtility],
    ['flock(1), then the addon', flockByUtility, addon],
  ])('%s: the second waits for the first and gets the lock once it is released', (_name, first, second) => {
    const path = join(dir, `${_name}.lock`);
    const held = FileLock.acquire(path, { tryFlock: first });
    expect(() => FileLock.acquire(path, { tryFlock: second, waitMs: 0, holder: 'the test' })).toThrow(`${path} is locked by the test`);
    held.release();
    FileLock.acquire(path, { tryFlock: second, waitMs: 0 }).release();
  });
});
