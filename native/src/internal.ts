// Module-private symbols shared by the classes of this package. Not exported
// from index.ts: users cannot reach native handles or call the constructors.
import { readlinkSync } from 'node:fs';
import { native, type FdHandle } from './binding.js';
import { invalid } from './errors.js';

/** Key of the native handle on every wrapper object. */
export const kHandle: unique symbol = Symbol('xdp-ts-loader.handle');
/** Constructor token: only this package can create wrappers from handles. */
export const kInternal: unique symbol = Symbol('xdp-ts-loader.internal');
export type InternalToken = typeof kInternal;

export type FdKind = 'map' | 'prog' | 'link';

/** What a bpf fd refers to, from the anon inode name (/proc/self/fd). */
export function fdKind(h: FdHandle): FdKind | 'other' {
  const target = readlinkSync(`/proc/self/fd/${native.fdNumber(h)}`);
  if (target === 'anon_inode:bpf-map') return 'map';
  if (target === 'anon_inode:bpf-prog') return 'prog';
  if (target === 'anon_inode:bpf_link' || target === 'anon_inode:bpf-link') return 'link';
  return 'other';
}

/** Close `h` and throw unless it refers to a `want`. */
export function expectKind(op: string, h: FdHandle, want: FdKind): void {
  const got = fdKind(h);
  if (got === want) return;
  native.fdClose(h);
  throw invalid(op, `not a BPF ${want} (it is a ${got === 'other' ? 'non-BPF file' : got})`);
}

export function checkPath(op: string, path: unknown): asserts path is string {
  if (typeof path !== 'string' || path.length === 0) throw new TypeError(`${op}: path must be a non-empty string`);
}

export function checkU32(op: string, what: string, n: unknown, min = 0): asserts n is number {
  if (typeof n !== 'number' || !Number.isInteger(n) || n < min || n > 0xffffffff) {
    throw new TypeError(`${op}: ${what} must be an integer in [${min}, 2^32)`);
  }
}

export function checkBuffer(op: string, what: string, b: unknown): asserts b is Buffer {
  if (!Buffer.isBuffer(b)) throw new TypeError(`${op}: ${what} must be a Buffer`);
}
