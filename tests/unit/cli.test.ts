/**
 * The command line without a datapath: usage, version, help, the extc
 * commands (also when the native addon cannot load), and bash completion.
 * Each case runs bin/connrate as a process and checks what it prints.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { afterAll, describe, expect, it } from 'vitest';
import { buildProgram } from '../../src/cli.js';

const BIN = fileURLToPath(new URL('../../bin/connrate', import.meta.url));
const PKG = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
const dir = mkdtempSync(join(tmpdir(), 'connrate-cli-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const APP = ['application', 'securepoint_firewall'];

function connrate(args: string[], env: Record<string, string> = {}): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(BIN, args, { encoding: 'utf8', env: { ...process.env, CONNRATE_STORE: join(dir, 'extc.json'), CONNRATE_PIN_DIR: join(dir, 'pins'), ...env } });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** The addon's file is looked up at this path instead: a missing addon. */
const NO_ADDON = { XDP_TS_LOADER_BINARY: join(dir, 'missing', 'xdp_ts_loader.node') };

describe('usage', () => {
  it.each([[[]], [['extc']], [['extc', 'value']], [['system']], [['system', 'update']]])('connrate %j without its subcommand prints help and exits 2', (args) => {
    const r = connrate(args);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(new RegExp(`^Usage: connrate ${args.join(' ')}`.trimEnd().replace(/ +$/, '')));
    expect(r.stdout).toBe('');
  });

  it('--help and help exit 0', () => {
    for (const args of [['--help'], ['help'], ['extc', 'value', 'set', '--help']]) {
      const r = connrate(args);
      expect(r.status, args.join(' ')).toBe(0);
      expect(r.stdout).toMatch(/^Usage: connrate/);
    }
  });

  it('--version prints the package version', () => {
    expect(connrate(['--version'])).toEqual({ status: 0, stdout: `${PKG.version}\n`, stderr: '' });
  });

  it('--help documents every variable, reset, and the privileges', () => {
    const set = connrate(['extc', 'value', 'set', '--help']).stdout;
    expect(set).toContain('CONNECTION_RATE_LIMIT_LOG_ANONYMIZE');
    expect(set).toContain('--force');
    expect(connrate(['--help']).stdout).toContain('connrate extc value reset application securepoint_firewall variable CONNECTION_RATE_LIMIT_TCP');
    expect(connrate(['--help']).stdout).toContain('need CAP_BPF and\nCAP_NET_ADMIN, run also CAP_PERFMON (CAP_SYS_ADMIN serves for CAP_BPF and CAP_PERFMON)');
  });
});

describe('the man page', () => {
  const man = readFileSync(new URL('../../packaging/connrate.1', import.meta.url), 'utf8');
  /** Every command path (leaves and groups) with its options' long flags. */
  function commands(cmd: Command, path: string[] = []): { path: string[]; flags: string[] }[] {
    const flags = cmd.options.map((o) => o.long).filter((f): f is string => f !== undefined && f !== '--help');
    return [{ path, flags }, ...cmd.commands.filter((c) => c.name() !== 'help').flatMap((c) => commands(c, [...path, c.name()]))];
  }

  it('names every command and option of the command tree', () => {
    const roff = (s: string): string => s.replaceAll('-', '\\-');
    const missing: string[] = [];
    for (const { path, flags } of commands(buildProgram())) {
      if (path.length && !man.includes(path.join(' '))) missing.push(path.join(' '));
      for (const f of flags) if (!man.includes(roff(f))) missing.push(`${path.join(' ')} ${f}`);
    }
    expect(missing).toEqual([]);
  });

  it('documents the environment, the privileges and every exit status', () => {
    for (const word of ['CONNRATE_STORE', 'CONNRATE_PIN_DIR', 'CONNRATE_DEBUG', 'CAP_BPF', 'CAP_NET_ADMIN', 'CAP_PERFMON', 'CAP_SYS_ADMIN']) expect(man).toContain(word);
    const exit = man.slice(man.indexOf('.SH EXIT STATUS'), man.indexOf('.SH', man.indexOf('.SH EXIT STATUS') + 1));
    expect([...exit.matchAll(/^\.B (\d)$/gm)].map((m) => m[1])).toEqual(['0', '1', '2', '3']);
  });

  it('renders without warnings (groff -ww)', () => {
    const r = spawnSync('groff', ['-man', '-Tutf8', '-ww', '-z'], { input: man, encoding: 'utf8' });
    expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 0, stderr: '' });
  });
});

describe('extc commands without the native addon', () => {
  it('get, set, reset and get one variable work; a datapath command says what is missing', () => {
    let r = connrate(['extc', 'value', 'set', ...APP, 'variable', 'CONNECTION_RATE_LIMIT_UDP', 'value', '10'], NO_ADDON);
    expect(r).toEqual({ status: 0, stdout: 'CONNECTION_RATE_LIMIT_UDP: 20 -> 10 (stored; run "system update rule" to apply)\n', stderr: '' });
    r = connrate(['extc', 'value', 'get', ...APP, 'variable', 'CONNECTION_RATE_LIMIT_UDP'], NO_ADDON);
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(
      'application         |variable                 |value\n' +
        '--------------------+-------------------------+-----\n' +
        'securepoint_firewall|CONNECTION_RATE_LIMIT_UDP|10\n',
    );
    r = connrate(['extc', 'value', 'reset', ...APP, 'variable', 'CONNECTION_RATE_LIMIT_UDP'], NO_ADDON);
    expect(r.stdout).toBe('CONNECTION_RATE_LIMIT_UDP: 10 -> 20 (the default; stored; run "system update rule" to apply)\n');
    r = connrate(['extc', 'value', 'get', ...APP], NO_ADDON);
    expect(r.status).toBe(0);
    expect(r.stdout.split('\n')).toHaveLength(2 + 10 + 1);
    for (const args of [['--help'], ['--version'], ['completion', 'bash']]) expect(connrate(args, NO_ADDON).status, args.join(' ')).toBe(0);

    r = connrate(['status'], NO_ADDON);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^connrate: status: the native addon @xdp-ts\/loader cannot be loaded \(Cannot find module '.*xdp_ts_loader\.node'\); the datapath commands need it, the extc commands do not/);
    expect(r.stderr).not.toMatch(/\n\s+at /); // no stack trace
  });
});

/** Run connrate with its stdout a pipe whose reader is gone before it writes (`connrate … | head -0`). */
function connrateIntoClosedPipe(args: string[]): Promise<{ status: number | null; signal: NodeJS.Signals | null; stderr: string }> {
  const child = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, CONNRATE_STORE: join(dir, 'extc.json'), CONNRATE_PIN_DIR: join(dir, 'pins') } });
  child.stdout.destroy(); // closes the read end long before node has started
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (status, signal) => resolve({ status, signal, stderr }));
  });
}

describe('a reader that closes the pipe early', () => {
  it.each([[['extc', 'value', 'get', ...APP]], [['extc', 'value', 'get', ...APP, 'variable', 'CONNECTION_RATE_LIMIT_UDP']], [['completion', 'bash']], [['--help']]])(
    'connrate %j ends quietly with status 0 (EPIPE is no error)',
    async (args) => {
      expect(await connrateIntoClosedPipe(args)).toEqual({ status: 0, signal: null, stderr: '' });
    },
  );
});

describe('extc refusals name the variable', () => {
  it.each([
    [['variable', 'CONNECTION_RATE_LIMIT_UDP', 'value', ''], 'connrate: extc value set: CONNECTION_RATE_LIMIT_UDP: "" is not allowed; expected an integer from 0 to 1000000\n'],
    [['variable', 'CONNECTION_RATE_LIMIT_UDP', 'value'], 'connrate: extc value set: CONNECTION_RATE_LIMIT_UDP: "" is not allowed; expected an integer from 0 to 1000000\n'],
    [['variable', 'CONNECTION_RATE_LIMIT_UDP'], 'connrate: extc value set: expected "value" after "variable CONNECTION_RATE_LIMIT_UDP" but got nothing; usage: connrate extc value set application securepoint_firewall variable NAME value VALUE\n'],
    [['variable', 'CONNECTION_RATE_LIMIT_EXEMPT', 'value', '[', '198.51.100.7/24', ']'], 'connrate: extc value set: CONNECTION_RATE_LIMIT_EXEMPT: "[ 198.51.100.7/24 ]" is not allowed (198.51.100.7/24 has host bits set: write the network 198.51.100.0/24, or the single address 198.51.100.7/32); expected a list of addresses or CIDR prefixes like [ 198.51.100.0/24 2001:db8::/32 ], or [ ]\n'],
    [['variable', 'CONNECTION_RATE_LIMIT_EXEMPT', 'value', '[', '0.0.0.0/0', '::/0', ']'], 'connrate: extc value set: CONNECTION_RATE_LIMIT_EXEMPT [ 0.0.0.0/0 ::/0 ] exempts every source: no source would ever be limited. Nothing was stored; add --force to store it anyway\n'],
  ])('extc value set … %j', (words, stderr) => {
    const before = connrate(['extc', 'value', 'get', ...APP]).stdout;
    const r = connrate(['extc', 'value', 'set', ...APP, ...words]);
    expect(r).toEqual({ status: 2, stdout: '', stderr });
    expect(connrate(['extc', 'value', 'get', ...APP]).stdout).toBe(before);
  });

  it('stores an exempt-everything list with --force, with a warning', () => {
    const r = connrate(['extc', 'value', 'set', ...APP, 'variable', 'CONNECTION_RATE_LIMIT_EXEMPT', 'value', '[', '0.0.0.0/0', ']', '--force']);
    expect(r.status).toBe(0);
    expect(r.stderr).toBe('connrate: warning: CONNECTION_RATE_LIMIT_EXEMPT [ 0.0.0.0/0 ] exempts every IPv4 source: no IPv4 source would ever be limited\n');
    expect(connrate(['extc', 'value', 'reset', ...APP, 'variable', 'CONNECTION_RATE_LIMIT_EXEMPT']).stdout).toContain('-> [ ] (the default;');
  });
});

describe('bash completion', () => {
  let generated: string | undefined;
  const script = (): string => {
    if (generated === undefined) {
      const r = connrate(['completion', 'bash']);
      expect(r.status).toBe(0);
      generated = r.stdout;
    }
    return generated;
  };
  /** What the generated function offers for the words of a command line (the last one being completed). */
  function complete(...words: string[]): string[] {
    const file = join(dir, 'completion.bash');
    writeFileSync(file, script());
    const test = `source ${JSON.stringify(file)}; COMP_WORDS=(${words.map((w) => JSON.stringify(w)).join(' ')}); COMP_CWORD=${words.length - 1}; _connrate; printf '%s\\n' "\${COMPREPLY[@]}"`;
    const r = spawnSync('bash', ['-c', test], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    return r.stdout.split('\n').filter(Boolean);
  }

  it('is valid bash and registers itself', () => {
    const s = script();
    expect(spawnSync('bash', ['-n'], { input: s }).status).toBe(0);
    expect(s.trimEnd().split('\n').pop()).toBe('complete -F _connrate connrate');
  });

  it('completes commands, options, choices, keywords and variables from the command tree', () => {
    expect(complete('connrate', '')).toEqual(['extc', 'system', 'run', 'status', 'stats', 'top', 'detach', 'completion', 'fleet']);
    expect(complete('connrate', '-')).toEqual(['--version', '-V', '--help']);
    expect(complete('connrate', 'extc', 'value', '')).toEqual(['get', 'set', 'reset']);
    expect(complete('connrate', 'system', 'update', '')).toEqual(['rule']);
    expect(complete('connrate', 'run', '--')).toEqual(['--interface', '--xdp-mode', '--metrics', '--metrics-top-ports', '--buckets', '--udp-flows', '--fleet', '--fleet-lease-ttl', '--help']);
    expect(complete('connrate', 'run', '--xdp-mode', '')).toEqual(['auto', 'native', 'generic']);
    expect(complete('connrate', 'extc', 'value', 'set', 'application', '')).toEqual(['securepoint_firewall']);
    expect(complete('connrate', 'extc', 'value', 'set', 'application', 'securepoint_firewall', '')).toEqual(['variable', 'value']);
    expect(complete('connrate', 'extc', 'value', 'set', 'application', 'securepoint_firewall', '--')).toEqual(['--force', '--help']);
    expect(complete('connrate', 'extc', 'value', 'get', 'application', 'securepoint_firewall', 'variable', 'CONNECTION_RATE_LIMIT_UDP_')).toEqual(['CONNECTION_RATE_LIMIT_UDP_PORTS', 'CONNECTION_RATE_LIMIT_UDP_TIMEOUT']);
    expect(complete('connrate', 'extc', 'value', 'set', 'application', 'securepoint_firewall', 'variable', 'CONNECTION_RATE_LIMIT_MODE', 'value', '')).toEqual(['block', 'log']);
    expect(complete('connrate', 'completion', '')).toEqual(['bash']);
  });
});
