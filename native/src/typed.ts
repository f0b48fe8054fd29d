// The run-time half of generated modules (see gen.ts): host-order scalar
// access, codecs (whole values, single members, single array elements),
// typed map wrappers and opening every map of a module at once, global
// setters, and the layout fingerprint and check. Generated code supplies the
// offsets and strides, taken from BTF.
import { endianness } from 'node:os';
import { native } from './binding.js';
import { BtfTable, describeLayouts, layoutFingerprint } from './btf.js';
import { BpfError, Errno, call, invalid } from './errors.js';
import { kHandle } from './internal.js';
import { BpfMap, MapBatchCursor, numPossibleCpus, type UpdateFlag } from './map.js';
import type { BpfObject } from './object.js';

const LE = endianness() === 'LE';

/** Scalars in host byte order (as the BPF program stores them), at byte offsets. */
export const hostOrder = {
  readU8: (b: Buffer, o: number): number => b.readUInt8(o),
  readI8: (b: Buffer, o: number): number => b.readInt8(o),
  readU16: (b: Buffer, o: number): number => (LE ? b.readUInt16LE(o) : b.readUInt16BE(o)),
  readI16: (b: Buffer, o: number): number => (LE ? b.readInt16LE(o) : b.readInt16BE(o)),
  readU32: (b: Buffer, o: number): number => (LE ? b.readUInt32LE(o) : b.readUInt32BE(o)),
  readI32: (b: Buffer, o: number): number => (LE ? b.readInt32LE(o) : b.readInt32BE(o)),
  readU64: (b: Buffer, o: number): bigint => (LE ? b.readBigUInt64LE(o) : b.readBigUInt64BE(o)),
  readI64: (b: Buffer, o: number): bigint => (LE ? b.readBigInt64LE(o) : b.readBigInt64BE(o)),
  readBool: (b: Buffer, o: number): boolean => b[o] !== 0,
  writeU8: (b: Buffer, o: number, v: number): void => void b.writeUInt8(v, o),
  writeI8: (b: Buffer, o: number, v: number): void => void b.writeInt8(v, o),
  writeU16: (b: Buffer, o: number, v: number): void => void (LE ? b.writeUInt16LE(v, o) : b.writeUInt16BE(v, o)),
  writeI16: (b: Buffer, o: number, v: number): void => void (LE ? b.writeInt16LE(v, o) : b.writeInt16BE(v, o)),
  writeU32: (b: Buffer, o: number, v: number): void => void (LE ? b.writeUInt32LE(v, o) : b.writeUInt32BE(v, o)),
  writeI32: (b: Buffer, o: number, v: number): void => void (LE ? b.writeInt32LE(v, o) : b.writeInt32BE(v, o)),
  writeU64: (b: Buffer, o: number, v: bigint): void => void (LE ? b.writeBigUInt64LE(v, o) : b.writeBigUInt64BE(v, o)),
  writeI64: (b: Buffer, o: number, v: bigint): void => void (LE ? b.writeBigInt64LE(v, o) : b.writeBigInt64BE(v, o)),
  writeBool: (b: Buffer, o: number, v: boolean): void => void (b[o] = v ? 1 : 0),
} as const;

/** Encodes and decodes one C type at a byte offset. */
export interface Codec<T> {
  /** sizeof the C type. */
  readonly size: number;
  decode(b: Buffer, offset?: number): T;
  encodeInto(v: T, b: Buffer, offset?: number): void;
  /** A new Buffer of `size` bytes (padding zeroed). */
  encode(v: T): Buffer;
  /** The value whose bytes are all zero. */
  zero(): T;
}

/** Reads one member of a struct in place: `get.count(buf, structOffset)`. */
export type FieldReaders<T> = { readonly [K in keyof T]: (b: Buffer, offset?: number) => T[K] };

/** The array members of T, each with its element type. */
type ArrayMembers<T> = { [K in keyof T as T[K] extends readonly unknown[] ? K : never]: T[K] extends readonly (infer E)[] ? E : never };
/** Reads one element of an array member in place: `at.hist(buf, structOffset, i)`. */
export type ElementReaders<T> = { readonly [K in keyof ArrayMembers<T>]: (b: Buffer, offset: number, i: number) => ArrayMembers<T>[K] };

/** A struct's codec, with its member offsets (from BTF) and readers of single members in place. */
export interface StructCodec<T, F extends string = string> extends Codec<T> {
  /** The C struct name. */
  readonly name: string;
  readonly offsets: Readonly<Record<F, number>>;
  /** Decode one member of the struct that starts at `offset`, without decoding the others. */
  readonly get: FieldReaders<T>;
  /** Decode element i of an array member (of its outermost dimension), without decoding the others. */
  readonly at: ElementReaders<T>;
}

export function codec<T>(size: number, decode: (b: Buffer, o: number) => T, encodeInto: (v: T, b: Buffer, o: number) => void): Codec<T> {
  const c: Codec<T> = {
    size,
    decode: (b, o = 0) => {
      if (o < 0 || o + size > b.length) throw new RangeError(`decode: ${size} bytes at ${o} do not fit in ${b.length}`);
      return decode(b, o);
    },
    encodeInto: (v, b, o = 0) => {
      if (o < 0 || o + size > b.length) throw new RangeError(`encode: ${size} bytes at ${o} do not fit in ${b.length}`);
      encodeInto(v, b, o);
    },
    encode: (v) => {
      const b = Buffer.alloc(size);
      encodeInto(v, b, 0);
      return b;
    },
    zero: () => decode(Buffer.alloc(size), 0),
  };
  return c;
}

export function structCodec<T, F extends string>(
  name: string,
  size: number,
  offsets: Readonly<Record<F, number>>,
  readers: { readonly [K in keyof T]: (b: Buffer, o: number) => T[K] },
  elementReaders: { readonly [K in keyof ArrayMembers<T>]: (b: Buffer, o: number, i: number) => ArrayMembers<T>[K] },
  decode: (b: Buffer, o: number) => T,
  encodeInto: (v: T, b: Buffer, o: number) => void,
): StructCodec<T, F> {
  const fits = (what: PropertyKey, b: Buffer, o: number): void => {
    if (o < 0 || o + size > b.length) throw new RangeError(`${name}.${String(what)}: a ${size}-byte struct at ${o} does not fit in ${b.length}`);
  };
  const get = {} as Record<keyof T, (b: Buffer, o?: number) => unknown>;
  for (const [k, read] of Object.entries(readers) as [keyof T, (b: Buffer, o: number) => unknown][]) {
    get[k] = (b, o = 0) => (fits(k, b, o), read(b, o));
  }
  const at = {} as Record<string, (b: Buffer, o: number, i: number) => unknown>;
  for (const [k, read] of Object.entries(elementReaders) as [string, (b: Buffer, o: number, i: number) => unknown][]) {
    at[k] = (b, o, i) => (fits(k, b, o), read(b, o, i));
  }
  return { ...codec(size, decode, encodeInto), name, offsets, get: get as FieldReaders<T>, at: at as ElementReaders<T> };
}

/** `i` if it indexes an array of `count` elements; else a RangeError naming the member. */
export function index(i: number, count: number, what: string): number {
  if (!Number.isInteger(i) || i < 0 || i >= count) throw new RangeError(`${what}: index ${i} is not in 0..${count - 1}`);
  return i;
}

/** Codecs of the C scalar types, and of byte arrays. */
export const codecs = {
  u8: codec(1, hostOrder.readU8, (v: number, b, o) => hostOrder.writeU8(b, o, v)),
  s8: codec(1, hostOrder.readI8, (v: number, b, o) => hostOrder.writeI8(b, o, v)),
  u16: codec(2, hostOrder.readU16, (v: number, b, o) => hostOrder.writeU16(b, o, v)),
  s16: codec(2, hostOrder.readI16, (v: number, b, o) => hostOrder.writeI16(b, o, v)),
  u32: codec(4, hostOrder.readU32, (v: number, b, o) => hostOrder.writeU32(b, o, v)),
  s32: codec(4, hostOrder.readI32, (v: number, b, o) => hostOrder.writeI32(b, o, v)),
  u64: codec(8, hostOrder.readU64, (v: bigint, b, o) => hostOrder.writeU64(b, o, v)),
  s64: codec(8, hostOrder.readI64, (v: bigint, b, o) => hostOrder.writeI64(b, o, v)),
  bool: codec(1, hostOrder.readBool, (v: boolean, b, o) => hostOrder.writeBool(b, o, v)),
  bytes: (size: number): Codec<Buffer> => codec(size, (b, o) => readBytes(b, o, size), (v, b, o) => writeBytes(b, o, size, v, 'value')),
  array: <T>(elem: Codec<T>, count: number, stride: number): Codec<T[]> =>
    codec(count * stride, (b, o) => readArray(count, (i) => elem.decode(b, o + i * stride)),
      (v, b, o) => writeArray(v, count, 'value', (x, i) => elem.encodeInto(x, b, o + i * stride))),
} as const;

/** A copy of `size` bytes at `o`. */
export function readBytes(b: Buffer, o: number, size: number): Buffer {
  return Buffer.from(b.subarray(o, o + size));
}

export function writeBytes(b: Buffer, o: number, size: number, v: Uint8Array, what: string): void {
  if (!(v instanceof Uint8Array)) throw new TypeError(`${what} must be a Buffer or Uint8Array`);
  if (v.length !== size) throw new RangeError(`${what} must be ${size} bytes, got ${v.length}`);
  b.set(v, o);
}

export function readArray<T>(count: number, read: (i: number) => T): T[] {
  const out = new Array<T>(count);
  for (let i = 0; i < count; i++) out[i] = read(i);
  return out;
}

export function writeArray<T>(v: readonly T[], count: number, what: string, write: (x: T, i: number) => void): void {
  if (!Array.isArray(v)) throw new TypeError(`${what} must be an array`);
  if (v.length !== count) throw new RangeError(`${what} must have ${count} elements, got ${v.length}`);
  for (let i = 0; i < count; i++) write(v[i]!, i);
}

// ---------------------------------------------------------------- maps

/** A batch of decoded entries (see TypedMap.batchLookup). */
export interface TypedBatch<K, V> {
  readonly entries: [K, V][];
  readonly done: boolean;
}

/** A BpfMap whose keys and values go through codecs. `raw` is the map itself. */
export class TypedMap<K, V> {
  constructor(
    readonly raw: BpfMap,
    readonly key: Codec<K>,
    readonly value: Codec<V>,
  ) {
    checkSizes(raw, key, value);
    if (raw.perCpu) throw invalid(`TypedMap(${raw.name})`, 'a per-CPU map: use TypedPerCpuMap');
  }

  lookup(k: K): V | undefined {
    const v = this.raw.lookup(this.key.encode(k));
    return v === undefined ? undefined : this.value.decode(v);
  }

  /** The value's bytes, not decoded (read single members in place with the struct codec's `get`). */
  lookupRaw(k: K): Buffer | undefined {
    return this.raw.lookup(this.key.encode(k));
  }

  update(k: K, v: V, flag: UpdateFlag = 'any'): void {
    this.raw.update(this.key.encode(k), this.value.encode(v), flag);
  }

  delete(k: K): boolean {
    return this.raw.delete(this.key.encode(k));
  }

  *keys(): IterableIterator<K> {
    for (const k of this.raw.keys()) yield this.key.decode(k);
  }

  *entries(batchSize?: number): IterableIterator<[K, V]> {
    for (const [k, v] of this.raw.entries(batchSize)) yield [this.key.decode(k), this.value.decode(v)];
  }

  /** One bpf_map_lookup_batch step, decoded (see BpfMap.batchLookup). */
  batchLookup(cursor: MapBatchCursor, count: number): TypedBatch<K, V> {
    const b = this.raw.batchLookup(cursor, count);
    const entries: [K, V][] = [];
    for (let i = 0; i < b.count; i++) entries.push([this.key.decode(b.keys, b.keyAt(i)), this.value.decode(b.values, b.valueAt(i))]);
    return { entries, done: b.done };
  }

  count(batchSize?: number): number {
    return this.raw.count(batchSize);
  }

  close(): void {
    this.raw.close();
  }
}

/**
 * A per-CPU map: lookups return one decoded value per possible CPU; updates
 * take one value (copied to every CPU) or one per CPU.
 */
export class TypedPerCpuMap<K, V> {
  constructor(
    readonly raw: BpfMap,
    readonly key: Codec<K>,
    readonly value: Codec<V>,
  ) {
    checkSizes(raw, key, value);
    if (!raw.perCpu) throw invalid(`TypedPerCpuMap(${raw.name})`, 'not a per-CPU map: use TypedMap');
  }

  /** One value per possible CPU (index = CPU number), or undefined. */
  lookup(k: K): V[] | undefined {
    const v = this.raw.lookup(this.key.encode(k));
    return v === undefined ? undefined : this.#split(v, 0);
  }

  update(k: K, v: V | readonly V[], flag: UpdateFlag = 'any'): void {
    const op = `TypedPerCpuMap.update(${this.raw.name})`;
    if (!Array.isArray(v)) {
      this.raw.update(this.key.encode(k), this.value.encode(v as V), flag);
      return;
    }
    const cpus = numPossibleCpus();
    if (v.length !== cpus) throw invalid(op, `needs one value per possible CPU (${cpus}), got ${v.length}`);
    const buf = Buffer.alloc(this.raw.valueBufferSize);
    const stride = this.raw.valueBufferSize / cpus;
    (v as readonly V[]).forEach((x, cpu) => this.value.encodeInto(x, buf, cpu * stride));
    this.raw.update(this.key.encode(k), buf, flag);
  }

  delete(k: K): boolean {
    return this.raw.delete(this.key.encode(k));
  }

  *keys(): IterableIterator<K> {
    for (const k of this.raw.keys()) yield this.key.decode(k);
  }

  *entries(batchSize?: number): IterableIterator<[K, V[]]> {
    for (const [k, v] of this.raw.entries(batchSize)) yield [this.key.decode(k), this.#split(v, 0)];
  }

  batchLookup(cursor: MapBatchCursor, count: number): TypedBatch<K, V[]> {
    const b = this.raw.batchLookup(cursor, count);
    const entries: [K, V[]][] = [];
    for (let i = 0; i < b.count; i++) entries.push([this.key.decode(b.keys, b.keyAt(i)), this.#split(b.values, b.valueAt(i))]);
    return { entries, done: b.done };
  }

  count(batchSize?: number): number {
    return this.raw.count(batchSize);
  }

  close(): void {
    this.raw.close();
  }

  #split(buf: Buffer, at: number): V[] {
    const cpus = numPossibleCpus();
    const stride = this.raw.valueBufferSize / cpus;
    return readArray(cpus, (cpu) => this.value.decode(buf, at + cpu * stride));
  }
}

function checkSizes(raw: BpfMap, key: Codec<unknown>, value: Codec<unknown>): void {
  if (raw.keySize !== key.size || raw.valueSize !== value.size) {
    throw invalid(`typed map ${raw.name}`, `the map has ${raw.keySize}-byte keys and ${raw.valueSize}-byte values, ` +
      `the generated code expects ${key.size} and ${value.size}: regenerate it from this object`);
  }
}

/** A map of a generated module: its name and type, and how to open it typed. */
export interface MapDef<M> {
  readonly name: string;
  readonly type: number;
  /** The map of a loaded object (a dup'd fd: close it). */
  open(obj: BpfObject): M;
  fromPinned(path: string): M;
  /** Wrap a BpfMap you already hold (it is now owned by the result). */
  wrap(map: BpfMap): M;
}

export function mapDef<K, V>(name: string, type: number, key: Codec<K>, value: Codec<V>): MapDef<TypedMap<K, V>> {
  return defineMap(name, type, (m) => new TypedMap(m, key, value));
}

export function perCpuMapDef<K, V>(name: string, type: number, key: Codec<K>, value: Codec<V>): MapDef<TypedPerCpuMap<K, V>> {
  return defineMap(name, type, (m) => new TypedPerCpuMap(m, key, value));
}

/** What the opened maps of a generated module's `maps` are: each map's typed wrapper, by the same key. */
export type OpenedMaps<D> = { readonly [K in keyof D]: D[K] extends MapDef<infer M> ? M : never };

/**
 * Open every map of `defs` (a generated module's `maps`): `get` gives the
 * BpfMap of a definition (e.g. `(d) => obj.map(d.name)`, or a pin), which is
 * then checked and wrapped. All or nothing: a failure closes those already opened.
 */
export function openMaps<D extends Readonly<Record<string, MapDef<{ close(): void }>>>>(defs: D, get: (def: D[keyof D]) => BpfMap): OpenedMaps<D> {
  const opened: Record<string, { close(): void }> = {};
  try {
    for (const [key, def] of Object.entries(defs) as [string, D[keyof D]][]) opened[key] = def.wrap(get(def));
  } catch (e) {
    closeMaps(opened);
    throw e;
  }
  return opened as OpenedMaps<D>;
}

/** Close every map that openMaps() returned. */
export function closeMaps(maps: Readonly<Record<string, { close(): void }>>): void {
  for (const m of Object.values(maps)) m.close();
}

/** A map without key/value types in BTF (ring buffers, program arrays...): a plain BpfMap. */
export function rawMapDef(name: string, type: number): MapDef<BpfMap> {
  return defineMap(name, type, (m) => m);
}

function defineMap<M>(name: string, type: number, make: (m: BpfMap) => M): MapDef<M> {
  const wrap = (m: BpfMap): M => {
    if (m.type !== type) {
      m.close();
      throw invalid(`map ${name}`, `type ${m.type}, the generated code expects ${type}`);
    }
    try {
      return make(m);
    } catch (e) {
      m.close();
      throw e;
    }
  };
  return { name, type, open: (obj) => wrap(obj.map(name)), fromPinned: (path) => wrap(BpfMap.fromPinned(path)), wrap };
}

// ---------------------------------------------------------------- globals and layout

/** How a generated module sets one global: its name in BTF and its codec. */
export type GlobalDefs<G> = { readonly [P in keyof G]-?: readonly [name: string, codec: Codec<G[P]>] };

/** Set globals (`const volatile` in .rodata, or .data/.bss) between open and load. */
export function setGlobals<G>(obj: BpfObject, defs: GlobalDefs<G>, values: Partial<G>): void {
  for (const key of Object.keys(values) as (keyof G)[]) {
    const def = defs[key];
    if (def === undefined) throw new TypeError(`setGlobals: no global ${String(key)}`);
    const v = values[key];
    if (v === undefined) continue;
    obj.setGlobal(def[0], def[1].encode(v as G[keyof G]));
  }
}

/** The layout description of an object's structs and enums (see describeLayouts in btf.ts). */
export function objectLayout(obj: BpfObject, structs: readonly string[], enums: readonly string[]): string {
  const types = call('objectLayout', 'other', () => native.btfTypes(obj[kHandle]));
  return describeLayouts(new BtfTable(types), structs, enums);
}

/**
 * SHA-256 (hex) of the object's layouts of these structs and enums: what a
 * generated module records as LAYOUT_SHA256 when made from this object.
 */
export function objectFingerprint(obj: BpfObject, structs: readonly string[], enums: readonly string[]): string {
  try {
    return layoutFingerprint(objectLayout(obj, structs, enums));
  } catch (e) {
    if (e instanceof BpfError) throw e;
    throw new BpfError('objectFingerprint', Errno.EINVAL, `${obj.path}: ${(e as Error).message}`);
  }
}

/**
 * Throw unless the object's BTF describes these structs and enums exactly as
 * the generated module saw them in `source` (`fingerprint`): the object and
 * the module agree on every layout.
 */
export function checkLayout(obj: BpfObject, source: string, fingerprint: string, structs: readonly string[], enums: readonly string[]): void {
  const op = 'checkLayout';
  let got: string;
  try {
    got = layoutFingerprint(objectLayout(obj, structs, enums));
  } catch (e) {
    if (e instanceof BpfError) throw e;
    throw new BpfError(op, Errno.EINVAL, `${obj.path}: ${(e as Error).message}, unlike ${source} which the module was generated from: regenerate it`);
  }
  if (got !== fingerprint) {
    throw new BpfError(op, Errno.EINVAL, `${obj.path} has layouts (${got.slice(0, 12)}…) other than ${source} (${fingerprint.slice(0, 12)}…), which the module was generated from: regenerate it`);
  }
}
