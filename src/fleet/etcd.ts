/**
 * The etcd connection from the environment:
 *   CONNRATE_ETCD            endpoints, comma-separated (default http://127.0.0.1:2379);
 *                            https:// for TLS, unix:///path for a local socket
 *   CONNRATE_ETCD_CA, _CERT, _KEY   TLS: CA bundle, client certificate and key (PEM files)
 *   CONNRATE_ETCD_USER, _PASSWORD   an etcd user
 */
import { readFileSync } from 'node:fs';
import { Etcd3, type IOptions, type WatchBuilder, type Watcher } from 'etcd3';

import { ConnrateError, EXIT } from '../errors.js';

export const DEFAULT_ENDPOINT = 'http://127.0.0.1:2379';


export interface EtcdSettings {
  readonly endpoints: string[];
  readonly ca?: string;
  readonly cert?: string;
  readonly key?: string;
  readonly user?: string;
  readonly password?: string;
}

export function etcdSettings(env: NodeJS.ProcessEnv = process.env): EtcdSettings {
  const endpoints = (env.CONNRATE_ETCD || DEFAULT_ENDPOINT).split(',').map((s) => s.trim()).filter(Boolean);
  for (const e of endpoints) {
    if (!/^(https?:\/\/[^/\s]+\/?|unix:\/\/\/\S+)$/.test(e)) {
      throw new ConnrateError('fleet', 'EINVAL', `CONNRATE_ETCD: ${JSON.stringify(e)} is not an endpoint; expected http://HOST:PORT, https://HOST:PORT or unix:///PATH, comma-separated`, EXIT.USAGE);
    }
  }
  const opt = (k: string): Record<string, string> => (env[`CONNRATE_ETCD_${k.toUpperCase()}`] ? { [k]: env[`CONNRATE_ETCD_${k.toUpperCase()}`]! } : {});
  const s: EtcdSettings = { endpoints, ...opt('ca'), ...opt('cert'), ...opt('key'), ...opt('user'), ...opt('password') };
  if ((s.cert === undefined) !== (s.key === undefined)) {
    throw new ConnrateError('fleet', 'EINVAL', 'CONNRATE_ETCD_CERT and CONNRATE_ETCD_KEY go together: set both or neither', EXIT.USAGE);
  }
  if (s.user !== undefined && s.password === undefined) {
    throw new ConnrateError('fleet', 'EINVAL', 'CONNRATE_ETCD_USER needs CONNRATE_ETCD_PASSWORD', EXIT.USAGE);
  }
  return s;
}

function readPem(what: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new ConnrateError('fleet', (err as NodeJS.ErrnoException).code ?? 'EIO', `cannot read ${what} ${path}: ${(err as Error).message}`, EXIT.USAGE);
  }
}

export function connect(s: EtcdSettings = etcdSettings()): Etcd3 {
  const tls = s.endpoints.some((e) => e.startsWith('https://'));
  if (s.cert && !tls) throw new ConnrateError('fleet', 'EINVAL', 'CONNRATE_ETCD_CERT is set but no endpoint is https://', EXIT.USAGE);
  const options: IOptions = {
    hosts: s.endpoints,
    dialTimeout: 5_000,
    ...(tls && (s.ca || s.cert)
      ? {
          credentials: {
            // without a CA file: the system's roots (grpc's default when this is null)
            rootCertificate: s.ca ? readPem('CONNRATE_ETCD_CA', s.ca) : (null as unknown as Buffer),
            ...(s.cert && s.key ? { certChain: readPem('CONNRATE_ETCD_CERT', s.cert), privateKey: readPem('CONNRATE_ETCD_KEY', s.key) } : {}),
          },
        }
      : {}),
    ...(s.user && s.password ? { auth: { username: s.user, password: s.password } } : {}),
  };
  return new Etcd3(options);
}

/** An etcd failure as a connrate error (exit 1) naming what was being done. */
export function etcdFailure(op: string, err: unknown): ConnrateError {
  if (err instanceof ConnrateError) return err;
  const e = err as Error;
  return new ConnrateError(op, 'EIO', `etcd: ${e.message ?? String(e)}`, EXIT.FAILURE, { cause: err });
}

const CANCEL_WAIT_MS = 1_000;

/**
 * Cancel a watcher without waiting on a stream that may be gone: a watcher
 * that etcd cancelled (compaction, an expired token) or one on a broken
 * stream may never see its cancel acknowledged.
 */
export async function cancelWatcher(w: Watcher): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([w.cancel().catch(() => {}), new Promise<void>((r) => (timer = setTimeout(r, CANCEL_WAIT_MS)))]);
  clearTimeout(timer);
}

/**
 * A client that can be replaced: after a watch failure or an etcd restart a
 * fresh client re-authenticates (tokens do not survive a restart) and
 * forgets the old connection's back-off.
 */
export class Connection {
  #client: Etcd3;

  constructor(private readonly factory: (() => Etcd3) | undefined, client?: Etcd3) {
    if (!client && !factory) throw new Error('Connection: a client or a factory is needed');
    this.#client = client ?? factory!();
  }

  get client(): Etcd3 {
    return this.#client;
  }

  /** Replace the client (when there is a factory); true if it was replaced. */
  renew(): boolean {
    if (!this.factory) return false;
    const old = this.#client;
    this.#client = this.factory();
    old.close();
    return true;
  }

  close(): void {
    this.#client.close();
  }
}

/** Why etcd ended a watch, for a log line (a compacted start revision comes without a reason). */
export function watchEnd(err: Error): string {
  return /canceled: *$/.test(err.message) ? 'cancelled by etcd: its start revision was compacted' : err.message;
}

const CREATE_WAIT_MS = 10_000;

/**
 * Create a watcher, or fail after a while: on a stream that lost its
 * authentication a watch is never acknowledged, and waiting for it would hang.
 */
export async function createWatcher(b: WatchBuilder): Promise<Watcher> {
  const w = b.watcher();
  let timer: NodeJS.Timeout | undefined;
  try {
    await new Promise<void>((resolve, reject) => {
      timer = setTimeout(() => reject(new Error(`etcd did not acknowledge a watch within ${CREATE_WAIT_MS / 1000} s`)), CREATE_WAIT_MS);
      w.once('connected', () => resolve());
      w.once('error', reject);
    });
  } catch (err) {
    void cancelWatcher(w);
    throw err;
  } finally {
    clearTimeout(timer);
  }
  return w;
}
