/**
 * Addresses as the datapath sees them: 16 bytes, IPv4 v4-mapped (::ffff:a.b.c.d).
 */
import { isIP } from 'node:net';
import ipaddr from 'ipaddr.js';

export const ADDR_LEN = 16;
const V4_MAPPED_BITS = 96;

export interface Prefix {
  /** 16-byte address, host bits zeroed. */
  readonly bytes: Buffer;
  /** Prefix length over the 16-byte form (IPv4 /24 → 120). */
  readonly bits: number;
  /** The prefix as written by people: 198.18.0.0/24, 2001:db8::/32. */
  readonly text: string;
}

export class AddressError extends Error {
  constructor(readonly input: string, reason: string) {
    super(`${JSON.stringify(input)} is not ${reason}`);
    this.name = 'AddressError';
  }
}

/** Parse an IPv4 or IPv6 address into its 16-byte datapath form. */
export function addrBytes(text: string): Buffer {
  if (isIP(text) === 0) throw new AddressError(text, 'an IPv4 or IPv6 address');
  const a = ipaddr.parse(text);
  const v6 = a.kind() === 'ipv4' ? (a as ipaddr.IPv4).toIPv4MappedAddress() : (a as ipaddr.IPv6);
  return Buffer.from(v6.toByteArray());
}

/** The address of a 16-byte datapath form, IPv4 when v4-mapped. */
export function addrText(bytes: Uint8Array): string {
  const v6 = ipaddr.fromByteArray(Array.from(bytes.subarray(0, ADDR_LEN))) as ipaddr.IPv6;
  return v6.isIPv4MappedAddress() ? v6.toIPv4Address().toString() : v6.toString();
}

export function isV4Mapped(bytes: Uint8Array): boolean {
  return (ipaddr.fromByteArray(Array.from(bytes.subarray(0, ADDR_LEN))) as ipaddr.IPv6).isIPv4MappedAddress();
}

/** The IPv4 address (4 bytes, network order) of a v4-mapped 16-byte form. */
export function v4Bytes(bytes: Uint8Array): Uint8Array {
  return bytes.subarray(V4_MAPPED_BITS / 8, ADDR_LEN);
}

/** Zero every bit past `bits` of a 16-byte address (in place) and return it. */
export function maskBytes(bytes: Buffer, bits: number): Buffer {
  for (let i = 0; i < ADDR_LEN; i++) {
    const keep = Math.max(0, Math.min(8, bits - i * 8));
    bytes[i] = (bytes[i] ?? 0) & ((0xff << (8 - keep)) & 0xff);
  }
  return bytes;
}

/** Parse "198.18.0.0/15", "2001:db8::/32" or a bare address (a host prefix). */
export function parsePrefix(text: string): Prefix {
  const t = text.trim();
  let addr: ipaddr.IPv4 | ipaddr.IPv6;
  let len: number;
  if (t.includes('/')) {
    if (!ipaddr.isValidCIDR(t) || isIP(t.slice(0, t.indexOf('/'))) === 0) throw new AddressError(text, 'a CIDR prefix like 198.18.0.0/15 or 2001:db8::/32');
    [addr, len] = ipaddr.parseCIDR(t);
  } else {
    if (isIP(t) === 0) throw new AddressError(text, 'an address or CIDR prefix');
    addr = ipaddr.parse(t);
    len = addr.kind() === 'ipv4' ? 32 : 128;
  }
  const v4 = addr.kind() === 'ipv4';
  const bits = v4 ? V4_MAPPED_BITS + len : len;
  const bytes = maskBytes(addrBytes(addr.toString()), bits);
  const network = v4 ? addrText(bytes) : (ipaddr.fromByteArray(Array.from(bytes)) as ipaddr.IPv6).toString();
  return { bytes, bits, text: `${network}/${len}` };
}

/** The 16 bytes that mask an address to its first `bits` bits. */
export function maskOf(bits: number): Buffer {
  return maskBytes(Buffer.alloc(ADDR_LEN, 0xff), bits);
}

/** "198.18.0.0/24" from a 16-byte address and a prefix length over that form. */
export function prefixText(bytes: Uint8Array, bits: number): string {
  const v4 = isV4Mapped(bytes) && bits >= V4_MAPPED_BITS;
  return parsePrefix(`${addrText(bytes)}/${v4 ? bits - V4_MAPPED_BITS : bits}`).text;
}

/** Whether prefix `outer` contains prefix `inner` (both in the 16-byte form). */
function contains(outer: Prefix, inner: { bytes: Buffer; bits: number }): boolean {
  return outer.bits <= inner.bits && maskBytes(Buffer.from(inner.bytes), outer.bits).equals(outer.bytes);
}

/**
 * Whether the union of `prefixes` covers every address of `target`. Splits
 * `target` in halves only where some prefix lies strictly inside it, so the
 * work is bounded by the number of prefixes times the address length.
 */
export function coversAll(prefixes: readonly Prefix[], target: { bytes: Buffer; bits: number }): boolean {
  if (prefixes.some((q) => contains(q, target))) return true;
  if (target.bits >= ADDR_LEN * 8 || !prefixes.some((q) => q.bits > target.bits && contains({ ...target, text: '' }, q))) return false;
  const bits = target.bits + 1;
  const low = maskBytes(Buffer.from(target.bytes), bits);
  const high = Buffer.from(low);
  const byte = Math.floor(target.bits / 8);
  high[byte] = (high[byte] ?? 0) | (0x80 >> (target.bits % 8));
  return coversAll(prefixes, { bytes: low, bits }) && coversAll(prefixes, { bytes: high, bits });
}

/** Every IPv4 source (v4-mapped). */
export const ALL_IPV4: Prefix = parsePrefix('::ffff:0:0/96');
/** Every address, IPv6 and v4-mapped IPv4 alike. */
export const ALL_ADDRESSES: Prefix = parsePrefix('::/0');
