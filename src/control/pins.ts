/**
 * The pin directory (CONNRATE_PIN_DIR): where the datapath's maps and XDP links
 * live on bpffs, so they outlive the daemon.
 *
 *   <dir>/maps/<map>      every map of the program
 *   <dir>/links/<ifname>  one XDP link per interface
 *
 * The daemon holds an exclusive flock on <dir> for its lifetime; applying a
 * configuration takes one on <dir>/maps.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, readdirSync, rmdirSync, statSync, statfsSync, unlinkSync, utimesSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { ConnrateError } from '../errors.js';
import { mkdirs } from '../fs.js';
import { flock } from '@xdp-ts/loader';
import { FileLock, type TryFlock } from '../lock.js';
import { maps } from './datapath.gen.js';

export const DEFAULT_PIN_DIR = '/sys/fs/bpf/connrate';
const BPF_FS_ROOT = '/sys/fs/bpf';
const BPF_FS_MAGIC = 0xcafe4a11;
const DIR_MODE = 0o700;
/** The addon's flock(2): no child process per attempt (datapath commands have the addon loaded anyway). */
const tryFlock: TryFlock = (fd) => flock(fd, 'exclusive', false);

export function pinDirPath(): string {
  return process.env.CONNRATE_PIN_DIR || DEFAULT_PIN_DIR;
}

function isBpffs(path: string): boolean {
  try {
    return statfsSync(path).type === BPF_FS_MAGIC;
  } catch {
    return false;
  }
}

function nearestExisting(path: string): string {
  let p = path;
  while (!existsSync(p)) p = dirname(p);
  return p;
}

export class PinDir {
  constructor(readonly dir: string = pinDirPath()) {}

  get maps(): string {
    return join(this.dir, 'maps');
  }

  get links(): string {
    return join(this.dir, 'links');
  }

  mapPin(name: string): string {
    return join(this.maps, name);
  }

  /** The pinned `config` map: there once a datapath was created here; its mtime is when a configuration was last applied. */
  get configPin(): string {
    return this.mapPin(maps.config.name);
  }

  linkPin(ifname: string): string {
    return join(this.links, ifname);
  }

  /** Whether a datapath is pinned here (its maps exist on bpffs). */
  exists(): boolean {
    return isBpffs(this.dir) && existsSync(this.maps);
  }

  /** Interfaces with a pinned XDP link. */
  linkNames(): string[] {
    try {
      return readdirSync(this.links).sort();
    } catch {
      return [];
    }
  }

  /**
   * Make <dir> a directory on bpffs, root-only, mounting bpffs if nothing is
   * there: at /sys/fs/bpf for the default location, else at <dir> itself.
   * Returns an undo for a start that fails: it removes what this call made.
   */
  ensure(): () => void {
    const created = [this.dir, this.maps, this.links].filter((d) => !existsSync(d));
    let mounted: string | undefined;
    if (!isBpffs(nearestExisting(this.dir))) {
      const mountPoint = this.dir.startsWith(`${BPF_FS_ROOT}/`) ? BPF_FS_ROOT : this.dir;
      try {
        mkdirs(mountPoint, DIR_MODE);
        execFileSync('mount', ['-t', 'bpf', '-o', `mode=${DIR_MODE.toString(8)}`, 'bpf', mountPoint], { stdio: 'pipe' });
      } catch (err) {
        const stderr = (err as { stderr?: Buffer }).stderr?.toString().trim() || undefined;
        throw new ConnrateError('pins.mount', 'EPERM', `cannot mount bpffs at ${mountPoint}: ${stderr || (err as Error).message}`);
      }
      mounted = mountPoint;
    }
    for (const d of [this.dir, this.maps, this.links]) {
      try {
        mkdirs(d, DIR_MODE);
        chmodSync(d, DIR_MODE);
      } catch (err) {
        throw new ConnrateError('pins', (err as NodeJS.ErrnoException).code ?? 'EIO', `cannot create the pin directory ${d}: ${(err as Error).message} (CONNRATE_PIN_DIR must be on, or a place to mount, bpffs)`);
      }
    }
    return () => {
      for (const d of created.reverse()) {
        try {
          rmdirSync(d); // only while empty: pins that exist stay
        } catch {
          /* not empty, or a mount point */
        }
      }
      if (mounted) execFileSync('umount', [mounted], { stdio: 'ignore' });
    };
  }

  /** Unpin every map and link (the kernel frees what nothing else holds). */
  unpinAll(): void {
    for (const dir of [this.links, this.maps]) {
      let names: string[] = [];
      try {
        names = readdirSync(dir);
      } catch {
        continue;
      }
      for (const n of names) unlinkSync(join(dir, n));
    }
  }

  /** The daemon's lock: fails at once when another daemon holds it. */
  lockDaemon(): FileLock {
    return FileLock.acquire(this.dir, { directory: true, waitMs: 0, holder: 'another connrate daemon (is one already running?)', tryFlock });
  }

  /** Whether a daemon holds the lock right now. */
  daemonRunning(): boolean {
    if (!existsSync(this.dir)) return false;
    try {
      this.lockDaemon().release();
      return false;
    } catch {
      return true;
    }
  }

  /**
   * Record now as the time the configuration in force was applied: the
   * modification time of the pinned config map (bpffs keeps inode times, and
   * map updates leave them alone), so every process and a restarted daemon see it.
   */
  markApplied(): void {
    const now = new Date();
    utimesSync(this.configPin, now, now);
  }

  /** When the configuration in force was applied (ms since the epoch), if a datapath is pinned. */
  appliedAt(): number | undefined {
    try {
      return statSync(this.configPin).mtimeMs;
    } catch {
      return undefined;
    }
  }

  /**
   * Serializes writes of what is in force: configuration applies (`system
   * update rule`) and the daemon's sync of local addresses and routes.
   */
  lockApply(): FileLock {
    return FileLock.acquire(this.maps, { directory: true, holder: 'another "system update rule" or the daemon\'s address and route sync', tryFlock });
  }

  /** `fn` under the apply lock. */
  withApplyLock<T>(fn: () => T): T {
    const lock = this.lockApply();
    try {
      return fn();
    } finally {
      lock.release();
    }
  }
}
