/**
 * A reference classifier, written from the monitoring rules independently of the BPF
 * parser: what connrate must count a frame as. The fuzz test compares the
 * datapath's counters with it, frame by frame.
 */
import { isIP } from 'node:net';
import ipaddr from 'ipaddr.js';

export type FrameClass = 'unparsable' | 'not_monitored' | 'monitored';

export interface Judgeable {
  /** Monitored and a new connection: the only frames that may ever be dropped. */
  readonly class: FrameClass;
  readonly newConnection: boolean;
}

export interface ClassifyConfig {
  /** 16-byte forms of the local addresses, hex. */
  readonly local: ReadonlySet<string>;
  readonly tcpPorts: ReadonlySet<number> | 'all' | 'off';
  readonly udpPorts: ReadonlySet<number> | 'all' | 'off';
}

const ETH_HLEN = 14;
const VLAN_TPIDS = new Set([0x8100, 0x88a8]);
const MAX_VLANS = 2;
const MAX_EXT = 6;
const TCP = 6;
const UDP = 17;
const EXT_HOP = 0;
const EXT_ROUTING = 43;
const EXT_FRAG = 44;
const EXT_AH = 51;
const EXT_DST = 60;

export function localSet(addrs: readonly string[]): Set<string> {
  return new Set(addrs.map((a) => {
    if (isIP(a) === 0) throw new Error(`not an address: ${a}`);
    const p = ipaddr.parse(a);
    return Buffer.from((p.kind() === 'ipv4' ? (p as ipaddr.IPv4).toIPv4MappedAddress() : p).toByteArray()).toString('hex');
  }));
}

function mapped(v4: Buffer): string {
  return `00000000000000000000ffff${v4.toString('hex')}`;
}

export function classify(f: Buffer, cfg: ClassifyConfig): Judgeable {
  const no = (c: FrameClass): Judgeable => ({ class: c, newConnection: false });
  if (f.length < ETH_HLEN) return no('unparsable');
  let type = f.readUInt16BE(12);
  let off = ETH_HLEN;
  for (let i = 0; i < MAX_VLANS && VLAN_TPIDS.has(type); i++) {
    if (f.length < off + 4) return no('unparsable');
    type = f.readUInt16BE(off + 2);
    off += 4;
  }
  let proto: number;
  let l4: number;
  let dst: string;
  if (type === 0x0800) {
    if (f.length < off + 20) return no('unparsable');
    const version = f[off]! >> 4;
    const ihl = f[off]! & 0xf;
    if (version !== 4 || ihl < 5) return no('unparsable');
    const totLen = f.readUInt16BE(off + 2);
    if (totLen < ihl * 4) return no('unparsable');
    if (f.readUInt16BE(off + 6) & 0x1fff) return no('not_monitored'); // later fragment
    proto = f[off + 9]!;
    if (proto !== TCP && proto !== UDP) return no('not_monitored');
    if (totLen < ihl * 4 + (proto === TCP ? 20 : 8)) return no('unparsable');
    dst = mapped(f.subarray(off + 16, off + 20));
    l4 = off + ihl * 4;
  } else if (type === 0x86dd) {
    if (f.length < off + 40) return no('unparsable');
    if (f[off]! >> 4 !== 6) return no('unparsable');
    dst = f.subarray(off + 24, off + 40).toString('hex');
    let next = f[off + 6]!;
    let cur = off + 40;
    let walked = 0;
    for (;;) {
      if (next === TCP || next === UDP) break;
      if (walked === MAX_EXT) return no('not_monitored'); // chain too long
      if (next === EXT_HOP || next === EXT_ROUTING || next === EXT_DST || next === EXT_AH) {
        if (f.length < cur + 2) return no('unparsable');
        const len = next === EXT_AH ? (f[cur + 1]! + 2) * 4 : (f[cur + 1]! + 1) * 8;
        next = f[cur]!;
        cur += len;
      } else if (next === EXT_FRAG) {
        if (f.length < cur + 8) return no('unparsable');
        if (f.readUInt16BE(cur + 2) & 0xfff8) return no('not_monitored'); // later fragment
        next = f[cur]!;
        cur += 8;
      } else {
        return no('not_monitored');
      }
      walked++;
    }
    proto = next;
    l4 = cur;
  } else {
    return no('not_monitored');
  }
  if (f.length < l4 + (proto === TCP ? 20 : 8)) return no('unparsable');
  if (proto === TCP && f[l4 + 12]! >> 4 < 5) return no('unparsable');
  const ports = proto === TCP ? cfg.tcpPorts : cfg.udpPorts;
  const dport = f.readUInt16BE(l4 + 2);
  if (ports === 'off' || (ports !== 'all' && !ports.has(dport)) || !cfg.local.has(dst)) return no('not_monitored');
  const flags = proto === TCP ? f[l4 + 13]! : 0;
  const SYN = 0x02;
  const ACK = 0x10;
  return { class: 'monitored', newConnection: proto === UDP || ((flags & SYN) !== 0 && (flags & ACK) === 0) };
}
