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
import { chmodSync, existsSync, mkdirSync, readdirSync, statfsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { ConnrateError } from '../errors.js';
import { FileLock } from '../lock.js';

export const DEFAULT_PIN_DIR = '/sys/fs/bpf/connrate';
const BPF_FS_ROOT = '/sys/fs/bpf';
const BPF_FS_MAGIC = 0xcafe4a11;
const DIR_MODE = 0o700;

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
   */
  ensure(): void {
    if (!isBpffs(nearestExisting(this.dir))) {
      const mountPoint = this.dir.startsWith(`${BPF_FS_ROOT}/`) ? BPF_FS_ROOT : this.dir;
      mkdirSync(mountPoint, { recursive: true, mode: DIR_MODE });
      try {
        execFileSync('mount', ['-t', 'bpf', '-o', `mode=${DIR_MODE.toString(8)}`, 'bpf', mountPoint], { stdio: 'pipe' });
      } catch (err) {
        const stderr = (err as { stderr?: Buffer }).stderr?.toString().trim();
        throw new ConnrateError('pins.mount', 'EPERM', `cannot mount bpffs at ${mountPoint}: ${stderr || (err as Error).message}`);
      }
    }
    for (const d of [this.dir, this.maps, this.links]) {
      mkdirSync(d, { recursive: true, mode: DIR_MODE });
      chmodSync(d, DIR_MODE);
    }
  }

  /** The daemon's lock: fails at once when another daemon holds it. */
  lockDaemon(): FileLock {
    return FileLock.acquire(this.dir, { directory: true, waitMs: 0, holder: 'another connrate daemon (is one already running?)' });
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

  /** Serializes configuration applies (`system update rule`). */
  lockApply(): FileLock {
    return FileLock.acquire(this.maps, { directory: true, holder: 'another "system update rule"' });
  }
}
