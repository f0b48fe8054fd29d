/**
 * Advisory locks with flock(2): released by the kernel when the holder dies,
 * so a crashed writer or daemon never leaves a stale lock behind.
 */
import { execFileSync } from 'node:child_process';
import { closeSync, constants, openSync } from 'node:fs';
import { ConnrateError } from './errors.js';

/** Try to take an exclusive flock(2) on `fd` without waiting; true when taken. */
export type TryFlock = (fd: number) => boolean;

/** flock(1)'s exit status when the lock is held elsewhere (--conflict-exit-code). */
const FLOCK_CONFLICT = 75;
/** Descriptor number our fd gets in the flock(1) child. */
const CHILD_FD = 3;

/**
 * flock(2) through util-linux flock(1), so that locking needs no native addon:
 * the child locks the descriptor it inherits from us. A flock belongs to the
 * open file description, which we share, so the lock stays ours after the
 * child exits and is dropped when we close the fd or die.
 */
export const flockByUtility: TryFlock = (fd) => {
  try {
    execFileSync('flock', ['--exclusive', '--nonblock', '--conflict-exit-code', String(FLOCK_CONFLICT), String(CHILD_FD)], {
      stdio: ['ignore', 'ignore', 'pipe', fd],
    });
    return true;
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { status?: number | null; stderr?: Buffer };
    if (e.status === FLOCK_CONFLICT) return false;
    const why = e.stderr?.toString().trim() || e.message;
    throw new ConnrateError('lock', e.code ?? 'EIO', `flock(1) failed: ${why} (util-linux flock is needed)`);
  }
};

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
  static acquire(path: string, opts: { waitMs?: number; directory?: boolean; holder?: string; tryFlock?: TryFlock } = {}): FileLock {
    const tryFlock = opts.tryFlock ?? flockByUtility;
    const fd = opts.directory
      ? openSync(path, constants.O_RDONLY | constants.O_DIRECTORY)
      : openSync(path, constants.O_RDWR | constants.O_CREAT, 0o600);
    const deadline = Date.now() + (opts.waitMs ?? DEFAULT_WAIT_MS);
    for (;;) {
      let taken: boolean;
      try {
        taken = tryFlock(fd);
      } catch (err) {
        closeSync(fd);
        throw err;
      }
      if (taken) return new FileLock(fd, path);
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
