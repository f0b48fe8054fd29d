/**
 * The extc store: one JSON file (CONNRATE_STORE), root-only, written
 * atomically (temp file, fsync, rename) under a lock against concurrent writers.
 * A bad or unreadable file is reported by name and never overwritten. Variables
 * and fields this version does not know (a newer connrate wrote them) are
 * kept as they are on every rewrite, with a warning, and otherwise ignored.
 */
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { mkdirs } from '../fs.js';
import { withFileLock } from '../lock.js';
import { InvalidValueError, StoreError } from '../errors.js';
import { APPLICATION, type ExtcValues, VARIABLES, canonicalValue, checkApplication, defaults, lookupVariable } from './variables.js';

export const DEFAULT_STORE = '/var/lib/connrate/extc.json';
const FILE_MODE = 0o600;
const DIR_MODE = 0o700;
const FORMAT_VERSION = 1;

export function storePath(): string {
  return process.env.CONNRATE_STORE || DEFAULT_STORE;
}

interface StoreFile {
  version: number;
  application: string;
  values: Record<string, unknown>;
  [field: string]: unknown;
}

/** A parsed store: the values this version knows, and everything else, kept for rewriting. */
interface Parsed {
  readonly values: ExtcValues;
  /** Variables this version does not know, exactly as found. */
  readonly unknownValues: Readonly<Record<string, unknown>>;
  /** Top-level fields besides version, application and values. */
  readonly unknownFields: Readonly<Record<string, unknown>>;
}

export interface Change {
  readonly name: string;
  readonly from: string;
  readonly to: string;
}

const KNOWN = new Set(VARIABLES.map((v) => v.name));
const FIELDS = new Set(['version', 'application', 'values']);

function warnOnStderr(message: string): void {
  process.stderr.write(`connrate: warning: ${message}\n`);
}

export class Store {
  #warned = false;

  /** `warn` receives one line per store that holds variables this version does not know. */
  constructor(
    readonly path: string = storePath(),
    private readonly warn: (message: string) => void = warnOnStderr,
  ) {}

  /** Whether the store has a file (false: the embedded fresh-install defaults). */
  exists(): boolean {
    try {
      readFileSync(this.path);
      return true;
    } catch {
      return false;
    }
  }

  /** Every variable's value: the file's, or the defaults where there is no file. */
  read(): ExtcValues {
    return this.#read().values;
  }

  #read(): Parsed {
    let text: string;
    try {
      text = readFileSync(this.path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { values: defaults(), unknownValues: {}, unknownFields: {} };
      throw new StoreError('store.read', this.path, `cannot read: ${(err as Error).message}`, (err as NodeJS.ErrnoException).code ?? 'EIO', { cause: err });
    }
    const parsed = this.#parse(text);
    const unknown = [...Object.keys(parsed.unknownValues), ...Object.keys(parsed.unknownFields).map((f) => `field ${f}`)];
    if (unknown.length && !this.#warned) {
      this.#warned = true;
      this.warn(`${this.path}: ignoring ${unknown.join(', ')}, unknown to this connrate (written by a newer version?); kept as they are`);
    }
    return parsed;
  }

  #parse(text: string): Parsed {
    const bad = (why: string): never => {
      throw new StoreError('store.read', this.path, `${why}; fix or remove the file (nothing was changed)`);
    };
    let doc: unknown;
    try {
      doc = JSON.parse(text);
    } catch {
      bad('is not valid JSON (truncated or corrupted?)');
    }
    if (typeof doc !== 'object' || doc === null) return bad('is not a connrate store');
    const f = doc as Partial<StoreFile>;
    if (f.version !== FORMAT_VERSION) bad(`has format version ${JSON.stringify(f.version)}, expected ${FORMAT_VERSION}`);
    if (f.application !== APPLICATION) bad(`is for application ${JSON.stringify(f.application)}, not ${APPLICATION}`);
    if (typeof f.values !== 'object' || f.values === null) return bad('has no values');
    const values: Record<string, string> = { ...defaults() };
    const unknownValues: Record<string, unknown> = {};
    const unknownFields = Object.fromEntries(Object.entries(f).filter(([k]) => !FIELDS.has(k)));
    for (const [name, value] of Object.entries(f.values)) {
      if (!KNOWN.has(name)) {
        unknownValues[name] = value;
        continue;
      }
      if (typeof value !== 'string') bad(`holds a non-text value for ${name}`);
      try {
        values[name] = canonicalValue('store.read', name, value as string);
      } catch (err) {
        if (err instanceof InvalidValueError) bad(`holds a bad value: ${err.message}`);
        throw err;
      }
    }
    return { values, unknownValues, unknownFields };
  }

  /** Validate and store one value. Refusals leave the file byte-for-byte as it was. */
  set(app: string, name: string, value: string): Change {
    const op = 'extc value set';
    checkApplication(op, app);
    lookupVariable(op, name);
    return this.#storeMany([[name, canonicalValue(op, name, value)]])[0]!;
  }

  /** Store a variable's fresh-install default. */
  reset(app: string, name: string): Change {
    const op = 'extc value reset';
    checkApplication(op, app);
    return this.#storeMany([[name, lookupVariable(op, name).default]])[0]!;
  }

  /**
   * Validate and store several values in one atomic write: every value is
   * checked first; one refusal leaves the file byte-for-byte as it was.
   */
  setMany(app: string, values: Readonly<Record<string, string>>, op = 'extc value set'): Change[] {
    checkApplication(op, app);
    return this.#storeMany(Object.entries(values).map(([name, value]) => [name, canonicalValue(op, name, value)] as const));
  }

  /** Store canonical values in one write (none if nothing changes), keeping what this version does not know. */
  #storeMany(canonical: ReadonlyArray<readonly [string, string]>): Change[] {
    try {
      mkdirs(dirname(this.path), DIR_MODE);
    } catch (err) {
      throw new StoreError('store.write', this.path, `cannot create its directory: ${(err as Error).message}`, (err as NodeJS.ErrnoException).code ?? 'EIO', { cause: err });
    }
    return withFileLock(this.#lockPath(), () => {
      const current = this.#read();
      const changes = canonical.map(([name, to]) => ({ name, from: current.values[name] ?? '', to }));
      if (changes.some((c) => c.from !== c.to) || !this.exists()) this.#write({ ...current, values: { ...current.values, ...Object.fromEntries(canonical) } });
      return changes;
    });
  }

  #lockPath(): string {
    return join(dirname(this.path), `.${basename(this.path)}.lock`);
  }

  #write(p: Parsed): void {
    const dir = dirname(this.path);
    mkdirs(dir, DIR_MODE);
    const doc: StoreFile = { ...p.unknownFields, version: FORMAT_VERSION, application: APPLICATION, values: { ...p.values, ...p.unknownValues } };
    const tmp = join(dir, `.${basename(this.path)}.${process.pid}.tmp`);
    const fd = openSync(tmp, 'wx', FILE_MODE);
    try {
      writeSync(fd, `${JSON.stringify(doc, null, 2)}\n`);
      fsyncSync(fd);
    } catch (err) {
      closeSync(fd);
      unlinkSync(tmp);
      throw new StoreError('store.write', this.path, `cannot write: ${(err as Error).message}`, (err as NodeJS.ErrnoException).code ?? 'EIO', { cause: err });
    }
    closeSync(fd);
    renameSync(tmp, this.path);
    const dfd = openSync(dir, 'r');
    try {
      fsyncSync(dfd);
    } finally {
      closeSync(dfd);
    }
  }
}
