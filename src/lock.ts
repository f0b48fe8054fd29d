/**
 * Advisory locks with flock(2): released by the kernel when the holder dies,
 * so a crashed writer or daemon never leaves a stale lock behind.
 */
import { closeSync, constants, openSync } from 'node:fs';
import { flock } from '@xdp-ts/loader';
import { ConnrateError } from './errors.js';

const POLL_MS = 20;
const DEFAULT_WAIT_MS = 10_000;
const sleeper = new Int32Array(new SharedArrayBuffer(4));

export class FileLock {
  #fd: number | undefined;

  private constructor(fd: number, readonly path: string) {
    this.#fd = fd;
  }

  /**
   * Take an exclusive lock on `path` (created 0600 if missing; a directory is
   * locked as itself). Waits up to `waitMs` (0: fail at once when held).
   */
  static acquire(path: string, opts: { waitMs?: number; directory?: boolean; holder?: string } = {}): FileLock {
    const fd = opts.directory
      ? openSync(path, constants.O_RDONLY | constants.O_DIRECTORY)
      : openSync(path, constants.O_RDWR | constants.O_CREAT, 0o600);
    const deadline = Date.now() + (opts.waitMs ?? DEFAULT_WAIT_MS);
    for (;;) {
      if (flock(fd, 'exclusive', false)) return new FileLock(fd, path);
      if (Date.now() >= deadline) {
        closeSync(fd);
        throw new ConnrateError('lock', 'EBUSY', `${path} is locked by ${opts.holder ?? 'another connrate process'}`);
      }
      Atomics.wait(sleeper, 0, 0, POLL_MS);
    }
  }

  release(): void {
    if (this.#fd === undefined) return;
    closeSync(this.#fd); // closing the last fd drops the flock
    this.#fd = undefined;
  }
}

export function withFileLock<T>(path: string, fn: () => T): T {
  const lock = FileLock.acquire(path);
  try {
    return fn();
  } finally {
    lock.release();
  }
}
