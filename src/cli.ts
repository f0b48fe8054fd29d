/**
 * bin/connrate — the command line. The extc commands, help, version and
 * completion load nothing native; the datapath commands load @xdp-ts/loader
 * when they run.
 *
 * Exit status: 0 ok, 1 runtime failure, 2 usage or bad value (nothing changed),
 * 3 no datapath running.
 */
import { Argument, Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { missingDatapathCaps, requiredDatapathCaps } from './caps.js';
import { bashCompletion } from './completion.js';
import { Store } from './config/store.js';
import { APPLICATION, VARIABLES, canonicalValue, checkApplication, lookupVariable, valueWarnings } from './config/variables.js';
import type { Stats } from './control/queries.js';
import type { XdpModeChoice } from './control/daemon.js';
import type { PortRow } from './control/metrics.js';
import { DEFAULT_METRICS, DEFAULT_TOP_PORTS, parseListen } from './control/listen.js';
import { extcTable, table } from './control/table.js';
import { ConnrateError, EXIT, InvalidValueError } from './errors.js';
import { version } from './version.js';
import type { Etcd3 } from 'etcd3';
import { DEFAULT_LEASE_TTL_SEC, Keys, isName } from './fleet/keys.js';

const out = (s: string): void => void process.stdout.write(`${s}\n`);
/** Smallest map a daemon accepts: below this an LRU map evicts constantly. */
const MIN_MAP_ENTRIES = 1024;

function json(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? (Number.isSafeInteger(Number(v)) ? Number(v) : v.toString()) : v), 2);
}

function positiveInt(what: string, min = 1) {
  return (v: string): number => {
    if (!/^\d+$/.test(v) || Number(v) < min) throw new InvalidArgumentError(`${what} must be an integer ≥ ${min}`);
    return Number(v);
  };
}

/**
 * `application X variable Y value Z…` → the word after each keyword. The last
 * keyword takes every remaining word ("value [ 443 11115 ]"), and may be empty
 * so that the variable's own check names the problem. `optional` keywords may
 * follow the required ones.
 */
function keywords(op: string, words: string[], expected: readonly string[], optional: readonly string[] = []): Record<string, string> {
  const all = [...expected, ...optional];
  const word = (k: string): string => `${k} ${k === 'application' ? APPLICATION : k === 'variable' ? 'NAME' : k.toUpperCase()}`;
  const usage = `usage: connrate ${op} ${expected.map(word).join(' ')}${optional.map((k) => ` [${word(k)}]`).join('')}`;
  const got: Record<string, string> = {};
  let i = 0;
  for (const [n, kw] of all.entries()) {
    if (n >= expected.length && i >= words.length) break;
    const after = n === 0 ? '' : `after "${all[n - 1]} ${got[all[n - 1]!] ?? ''}" `;
    if (words[i] !== kw) throw new InvalidValueError(op, `expected "${kw}" ${after}but got ${words[i] === undefined ? 'nothing' : JSON.stringify(words[i])}; ${usage}`);
    const last = n === all.length - 1;
    const value = last ? words.slice(i + 1).join(' ') : words[i + 1];
    if (value === undefined || (value === '' && kw !== 'value')) throw new InvalidValueError(op, `"${kw}" needs a value; ${usage}`);
    got[kw] = value;
    i = last ? words.length : i + 2;
  }
  if (i < words.length) throw new InvalidValueError(op, `unexpected ${JSON.stringify(words[i])}; ${usage}`);
  return got;
}

/** The datapath modules, loaded only by commands that need the native addon. */
async function datapathModules(op: string) {
  try {
    const [commands, daemon, datapath, metrics, pins, queries] = await Promise.all([
      import('./control/commands.js'),
      import('./control/daemon.js'),
      import('./control/datapath.js'),
      import('./control/metrics.js'),
      import('./control/pins.js'),
      import('./control/queries.js'),
    ]);
    return { ...commands, ...daemon, ...datapath, ...metrics, ...pins, ...queries };
  } catch (err) {
    throw new ConnrateError(
      op,
      'ELIBACC',
      `the native addon @xdp-ts/loader cannot be loaded (${(err as Error).message.split('\n')[0]}); the datapath commands need it, the extc commands do not. Rebuild it ("npm run build") or reinstall connrate`,
      EXIT.FAILURE,
      { cause: err },
    );
  }
}

function printStats(s: Stats, ports: readonly PortRow[], rates?: Record<string, number>): void {
  const rate = (k: string): string[] => (rates ? [(rates[k] ?? 0).toFixed(1)] : []);
  const rateCol = rates ? [{ header: 'per s', align: 'right' as const }] : [];
  out(
    table(
      [{ header: 'packets' }, { header: 'total', align: 'right' }, ...rateCol],
      Object.entries(s.counters).map(([n, v]) => [n, String(v), ...rate(n)]),
    ),
  );
  out('');
  const tot = { allowed: 0n, dropped: 0n, wouldDrop: 0n };
  for (const p of s.ports) {
    tot.allowed += p.allowed;
    tot.dropped += p.dropped;
    tot.wouldDrop += p.wouldDrop;
  }
  const rows = ports.map((p) => [p.proto, p.port, String(p.allowed), String(p.dropped), String(p.wouldDrop), ...rate(`${p.proto}/${p.port}/dropped`)]);
  rows.push(['total', '', String(tot.allowed), String(tot.dropped), String(tot.wouldDrop), ...(rates ? [''] : [])]);
  out(
    table(
      [
        { header: 'proto' },
        { header: 'port', align: 'right' },
        { header: 'allowed', align: 'right' },
        { header: 'dropped', align: 'right' },
        { header: 'would drop', align: 'right' },
        ...(rates ? [{ header: 'drops/s', align: 'right' as const }] : []),
      ],
      rows,
    ),
  );
  out('');
  out(`tracked: ${s.trackedBuckets}/${s.bucketCapacity} buckets, ${s.trackedFlows}/${s.flowCapacity} UDP flows`);
}

/** Every port as a row of its own (--all-ports, --json). */
function allPortRows(s: Stats): PortRow[] {
  return s.ports.map((p) => ({ ...p, port: String(p.port) }));
}

function statsRates(prev: Stats, prevPorts: readonly PortRow[], cur: Stats, curPorts: readonly PortRow[], seconds: number): Record<string, number> {
  const r: Record<string, number> = {};
  for (const [n, v] of Object.entries(cur.counters)) r[n] = Number(v - (prev.counters[n as keyof Stats['counters']] ?? 0n)) / seconds;
  for (const p of curPorts) {
    const before = prevPorts.find((q) => q.proto === p.proto && q.port === p.port);
    r[`${p.proto}/${p.port}/dropped`] = Number(p.dropped - (before?.dropped ?? 0n)) / seconds;
  }
  return r;
}

const VARIABLE_LIST = VARIABLES.map((v) => `  ${v.name.padEnd(36)} ${v.help} (default ${v.default})`).join('\n');

const err = (s: string): void => void process.stderr.write(`connrate: ${s}\n`);
/** An ISO time as the fleet tables print it: 2026-01-31 12:00:00.000 (UTC). */
const tableTime = (iso: string): string => iso.replace('T', ' ').replace('Z', '');

/** The fleet's etcd modules (etcd3 and gRPC), loaded only by the commands that talk to etcd. */
async function fleetModules() {
  const [commands, controller, etcd] = await Promise.all([import('./fleet/commands.js'), import('./fleet/controller.js'), import('./fleet/etcd.js')]);
  return { ...commands, ...controller, ...etcd };
}
type FleetModules = Awaited<ReturnType<typeof fleetModules>>;

/** Run `fn` with an etcd client from the environment; etcd failures become exit 1. */
async function withEtcd<T>(op: string, fn: (c: Etcd3, k: Keys, f: FleetModules) => Promise<T>): Promise<T> {
  const f = await fleetModules();
  const k = new Keys();
  const c = f.connect();
  try {
    return await fn(c, k, f);
  } catch (e) {
    throw f.etcdFailure(op, e);
  } finally {
    c.close();
  }
}

function collect(v: string, acc: string[] = []): string[] {
  return [...acc, v];
}

function fleetCommands(program: Command): void {
  const fleet = program
    .command('fleet')
    .description('profiles for many appliances, on etcd')
    .addHelpText('after', `
Environment:
  CONNRATE_ETCD          etcd endpoints, comma-separated (default http://127.0.0.1:2379; https://… for TLS, unix:///path)
  CONNRATE_ETCD_CA, CONNRATE_ETCD_CERT, CONNRATE_ETCD_KEY   TLS files (PEM)
  CONNRATE_ETCD_USER, CONNRATE_ETCD_PASSWORD                 etcd user
  CONNRATE_ETCD_PREFIX   key prefix (default /connrate/; one per tenant)`);
  const profile = fleet.command('profile').description('rate-limit profiles');
  profile
    .command('set')
    .description('create or update a profile: options given replace, values merge (VARIABLE= removes one)')
    .argument('<name>', 'profile name')
    .argument('[assignments...]', 'VARIABLE=VALUE, e.g. CONNECTION_RATE_LIMIT_TCP=20 "CONNECTION_RATE_LIMIT_TCP_PORTS=[ 443 ]"')
    .option('--priority <n>', 'higher wins (default 5)', (v: string): number => {
      if (!/^-?\d+$/.test(v) || Math.abs(Number(v)) > 1_000_000) throw new InvalidArgumentError('--priority must be an integer from -1000000 to 1000000');
      return Number(v);
    })
    .option('--tag <tag>', 'apply to appliances with this tag (repeatable; "all" is every appliance)', collect)
    .option('--appliance <id>', 'apply to this appliance (repeatable)', collect)
    .option('--comment <text>', 'a comment')
    .action(async (name: string, assignments: string[], o: { priority?: number; tag?: string[]; appliance?: string[]; comment?: string }) => {
      const r = await withEtcd('fleet profile set', (c, k, f) =>
        f.profileSet(c, k, name, { assignments, ...(o.priority !== undefined ? { priority: o.priority } : {}), ...(o.tag ? { tags: o.tag } : {}), ...(o.appliance ? { appliances: o.appliance } : {}), ...(o.comment !== undefined ? { comment: o.comment } : {}) }));
      const p = r.profile;
      out(`profile ${p.name} ${r.created ? 'created' : 'updated'}: priority ${p.priority}; tags ${p.tags.join(', ') || '-'}; appliances ${p.appliances.join(', ') || '-'}`);
      for (const [n, v] of Object.entries(p.values)) out(`  ${n} = ${v}`);
    });
  profile
    .command('delete')
    .description('delete a profile')
    .argument('<name>', 'profile name')
    .action(async (name: string) => {
      await withEtcd('fleet profile delete', (c, k, f) => f.profileDelete(c, k, name));
      out(`profile ${name} deleted`);
    });
  profile
    .command('list')
    .description('every profile, highest priority first')
    .option('--json', 'JSON output')
    .action(async (o: { json?: boolean }) => {
      const ps = await withEtcd('fleet profile list', (c, k, f) => f.profileList(c, k, err));
      if (o.json) return out(json(ps));
      if (ps.length === 0) return out('no profile');
      out(table([{ header: 'profile' }, { header: 'priority', align: 'right' }, { header: 'tags' }, { header: 'appliances' }, { header: 'values' }, { header: 'comment' }],
        ps.map((p) => [p.name, String(p.priority), p.tags.join(',') || '-', p.appliances.join(',') || '-', Object.entries(p.values).map(([n, v]) => `${n}=${v}`).join(' ') || '-', p.comment])));
    });

  fleet
    .command('appliance')
    .description('appliances')
    .command('set')
    .description('create or update an appliance, and its etcd user and role (prints the password once)')
    .argument('<id>', 'appliance ID')
    .option('--tag <tag>', 'tag (repeatable; replaces the tags; every appliance also has "all")', collect)
    .option('--cluster <id>', 'HA cluster ID ("" for none)')
    .option('--new-password', 'give an existing etcd user a new password')
    .action(async (id: string, o: { tag?: string[]; cluster?: string; newPassword?: boolean }) => {
      const r = await withEtcd('fleet appliance set', (c, k, f) => f.applianceSet(c, k, id, { ...(o.tag ? { tags: o.tag } : {}), ...(o.cluster !== undefined ? { cluster: o.cluster } : {}), newPassword: !!o.newPassword }));
      const a = r.appliance;
      out(`appliance ${a.id}: tags ${['all', ...a.tags].join(', ')}; cluster ${a.cluster ?? '-'}`);
      const cr = r.credentials;
      if (cr.etcdctl) {
        out(`this etcd user may not manage users: as an etcd root user, run`);
        for (const l of cr.etcdctl) out(`  ${l}`);
      } else out(`etcd user ${cr.user}, role ${cr.role}: reads its desired configuration, writes its presence, status and log`);
      if (cr.password) {
        out(`give the appliance (connrate run --fleet ${a.id}):`);
        out(`  CONNRATE_ETCD_USER=${cr.user}`);
        out(`  CONNRATE_ETCD_PASSWORD=${cr.password}`);
      } else out(`the user exists; its password is unchanged (--new-password makes a new one)`);
    });

  fleet
    .command('appliances')
    .description('every appliance: tags, cluster, online, desired and confirmed generation, last seen')
    .option('--json', 'JSON output')
    .action(async (o: { json?: boolean }) => {
      const rows = await withEtcd('fleet appliances', (c, k, f) => f.appliances(c, k, err));
      if (o.json) return out(json(rows));
      if (rows.length === 0) return out('no appliance');
      out(table([{ header: 'appliance' }, { header: 'tags' }, { header: 'cluster' }, { header: 'online' }, { header: 'desired', align: 'right' }, { header: 'confirmed', align: 'right' }, { header: 'last seen' }],
        rows.map((r) => [r.id, r.tags.join(','), r.cluster ?? '-', r.online ? 'yes' : 'no', String(r.desiredGeneration), String(r.confirmedGeneration), r.online ? 'now' : r.lastSeen ? tableTime(r.lastSeen) : 'never'])));
    });

  fleet
    .command('status')
    .description('the publication log, newest first')
    .option('--appliance <id>', 'only this appliance (and its cluster)')
    .option('--profile <name>', 'only the appliances this profile applies to')
    .option('--json', 'JSON output')
    .action(async (o: { appliance?: string; profile?: string; json?: boolean }) => {
      const rows = await withEtcd('fleet status', (c, k, f) => f.publicationLog(c, k, { ...(o.appliance !== undefined ? { appliance: o.appliance } : {}), ...(o.profile !== undefined ? { profile: o.profile } : {}) }, err));
      if (o.json) return out(json(rows));
      if (rows.length === 0) return out('no publication yet');
      out(table([{ header: 'time' }, { header: 'type' }, { header: 'appliance' }, { header: 'direction' }, { header: 'status' }, { header: 'generation', align: 'right' }, { header: 'info' }],
        rows.map((r) => [tableTime(r.time), r.type, r.appliance, r.direction, r.status, String(r.generation), r.info])));
    });

  fleet
    .command('controller')
    .description('the fleet controller, in the foreground: publishes each appliance\'s configuration')
    .action(async () => {
      const f = await fleetModules();
      const k = new Keys();
      const settings = f.etcdSettings(); // a bad CONNRATE_ETCD* is refused before anything starts
      const ctl = new f.Controller({ connect: () => f.connect(settings), keys: k, info: out });
      out(`connrate fleet controller: watching ${k.prefix} on ${process.env.CONNRATE_ETCD || 'http://127.0.0.1:2379'}`);
      const stop = (sig: string): void => {
        out(`connrate fleet controller: ${sig}: stopping`);
        void ctl.stop().then(() => process.exit(EXIT.OK));
      };
      process.once('SIGTERM', () => stop('SIGTERM'));
      process.once('SIGINT', () => stop('SIGINT'));
      await ctl.run();
    });
}

export function buildProgram(): Command {
  const program = new Command('connrate')
    .description('Per-source connection-rate limiting in XDP: new TCP and UDP connections over CONNECTION_RATE_LIMIT_* are dropped')
    .version(version(), '-V, --version', 'print the version')
    .helpOption('-h, --help', 'print help for a command')
    .addHelpText('after', `
Examples:
  connrate extc value get application ${APPLICATION}
  connrate extc value set application ${APPLICATION} variable CONNECTION_RATE_LIMIT_TCP value 20
  connrate extc value set application ${APPLICATION} variable CONNECTION_RATE_LIMIT_TCP_PORTS value [ 443 11115 ]
  connrate extc value reset application ${APPLICATION} variable CONNECTION_RATE_LIMIT_TCP
  connrate system update rule
  connrate status

Environment:
  CONNRATE_STORE    the extc store (default /var/lib/connrate/extc.json)
  CONNRATE_PIN_DIR  where the datapath is pinned on bpffs (default /sys/fs/bpf/connrate)

Privileges: the extc commands need access to the store (root-only) and nothing else; the
datapath commands (system update rule, status, stats, top, detach) need CAP_BPF and
CAP_NET_ADMIN, run also CAP_PERFMON (CAP_SYS_ADMIN serves for CAP_BPF and CAP_PERFMON),
and the native addon @xdp-ts/loader.

Exit status: 0 ok, 1 runtime failure, 2 usage or bad value (nothing changed), 3 no datapath running.`)
    .exitOverride()
    .showHelpAfterError(false);

  // Commands that reach the datapath, checked for capabilities before anything else; `run` also loads the program.
  const datapathCommands = new WeakMap<Command, { load: boolean }>();
  program.hook('preAction', (_cmd, action) => {
    const need = datapathCommands.get(action);
    if (!need) return;
    const missing = missingDatapathCaps(need);
    if (missing.length) {
      const names: string[] = [];
      for (let c: Command | null = action; c && c !== program; c = c.parent) names.unshift(c.name());
      const and = (xs: string[]): string => xs.join(' and ').replace(/ and (?=.* and )/g, ', ');
      throw new ConnrateError(names.join(' '), 'EPERM', `needs ${and(requiredDatapathCaps(need))} (CAP_SYS_ADMIN serves for CAP_BPF${need.load ? ' and CAP_PERFMON' : ''}); this process lacks ${and(missing)}: run it as root, or grant ${and(missing)}`, EXIT.FAILURE);
    }
  });
  const datapath = (cmd: Command, need = { load: false }): Command => {
    datapathCommands.set(cmd, need);
    return cmd;
  };
  const store = (): Store => new Store();

  const extc = program
    .command('extc')
    .description(`extc variables of application ${APPLICATION} (stored; "system update rule" applies them)`)
    .addHelpText('after', `\nVariables:\n${VARIABLE_LIST}`);
  const value = extc.command('value').description('get, set or reset values');
  value
    .command('get')
    .description('print every variable, or one, as stored (the embedded defaults when nothing is stored)')
    .usage(`application ${APPLICATION} [variable NAME]`)
    .argument('<words...>', `application ${APPLICATION} [variable NAME]`)
    .action((words: string[]) => {
      const op = 'extc value get';
      const kw = keywords(op, words, ['application'], ['variable']);
      checkApplication(op, kw.application!);
      const names = kw.variable === undefined ? VARIABLES.map((v) => v.name) : [lookupVariable(op, kw.variable).name];
      const values = store().read();
      out(extcTable(APPLICATION, names.map((n) => [n, values[n] ?? lookupVariable(op, n).default])));
    });
  value
    .command('set')
    .description('validate and store one value; it applies nothing until "system update rule"')
    .usage(`application ${APPLICATION} variable NAME value VALUE [--force]`)
    .argument('<words...>', `application ${APPLICATION} variable NAME value VALUE`)
    .option('--force', 'store a value that needs confirming (an exempt list covering every source of a family)')
    .addHelpText('after', `\nLists are written [ 443 11115 ] (or [443 11115]); [ ] is the empty list.\nA prefix with host bits set (198.51.100.7/24) is refused: write the network or the single address.\n\nVariables:\n${VARIABLE_LIST}`)
    .action((words: string[], o: { force?: boolean }) => {
      const op = 'extc value set';
      const kw = keywords(op, words, ['application', 'variable', 'value']);
      checkApplication(op, kw.application!);
      const warnings = valueWarnings(kw.variable!, canonicalValue(op, kw.variable!, kw.value!));
      if (warnings.length && !o.force) {
        throw new InvalidValueError(op, `${warnings.join('; ')}. Nothing was stored; add --force to store it anyway`);
      }
      for (const w of warnings) process.stderr.write(`connrate: warning: ${w}\n`);
      const change = store().set(kw.application!, kw.variable!, kw.value!);
      out(change.from === change.to ? `${change.name} is already ${change.to}` : `${change.name}: ${change.from} -> ${change.to} (stored; run "system update rule" to apply)`);
    });
  value
    .command('reset')
    .description("store a variable's fresh-install default; it applies nothing until \"system update rule\"")
    .usage(`application ${APPLICATION} variable NAME`)
    .argument('<words...>', `application ${APPLICATION} variable NAME`)
    .addHelpText('after', `\nVariables:\n${VARIABLE_LIST}`)
    .action((words: string[]) => {
      const op = 'extc value reset';
      const kw = keywords(op, words, ['application', 'variable']);
      const change = store().reset(kw.application!, kw.variable!);
      out(change.from === change.to ? `${change.name} is already its default, ${change.to}` : `${change.name}: ${change.from} -> ${change.to} (the default; stored; run "system update rule" to apply)`);
    });

  datapath(
    program
      .command('system')
      .description('system commands')
      .command('update')
      .description('update')
      .command('rule')
      .description('apply the stored extc values to the running datapath, atomically, and print what changed'),
  ).action(async () => {
    const op = 'system update rule';
    const m = await datapathModules(op);
    const st = store();
    const r = m.updateRule(new m.PinDir(), st);
    if (r.changes.length === 0) out(`no change; configuration generation ${r.generation} in force`);
    for (const c of r.changes) out(`${c.name}: ${c.from || '(none)'} -> ${c.to}`);
    if (r.changes.length) out(`applied: configuration generation ${r.generation} in force (${r.ms.toFixed(1)} ms)`);
    const exempt = st.read().CONNECTION_RATE_LIMIT_EXEMPT;
    for (const w of exempt ? valueWarnings('CONNECTION_RATE_LIMIT_EXEMPT', exempt) : []) process.stderr.write(`connrate: warning: ${w}\n`);
  });

  datapath(
    program
      .command('run')
      .description('the daemon: attach, keep addresses and routes in sync, log limits, serve metrics')
      .addOption(new Option('--interface <if>', 'attach to this interface (repeatable); default: every interface with a default route').argParser((v: string, acc: string[] = []) => [...acc, v]))
      .addOption(new Option('--xdp-mode <mode>', 'XDP mode').choices(['auto', 'native', 'generic']).default('auto'))
      .option('--metrics <host:port|off>', 'Prometheus endpoint (GET /metrics)', DEFAULT_METRICS)
      .option('--metrics-top-ports <n>', 'per-port metric series besides the configured ports: the N busiest others; the rest add up in port="other"', positiveInt('--metrics-top-ports', 0), DEFAULT_TOP_PORTS)
      .option('--buckets <n>', 'capacity of the bucket map, set when the datapath is created (default 262144; see "Sizing" in the README)', positiveInt('--buckets', MIN_MAP_ENTRIES))
      .option('--udp-flows <n>', 'capacity of the UDP flow map, set when the datapath is created (default 262144)', positiveInt('--udp-flows', MIN_MAP_ENTRIES))
      .option('--fleet <id>', 'also be this appliance\'s fleet agent: apply what the fleet controller publishes (CONNRATE_ETCD…)')
      .option('--fleet-lease-ttl <seconds>', `presence lease TTL of the fleet agent (default ${DEFAULT_LEASE_TTL_SEC})`, positiveInt('--fleet-lease-ttl')),
    { load: true },
  ).action(async (o: { interface?: string[]; xdpMode: XdpModeChoice; metrics: string; metricsTopPorts: number; buckets?: number; udpFlows?: number; fleet?: string; fleetLeaseTtl?: number }) => {
    const listen = parseListen(o.metrics); // refuse a bad value before touching anything
    if (o.fleet !== undefined && !isName(o.fleet)) throw new InvalidValueError('run', `--fleet: appliance ID ${JSON.stringify(o.fleet)} is not allowed; expected 1 to 63 letters, digits, ".", "_" or "-"`);
    const fleet = o.fleet !== undefined ? await fleetModules() : undefined;
    const fleetSettings = fleet?.etcdSettings(); // a bad CONNRATE_ETCD* is refused before anything starts
    const m = await datapathModules('run');
    const sizes = { ...(o.buckets ? { buckets: o.buckets } : {}), ...(o.udpFlows ? { udpFlows: o.udpFlows } : {}) };
    const d = m.Daemon.start({ interfaces: o.interface ?? [], xdpMode: o.xdpMode, pins: new m.PinDir(), store: store(), sizes });
    if (listen) {
      try {
        await d.serveMetrics(listen, { topPorts: o.metricsTopPorts });
      } catch (err) {
        await d.stop();
        throw err;
      }
    }
    const agent = fleet && fleetSettings
      ? new (await import('./fleet/agent.js')).Agent({ id: o.fleet!, connect: () => fleet.connect(fleetSettings), keys: new Keys(), store: store(), pins: new m.PinDir(), info: out, ...(o.fleetLeaseTtl ? { leaseTtlSec: o.fleetLeaseTtl } : {}) })
      : undefined;
    const running = `running on ${d.attachments.map((a) => `${a.ifname} (${a.mode})`).join(', ') || 'no interface yet'}${agent ? `; fleet agent of appliance ${agent.id}` : ''}`;
    out(`connrate: ${running}`);
    m.notifyReady(running, out);
    const stop = (sig: string): void => {
      out(`connrate: ${sig}: stopping; the datapath stays attached and enforcing (connrate detach removes it)`);
      void (agent?.stop() ?? Promise.resolve())
        .then(() => d.stop())
        .then(() => process.exit(EXIT.OK));
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
    await d.stopped;
  });

  datapath(
    program
      .command('status')
      .description('attached interfaces, XDP mode, configuration in force vs stored')
      .option('--json', 'JSON output'),
  ).action(async (o: { json?: boolean }) => {
    const m = await datapathModules('status');
    const s = m.status(new m.PinDir(), store());
    if (o.json) return out(json(s));
    out(`datapath: ${s.pinDir}, daemon ${s.daemonRunning ? 'running' : 'not running'}`);
    out('');
    out(table([{ header: 'interface' }, { header: 'xdp mode' }, { header: 'link', align: 'right' }, { header: 'program', align: 'right' }],
      s.interfaces.map((i) => [i.ifname, i.mode ?? '?', String(i.linkId ?? ''), String(i.progId ?? '')])));
    out('');
    out(table([{ header: 'variable' }, { header: `in force (generation ${s.generation ?? '-'})` }, { header: `stored (${s.storedFrom})` }],
      VARIABLES.map((v) => [v.name, s.inForce?.[v.name] ?? '-', `${s.stored[v.name] ?? ''}${s.pending.includes(v.name) ? '  (pending: system update rule)' : ''}`])));
  });

  datapath(
    program
      .command('stats')
      .description('counters: packets by outcome, new connections by port')
      .option('--json', 'JSON output (every port)')
      .option('--watch <seconds>', 'print again every N seconds, with per-second rates', positiveInt('--watch'))
      .option('--all-ports', `a row for every port; without it, the configured ports, the ${DEFAULT_TOP_PORTS} busiest others, and port "other" for the rest`),
  ).action(async (o: { json?: boolean; watch?: number; allPorts?: boolean }) => {
    const m = await datapathModules('stats');
    const dp = m.Datapath.open('stats', new m.PinDir());
    // one PortSeries for the whole run: a port once named keeps its row, and "other" only grows
    const series = new m.PortSeries(DEFAULT_TOP_PORTS);
    const read = (): [Stats, PortRow[]] => {
      const s = m.readStats(dp);
      return [s, o.json || o.allPorts ? allPortRows(s) : m.portRows(series, s.ports, m.configuredPorts(dp))];
    };
    if (!o.watch) {
      try {
        const [s, ports] = read();
        return o.json ? out(json(s)) : printStats(s, ports);
      } finally {
        dp.close();
      }
    }
    let [prev, prevPorts] = read();
    for (;;) {
      await new Promise((r) => setTimeout(r, o.watch! * 1000));
      const [cur, curPorts] = read();
      const rates = statsRates(prev, prevPorts, cur, curPorts, o.watch);
      if (o.json) out(json({ ...cur, rates }));
      else {
        out(`--- ${new Date().toISOString()}`);
        printStats(cur, curPorts, rates);
      }
      [prev, prevPorts] = [cur, curPorts];
    }
  });

  datapath(
    program
      .command('top')
      .description('the sources most limited now')
      .option('--limit <n>', 'rows', positiveInt('--limit'), 20)
      .option('--json', 'JSON output'),
  ).action(async (o: { limit: number; json?: boolean }) => {
    const m = await datapathModules('top');
    const rows = m.top(new m.PinDir(), o.limit);
    if (o.json) return out(json(rows));
    if (rows.length === 0) return out('no source has been limited');
    out(table(
      [{ header: 'source' }, { header: 'port', align: 'right' }, { header: 'proto' }, { header: 'drops', align: 'right' }, { header: 'last drop', align: 'right' }, { header: 'tokens', align: 'right' }],
      rows.map((r) => [r.src, String(r.dport), r.proto, String(r.drops), `${r.lastDropAgoSec.toFixed(1)}s ago`, String(r.tokens)]),
    ));
  });

  datapath(
    program
      .command('detach')
      .description('remove the program from every interface and unpin it (stops limiting; stop the daemon first)'),
  ).action(async () => {
    const m = await datapathModules('detach');
    const names = m.detach(new m.PinDir());
    out(`connrate: detached${names.length ? ` from ${names.join(', ')}` : ''}; pins removed`);
  });

  program
    .command('completion')
    .description('print a shell completion script')
    .addArgument(new Argument('<shell>', 'the shell').choices(['bash']))
    .addHelpText('after', '\nInstall: connrate completion bash > /etc/bash_completion.d/connrate (or source it from ~/.bashrc)')
    .action(() => {
      out(bashCompletion(program));
    });

  fleetCommands(program);
  return program;
}

/**
 * A reader that stops early (`connrate stats | head -1`) closes the pipe: the
 * next write fails with EPIPE. That ends the command quietly with status 0, as
 * it would for any Unix tool; `stats --watch` stops there too.
 */
function exitQuietlyOnClosedStdout(): void {
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(EXIT.OK);
    process.stderr.write(`connrate: writing the output: ${err.message}\n`);
    process.exit(EXIT.FAILURE);
  });
}

export async function main(argv: string[]): Promise<number> {
  exitQuietlyOnClosedStdout();
  const program = buildProgram();
  try {
    await program.parseAsync(argv, { from: 'user' });
    return EXIT.OK;
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help, --version, "help": 0; a command group without its subcommand prints help and is a usage error
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version') return EXIT.OK;
      if (err.code === 'commander.help') return err.exitCode === 0 ? EXIT.OK : EXIT.USAGE;
      return EXIT.USAGE; // commander already printed the message
    }
    if (err instanceof ConnrateError) {
      process.stderr.write(`connrate: ${err.op}: ${err.message}\n`);
      return err.exitCode;
    }
    // a BPF or system error (ENOENT, EACCES …) is a message; a stack trace only on request
    const e = err as NodeJS.ErrnoException;
    process.stderr.write(`connrate: ${process.env.CONNRATE_DEBUG ? (e.stack ?? String(e)) : (e.message ?? String(e))}\n`);
    return EXIT.FAILURE;
  }
}
