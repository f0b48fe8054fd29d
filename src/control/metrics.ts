/**
 * Prometheus metrics (SPEC §5), read from the pinned maps at scrape time, so
 * they survive daemon restarts. Served on loopback by default; GET /metrics
 * only, 404 for everything else; nothing over HTTP changes anything.
 */
import { type Server, createServer } from 'node:http';
import { isIP } from 'node:net';
import { Counter, Gauge, Registry } from 'prom-client';
import { InvalidValueError } from '../errors.js';
import { COUNTER_NAMES } from './abi.js';
import { type Stats, readStats } from './commands.js';
import type { Datapath } from './datapath.js';

export const DEFAULT_METRICS = '127.0.0.1:9470';

export interface Listen {
  readonly host: string;
  readonly port: number;
}

/** "HOST:PORT", "[v6]:PORT" or "off" (undefined). */
export function parseListen(value: string): Listen | undefined {
  if (value === 'off') return undefined;
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(value);
  const host = m?.[1] ?? m?.[2];
  const port = Number(m?.[3]);
  if (!m || !host || isIP(host) === 0 || port < 1 || port > 65535) {
    throw new InvalidValueError('run', `--metrics ${JSON.stringify(value)}: expected HOST:PORT with an IP address (e.g. 127.0.0.1:9470, [::1]:9470) or off`);
  }
  return { host, port };
}

export interface MetricsSource {
  readonly dp: Datapath;
  /** The interfaces attached and their XDP mode. */
  attachments(): readonly { ifname: string; mode: string }[];
}

/** A registry whose collectors read the datapath when scraped. */
export class ConnrateMetrics {
  readonly registry = new Registry();
  #snapshot: Stats | undefined;

  constructor(private readonly src: MetricsSource) {
    register(this.registry, src, () => (this.#snapshot ??= readStats(this.src.dp)));
  }

  /** The text exposition, from one read of the maps. */
  async scrape(): Promise<string> {
    this.#snapshot = undefined;
    try {
      return await this.registry.metrics();
    } finally {
      this.#snapshot = undefined;
    }
  }
}

function register(registry: Registry, src: MetricsSource, stats: () => Stats): void {
  new Counter({
    name: 'connrate_new_connections_total',
    help: 'New connections judged per protocol and destination port, by verdict (would_drop: log mode)',
    labelNames: ['proto', 'port', 'verdict'] as const,
    registers: [registry],
    collect() {
      this.reset();
      for (const p of stats().ports) {
        const labels = { proto: p.proto, port: String(p.port) };
        this.inc({ ...labels, verdict: 'allowed' }, Number(p.allowed));
        this.inc({ ...labels, verdict: 'dropped' }, Number(p.dropped));
        this.inc({ ...labels, verdict: 'would_drop' }, Number(p.wouldDrop));
      }
    },
  });
  new Counter({
    name: 'connrate_packets_total',
    help: 'Packets seen by the XDP program, by result',
    labelNames: ['result'] as const,
    registers: [registry],
    collect() {
      this.reset();
      const c = stats().counters;
      for (const name of COUNTER_NAMES) this.inc({ result: name }, Number(c[name]));
    },
  });
  new Counter({
    name: 'connrate_bucket_fallback_total',
    help: 'New connections whose (source, port, protocol) key could not be stored, judged by the shared fallback bucket of their protocol and port',
    registers: [registry],
    collect() {
      this.reset();
      this.inc(Number(stats().counters.bucket_fallback));
    },
  });
  new Gauge({
    name: 'connrate_tracked_buckets',
    help: '(source, port, protocol) keys with a token bucket',
    registers: [registry],
    collect() {
      this.set(stats().trackedBuckets);
    },
  });
  new Gauge({
    name: 'connrate_tracked_udp_flows',
    help: 'UDP flows known as established',
    registers: [registry],
    collect() {
      this.set(stats().trackedFlows);
    },
  });
  new Gauge({
    name: 'connrate_map_capacity',
    help: 'Maximum entries of the bucket and flow maps (least recently used entries are evicted beyond it)',
    labelNames: ['map'] as const,
    registers: [registry],
    collect() {
      this.set({ map: 'buckets' }, stats().bucketCapacity);
      this.set({ map: 'udp_flows' }, stats().flowCapacity);
    },
  });
  new Gauge({
    name: 'connrate_info',
    help: 'Interfaces connrate is attached to and their XDP mode (value 1)',
    labelNames: ['interface', 'xdp_mode'] as const,
    registers: [registry],
    collect() {
      this.reset();
      for (const a of src.attachments()) this.set({ interface: a.ifname, xdp_mode: a.mode }, 1);
    },
  });
}

/** Serve GET /metrics; everything else is 404 (405 for other methods on /metrics). */
export function serveMetrics(listen: Listen, metrics: ConnrateMetrics): Promise<Server> {
  const server = createServer((req, res) => {
    const path = (req.url ?? '').split('?')[0];
    if (path !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('method not allowed\n');
      return;
    }
    metrics
      .scrape()
      .then((body) => res.writeHead(200, { 'content-type': metrics.registry.contentType }).end(req.method === 'HEAD' ? undefined : body))
      .catch((err: Error) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`${err.message}\n`));
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(listen.port, listen.host, () => {
      server.off('error', reject);
      resolve(server);
    });
  });
}
