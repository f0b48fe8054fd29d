/**
 * Where block-log lines go. Under systemd stdout is the journal (JOURNAL_STREAM
 * names its device:inode): one line, to stdout only, with the journal's priority
 * prefix, and no copy to syslog (the journal forwards it).
 */
import { execFileSync } from 'node:child_process';
import { closeSync, fstatSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { BlockLog, stdoutIsJournal } from '../../src/control/blocklog.js';

const BLOCKLOG_JS = fileURLToPath(new URL('../../dist/control/blocklog.js', import.meta.url));
const LINE = 'connrate: RATE-LIMIT DROP src=198.18.0.9 dport=443 proto=tcp rate=20/min burst=5';

/** stdoutIsJournal() in a child whose stdout is `file`, with JOURNAL_STREAM as given. */
function journalSeenBy(file: string, journalStream: (dev: bigint, ino: bigint) => string | undefined): string {
  const fd = openSync(file, 'w');
  try {
    const st = fstatSync(fd, { bigint: true });
    const value = journalStream(st.dev, st.ino);
    const env = { ...process.env };
    if (value === undefined) delete env['JOURNAL_STREAM'];
    else env['JOURNAL_STREAM'] = value;
    execFileSync('node', ['--input-type=module', '-e', `import { stdoutIsJournal } from ${JSON.stringify(BLOCKLOG_JS)}; console.log(stdoutIsJournal());`], { env, stdio: ['ignore', fd, 'inherit'] });
  } finally {
    closeSync(fd);
  }
  return readFileSync(file, 'utf8').trim();
}

describe('block log sink', () => {
  it('knows stdout is the journal only when JOURNAL_STREAM names stdout itself', () => {
    const dir = mkdtempSync(join(tmpdir(), 'connrate-blocklog-'));
    try {
      const out = join(dir, 'stdout');
      expect(journalSeenBy(out, (dev, ino) => `${dev}:${ino}`)).toBe('true');
      expect(journalSeenBy(out, (dev, ino) => `${dev}:${ino + 1n}`)).toBe('false'); // inherited by a process whose stdout was redirected
      expect(journalSeenBy(out, () => undefined)).toBe('false');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    expect(stdoutIsJournal('')).toBe(false);
  });

  it('writes one line per event to the journal, at warning priority, without the "connrate: " tag', () => {
    const lines: string[] = [];
    const log = new BlockLog((l) => lines.push(l), true);
    log.write(LINE);
    log.close();
    expect(lines).toEqual(['<4>RATE-LIMIT DROP src=198.18.0.9 dport=443 proto=tcp rate=20/min burst=5']);
  });
});
