import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BpfError, BpfObject, RingBufferReader, type BpfMap, type Program } from '../src/index.js';
import { compileFixtures, packet, type Fixtures } from './helpers.js';

let fx: Fixtures;
let obj: BpfObject;
let prog: Program;
let events: BpfMap;
const MAGIC = 0xfeed_f00d_1234n;

beforeAll(() => {
  fx = compileFixtures('ringbuf');
  obj = BpfObject.open(fx.test);
  obj.setGlobal('xtl_report', true);
  obj.setGlobal('xtl_magic', MAGIC);
  obj.load();
  prog = obj.program('xtl_prog');
  events = obj.map('xtl_events');
});
afterAll(() => {
  prog?.close();
  events?.close();
  obj?.close();
  fx?.cleanup();
});

interface Event { seq: bigint; magic: bigint; len: number }
function parse(b: Buffer): Event {
  expect(b.length).toBe(24);
  return { seq: b.readBigUInt64LE(0), magic: b.readBigUInt64LE(8), len: b.readUInt32LE(16) };
}

function until(cond: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  return new Promise((resolve, reject) => {
    const tick = (): void => {
      if (cond()) resolve();
      else if (Date.now() > deadline) reject(new Error('timed out'));
      else setTimeout(tick, 5);
    };
    tick();
  });
}

describe('RingBufferReader', () => {
  it('delivers every record in batches, off the event loop', async () => {
    const got: Event[] = [];
    let batches = 0;
    const reader = new RingBufferReader(events, (records) => {
      batches++;
      for (const r of records) got.push(parse(r));
    });
    try {
      const N = 2000;
      prog.testRun({ data: packet(100), repeat: N });
      await until(() => got.length >= N);
      expect(got.length).toBe(N);
      expect(batches).toBeGreaterThanOrEqual(1);
      expect(new Set(got.map((e) => e.seq)).size).toBe(N);
      for (const e of got) {
        expect(e.magic).toBe(MAGIC);
        expect(e.len).toBe(100);
      }
      // records produced while the loop is idle arrive too
      prog.testRun({ data: packet(), repeat: 3 });
      await until(() => got.length >= N + 3);
    } finally {
      await reader.close();
    }
  });

  it('delivers what was produced before close() resolves', async () => {
    let n = 0;
    const reader = new RingBufferReader(events, (records) => {
      n += records.length;
    });
    prog.testRun({ data: packet(), repeat: 500 });
    const closing = reader.close();
    expect(reader.close()).toBe(closing); // idempotent
    await closing;
    expect(n).toBe(500);
    // after close: no-ops, and nothing more is delivered
    reader.unref();
    reader.ref();
    prog.testRun({ data: packet(), repeat: 5 });
    await new Promise((r) => setTimeout(r, 50));
    expect(n).toBe(500);
    // drain those 5 with a fresh reader
    let m = 0;
    const again = new RingBufferReader(events, (records) => {
      m += records.length;
    });
    again.unref();
    await until(() => m === 5);
    await again.close();
  });

  it('rejects maps that are not ring buffers', () => {
    const hash = obj.map('xtl_hash');
    try {
      expect(() => new RingBufferReader(hash, () => {})).toThrow(BpfError);
      expect(() => new RingBufferReader(hash, () => {})).toThrow(/not a BPF_MAP_TYPE_RINGBUF/);
    } finally {
      hash.close();
    }
  });
});
