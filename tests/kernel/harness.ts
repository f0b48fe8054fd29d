/**
 * Kernel-test harness: the real connrate object, loaded with the test clock,
 * driven one frame at a time through BPF_PROG_TEST_RUN.
 */
import { XDP_ACTION } from '@xdp-ts/loader';
import type { DatapathConfig } from '../../src/domain/limits.js';
import { Datapath, type LoadOptions, type MapSizes } from '../../src/control/datapath.js';
import { frame, type FrameSpec } from '../helpers/frame.js';

export const APPLIANCE4 = '198.18.0.1';
export const APPLIANCE6 = '2001:db8::1';
export const CLIENT4 = '198.19.1.10';
export const CLIENT4B = '198.19.1.11';
export const CLIENT6 = '2001:db8:1:2::10';
export const FOREIGN4 = '198.18.0.99';

/** Fresh-install-like, but with TCP on too: 20/min, burst 5, all ports. */
export const BASE_CONFIG: DatapathConfig = {
  tcp: { rate: 20, ports: [] },
  udp: { rate: 20, ports: [] },
  burst: 5,
  mode: 'block',
  exempt: [],
  ipv6Prefix: 64,
  udpTimeoutSec: 30,
};

const NS = 1_000_000_000n;
/** Test time 0 sits well after boot, so "never seen" is never confused with 0. */
const CLOCK_BASE = 10_000n * NS;

export type Verdict = 'PASS' | 'DROP' | 'OTHER';

export interface Bench {
  dp: Datapath;
  /** Set the test clock, in seconds since test start (fractions allowed). */
  at(seconds: number): void;
  send(spec: FrameSpec): Verdict;
  sendRaw(data: Buffer): Verdict;
  /** Send `n` frames and count the verdicts. */
  burst(n: number, spec: (i: number) => FrameSpec): { pass: number; drop: number };
  close(): void;
}

export function openBench(config: Partial<DatapathConfig> = {}, sizes: MapSizes = {}, load: Pick<LoadOptions, 'testInsertFail' | 'testFirstSeenCollide'> = {}): Bench {
  const dp = Datapath.load({
    ...load,
    testClock: true,
    sizes: { buckets: 4096, udpFlows: 4096, prefixes: 1024, portStats: 1024, ...sizes },
  });
  dp.setLocalAddresses([APPLIANCE4, APPLIANCE6]);
  dp.applyConfig({ ...BASE_CONFIG, ...config });
  const at = (seconds: number): void => dp.setClock(CLOCK_BASE + BigInt(Math.round(seconds * 1e9)));
  at(0);
  const sendRaw = (data: Buffer): Verdict => {
    const { retval } = dp.program.testRun({ data });
    return retval === XDP_ACTION.PASS ? 'PASS' : retval === XDP_ACTION.DROP ? 'DROP' : 'OTHER';
  };
  const send = (spec: FrameSpec): Verdict => sendRaw(frame(spec));
  return {
    dp,
    at,
    send,
    sendRaw,
    burst(n, spec) {
      let pass = 0;
      let drop = 0;
      for (let i = 0; i < n; i++) {
        if (send(spec(i)) === 'PASS') pass++;
        else drop++;
      }
      return { pass, drop };
    },
    close: () => dp.close(),
  };
}

/** A new TCP connection attempt (SYN) from `src` to the appliance. */
export function syn(src: string, dport: number, sport = 40000): FrameSpec {
  return { src, dst: src.includes(':') ? APPLIANCE6 : APPLIANCE4, proto: 'tcp', sport, dport };
}

/** A UDP datagram from `src`:`sport` to the appliance's `dport`. */
export function udp(src: string, dport: number, sport = 40000): FrameSpec {
  return { src, dst: src.includes(':') ? APPLIANCE6 : APPLIANCE4, proto: 'udp', sport, dport };
}
