/**
 * `connrate run`: load (or adopt) the pinned datapath, attach it, keep local
 * addresses and routes in sync, turn events into log lines. The datapath stays
 * attached when the daemon exits or crashes; `connrate detach` removes it.
 * The daemon's own settings (anonymized log lines) are read from the store at
 * start and whenever a new configuration generation is in force.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import type { Server } from 'node:http';
import { BpfError, Link, type Program, RingBufferReader, ifIndex } from '@xdp-ts/loader';
import { anonymizeLogs, resolve } from '../config/variables.js';
import { Store } from '../config/store.js';
import { ConnrateError, EXIT } from '../errors.js';
import type { FileLock } from '../lock.js';
import { decodeEvent } from './abi.js';
import { BlockLog, formatEvent } from './blocklog.js';
import { Datapath, type MapSizes } from './datapath.js';
import { ConnrateMetrics, type Listen, type MetricsOptions, serveMetrics } from './metrics.js';
import { NetWatcher, readNetState } from './netstate.js';
import { PinDir } from './pins.js';
import { xdpMode } from './queries.js';

export type XdpModeChoice = 'auto' | 'native' | 'generic';

export interface RunOptions {
  /** Interfaces to attach to; empty: those that carry a default route. */
  readonly interfaces: readonly string[];
  readonly xdpMode: XdpModeChoice;
  readonly pins: PinDir;
  readonly store: Store;
  readonly sizes?: MapSizes;
  /** Informational lines (stdout). */
  readonly info?: (line: string) => void;
  /** Called once everything is attached and in sync (tests, metrics). */
  readonly onReady?: (d: Daemon) => void;
}

export interface Attachment {
  readonly ifname: string;
  /** The XDP mode in force (for an adopted link, as the kernel reports it). */
  readonly mode: string;
  readonly adopted: boolean;
}

export class Daemon {
  readonly attachments: Attachment[] = [];
  #watcher: NetWatcher | undefined;
  #reader: RingBufferReader | undefined;
  #blockLog: BlockLog | undefined;
  #metrics: Server | undefined;
  /** The configuration generation `#anonymize` was read for (null: not read yet). */
  #generation: bigint | undefined | null = null;
  #anonymize = false;
  #stopped: Promise<void>;
  #stop!: () => void;

  private constructor(
    readonly dp: Datapath,
    private readonly lock: FileLock,
    private readonly opts: RunOptions,
  ) {
    this.#stopped = new Promise((r) => (this.#stop = r));
  }

  static start(opts: RunOptions): Daemon {
    const info = opts.info ?? ((l: string) => process.stdout.write(`${l}\n`));
    for (const ifname of opts.interfaces) ifindexOf(ifname); // refuse unknown names before touching anything
    const fresh = !existsSync(opts.pins.configPin);
    const undoPins = opts.pins.ensure();
    let lock: FileLock;
    try {
      lock = opts.pins.lockDaemon();
    } catch (err) {
      undoPins();
      throw err;
    }
    let dp: Datapath | undefined;
    try {
      const adopting = existsSync(opts.pins.configPin);
      const loaded = Datapath.load({ pins: opts.pins, ...(opts.sizes ? { sizes: opts.sizes } : {}) });
      dp = loaded;
      const d = new Daemon(loaded, lock, { ...opts, info });
      info(adopting ? `connrate: adopted the datapath pinned at ${opts.pins.dir}` : `connrate: loaded the datapath, pinned at ${opts.pins.dir}`);
      d.#sync();
      if (!loaded.appliedConfig()) {
        const applied = opts.pins.withApplyLock(() => {
          const a = loaded.applyConfig(resolve(opts.store.read()));
          opts.pins.markApplied();
          return a;
        });
        info(`connrate: applied the ${opts.store.exists() ? `stored configuration (${opts.store.path})` : 'embedded defaults'}, generation ${applied.generation}`);
      }
      d.#followApplied();
      d.#attachAll(readNetState().defaultRouteInterfaces);
      d.#watcher = new NetWatcher(() => d.#onNetChange());
      d.#blockLog = new BlockLog(info);
      d.#reader = new RingBufferReader(dp.maps.events, (records) => d.#onEvents(records));
      opts.onReady?.(d);
      return d;
    } catch (err) {
      dp?.close();
      if (fresh) opts.pins.unpinAll(); // a refused start leaves nothing behind; an adopted datapath stays
      lock.release();
      undoPins();
      throw err;
    }
  }

  get info(): (line: string) => void {
    return this.opts.info ?? (() => {});
  }

  /** Resolves when stop() has finished. */
  get stopped(): Promise<void> {
    return this.#stopped;
  }

  /** Local addresses and routes into the datapath, under the apply lock (they share in_force with the configuration). */
  #sync(): void {
    const state = readNetState();
    this.opts.pins.withApplyLock(() => {
      this.dp.setLocalAddresses(state.localAddresses);
      this.dp.setRoutes(state.routes);
    });
  }

  #onNetChange(): void {
    try {
      this.#sync();
      if (this.opts.interfaces.length === 0) this.#attachAll(readNetState().defaultRouteInterfaces);
    } catch (err) {
      this.info(`connrate: resync failed: ${(err as Error).message}`);
    }
  }

  /**
   * Read the daemon's settings from the store once per configuration
   * generation: at start, and after each `system update rule` (which applies
   * a new generation). A store that cannot be read keeps the settings in use
   * (and is reported once per generation).
   */
  #followApplied(): void {
    const generation = this.dp.generation();
    if (generation === this.#generation) return;
    this.#generation = generation;
    try {
      this.#anonymize = anonymizeLogs(this.opts.store.read());
    } catch (err) {
      this.info(`connrate: cannot read the daemon settings from the store: ${(err as Error).message}`);
    }
  }

  #onEvents(records: Buffer[]): void {
    this.#followApplied();
    for (const r of records) this.#blockLog?.write(formatEvent(decodeEvent(r), this.#anonymize));
  }

  /** Attach to every target interface not attached yet. */
  #attachAll(defaultRouteIfs: readonly string[]): void {
    const targets = this.opts.interfaces.length ? this.opts.interfaces : defaultRouteIfs;
    if (targets.length === 0 && this.attachments.length === 0) {
      this.info('connrate: no interface carries a default route yet; waiting for one (or name them with --interface)');
    }
    for (const ifname of targets) {
      if (this.attachments.some((a) => a.ifname === ifname)) continue;
      this.attachments.push(this.#attach(ifname));
    }
  }

  #attach(ifname: string): Attachment {
    const ifindex = ifindexOf(ifname);
    const pin = this.opts.pins.linkPin(ifname);
    if (existsSync(pin)) {
      const link = Link.fromPinned(pin);
      try {
        if (link.info().ifindex === ifindex) {
          link.update(this.dp.program); // this build's program, the same pinned maps
          const mode = xdpMode(ifname) ?? 'unknown';
          this.info(`connrate: ${ifname}: adopted the pinned XDP link (${mode} mode)`);
          return { ifname, mode, adopted: true };
        }
        link.unpin(); // the interface it was attached to is gone
      } finally {
        link.close();
      }
    }
    const { link, mode } = attachWithFallback(this.dp.program, ifname, ifindex, this.opts.xdpMode, this.info);
    try {
      link.pin(pin);
    } finally {
      link.close();
    }
    this.info(`connrate: ${ifname}: attached in ${mode} mode`);
    return { ifname, mode, adopted: false };
  }

  /** Serve Prometheus metrics until stop(). */
  async serveMetrics(listen: Listen, opts: MetricsOptions = {}): Promise<void> {
    const metrics = new ConnrateMetrics({ dp: this.dp, attachments: () => this.attachments, appliedAt: () => this.opts.pins.appliedAt() }, opts);
    try {
      this.#metrics = await serveMetrics(listen, metrics);
    } catch (err) {
      throw new ConnrateError('run', (err as NodeJS.ErrnoException).code ?? 'EIO', `cannot serve metrics on ${listen.host}:${listen.port}: ${(err as Error).message}`);
    }
    this.info(`connrate: metrics on http://${listen.host.includes(':') ? `[${listen.host}]` : listen.host}:${listen.port}/metrics`);
  }

  /** Stop syncing and logging; the datapath stays attached and enforcing. */
  async stop(): Promise<void> {
    await new Promise<void>((r) => (this.#metrics ? this.#metrics.close(() => r()) : r()));
    this.#watcher?.close();
    await this.#reader?.close();
    this.#blockLog?.close();
    this.dp.close();
    this.lock.release();
    this.#stop();
  }
}

/**
 * Tell systemd the service is up (Type=notify) when it started us: systemd-notify(1)
 * sends READY=1 to $NOTIFY_SOCKET and waits until the manager has taken it, so the
 * unit needs NotifyAccess=all (the message comes from a child). Without
 * $NOTIFY_SOCKET it does nothing. A failure is reported and not fatal: systemd then
 * times the start out, which says more than a daemon that exits.
 */
export function notifyReady(status: string, info: (line: string) => void): void {
  if (!process.env.NOTIFY_SOCKET) return;
  try {
    execFileSync('systemd-notify', ['--ready', `--status=${status}`], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    const stderr = (err as { stderr?: Buffer }).stderr?.toString().trim();
    info(`connrate: systemd-notify --ready failed: ${stderr || (err as Error).message}`);
  }
}

function ifindexOf(ifname: string): number {
  try {
    return ifIndex(ifname);
  } catch {
    throw new ConnrateError('run', 'ENODEV', `no such interface: ${ifname}`, EXIT.USAGE);
  }
}

function attachWithFallback(prog: Program, ifname: string, ifindex: number, choice: XdpModeChoice, info: (l: string) => void): { link: Link; mode: 'native' | 'generic' } {
  const attach = (mode: 'native' | 'generic'): Link => {
    try {
      return prog.attachXdp(ifindex, { mode });
    } catch (err) {
      if (err instanceof BpfError && err.code === 'EBUSY') {
        throw new ConnrateError('run', 'EBUSY', `${ifname}: another XDP program is already attached (remove it, or run "connrate detach" if it is an old connrate)`);
      }
      if (err instanceof BpfError) {
        throw new ConnrateError('run', err.code, `${ifname}: cannot attach XDP in ${mode} mode: ${err.message}`, EXIT.FAILURE, { cause: err });
      }
      throw err;
    }
  };
  if (choice !== 'auto') return { link: attach(choice), mode: choice };
  try {
    return { link: attach('native'), mode: 'native' };
  } catch (err) {
    if (err instanceof ConnrateError && err.code === 'EBUSY') throw err;
    info(`connrate: ${ifname}: native XDP unavailable (${(err as Error).message}); falling back to generic`);
    return { link: attach('generic'), mode: 'generic' };
  }
}
