/**
 * Kernel pktgen as the generator, where the running kernel has it
 * (/proc/net/pktgen inside the generator's netns). pktgen sends UDP only, so it
 * serves the UDP scenarios; the TCP ones always use the XDP generator.
 * The kernel this harness was developed on has no pktgen: this path falls back
 * to the XDP generator (with a note in the report) if anything here fails.
 */
import { existsSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import type { FrameSpec } from '../tests/helpers/frame.js';
import type { Rewrite } from './scenarios.js';
import { NET, inNs, trySh } from './topology.js';

/** Does the generator's netns see pktgen? */
export function pktgenAvailable(): boolean {
  if (!existsSync('/proc/net/pktgen')) return false; // the module is global; its /proc dir is per netns
  return trySh(['ip', 'netns', 'exec', NET.genNs, 'test', '-e', '/proc/net/pktgen/pgctrl']);
}

/** Can pktgen make this scenario's traffic? */
export function pktgenCan(spec: FrameSpec, rewrite: Rewrite): boolean {
  return spec.proto === 'udp' && !spec.src.includes(':') && (rewrite === 'fixed' || rewrite === 'sport');
}

function pg(file: string, cmd: string): void {
  inNs(NET.genNs, ['sh', '-c', `echo "${cmd}" > /proc/net/pktgen/${file}`]);
}

export async function pktgenRun(spec: FrameSpec, rewrite: Rewrite, dstMac: string, cpu: number, seconds: number): Promise<{ frames: number; elapsedNs: number }> {
  const thread = `kpktgend_${cpu}`;
  const dev = NET.genIf;
  pg(thread, 'rem_device_all');
  pg(thread, `add_device ${dev}`);
  const sport = spec.sport ?? 40000;
  for (const c of [
    'count 0', 'clone_skb 0', 'delay 0', 'burst 1',
    `pkt_size 60`,
    `dst ${spec.dst}`, `src_min ${spec.src}`, `src_max ${spec.src}`, `dst_mac ${dstMac}`,
    `udp_dst_min ${spec.dport ?? 1194}`, `udp_dst_max ${spec.dport ?? 1194}`,
    rewrite === 'sport' ? 'udp_src_min 1024' : `udp_src_min ${sport}`,
    rewrite === 'sport' ? 'udp_src_max 65535' : `udp_src_max ${sport}`,
  ]) pg(dev, c);
  const t0 = process.hrtime.bigint();
  const ctl = spawn('ip', ['netns', 'exec', NET.genNs, 'sh', '-c', 'echo start > /proc/net/pktgen/pgctrl'], { stdio: 'ignore' });
  const done = new Promise<void>((r) => ctl.once('exit', () => r()));
  await sleep(seconds * 1000);
  pg('pgctrl', 'stop');
  await done;
  const elapsedNs = Number(process.hrtime.bigint() - t0);
  const result = inNs(NET.genNs, ['cat', `/proc/net/pktgen/${dev}`]);
  const sent = /pkts-sofar:\s*(\d+)/.exec(result)?.[1];
  pg(thread, 'rem_device_all');
  if (sent === undefined) throw new Error(`pktgen: no pkts-sofar in ${dev}'s report`);
  return { frames: Number(sent), elapsedNs };
}
