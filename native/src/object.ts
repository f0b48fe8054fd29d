import { endianness } from 'node:os';
import { basename } from 'node:path';
import { native, type NativeDatasecVar, type NativeMapDesc, type ObjHandle } from './binding.js';
import { BpfError, Errno, VerifierError, call, invalid, toBpfError } from './errors.js';
import { checkPath, checkU32, kHandle, kInternal } from './internal.js';
import { BpfMap } from './map.js';
import { Program } from './program.js';

export interface OpenOptions {
  /**
   * Kernel verifier log level for every program (1: on failure details, 2:
   * every instruction, 4: stats). The log goes to a 16 MiB buffer readable with
   * kernelLog() and is added to VerifierError.log.
   */
  kernelLogLevel?: number;
}

export interface MapSpec { name: string; type: number; keySize: number; valueSize: number; maxEntries: number; internal: boolean }

export interface BtfStruct { name: string; size: number; members: { name: string; offset: number; size: number }[] }

/** Section kinds whose variables setGlobal() can set. */
const GLOBAL_SECTION = /^\.(rodata|data|bss)(\.|$)/;

const LE = endianness() === 'LE';

/**
 * An ELF BPF object, like cilium/ebpf's CollectionSpec before load() and its
 * Collection after. Maps and programs taken from it with map() / program()
 * hold their own fds.
 */
export class BpfObject {
  readonly path: string;
  readonly [kHandle]: ObjHandle;
  #loaded = false;
  #failed = false;
  #closed = false;

  private constructor(path: string, handle: ObjHandle) {
    this.path = path;
    this[kHandle] = handle;
  }

  /** bpf_object__open_file: parse the ELF; nothing is loaded into the kernel yet. */
  static open(path: string, opts: OpenOptions = {}): BpfObject {
    const op = `BpfObject.open(${path})`;
    checkPath(op, path);
    const level = opts.kernelLogLevel ?? 0;
    checkU32(op, 'kernelLogLevel', level);
    return new BpfObject(path, call(op, 'file', () => native.objOpen(path, level)));
  }

  get loaded(): boolean {
    return this.#loaded;
  }

  /** All maps, including internal ones such as "<obj>.rodata". */
  mapNames(): string[] {
    return this.#maps('mapNames').map((m) => m.name);
  }

  /** A map as the object declares it (before load) or as it was created (after): like cilium/ebpf's MapSpec. */
  mapSpec(name: string): MapSpec {
    const op = this.#op(`mapSpec(${name})`);
    this.#checkMap(op, name);
    const m = this.#maps('mapSpec').find((d) => d.name === name)!;
    return { name: m.name, type: m.type, keySize: m.keySize, valueSize: m.valueSize, maxEntries: m.maxEntries, internal: m.internal };
  }

  programNames(): string[] {
    return call(this.#op('programNames'), 'other', () => native.objPrograms(this.#live('programNames'))).map((p) => p.name);
  }

  /**
   * Set a global variable (`const volatile` in .rodata, or .data / .bss) before
   * load, as skeletons do. boolean needs a 1-byte variable, bigint an 8-byte
   * one, number an integer/enum/bool of any size (range-checked); a Buffer must
   * match the variable's size exactly.
   */
  setGlobal(name: string, value: Buffer | boolean | number | bigint): void {
    const op = this.#op(`setGlobal(${name})`);
    this.#beforeLoad(op);
    const found = this.#findGlobal(op, name);
    const bytes = encodeGlobal(op, found.v, value);
    call(op, 'other', () => native.objWriteInitialValue(this.#live('setGlobal'), found.map, found.v.offset, bytes));
  }

  setMaxEntries(map: string, n: number): void {
    const op = this.#op(`setMaxEntries(${map})`);
    this.#beforeLoad(op);
    this.#checkMap(op, map);
    checkU32(op, 'n', n, 1);
    call(op, 'other', () => native.objSetMaxEntries(this.#live('setMaxEntries'), map, n));
  }

  /** On load, libbpf reuses the map pinned at `path` if compatible (else fails), or creates and pins it. */
  setPinPath(map: string, path: string): void {
    const op = this.#op(`setPinPath(${map})`);
    this.#beforeLoad(op);
    this.#checkMap(op, map);
    checkPath(op, path);
    call(op, 'other', () => native.objSetPinPath(this.#live('setPinPath'), map, path));
  }

  /** Use an existing map instead of creating one (bpf_map__reuse_fd; the fd is dup'd). */
  reuseMap(map: string, existing: BpfMap): void {
    const op = this.#op(`reuseMap(${map})`);
    this.#beforeLoad(op);
    this.#checkMap(op, map);
    if (!(existing instanceof BpfMap)) throw new TypeError(`${op}: existing must be a BpfMap`);
    if (existing.fd < 0) throw new BpfError(op, Errno.EBADF, 'the map is closed');
    call(op, 'other', () => native.objReuseFd(this.#live('reuseMap'), map, existing[kHandle]));
  }

  /** Create maps and load programs. Throws VerifierError (with libbpf's log) on failure; the object is then unusable. */
  load(): void {
    const op = this.#op(`load(${basename(this.path)})`);
    this.#beforeLoad(op);
    try {
      native.objLoad(this.#live('load'));
    } catch (e) {
      this.#failed = true;
      const typed = toBpfError(op, 'load', e);
      throw typed instanceof VerifierError ? withVerdict(typed) : typed;
    }
    this.#loaded = true;
  }

  /** The kernel log buffer when opened with kernelLogLevel, else ''. */
  kernelLog(): string {
    return native.objKernelLog(this.#live('kernelLog'));
  }

  /** A new BpfMap with its own (dup'd) fd: close it yourself; it outlives this object. */
  map(name: string): BpfMap {
    const op = this.#op(`map(${name})`);
    this.#afterLoad(op);
    this.#checkMap(op, name);
    return new BpfMap(kInternal, call(op, 'other', () => native.objMapFd(this.#live('map'), name)), name);
  }

  /** A new Program with its own (dup'd) fd: close it yourself; it outlives this object. */
  program(name: string): Program {
    const op = this.#op(`program(${name})`);
    this.#afterLoad(op);
    if (!this.programNames().includes(name)) {
      throw new BpfError(op, Errno.ENOENT, `no program named "${name}" (programs: ${this.programNames().join(', ')})`);
    }
    return new Program(kInternal, call(op, 'other', () => native.objProgFd(this.#live('program'), name)), name);
  }

  /** A struct or union from the object's BTF; member offsets and sizes in bytes (bitfields: the containing type's size). */
  btfStruct(name: string): BtfStruct {
    const op = this.#op(`btfStruct(${name})`);
    const s = call(op, 'other', () => native.btfStruct(this.#live('btfStruct'), name));
    if (s === null) throw new BpfError(op, Errno.ENOENT, `no struct or union named "${name}" in BTF`);
    return {
      name: s.name,
      size: s.size,
      members: s.members.map((m) => ({ name: m.name, offset: Math.floor(m.bitOffset / 8), size: m.size })),
    };
  }

  /** Enumerator values of a BTF enum by name. */
  btfEnum(name: string): Map<string, number> {
    const op = this.#op(`btfEnum(${name})`);
    const e = call(op, 'other', () => native.btfEnum(this.#live('btfEnum'), name));
    if (e === null) throw new BpfError(op, Errno.ENOENT, `no enum named "${name}" in BTF`);
    return new Map(e);
  }

  /** bpf_object__close: unloads programs and maps not otherwise held (pins, links, BpfMap/Program fds). Idempotent. */
  close(): void {
    this.#closed = true;
    native.objClose(this[kHandle]);
  }

  #op(method: string): string {
    return `BpfObject.${method}`;
  }

  #live(method: string): ObjHandle {
    if (this.#closed) throw new BpfError(this.#op(method), Errno.EBADF, 'the object is closed');
    return this[kHandle];
  }

  #beforeLoad(op: string): void {
    if (this.#loaded) throw new BpfError(op, Errno.EBUSY, 'the object is already loaded');
    if (this.#failed) throw new BpfError(op, Errno.EINVAL, 'load() failed before: open the object again');
  }

  #afterLoad(op: string): void {
    if (!this.#loaded) throw new BpfError(op, Errno.EINVAL, 'the object is not loaded: call load() first');
  }

  #maps(method: string): NativeMapDesc[] {
    return call(this.#op(method), 'other', () => native.objMaps(this.#live(method)));
  }

  #checkMap(op: string, map: string): void {
    if (typeof map !== 'string') throw new TypeError(`${op}: map name must be a string`);
    const names = this.mapNames();
    if (!names.includes(map)) throw new BpfError(op, Errno.ENOENT, `no map named "${map}" (maps: ${names.join(', ')})`);
  }

  #findGlobal(op: string, name: string): { map: string; v: NativeDatasecVar } {
    const secs = call(op, 'other', () => native.btfDatasecs(this.#live('setGlobal')));
    const internal = this.#maps('setGlobal').filter((m) => m.internal);
    for (const sec of secs) {
      if (!GLOBAL_SECTION.test(sec.name)) continue;
      const v = sec.vars.find((x) => x.name === name);
      if (v === undefined) continue;
      // libbpf names internal maps "<obj prefix><section>", or the section itself (truncated to 15) for custom ones.
      const map = internal.find((m) => m.name.endsWith(sec.name) || m.name === sec.name.slice(0, 15));
      if (map === undefined) throw new BpfError(op, Errno.ENOENT, `no map backs section ${sec.name}`);
      return { map: map.name, v };
    }
    throw new BpfError(op, Errno.ENOENT, `no global variable "${name}" in .rodata/.data/.bss`);
  }
}

/**
 * Put the verifier's complaint (the line before "processed N insns") and the
 * program name into the message; the full text stays in `log`.
 */
function withVerdict(e: VerifierError): VerifierError {
  const lines = e.log.split('\n');
  const done = lines.findIndex((l) => /^processed \d+ insns/.test(l));
  const verdict = done > 0 ? lines[done - 1]!.trim() : '';
  const prog = /prog '([^']+)': failed to load/.exec(e.log)?.[1];
  if (!verdict && !prog) return e;
  const text = `${prog ? `program ${prog}: ` : ''}${e.message.slice(e.op.length + 2, -(e.code.length + 3))}${verdict ? `: ${verdict}` : ''}`;
  return new VerifierError(e.op, e.errno, text, e.log, e.syscall);
}

function encodeGlobal(op: string, v: NativeDatasecVar, value: Buffer | boolean | number | bigint): Buffer {
  const size = v.size;
  if (Buffer.isBuffer(value)) {
    if (value.length !== size) throw invalid(op, `value must be ${size} bytes, got ${value.length}`);
    return value;
  }
  if (typeof value === 'boolean') {
    if (size !== 1) throw invalid(op, `a boolean needs a 1-byte variable; "${v.name}" has ${size} bytes`);
    return Buffer.from([value ? 1 : 0]);
  }
  if (typeof value === 'bigint') {
    if (size !== 8) throw invalid(op, `a bigint needs an 8-byte variable; "${v.name}" has ${size} bytes`);
    if (v.kind !== 'int' && v.kind !== 'enum') throw invalid(op, `"${v.name}" is not an integer`);
    return encodeInt(op, value, size, v.signed);
  }
  if (typeof value === 'number') {
    if (v.kind === 'other') throw invalid(op, `"${v.name}" is not an integer, enum or bool: pass a Buffer`);
    if (!Number.isSafeInteger(value)) throw invalid(op, `${value} is not a safe integer`);
    if (![1, 2, 4, 8].includes(size)) throw invalid(op, `unsupported integer size ${size}`);
    return encodeInt(op, BigInt(value), size, v.signed);
  }
  throw new TypeError(`${op}: value must be a Buffer, boolean, number or bigint`);
}

function encodeInt(op: string, n: bigint, size: number, signed: boolean): Buffer {
  const bits = BigInt(size * 8);
  const min = signed ? -(1n << (bits - 1n)) : 0n;
  const max = signed ? (1n << (bits - 1n)) - 1n : (1n << bits) - 1n;
  if (n < min || n > max) throw invalid(op, `${n} does not fit in ${signed ? 'a signed' : 'an unsigned'} ${size}-byte variable`);
  let u = BigInt.asUintN(size * 8, n);
  const out = Buffer.alloc(size);
  for (let i = 0; i < size; i++) {
    out[LE ? i : size - 1 - i] = Number(u & 0xffn);
    u >>= 8n;
  }
  return out;
}
