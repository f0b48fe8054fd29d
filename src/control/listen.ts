/** Where the metrics endpoint listens: `--metrics HOST:PORT|off`. */
import { isIP } from 'node:net';
import { InvalidValueError } from '../errors.js';

export const DEFAULT_METRICS = '127.0.0.1:9470';

/** Per-port metric series, and `connrate stats` rows, besides the configured ports: the N busiest others. */
export const DEFAULT_TOP_PORTS = 10;

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
