/**
 * @xdp-ts/loader as a user gets it: `npm pack` in native/, `npm install` of the
 * tarball in an empty directory (the install step builds the addon against the
 * system's libbpf), then a script there imports the package and loads and runs
 * a BPF object with it. Nothing of the checkout is on the consumer's path: the
 * addon must come from the installed package.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { npmEnv } from './helpers.js';

const NATIVE = fileURLToPath(new URL('../../native/', import.meta.url));
const XDP_NOOP = fileURLToPath(new URL('../../build/bpf/xdp_noop.bpf.o', import.meta.url));
const INSTALL_TIMEOUT_MS = 600_000;

let work: string;
let tarball: string;
let consumer: string;
let packOutput: string;
let installOutput: string;

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'connrate-loader-pkg-'));
  packOutput = execFileSync('npm', ['pack', '--pack-destination', work], { cwd: NATIVE, env: npmEnv(), encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  const tgz = readdirSync(work).filter((f) => f.endsWith('.tgz'));
  expect(tgz).toHaveLength(1);
  tarball = join(work, tgz[0]!);
  consumer = join(work, 'consumer');
  execFileSync('mkdir', [consumer]);
  writeFileSync(join(consumer, 'package.json'), `${JSON.stringify({ name: 'loader-consumer', private: true, type: 'module' }, null, 2)}\n`);
  installOutput = execFileSync('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', '--foreground-scripts', tarball], {
    cwd: consumer, env: npmEnv(), encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: INSTALL_TIMEOUT_MS,
  });
}, INSTALL_TIMEOUT_MS);

afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('@xdp-ts/loader from its tarball', () => {
  it('packs the compiled JS, the addon sources, its build file and the licenses, and no build output', () => {
    const files = execFileSync('tar', ['-tzf', tarball], { encoding: 'utf8' }).trim().split('\n').sort();
    for (const f of ['package/dist/index.js', 'package/dist/index.d.ts', 'package/src/addon.cc', 'package/src/common.h', 'package/CMakeLists.txt',
      'package/LICENSE', 'package/LICENSE.LGPL-2.1', 'package/LICENSE.BSD-2-Clause', 'package/README.md', 'package/package.json']) {
      expect(files).toContain(f);
    }
    expect(files.filter((f) => f.includes('/build/') || f.endsWith('.node'))).toEqual([]);
    const pkg = JSON.parse(execFileSync('tar', ['-xzOf', tarball, 'package/package.json'], { encoding: 'utf8' })) as Record<string, Record<string, string>>;
    expect(pkg['license']).toBe('LGPL-2.1-only OR BSD-2-Clause');
    expect(Object.keys(pkg['dependencies']!).sort()).toEqual(['cmake-js', 'node-addon-api']);
    expect(pkg['scripts']!['install']).toBe('cmake-js compile');
    console.log(packOutput.trim());
  });

  it('builds the addon inside the installed package when installed', () => {
    const installed = join(consumer, 'node_modules', '@xdp-ts', 'loader');
    expect(existsSync(join(installed, 'build', 'Release', 'xdp_ts_loader.node')), installOutput).toBe(true);
    expect(readFileSync(join(installed, 'LICENSE'), 'utf8')).toMatch(/LGPL-2\.1-only OR BSD-2-Clause/);
    console.log(installOutput.split('\n').filter((l) => /added|Linking|xdp_ts_loader/.test(l)).join('\n'));
  });

  it('imports and loads a BPF object in the consumer, with the addon of the installed package', () => {
    writeFileSync(join(consumer, 'load.mjs'), `
import { readFileSync } from 'node:fs';
import { BpfObject, XDP_ACTION } from '@xdp-ts/loader';
const obj = BpfObject.open(process.argv[2]);
obj.load();
const [name] = obj.programNames();
const prog = obj.program(name);
const { retval } = prog.testRun({ data: Buffer.alloc(64) });
prog.close();
obj.close();
const addons = [...new Set(readFileSync('/proc/self/maps', 'utf8').split('\\n').filter((l) => l.endsWith('.node')).map((l) => l.split(/\\s+/).pop()))];
console.log(JSON.stringify({ name, retval, pass: XDP_ACTION.PASS, module: import.meta.resolve('@xdp-ts/loader'), addons }));
`);
    const env = npmEnv();
    delete env['XDP_TS_LOADER_BINARY'];
    const out = execFileSync('node', ['load.mjs', XDP_NOOP], { cwd: consumer, env, encoding: 'utf8' });
    const r = JSON.parse(out) as { name: string; retval: number; pass: number; module: string; addons: string[] };
    expect(r.name).toBe('xdp_noop');
    expect(r.retval).toBe(r.pass);
    const installed = join(consumer, 'node_modules', '@xdp-ts', 'loader');
    expect(fileURLToPath(r.module).startsWith(installed)).toBe(true);
    // the addon mapped into the consumer's process is the installed package's
    expect(r.addons).toEqual([join(installed, 'build', 'Release', 'xdp_ts_loader.node')]);
    console.log(out.trim());
  });
});
