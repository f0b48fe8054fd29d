/**
 * The connrate datapath as one object: load the XDP program, feed it
 * configuration, addresses and routes, read its counters. Its maps, globals
 * and structs are the typed handles of datapath.gen.ts.
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { BpfError, BpfMap, BpfObject, MapBatch, MapBatchCursor, Program, closeMaps, numPossibleCpus, openMaps } from '@xdp-ts/loader';
import { ConnrateError, EXIT, NoDatapathError } from '../errors.js';
import { addrBytes } from '../domain/addr.js';
import { type AppliedConfig, type DatapathConfig, periodNs, rebaseClock } from '../domain/limits.js';
import type { PinDir } from './pins.js';
import {
  type CounterName,
  type PortKey,
  type PortStats,
  TAG_ROUTE,
  TOKEN,
  abiFingerprint,
  decodeConfig,
  encodeConfig,
  encodeLocals,
  lpmKey,
  lpmPrefix,
  portKey,
  portKeyOf,
  sumCounters,
  sumPortStats,
} from './abi.js';
import * as gen from './datapath.gen.js';

/** The compiled program, built by `npm run build` (override: CONNRATE_BPF_OBJECT). */
export function defaultObjectPath(): string {
  return process.env.CONNRATE_BPF_OBJECT ?? fileURLToPath(new URL('../../build/bpf/connrate.bpf.o', import.meta.url));
}

/** Map sizes, set before load. */
export interface MapSizes {
  readonly buckets?: number;
  readonly udpFlows?: number;
  readonly localAddrs?: number;
  readonly prefixes?: number;
  readonly portStats?: number;
  readonly eventRing?: number;
}

/** The maps each size applies to (drop_stats holds a bucket's per-CPU drops; port_slots indexes port_stats). */
const SIZE_TO_MAPS: Readonly<Record<keyof MapSizes, readonly { readonly name: string }[]>> = {
  buckets: [gen.maps.buckets, gen.maps.dropStats],
  udpFlows: [gen.maps.udpFlows],
  localAddrs: [gen.maps.localAddrs],
  prefixes: [gen.maps.srcPrefixes],
  portStats: [gen.maps.portSlots, gen.maps.portStats],
  eventRing: [gen.maps.events],
};

/** Every map of the program (the ELF's internal .rodata etc. are not pinned). */
const MAP_DEFS = Object.values(gen.maps);

export interface LoadOptions {
  readonly objectPath?: string;
  /** Read "now" from the test_clock map instead of bpf_ktime_get_ns (tests only). */
  readonly testClock?: boolean;
  /** Make every bucket insert fail, as a full or refusing map would (tests only). */
  readonly testInsertFail?: boolean;
  /** Put every key of a protocol in one first-seen group with one fingerprint (tests only). */
  readonly testFirstSeenCollide?: boolean;
  readonly sizes?: MapSizes;
  /** Reuse the maps pinned here, or pin them here after load. */
  readonly pins?: PinDir;
}

/** The value of a set member (local_addrs, src_prefixes). */
const PRESENT = 1;

/** Pinned maps that this build cannot use. */
export class IncompatiblePinsError extends ConnrateError {
  constructor(op: string, pinDir: string, detail: string, options?: { cause?: unknown }) {
    super(op, 'EINVAL', `the datapath pinned at ${pinDir} was made by an incompatible connrate build (${detail}); run "connrate detach" to remove it — this resets all limits and counters — then start again`, EXIT.FAILURE, options);
  }
}

/** A key's drops, folded over CPUs (struct cr_drop_stats and live cr_drop_cache entries). */
export interface KeyDrops {
  readonly drops: bigint;
  readonly lastDropNs: bigint;
}

/** Fold one more per-CPU (drops, last drop) into a running total. */
function addDrops(into: KeyDrops | undefined, drops: bigint, lastDropNs: bigint): KeyDrops {
  if (!into) return { drops, lastDropNs };
  return { drops: into.drops + drops, lastDropNs: lastDropNs > into.lastDropNs ? lastDropNs : into.lastDropNs };
}

export class Datapath {
  /** Every map of the program, typed (datapath.gen.ts). */
  readonly maps: gen.Maps;
  readonly testClock: boolean;
  readonly #obj: BpfObject;
  readonly #program: Program | undefined;

  private constructor(obj: BpfObject, program: Program | undefined, maps: gen.Maps, testClock: boolean) {
    this.#obj = obj;
    this.#program = program;
    this.maps = maps;
    this.testClock = testClock;
  }

  /** Open → set read-only globals and map sizes (→ reuse pinned maps) → load. */
  static load(opts: LoadOptions = {}): Datapath {
    const op = 'datapath.load';
    const obj = openObject(op, opts.objectPath ?? defaultObjectPath());
    let program: Program | undefined;
    try {
      gen.setGlobals(obj, {
        crTestClock: opts.testClock ? 1 : 0,
        crTestInsertFail: opts.testInsertFail ? 1 : 0,
        crTestFirstSeenCollide: opts.testFirstSeenCollide ? 1 : 0,
      });
      for (const [k, defs] of Object.entries(SIZE_TO_MAPS) as [keyof MapSizes, readonly { name: string }[]][]) {
        const n = opts.sizes?.[k];
        if (n !== undefined) for (const def of defs) obj.setMaxEntries(def.name, n);
      }
      const fingerprint = abiFingerprint(obj);
      if (opts.pins) {
        checkFingerprint(op, opts.pins, fingerprint);
        for (const def of MAP_DEFS) {
          const pin = opts.pins.mapPin(def.name);
          if (existsSync(pin)) {
            const pinned = BpfMap.fromPinned(pin);
            let entries: number;
            try {
              entries = checkPinnedMap(op, opts.pins.dir, obj, def.name, pinned);
            } finally {
              pinned.close();
            }
            const asked = sizeOf(opts.sizes, def.name);
            if (asked !== undefined && asked !== entries) {
              throw new ConnrateError(op, 'EINVAL', `map ${def.name} is pinned at ${opts.pins.dir} with ${entries} entries, not ${asked}: a size is set when the datapath is created; to resize, run "connrate detach" (this resets all limits and counters) and start again`, EXIT.USAGE);
            }
            obj.setMaxEntries(def.name, entries); // adopt what is pinned
          }
          obj.setPinPath(def.name, pin);
        }
      }
      checkLayout(op, obj);
      try {
        obj.load();
      } catch (err) {
        if (!(err instanceof BpfError)) throw err;
        throw new ConnrateError(op, err.code, `the kernel refused the connrate program: ${err.message}. connrate needs Linux 5.15 or newer with BPF, BTF and XDP (and root)`, EXIT.FAILURE, { cause: err });
      }
      program = obj.program(gen.programs.connrateXdp);
      const dp = new Datapath(obj, program, openMaps(gen.maps, (def) => obj.map(def.name)), opts.testClock ?? false);
      dp.maps.abiId.update(0, { sha256: fingerprint });
      return dp;
    } catch (err) {
      program?.close();
      obj.close();
      throw err;
    }
  }

  /**
   * The datapath pinned at `pins`, for commands that do not load anything:
   * its maps from bpffs, checked against the object file. Throws
   * NoDatapathError when nothing is pinned.
   */
  static open(op: string, pins: PinDir, objectPath: string = defaultObjectPath()): Datapath {
    if (!pins.exists()) throw new NoDatapathError(op, pins.dir);
    const obj = openObject(op, objectPath);
    try {
      checkFingerprint(op, pins, abiFingerprint(obj));
      checkLayout(op, obj);
      const maps = openMaps(gen.maps, (def) => {
        const pin = pins.mapPin(def.name);
        if (!existsSync(pin)) throw new IncompatiblePinsError(op, pins.dir, `map ${def.name} is not pinned`);
        const pinned = BpfMap.fromPinned(pin);
        try {
          checkPinnedMap(op, pins.dir, obj, def.name, pinned);
        } catch (err) {
          pinned.close();
          throw err;
        }
        return pinned;
      });
      return new Datapath(obj, undefined, maps, false);
    } catch (err) {
      obj.close();
      throw err;
    }
  }

  /** The loaded program (only for a datapath this process loaded). */
  get program(): Program {
    if (!this.#program) throw new ConnrateError('datapath.program', 'ENOENT', 'this datapath was opened from its pins; it has no program of its own');
    return this.#program;
  }

  /** Close every fd this object holds; pinned maps and links stay in the kernel. */
  close(): void {
    closeMaps(this.maps);
    this.#program?.close();
    this.#obj.close();
  }

  /** The ABI fingerprint the maps carry (hex), or undefined before it is written. */
  abiFingerprint(): string | undefined {
    return this.maps.abiId.lookup(0)?.sha256.toString('hex');
  }

  // ------------------------------------------------------------ configuration

  /**
   * Rewrite in_force with `change`. The value is written whole, so two
   * processes that may write it at once (the daemon's address and route sync,
   * `system update rule`) hold the apply lock.
   */
  #setInForce(change: Partial<gen.CrInForce>): void {
    const current = this.maps.inForce.lookup(0) ?? { configSlot: 0, localsGen: 0, routesGen: 0n };
    this.maps.inForce.update(0, { ...current, ...change });
  }

  activeSlot(): number {
    return (this.maps.inForce.lookup(0)?.configSlot ?? 0) & 1;
  }

  /** The generation of the configuration in force (one member read in place), or undefined before the first apply. */
  generation(): bigint | undefined {
    const v = this.maps.config.lookupRaw(this.activeSlot());
    return v && gen.CrConfig.get.valid(v) ? gen.CrConfig.get.generation(v) : undefined;
  }

  /** The configuration in force, or undefined before the first apply. */
  appliedConfig(): (AppliedConfig & { exempt: string[] }) | undefined {
    const slot = this.activeSlot();
    const c = this.maps.config.lookup(slot);
    if (!c?.valid) return undefined;
    return { ...decodeConfig(c), exempt: this.#prefixesTagged(slot) };
  }

  /**
   * Apply a configuration atomically: write the idle slot (config and exempt
   * list), then flip `in_force.config_slot`. A packet reads the slot once, so it sees the
   * old configuration or the new, never a mix. The old slot's leftovers are
   * cleared at the start of the next apply, long after any packet used them.
   */
  applyConfig(cfg: DatapathConfig): AppliedConfig {
    const active = this.activeSlot();
    const current = this.maps.config.lookup(active);
    const old = current?.valid ? decodeConfig(current) : undefined;
    const generation = (current?.generation ?? 0n) + 1n;
    const now = this.now();
    const clocks = {
      tcp: rebaseClock(old?.clocks.tcp, periodNs(cfg.tcp.rate), now, TOKEN),
      udp: rebaseClock(old?.clocks.udp, periodNs(cfg.udp.rate), now, TOKEN),
    };
    const next = active ^ 1;
    const config = encodeConfig(cfg, generation, clocks);
    const exemptKeys = cfg.exempt.map((p) => lpmKey(next, p));
    this.maps.config.update(next, config); // the idle slot: first, so that a bad value changes nothing
    const prefixes = this.maps.srcPrefixes;
    for (const key of this.#lpmKeysTagged(next)) prefixes.delete(key);
    for (const key of exemptKeys) prefixes.update(key, PRESENT);
    this.#setInForce({ configSlot: next });
    return decodeConfig(config);
  }

  // ------------------------------------------------------------ addresses and routes

  /**
   * Make the local-address set exactly `addrs`: the hash, and the inline copy
   * the datapath checks when the set is small (written to the idle slot, then
   * switched to, so a packet sees the old set or the new).
   */
  setLocalAddresses(addrs: readonly string[]): void {
    const all = new Map(addrs.map((a) => [addrBytes(a).toString('hex'), addrBytes(a)]));
    const want = new Map(all);
    const m = this.maps.localAddrs;
    for (const key of [...m.keys()]) {
      if (!want.delete(key.bytes.toString('hex'))) m.delete(key);
    }
    for (const bytes of want.values()) m.update({ bytes }, PRESENT);
    // The generation counts switches (in force: its low bit), so that the
    // datapath tells this set from the one before the last.
    const next = ((this.maps.inForce.lookup(0)?.localsGen ?? 0) + 1) >>> 0;
    this.maps.locals.update(next & 1, encodeLocals([...all.values()]));
    this.#setInForce({ localsGen: next });
  }

  /** Make the non-default route set exactly `prefixes`. */
  setRoutes(prefixes: readonly string[]): void {
    const id = (k: gen.CrLpmKey): string => gen.CrLpmKey.encode(k).toString('hex');
    const want = new Map(prefixes.map((p) => {
      const key = lpmKey(TAG_ROUTE, p);
      return [id(key), key] as const;
    }));
    const m = this.maps.srcPrefixes;
    for (const key of this.#lpmKeysTagged(TAG_ROUTE)) {
      if (!want.delete(id(key))) m.delete(key);
    }
    for (const key of want.values()) m.update(key, PRESENT);
    // drop-cache entries made under older routes are void from now on
    this.#setInForce({ routesGen: (this.maps.inForce.lookup(0)?.routesGen ?? 0n) + 1n });
  }

  routes(): string[] {
    return this.#prefixesTagged(TAG_ROUTE);
  }

  #lpmKeysTagged(tag: number): gen.CrLpmKey[] {
    return [...this.maps.srcPrefixes.keys()].filter((k) => k.tag === tag);
  }

  #prefixesTagged(tag: number): string[] {
    return this.#lpmKeysTagged(tag).map(lpmPrefix);
  }

  // ------------------------------------------------------------ clock

  /** "now" as the datapath reads it: CLOCK_MONOTONIC, or the test clock. */
  now(): bigint {
    if (!this.testClock) return process.hrtime.bigint();
    return this.maps.testClock.lookup(0) ?? 0n;
  }

  /** Set the test clock (only read by a datapath loaded with testClock). */
  setClock(ns: bigint): void {
    this.maps.testClock.update(0, ns);
  }

  // ------------------------------------------------------------ counters

  /** The global counters, summed over CPUs. */
  counters(): Record<CounterName, bigint> {
    return sumCounters(this.maps.counters.lookup(0) ?? []);
  }

  /** Per (protocol, port) counters: port_slots gives each pair's slot in port_stats. */
  portStats(): (PortKey & PortStats)[] {
    const out: (PortKey & PortStats)[] = [];
    for (const [key, slot] of this.maps.portSlots.entries()) {
      const perCpu = this.maps.portStats.lookup(slot);
      if (perCpu) out.push({ ...portKeyOf(key), ...sumPortStats(perCpu) });
    }
    return out.sort((a, b) => a.proto.localeCompare(b.proto) || a.port - b.port);
  }

  /** One (protocol, port)'s counters on each CPU, or [] before its first new connection. */
  portStatsPerCpu(k: PortKey): PortStats[] {
    const slot = this.maps.portSlots.lookup(portKey(k));
    return (slot === undefined ? undefined : this.maps.portStats.lookup(slot)) ?? [];
  }

  /**
   * Every key's drops, folded over CPUs, handed to `visit` once per key with
   * drops: what the CPUs' drop caches flushed to drop_stats plus what their live
   * cache entries hold. `key` (a struct cr_bucket_key) may be a view into a
   * batch buffer: copy what you keep. The maps are read in place, member by
   * member, without decoding every entry.
   */
  forEachKeyDrops(visit: (key: Buffer, drops: bigint, lastDropNs: bigint) => void, batch = 4096): void {
    const ncpu = numPossibleCpus();
    const E = gen.CrDropCache;
    const keyAt = (b: MapBatch, i: number, cpu: number): number => b.valueAt(i, cpu) + E.offsets.key;
    // The live cache entries first: at most slots × CPUs, keyed by the key's bytes.
    const live = new Map<string, { key: Buffer } & KeyDrops>();
    for (const b of batches(this.maps.dropCache.raw, batch)) {
      for (let i = 0; i < b.count; i++) {
        for (let cpu = 0; cpu < ncpu; cpu++) {
          const drops = E.get.drops(b.values, b.valueAt(i, cpu));
          if (drops === 0n) continue;
          const key = b.values.subarray(keyAt(b, i, cpu), keyAt(b, i, cpu) + gen.CrBucketKey.size);
          const id = key.toString('latin1');
          const prev = live.get(id);
          live.set(id, { key: prev?.key ?? Buffer.from(key), ...addDrops(prev, drops, E.get.lastDropNs(b.values, b.valueAt(i, cpu))) });
        }
      }
    }
    const S = gen.CrDropStats;
    for (const b of batches(this.maps.dropStats.raw, batch)) {
      for (let i = 0; i < b.count; i++) {
        const key = b.key(i);
        let drops = 0n;
        let last = 0n;
        for (let cpu = 0; cpu < ncpu; cpu++) {
          drops += S.get.drops(b.values, b.valueAt(i, cpu));
          const t = S.get.lastDropNs(b.values, b.valueAt(i, cpu));
          if (t > last) last = t;
        }
        if (live.size) {
          const id = key.toString('latin1');
          const l = live.get(id);
          if (l) {
            drops += l.drops;
            if (l.lastDropNs > last) last = l.lastDropNs;
            live.delete(id);
          }
        }
        if (drops > 0n) visit(key, drops, last);
      }
    }
    for (const l of live.values()) visit(l.key, l.drops, l.lastDropNs);
  }
}

/** Every entry of `map`, `n` at a time, through one batch cursor. */
function* batches(map: BpfMap, n: number): Generator<MapBatch> {
  const cursor = new MapBatchCursor();
  for (let done = false; !done; ) {
    const block = map.batchLookup(cursor, n);
    done = block.done;
    yield block;
  }
}

function openObject(op: string, path: string): BpfObject {
  try {
    return BpfObject.open(path);
  } catch (err) {
    if (!(err instanceof BpfError)) throw err;
    const hint = err.code === 'ENOENT' ? ' (run "npm run build")' : ' (not a BPF object of this build?)';
    throw new ConnrateError(op, err.code, `cannot open the connrate BPF object ${path}: ${err.message}${hint}`, EXIT.FAILURE, { cause: err });
  }
}

/** The object must have the layouts the control plane was generated from. */
function checkLayout(op: string, obj: BpfObject): void {
  try {
    gen.checkLayout(obj);
  } catch (err) {
    if (!(err instanceof BpfError)) throw err;
    throw new ConnrateError(op, err.code, `the BPF object ${obj.path} was not built with this connrate (its layouts differ from those its control plane was generated from): use the object built with it, or rebuild ("npm run build")`, EXIT.FAILURE, { cause: err });
  }
}

/** Pinned maps must carry this build's ABI fingerprint (or there must be none yet). */
function checkFingerprint(op: string, pins: PinDir, fingerprint: Buffer): void {
  const pin = pins.mapPin(gen.maps.abiId.name);
  if (!existsSync(pin)) {
    if (existsSync(pins.configPin)) throw new IncompatiblePinsError(op, pins.dir, 'its maps carry no ABI fingerprint');
    return;
  }
  const m = gen.maps.abiId.fromPinned(pin);
  try {
    const pinned = m.lookup(0)?.sha256;
    if (!pinned || !pinned.equals(fingerprint)) {
      throw new IncompatiblePinsError(op, pins.dir, `ABI fingerprint ${pinned?.toString('hex').slice(0, 12) ?? 'missing'}…, this build has ${fingerprint.toString('hex').slice(0, 12)}…`);
    }
  } finally {
    m.close();
  }
}

function sizeOf(sizes: MapSizes | undefined, map: string): number | undefined {
  const k = (Object.keys(SIZE_TO_MAPS) as (keyof MapSizes)[]).find((key) => SIZE_TO_MAPS[key].some((def) => def.name === map));
  return k ? sizes?.[k] : undefined;
}

/**
 * A pinned map must be of the kind this build creates, or we refuse before
 * touching anything. Returns its capacity.
 */
function checkPinnedMap(op: string, pinDir: string, obj: BpfObject, name: string, pinned: BpfMap): number {
  const want = obj.mapSpec(name);
  const diff: string[] = [];
  if (pinned.type !== want.type) diff.push(`type ${pinned.type}, expected ${want.type}`);
  if (pinned.keySize !== want.keySize) diff.push(`key size ${pinned.keySize}, expected ${want.keySize}`);
  if (pinned.valueSize !== want.valueSize) diff.push(`value size ${pinned.valueSize}, expected ${want.valueSize}`);
  if (diff.length) throw new IncompatiblePinsError(op, pinDir, `map ${name}: ${diff.join(', ')}`);
  return pinned.maxEntries;
}
