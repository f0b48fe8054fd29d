/**
 * Linux capabilities of this process, read from /proc/self/status, so that a
 * command is judged by what it may do rather than by its user id.
 */
import { readFileSync } from 'node:fs';

/** Capability numbers from linux/capability.h. */
export const CAP = {
  NET_ADMIN: 12,
  SYS_ADMIN: 21,
  BPF: 39,
} as const;
export type CapName = keyof typeof CAP;

/** The effective capability set (CapEff), as a bit mask. */
export function effectiveCaps(statusText: string = readFileSync('/proc/self/status', 'utf8')): bigint {
  const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(statusText);
  return m ? BigInt(`0x${m[1]}`) : 0n;
}

export function hasCap(caps: bigint, name: CapName): boolean {
  return (caps >> BigInt(CAP[name])) & 1n ? true : false;
}

/**
 * What a datapath command (load, attach, read or change pinned BPF maps) lacks:
 * CAP_BPF, for which CAP_SYS_ADMIN also serves, and CAP_NET_ADMIN. Empty when
 * nothing is missing.
 */
export function missingDatapathCaps(caps: bigint = effectiveCaps()): string[] {
  const missing: string[] = [];
  if (!hasCap(caps, 'BPF') && !hasCap(caps, 'SYS_ADMIN')) missing.push('CAP_BPF');
  if (!hasCap(caps, 'NET_ADMIN')) missing.push('CAP_NET_ADMIN');
  return missing;
}
