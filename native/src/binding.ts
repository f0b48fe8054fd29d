// Loads the .node addon and describes its (private) surface. Nothing here is
// part of the public API.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

declare const brand: unique symbol;
/** An opaque native handle (a Napi::External). */
export type Handle<K extends 'fd' | 'object' | 'ring'> = { readonly [brand]: K };
export type FdHandle = Handle<'fd'>;
export type ObjHandle = Handle<'object'>;
export type RingHandle = Handle<'ring'>;

export interface NativeMapDesc {
  name: string; type: number; internal: boolean; keySize: number; valueSize: number; maxEntries: number;
  /** BTF type ids of the key and value (0: none). */
  keyTypeId: number; valueTypeId: number;
}
export interface NativeProgDesc { name: string; section: string; type: number }
export interface NativeBtfStruct {
  name: string; size: number; kind: 'struct' | 'union';
  members: { name: string; bitOffset: number; bitSize: number; size: number }[];
}
export interface NativeDatasecVar { name: string; offset: number; size: number; kind: 'int' | 'bool' | 'enum' | 'other'; signed: boolean }
export interface NativeDatasec { name: string; vars: NativeDatasecVar[] }
/** One entry of the BTF type table, as btfTypes() returns it (fields by kind). */
export interface NativeBtfType {
  kind: string; name: string;
  size?: number; type?: number; nelems?: number;
  signed?: boolean; bool?: boolean; char?: boolean; bits?: number; bitOffset?: number;
  members?: { name: string; type: number; bitOffset: number; bitSize: number }[];
  values?: [string, bigint][];
  linkage?: number; union?: boolean;
  vars?: { type: number; offset: number; size: number }[];
}
export interface NativeXdpQuery { attachMode: number; progId: number; drvProgId: number; skbProgId: number; hwProgId: number }
export interface NativeMapInfo { id: number; name: string; type: number; keySize: number; valueSize: number; maxEntries: number; flags: number }
export interface NativeProgInfo {
  id: number; name: string; tag: string; type: number; jitedLen: number; xlatedLen: number; runTimeNs: bigint; runCount: bigint;
}
export interface NativeLinkInfo { id: number; progId: number; type: number; ifindex?: number }
export interface NativeBatch { count: number; keys: Buffer; values: Buffer; token: Buffer; done: boolean }
export interface NativeTestRunArgs {
  data: Buffer; ctx: Buffer | null; repeat: number; flags: number; batchSize: number; dataOutSize: number; cpu: number;
}
export interface NativeTestRunResult { retval: number; duration: number; data: Buffer }
export type IdKind = 'map' | 'prog' | 'link';

export interface Native {
  numPossibleCpus(): number;
  ifNameToIndex(name: string): number;
  ifIndexToName(index: number): string;
  flock(fd: number, op: number): boolean;
  xdpQuery(ifindex: number): NativeXdpQuery;

  objOpen(path: string, kernelLogLevel: number): ObjHandle;
  objLoad(o: ObjHandle): void;
  objKernelLog(o: ObjHandle): string;
  objClose(o: ObjHandle): void;
  objMaps(o: ObjHandle): NativeMapDesc[];
  objPrograms(o: ObjHandle): NativeProgDesc[];
  objSetMaxEntries(o: ObjHandle, map: string, n: number): void;
  objSetPinPath(o: ObjHandle, map: string, path: string): void;
  objReuseFd(o: ObjHandle, map: string, fd: FdHandle): void;
  objWriteInitialValue(o: ObjHandle, map: string, offset: number, bytes: Buffer): void;
  objMapFd(o: ObjHandle, map: string): FdHandle;
  objProgFd(o: ObjHandle, prog: string): FdHandle;
  btfStruct(o: ObjHandle, name: string): NativeBtfStruct | null;
  btfEnum(o: ObjHandle, name: string): [string, number][] | null;
  btfDatasecs(o: ObjHandle): NativeDatasec[];
  btfTypes(o: ObjHandle): (NativeBtfType | null)[];

  fdClose(h: FdHandle): void;
  fdNumber(h: FdHandle): number;
  objPin(h: FdHandle, path: string): void;
  objGet(path: string): FdHandle;
  fdById(kind: IdKind, id: number): FdHandle;
  nextId(kind: IdKind, start: number): number | null;

  mapInfo(h: FdHandle): NativeMapInfo;
  mapLookup(h: FdHandle, key: Buffer): Buffer | null;
  mapUpdate(h: FdHandle, key: Buffer, value: Buffer, flags: number): void;
  mapDelete(h: FdHandle, key: Buffer): boolean;
  mapNextKey(h: FdHandle, key: Buffer | null): Buffer | null;
  mapLookupBatch(h: FdHandle, token: Buffer | null, count: number): NativeBatch;

  progInfo(h: FdHandle): NativeProgInfo;
  progTestRun(h: FdHandle, args: NativeTestRunArgs): NativeTestRunResult;
  linkCreateXdp(prog: FdHandle, ifindex: number, flags: number): FdHandle;
  linkCreateTracing(prog: FdHandle): FdHandle;
  linkUpdate(link: FdHandle, prog: FdHandle): void;
  linkDetach(link: FdHandle): void;
  linkInfo(link: FdHandle): NativeLinkInfo;

  ringOpen(map: FdHandle, cb: (records: Buffer[], errno: number) => void): RingHandle;
  ringClose(r: RingHandle): Promise<void>;
  ringRef(r: RingHandle, ref: boolean): void;
}

/**
 * The addon is built into <package>/build/Release by the package's install step
 * (`cmake-js compile`, run by `npm install`) or by the build of an application
 * that includes this package's CMakeLists.txt; XDP_TS_LOADER_BINARY overrides it.
 */
function locate(): string {
  const fromEnv = process.env['XDP_TS_LOADER_BINARY'];
  if (fromEnv) return resolve(fromEnv);
  // This file lives in <package>/src (tests) or <package>/dist (compiled).
  const packageDir = resolve(dirname(fileURLToPath(import.meta.url)), '..');
  const path = join(packageDir, 'build', 'Release', 'xdp_ts_loader.node');
  if (!existsSync(path)) {
    throw new Error(
      `@xdp-ts/loader: native addon not built: ${path} is missing ` +
        `(build it with \`npx cmake-js compile\` in ${packageDir}; it needs libbpf-dev, pkg-config, cmake and a C++ compiler), ` +
        'or set XDP_TS_LOADER_BINARY',
    );
  }
  return path;
}

export const binaryPath: string = locate();
export const native: Native = createRequire(import.meta.url)(binaryPath) as Native;
