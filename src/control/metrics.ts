/**
 * Prometheus metrics, read from the pinned maps at scrape time, so they survive
 * daemon restarts. Served on loopback by default; GET /metrics only, 404 for
 * everything else; nothing over HTTP changes anything.
 *
 * connrate_packets_total{result} partitions the packets the program saw: its
 * sum is every packet. Error and loss counts are metrics of their own. Per-port
 * series are bounded: the configured ports, the busiest others, and
 * port="other" for the rest.
 */
import { type Server, createServer } from 'node:http';
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import { version } from '../version.js';
import type { Proto } from '../domain/limits.js';
import type { CounterName } from './abi.js';
import type { Datapath } from './datapath.js';
import { DEFAULT_TOP_PORTS, type Listen } from './listen.js';
import { type PortCounters, type Stats, readStats } from './queries.js';

export { DEFAULT_METRICS, type Listen, parseListen } from './listen.js';

/** How a datapath counter is exported. */
type CounterExport =
  /** A part of the partition of packets seen: connrate_packets_total{result}. */
  | { readonly metric: 'packets' }
  /** A reason counted within result="not_monitored": connrate_not_monitored_packets_total{reason}. */
  | { readonly metric: 'not_monitored_reason' }
  /** Something went wrong in the datapath: connrate_errors_total{kind}. */
  | { readonly metric: 'errors' }
  /** A counter with a metric of its own. */
  | { readonly metric: 'own'; readonly name: string; readonly help: string }
  /** Not exported: a sum of other series (seen, monitored), or how the datapath reached a verdict counted there (cache_drop, first_seen, first_seen_busy, flow_filter_drop). */
  | { readonly metric: 'none' };

/**
 * Every datapath counter's place in the metrics. Keyed by CounterName, so a
 * counter added to the datapath does not compile until it is placed here.
 */
export const COUNTER_EXPORT: Readonly<Record<CounterName, CounterExport>> = {
  seen: { metric: 'none' },
  monitored: { metric: 'none' },
  established: { metric: 'packets' },
  exempt: { metric: 'packets' },
  not_monitored: { metric: 'packets' },
  unparsable: { metric: 'packets' },
  new_allowed: { metric: 'packets' },
  new_dropped: { metric: 'packets' },
  new_would_drop: { metric: 'packets' },
  fragment: { metric: 'not_monitored_reason' },
  ipv6_ext_limit: { metric: 'not_monitored_reason' },
  no_config: { metric: 'not_monitored_reason' },
  cas_exhausted: { metric: 'errors' },
  bucket_fallback: {
    metric: 'own',
    name: 'connrate_bucket_fallback_total',
    help: 'New connections whose (source, port, protocol) key could not be stored, judged by the shared fallback bucket of their protocol and port',
  },
  flow_insert_fail: { metric: 'errors' },
  port_stats_full: { metric: 'errors' },
  events_lost: {
    metric: 'own',
    name: 'connrate_events_lost_total',
    help: 'Log events lost because the ring buffer was full (those RATE-LIMIT lines were not written)',
  },
  cache_drop: { metric: 'none' },
  first_seen: { metric: 'none' },
  first_seen_busy: { metric: 'none' },
  flow_filter_drop: { metric: 'none' },
};

export interface MetricsSource {
  readonly dp: Datapath;
  /** The interfaces attached and their XDP mode. */
  attachments(): readonly { ifname: string; mode: string }[];
  /** When the configuration in force was applied (ms since the epoch); without it, no last-apply metric. */
  appliedAt?(): number | undefined;
}

export interface MetricsOptions {
  /** Per-port series besides the configured ports (default 10). */
  readonly topPorts?: number;
}

const VERDICTS = ['allowed', 'dropped', 'would_drop'] as const;
type Verdict = (typeof VERDICTS)[number];
const OTHER = 'other';

function countOf(p: PortCounters, v: Verdict): bigint {
  return v === 'allowed' ? p.allowed : v === 'dropped' ? p.dropped : p.wouldDrop;
}

/**
 * Which ports get series of their own. A port, once named, stays named for the
 * life of the process, and port="other" keeps what a port had counted there
 * before it was named, so every series only grows: no false counter resets,
 * and sums of rates stay right (a new series counts from its first sample).
 */
export class PortSeries {
  readonly #named = new Set<string>();
  #others = 0;
  /** `${proto}/${verdict}` → what named ports had counted under "other". */
  readonly #carried = new Map<string, bigint>();
  /** Each unnamed port's counts as last reported under "other". */
  readonly #inOther = new Map<string, PortCounters>();

  constructor(readonly topOthers: number) {}

  /** The series for one scrape: [proto, port label, verdict, value]. */
  series(ports: readonly PortCounters[], configured: Readonly<Record<Proto, readonly number[]>>): [Proto, string, Verdict, bigint][] {
    const key = (p: { proto: Proto; port: number }): string => `${p.proto}/${p.port}`;
    const name = (p: PortCounters): void => {
      if (this.#named.has(key(p))) return;
      this.#named.add(key(p));
      const reported = this.#inOther.get(key(p));
      if (!reported) return;
      this.#inOther.delete(key(p));
      for (const v of VERDICTS) this.#carried.set(`${p.proto}/${v}`, (this.#carried.get(`${p.proto}/${v}`) ?? 0n) + countOf(reported, v));
    };
    for (const p of ports) if (configured[p.proto].includes(p.port)) name(p);
    const total = (p: PortCounters): bigint => p.allowed + p.dropped + p.wouldDrop;
    const candidates = ports.filter((p) => !this.#named.has(key(p))).sort((a, b) => (total(b) > total(a) ? 1 : total(b) < total(a) ? -1 : 0));
    for (const p of candidates) {
      if (this.#others >= this.topOthers) break;
      name(p);
      this.#others++;
    }
    const out: [Proto, string, Verdict, bigint][] = [];
    const other = new Map(this.#carried);
    for (const p of ports) {
      if (this.#named.has(key(p))) {
        for (const v of VERDICTS) out.push([p.proto, String(p.port), v, countOf(p, v)]);
        continue;
      }
      this.#inOther.set(key(p), p);
      for (const v of VERDICTS) other.set(`${p.proto}/${v}`, (other.get(`${p.proto}/${v}`) ?? 0n) + countOf(p, v));
    }
    for (const [k, n] of other) {
      const [proto, v] = k.split('/') as [Proto, Verdict];
      out.push([proto, OTHER, v, n]);
    }
    return out;
  }
}

/** One row of `connrate stats`: a port's counts, or the sum of a protocol's other ports (port "other"). */
export interface PortRow {
  readonly proto: Proto;
  readonly port: string;
  readonly allowed: bigint;
  readonly dropped: bigint;
  readonly wouldDrop: bigint;
}

/**
 * The ports of a PortSeries as table rows, per protocol: the named ports in
 * port order, then "other". The same selection as the metrics.
 */
export function portRows(series: PortSeries, ports: readonly PortCounters[], configured: Readonly<Record<Proto, readonly number[]>>): PortRow[] {
  const rows = new Map<string, { proto: Proto; port: string; allowed: bigint; dropped: bigint; wouldDrop: bigint }>();
  for (const [proto, port, verdict, n] of series.series(ports, configured)) {
    const key = `${proto}/${port}`;
    const row = rows.get(key) ?? { proto, port, allowed: 0n, dropped: 0n, wouldDrop: 0n };
    if (verdict === 'allowed') row.allowed = n;
    else if (verdict === 'dropped') row.dropped = n;
    else row.wouldDrop = n;
    rows.set(key, row);
  }
  const order = (r: PortRow): number => (r.port === OTHER ? Number.POSITIVE_INFINITY : Number(r.port));
  return [...rows.values()].sort((a, b) => a.proto.localeCompare(b.proto) || order(a) - order(b));
}

/** The ports named in the configuration in force, per protocol (none: no configuration, or every port monitored). */
export function configuredPorts(dp: Datapath): Record<Proto, readonly number[]> {
  const cfg = dp.appliedConfig();
  return { tcp: cfg?.tcp.ports ?? [], udp: cfg?.udp.ports ?? [] };
}

/** A registry whose collectors read the datapath when scraped. */
export class ConnrateMetrics {
  readonly registry = new Registry();
  #snapshot: Stats | undefined;

  constructor(src: MetricsSource, opts: MetricsOptions = {}) {
    register(this.registry, src, () => (this.#snapshot ??= readStats(src.dp)), new PortSeries(opts.topPorts ?? DEFAULT_TOP_PORTS));
    collectDefaultMetrics({ register: this.registry });
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

function register(registry: Registry, src: MetricsSource, stats: () => Stats, portSeries: PortSeries): void {
  const counters = (metric: 'packets' | 'not_monitored_reason' | 'errors'): [string, bigint][] =>
    Object.entries(stats().counters).filter(([name]) => COUNTER_EXPORT[name as CounterName]?.metric === metric);
  new Counter({
    name: 'connrate_new_connections_total',
    help: 'New connections judged, per protocol and destination port, by verdict (would_drop: log mode). Ports: the configured ones, the busiest others, and port="other" for the rest',
    labelNames: ['proto', 'port', 'verdict'] as const,
    registers: [registry],
    collect() {
      this.reset();
      for (const [proto, port, verdict, n] of portSeries.series(stats().ports, configuredPorts(src.dp))) this.inc({ proto, port, verdict }, Number(n));
    },
  });
  new Counter({
    name: 'connrate_packets_total',
    help: 'Packets seen by the XDP program, by result; the results partition them, so the sum is every packet seen',
    labelNames: ['result'] as const,
    registers: [registry],
    collect() {
      this.reset();
      for (const [result, n] of counters('packets')) this.inc({ result }, Number(n));
    },
  });
  new Counter({
    name: 'connrate_not_monitored_packets_total',
    help: 'Packets counted as result="not_monitored" for these reasons (a part of them): non-first fragments, IPv6 extension chains too long, no configuration applied yet',
    labelNames: ['reason'] as const,
    registers: [registry],
    collect() {
      this.reset();
      for (const [reason, n] of counters('not_monitored_reason')) this.inc({ reason }, Number(n));
    },
  });
  new Counter({
    name: 'connrate_errors_total',
    help: 'Datapath errors by kind: cas_exhausted (a bucket update lost every retry; the packet was dropped), flow_insert_fail (the UDP flow map refused a new flow), port_stats_full (per-port counters full)',
    labelNames: ['kind'] as const,
    registers: [registry],
    collect() {
      this.reset();
      for (const [kind, n] of counters('errors')) this.inc({ kind }, Number(n));
    },
  });
  for (const [counter, how] of Object.entries(COUNTER_EXPORT) as [CounterName, CounterExport][]) {
    if (how.metric !== 'own') continue;
    new Counter({
      name: how.name,
      help: how.help,
      registers: [registry],
      collect() {
        this.reset();
        this.inc(Number(stats().counters[counter] ?? 0n));
      },
    });
  }
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
    name: 'connrate_config_generation',
    help: 'Generation of the configuration in force (bumped by every apply; 0: none applied)',
    registers: [registry],
    collect() {
      this.set(Number(src.dp.appliedConfig()?.generation ?? 0n));
    },
  });
  new Gauge({
    name: 'connrate_config_last_apply_timestamp_seconds',
    help: 'When the configuration in force was applied (system update rule, or the daemon applying the store), Unix time',
    registers: [registry],
    collect() {
      const at = src.appliedAt?.();
      this.reset();
      if (at !== undefined) this.set(at / 1000);
    },
  });
  new Gauge({
    name: 'connrate_build_info',
    help: 'This connrate: its version, the ABI fingerprint of the datapath it runs (first 12 hex digits) and the Node.js version (value 1)',
    labelNames: ['version', 'abi', 'node'] as const,
    registers: [registry],
    collect() {
      this.reset();
      this.set({ version: version(), abi: src.dp.abiFingerprint()?.slice(0, 12) ?? 'none', node: process.versions.node }, 1);
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
