/**
 * The datapath's ABI: the committed generated module (src/control/datapath.gen.ts)
 * is what the built object generates and covers every struct and enum of
 * bpf/connrate.h; the program's maps match it; pins made by another build
 * are refused with guidance. And the program is accepted by the verifier,
 * attached natively and JIT-compiled.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, rmdirSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { generate, ifIndex } from '@xdp-ts/loader';
import { COUNTER_NAMES } from '../../src/control/abi.js';
import { Datapath, IncompatiblePinsError, defaultObjectPath } from '../../src/control/datapath.js';
import * as gen from '../../src/control/datapath.gen.js';
import { PinDir } from '../../src/control/pins.js';
import { PROTOS } from '../../src/domain/limits.js';

const ROOT = new URL('../../', import.meta.url);

describe('ABI', () => {
  it('the committed generated module is what the built object generates', () => {
    const committed = readFileSync(new URL('src/control/datapath.gen.ts', ROOT), 'utf8');
    expect(generate(defaultObjectPath(), { types: ['cr_event'] })).toBe(committed);
  });

  it('the generated layouts, and so the ABI fingerprint, cover every struct and enum of connrate.h', () => {
    const header = readFileSync(new URL('bpf/connrate.h', ROOT), 'utf8');
    const declared = [...header.matchAll(/^(struct|enum) (cr_\w+) \{/gm)].map((m) => `${m[1]} ${m[2]}`);
    expect(declared.length).toBeGreaterThan(20);
    const described = gen.LAYOUT.split('\n').map((l) => l.split(' ').slice(0, 2).join(' '));
    expect(described).toEqual(expect.arrayContaining(declared));
  });

  it('has a counter slot for every named counter and nothing unnamed', () => {
    const dp = Datapath.load({ sizes: { buckets: 1024, udpFlows: 1024 } });
    try {
      expect(dp.maps.counters.raw.maxEntries).toBe(1); // one struct cr_counters per CPU
      expect(gen.CrCounters.zero().n).toHaveLength(COUNTER_NAMES.length);
      expect(COUNTER_NAMES.length).toBe(gen.CrCounter.CR_CNT_COUNT);
      expect(gen.CrConfig.zero().ports).toHaveLength(PROTOS.length);
      expect(gen.CrConfig.zero().ports.flat()).toHaveLength(PROTOS.length * 65536 / 64);
      expect(dp.maps.buckets.raw.keySize).toBe(gen.CrBucketKey.size);
      expect(dp.maps.dropStats.raw.valueSize).toBe(gen.CrDropStats.size);
      expect(dp.abiFingerprint()).toBe(gen.LAYOUT_SHA256);
    } finally {
      dp.close();
    }
  });

  it('sets map sizes at load time, with the documented defaults', () => {
    const dp = Datapath.load();
    try {
      expect(dp.maps.buckets.raw.maxEntries).toBe(256 * 1024);
      expect(dp.maps.dropStats.raw.maxEntries).toBe(256 * 1024);
      expect(dp.maps.udpFlows.raw.maxEntries).toBe(256 * 1024);
    } finally {
      dp.close();
    }
    const small = Datapath.load({ sizes: { buckets: 2048, udpFlows: 512 } });
    try {
      expect(small.maps.buckets.raw.maxEntries).toBe(2048);
      expect(small.maps.dropStats.raw.maxEntries).toBe(2048);
      expect(small.maps.udpFlows.raw.maxEntries).toBe(512);
    } finally {
      small.close();
    }
  });
});

describe('pins of another build', () => {
  const pins = new PinDir(`/sys/fs/bpf/crk-abi-${process.pid}`);
  afterAll(() => {
    pins.unpinAll();
    for (const d of [pins.links, pins.maps, pins.dir]) rmdirSync(d, { recursive: false });
  });

  it('are refused, by load and by open, naming the fingerprints and what to do', () => {
    pins.ensure();
    Datapath.load({ pins }).close();
    const doctor = (sha256: Buffer): void => {
      const m = gen.maps.abiId.fromPinned(pins.mapPin(gen.maps.abiId.name));
      try {
        m.update(0, { sha256 });
      } finally {
        m.close();
      }
    };
    doctor(Buffer.alloc(32, 0xab)); // what a build with other layouts (e.g. with log_anonymize in cr_config) wrote
    const refusal = new RegExp(`the datapath pinned at ${pins.dir} was made by an incompatible connrate build \\(ABI fingerprint abababababab…, this build has ${gen.LAYOUT_SHA256.slice(0, 12)}…\\); run "connrate detach" to remove it`);
    expect(() => Datapath.load({ pins })).toThrow(IncompatiblePinsError);
    expect(() => Datapath.load({ pins })).toThrow(refusal);
    expect(() => Datapath.open('status', pins)).toThrow(refusal);
    // the pins are untouched: with the fingerprint back, this build adopts them
    doctor(Buffer.from(gen.LAYOUT_SHA256, 'hex'));
    Datapath.open('status', pins).close();
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
