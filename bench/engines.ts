/**
 * The engines, as a table: each one sets itself up on crbd (in crb-dut) and
 * reports how many packets it has seen, from its own counters.
 *
 * The three limiters enforce the same limit, taken from the same extc values:
 * R new connections per minute per (source, destination port), burst 5, on
 * TCP 443 and UDP 1194; IPv6 sources keyed by their /64. The references limit
 * nothing: XDP programs with a fixed verdict, after xdp-bench's `drop`/`pass`,
 * with `parse-ip` (bpf/xdp_ref.bpf.c: the headers connrate reads) and without
 * touching the packet at all (count only).
 */
import { fileURLToPath } from 'node:url';
import { BpfObject, type BpfMap, type Program } from '@xdp-ts/loader';
import { canonicalValue, defaults, resolve } from '../src/config/variables.js';
import type { DatapathConfig } from '../src/domain/limits.js';
import { Datapath } from '../src/control/datapath.js';
import { NET, inNs, trySh, type Topology } from './topology.js';

/** The limiters, compared with each other and with the reference of the scenario's verdict. */
export const ENGINE_NAMES = ['connrate', 'iptables-hashlimit', 'nft-meter'] as const;
export type EngineName = (typeof ENGINE_NAMES)[number];
/**
 * Fixed-verdict XDP programs. `*-parse` parse Ethernet, VLANs, IPv4/IPv6 and the
 * L4 ports like connrate and are what connrate is measured against (a drop
 * path against xdp-drop-parse, a pass path against xdp-pass-parse); the
 * no-touch ones only count, for reading the cost of the parse itself.
 */
export const REFERENCE_NAMES = ['xdp-drop-parse', 'xdp-pass-parse', 'xdp-drop', 'xdp-noop'] as const;
export type ReferenceName = (typeof REFERENCE_NAMES)[number];
export type Verdict = 'drop' | 'pass';

/** The reference each verdict is compared with, and its no-touch counterpart. */
export const REFERENCE_FOR: Readonly<Record<Verdict, { parse: ReferenceName; noTouch: ReferenceName }>> = {
  drop: { parse: 'xdp-drop-parse', noTouch: 'xdp-drop' },
  pass: { parse: 'xdp-pass-parse', noTouch: 'xdp-noop' },
};

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
  /** Packets the XDP program on crbd has run on so far: what the receive CPU handled. */
  arrived(): bigint;
  /** Engine-specific counters worth reporting (e.g. connrate's verdicts). */
  details?(): Record<string, number>;
  close(): void;
}

export interface Engine {
  readonly name: EngineName | ReferenceName;
  /** False for an engine that never passes a frame on (nothing to prime a flow with). */
  readonly passes?: boolean;
  /** One line for the report. */
  readonly what: string;
  setup(t: Topology): EngineRun;
}

const OBJ = (name: string): string => fileURLToPath(new URL(`../build/bpf/${name}.bpf.o`, import.meta.url));

/** The sum over `indexes` of a per-CPU u64 array, over every CPU but `skipCpu`. */
function sumPerCpu(map: BpfMap, indexes: readonly number[] = [0], skipCpu = -1): bigint {
  let n = 0n;
  for (const i of indexes) {
    const key = Buffer.alloc(4);
    key.writeUInt32LE(i);
    (map.lookupPerCpu(key) ?? []).forEach((v, cpu) => {
      if (cpu !== skipCpu) n += v.readBigUInt64LE(0);
    });
  }
  return n;
}

interface Counting {
  seen(): bigint;
  /** Packets the program ran on elsewhere than the receive CPU (its NAPI thread is pinned there: expected 0). */
  offRxCpu(): bigint;
  close(): void;
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
function counting(t: Topology, object: string, program: string, map: string, indexes?: readonly number[], globals: Readonly<Record<string, number>> = {}): Counting {
  const obj = BpfObject.open(OBJ(object));
  try {
    for (const [name, value] of Object.entries(globals)) obj.setGlobal(name, value);
    obj.load();
    const prog = obj.program(program);
    const m = obj.map(map);
    try {
      attach(t, prog, program);
    } finally {
      prog.close();
    }
    return {
      seen: () => sumPerCpu(m, indexes),
      offRxCpu: () => sumPerCpu(m, indexes, t.rxCpu),
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

function xdpNoop(t: Topology): Counting {
  return counting(t, 'xdp_noop', 'xdp_noop', 'packets');
}

/** A reference engine: a counting XDP program, nothing else. */
function reference(t: Topology, object: string, program: string, map: string, indexes?: readonly number[], globals?: Readonly<Record<string, number>>): EngineRun {
  const c = counting(t, object, program, map, indexes, globals);
  return { seen: c.seen, arrived: c.seen, details: () => ({ off_rx_cpu: Number(c.offRxCpu()) }), close: c.close };
}

/** xdp_ref.bpf.c's `packets`: index 0 parsed to L4, index 1 not (both are runs of the program). */
const REF_PARSED_AND_NOT = [0, 1] as const;

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
    name: 'connrate',
    what: 'bpf/connrate.bpf.c, configured from the extc values, local addresses and connected routes as the daemon sets them',
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
      const seen = (): bigint => dp.counters().seen;
      return {
        seen,
        arrived: seen,
        details: () => {
          const c = dp.counters();
          return Object.fromEntries(
            (['new_allowed', 'new_dropped', 'cache_drop', 'flow_filter_drop', 'established', 'not_monitored', 'exempt'] as const).map((k) => [k, Number(c[k] ?? 0n)]),
          );
        },
        close: () => dp.close(),
      };
    },
  },
  {
    name: 'iptables-hashlimit',
    what: 'conntrack NEW + hashlimit srcip,dstport, then DROP (behind xdp-noop, which lets redirected frames in)',
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
        arrived: pass.seen,
        details: () => ({ xdp_passed: Number(pass.seen()), off_rx_cpu: Number(pass.offRxCpu()) }),
        // the rules go with crb-dut, which every measurement deletes
        close: () => pass.close(),
      };
    },
  },
  {
    name: 'nft-meter',
    what: 'ct state new, update @set { saddr . dport limit rate over … } drop (behind xdp-noop)',
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
        arrived: pass.seen,
        details: () => ({ xdp_passed: Number(pass.seen()), off_rx_cpu: Number(pass.offRxCpu()) }),
        close: () => pass.close(), // the table goes with crb-dut
      };
    },
  },
];

export const REFERENCES: Readonly<Record<ReferenceName, Engine>> = {
  'xdp-drop-parse': {
    name: 'xdp-drop-parse',
    passes: false,
    what: 'XDP_DROP after parsing Ethernet, VLANs, IPv4/IPv6, L4 ports; a per-CPU count (xdp-bench drop, parse-ip)',
    setup: (t) => reference(t, 'xdp_ref', 'xdp_drop_parse', 'packets', REF_PARSED_AND_NOT),
  },
  'xdp-pass-parse': {
    name: 'xdp-pass-parse',
    what: 'XDP_PASS after the same parse and count (xdp-bench pass, parse-ip)',
    setup: (t) => reference(t, 'xdp_ref', 'xdp_pass_parse', 'packets', REF_PARSED_AND_NOT),
  },
  'xdp-drop': {
    name: 'xdp-drop',
    passes: false,
    what: 'XDP_DROP, packet untouched, a per-CPU count',
    setup: (t) => reference(t, 'bench_gen', 'bench_drop', 'dropped'),
  },
  'xdp-noop': {
    name: 'xdp-noop',
    what: 'XDP_PASS, packet untouched, a per-CPU count',
    setup: (t) => reference(t, 'xdp_noop', 'xdp_noop', 'packets'),
  },
};

/**
 * xdp-drop-parse made slower by `rounds` steps of arithmetic that touch no
 * memory (bpf/xdp_ref.bpf.c, xdp_drop_parse_spin): a calibration of how the
 * live drop measurement answers to a program's own time (bench/calibrate.ts).
 */
export function dropParseSpin(rounds: number): Engine {
  return {
    name: 'xdp-drop-parse',
    passes: false,
    what: `xdp-drop-parse plus ${rounds} dependent multiply-xorshift steps`,
    setup: (t) => reference(t, 'xdp_ref', 'xdp_drop_parse_spin', 'packets', REF_PARSED_AND_NOT, { spin_rounds: rounds }),
  };
}

/** Every engine and reference by name (bench:profile and the CLI options). */
export const ALL_ENGINES: readonly Engine[] = [...ENGINES, ...Object.values(REFERENCES)];

/** For the record: the rules the packet-filter engines run. */
export function engineRules(): { iptables: string; ip6tables: string; nft: string } {
  const cfg = benchConfig();
  return { iptables: hashlimitRules(cfg, false), ip6tables: hashlimitRules(cfg, true), nft: nftRuleset(cfg) };
}
