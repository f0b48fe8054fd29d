import { existsSync } from 'node:fs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  BpfError, BpfMap, BpfObject, KeyExistsError, KeyNotExistError, MAP_TYPE, MapBatchCursor, MapFullError, numPossibleCpus,
} from '../src/index.js';
import { compileFixtures, packet, u32, u64, type Fixtures } from './helpers.js';

let fx: Fixtures;
let obj: BpfObject;
const opened: { close(): void }[] = [];
function track<T extends { close(): void }>(x: T): T {
  opened.push(x);
  return x;
}

beforeAll(() => {
  fx = compileFixtures('map');
  obj = BpfObject.open(fx.test);
  obj.setMaxEntries('xtl_hash', 16384);
  obj.load();
});
afterEach(() => {
  for (const x of opened.splice(0)) x.close();
});
afterAll(() => {
  obj?.close();
  fx.cleanup();
});

function lpmKey(prefixlen: number, addr: [number, number, number, number]): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32LE(prefixlen, 0);
  Buffer.from(addr).copy(b, 4);
  return b;
}

describe('BpfMap element operations', () => {
  it('describes itself', () => {
    const m = track(obj.map('xtl_hash'));
    expect(m.name).toBe('xtl_hash');
    expect(m.type).toBe(MAP_TYPE.HASH);
    expect([m.keySize, m.valueSize, m.maxEntries, m.perCpu]).toEqual([4, 8, 16384, false]);
    expect(m.fd).toBeGreaterThan(2);
    const info = m.info();
    expect(info).toMatchObject({ name: 'xtl_hash', type: MAP_TYPE.HASH, keySize: 4, valueSize: 8, maxEntries: 16384, flags: 0 });
    expect(info.id).toBeGreaterThan(0);
  });

  it('does CRUD with update flags and typed errors', () => {
    const m = track(obj.map('xtl_stats'));
    const key = Buffer.from([198, 18, 0, 1, 0, 80, 6, 0]);
    const val = Buffer.alloc(32, 7);
    expect(m.lookup(key)).toBeUndefined();
    expect(m.delete(key)).toBe(false);
    expect(() => m.update(key, val, 'exist')).toThrow(KeyNotExistError);
    m.update(key, val, 'noexist');
    expect(m.lookup(key)).toEqual(val);
    let dup: unknown;
    try {
      m.update(key, val, 'noexist');
    } catch (e) {
      dup = e;
    }
    expect(dup).toBeInstanceOf(KeyExistsError);
    expect((dup as BpfError).code).toBe('EEXIST');
    expect((dup as BpfError).message).toBe('BpfMap.update(xtl_stats): key already exists (EEXIST)');
    m.update(key, Buffer.alloc(32, 9), 'exist');
    expect(m.lookup(key)).toEqual(Buffer.alloc(32, 9));
    expect(m.delete(key)).toBe(true);
    expect(m.lookup(key)).toBeUndefined();
  });

  it('throws MapFullError when a hash map is full', () => {
    const m = track(obj.map('xtl_stats')); // max_entries 4
    for (let i = 0; i < 4; i++) m.update(Buffer.from([i, 0, 0, 0, 0, 0, 0, 0]), Buffer.alloc(32));
    let full: unknown;
    try {
      m.update(Buffer.from([9, 0, 0, 0, 0, 0, 0, 0]), Buffer.alloc(32));
    } catch (e) {
      full = e;
    }
    expect(full).toBeInstanceOf(MapFullError);
    expect((full as BpfError).message).toBe('BpfMap.update(xtl_stats): map is full (E2BIG)');
    expect((full as BpfError).errno).toBe(7);
    // existing keys can still be updated
    m.update(Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]), Buffer.alloc(32, 1));
    for (const k of [...m.keys()]) m.delete(k);
    expect([...m.keys()]).toEqual([]);
  });

  it('checks key and value sizes before calling the kernel', () => {
    const m = track(obj.map('xtl_hash'));
    expect(() => m.lookup(Buffer.alloc(3))).toThrow(/key must be 4 bytes, got 3 \(EINVAL\)/);
    expect(() => m.update(u32(1), Buffer.alloc(4))).toThrow(/value must be 8 bytes, got 4/);
    expect(() => m.update(u32(1), u64(1), 'bogus' as 'any')).toThrow(TypeError);
  });

  it('handles per-CPU values', () => {
    const ncpu = numPossibleCpus();
    expect(ncpu).toBeGreaterThanOrEqual(1);
    const m = track(obj.map('xtl_percpu'));
    expect(m.perCpu).toBe(true);
    expect(m.valueBufferSize).toBe(8 * ncpu);
    expect(m.cpuStride).toBe(8);
    // one value replicated to every CPU
    m.update(u32(1), u64(5));
    expect(m.lookupPerCpu(u32(1))).toEqual(Array.from({ length: ncpu }, () => u64(5)));
    expect(m.lookup(u32(1))?.length).toBe(8 * ncpu);
    // the full concatenation
    const all = Buffer.concat(Array.from({ length: ncpu }, (_, i) => u64(i + 1)));
    m.update(u32(1), all);
    expect(m.lookup(u32(1))).toEqual(all);
    expect(() => m.update(u32(1), Buffer.alloc(3))).toThrow(BpfError);
    expect(() => track(obj.map('xtl_hash')).lookupPerCpu(u32(0))).toThrow(/not a per-CPU map/);

    // the program counts packets in slot 0 of whichever CPU ran it
    m.update(u32(0), u64(0));
    const prog = track(obj.program('xtl_prog'));
    prog.testRun({ data: packet(), repeat: 250 });
    const sum = (m.lookupPerCpu(u32(0)) ?? []).reduce((s, b) => s + b.readBigUInt64LE(0), 0n);
    expect(sum).toBe(250n);

    // in a batch: entry i's value on each CPU, in place
    m.update(u32(1), all);
    const b = m.batchLookup(new MapBatchCursor(), 2);
    expect(b.cpuStride).toBe(8);
    const i = [0, 1].find((j) => b.key(j).readUInt32LE(0) === 1)!;
    expect(Array.from({ length: ncpu }, (_, cpu) => b.values.readBigUInt64LE(b.valueAt(i, cpu)))).toEqual(Array.from({ length: ncpu }, (_, cpu) => BigInt(cpu + 1)));
    expect(b.key(i)).toEqual(b.keys.subarray(b.keyAt(i), b.keyAt(i) + m.keySize));
  });
});

describe('BpfMap iteration', () => {
  const N = 10_000;

  it('walks 10k entries with batchLookup and a cursor, in contiguous batches', () => {
    const m = track(obj.map('xtl_hash'));
    for (let i = 0; i < N; i++) m.update(u32(i), u64(i * 3));
    const cursor = new MapBatchCursor();
    const seen = new Map<number, bigint>();
    let calls = 0;
    let sum = 0n;
    for (;;) {
      const r = m.batchLookup(cursor, 1000);
      calls++;
      expect(r.count).toBeLessThanOrEqual(1000);
      expect([r.keyStride, r.valueStride, r.cpuStride]).toEqual([m.keySize, m.valueBufferSize, m.valueBufferSize]);
      expect(r.keys.length).toBeGreaterThanOrEqual(r.count * m.keySize);
      expect(r.values.length).toBeGreaterThanOrEqual(r.count * m.valueBufferSize);
      for (let i = 0; i < r.count; i++) {
        seen.set(r.key(i).readUInt32LE(0), r.value(i).readBigUInt64LE(0));
        sum += r.values.readBigUInt64LE(r.valueAt(i)); // in place, no Buffer per entry
      }
      if (r.done) break;
      expect(calls).toBeLessThan(100);
    }
    expect(calls).toBeGreaterThanOrEqual(10);
    expect(seen.size).toBe(N);
    for (const [k, v] of seen) expect(v).toBe(BigInt(k * 3));
    expect(sum).toBe(3n * BigInt((N * (N - 1)) / 2));
    // a finished cursor stays finished
    const after = m.batchLookup(cursor, 10);
    expect([after.count, after.done]).toEqual([0, true]);
    expect(() => m.batchLookup(cursor, 0)).toThrow(TypeError);
    expect(m.count()).toBe(N);
    expect(track(obj.map('xtl_devmap')).count()).toBe(0); // no batch support: walks keys
  });

  it('iterates entries() and keys()', () => {
    const m = track(obj.map('xtl_hash'));
    const entries = [...m.entries(512)];
    expect(entries.length).toBe(N);
    expect(new Set(entries.map(([k]) => k.readUInt32LE(0))).size).toBe(N);
    for (const [k, v] of entries) expect(v.readBigUInt64LE(0)).toBe(BigInt(k.readUInt32LE(0) * 3));
    expect([...m.keys()].length).toBe(N);
    // tiny batches still work (ENOSPC on a big bucket grows the batch)
    expect([...m.entries(1)].length).toBe(N);
    for (const k of [...m.keys()]) m.delete(k);
    expect([...m.entries()]).toEqual([]);
  });

  it('walks an LPM trie (batched on newer kernels)', () => {
    const m = track(obj.map('xtl_lpm'));
    expect(m.type).toBe(MAP_TYPE.LPM_TRIE);
    m.update(lpmKey(16, [198, 18, 0, 0]), u32(1));
    m.update(lpmKey(24, [198, 18, 7, 0]), u32(2));
    const got = [...m.entries()].map(([k, v]) => [k.readUInt32LE(0), v.readUInt32LE(0)]);
    expect(got.sort()).toEqual([[16, 1], [24, 2]]);
    // longest-prefix match
    expect(m.lookup(lpmKey(32, [198, 18, 7, 9]))?.readUInt32LE(0)).toBe(2);
    expect(m.lookup(lpmKey(32, [198, 18, 9, 9]))?.readUInt32LE(0)).toBe(1);
    expect(m.lookup(lpmKey(32, [198, 19, 0, 1]))).toBeUndefined();
  });

  it('falls back to get_next_key + lookup where batch ops are unsupported', () => {
    const m = track(obj.map('xtl_devmap'));
    expect(m.type).toBe(MAP_TYPE.DEVMAP);
    m.update(u32(0), u32(1)); // ifindex 1: lo
    m.update(u32(2), u32(1));
    m.update(u32(3), u32(1));
    // the same cursor API, `count` entries at a time
    const cursor = new MapBatchCursor();
    const first = m.batchLookup(cursor, 2);
    expect([first.count, first.done]).toEqual([2, false]);
    const rest = m.batchLookup(cursor, 2);
    expect([rest.count, rest.done]).toEqual([1, true]);
    const keys = [first.key(0), first.key(1), rest.key(0)].map((k) => k.readUInt32LE(0));
    expect(keys.sort()).toEqual([0, 2, 3]);
    const got = [...m.entries()].map(([k, v]) => [k.readUInt32LE(0), v.readUInt32LE(0)]);
    expect(got.sort()).toEqual([[0, 1], [2, 1], [3, 1]]);
    expect(m.count()).toBe(3);
  });

  it('batches per-CPU arrays with raw concatenated values', () => {
    const m = track(obj.map('xtl_percpu'));
    const entries = [...m.entries()];
    expect(entries.length).toBe(2);
    for (const [, v] of entries) expect(v.length).toBe(m.valueBufferSize);
  });
});

describe('BpfMap pins and sharing', () => {
  it('pins and reopens by path and by id', () => {
    const m = track(obj.map('xtl_hash'));
    const path = `${fx.pinDir}/hash`;
    m.pin(path);
    expect(existsSync(path)).toBe(true);
    const again = track(BpfMap.fromPinned(path));
    expect(again.info().id).toBe(m.info().id);
    expect(again.name).toBe('xtl_hash');
    again.update(u32(42), u64(4242));
    expect(m.lookup(u32(42))?.readBigUInt64LE(0)).toBe(4242n);
    const byId = track(BpfMap.fromId(m.info().id));
    expect(byId.lookup(u32(42))?.readBigUInt64LE(0)).toBe(4242n);
    m.delete(u32(42));
    expect(() => m.pin(path)).toThrow(/already exists/);

    let missing: unknown;
    try {
      BpfMap.fromPinned(`${fx.pinDir}/nope`);
    } catch (e) {
      missing = e;
    }
    expect(missing).toBeInstanceOf(BpfError);
    expect((missing as BpfError).message).toMatch(/no such file: is it loaded\? \(ENOENT\)$/);
    expect(() => BpfMap.fromId(0x7fff_fff0)).toThrow(/ENOENT/);
  });

  it('refuses a pinned program as a map', () => {
    const prog = track(obj.program('xtl_prog'));
    prog.pin(`${fx.pinDir}/prog`);
    expect(() => BpfMap.fromPinned(`${fx.pinDir}/prog`)).toThrow(/not a BPF map \(it is a prog\)/);
  });

  it('shares maps between objects with reuseMap and setPinPath', () => {
    const shared = track(obj.map('xtl_hash'));
    const b = BpfObject.open(fx.test);
    b.setMaxEntries('xtl_hash', 16384);
    b.reuseMap('xtl_hash', shared);
    b.load();
    const viaB = track(b.map('xtl_hash'));
    expect(viaB.info().id).toBe(shared.info().id);
    shared.update(u32(7), u64(77));
    expect(viaB.lookup(u32(7))?.readBigUInt64LE(0)).toBe(77n);
    b.close();
    // setPinPath: the first object pins, the second reuses the pin
    const pin = `${fx.pinDir}/stats`;
    const c = BpfObject.open(fx.test);
    c.setPinPath('xtl_stats', pin);
    c.load();
    expect(existsSync(pin)).toBe(true);
    const d = BpfObject.open(fx.test);
    d.setPinPath('xtl_stats', pin);
    d.load();
    const cm = track(c.map('xtl_stats'));
    const dm = track(d.map('xtl_stats'));
    expect(dm.info().id).toBe(cm.info().id);
    c.close();
    d.close();
    // an incompatible pinned map is refused
    const e = BpfObject.open(fx.test);
    e.setMaxEntries('xtl_stats', 8);
    e.setPinPath('xtl_stats', pin);
    expect(() => e.load()).toThrow(BpfError);
    e.close();
  });
});
