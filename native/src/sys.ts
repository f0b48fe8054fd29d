import { native } from './binding.js';
import { BpfError, Errno, call } from './errors.js';
import { checkU32 } from './internal.js';

/** if_nametoindex; throws BpfError(ENODEV) for an unknown interface. */
export function ifIndex(name: string): number {
  if (typeof name !== 'string' || name.length === 0) throw new TypeError('ifIndex: name must be a non-empty string');
  try {
    return call(`ifIndex(${name})`, 'other', () => native.ifNameToIndex(name));
  } catch (e) {
    if (e instanceof BpfError && e.errno === Errno.ENODEV) throw e;
    if (e instanceof BpfError) throw new BpfError(`ifIndex(${name})`, Errno.ENODEV, 'no such network interface', e.syscall);
    throw e;
  }
}

/** if_indextoname; throws BpfError(ENODEV) for an unknown index. */
export function ifName(index: number): string {
  checkU32('ifName', 'index', index, 1);
  return call(`ifName(${index})`, 'other', () => native.ifIndexToName(index));
}

/** flock(2) operations. */
const LOCK_SH = 1;
const LOCK_EX = 2;
const LOCK_NB = 4;
const LOCK_UN = 8;
const LOCK_OP = { shared: LOCK_SH, exclusive: LOCK_EX, unlock: LOCK_UN } as const;

/**
 * flock(2) on an open fd (a file, or a directory such as a bpffs pin dir).
 * With wait=false returns false instead of blocking when the lock is held.
 * The kernel drops the lock when the last fd closes, also when a process dies.
 */
export function flock(fd: number, mode: keyof typeof LOCK_OP, wait = true): boolean {
  checkU32('flock', 'fd', fd);
  const op = LOCK_OP[mode] | (wait || mode === 'unlock' ? 0 : LOCK_NB);
  return call(`flock(${fd}, ${mode})`, 'other', () => native.flock(fd, op));
}
