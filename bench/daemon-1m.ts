/**
 * `connrate run` as the CLI starts it (same Daemon, metrics on), with a bucket
 * map large enough for the 1M keys of the memory benchmark: the CLI has no
 * option for map sizes (default 256k buckets). Run inside a throwaway netns by
 * bench/control-plane.ts; prints "ready" once attached, stops on SIGTERM.
 * Env: CONNRATE_PIN_DIR, CONNRATE_STORE, CRB_BUCKETS, CRB_INTERFACE.
 */
import { Store } from '../src/config/store.js';
import { Daemon } from '../src/control/daemon.js';
import { PinDir } from '../src/control/pins.js';

const d = Daemon.start({
  interfaces: [process.env.CRB_INTERFACE ?? 'crbc0'],
  xdpMode: 'auto',
  pins: new PinDir(),
  store: new Store(),
  sizes: { buckets: Number(process.env.CRB_BUCKETS ?? 1310720) },
  info: () => {},
});
await d.serveMetrics({ host: '127.0.0.1', port: 9470 });
process.stdout.write(`ready ${d.attachments.map((a) => `${a.ifname}:${a.mode}`).join(',')}\n`);
const stop = (): void => void d.stop().then(() => process.exit(0));
process.once('SIGTERM', stop);
process.once('SIGINT', stop);
await d.stopped;
