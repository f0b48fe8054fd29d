/**
 * The engines, as a table: each one sets itself up on crbd (in crb-dut) and
 * reports how many packets it has seen, from its own counters.
 *
 * All four enforce the same limit, taken from the same extc values: R new
 * connections per minute per (source, destination port), burst 5, on TCP 443
 * and UDP 1194; IPv6 sources keyed by their /64.
 */
import { fileURLToPath } from 'node:url';
import { BpfObject, type BpfMap, type Program } from '@xdp-ts/loader';
import { canonicalValue, defaults, resolve } from '../src/config/variables.js';
import type { DatapathConfig } from '../src/control/abi.js';
import { Datapath } from '../src/control/datapath.js';
import { NET, inNs, trySh, type Topology } from './topology.js';

export const ENGINE_NAMES = ['xdp-noop', 'connrate', 'iptables-hashlimit', 'nft-meter'] as const;
export type EngineName = (typeof ENGINE_NAMES)[number];
/** Not in the comparison: the fastest way to refuse a frame at all (XDP_DROP), for reading the others. */
export type ReferenceName = 'xdp-drop';

/** What connrate is configured with: extc values, as an admin would set them. */
export const EXTC: Readonly<Record<string, string>> = {
  CONNECTION_RATE_LIMIT_TCP: '20',
  CONNECTION_RATE_LIMIT_TCP_PORTS: '[ 443 ]',
  CONNECTION_RATE_LIMIT_UDP: '20',
  CONNECTION_RATE_LIMIT_UDP_PORTS: '[ 1194 ]',
  CONNECTION_RATE_LIMIT_BURST: '5',
  CONNECTION_RATE_LIMIT_MODE: 'block',
};

/** The configuration in force for every engine: validated extc values → DatapathConfig. */
export function benchConfig(): DatapathConfig {
  const values: Record<string, string> = { ...defaults() };
  for (const [name, value] of Object.entries(EXTC)) values[name] = canonicalValue('bench', name, value);
  return resolve(values);
}

/** Sizes: connrate's defaults; the other engines get tables as large. */
export const TABLE_ENTRIES = 256 * 1024;

export interface EngineRun {
  /** Packets this engine has seen so far (its own counters). */
  seen(): bigint;
  /** Engine-specific counters worth reporting (e.g. connrate's verdicts). */
  details?(): Record<string, number>;
  close(): void;
}

export interface Engine {
  readonly name: EngineName | ReferenceName;
  /** False for an engine that never passes a frame on (nothing to prime a flow with). */
  readonly passes?: boolean;
  setup(t: Topology): EngineRun;
}

const OBJ = (name: string): string => fileURLToPath(new URL(`../build/bpf/${name}.bpf.o`, import.meta.url));
const ZERO = Buffer.alloc(4);

function sumPerCpu(map: BpfMap): bigint {
  return (map.lookupPerCpu(ZERO) ?? []).reduce((s, v) => s + v.readBigUInt64LE(0), 0n);
}

/** Pin `prog`, attach it to crbd through the pin, drop the pin (the attachment holds the program). */
export function attach(t: Topology, prog: Program, name: string): void {
  const pin = `${NET.pinDir}/${name}`;
  prog.pin(pin);
  try {
    t.attachDut(pin);
  } finally {
    trySh(['rm', '-f', pin]);
  }
}

/** A counting XDP program on crbd: an engine itself, or what lets frames reach the stack. */
function counting(t: Topology, object: string, program: string, map: string): { seen(): bigint; close(): void } {
  const obj = BpfObject.open(OBJ(object));
  try {
    obj.load();
    const prog = obj.program(program);
    const m = obj.map(map);
    try {
      attach(t, prog, program);
    } finally {
      prog.close();
    }
    return {
      seen: () => sumPerCpu(m),
      close: () => {
        m.close();
        obj.close();
      },
    };
  } catch (e) {
    obj.close();
    throw e;
  }
}

function xdpNoop(t: Topology): { seen(): bigint; close(): void } {
  return counting(t, 'xdp_noop', 'xdp_noop', 'packets');
}

// ------------------------------------------------------------------ iptables

function hashlimitRules(cfg: DatapathConfig, v6: boolean): string {
  const mask = v6 ? ` --hashlimit-srcmask ${cfg.ipv6Prefix}` : '';
  const lines = ['*filter', ':CRB_IN - [0:0]', '-A INPUT -j CRB_IN'];
  for (const [proto, limit] of [['tcp', cfg.tcp], ['udp', cfg.udp]] as const) {
    if (!limit.rate) continue;
    const ports = limit.ports.length ? limit.ports : [undefined];
    for (const port of ports) {
      const match = `-p ${proto}${proto === 'tcp' ? ' --syn' : ''}${port ? ` --dport ${port}` : ''} -m conntrack --ctstate NEW`;
      const name = `crb_${proto}${port ?? 'all'}`;
      lines.push(
        `-A CRB_IN ${match} -m hashlimit --hashlimit-name ${name} --hashlimit-mode srcip,dstport${mask} ` +
          `--hashlimit-upto ${limit.rate}/min --hashlimit-burst ${cfg.burst} ` +
          `--hashlimit-htable-size ${TABLE_ENTRIES / 4} --hashlimit-htable-max ${TABLE_ENTRIES} -j ACCEPT`,
        `-A CRB_IN ${match} -j DROP`,
      );
    }
  }
  lines.push('COMMIT', '');
  return lines.join('\n');
}

function iptablesSeen(): bigint {
  let n = 0n;
  for (const cmd of ['iptables', 'ip6tables']) {
    const out = inNs(NET.dutNs, [cmd, '-L', 'INPUT', '-v', '-x', '-n']);
    const row = out.split('\n').find((l) => / CRB_IN /.test(l));
    if (!row) throw new Error(`${cmd}: no CRB_IN jump in INPUT`);
    n += BigInt(row.trim().split(/\s+/)[0]!);
  }
  return n;
}

// ------------------------------------------------------------------ nftables

function nftRuleset(cfg: DatapathConfig): string {
  const sets: string[] = [];
  const rules: string[] = [];
  const mask6 = ipv6Mask(cfg.ipv6Prefix);
  for (const [proto, limit] of [['tcp', cfg.tcp], ['udp', cfg.udp]] as const) {
    if (!limit.rate) continue;
    const newConn = proto === 'tcp' ? 'tcp flags & (fin|syn|rst|ack) == syn ' : '';
    const port = limit.ports.length ? `${proto} dport { ${limit.ports.join(', ')} } ` : '';
    for (const fam of ['4', '6'] as const) {
      const set = `${proto}${fam}`;
      const type = fam === '4' ? 'ipv4_addr' : 'ipv6_addr';
      const src = fam === '4' ? 'ip saddr' : `ip6 saddr & ${mask6}`;
      sets.push(`  set ${set} { type ${type} . inet_service; size ${TABLE_ENTRIES}; flags dynamic,timeout; timeout 60s; }`);
      rules.push(
        `    meta nfproto ipv${fam} meta l4proto ${proto} ${port}${newConn}ct state new ` +
          `update @${set} { ${src} . ${proto} dport limit rate over ${limit.rate}/minute burst ${cfg.burst} packets } drop`,
      );
    }
  }
  return [
    'table inet crb {',
    ...sets,
    '  chain input {',
    '    type filter hook input priority filter; policy accept;',
    '    counter',
    ...rules,
    '  }',
    '}',
    '',
  ].join('\n');
}

function ipv6Mask(bits: number): string {
  const words: string[] = [];
  for (let i = 0; i < 8; i++) {
    const b = Math.max(0, Math.min(16, bits - i * 16));
    words.push(((0xffff << (16 - b)) & 0xffff).toString(16));
  }
  return words.join(':');
}

function nftSeen(): bigint {
  const j = JSON.parse(inNs(NET.dutNs, ['nft', '-j', 'list', 'chain', 'inet', 'crb', 'input'])) as {
    nftables: { rule?: { expr: { counter?: { packets: number } }[] } }[];
  };
  const first = j.nftables.find((e) => e.rule)?.rule;
  const c = first?.expr[0]?.counter;
  if (!c) throw new Error('nft: no counter in the first rule of inet crb input');
  return BigInt(c.packets);
}

// ------------------------------------------------------------------ the table

export const ENGINES: readonly Engine[] = [
  {
    name: 'xdp-noop',
    setup: (t) => xdpNoop(t),
  },
  {
    name: 'connrate',
    setup: (t) => {
      const dp = Datapath.load();
      try {
        dp.applyConfig(benchConfig());
        dp.setLocalAddresses([NET.dut4, NET.dut6]);
        dp.setRoutes([NET.link4, NET.link6]); // what the daemon would sync: the connected routes
        attach(t, dp.program, 'connrate_xdp');
      } catch (e) {
        dp.close();
        throw e;
      }
      return {
        seen: () => dp.counters().seen,
        details: () => {
          const c = dp.counters();
          return Object.fromEntries(
            (['new_allowed', 'new_dropped', 'established', 'not_monitored', 'exempt'] as const).map((k) => [k, Number(c[k] ?? 0n)]),
          );
        },
        close: () => dp.close(),
      };
    },
  },
  {
    name: 'iptables-hashlimit',
    setup: (t) => {
      const pass = xdpNoop(t); // the veth needs an XDP program for redirected frames; noop passes them up
      try {
        const cfg = benchConfig();
        inNs(NET.dutNs, ['iptables-restore', '--noflush'], { input: hashlimitRules(cfg, false) });
        inNs(NET.dutNs, ['ip6tables-restore', '--noflush'], { input: hashlimitRules(cfg, true) });
      } catch (e) {
        pass.close();
        throw e;
      }
      return {
        seen: iptablesSeen,
        details: () => ({ xdp_passed: Number(pass.seen()) }),
        close: () => {
          for (const cmd of ['iptables', 'ip6tables']) {
            trySh(['ip', 'netns', 'exec', NET.dutNs, cmd, '-D', 'INPUT', '-j', 'CRB_IN']);
            trySh(['ip', 'netns', 'exec', NET.dutNs, cmd, '-F', 'CRB_IN']);
            trySh(['ip', 'netns', 'exec', NET.dutNs, cmd, '-X', 'CRB_IN']);
          }
          pass.close();
        },
      };
    },
  },
  {
    name: 'nft-meter',
    setup: (t) => {
      const pass = xdpNoop(t);
      try {
        inNs(NET.dutNs, ['nft', '-f', '-'], { input: nftRuleset(benchConfig()) });
      } catch (e) {
        pass.close();
        throw e;
      }
      return {
        seen: nftSeen,
        details: () => ({ xdp_passed: Number(pass.seen()) }),
        close: () => {
          trySh(['ip', 'netns', 'exec', NET.dutNs, 'nft', 'delete', 'table', 'inet', 'crb']);
          pass.close();
        },
      };
    },
  },
];

export const REFERENCE: Engine = {
  name: 'xdp-drop',
  passes: false,
  setup: (t) => counting(t, 'bench_gen', 'bench_drop', 'dropped'),
};

/** For the record: the rules the packet-filter engines run. */
export function engineRules(): { iptables: string; ip6tables: string; nft: string } {
  const cfg = benchConfig();
  return { iptables: hashlimitRules(cfg, false), ip6tables: hashlimitRules(cfg, true), nft: nftRuleset(cfg) };
}
