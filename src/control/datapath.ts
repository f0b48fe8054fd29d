/**
 * The connrate datapath as one object: load the XDP program, feed it
 * configuration, addresses and routes, read its counters.
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { BpfError, BpfMap, BpfObject, MapBatch, MapBatchCursor, Program, numPossibleCpus } from '@xdp-ts/loader';
import { ConnrateError, EXIT, NoDatapathError } from '../errors.js';
import type { PinDir } from './pins.js';
import { addrBytes, prefixText } from './addr.js';
import {
  type Abi,
  type AppliedConfig,
  type CounterName,
  type DatapathConfig,
  type KeyDrops,
  type PortKey,
  type PortStats,
  abiFingerprint,
  addDrops,
  decodeConfig,
  encodeLocals,
  encodePortKey,
  decodePortKey,
  encodeConfig,
  encodeLpmKey,
  periodNs,
  rebaseClock,
  readAbi,
  readU32,
  readU64,
  sumPortStats,
  writeU32,
  writeU64,
} from './abi.js';

/** The compiled program, built by `npm run build` (override: CONNRATE_BPF_OBJECT). */
export function defaultObjectPath(): string {
  return process.env.CONNRATE_BPF_OBJECT ?? fileURLToPath(new URL('../../build/bpf/connrate.bpf.o', import.meta.url));
}

export const PROGRAM_NAME = 'connrate_xdp';

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
const SIZE_TO_MAPS: Readonly<Record<keyof MapSizes, readonly string[]>> = {
  buckets: ['buckets', 'drop_stats'],
  udpFlows: ['udp_flows'],
  localAddrs: ['local_addrs'],
  prefixes: ['src_prefixes'],
  portStats: ['port_slots', 'port_stats'],
  eventRing: ['events'],
};

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

const ZERO_KEY = Buffer.alloc(4);
const ROUTE_PRESENT = Buffer.from([1]);
const LOCAL_PRESENT = Buffer.from([1]);

/** Pinned maps that this build cannot use. */
export class IncompatiblePinsError extends ConnrateError {
  constructor(op: string, pinDir: string, detail: string, options?: { cause?: unknown }) {
    super(op, 'EINVAL', `the datapath pinned at ${pinDir} was made by an incompatible connrate build (${detail}); run "connrate detach" to remove it — this resets all limits and counters — then start again`, EXIT.FAILURE, options);
  }
}

/** Maps every connrate object has (the ELF's internal .rodata etc. are not pinned). */
function programMaps(obj: BpfObject): string[] {
  return obj.mapNames().filter((n) => !n.includes('.'));
}

export class Datapath {
  readonly abi: Abi;
  readonly testClock: boolean;
  readonly #obj: BpfObject;
  readonly #program: Program | undefined;
  readonly #maps = new Map<string, BpfMap>();
  readonly #openMap: (name: string) => BpfMap;

  private constructor(obj: BpfObject, program: Program | undefined, openMap: (name: string) => BpfMap, testClock: boolean) {
    this.#obj = obj;
    this.abi = readAbi(obj);
    this.#program = program;
    this.#openMap = openMap;
    this.testClock = testClock;
  }

  /** Open → set read-only globals and map sizes (→ reuse pinned maps) → load. */
  static load(opts: LoadOptions = {}): Datapath {
    const op = 'datapath.load';
    const obj = openObject(op, opts.objectPath ?? defaultObjectPath());
    try {
      if (opts.testClock) obj.setGlobal('cr_test_clock', true);
      if (opts.testInsertFail) obj.setGlobal('cr_test_insert_fail', true);
      if (opts.testFirstSeenCollide) obj.setGlobal('cr_test_first_seen_collide', true);
      for (const [k, maps] of Object.entries(SIZE_TO_MAPS) as [keyof MapSizes, readonly string[]][]) {
        const n = opts.sizes?.[k];
        if (n !== undefined) for (const map of maps) obj.setMaxEntries(map, n);
      }
      const fingerprint = abiFingerprint(obj);
      if (opts.pins) {
        checkFingerprint(op, opts.pins, fingerprint);
        for (const name of programMaps(obj)) {
          const pin = opts.pins.mapPin(name);
          if (existsSync(pin)) {
            const entries = checkPinnedMap(op, opts.pins.dir, obj, name, BpfMap.fromPinned(pin));
            const asked = sizeOf(opts.sizes, name);
            if (asked !== undefined && asked !== entries) {
              throw new ConnrateError(op, 'EINVAL', `map ${name} is pinned at ${opts.pins.dir} with ${entries} entries, not ${asked}: a size is set when the datapath is created; to resize, run "connrate detach" (this resets all limits and counters) and start again`, EXIT.USAGE);
            }
            obj.setMaxEntries(name, entries); // adopt what is pinned
          }
          obj.setPinPath(name, pin);
        }
      }
      try {
        obj.load();
      } catch (err) {
        if (!(err instanceof BpfError)) throw err;
        throw new ConnrateError(op, err.code, `the kernel refused the connrate program: ${err.message}. connrate needs Linux 5.15 or newer with BPF, BTF and XDP (and root)`, EXIT.FAILURE, { cause: err });
      }
      const program = obj.program(PROGRAM_NAME);
      const dp = new Datapath(obj, program, (name) => obj.map(name), opts.testClock ?? false);
      dp.map('abi_id').update(ZERO_KEY, fingerprint);
      return dp;
    } catch (err) {
      obj.close();
      throw err;
    }
  }

  /**
   * The datapath pinned at `pins`, for commands that do not load anything:
   * its maps from bpffs, its ABI from the object file. Throws NoDatapathError
   * when nothing is pinned.
   */
  static open(op: string, pins: PinDir, objectPath: string = defaultObjectPath()): Datapath {
    if (!pins.exists()) throw new NoDatapathError(op, pins.dir);
    const obj = openObject(op, objectPath);
    try {
      checkFingerprint(op, pins, abiFingerprint(obj));
      for (const name of programMaps(obj)) {
        if (!existsSync(pins.mapPin(name))) throw new IncompatiblePinsError(op, pins.dir, `map ${name} is not pinned`);
        checkPinnedMap(op, pins.dir, obj, name, BpfMap.fromPinned(pins.mapPin(name)));
      }
      return new Datapath(obj, undefined, (name) => BpfMap.fromPinned(pins.mapPin(name)), false);
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

  map(name: string): BpfMap {
    let m = this.#maps.get(name);
    if (!m) {
      m = this.#openMap(name);
      this.#maps.set(name, m);
    }
    return m;
  }

  /** Close every fd this object holds; pinned maps and links stay in the kernel. */
  close(): void {
    for (const m of this.#maps.values()) m.close();
    this.#maps.clear();
    this.#program?.close();
    this.#obj.close();
  }

  /** The ABI fingerprint the maps carry (hex), or undefined before it is written. */
  abiFingerprint(): string | undefined {
    return this.map('abi_id').lookup(ZERO_KEY)?.toString('hex');
  }

  // ------------------------------------------------------------ configuration

  activeSlot(): number {
    const v = this.map('config_slot').lookup(ZERO_KEY);
    return v ? readU32(v, this.abi.configSlot.field('slot').offset) & 1 : 0;
  }

  /** Whether the configuration in force asks for anonymized log sources (one field, no full decode). */
  logAnonymize(): boolean {
    const v = this.map('config').lookup(slotKey(this.activeSlot()));
    return v ? readU32(v, this.abi.config.field('log_anonymize').offset) !== 0 : false;
  }

  /** The configuration in force, or undefined before the first apply. */
  appliedConfig(): (AppliedConfig & { exempt: string[] }) | undefined {
    const slot = this.activeSlot();
    const v = this.map('config').lookup(slotKey(slot));
    if (!v) return undefined;
    const cfg = decodeConfig(this.abi, v);
    if (!cfg.valid) return undefined;
    return { ...cfg, exempt: this.#prefixesTagged(slot) };
  }

  /**
   * Apply a configuration atomically: write the idle slot (config and exempt
   * list), then flip `config_slot`. A packet reads the slot once, so it sees the
   * old configuration or the new, never a mix. The old slot's leftovers are
   * cleared at the start of the next apply, long after any packet used them.
   */
  applyConfig(cfg: DatapathConfig, opts: { logAnonymize?: boolean } = {}): AppliedConfig {
    const active = this.activeSlot();
    const raw = this.map('config').lookup(slotKey(active));
    const current = raw ? decodeConfig(this.abi, raw) : undefined;
    const old = current?.valid ? current : undefined;
    const generation = (current?.generation ?? 0n) + 1n;
    const now = this.now();
    const clocks = {
      tcp: rebaseClock(old?.clocks.tcp, periodNs(cfg.tcp.rate), now, this.abi.token),
      udp: rebaseClock(old?.clocks.udp, periodNs(cfg.udp.rate), now, this.abi.token),
    };
    const next = active ^ 1;
    const encoded = encodeConfig(this.abi, cfg, generation, clocks, opts.logAnonymize); // validates before touching maps
    const exemptKeys = cfg.exempt.map((p) => encodeLpmKey(this.abi, next, p));

    const prefixes = this.map('src_prefixes');
    for (const key of this.#lpmKeysTagged(next)) prefixes.delete(key);
    for (const key of exemptKeys) prefixes.update(key, ROUTE_PRESENT);
    this.map('config').update(slotKey(next), encoded);
    const slot = this.abi.configSlot.alloc();
    writeU32(slot, this.abi.configSlot.field('slot').offset, next);
    this.map('config_slot').update(ZERO_KEY, slot);
    return decodeConfig(this.abi, encoded);
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
    const m = this.map('local_addrs');
    for (const key of [...m.keys()]) {
      if (!want.delete(key.toString('hex'))) m.delete(key);
    }
    for (const key of want.values()) m.update(key, LOCAL_PRESENT);
    const next = this.#localsSlot() ^ 1;
    this.map('locals').update(slotKey(next), encodeLocals(this.abi, [...all.values()]));
    const sel = this.abi.configSlot.alloc();
    writeU32(sel, this.abi.configSlot.field('slot').offset, next);
    this.map('locals_slot').update(ZERO_KEY, sel);
  }

  #localsSlot(): number {
    const v = this.map('locals_slot').lookup(ZERO_KEY);
    return v ? readU32(v, this.abi.configSlot.field('slot').offset) & 1 : 0;
  }

  /** Make the non-default route set exactly `prefixes`. */
  setRoutes(prefixes: readonly string[]): void {
    const want = new Map(prefixes.map((p) => {
      const key = encodeLpmKey(this.abi, this.abi.tagRoute, p);
      return [key.toString('hex'), key] as const;
    }));
    const m = this.map('src_prefixes');
    for (const key of this.#lpmKeysTagged(this.abi.tagRoute)) {
      if (!want.delete(key.toString('hex'))) m.delete(key);
    }
    for (const key of want.values()) m.update(key, ROUTE_PRESENT);
    this.#bumpRoutesGeneration();
  }

  /** Drop-cache entries made under older routes are void from now on. */
  #bumpRoutesGeneration(): void {
    const m = this.map('routes_gen');
    const v = m.lookup(ZERO_KEY) ?? Buffer.alloc(8);
    writeU64(v, 0, readU64(v, 0) + 1n);
    m.update(ZERO_KEY, v);
  }

  routes(): string[] {
    return this.#prefixesTagged(this.abi.tagRoute);
  }

  #lpmKeysTagged(tag: number): Buffer[] {
    const tagOff = this.abi.lpmKey.field('tag').offset;
    return [...this.map('src_prefixes').keys()].filter((k) => k[tagOff] === tag);
  }

  #prefixesTagged(tag: number): string[] {
    const L = this.abi.lpmKey;
    return this.#lpmKeysTagged(tag).map((k) => {
      const bits = readU32(k, L.field('prefixlen').offset) - this.abi.tagBits;
      const addr = k.subarray(L.field('addr').offset, L.field('addr').offset + 16);
      return prefixText(addr, bits);
    });
  }

  // ------------------------------------------------------------ clock

  /** "now" as the datapath reads it: CLOCK_MONOTONIC, or the test clock. */
  now(): bigint {
    if (!this.testClock) return process.hrtime.bigint();
    const v = this.map('test_clock').lookup(ZERO_KEY);
    return v ? readU64(v, 0) : 0n;
  }

  /** Set the test clock (only read by a datapath loaded with testClock). */
  setClock(ns: bigint): void {
    const v = Buffer.alloc(8);
    writeU64(v, 0, ns);
    this.map('test_clock').update(ZERO_KEY, v);
  }

  // ------------------------------------------------------------ counters

  /** The global counters, summed over CPUs (one struct cr_counters per CPU). */
  counters(): Record<CounterName, bigint> {
    const perCpu = this.map('counters').lookupPerCpu(ZERO_KEY) ?? [];
    const base = this.abi.counterSet.field('n').offset;
    const out = {} as Record<CounterName, bigint>;
    for (const [name, index] of this.abi.counters) {
      out[name] = perCpu.reduce((sum, v) => sum + readU64(v, base + index * 8), 0n);
    }
    // The datapath does not count `seen`: every packet is one of these three.
    out.seen = out.monitored + out.not_monitored + out.unparsable;
    return out;
  }

  /** Per (protocol, port) counters: port_slots gives each pair's slot in port_stats. */
  portStats(): (PortKey & PortStats)[] {
    const slots = this.map('port_slots');
    const stats = this.map('port_stats');
    const out: (PortKey & PortStats)[] = [];
    for (const key of slots.keys()) {
      const slot = slots.lookup(key);
      const perCpu = slot && stats.lookupPerCpu(slot);
      if (perCpu) out.push({ ...decodePortKey(this.abi, key), ...sumPortStats(this.abi, perCpu) });
    }
    return out.sort((a, b) => a.proto.localeCompare(b.proto) || a.port - b.port);
  }

  /** One (protocol, port)'s counters on each CPU, or [] before its first new connection. */
  portStatsPerCpu(k: PortKey): PortStats[] {
    const slot = this.map('port_slots').lookup(encodePortKey(this.abi, k));
    const perCpu = slot ? this.map('port_stats').lookupPerCpu(slot) : undefined;
    return (perCpu ?? []).map((v) => sumPortStats(this.abi, [v]));
  }

  /**
   * Every key's drops, folded over CPUs, handed to `visit` once per key with
   * drops: what the CPUs' drop caches flushed to drop_stats plus what their live
   * cache entries hold. `key` may be a view into a batch buffer: copy what you keep.
   */
  forEachKeyDrops(visit: (key: Buffer, drops: bigint, lastDropNs: bigint) => void, batch = 4096): void {
    const ncpu = numPossibleCpus();
    // The live cache entries first: at most slots × CPUs, keyed by the key's bytes.
    const live = new Map<string, { key: Buffer } & KeyDrops>();
    const E = this.abi.dropCache;
    const cache = this.map('drop_cache');
    const cstride = cache.valueBufferSize / ncpu;
    const keyOff = E.field('key').offset;
    for (const block of batches(cache, batch)) {
      for (let i = 0; i < block.count; i++) {
        for (let cpu = 0; cpu < ncpu; cpu++) {
          const at = i * cache.valueBufferSize + cpu * cstride;
          const drops = readU64(block.values, at + E.field('drops').offset);
          if (drops === 0n) continue;
          const key = block.values.subarray(at + keyOff, at + keyOff + this.abi.bucketKey.size);
          const id = key.toString('latin1');
          const prev = live.get(id);
          live.set(id, { key: prev?.key ?? Buffer.from(key), ...addDrops(prev, drops, readU64(block.values, at + E.field('last_drop_ns').offset)) });
        }
      }
    }
    const S = this.abi.dropStats;
    const dropsOff = S.field('drops').offset;
    const lastOff = S.field('last_drop_ns').offset;
    const stats = this.map('drop_stats');
    const stride = stats.valueBufferSize / ncpu;
    for (const block of batches(stats, batch)) {
      for (let i = 0; i < block.count; i++) {
        const key = block.keys.subarray(i * stats.keySize, (i + 1) * stats.keySize);
        let drops = 0n;
        let last = 0n;
        for (let cpu = 0; cpu < ncpu; cpu++) {
          const at = i * stats.valueBufferSize + cpu * stride;
          drops += readU64(block.values, at + dropsOff);
          const t = readU64(block.values, at + lastOff);
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

function slotKey(slot: number): Buffer {
  const k = Buffer.alloc(4);
  writeU32(k, 0, slot);
  return k;
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

/** Pinned maps must carry this build's ABI fingerprint (or there must be none yet). */
function checkFingerprint(op: string, pins: PinDir, fingerprint: Buffer): void {
  const pin = pins.mapPin('abi_id');
  if (!existsSync(pin)) {
    if (existsSync(pins.mapPin('config'))) throw new IncompatiblePinsError(op, pins.dir, 'its maps carry no ABI fingerprint');
    return;
  }
  const m = BpfMap.fromPinned(pin);
  try {
    const pinned = m.lookup(ZERO_KEY);
    if (!pinned || !pinned.equals(fingerprint)) {
      throw new IncompatiblePinsError(op, pins.dir, `ABI fingerprint ${pinned?.toString('hex').slice(0, 12) ?? 'missing'}…, this build has ${fingerprint.toString('hex').slice(0, 12)}…`);
    }
  } finally {
    m.close();
  }
}

function sizeOf(sizes: MapSizes | undefined, map: string): number | undefined {
  const k = (Object.keys(SIZE_TO_MAPS) as (keyof MapSizes)[]).find((key) => SIZE_TO_MAPS[key].includes(map));
  return k ? sizes?.[k] : undefined;
}

/**
 * A pinned map must be of the kind this build creates, or we refuse before
 * touching anything. Returns its capacity.
 */
function checkPinnedMap(op: string, pinDir: string, obj: BpfObject, name: string, pinned: BpfMap): number {
  try {
    const want = obj.mapSpec(name);
    const diff: string[] = [];
    if (pinned.type !== want.type) diff.push(`type ${pinned.type}, expected ${want.type}`);
    if (pinned.keySize !== want.keySize) diff.push(`key size ${pinned.keySize}, expected ${want.keySize}`);
    if (pinned.valueSize !== want.valueSize) diff.push(`value size ${pinned.valueSize}, expected ${want.valueSize}`);
    if (diff.length) throw new IncompatiblePinsError(op, pinDir, `map ${name}: ${diff.join(', ')}`);
    return pinned.maxEntries;
  } finally {
    pinned.close();
  }
}
