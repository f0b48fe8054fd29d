/**
 * What the datapath needs from the kernel's network state: the appliance's own
 * addresses, its non-default routes, and the interfaces that carry a default
 * route. Read with `ip -j`; kept current by rtnetlink notifications through
 * `ip monitor` (no polling).
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { ConnrateError } from '../errors.js';
import { parsePrefix } from '../domain/addr.js';

export interface NetState {
  /** Every address on every interface. */
  readonly localAddresses: string[];
  /** Destination prefixes of unicast routes other than the default ones (main table). */
  readonly routes: string[];
  /** Interfaces a default route (IPv4 or IPv6) leaves through. */
  readonly defaultRouteInterfaces: string[];
}

interface IpAddr {
  ifname: string;
  addr_info?: { family: string; local?: string; prefixlen?: number }[];
}

interface IpRoute {
  dst: string;
  dev?: string;
  type?: string;
  nexthops?: { dev?: string }[];
}

function ipJson<T>(args: string[]): T[] {
  try {
    const out = execFileSync('ip', ['-j', ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    return out.trim() ? (JSON.parse(out) as T[]) : [];
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr?.trim();
    throw new ConnrateError('netstate', 'EIO', `ip ${args.join(' ')}: ${stderr || (err as Error).message}`);
  }
}

function routePrefix(r: IpRoute, family: 4 | 6): string {
  if (r.dst.includes('/')) return parsePrefix(r.dst).text;
  return parsePrefix(`${r.dst}/${family === 4 ? 32 : 128}`).text;
}

export function readNetState(): NetState {
  const localAddresses = new Set<string>();
  for (const link of ipJson<IpAddr>(['addr', 'show'])) {
    for (const a of link.addr_info ?? []) {
      if ((a.family === 'inet' || a.family === 'inet6') && a.local) localAddresses.add(a.local);
    }
  }
  const routes = new Set<string>();
  const defaults = new Set<string>();
  for (const family of [4, 6] as const) {
    for (const r of ipJson<IpRoute>([`-${family}`, 'route', 'show', 'table', 'main'])) {
      if (r.type && r.type !== 'unicast') continue;
      if (r.dst === 'default') {
        for (const dev of [r.dev, ...(r.nexthops ?? []).map((n) => n.dev)]) if (dev) defaults.add(dev);
      } else {
        routes.add(routePrefix(r, family));
      }
    }
  }
  return {
    localAddresses: [...localAddresses].sort(),
    routes: [...routes].sort(),
    defaultRouteInterfaces: [...defaults].sort(),
  };
}

const DEBOUNCE_MS = 100;
const RESTART_MS = 1000;

/**
 * Calls `onChange` (debounced) whenever the kernel announces an address or
 * route change. Stop with close().
 */
export class NetWatcher {
  #child: ChildProcess | undefined;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(private readonly onChange: () => void) {
    this.#start();
  }

  #start(): void {
    const child = spawn('ip', ['monitor', 'address', 'route'], { stdio: ['ignore', 'pipe', 'ignore'] });
    this.#child = child;
    child.stdout?.on('data', () => this.#poke());
    child.on('exit', () => {
      if (this.#closed) return;
      setTimeout(() => !this.#closed && this.#start(), RESTART_MS).unref();
      this.#poke(); // something may have changed while nobody listened
    });
  }

  #poke(): void {
    if (this.#timer || this.#closed) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      if (!this.#closed) this.onChange();
    }, DEBOUNCE_MS);
  }

  close(): void {
    this.#closed = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#child?.kill('SIGTERM');
  }
}
