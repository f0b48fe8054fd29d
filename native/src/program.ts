import { unlinkSync } from 'node:fs';
import { native, type FdHandle } from './binding.js';
import { BpfError, Errno, call, invalid } from './errors.js';
import { checkBuffer, checkPath, checkU32, expectKind, kHandle, kInternal, type InternalToken } from './internal.js';

export type XdpMode = 'native' | 'generic' | 'offload';

/** XDP verdicts (enum xdp_action). */
export const XDP_ACTION = { ABORTED: 0, DROP: 1, PASS: 2, TX: 3, REDIRECT: 4 } as const;
/** BPF_F_TEST_XDP_LIVE_FRAMES */
export const TEST_RUN_XDP_LIVE_FRAMES: number = 1 << 1;
const TEST_RUN_ON_CPU = 1 << 0;

/** A few program types (enum bpf_prog_type). */
export const PROG_TYPE = { SOCKET_FILTER: 1, KPROBE: 2, SCHED_CLS: 3, SCHED_ACT: 4, TRACEPOINT: 5, XDP: 6 } as const;
/** A few link types (enum bpf_link_type). */
export const LINK_TYPE = { RAW_TRACEPOINT: 1, TRACING: 2, CGROUP: 3, ITER: 4, NETNS: 5, XDP: 6 } as const;

const XDP_FLAGS: Record<XdpMode, number> = {
  generic: 1 << 1, // XDP_FLAGS_SKB_MODE
  native: 1 << 2, // XDP_FLAGS_DRV_MODE
  offload: 1 << 3, // XDP_FLAGS_HW_MODE
};

export interface TestRunOptions {
  /** The packet. */
  data: Buffer;
  /** Default 1. */
  repeat?: number;
  /**
   * Raw struct xdp_md (u32 data, data_end, data_meta, ingress_ifindex,
   * rx_queue_index, egress_ifindex). A zero data_end is filled in with
   * data.length, as the kernel requires.
   */
  ctx?: Buffer;
  /** e.g. TEST_RUN_XDP_LIVE_FRAMES */
  flags?: number;
  /** Live-frames batch size. */
  batchSize?: number;
  /** Output buffer size; default data.length + 256. Not used with live frames. */
  dataOutSize?: number;
  /** Run on this CPU (sets BPF_F_TEST_RUN_ON_CPU). */
  cpu?: number;
}

export interface TestRunResult {
  retval: number;
  /** Average per repetition, as the kernel reports it. */
  durationNs: number;
  /** The packet after the program (empty with live frames). */
  data: Buffer;
}

export interface ProgramInfo {
  id: number; name: string; tag: string; type: number; jited: boolean; jitedLen: number; xlatedLen: number;
  /** Only counted while the kernel.bpf_stats_enabled sysctl is 1. */
  runTimeNs: bigint;
  runCount: bigint;
}

export interface LinkInfo { id: number; progId: number; type: number; ifindex?: number }

/**
 * A loaded BPF program, owning its own fd (BpfObject.program() returns a dup
 * that outlives the object).
 */
export class Program {
  /** Full function name for programs from an object; the kernel's (15 chars max) otherwise. */
  readonly name: string;
  readonly [kHandle]: FdHandle;
  #closed = false;

  /** @internal */
  constructor(token: InternalToken, handle: FdHandle, name?: string) {
    if (token !== kInternal) throw new TypeError('Program: use BpfObject.program(), Program.fromPinned() or Program.fromId()');
    this[kHandle] = handle;
    this.name = name ?? call('Program', 'other', () => native.progInfo(handle)).name;
  }

  static fromPinned(path: string): Program {
    const op = `Program.fromPinned(${path})`;
    checkPath(op, path);
    const h = call(op, 'pin', () => native.objGet(path));
    expectKind(op, h, 'prog');
    return new Program(kInternal, h);
  }

  static fromId(id: number): Program {
    const op = `Program.fromId(${id})`;
    checkU32(op, 'id', id, 1);
    return new Program(kInternal, call(op, 'id', () => native.fdById('prog', id)));
  }

  /** The fd number, or -1 once closed. */
  get fd(): number {
    return native.fdNumber(this[kHandle]);
  }

  /** BPF_PROG_TEST_RUN. */
  testRun(opts: TestRunOptions): TestRunResult {
    const op = `Program.testRun(${this.name})`;
    checkBuffer(op, 'data', opts.data);
    const repeat = opts.repeat ?? 1;
    checkU32(op, 'repeat', repeat, 1);
    if (repeat > 0x7fffffff) throw invalid(op, 'repeat is too large');
    let flags = opts.flags ?? 0;
    checkU32(op, 'flags', flags);
    const live = (flags & TEST_RUN_XDP_LIVE_FRAMES) !== 0;
    const batchSize = opts.batchSize ?? 0;
    checkU32(op, 'batchSize', batchSize);
    if (batchSize !== 0 && !live) throw invalid(op, 'batchSize needs TEST_RUN_XDP_LIVE_FRAMES');
    let cpu = 0;
    if (opts.cpu !== undefined) {
      checkU32(op, 'cpu', opts.cpu);
      cpu = opts.cpu;
      flags |= TEST_RUN_ON_CPU;
    }
    const dataOutSize = live ? 0 : (opts.dataOutSize ?? opts.data.length + 256);
    checkU32(op, 'dataOutSize', dataOutSize);
    let ctx: Buffer | null = null;
    if (opts.ctx !== undefined) {
      checkBuffer(op, 'ctx', opts.ctx);
      ctx = opts.ctx;
      if (ctx.length >= 8 && ctx.readUInt32LE(4) === 0) {
        ctx = Buffer.from(ctx);
        ctx.writeUInt32LE(opts.data.length, 4); // data_end
      }
    }
    const r = call(op, 'other', () =>
      native.progTestRun(this.#live('testRun'), { data: opts.data, ctx, repeat, flags, batchSize, dataOutSize, cpu }),
    );
    return { retval: r.retval, durationNs: r.duration, data: r.data };
  }

  /**
   * Attach to an interface's XDP hook through a BPF link. Without a mode the
   * kernel picks (native if the driver supports it, else generic). The program
   * stays attached while the Link (or a pin of it) exists, or until detach().
   */
  attachXdp(ifindex: number, opts: { mode?: XdpMode } = {}): Link {
    const op = `Program.attachXdp(${this.name}, ${ifindex})`;
    checkU32(op, 'ifindex', ifindex, 1);
    let flags = 0;
    if (opts.mode !== undefined) {
      const f = XDP_FLAGS[opts.mode];
      if (f === undefined) throw new TypeError(`${op}: mode must be 'native', 'generic' or 'offload'`);
      flags = f;
    }
    const h = call(op, 'attach', () => native.linkCreateXdp(this.#live('attachXdp'), ifindex, flags));
    return new Link(kInternal, h);
  }

  /**
   * Attach a tracing program (SEC("tp_btf/…"), SEC("fentry/…"), SEC("fexit/…"))
   * to the tracepoint or kernel function it was loaded for. It stays attached
   * while the Link (or a pin of it) exists.
   */
  attachTracing(): Link {
    const h = call(`Program.attachTracing(${this.name})`, 'other', () => native.linkCreateTracing(this.#live('attachTracing')));
    return new Link(kInternal, h);
  }

  pin(path: string): void {
    const op = `Program.pin(${this.name})`;
    checkPath(op, path);
    call(op, 'pin', () => native.objPin(this.#live('pin'), path));
  }

  info(): ProgramInfo {
    const i = call(`Program.info(${this.name})`, 'other', () => native.progInfo(this.#live('info')));
    return { ...i, jited: i.jitedLen > 0 };
  }

  /** Close the fd (an attached program stays attached through its link). Idempotent. */
  close(): void {
    this.#closed = true;
    native.fdClose(this[kHandle]);
  }

  #live(method: string): FdHandle {
    if (this.#closed) throw new BpfError(`Program.${method}(${this.name})`, Errno.EBADF, 'the program is closed');
    return this[kHandle];
  }
}

/**
 * A BPF link (bpf_link_create). Closing the last fd and pin detaches it. A
 * link remembers where it is pinned: pin(path) or Link.fromPinned(path) set
 * `pinPath`, unpin() removes that pin.
 */
export class Link {
  readonly [kHandle]: FdHandle;
  #closed = false;
  #pinPath: string | undefined;

  /** @internal */
  constructor(token: InternalToken, handle: FdHandle, pinPath?: string) {
    if (token !== kInternal) throw new TypeError('Link: use Program.attachXdp(), Program.attachTracing(), Link.fromPinned() or Link.fromId()');
    this[kHandle] = handle;
    this.#pinPath = pinPath;
  }

  static fromPinned(path: string): Link {
    const op = `Link.fromPinned(${path})`;
    checkPath(op, path);
    const h = call(op, 'pin', () => native.objGet(path));
    expectKind(op, h, 'link');
    return new Link(kInternal, h, path);
  }

  static fromId(id: number): Link {
    const op = `Link.fromId(${id})`;
    checkU32(op, 'id', id, 1);
    return new Link(kInternal, call(op, 'id', () => native.fdById('link', id)));
  }

  /** The fd number, or -1 once closed. */
  get fd(): number {
    return native.fdNumber(this[kHandle]);
  }

  /** Where this link is pinned (by pin() or as opened by fromPinned()), or undefined. */
  get pinPath(): string | undefined {
    return this.#pinPath;
  }

  /** Pin the link at `path` (a bpffs file) and remember it. A link has at most one pin: unpin() first to move it. */
  pin(path: string): void {
    checkPath('Link.pin', path);
    if (this.#pinPath !== undefined) throw new BpfError('Link.pin', Errno.EEXIST, `already pinned at ${this.#pinPath}`);
    call('Link.pin', 'pin', () => native.objPin(this.#live('pin'), path));
    this.#pinPath = path;
  }

  /** Remove the pin (fs.unlinkSync); the link stays while fds remain. */
  unpin(): void {
    const path = this.#pinPath;
    if (path === undefined) throw new BpfError('Link.unpin', Errno.EINVAL, 'the link is not pinned');
    try {
      unlinkSync(path);
    } catch (e) {
      const errno = (e as NodeJS.ErrnoException).errno;
      if (typeof errno === 'number') throw new BpfError('Link.unpin', -errno, errno === -Errno.ENOENT ? `no such pin ${path}` : (e as Error).message);
      throw e;
    }
    this.#pinPath = undefined;
  }

  /** Atomically replace the program (bpf_link_update). */
  update(prog: Program): void {
    if (!(prog instanceof Program)) throw new TypeError('Link.update: prog must be a Program');
    call('Link.update', 'attach', () => native.linkUpdate(this.#live('update'), prog[kHandle]));
  }

  /** Remove the program from its hook now, even if pins or other fds remain. */
  detach(): void {
    call('Link.detach', 'other', () => native.linkDetach(this.#live('detach')));
  }

  info(): LinkInfo {
    return call('Link.info', 'other', () => native.linkInfo(this.#live('info')));
  }

  /** Close the fd; the link (and the attachment) goes away with the last fd and pin. Idempotent. */
  close(): void {
    this.#closed = true;
    native.fdClose(this[kHandle]);
  }

  #live(method: string): FdHandle {
    if (this.#closed) throw new BpfError(`Link.${method}`, Errno.EBADF, 'the link is closed');
    return this[kHandle];
  }
}

/** What is attached to an interface's XDP hook (bpf_xdp_query). */
export interface XdpAttachment {
  /** 'multi': programs in more than one mode at once (see progIds). */
  mode: XdpMode | 'none' | 'multi';
  /** The attached program's id; 0 for 'none' and 'multi'. */
  progId: number;
  /** The program id in each mode (0: none). */
  progIds: Record<XdpMode, number>;
}

/** enum XDP_ATTACHED_* from linux/if_link.h, as bpf_xdp_query reports it. */
const XDP_ATTACHED: Readonly<Record<number, XdpAttachment['mode']>> = { 0: 'none', 1: 'native', 2: 'generic', 3: 'offload', 4: 'multi' };

/** The XDP attachment of an interface, from the kernel (netlink, through libbpf's bpf_xdp_query). */
export function xdpQuery(ifindex: number): XdpAttachment {
  const op = `xdpQuery(${ifindex})`;
  checkU32(op, 'ifindex', ifindex, 1);
  const r = call(op, 'other', () => native.xdpQuery(ifindex));
  // The netlink dump behind bpf_xdp_query finds nothing for an unknown ifindex rather than failing.
  if (r.attachMode === 0) call(op, 'other', () => native.ifIndexToName(ifindex));
  const mode = XDP_ATTACHED[r.attachMode];
  if (mode === undefined) throw new BpfError(op, Errno.EINVAL, `unknown XDP attach mode ${r.attachMode}`);
  return { mode, progId: r.progId, progIds: { native: r.drvProgId, generic: r.skbProgId, offload: r.hwProgId } };
}

/** All XDP links in the system (optionally only those on `ifindex`). */
export function xdpLinks(ifindex?: number): LinkInfo[] {
  const op = 'xdpLinks';
  if (ifindex !== undefined) checkU32(op, 'ifindex', ifindex, 1);
  const out: LinkInfo[] = [];
  let id = 0;
  for (;;) {
    const next = call(op, 'other', () => native.nextId('link', id));
    if (next === null) return out;
    id = next;
    let h: FdHandle;
    try {
      h = call(op, 'id', () => native.fdById('link', id));
    } catch (e) {
      if (e instanceof BpfError && e.errno === Errno.ENOENT) continue; // went away meanwhile
      throw e;
    }
    try {
      const info = call(op, 'other', () => native.linkInfo(h));
      if (info.type === LINK_TYPE.XDP && (ifindex === undefined || info.ifindex === ifindex)) out.push(info);
    } finally {
      native.fdClose(h);
    }
  }
}
