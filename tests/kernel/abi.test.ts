/**
 * The ABI user space reads from BTF matches what the program uses, and the
 * program is accepted by the verifier, attached natively and JIT-compiled.
 */
import { execFileSync } from 'node:child_process';
import { afterAll, describe, expect, it } from 'vitest';
import { ifIndex } from '@xdp-ts/loader';
import { COUNTER_NAMES, PROTOS } from '../../src/control/abi.js';
import { Datapath } from '../../src/control/datapath.js';

describe('ABI', () => {
  it('has a counter slot for every named counter and nothing unnamed', () => {
    const dp = Datapath.load({ sizes: { buckets: 1024, udpFlows: 1024 } });
    try {
      expect(dp.map('counters').maxEntries).toBe(1); // one struct cr_counters per CPU
      expect(dp.map('counters').valueSize).toBe(dp.abi.counterSet.size);
      expect(dp.abi.counterSet.field('n').size).toBe(COUNTER_NAMES.length * 8);
      expect(dp.abi.config.field('ports').size).toBe(PROTOS.length * 65536 / 8);
      expect(dp.map('config').valueSize).toBe(dp.abi.config.size);
      expect(dp.map('buckets').keySize).toBe(dp.abi.bucketKey.size);
      expect(dp.map('buckets').valueSize).toBe(dp.abi.bucket.size);
      expect(dp.map('udp_flows').keySize).toBe(dp.abi.flowKey.size);
      expect(dp.map('src_prefixes').keySize).toBe(dp.abi.lpmKey.size);
      expect(dp.map('port_slots').keySize).toBe(dp.abi.portKey.size);
      expect(dp.map('port_stats').valueSize).toBe(dp.abi.portStats.size);
      expect(dp.map('drop_stats').keySize).toBe(dp.abi.bucketKey.size);
      expect(dp.map('drop_stats').valueSize).toBe(dp.abi.dropStats.size);
      expect(dp.map('drop_cache').valueSize).toBe(dp.abi.dropCache.size);
      expect(dp.map('locals').valueSize).toBe(dp.abi.locals.size);
    } finally {
      dp.close();
    }
  });

  it('sets map sizes at load time, with the documented defaults', () => {
    const dp = Datapath.load();
    try {
      expect(dp.map('buckets').maxEntries).toBe(256 * 1024);
      expect(dp.map('drop_stats').maxEntries).toBe(256 * 1024);
      expect(dp.map('udp_flows').maxEntries).toBe(256 * 1024);
    } finally {
      dp.close();
    }
    const small = Datapath.load({ sizes: { buckets: 2048, udpFlows: 512 } });
    try {
      expect(small.map('buckets').maxEntries).toBe(2048);
      expect(small.map('drop_stats').maxEntries).toBe(2048);
      expect(small.map('udp_flows').maxEntries).toBe(512);
    } finally {
      small.close();
    }
  });
});

describe('attach', () => {
  const veth = `crk${process.pid % 100000}a`;
  const peer = `crk${process.pid % 100000}b`;
  afterAll(() => {
    try {
      execFileSync('ip', ['link', 'del', veth], { stdio: 'ignore' });
    } catch {
      /* already gone */
    }
  });

  it('is accepted by the verifier, attached natively to a veth, and JIT-compiled', () => {
    execFileSync('ip', ['link', 'add', veth, 'type', 'veth', 'peer', 'name', peer]);
    execFileSync('ip', ['link', 'set', veth, 'up']);
    execFileSync('ip', ['link', 'set', peer, 'up']);
    const dp = Datapath.load();
    try {
      const link = dp.program.attachXdp(ifIndex(veth), { mode: 'native' });
      const info = dp.program.info();
      expect(info.jited).toBe(true);
      expect(info.jitedLen).toBeGreaterThan(0);
      expect(link.info().ifindex).toBe(ifIndex(veth));
      const shown = JSON.parse(execFileSync('bpftool', ['-j', 'prog', 'show', 'id', String(info.id)], { encoding: 'utf8' })) as { bytes_jited?: number; name: string };
      expect(shown.name).toBe('connrate_xdp');
      expect(shown.bytes_jited).toBeGreaterThan(0);
      const xdp = execFileSync('ip', ['-d', 'link', 'show', veth], { encoding: 'utf8' });
      expect(xdp).toMatch(/xdp\b/); // "xdp" = native (driver) mode, not "xdpgeneric"
      link.detach();
      link.close();
    } finally {
      dp.close();
    }
  });
});
