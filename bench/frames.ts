/**
 * Frames the generator sends: tests/helpers/frame.ts's frames with the real
 * MAC addresses of the bench veth pair, valid TCP/UDP checksums (the kernel's
 * stack and conntrack check them), padded to the 60-byte Ethernet minimum.
 */
import { frame, type FrameSpec, ETH_HLEN, IPPROTO_TCP, IPPROTO_UDP } from '../tests/helpers/frame.js';

function sum16(b: Buffer, start = 0): number {
  let s = start;
  for (let i = 0; i + 1 < b.length; i += 2) s += b.readUInt16BE(i);
  if (b.length % 2) s += (b[b.length - 1] ?? 0) << 8;
  return s;
}

function fold(s: number): number {
  while (s > 0xffff) s = (s & 0xffff) + Math.floor(s / 0x10000);
  return s;
}

function macBytes(mac: string): Buffer {
  return Buffer.from(mac.split(':').map((h) => parseInt(h, 16)));
}

/** Fill in the TCP or UDP checksum of an untagged IPv4/IPv6 frame, in place. */
export function fixL4Checksum(f: Buffer): void {
  const type = f.readUInt16BE(12);
  let proto: number;
  let l4: number;
  let l4len: number;
  let pseudo: number;
  if (type === 0x0800) {
    const ihl = (f[ETH_HLEN]! & 0x0f) * 4;
    proto = f[ETH_HLEN + 9]!;
    l4 = ETH_HLEN + ihl;
    l4len = f.readUInt16BE(ETH_HLEN + 2) - ihl;
    pseudo = sum16(f.subarray(ETH_HLEN + 12, ETH_HLEN + 20)) + proto + l4len;
  } else if (type === 0x86dd) {
    proto = f[ETH_HLEN + 6]!;
    l4 = ETH_HLEN + 40;
    l4len = f.readUInt16BE(ETH_HLEN + 4);
    pseudo = sum16(f.subarray(ETH_HLEN + 8, ETH_HLEN + 40)) + proto + l4len;
  } else {
    throw new Error(`fixL4Checksum: ethertype 0x${type.toString(16)} is not IP`);
  }
  const off = proto === IPPROTO_TCP ? 16 : proto === IPPROTO_UDP ? 6 : -1;
  if (off < 0) throw new Error(`fixL4Checksum: protocol ${proto} is not TCP or UDP`);
  f.writeUInt16BE(0, l4 + off);
  let c = ~fold(sum16(f.subarray(l4, l4 + l4len), pseudo)) & 0xffff;
  if (c === 0 && proto === IPPROTO_UDP) c = 0xffff; // 0 means "no checksum" for UDP
  f.writeUInt16BE(c, l4 + off);
}

/** A frame from `srcMac` to `dstMac`, checksums valid, at least 60 bytes. */
export function wireFrame(spec: FrameSpec, srcMac: string, dstMac: string): Buffer {
  const f = frame(spec);
  macBytes(dstMac).copy(f, 0);
  macBytes(srcMac).copy(f, 6);
  fixL4Checksum(f);
  return f.length >= 60 ? f : Buffer.concat([f, Buffer.alloc(60 - f.length)]);
}
