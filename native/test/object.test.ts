import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BpfError, BpfObject, MAP_TYPE, PermissionError, VerifierError, XDP_ACTION } from '../src/index.js';
import { compileFixtures, packet, u32, type Fixtures } from './helpers.js';

let fx: Fixtures;
beforeAll(() => {
  fx = compileFixtures('object');
});
afterAll(() => fx.cleanup());

describe('BpfObject before load', () => {
  it('lists maps (including internal ones) and programs', () => {
    const obj = BpfObject.open(fx.test);
    try {
      expect(obj.loaded).toBe(false);
      expect(obj.path).toBe(fx.test);
      expect(obj.mapNames()).toEqual(
        expect.arrayContaining(['xtl_hash', 'xtl_stats', 'xtl_percpu', 'xtl_lpm', 'xtl_events', 'xtl_test.rodata', 'xtl_test.data', 'xtl_test.bss']),
      );
      expect(obj.programNames().sort()).toEqual(['xtl_drop', 'xtl_prog', 'xtl_record']);
    } finally {
      obj.close();
    }
  });

  it('describes a map before load, with the size set by setMaxEntries', () => {
    const obj = BpfObject.open(fx.test);
    try {
      const spec = obj.mapSpec('xtl_hash');
      expect(spec).toMatchObject({ name: 'xtl_hash', type: MAP_TYPE.HASH, internal: false });
      expect(spec.keySize).toBeGreaterThan(0);
      obj.setMaxEntries('xtl_hash', 77);
      expect(obj.mapSpec('xtl_hash').maxEntries).toBe(77);
      expect(obj.mapSpec('xtl_test.rodata').internal).toBe(true);
      expect(() => obj.mapSpec('nope')).toThrow(/nope/);
    } finally {
      obj.close();
    }
  });

  it('introspects BTF structs and enums, before and after load', () => {
    const obj = BpfObject.open(fx.test);
    try {
      const expected = {
        name: 'xtl_val',
        size: 32,
        members: [
          { name: 'packets', offset: 0, size: 8 },
          { name: 'flags', offset: 8, size: 12 },
          { name: 'inner', offset: 20, size: 4 },
          { name: 'bytes', offset: 24, size: 8 },
        ],
      };
      expect(obj.btfStruct('xtl_val')).toEqual(expected);
      expect(obj.btfStruct('xtl_key').size).toBe(8);
      expect(obj.btfEnum('xtl_color')).toEqual(new Map([['XTL_RED', 1], ['XTL_GREEN', 2], ['XTL_BLUE', 40]]));
      expect(() => obj.btfStruct('nope')).toThrow(/no struct or union named "nope"/);
      expect(() => obj.btfEnum('nope')).toThrow(BpfError);
      obj.load();
      expect(obj.btfStruct('xtl_val')).toEqual(expected);
    } finally {
      obj.close();
    }
  });

  it('checks setGlobal names, types and sizes', () => {
    const obj = BpfObject.open(fx.test);
    try {
      const err = (f: () => void): BpfError => {
        try {
          f();
        } catch (e) {
          if (e instanceof BpfError) return e;
          throw e;
        }
        throw new Error('did not throw');
      };
      expect(err(() => obj.setGlobal('no_such_var', 1)).code).toBe('ENOENT');
      expect(err(() => obj.setGlobal('xtl_verdict', true)).message).toMatch(/1-byte/); // u32
      expect(err(() => obj.setGlobal('xtl_verdict', 1n)).message).toMatch(/8-byte/);
      expect(err(() => obj.setGlobal('xtl_verdict', -1)).code).toBe('EINVAL'); // unsigned
      expect(err(() => obj.setGlobal('xtl_verdict', 2 ** 32)).code).toBe('EINVAL');
      expect(err(() => obj.setGlobal('xtl_verdict', 1.5)).code).toBe('EINVAL');
      expect(err(() => obj.setGlobal('xtl_verdict', Buffer.alloc(3))).code).toBe('EINVAL');
      expect(err(() => obj.setGlobal('xtl_signed', 40000)).code).toBe('EINVAL');
      // accepted
      obj.setGlobal('xtl_verdict', XDP_ACTION.DROP);
      obj.setGlobal('xtl_verdict', Buffer.from([2, 0, 0, 0]));
      obj.setGlobal('xtl_signed', -300);
      obj.setGlobal('xtl_magic', 0xffff_ffff_ffff_ffffn);
      obj.setGlobal('xtl_magic', 12);
      obj.setGlobal('xtl_report', true);
      obj.setGlobal('xtl_color', 2);
      obj.setGlobal('xtl_data_var', 9); // .data
      obj.setGlobal('xtl_seq', 100n); // .bss
      obj.setMaxEntries('xtl_hash', 1000);
      expect(err(() => obj.setMaxEntries('nope', 1)).code).toBe('ENOENT');
      obj.load();
      expect(obj.loaded).toBe(true);
      expect(err(() => obj.setGlobal('xtl_verdict', 1)).code).toBe('EBUSY');
      expect(err(() => obj.setMaxEntries('xtl_hash', 5)).code).toBe('EBUSY');
      expect(err(() => obj.load()).code).toBe('EBUSY');

      const hash = obj.map('xtl_hash');
      expect(hash.maxEntries).toBe(1000);
      hash.close();
      // .data and .bss are plain array maps with one element
      const data = obj.map('xtl_test.data');
      expect(data.type).toBe(MAP_TYPE.ARRAY);
      expect(data.lookup(u32(0))?.readUInt32LE(0)).toBe(9);
      data.close();
      const bss = obj.map('xtl_test.bss');
      expect(bss.lookup(u32(0))?.readBigUInt64LE(0)).toBe(100n);
      bss.close();
      const rodata = obj.map('xtl_test.rodata');
      const ro = rodata.lookup(u32(0));
      rodata.close();
      expect(ro).toBeDefined();
    } finally {
      obj.close();
    }
  });

  it('rodata globals change program behaviour', () => {
    for (const [verdict, color, want] of [
      [XDP_ACTION.PASS, 1, XDP_ACTION.PASS],
      [XDP_ACTION.TX, 1, XDP_ACTION.TX],
      [XDP_ACTION.PASS, 40, XDP_ACTION.DROP], // XTL_BLUE drops
    ] as const) {
      const obj = BpfObject.open(fx.test);
      obj.setGlobal('xtl_verdict', verdict);
      obj.setGlobal('xtl_color', color);
      obj.load();
      const prog = obj.program('xtl_prog');
      expect(prog.testRun({ data: packet() }).retval).toBe(want);
      prog.close();
      obj.close();
    }
  });
});

describe('BpfObject load failures and lifetime', () => {
  it('throws VerifierError with the verifier log', () => {
    const obj = BpfObject.open(fx.bad);
    try {
      let caught: unknown;
      try {
        obj.load();
      } catch (e) {
        caught = e;
      }
      expect(caught).toBeInstanceOf(VerifierError);
      const v = caught as VerifierError;
      expect(v).toBeInstanceOf(BpfError);
      expect(v).not.toBeInstanceOf(PermissionError);
      expect(v.code).toBe('EACCES');
      expect(v.errno).toBe(13);
      expect(v.op).toBe('BpfObject.load(xtl_bad.bpf.o)');
      expect(v.log).toMatch(/outside of the packet/);
      expect(v.log).toMatch(/processed \d+ insns/);
      expect(v.message).toMatch(/^BpfObject\.load\(xtl_bad\.bpf\.o\): program xtl_bad: .*outside of the packet \(EACCES\)$/);
      expect(obj.loaded).toBe(false);
      expect(() => obj.load()).toThrow(/load\(\) failed before: open the object again \(EINVAL\)/);
    } finally {
      obj.close();
    }
  });

  it('collects the kernel log with kernelLogLevel', () => {
    const obj = BpfObject.open(fx.test, { kernelLogLevel: 2 });
    try {
      obj.load();
      expect(obj.kernelLog()).toMatch(/processed \d+ insns/);
    } finally {
      obj.close();
    }
    const bad = BpfObject.open(fx.bad, { kernelLogLevel: 1 });
    try {
      expect(() => bad.load()).toThrow(VerifierError);
      expect(bad.kernelLog()).toMatch(/outside of the packet/);
    } finally {
      bad.close();
    }
  });

  it('reports a missing file as ENOENT', () => {
    expect(() => BpfObject.open(`${fx.dir}/missing.bpf.o`)).toThrow(/BpfObject\.open\(.*missing\.bpf\.o\): no such file \(ENOENT\)/);
  });

  it('needs load() before map()/program(), and close() is idempotent', () => {
    const obj = BpfObject.open(fx.test);
    expect(() => obj.map('xtl_hash')).toThrow(/not loaded/);
    expect(() => obj.program('xtl_prog')).toThrow(/not loaded/);
    obj.load();
    expect(() => obj.program('nope')).toThrow(/no program named "nope"/);
    const map = obj.map('xtl_hash');
    const prog = obj.program('xtl_prog');
    obj.close();
    obj.close();
    expect(() => obj.mapNames()).toThrow(/closed \(EBADF\)/);
    // maps and programs hold their own fds and survive the object
    map.update(u32(1), Buffer.alloc(8, 1));
    expect(map.lookup(u32(1))).toEqual(Buffer.alloc(8, 1));
    expect(prog.testRun({ data: packet() }).retval).toBe(XDP_ACTION.PASS);
    map.close();
    map.close();
    prog.close();
    expect(map.fd).toBe(-1);
    expect(() => map.lookup(u32(1))).toThrow(/closed \(EBADF\)/);
    expect(() => prog.testRun({ data: packet() })).toThrow(/closed/);
  });
});
