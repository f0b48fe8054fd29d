/**
 * The traffic every engine is measured on. One frame per scenario, rewritten
 * per packet by the generator (bpf/bench_gen.bpf.c) where the scenario needs
 * new flows or new sources.
 */
import type { FrameSpec } from '../tests/helpers/frame.js';
import type { Verdict } from './engines.js';
import { NET } from './topology.js';

/** enum gen_rewrite of bpf/bench_gen.bpf.c */
export const REWRITE = { fixed: 0, sport: 1, spoof6: 2 } as const;
export type Rewrite = keyof typeof REWRITE;

export const SOURCE4 = '198.19.0.10';
/** Rewritten per packet: bits 32..63 random, so every packet comes from its own /64 (2^32 of them). */
export const SOURCE6 = '2001:db8:1:1::1';

export const TCP_PORT = 443;
export const UDP_PORT = 1194;
export const OTHER_PORT = 8080;

export interface Scenario {
  readonly name: string;
  readonly what: string;
  readonly spec: FrameSpec;
  readonly rewrite: Rewrite;
  /**
   * What connrate does with (nearly) every packet: `drop` scenarios are read in
   * Mpps against xdp-drop-parse, `pass` scenarios in Mpps and in receive-CPU
   * ns per packet below saturation against xdp-pass-parse.
   */
  readonly verdict: Verdict;
  /** Establish the flow before measuring: one frame, answered by a UDP server in the appliance. */
  readonly prime?: boolean;
}

export const SCENARIOS: readonly Scenario[] = [
  {
    name: 'syn-flood-one-source',
    verdict: 'drop',
    what: `TCP SYNs from ${SOURCE4} to :${TCP_PORT}, a new source port each`,
    spec: { src: SOURCE4, dst: NET.dut4, proto: 'tcp', sport: 1024, dport: TCP_PORT },
    rewrite: 'sport',
  },
  {
    name: 'udp-flood-one-source',
    verdict: 'drop',
    what: `UDP from ${SOURCE4} to :${UDP_PORT}, a new flow (source port) each`,
    spec: { src: SOURCE4, dst: NET.dut4, proto: 'udp', sport: 1024, dport: UDP_PORT, payload: 18 },
    rewrite: 'sport',
  },
  {
    name: 'spoofed-syn-flood',
    verdict: 'pass',
    what: `TCP SYNs to [${NET.dut6}]:${TCP_PORT}, each from a random /64 of 2001:db8::/32 (2^32 sources): every source is new, its SYN admitted and passed`,
    spec: { src: SOURCE6, dst: NET.dut6, proto: 'tcp', sport: 40000, dport: TCP_PORT },
    rewrite: 'spoof6',
  },
  {
    name: 'established-udp',
    verdict: 'pass',
    what: `UDP of one flow ${SOURCE4}:40000 → :${UDP_PORT}, answered once before measuring`,
    spec: { src: SOURCE4, dst: NET.dut4, proto: 'udp', sport: 40000, dport: UDP_PORT, payload: 18 },
    rewrite: 'fixed',
    prime: true,
  },
  {
    name: 'not-monitored',
    verdict: 'pass',
    what: `TCP SYNs from ${SOURCE4} to :${OTHER_PORT} (not in the port list), a new source port each`,
    spec: { src: SOURCE4, dst: NET.dut4, proto: 'tcp', sport: 1024, dport: OTHER_PORT },
    rewrite: 'sport',
  },
];
