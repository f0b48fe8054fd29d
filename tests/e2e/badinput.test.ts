/**
 * Bad input everywhere: every refusal names the problem, exits with
 * its documented status, prints no stack trace, and leaves the store and the
 * running datapath exactly as they were. Plus the security basics.
 */
import { readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Appliance, BIN } from '../helpers/appliance.js';
import { type ExecResult, type Testbed, createTestbed } from '../helpers/testbed.js';

let tb: Testbed;
let app: Appliance;

beforeAll(async () => {
  tb = createTestbed();
  app = new Appliance(tb);
  app.configure({ CONNECTION_RATE_LIMIT_TCP: '20', CONNECTION_RATE_LIMIT_TCP_PORTS: '[ 443 ]' });
  await app.start();
});
afterAll(async () => {
  await app?.reset();
  await tb?.destroy();
});

/** What must not change: the store's bytes, the configuration in force, the attached program. */
function snapshot(): { store: string; generation: string; prog: string | undefined } {
  const s = JSON.parse(app.cli(['status', '--json']).stdout) as { generation: string; interfaces: { progId: number }[] };
  return { store: readFileSync(tb.store, 'utf8'), generation: s.generation, prog: String(s.interfaces[0]?.progId) };
}

function refused(r: ExecResult, status: number, message: RegExp): void {
  expect(r.status, `${r.stdout}${r.stderr}`).toBe(status);
  expect(r.stderr).toMatch(message);
  expect(r.stderr).not.toMatch(/\n\s+at \S+ \(/); // no stack trace
}

describe('refusals', () => {
  it.each([
    [['frobnicate'], 2, /unknown command 'frobnicate'/],
    [['top', '--limit', 'ten'], 2, /--limit must be an integer/],
    [['stats', '--watch', '0'], 2, /--watch must be an integer ≥ 1/],
    [['run', '--xdp-mode', 'turbo'], 2, /turbo.*Allowed choices are auto, native, generic/],
    [['run', '--metrics', '0.0.0.0:99999'], 2, /--metrics "0.0.0.0:99999"/],
    [['run', '--interface', 'nosuchif0'], 2, /no such interface: nosuchif0/],
    [['extc', 'value', 'get', 'application', 'other'], 2, /unknown application "other"/],
    [['extc', 'value', 'get', 'app', 'securepoint_firewall'], 2, /expected "application"/],
    [['extc', 'value', 'set', 'application', 'securepoint_firewall', 'variable', 'CONNECTION_RATE_LIMIT_UDP'], 2, /expected "value"/],
    [['extc', 'value', 'set', 'application', 'securepoint_firewall', 'variable', 'CONNECTION_RATE_LIMIT_UDP', 'value', 'twenty'], 2, /CONNECTION_RATE_LIMIT_UDP: "twenty" is not allowed/],
  ])('connrate %j → exit %i', (args, status, message) => {
    const before = snapshot();
    refused(app.cli(args as string[]), status as number, message as RegExp);
    expect(snapshot()).toEqual(before);
  });

  it('a corrupted store is named, not overwritten, and not applied', () => {
    const good = readFileSync(tb.store, 'utf8');
    const before = snapshot();
    try {
      writeFileSync(tb.store, good.slice(0, 40));
      for (const args of [['extc', 'value', 'get', 'application', 'securepoint_firewall'], ['system', 'update', 'rule'], ['extc', 'value', 'set', 'application', 'securepoint_firewall', 'variable', 'CONNECTION_RATE_LIMIT_UDP', 'value', '10']]) {
        refused(app.cli(args), 1, new RegExp(`${tb.store}: is not valid JSON`));
        expect(readFileSync(tb.store, 'utf8')).toBe(good.slice(0, 40));
      }
    } finally {
      writeFileSync(tb.store, good);
    }
    expect(snapshot()).toEqual(before);
  });

  it('an object the kernel cannot use is a message, and the running datapath stays', () => {
    const before = snapshot();
    const r = tb.exec(tb.net, [BIN, 'run', '--metrics', 'off'], { env: { CONNRATE_BPF_OBJECT: '/etc/hostname', CONNRATE_PIN_DIR: join(tb.pinDir, 'other') } });
    refused(r, 1, /cannot open the connrate BPF object \/etc\/hostname/);
    expect(readdirSync(tb.pinDir)).not.toContain('other'); // nothing left behind
    expect(snapshot()).toEqual(before);
  });

  it('an interface without native XDP is refused in native mode, and nothing is left pinned', () => {
    const dir = join(tb.pinDir, 'lo-test');
    const r = tb.exec(tb.app, [BIN, 'run', '--interface', 'lo', '--xdp-mode', 'native', '--metrics', 'off'], { env: { CONNRATE_PIN_DIR: dir } });
    refused(r, 1, /^connrate: run: lo: cannot attach XDP in native mode: .*this XDP mode is not supported by the driver \(EOPNOTSUPP\)$/m);
    expect(readdirSync(tb.pinDir)).not.toContain('lo-test');
  });

  it('a pin dir where bpffs cannot be mounted is a message', () => {
    refused(tb.exec(tb.net, [BIN, 'run', '--metrics', 'off'], { env: { CONNRATE_PIN_DIR: '/proc/connrate' } }), 1, /^connrate: pins\.mount: cannot mount bpffs at \/proc\/connrate: ENOENT: no such file or directory, mkdir '\/proc\/connrate'$/m);
  });

  it('without CAP_BPF and CAP_NET_ADMIN, every datapath command names what it lacks, and the extc commands need neither', () => {
    // uid 0 with an empty capability set: the check looks at capabilities, not at the user id
    const caps = (keep: string): string[] => ['setpriv', `--inh-caps=-all${keep}`, '--ambient-caps=-all', `--bounding-set=-all${keep}`, '--', BIN];
    const before = snapshot();
    for (const args of [['status'], ['stats'], ['top'], ['detach'], ['system', 'update', 'rule']]) {
      const r = tb.exec(tb.net, [...caps(''), ...args]);
      refused(r, 1, /lacks/);
      expect(r.stderr).toBe(`connrate: ${args.join(' ')}: needs CAP_BPF and CAP_NET_ADMIN (CAP_SYS_ADMIN serves for CAP_BPF); this process lacks CAP_BPF and CAP_NET_ADMIN: run it as root, or grant CAP_BPF and CAP_NET_ADMIN\n`);
    }
    const run = tb.exec(tb.net, [...caps(''), 'run', '--metrics', 'off']);
    refused(run, 1, /lacks/);
    expect(run.stderr).toBe('connrate: run: needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (CAP_SYS_ADMIN serves for CAP_BPF and CAP_PERFMON); this process lacks CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN: run it as root, or grant CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN\n');
    expect(tb.exec(tb.net, [...caps(',+bpf,+net_admin'), 'run', '--metrics', 'off']).stderr).toMatch(/^connrate: run: needs .*; this process lacks CAP_PERFMON: run it as root, or grant CAP_PERFMON$/m);
    expect(tb.exec(tb.net, [...caps(',+bpf'), 'status']).stderr).toMatch(/^connrate: status: needs .*; this process lacks CAP_NET_ADMIN: run it as root, or grant CAP_NET_ADMIN$/m);
    expect(tb.exec(tb.net, [...caps(',+net_admin'), 'status']).stderr).toMatch(/^connrate: status: needs .*; this process lacks CAP_BPF: run it as root, or grant CAP_BPF$/m);
    // CAP_BPF and CAP_NET_ADMIN alone (or CAP_SYS_ADMIN in place of CAP_BPF) are enough
    for (const keep of [',+bpf,+net_admin', ',+sys_admin,+net_admin']) {
      const r = tb.exec(tb.net, [...caps(keep), 'status', '--json']);
      expect(r.status, `${keep}: ${r.stderr}`).toBe(0);
      expect(JSON.parse(r.stdout)).toMatchObject({ daemonRunning: true, generation: before.generation });
    }
    const get = tb.exec(tb.net, [...caps(''), 'extc', 'value', 'get', 'application', 'securepoint_firewall', 'variable', 'CONNECTION_RATE_LIMIT_TCP']);
    expect(get.status, get.stderr).toBe(0);
    expect(get.stdout).toContain('securepoint_firewall|CONNECTION_RATE_LIMIT_TCP|20');
    expect(snapshot()).toEqual(before);
  });
});

describe('security', () => {
  it('keeps the store and the pin directory readable by root only', () => {
    expect(statSync(tb.store).mode & 0o777).toBe(0o600);
    for (const d of ['', 'maps', 'links']) expect(statSync(join(tb.pinDir, d)).mode & 0o077).toBe(0);
  });

  it('never runs a shell: child processes take argv arrays', () => {
    const src = fileURLToPath(new URL('../../src/', import.meta.url));
    const files = readdirSync(src, { recursive: true }).map(String).filter((f) => f.endsWith('.ts'));
    for (const f of files) {
      const text = readFileSync(join(src, f), 'utf8');
      expect(text, f).not.toMatch(/import\s*\{[^}]*\b(exec|execSync|spawnSync)\b[^}]*\}\s*from\s*'node:child_process'/);
      expect(text, f).not.toMatch(/shell:\s*true/);
    }
  });
});
