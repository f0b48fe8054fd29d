/**
 * The main job on its embedded default: a throwaway testbed (two network
 * namespaces, 198.18.0.0/15 only), the real daemon on it, and a short scene —
 * one source hammering UDP 1194 and TCP 443, a legitimate client with an
 * established flow, an internal client — then the live drop table, then
 * cleanup. Run: npm run demo (as root).
 */
import { Appliance } from '../tests/helpers/appliance.js';
import { type ClientRequest, createTestbed } from '../tests/helpers/testbed.js';

const METRICS = '127.0.0.1:9470';
const say = (s: string): void => void process.stdout.write(`${s}\n`);
const step = (s: string): void => say(`\n== ${s}`);

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('the demo creates network namespaces and loads XDP: run it as root');
  const tb = createTestbed();
  const app = new Appliance(tb);
  let servers: { stop(): Promise<void> } | undefined;
  const stop = async (): Promise<void> => {
    await app.stop('SIGTERM').catch(() => undefined);
    app.cli(['detach']);
    await servers?.stop();
    await tb.destroy();
  };
  process.once('SIGINT', () => void stop().then(() => process.exit(130)));
  try {
    const attacker = tb.internetClients4[0]!;
    const client = tb.internetClients4[1]!;
    step(`testbed: appliance ${tb.appliance4} (netns ${tb.app}), Internet side (netns ${tb.net}), internal network ${tb.internalPrefix4}`);
    servers = await tb.startServers({ tcp: [443, 11115], udp: [1194] });

    step('configure: the documented example — TCP 20/min on [ 443 11115 ], UDP 20/min on every port');
    for (const [k, v] of [
      ['CONNECTION_RATE_LIMIT_TCP', '20'],
      ['CONNECTION_RATE_LIMIT_TCP_PORTS', '[ 443 11115 ]'],
      ['CONNECTION_RATE_LIMIT_UDP', '20'],
      ['CONNECTION_RATE_LIMIT_UDP_PORTS', '[ ]'],
    ]) {
      say(`$ connrate extc value set application securepoint_firewall variable ${k} value ${v}`);
      say(app.set(k!, v!).stdout.trimEnd());
    }
    say('$ connrate extc value get application securepoint_firewall');
    say(app.cli(['extc', 'value', 'get', 'application', 'securepoint_firewall']).stdout.trimEnd());

    step('start the daemon: connrate run (attaches to the interface with the default route)');
    await app.start(['--metrics', METRICS]);
    say(app.log.trimEnd());

    const run = async (who: string, req: ClientRequest): Promise<void> => {
      const r = await tb.client(req);
      say(`${who}: ${r.ok} succeeded, ${r.failed} refused (${Math.round(r.ms)} ms)`);
    };
    step(`a legitimate client ${client} opens a UDP flow to 1194`);
    const flow: ClientRequest = { kind: 'udp-flow', src: client, dst: tb.appliance4, port: 1194, count: 1, srcPort: 41194, timeoutMs: 300 };
    await run('legitimate client, first datagram', flow);

    step(`an attacker ${attacker} hammers UDP 1194 (40 new flows) and TCP 443 (20 connections)`);
    await run('attacker UDP 1194', { kind: 'udp-new', src: attacker, dst: tb.appliance4, port: 1194, count: 40, timeoutMs: 200 });
    await run('attacker TCP 443', { kind: 'tcp-connect', src: attacker, dst: tb.appliance4, port: 443, count: 20, concurrent: true, timeoutMs: 700 });
    await run('attacker TCP 11115 (another port: not blocked)', { kind: 'tcp-connect', src: attacker, dst: tb.appliance4, port: 11115, count: 3 });

    step('meanwhile, the established flow and the internal network are never limited');
    await run('legitimate client, 100 more datagrams on its flow', { ...flow, count: 100 });
    await run(`internal client ${tb.internalClient4}, 20 TCP connections to 443`, { kind: 'tcp-connect', src: tb.internalClient4, dst: tb.appliance4, port: 443, count: 20, concurrent: true });

    step('the live drop table: connrate top');
    say(app.cli(['top']).stdout.trimEnd());
    step('connrate stats');
    say(app.cli(['stats']).stdout.trimEnd());
    step(`Prometheus metrics: GET http://${METRICS}/metrics (loopback of the appliance), connrate series`);
    const scrape = tb.exec(tb.app, [process.execPath, '-e', `fetch('http://${METRICS}/metrics').then((r) => r.text()).then((t) => process.stdout.write(t))`]);
    say(scrape.stdout.split('\n').filter((l) => l.startsWith('connrate_') && !/ 0$/.test(l)).join('\n'));
    step('the block log (one line per limited source, port and protocol, at most once a minute)');
    say(app.log.split('\n').filter((l) => l.includes('RATE-LIMIT')).join('\n'));

    step('cleanup: stop the daemon, connrate detach, remove the testbed');
  } finally {
    await stop();
  }
  say('done');
}

main().catch((err: unknown) => {
  process.stderr.write(`demo: ${(err as Error).message}\n`);
  process.exit(1);
});
