import { execFileSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BpfError, BpfObject, LINK_TYPE, Link, Program, ifIndex, ifName, xdpLinks, xdpQuery } from '../src/index.js';
import { compileFixtures, type Fixtures } from './helpers.js';

// A veth pair of our own in the root namespace; it stays down, so no traffic.
const A = `xtl${process.pid}a`;
const B = `xtl${process.pid}b`;

let fx: Fixtures;
let obj: BpfObject;
let prog: Program;
let dropProg: Program;

function ip(...args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8' });
}

beforeAll(() => {
  fx = compileFixtures('xdp');
  ip('link', 'add', A, 'type', 'veth', 'peer', 'name', B);
  obj = BpfObject.open(fx.test);
  obj.load();
  prog = obj.program('xtl_prog');
  dropProg = obj.program('xtl_drop');
});

afterAll(() => {
  prog?.close();
  dropProg?.close();
  obj?.close();
  try {
    ip('link', 'del', A); // also removes B
  } catch {
    // already gone
  }
  fx?.cleanup();
});

describe('interfaces', () => {
  it('maps names and indexes', () => {
    const idx = ifIndex(A);
    expect(idx).toBeGreaterThan(1);
    expect(ifName(idx)).toBe(A);
    let missing: unknown;
    try {
      ifIndex('xtl-no-such-if');
    } catch (e) {
      missing = e;
    }
    expect(missing).toBeInstanceOf(BpfError);
    expect((missing as BpfError).code).toBe('ENODEV');
  });
});

describe('XDP links', () => {
  it('attaches in native mode, pins, updates and detaches', () => {
    const ifindex = ifIndex(A);
    const link = prog.attachXdp(ifindex, { mode: 'native' });
    const progId = prog.info().id;
    const info = link.info();
    expect(info).toMatchObject({ type: LINK_TYPE.XDP, progId, ifindex });
    expect(link.fd).toBeGreaterThan(2);
    expect(ip('-d', 'link', 'show', 'dev', A)).toMatch(new RegExp(`prog/xdp id ${progId}\\b`));
    expect(xdpLinks(ifindex)).toEqual([info]);
    expect(xdpLinks().map((l) => l.id)).toContain(info.id);

    // one XDP program per interface and mode
    let busy: unknown;
    try {
      dropProg.attachXdp(ifindex, { mode: 'native' });
    } catch (e) {
      busy = e;
    }
    expect(busy).toBeInstanceOf(BpfError);
    expect((busy as BpfError).code).toBe('EBUSY');
    expect((busy as BpfError).message).toMatch(/an XDP program is already attached \(EBUSY\)$/);

    // the pin keeps the attachment after the fd is closed
    const pin = `${fx.pinDir}/link`;
    expect(link.pinPath).toBeUndefined();
    link.pin(pin);
    expect(link.pinPath).toBe(pin);
    expect(() => link.pin(`${pin}-2`)).toThrow(/already pinned at/);
    link.close();
    link.close();
    expect(xdpLinks(ifindex).map((l) => l.id)).toEqual([info.id]);
    const again = Link.fromPinned(pin);
    expect(again.info().id).toBe(info.id);
    expect(again.pinPath).toBe(pin); // a link opened from a pin knows it

    // atomic replacement
    again.update(dropProg);
    expect(again.info().progId).toBe(dropProg.info().id);
    expect(ip('-d', 'link', 'show', 'dev', A)).toMatch(new RegExp(`prog/xdp id ${dropProg.info().id}\\b`));

    // detach removes it from the hook although the pin remains
    again.detach();
    expect(xdpLinks(ifindex)).toEqual([]);
    expect(ip('-d', 'link', 'show', 'dev', A)).not.toMatch(/prog\/xdp/);
    expect(again.pinPath).toBe(pin);
    again.unpin();
    expect(again.pinPath).toBeUndefined();
    expect(() => Link.fromPinned(pin)).toThrow(/no such file/);
    expect(() => again.unpin()).toThrow(/not pinned \(EINVAL\)/);
    again.close();
  });

  it('attaches in generic mode and detaches on close', () => {
    const ifindex = ifIndex(B);
    const link = prog.attachXdp(ifindex, { mode: 'generic' });
    expect(link.info().ifindex).toBe(ifindex);
    expect(ip('-d', 'link', 'show', 'dev', B)).toMatch(/prog\/xdp/);
    expect(ip('link', 'show', 'dev', B)).toMatch(/xdpgeneric/);
    link.close();
    expect(xdpLinks(ifindex)).toEqual([]);
    expect(() => link.info()).toThrow(/closed/);
  });

  it('attaches with the kernel default mode', () => {
    const ifindex = ifIndex(B);
    const link = prog.attachXdp(ifindex);
    expect(xdpLinks(ifindex).length).toBe(1);
    const byId = Link.fromId(link.info().id);
    expect(byId.info().progId).toBe(prog.info().id);
    byId.close();
    link.close();
    expect(xdpLinks(ifindex)).toEqual([]);
  });

  it('reports unsupported modes and bad interfaces', () => {
    expect(() => prog.attachXdp(ifIndex(A), { mode: 'offload' })).toThrow(BpfError);
    expect(() => prog.attachXdp(0x7fff_fff0, { mode: 'native' })).toThrow(BpfError); // EINVAL: no such ifindex
    expect(() => prog.attachXdp(ifIndex(A), { mode: 'bogus' as 'native' })).toThrow(TypeError);
    expect(xdpLinks(ifIndex(A))).toEqual([]);
  });
});

// A veth pair whose peer lives in a network namespace of our own; the end we
// attach to stays in this namespace (bpf_link_create and bpf_xdp_query take
// ifindexes of the caller's namespace). Both ends stay down: no traffic.
describe('xdpQuery', () => {
  const NS = `xtlq${process.pid}`;
  const Q = `xtlq${process.pid}a`;
  const P = `xtlq${process.pid}b`;

  beforeAll(() => {
    ip('netns', 'add', NS);
    ip('link', 'add', Q, 'type', 'veth', 'peer', 'name', P, 'netns', NS);
  });
  afterAll(() => {
    try {
      ip('link', 'del', Q);
    } catch {
      // already gone
    }
    ip('netns', 'del', NS);
  });

  /** The mode as iproute2 reports it (1 native, 2 generic, 3 offload), to compare with. */
  function ipMode(): number | undefined {
    return (JSON.parse(ip('-j', '-d', 'link', 'show', 'dev', Q)) as { xdp?: { mode?: number } }[])[0]?.xdp?.mode;
  }

  it('reports none, native and generic attachments with the program id', () => {
    const ifindex = ifIndex(Q);
    expect(xdpQuery(ifindex)).toEqual({ mode: 'none', progId: 0, progIds: { native: 0, generic: 0, offload: 0 } });
    expect(ipMode()).toBeUndefined();
    const progId = prog.info().id;

    const native = prog.attachXdp(ifindex, { mode: 'native' });
    expect(xdpQuery(ifindex)).toEqual({ mode: 'native', progId, progIds: { native: progId, generic: 0, offload: 0 } });
    expect(ipMode()).toBe(1);
    native.close();
    expect(xdpQuery(ifindex).mode).toBe('none');

    const generic = prog.attachXdp(ifindex, { mode: 'generic' });
    expect(xdpQuery(ifindex)).toEqual({ mode: 'generic', progId, progIds: { native: 0, generic: progId, offload: 0 } });
    expect(ipMode()).toBe(2);
    generic.close();
    expect(xdpQuery(ifindex).mode).toBe('none');
  });

  it('refuses bad interfaces with a typed error', () => {
    expect(() => xdpQuery(0)).toThrow(TypeError);
    let missing: unknown;
    try {
      xdpQuery(0x7fff_fff0);
    } catch (e) {
      missing = e;
    }
    expect(missing).toBeInstanceOf(BpfError);
    expect((missing as BpfError).op).toBe(`xdpQuery(${0x7fff_fff0})`);
    expect((missing as BpfError).code).toBe('ENXIO');
  });
});
