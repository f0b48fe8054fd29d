/**
 * Linux capabilities of this process, read from /proc/self/status, so that a
 * command is judged by what it may do rather than by its user id.
 */
import { readFileSync } from 'node:fs';

/** Capability numbers from linux/capability.h. */
export const CAP = {
  NET_ADMIN: 12,
  SYS_ADMIN: 21,
  PERFMON: 38,
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
 * The capabilities a datapath command needs: CAP_BPF and CAP_NET_ADMIN to use
 * the pinned maps and XDP links; loading the program (`load`) also needs
 * CAP_PERFMON, without which the verifier refuses its pointer arithmetic.
 * CAP_SYS_ADMIN serves for CAP_BPF and CAP_PERFMON alike.
 */
export function requiredDatapathCaps(opts: { load?: boolean } = {}): string[] {
  return opts.load ? ['CAP_BPF', 'CAP_PERFMON', 'CAP_NET_ADMIN'] : ['CAP_BPF', 'CAP_NET_ADMIN'];
}

/** What this process lacks of requiredDatapathCaps(opts); empty when nothing is missing. */
export function missingDatapathCaps(opts: { load?: boolean } = {}, caps: bigint = effectiveCaps()): string[] {
  const sysAdmin = hasCap(caps, 'SYS_ADMIN');
  return requiredDatapathCaps(opts).filter((name) => {
    const cap = name.slice('CAP_'.length) as CapName;
    return !hasCap(caps, cap) && !(sysAdmin && (cap === 'BPF' || cap === 'PERFMON'));
  });
}
