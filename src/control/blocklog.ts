/**
 * The block log: one syslog-style line when a (source, port, protocol) starts
 * being limited. Under systemd, where stdout is the journal, to stdout only, at
 * warning priority; otherwise to stdout and to syslog when /dev/log exists.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, fstatSync } from 'node:fs';
import { isIPv4 } from 'node:net';
import type { RateLimitEvent } from './abi.js';
import { parsePrefix } from '../domain/addr.js';

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
/** sd-daemon(3) priority prefix: the journal stores the line at LOG_WARNING. */
const JOURNAL_WARNING = '<4>';

/**
 * Whether stdout is a stream to the systemd journal: systemd sets JOURNAL_STREAM
 * to "<device>:<inode>" of that stream, and it counts only while fd 1 is still it.
 */
export function stdoutIsJournal(journalStream: string | undefined = process.env.JOURNAL_STREAM): boolean {
  if (!journalStream) return false;
  try {
    const st = fstatSync(1, { bigint: true });
    return journalStream === `${st.dev}:${st.ino}`;
  } catch {
    return false;
  }
}

/**
 * Writes block-log lines. Journal mode: stdout only, with a priority prefix
 * (the unit sets the facility and identifier); the journal forwards to syslog
 * itself, so a copy through /dev/log would show every line twice. Otherwise:
 * stdout and, through logger(1), syslog.
 */
export class BlockLog {
  #logger: ChildProcess | undefined;

  constructor(
    private readonly out: (line: string) => void = (l) => process.stdout.write(`${l}\n`),
    private readonly journal: boolean = stdoutIsJournal(),
  ) {
    if (!journal && existsSync(SYSLOG_SOCKET)) {
      // one long-lived logger reading lines: no process per event, no shell
      this.#logger = spawn('logger', ['--socket', SYSLOG_SOCKET, '--tag', 'connrate', '--priority', 'auth.warning'], { stdio: ['pipe', 'ignore', 'ignore'] });
      this.#logger.on('error', () => (this.#logger = undefined));
      this.#logger.stdin?.on('error', () => (this.#logger = undefined));
    }
  }

  write(line: string): void {
    if (this.journal) return this.out(`${JOURNAL_WARNING}${line.replace(/^connrate: /, '')}`);
    this.out(line);
    this.#logger?.stdin?.write(`${line.replace(/^connrate: /, '')}\n`);
  }

  close(): void {
    this.#logger?.stdin?.end();
    this.#logger = undefined;
  }
}
