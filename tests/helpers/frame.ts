/**
 * Ethernet frames for BPF_PROG_TEST_RUN: VLAN tags, IPv4 (options, fragments),
 * IPv6 (extension headers), TCP and UDP. Only 198.18.0.0/15 and 2001:db8::/32.
 */
import { isIPv4 } from 'node:net';
import ipaddr from 'ipaddr.js';

export const ETH_P_IP = 0x0800;
export const ETH_P_IPV6 = 0x86dd;
export const ETH_P_ARP = 0x0806;
export const ETH_P_8021Q = 0x8100;
export const ETH_P_8021AD = 0x88a8;
export const IPPROTO_TCP = 6;
export const IPPROTO_UDP = 17;
export const IPPROTO_ICMP = 1;
export const IPV6_EXT = { hop: 0, routing: 43, frag: 44, dst: 60 } as const;

export const ETH_HLEN = 14;
const IPV4_HLEN = 20;
const IPV6_HLEN = 40;
const TCP_HLEN = 20;
const UDP_HLEN = 8;
const TCP_SYN = 0x02;
const TCP_ACK = 0x10;
const IP_MF = 0x2000;

export interface FrameSpec {
  src: string;
  dst: string;
  proto: 'tcp' | 'udp' | number;
  sport?: number;
  dport?: number;
  /** TCP flags; default SYN. */
  syn?: boolean;
  ack?: boolean;
  /** 802.1Q/802.1ad tags, outermost first: the TPIDs to use. */
  vlans?: number[];
  /** IPv4 options, bytes (padded to a multiple of 4). */
  ipOptions?: number;
  /** IPv4 fragment offset in 8-byte units, and the MF flag. */
  fragOffset?: number;
  moreFragments?: boolean;
  /** IPv6 extension headers in order; 'frag' may carry an offset. */
  ext?: (keyof typeof IPV6_EXT)[];
  ext6FragOffset?: number;
  /** TCP data offset override (words). */
  tcpDoff?: number;
  /** IPv4 header length override (words) and total length override. */
  ihl?: number;
  totLen?: number;
  payload?: number;
}

function ipBytes(a: string): number[] {
  return ipaddr.parse(a).toByteArray();
}

function checksum(b: Buffer): number {
  let sum = 0;
  for (let i = 0; i + 1 < b.length; i += 2) sum += b.readUInt16BE(i);
  if (b.length % 2) sum += (b[b.length - 1] ?? 0) << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

function l4(spec: FrameSpec): { proto: number; bytes: Buffer } {
  const payload = Buffer.alloc(spec.payload ?? 0, 0x61);
  if (spec.proto === 'tcp') {
    const h = Buffer.alloc(TCP_HLEN);
    h.writeUInt16BE(spec.sport ?? 40000, 0);
    h.writeUInt16BE(spec.dport ?? 443, 2);
    h.writeUInt32BE(1, 4);
    h.writeUInt32BE(spec.ack ? 1 : 0, 8);
    h[12] = (spec.tcpDoff ?? TCP_HLEN / 4) << 4;
    h[13] = (spec.syn === false ? 0 : TCP_SYN) | (spec.ack ? TCP_ACK : 0);
    h.writeUInt16BE(64240, 14);
    return { proto: IPPROTO_TCP, bytes: Buffer.concat([h, payload]) };
  }
  if (spec.proto === 'udp') {
    const h = Buffer.alloc(UDP_HLEN);
    h.writeUInt16BE(spec.sport ?? 40000, 0);
    h.writeUInt16BE(spec.dport ?? 1194, 2);
    h.writeUInt16BE(UDP_HLEN + payload.length, 4);
    return { proto: IPPROTO_UDP, bytes: Buffer.concat([h, payload]) };
  }
  return { proto: spec.proto, bytes: Buffer.alloc(8) };
}

function ipv4(spec: FrameSpec, inner: { proto: number; bytes: Buffer }): Buffer {
  const optLen = Math.ceil((spec.ipOptions ?? 0) / 4) * 4;
  const h = Buffer.alloc(IPV4_HLEN + optLen);
  h[0] = 0x40 | (spec.ihl ?? (IPV4_HLEN + optLen) / 4);
  h.writeUInt16BE(spec.totLen ?? h.length + inner.bytes.length, 2);
  h.writeUInt16BE(0x1234, 4);
  h.writeUInt16BE((spec.fragOffset ?? 0) | (spec.moreFragments ? IP_MF : 0), 6);
  h[8] = 64;
  h[9] = inner.proto;
  Buffer.from(ipBytes(spec.src)).copy(h, 12);
  Buffer.from(ipBytes(spec.dst)).copy(h, 16);
  for (let i = IPV4_HLEN; i < h.length; i++) h[i] = 1; // NOP options
  h.writeUInt16BE(checksum(h.subarray(0, IPV4_HLEN)), 10);
  return Buffer.concat([h, inner.bytes]);
}

function ipv6(spec: FrameSpec, inner: { proto: number; bytes: Buffer }): Buffer {
  const chain = spec.ext ?? [];
  const exts: Buffer[] = [];
  chain.forEach((kind, i) => {
    const next = i + 1 < chain.length ? IPV6_EXT[chain[i + 1]!] : inner.proto;
    const e = Buffer.alloc(8);
    e[0] = next;
    if (kind === 'frag') e.writeUInt16BE((spec.ext6FragOffset ?? 0) << 3, 2);
    exts.push(e);
  });
  const first = chain.length ? IPV6_EXT[chain[0]!] : inner.proto;
  const h = Buffer.alloc(IPV6_HLEN);
  h.writeUInt32BE(0x60000000, 0);
  const payloadLen = exts.reduce((n, e) => n + e.length, 0) + inner.bytes.length;
  h.writeUInt16BE(payloadLen, 4);
  h[6] = first;
  h[7] = 64;
  Buffer.from(ipBytes(spec.src)).copy(h, 8);
  Buffer.from(ipBytes(spec.dst)).copy(h, 24);
  return Buffer.concat([h, ...exts, inner.bytes]);
}

/** One Ethernet frame as the spec describes. */
export function frame(spec: FrameSpec): Buffer {
  const inner = l4(spec);
  const v4 = isIPv4(spec.src);
  const l3 = v4 ? ipv4(spec, inner) : ipv6(spec, inner);
  const tags = spec.vlans ?? [];
  const eth = Buffer.alloc(ETH_HLEN + tags.length * 4);
  Buffer.from([0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02]).copy(eth, 0);
  let off = 12;
  for (const [i, tpid] of tags.entries()) {
    eth.writeUInt16BE(tpid, off);
    eth.writeUInt16BE(100 + i, off + 2); // VLAN id
    off += 4;
  }
  eth.writeUInt16BE(v4 ? ETH_P_IP : ETH_P_IPV6, off);
  return Buffer.concat([eth, l3]);
}

/** A frame of another ethertype (e.g. ARP), 60 bytes. */
export function rawEthernet(ethertype: number): Buffer {
  const b = Buffer.alloc(60);
  b.writeUInt16BE(ethertype, 12);
  return b;
}
