/**
 * The block log (SPEC §5): one syslog-style line when a (source, port,
 * protocol) starts being limited, to stdout and to syslog when /dev/log exists.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { isIPv4 } from 'node:net';
import type { RateLimitEvent } from './abi.js';
import { parsePrefix } from './addr.js';

const ANON_V4_BITS = 24;
const ANON_V6_BITS = 48;

/** Zero the host part: the last IPv4 octet, everything past /48 for IPv6. */
export function anonymize(addr: string): string {
  const bits = isIPv4(addr) ? ANON_V4_BITS : ANON_V6_BITS;
  return parsePrefix(`${addr}/${bits}`).text.split('/')[0] ?? addr;
}

export function formatEvent(ev: RateLimitEvent, anonymized: boolean): string {
  const verdict = ev.wouldDrop ? 'WOULD-DROP' : 'DROP';
  const src = anonymized ? anonymize(ev.src) : ev.src;
  return `connrate: RATE-LIMIT ${verdict} src=${src} dport=${ev.dport} proto=${ev.proto} rate=${ev.rate}/min burst=${ev.burst}`;
}

const SYSLOG_SOCKET = '/dev/log';

/** Writes block-log lines to stdout and, through logger(1), to syslog. */
export class BlockLog {
  #logger: ChildProcess | undefined;

  constructor(private readonly out: (line: string) => void = (l) => process.stdout.write(`${l}\n`)) {
    if (existsSync(SYSLOG_SOCKET)) {
      // one long-lived logger reading lines: no process per event, no shell
      this.#logger = spawn('logger', ['--socket', SYSLOG_SOCKET, '--tag', 'connrate', '--priority', 'auth.warning'], { stdio: ['pipe', 'ignore', 'ignore'] });
      this.#logger.on('error', () => (this.#logger = undefined));
      this.#logger.stdin?.on('error', () => (this.#logger = undefined));
    }
  }

  write(line: string): void {
    this.out(line);
    this.#logger?.stdin?.write(`${line.replace(/^connrate: /, '')}\n`);
  }

  close(): void {
    this.#logger?.stdin?.end();
    this.#logger = undefined;
  }
}
