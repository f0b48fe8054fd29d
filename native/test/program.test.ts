import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BpfError, BpfMap, BpfObject, PROG_TYPE, Program, TEST_RUN_XDP_LIVE_FRAMES, XDP_ACTION,
} from '../src/index.js';
import { compileFixtures, packet, u32, type Fixtures } from './helpers.js';

let fx: Fixtures;
let pass: BpfObject; // xtl_verdict = PASS
let drop: BpfObject; // xtl_verdict = DROP

beforeAll(() => {
  fx = compileFixtures('program');
  pass = BpfObject.open(fx.test);
  pass.load();
  drop = BpfObject.open(fx.test);
  drop.setGlobal('xtl_verdict', XDP_ACTION.DROP);
  drop.load();
});
afterAll(() => {
  pass?.close();
  drop?.close();
  fx.cleanup();
});

function count(m: BpfMap): bigint {
  return (m.lookupPerCpu(u32(0)) ?? []).reduce((s, b) => s + b.readBigUInt64LE(0), 0n);
}

describe('Program.testRun', () => {
  it('returns the verdict, the packet and a duration', () => {
    const prog = pass.program('xtl_prog');
    const counter = pass.map('xtl_percpu');
    try {
      const before = count(counter);
      const pkt = packet(128);
      const r = prog.testRun({ data: pkt, repeat: 10_000 });
      expect(r.retval).toBe(XDP_ACTION.PASS);
      expect(r.data).toEqual(pkt);
      expect(r.durationNs).toBeGreaterThan(0);
      expect(r.durationNs).toBeLessThan(1_000_000);
      expect(count(counter) - before).toBe(10_000n);
      expect(prog.testRun({ data: packet(), repeat: 1 }).retval).toBe(XDP_ACTION.PASS);
      const d = drop.program('xtl_prog');
      expect(d.testRun({ data: packet() }).retval).toBe(XDP_ACTION.DROP);
      d.close();
      const other = pass.program('xtl_drop');
      expect(other.testRun({ data: packet() }).retval).toBe(XDP_ACTION.DROP);
      other.close();
    } finally {
      prog.close();
      counter.close();
    }
  });

  it('accepts an xdp_md context', () => {
    const prog = pass.program('xtl_prog');
    try {
      const ctx = Buffer.alloc(24);
      ctx.writeUInt32LE(1, 12); // ingress_ifindex: lo
      ctx.writeUInt32LE(0, 16); // rx_queue_index
      expect(prog.testRun({ data: packet(), ctx }).retval).toBe(XDP_ACTION.PASS);
      const bad = Buffer.alloc(24);
      bad.writeUInt32LE(0x7fff_fff0, 12); // no such device
      expect(() => prog.testRun({ data: packet(), ctx: bad })).toThrow(BpfError);
    } finally {
      prog.close();
    }
  });

  it('reports a too small output buffer as ENOSPC', () => {
    const prog = pass.program('xtl_prog');
    try {
      expect(() => prog.testRun({ data: packet(128), dataOutSize: 16 })).toThrow(/\(ENOSPC\)$/);
      expect(() => prog.testRun({ data: packet(), repeat: 0 })).toThrow(TypeError);
      expect(() => prog.testRun({ data: packet(), batchSize: 4 })).toThrow(/needs TEST_RUN_XDP_LIVE_FRAMES/);
    } finally {
      prog.close();
    }
  });

  it('runs live frames', () => {
    // Dropped frames never reach a device: nothing leaves this test.
    const prog = drop.program('xtl_prog');
    const counter = drop.map('xtl_percpu');
    try {
      const before = count(counter);
      const r = prog.testRun({ data: packet(), repeat: 1000, flags: TEST_RUN_XDP_LIVE_FRAMES, batchSize: 64 });
      expect(r.data.length).toBe(0);
      expect(count(counter) - before).toBe(1000n);
    } finally {
      prog.close();
      counter.close();
    }
  });
});

describe('Program handles', () => {
  it('reports info', () => {
    const prog = pass.program('xtl_prog');
    try {
      const info = prog.info();
      expect(info.id).toBeGreaterThan(0);
      expect(info.name).toBe('xtl_prog');
      expect(info.type).toBe(PROG_TYPE.XDP);
      expect(info.tag).toMatch(/^[0-9a-f]{16}$/);
      expect(info.xlatedLen).toBeGreaterThan(0);
      const jit = readFileSync('/proc/sys/net/core/bpf_jit_enable', 'utf8').trim() !== '0';
      expect(info.jited).toBe(jit);
      expect(info.jitedLen > 0).toBe(jit);
      expect(typeof info.runTimeNs).toBe('bigint');
      expect(typeof info.runCount).toBe('bigint');
    } finally {
      prog.close();
    }
  });

  it('pins and reopens by path and by id', () => {
    const prog = pass.program('xtl_prog');
    try {
      const path = `${fx.pinDir}/prog`;
      prog.pin(path);
      const pinned = Program.fromPinned(path);
      expect(pinned.name).toBe('xtl_prog');
      expect(pinned.info().id).toBe(prog.info().id);
      expect(pinned.testRun({ data: packet() }).retval).toBe(XDP_ACTION.PASS);
      pinned.close();
      const byId = Program.fromId(prog.info().id);
      expect(byId.info().tag).toBe(prog.info().tag);
      byId.close();
      expect(() => Program.fromPinned(`${fx.pinDir}/missing`)).toThrow(/no such file: is it loaded\? \(ENOENT\)/);
      const map = pass.map('xtl_hash');
      map.pin(`${fx.pinDir}/map`);
      map.close();
      expect(() => Program.fromPinned(`${fx.pinDir}/map`)).toThrow(/not a BPF prog \(it is a map\)/);
      const again = BpfMap.fromPinned(`${fx.pinDir}/map`);
      expect(again.name).toBe('xtl_hash');
      again.close();
    } finally {
      prog.close();
    }
    expect(prog.fd).toBe(-1);
  });
});

describe('Program.attachTracing', () => {
  it('runs a BTF tracepoint program until the link is closed', () => {
    const obj = BpfObject.open(fx.trace);
    obj.setGlobal('xtl_tgid', process.pid);
    obj.load();
    const runs = obj.map('xtl_runs');
    const prog = obj.program('xtl_trace');
    const xdp = pass.program('xtl_prog');
    const n = (): bigint => runs.lookup(u32(0))!.readBigUInt64LE(0);
    try {
      const link = prog.attachTracing();
      xdp.testRun({ data: packet() });
      xdp.testRun({ data: packet(), repeat: 100 });
      expect(n()).toBe(2n);
      expect(link.info().progId).toBe(prog.info().id);
      link.close();
      xdp.testRun({ data: packet() });
      expect(n()).toBe(2n);
    } finally {
      xdp.close();
      prog.close();
      runs.close();
      obj.close();
    }
  });

  it('names the operation when the program is not a tracing one', () => {
    const prog = pass.program('xtl_drop');
    try {
      expect(() => prog.attachTracing()).toThrow(/Program\.attachTracing\(xtl_drop\)/);
    } finally {
      prog.close();
    }
  });
});

