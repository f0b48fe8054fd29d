/**
 * The Debian package as an admin gets it: `npm run package:deb`, `dpkg -i` with
 * dependency checks on, `connrate --version` from /usr/bin, the installed unit
 * scored by `systemd-analyze security`, the installed daemon run with exactly the
 * unit's capabilities (it must load, attach, report readiness on $NOTIFY_SOCKET
 * and take `system update rule`), the installed unit booted by systemd in a
 * container (systemd-nspawn over this machine's /usr: the sandbox, readiness,
 * reload and the journal for real), then `dpkg --purge`: the machine is left as it was.
 *
 * nodejs (>= 20) is a real dependency. Where dpkg knows a nodejs >= 20 (Debian
 * trixie, NodeSource's packages) the package installs against it. Where Node.js
 * came from elsewhere, the test shows dpkg refusing with exactly that dependency
 * unmet, then installs a local stub package that declares the running /usr/bin/node
 * (Provides: nodejs (= its version)), and purges both afterwards.
 */
import { type ChildProcess, type SpawnSyncReturns, execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileLock } from '../../src/lock.js';
import { npmEnv } from './helpers.js';

const REPO = fileURLToPath(new URL('../../', import.meta.url));
const VERSION = (JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { version: string }).version;
const UNIT = '/lib/systemd/system/connrate.service';
const MAX_EXPOSURE = 3.0;
const MIN_NODE_MAJOR = 20;
const STUB = 'connrate-test-nodejs-stub';
/** One install of the package at a time on this machine (other checkouts run this test too). */
const LOCK = '/tmp/connrate-deb-test.lock';
const LOCK_WAIT_MS = 900_000;
const SETUP_TIMEOUT_MS = 1_200_000;
/** The unit's CapabilityBoundingSet, as setpriv(1) names them. */
const UNIT_CAPS = ['bpf', 'perfmon', 'net_admin'];
const STATE_DIR = '/var/lib/connrate';
/**
 * For dpkg --purge: the package's prerm detaches the datapath at CONNRATE_PIN_DIR
 * (default /sys/fs/bpf/connrate); here it must not touch anything but the test's.
 */
const purgeEnv = (): NodeJS.ProcessEnv => ({ ...process.env, CONNRATE_PIN_DIR: PIN_DIR, CONNRATE_STORE: join(work, 'store', 'extc.json') });
/** The daemon test's network namespace and pins; the datapath stays for the purge test to see removed. */
const NS = `crpkg${process.pid}`;
const PIN_DIR = `/sys/fs/bpf/connrate-pkgtest-${process.pid}`;

let lock: FileLock | undefined;
let work: string;
let deb: string;
let installLog = '';
let stubInstalled = false;

const sh = (cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string } = {}): SpawnSyncReturns<string> =>
  spawnSync(cmd, args, { encoding: 'utf8', ...opts });
const ok = (r: SpawnSyncReturns<string>, what: string): string => {
  expect(r.status, `${what}:\n${r.stdout}${r.stderr}`).toBe(0);
  return r.stdout;
};
const dpkgStatus = (pkg: string): { status: string; version: string } => {
  const r = sh('dpkg-query', ['-W', '-f=${Status}\t${Version}', pkg]);
  const [status = '', version = ''] = r.status === 0 ? r.stdout.split('\t') : [];
  return { status, version };
};
const installed = (pkg: string): boolean => dpkgStatus(pkg).status.endsWith(' installed');

/** A package that declares the Node.js at /usr/bin/node to dpkg, for a machine whose Node.js is not a Debian package. */
function buildStub(nodeVersion: string): string {
  const root = join(work, 'stub');
  mkdirSync(join(root, 'DEBIAN'), { recursive: true });
  writeFileSync(join(root, 'DEBIAN', 'control'), [
    `Package: ${STUB}`, `Version: ${nodeVersion}`, 'Architecture: all', 'Maintainer: connrate tests <connrate@localhost>',
    `Provides: nodejs (= ${nodeVersion})`,
    `Description: declares the Node.js ${nodeVersion} at /usr/bin/node (not from a Debian package)`,
    ' Installed and purged by connrate\'s package test only.', '',
  ].join('\n'));
  const out = join(work, `${STUB}.deb`);
  ok(sh('dpkg-deb', ['--root-owner-group', '--build', root, out]), 'dpkg-deb (stub)');
  return out;
}

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'connrate-deb-test-'));
  lock = FileLock.acquire(LOCK, { waitMs: LOCK_WAIT_MS, holder: 'another run of the package test' });
  for (const pkg of ['connrate', STUB]) {
    if (dpkgStatus(pkg).status && !dpkgStatus(pkg).status.includes('not-installed')) {
      throw new Error(`${pkg} is already installed on this machine (${dpkgStatus(pkg).status}); the test installs and purges its own and will not replace it`);
    }
  }
  if (existsSync(STATE_DIR)) {
    throw new Error(`${STATE_DIR} exists on this machine; purging the test's package would remove it`);
  }
  const built = sh('npm', ['run', 'package:deb'], { cwd: REPO, env: npmEnv() });
  ok(built, 'npm run package:deb');
  deb = built.stdout.trim().split('\n').pop()!;
  expect(deb).toBe(join(REPO, 'build', 'deb', `connrate_${VERSION}_${execFileSync('dpkg', ['--print-architecture'], { encoding: 'utf8' }).trim()}.deb`));

  const nodejs = dpkgStatus('nodejs');
  const nodejsOk = nodejs.status.endsWith(' installed') && sh('dpkg', ['--compare-versions', nodejs.version, 'ge', String(MIN_NODE_MAJOR)]).status === 0;
  if (nodejsOk) {
    installLog += `dpkg knows nodejs ${nodejs.version}\n`;
  } else {
    if (nodejs.status.endsWith(' installed')) {
      throw new Error(`dpkg has nodejs ${nodejs.version}; connrate needs Node.js ${MIN_NODE_MAJOR} or newer (Debian 12's nodejs is 18)`);
    }
    const refused = sh('dpkg', ['-i', deb]);
    installLog += `$ dpkg -i ${deb}\n${refused.stdout}${refused.stderr}`;
    expect(refused.status).not.toBe(0);
    expect(refused.stderr).toMatch(new RegExp(`depends on nodejs \\(>= ${MIN_NODE_MAJOR}\\)`));
    ok(sh('dpkg', ['--purge', 'connrate'], { env: purgeEnv() }), 'dpkg --purge after the refused install');
    const nodeVersion = process.versions.node;
    expect(Number(nodeVersion.split('.')[0])).toBeGreaterThanOrEqual(MIN_NODE_MAJOR);
    const stub = sh('dpkg', ['-i', buildStub(nodeVersion)]);
    ok(stub, 'dpkg -i stub');
    stubInstalled = true;
    installLog += `$ dpkg -i ${STUB}.deb   # Provides: nodejs (= ${nodeVersion})\n${stub.stdout}`;
  }
  const r = sh('dpkg', ['-i', deb]);
  installLog += `$ dpkg -i ${deb}\n${r.stdout}${r.stderr}`;
  ok(r, 'dpkg -i');
}, SETUP_TIMEOUT_MS);

afterAll(() => {
  try {
    if (installed('connrate') || dpkgStatus('connrate').status.includes('unpacked')) {
      const r = sh('dpkg', ['--purge', 'connrate'], { env: purgeEnv() });
      console.log(`$ dpkg --purge connrate\n${r.stdout}${r.stderr}`);
    }
    if (stubInstalled) sh('dpkg', ['--purge', STUB]);
  } finally {
    if (existsSync(PIN_DIR)) {
      sh('nsenter', [`--net=/run/netns/${NS}`, 'node', join(REPO, 'bin', 'connrate'), 'detach'], { env: purgeEnv() });
      rmSync(PIN_DIR, { recursive: true, force: true });
    }
    sh('ip', ['netns', 'del', NS]);
    lock?.release();
    if (work) rmSync(work, { recursive: true, force: true });
  }
});

describe('connrate .deb', () => {
  it('installs with its dependencies declared: nodejs >= 20, libbpf1, iproute2', () => {
    console.log(installLog);
    const depends = execFileSync('dpkg-deb', ['-f', deb, 'Depends'], { encoding: 'utf8' }).trim();
    console.log(`Depends: ${depends}`);
    expect(depends).toMatch(/(^|, )nodejs \(>= 20\)(,|$)/);
    expect(depends).toMatch(/(^|, )libbpf1( \(>= [^)]+\))?(,|$)/);
    expect(depends).toMatch(/(^|, )iproute2(,|$)/);
    expect(dpkgStatus('connrate')).toEqual({ status: 'install ok installed', version: VERSION });
  });

  it('ships the launcher, the unit, the man page, the completion and the example store', () => {
    const files = ok(sh('dpkg', ['-L', 'connrate']), 'dpkg -L').split('\n');
    for (const f of ['/usr/bin/connrate', UNIT, '/usr/share/man/man1/connrate.1.gz', '/usr/share/bash-completion/completions/connrate',
      '/usr/share/doc/connrate/copyright', '/usr/share/doc/connrate/examples/extc.json', '/usr/lib/connrate/build/bpf/connrate.bpf.o',
      '/usr/lib/connrate/node_modules/@xdp-ts/loader/build/Release/xdp_ts_loader.node']) {
      expect(files).toContain(f);
    }
    // build-only dependencies stay out
    expect(files.filter((f) => /node_modules\/(cmake-js|node-addon-api|typescript|vitest)(\/|$)/.test(f))).toEqual([]);
    const man = execFileSync('sh', ['-c', 'gzip -dc /usr/share/man/man1/connrate.1.gz'], { encoding: 'utf8' });
    expect(man).toMatch(new RegExp(`^\\.TH CONNRATE 1 "[^"]*" "connrate ${VERSION.replaceAll('.', '\\.')}"`, 'm'));
    const completion = sh('bash', ['-c', 'source /usr/share/bash-completion/completions/connrate && COMP_WORDS=(connrate system update "") COMP_CWORD=3 && _connrate && echo "${COMPREPLY[*]}"']);
    expect(ok(completion, 'completion').trim()).toBe('rule');
    ok(sh('dpkg', ['--verify', 'connrate']), 'dpkg --verify');
  });

  it('runs: connrate --version from /usr/bin, and the example store is what a fresh install has', () => {
    const v = sh('/usr/bin/connrate', ['--version'], { cwd: '/' });
    console.log(`$ connrate --version\n${v.stdout}${v.stderr}`);
    expect(ok(v, 'connrate --version').trim()).toBe(VERSION);
    const get = sh('/usr/bin/connrate', ['extc', 'value', 'get', 'application', 'securepoint_firewall'], {
      cwd: '/', env: { ...process.env, CONNRATE_STORE: '/usr/share/doc/connrate/examples/extc.json' },
    });
    const fresh = sh('/usr/bin/connrate', ['extc', 'value', 'get', 'application', 'securepoint_firewall'], {
      cwd: '/', env: { ...process.env, CONNRATE_STORE: join(work, 'no-such-store.json') },
    });
    expect(ok(get, 'extc value get (example)')).toBe(ok(fresh, 'extc value get (defaults)'));
  });

  it(`the installed unit scores <= ${MAX_EXPOSURE} in systemd-analyze security, without CAP_SYS_ADMIN`, () => {
    const r = sh('systemd-analyze', ['security', '--offline=true', `--threshold=${MAX_EXPOSURE * 10}`, '--no-pager', UNIT]);
    const out = `${r.stdout}${r.stderr}`;
    const score = out.match(/Overall exposure level for connrate\.service: (\d+\.\d+)/);
    console.log(`$ systemd-analyze security --offline=true ${UNIT}\n${out.split('\n').filter((l) => /✗|Overall/.test(l)).join('\n')}`);
    expect(score, out).not.toBeNull();
    expect(Number(score![1])).toBeLessThanOrEqual(MAX_EXPOSURE);
    expect(r.status, out).toBe(0);
    expect(out).toMatch(/✓ CapabilityBoundingSet=~CAP_SYS_ADMIN/);
    const unit = readFileSync(UNIT, 'utf8');
    expect(unit).toMatch(/^CapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_NET_ADMIN$/m);
    expect(unit).toMatch(/^ExecReload=\/usr\/bin\/connrate system update rule$/m);
    expect(unit).toMatch(/^Type=notify$/m);
  });

  it('the installed daemon runs with only the unit\'s capabilities: loads, attaches, reports READY=1, reloads', async () => {
    const ns = NS;
    const socket = join(work, 'notify.sock');
    const env: NodeJS.ProcessEnv = { ...process.env, CONNRATE_STORE: join(work, 'store', 'extc.json'), CONNRATE_PIN_DIR: PIN_DIR, NOTIFY_SOCKET: socket };
    delete env['JOURNAL_STREAM'];
    // exactly the unit's bounding set, in a netns with a veth carrying a default route
    const asUnit = (args: string[]): string[] => ['--net=/run/netns/' + ns, 'setpriv', `--bounding-set=-all,${UNIT_CAPS.map((c) => `+${c}`).join(',')}`, '/usr/bin/connrate', ...args];
    let receiver: ChildProcess | undefined;
    let daemon: ChildProcess | undefined;
    try {
      for (const cmd of [['netns', 'add', ns], ['-n', ns, 'link', 'add', 'v0', 'type', 'veth', 'peer', 'name', 'v1'],
        ['-n', ns, 'addr', 'add', '198.18.250.1/24', 'dev', 'v0'], ['-n', ns, 'link', 'set', 'v0', 'up'], ['-n', ns, 'link', 'set', 'v1', 'up'],
        ['-n', ns, 'route', 'add', 'default', 'via', '198.18.250.2']]) {
        ok(sh('ip', cmd), `ip ${cmd.join(' ')}`);
      }
      // the manager's side of sd_notify: a datagram socket; closing the passed fds answers systemd-notify's barrier
      receiver = spawn('python3', ['-c', NOTIFY_RECEIVER, socket], { stdio: ['ignore', 'pipe', 'inherit'] });
      let notified = '';
      receiver.stdout!.on('data', (b: Buffer) => (notified += b.toString()));
      await until(() => existsSync(socket), 'the notify socket');
      let log = '';
      daemon = spawn('nsenter', asUnit(['run', '--metrics', 'off']), { env, cwd: '/', stdio: ['ignore', 'pipe', 'pipe'] });
      daemon.stdout!.on('data', (b: Buffer) => (log += b.toString()));
      daemon.stderr!.on('data', (b: Buffer) => (log += b.toString()));
      await until(() => /READY=1/.test(notified) || daemon!.exitCode !== null, 'READY=1');
      console.log(`${log}notify socket got: ${notified.trim()}`);
      expect(daemon.exitCode, log).toBeNull();
      expect(notified).toMatch(/READY=1/);
      expect(notified).toMatch(/STATUS=running on v0 \((native|generic)\)/);
      const reload = sh('nsenter', asUnit(['system', 'update', 'rule']), { env, cwd: '/' });
      console.log(`$ connrate system update rule   # ExecReload\n${reload.stdout}${reload.stderr}`);
      ok(reload, 'system update rule');
    } finally {
      daemon?.kill('SIGTERM');
      if (daemon && daemon.exitCode === null) await new Promise((r) => daemon!.once('exit', r));
      receiver?.kill();
    }
    // stopped, the datapath stays attached and enforcing
    expect(sh('ip', ['-n', ns, '-j', 'link', 'show', 'v0']).stdout).toMatch(/"xdp"/);
  });

  it('under systemd (a container booting the installed unit): ready, reloads, one journal line per limited source at warning/auth', async () => {
    // systemd-nspawn --volatile=yes: a tmpfs root with this machine's /usr read-only, so
    // the installed package and unit, and nothing written back; bpffs bound in.
    const machine = `crsd${process.pid}`.slice(0, 11);
    const hostVeth = `ve-${machine}`;
    const srcNs = `${machine}src`;
    const pinDir = `/sys/fs/bpf/connrate-nspawn-${process.pid}`;
    const dropIn = join(work, 'connrate.service.d');
    mkdirSync(dropIn);
    // only the pin location differs from the installed unit: this machine's bpffs is shared
    writeFileSync(join(dropIn, 'test.conf'), `[Service]\nEnvironment=CONNRATE_PIN_DIR=${pinDir}\n`);
    const nspawn = spawn('systemd-nspawn', ['--quiet', '--directory=/', '--volatile=yes', '--register=no', '--keep-unit', `--machine=${machine}`,
      '--network-veth', `--capability=${UNIT_CAPS.map((c) => `CAP_${c.toUpperCase()}`).join(',')}`, '--system-call-filter=bpf',
      '--bind=/sys/fs/bpf', `--bind-ro=${dropIn}:/etc/systemd/system/connrate.service.d`, '--console=pipe', '-b', 'systemd.unit=connrate.service'],
    { stdio: ['ignore', 'pipe', 'pipe'] });
    let console_ = '';
    nspawn.stdout!.on('data', (b: Buffer) => (console_ += b.toString()));
    nspawn.stderr!.on('data', (b: Buffer) => (console_ += b.toString()));
    let init = 0;
    const inside = (args: string[]): SpawnSyncReturns<string> => sh('nsenter', ['-t', String(init), '-m', '-u', '-i', '-n', '-p', ...args]);
    try {
      await until(() => {
        const children = existsSync(`/proc/${nspawn.pid}/task/${nspawn.pid}/children`) ? readFileSync(`/proc/${nspawn.pid}/task/${nspawn.pid}/children`, 'utf8').trim() : '';
        init = Number(children.split(' ')[0] || 0);
        return init > 0 && sh('nsenter', ['-t', String(init), '-n', 'ip', 'link', 'show', 'host0']).status === 0 || nspawn.exitCode !== null;
      }, 'the container', 60_000);
      expect(nspawn.exitCode, console_).toBeNull();
      // the appliance side: host0 with a default route; the sender in a netns of its own
      ok(sh('nsenter', ['-t', String(init), '-n', 'ip', 'addr', 'add', '198.18.251.1/24', 'dev', 'host0']), 'host0 address');
      ok(sh('nsenter', ['-t', String(init), '-n', 'ip', 'link', 'set', 'host0', 'up']), 'host0 up');
      ok(sh('nsenter', ['-t', String(init), '-n', 'ip', 'route', 'add', 'default', 'via', '198.18.251.2']), 'default route');
      for (const cmd of [['netns', 'add', srcNs], ['link', 'set', hostVeth, 'netns', srcNs], ['-n', srcNs, 'addr', 'add', '198.18.251.2/24', 'dev', hostVeth],
        ['-n', srcNs, 'addr', 'add', '198.18.252.2/24', 'dev', hostVeth], ['-n', srcNs, 'link', 'set', hostVeth, 'up']]) {
        ok(sh('ip', cmd), `ip ${cmd.join(' ')}`);
      }
      const show = (prop: string): string => inside(['systemctl', 'show', '-p', prop, '--value', 'connrate.service']).stdout.trim();
      await until(() => /running on host0/.test(show('StatusText')) || show('ActiveState') === 'failed', 'connrate.service to report running on host0', 120_000);
      const status = inside(['systemctl', 'status', '--no-pager', '--lines=0', 'connrate.service']).stdout;
      console.log(`$ systemctl status connrate   # in the container\n${status}`);
      expect(show('ActiveState'), inside(['journalctl', '-u', 'connrate', '--no-pager']).stdout).toBe('active');
      expect(show('StatusText')).toMatch(/^running on host0 \((native|generic)\)$/);

      const reload = inside(['systemctl', 'reload', 'connrate.service']);
      ok(reload, 'systemctl reload connrate');
      const score = inside(['systemd-analyze', 'security', '--no-pager', 'connrate.service']).stdout.match(/Overall exposure level for connrate\.service: (\d+\.\d+)/);
      expect(Number(score?.[1])).toBeLessThanOrEqual(MAX_EXPOSURE);

      // ten new UDP flows from a source behind the default route: the burst passes, then one log line
      ok(sh('ip', ['netns', 'exec', srcNs, 'node', '-e', UDP_FLOWS, '198.18.252.2', '198.18.251.1', '1194', '10']), 'udp flows');
      const journal = (): { MESSAGE: string; PRIORITY: string; SYSLOG_FACILITY: string; SYSLOG_IDENTIFIER: string }[] =>
        inside(['journalctl', '-u', 'connrate.service', '-o', 'json', '--no-pager']).stdout.trim().split('\n').filter(Boolean)
          .map((l) => JSON.parse(l) as { MESSAGE: string; PRIORITY: string; SYSLOG_FACILITY: string; SYSLOG_IDENTIFIER: string })
          .filter((e) => /RATE-LIMIT/.test(e.MESSAGE));
      await until(() => journal().length > 0, 'the block-log line in the journal');
      await new Promise((r) => setTimeout(r, 1000)); // a duplicate through syslog would arrive within this
      const lines = journal();
      console.log(`journal: ${JSON.stringify(lines.map(({ MESSAGE, PRIORITY, SYSLOG_FACILITY, SYSLOG_IDENTIFIER }) => ({ MESSAGE, PRIORITY, SYSLOG_FACILITY, SYSLOG_IDENTIFIER })))}`);
      expect(lines.map((e) => ({ m: e.MESSAGE, p: e.PRIORITY, f: e.SYSLOG_FACILITY, id: e.SYSLOG_IDENTIFIER }))).toEqual([
        { m: 'RATE-LIMIT DROP src=198.18.252.2 dport=1194 proto=udp rate=20/min burst=5', p: '4', f: '4', id: 'connrate' },
      ]);
    } finally {
      if (init) {
        inside(['systemctl', 'stop', 'connrate.service']);
        inside(['env', `CONNRATE_PIN_DIR=${pinDir}`, '/usr/bin/connrate', 'detach']);
      }
      nspawn.kill('SIGTERM');
      if (nspawn.exitCode === null) await new Promise((r) => nspawn.once('exit', r));
      sh('ip', ['netns', 'del', srcNs]);
      rmSync(pinDir, { recursive: true, force: true });
    }
  });

  it('purges cleanly; removing the package detaches the datapath', () => {
    expect(existsSync(`${PIN_DIR}/maps`)).toBe(true);
    const r = sh('dpkg', ['--purge', 'connrate'], { env: purgeEnv() });
    console.log(`$ dpkg --purge connrate\n${r.stdout}${r.stderr}`);
    ok(r, 'dpkg --purge');
    for (const p of ['/usr/bin/connrate', '/usr/lib/connrate', UNIT, '/usr/share/doc/connrate', STATE_DIR]) expect(existsSync(p), p).toBe(false);
    expect(dpkgStatus('connrate').status).not.toMatch(/installed$/);
    expect(existsSync(`${PIN_DIR}/maps`)).toBe(false);
    expect(sh('ip', ['-n', NS, '-j', 'link', 'show', 'v0']).stdout).not.toMatch(/"xdp"/);
  });
});

/** argv: source address, destination, port, count: one datagram from a new socket (a new flow) each. */
const UDP_FLOWS = `
const dgram = require('node:dgram');
const [src, dst, port, count] = process.argv.slice(1);
(async () => {
  for (let i = 0; i < Number(count); i++) {
    const s = dgram.createSocket('udp4');
    await new Promise((r) => s.bind({ address: src }, r));
    await new Promise((r) => s.send('x', Number(port), dst, r));
    s.close();
  }
})();
`;

const NOTIFY_RECEIVER = `
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
while True:
    data, anc, flags, addr = s.recvmsg(4096, socket.CMSG_SPACE(64 * 4))
    for level, kind, fds in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            for i in range(0, len(fds) - len(fds) % 4, 4):
                os.close(int.from_bytes(fds[i:i + 4], sys.byteorder))
    print(data.decode().replace("\\n", " "), flush=True)
`;

async function until(cond: () => boolean, what: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
