import { native, type FdHandle, type NativeBatch } from './binding.js';
import { BpfError, Errno, call, invalid } from './errors.js';
import { checkBuffer, checkPath, checkU32, expectKind, kHandle, kInternal, type InternalToken } from './internal.js';

/** BPF map types (enum bpf_map_type). */
export const MAP_TYPE = {
  UNSPEC: 0, HASH: 1, ARRAY: 2, PROG_ARRAY: 3, PERF_EVENT_ARRAY: 4, PERCPU_HASH: 5, PERCPU_ARRAY: 6,
  STACK_TRACE: 7, CGROUP_ARRAY: 8, LRU_HASH: 9, LRU_PERCPU_HASH: 10, LPM_TRIE: 11, ARRAY_OF_MAPS: 12,
  HASH_OF_MAPS: 13, DEVMAP: 14, SOCKMAP: 15, CPUMAP: 16, XSKMAP: 17, SOCKHASH: 18, CGROUP_STORAGE: 19,
  REUSEPORT_SOCKARRAY: 20, PERCPU_CGROUP_STORAGE: 21, QUEUE: 22, STACK: 23, SK_STORAGE: 24, DEVMAP_HASH: 25,
  STRUCT_OPS: 26, RINGBUF: 27, INODE_STORAGE: 28, TASK_STORAGE: 29, BLOOM_FILTER: 30, USER_RINGBUF: 31,
  CGRP_STORAGE: 32,
} as const;

export type UpdateFlag = 'any' | 'noexist' | 'exist';
const UPDATE_FLAGS: Record<UpdateFlag, number> = { any: 0, noexist: 1, exist: 2 };

const PERCPU_TYPES: ReadonlySet<number> = new Set([
  MAP_TYPE.PERCPU_HASH, MAP_TYPE.PERCPU_ARRAY, MAP_TYPE.LRU_PERCPU_HASH, MAP_TYPE.PERCPU_CGROUP_STORAGE,
]);

let possibleCpus: number | undefined;
/** libbpf_num_possible_cpus(): the number of per-CPU slots in per-CPU maps. */
export function numPossibleCpus(): number {
  possibleCpus ??= call('numPossibleCpus', 'other', () => native.numPossibleCpus());
  return possibleCpus;
}

export interface MapInfo { id: number; name: string; type: number; keySize: number; valueSize: number; maxEntries: number; flags: number }

/**
 * A run of entries from one BpfMap.batchLookup() step, in two contiguous
 * buffers: entry i's key is at keys[keyAt(i)…] and its value at
 * values[valueAt(i)…] (valueStride is the map's valueBufferSize: per-CPU
 * values are the raw concatenation, one every cpuStride bytes, so entry i's
 * value on a CPU is at valueAt(i, cpu)). key(i) and value(i) are views.
 */
export class MapBatch {
  constructor(
    readonly count: number,
    readonly keys: Buffer,
    readonly values: Buffer,
    readonly keyStride: number,
    readonly valueStride: number,
    /** The walk is over: no further entries. */
    readonly done: boolean,
    /** Bytes from one CPU's value to the next (per-CPU maps: round_up(valueSize, 8)); valueStride otherwise. */
    readonly cpuStride: number = valueStride,
  ) {}

  /** Where entry i's key starts in `keys`. */
  keyAt(i: number): number {
    return i * this.keyStride;
  }

  /** Where entry i's value starts in `values`; for a per-CPU map, its value on `cpu`. */
  valueAt(i: number, cpu = 0): number {
    return i * this.valueStride + cpu * this.cpuStride;
  }

  key(i: number): Buffer {
    return this.keys.subarray(this.keyAt(i), this.keyAt(i + 1));
  }

  value(i: number): Buffer {
    return this.values.subarray(this.valueAt(i), this.valueAt(i + 1));
  }
}

/**
 * Where a walk with BpfMap.batchLookup() stands, as in cilium/ebpf: pass the
 * same cursor until a batch says `done`. One cursor per walk and per map.
 */
export class MapBatchCursor {
  // Nominal typing only; the state lives in `cursors` below.
  readonly #brand = true;
}

interface CursorState {
  /** 'batch': bpf_map_lookup_batch with `token`; 'keys': get_next_key from `lastKey` (maps without batch ops). */
  mode: 'batch' | 'keys' | 'new';
  token: Buffer | null;
  lastKey: Buffer | null;
  done: boolean;
}
const cursors = new WeakMap<MapBatchCursor, CursorState>();

function cursorState(c: MapBatchCursor): CursorState {
  let s = cursors.get(c);
  if (s === undefined) cursors.set(c, (s = { mode: 'new', token: null, lastKey: null, done: false }));
  return s;
}

function split(buf: Buffer, count: number, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < count; i++) out.push(buf.subarray(i * size, (i + 1) * size));
  return out;
}

const BATCH_UNSUPPORTED: ReadonlySet<number> = new Set([Errno.EINVAL, Errno.ENOTSUPP, Errno.EOPNOTSUPP]);

/**
 * A BPF map, owning its own fd. Maps obtained from BpfObject.map() hold a
 * dup() of the object's fd: they stay valid after BpfObject.close() and must
 * be closed on their own (a finalizer closes them if you forget).
 */
export class BpfMap {
  readonly name: string;
  readonly type: number;
  readonly keySize: number;
  readonly valueSize: number;
  readonly maxEntries: number;
  /** PERCPU_ARRAY / PERCPU_HASH / LRU_PERCPU_HASH / PERCPU_CGROUP_STORAGE. */
  readonly perCpu: boolean;
  /** Size of a value buffer as the kernel reads/writes it: valueSize, or round_up(valueSize, 8) * numPossibleCpus(). */
  readonly valueBufferSize: number;
  /** In a per-CPU map's value buffer, bytes from one CPU's value to the next (round_up(valueSize, 8)); valueSize otherwise. */
  readonly cpuStride: number;
  readonly [kHandle]: FdHandle;
  #closed = false;

  /** @internal */
  constructor(token: InternalToken, handle: FdHandle, name?: string) {
    if (token !== kInternal) throw new TypeError('BpfMap: use BpfObject.map(), BpfMap.fromPinned() or BpfMap.fromId()');
    this[kHandle] = handle;
    const info = call('BpfMap', 'other', () => native.mapInfo(handle));
    this.name = name ?? info.name;
    this.type = info.type;
    this.keySize = info.keySize;
    this.valueSize = info.valueSize;
    this.maxEntries = info.maxEntries;
    this.perCpu = PERCPU_TYPES.has(info.type);
    this.cpuStride = this.perCpu ? roundUp8(info.valueSize) : info.valueSize;
    this.valueBufferSize = this.cpuStride * (this.perCpu ? numPossibleCpus() : 1);
  }

  static fromPinned(path: string): BpfMap {
    const op = `BpfMap.fromPinned(${path})`;
    checkPath(op, path);
    const h = call(op, 'pin', () => native.objGet(path));
    expectKind(op, h, 'map');
    return new BpfMap(kInternal, h);
  }

  static fromId(id: number): BpfMap {
    const op = `BpfMap.fromId(${id})`;
    checkU32(op, 'id', id, 1);
    return new BpfMap(kInternal, call(op, 'id', () => native.fdById('map', id)));
  }

  /** The fd number, or -1 once closed. */
  get fd(): number {
    return native.fdNumber(this[kHandle]);
  }

  info(): MapInfo {
    return call(this.#op('info'), 'other', () => native.mapInfo(this.#live('info')));
  }

  /** The value, or undefined if the key does not exist. Per-CPU maps: the raw concatenation (see valueBufferSize). */
  lookup(key: Buffer): Buffer | undefined {
    const op = this.#op('lookup');
    this.#checkKey(op, key);
    return call(op, 'map', () => native.mapLookup(this.#live('lookup'), key)) ?? undefined;
  }

  /** One valueSize Buffer per possible CPU, or undefined if the key does not exist. */
  lookupPerCpu(key: Buffer): Buffer[] | undefined {
    if (!this.perCpu) throw invalid(this.#op('lookupPerCpu'), 'not a per-CPU map');
    const raw = this.lookup(key);
    if (raw === undefined) return undefined;
    const stride = roundUp8(this.valueSize);
    return split(raw, numPossibleCpus(), stride).map((b) => b.subarray(0, this.valueSize));
  }

  /**
   * Per-CPU maps accept one valueSize Buffer (copied to every CPU) or the full
   * valueBufferSize concatenation.
   */
  update(key: Buffer, value: Buffer, flag: UpdateFlag = 'any'): void {
    const op = this.#op('update');
    this.#checkKey(op, key);
    checkBuffer(op, 'value', value);
    const flags = UPDATE_FLAGS[flag];
    if (flags === undefined) throw new TypeError(`${op}: flag must be 'any', 'noexist' or 'exist'`);
    let v = value;
    if (this.perCpu && value.length === this.valueSize && value.length !== this.valueBufferSize) {
      const stride = roundUp8(this.valueSize);
      v = Buffer.alloc(this.valueBufferSize);
      for (let cpu = 0; cpu < numPossibleCpus(); cpu++) value.copy(v, cpu * stride);
    }
    if (v.length !== this.valueBufferSize) {
      const want = this.perCpu ? `${this.valueSize} or ${this.valueBufferSize}` : `${this.valueSize}`;
      throw invalid(op, `value must be ${want} bytes, got ${value.length}`);
    }
    call(op, 'update', () => native.mapUpdate(this.#live('update'), key, v, flags));
  }

  /** false if the key did not exist. */
  delete(key: Buffer): boolean {
    const op = this.#op('delete');
    this.#checkKey(op, key);
    return call(op, 'map', () => native.mapDelete(this.#live('delete'), key));
  }

  /** Keys via bpf_map_get_next_key. Concurrent deletes may restart a hash map walk. */
  *keys(): IterableIterator<Buffer> {
    const op = this.#op('keys');
    let key: Buffer | null = null;
    for (;;) {
      const prev: Buffer | null = key;
      key = call(op, 'other', () => native.mapNextKey(this.#live('keys'), prev));
      if (key === null) return;
      yield key;
    }
  }

  /**
   * The next entries of a walk, like cilium/ebpf's BatchLookup: one
   * bpf_map_lookup_batch call, the cheapest way to scan a large map (two
   * Buffers per batch, none per entry). Call again with the same cursor until
   * a batch says `done`. A hash bucket larger than `count` makes that batch
   * larger than `count` (the kernel's ENOSPC is retried with room for it).
   * Maps without batch ops (e.g. DEVMAP) are walked with get_next_key +
   * lookup, `count` entries at a time.
   */
  batchLookup(cursor: MapBatchCursor, count: number): MapBatch {
    const op = this.#op('batchLookup');
    if (!(cursor instanceof MapBatchCursor)) throw new TypeError(`${op}: cursor must be a MapBatchCursor`);
    checkU32(op, 'count', count, 1);
    const state = cursorState(cursor);
    if (state.done) return this.#batch(0, Buffer.alloc(0), Buffer.alloc(0), true);
    if (state.mode === 'keys') return this.#batchByKeys(state, count);
    let n = count;
    for (;;) {
      let r: NativeBatch;
      try {
        const t = state.token;
        r = call(op, 'other', () => native.mapLookupBatch(this.#live('batchLookup'), t, n));
      } catch (e) {
        if (!(e instanceof BpfError)) throw e;
        if (e.errno === Errno.ENOSPC && n < Math.max(this.maxEntries, 1)) {
          n = Math.min(n * 2, Math.max(this.maxEntries, 1)); // a hash bucket larger than the batch
          continue;
        }
        if (state.mode === 'new' && BATCH_UNSUPPORTED.has(e.errno)) {
          state.mode = 'keys';
          return this.#batchByKeys(state, count);
        }
        throw e;
      }
      state.mode = 'batch';
      state.token = r.token;
      state.done = r.done;
      return this.#batch(r.count, r.keys, r.values, r.done);
    }
  }

  #batch(count: number, keys: Buffer, values: Buffer, done: boolean): MapBatch {
    return new MapBatch(count, keys, values, this.keySize, this.valueBufferSize, done, this.cpuStride);
  }

  #batchByKeys(state: CursorState, count: number): MapBatch {
    const op = this.#op('batchLookup');
    const keys = Buffer.alloc(count * this.keySize);
    const values = Buffer.alloc(count * this.valueBufferSize);
    let n = 0;
    while (n < count) {
      const prev = state.lastKey;
      const key = call(op, 'other', () => native.mapNextKey(this.#live('batchLookup'), prev));
      if (key === null) {
        state.done = true;
        break;
      }
      state.lastKey = key;
      const value = call(op, 'map', () => native.mapLookup(this.#live('batchLookup'), key));
      if (value === null) continue; // deleted meanwhile
      key.copy(keys, n * this.keySize);
      value.copy(values, n * this.valueBufferSize);
      n++;
    }
    return this.#batch(n, keys, values, state.done);
  }

  /** Every non-empty batch of a full walk (batchLookup with a fresh cursor until done). */
  *#batches(batchSize = 1024): IterableIterator<MapBatch> {
    const cursor = new MapBatchCursor();
    for (;;) {
      const b = this.batchLookup(cursor, batchSize);
      if (b.count > 0) yield b;
      if (b.done) return;
    }
  }

  /** All [key, value] pairs, read in batches. Per-CPU values are the raw concatenation. */
  *entries(batchSize = 1024): IterableIterator<[Buffer, Buffer]> {
    for (const b of this.#batches(batchSize)) {
      for (let i = 0; i < b.count; i++) yield [b.key(i), b.value(i)];
    }
  }

  /** How many entries the map holds now (a batch walk; no per-entry allocation). */
  count(batchSize = 4096): number {
    let n = 0;
    for (const b of this.#batches(batchSize)) n += b.count;
    return n;
  }

  pin(path: string): void {
    const op = this.#op('pin');
    checkPath(op, path);
    call(op, 'pin', () => native.objPin(this.#live('pin'), path));
  }

  /** Close the fd. Idempotent. */
  close(): void {
    this.#closed = true;
    native.fdClose(this[kHandle]);
  }

  #op(method: string): string {
    return `BpfMap.${method}(${this.name})`;
  }

  #live(method: string): FdHandle {
    if (this.#closed) throw new BpfError(this.#op(method), Errno.EBADF, 'the map is closed');
    return this[kHandle];
  }

  #checkKey(op: string, key: Buffer): void {
    checkBuffer(op, 'key', key);
    if (key.length !== this.keySize) throw invalid(op, `key must be ${this.keySize} bytes, got ${key.length}`);
  }
}

function roundUp8(n: number): number {
  return (n + 7) & ~7;
}
