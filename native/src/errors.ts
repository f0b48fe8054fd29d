import { constants } from 'node:os';

/** Symbolic names by errno ('ENOENT'), from os.constants.errno reversed. */
const ERRNO_NAMES = new Map<number, string>([
  [95, 'EOPNOTSUPP'], // == ENOTSUP on Linux; the kernel calls it EOPNOTSUPP
  [11, 'EAGAIN'],
  [524, 'ENOTSUPP'], // kernel-internal, but bpf(2) leaks it (e.g. batch ops)
]);
for (const [name, value] of Object.entries(constants.errno)) {
  if (!ERRNO_NAMES.has(value)) ERRNO_NAMES.set(value, name);
}

export function errnoName(errno: number): string {
  return ERRNO_NAMES.get(errno) ?? `E${errno}`;
}

export const Errno = {
  EPERM: 1, ENOENT: 2, EBADF: 9, EAGAIN: 11, EACCES: 13, EBUSY: 16, EEXIST: 17, ENODEV: 19, EINVAL: 22,
  ENOSPC: 28, ERANGE: 34, E2BIG: 7, ENODATA: 61, EOPNOTSUPP: 95, ENOTSUPP: 524,
} as const;

export class BpfError extends Error {
  readonly errno: number;
  readonly code: string;
  readonly op: string;
  /** The underlying call (e.g. 'bpf_map_update_elem') when it came from native code. */
  readonly syscall: string | undefined;

  constructor(op: string, errno: number, text: string, syscall?: string) {
    const code = errnoName(errno);
    super(`${op}: ${text} (${code})`);
    this.name = new.target.name;
    this.errno = errno;
    this.code = code;
    this.op = op;
    this.syscall = syscall;
  }
}

/** ENOENT on a map element operation. */
export class KeyNotExistError extends BpfError {}
/** EEXIST from update(..., 'noexist'). */
export class KeyExistsError extends BpfError {}
/** E2BIG from update(): no room for a new key. */
export class MapFullError extends BpfError {}
/** EPERM / EACCES. */
export class PermissionError extends BpfError {}
/** BpfObject.load() failed; `log` has libbpf's messages, including the verifier log. */
export class VerifierError extends BpfError {
  readonly log: string;
  constructor(op: string, errno: number, text: string, log: string, syscall?: string) {
    super(op, errno, text, syscall);
    this.log = log;
  }
}

/** What kind of operation failed: picks the friendly message and the error class. */
export type ErrorContext = 'map' | 'update' | 'pin' | 'id' | 'load' | 'attach' | 'file' | 'other';

function friendly(errno: number, ctx: ErrorContext, fallback: string): string {
  switch (errno) {
    case Errno.ENOENT:
      if (ctx === 'map' || ctx === 'update') return 'no such key';
      if (ctx === 'pin') return 'no such file: is it loaded?';
      if (ctx === 'id') return 'no such object id';
      if (ctx === 'file') return 'no such file';
      break;
    case Errno.E2BIG:
      if (ctx === 'update') return 'map is full';
      break;
    case Errno.EPERM:
      return 'operation not permitted (are you root? is the memlock limit set?)';
    case Errno.EACCES:
      return ctx === 'load' ? 'rejected by the verifier' : 'permission denied';
    case Errno.EEXIST:
      if (ctx === 'update') return 'key already exists';
      if (ctx === 'pin') return 'a file already exists at the pin path';
      if (ctx === 'attach') return 'an XDP program is already attached';
      return 'already exists';
    case Errno.EBUSY:
      if (ctx === 'attach') return 'an XDP program is already attached';
      return 'busy';
    case Errno.EOPNOTSUPP:
      if (ctx === 'attach') return 'this XDP mode is not supported by the driver';
      return 'operation not supported';
    case Errno.ENOTSUPP:
      return 'operation not supported by this map type or kernel';
    case Errno.EBADF:
      return 'the handle is closed';
    case Errno.ENODEV:
      return 'no such network interface';
    case Errno.EINVAL:
      if (ctx === 'load') return 'invalid program or object';
      break;
  }
  return fallback;
}

/** Build the typed error for a failed operation. */
export function bpfError(op: string, errno: number, ctx: ErrorContext, opts: { text?: string; log?: string; syscall?: string } = {}): BpfError {
  const text = opts.text ?? friendly(errno, ctx, opts.syscall ? 'failed' : errnoName(errno));
  if (ctx === 'load') return new VerifierError(op, errno, text, opts.log ?? '', opts.syscall);
  if (errno === Errno.EPERM || errno === Errno.EACCES) return new PermissionError(op, errno, text, opts.syscall);
  if (ctx === 'map' || ctx === 'update') {
    if (errno === Errno.ENOENT) return new KeyNotExistError(op, errno, text, opts.syscall);
    if (errno === Errno.EEXIST && ctx === 'update') return new KeyExistsError(op, errno, text, opts.syscall);
    if (errno === Errno.E2BIG && ctx === 'update') return new MapFullError(op, errno, text, opts.syscall);
  }
  return new BpfError(op, errno, text, opts.syscall);
}

/** An argument the caller got wrong (EINVAL, checked before any syscall). */
export function invalid(op: string, text: string): BpfError {
  return new BpfError(op, Errno.EINVAL, text);
}

interface NativeError extends Error { errno: number; op: string; log?: string }

function isNativeError(e: unknown): e is NativeError {
  return e instanceof Error && typeof (e as Partial<NativeError>).errno === 'number' && typeof (e as Partial<NativeError>).op === 'string';
}

/** Convert an error thrown by native code into a typed BpfError; anything else is returned as is. */
export function toBpfError(op: string, ctx: ErrorContext, e: unknown): unknown {
  if (!isNativeError(e)) return e;
  // Native messages are "<libbpf call>: <strerror>".
  const strerror = e.message.startsWith(`${e.op}: `) ? e.message.slice(e.op.length + 2) : e.message;
  const text = friendly(e.errno, ctx, strerror.toLowerCase());
  return bpfError(op, e.errno, ctx, { text, syscall: e.op, ...(e.log !== undefined ? { log: e.log } : {}) });
}

/** Run a native call, turning its errno-carrying Error into a typed BpfError. */
export function call<T>(op: string, ctx: ErrorContext, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw toBpfError(op, ctx, e);
  }
}
