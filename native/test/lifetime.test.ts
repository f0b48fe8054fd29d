// fd and thread lifetime at the native level, in child processes: finalizers,
// env cleanup hooks (process and worker exit) and ring buffer ref/unref.
import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { binaryPath } from '../src/binding.js';
import { compileFixtures, type Fixtures } from './helpers.js';

let fx: Fixtures;
beforeAll(() => {
  fx = compileFixtures('lifetime');
});
afterAll(() => fx?.cleanup());

const prelude = `
const fs = require('node:fs');
const b = require(process.env.XTL_BIN);
// kernel objects only (bpf maps/progs/links, eventfd, epoll): node's own
// /dev/null or pipe fds for worker stdio are not ours to count
const fds = () => fs.readdirSync('/proc/self/fd').filter((f) => {
  try { return fs.readlinkSync('/proc/self/fd/' + f).startsWith('anon_inode:'); } catch { return false; }
}).length;
function openRing() {
  const o = b.objOpen(process.env.XTL_OBJ, 0);
  b.objLoad(o);
  const m = b.objMapFd(o, 'xtl_events');
  b.mapInfo(m);
  return { o, m, r: b.ringOpen(m, () => {}) };
}
`;

function run(script: string, timeoutMs = 10_000): { status: number | null; signal: string | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, ['--expose-gc', '-e', prelude + script], {
    env: { ...process.env, XTL_BIN: binaryPath, XTL_OBJ: fx.test },
    encoding: 'utf8',
    timeout: timeoutMs,
  });
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

describe('native lifetime', () => {
  it('an unref()d reader lets the process exit, and exit joins its thread', () => {
    const r = run(`const { r } = openRing(); b.ringRef(r, false); console.log('ok');`);
    expect(r.stderr).toBe('');
    expect(r).toMatchObject({ status: 0, stdout: 'ok\n' });
  });

  it('an open reader keeps the process alive until closed', () => {
    const alive = run(`openRing();`, 1500);
    expect(alive.signal).toBe('SIGTERM'); // still running when the timeout hit
    const closed = run(`const { r } = openRing(); setTimeout(() => b.ringClose(r).then(() => console.log('closed')), 100);`);
    expect(closed).toMatchObject({ status: 0, stdout: 'closed\n', stderr: '' });
  });

  it('finalizers close fds of unreachable handles', () => {
    const r = run(`
      const o = b.objOpen(process.env.XTL_OBJ, 0);
      b.objLoad(o);
      const before = fds();
      for (let i = 0; i < 100; i++) b.objMapFd(o, 'xtl_hash');
      const during = fds();
      (async () => {
        for (let i = 0; i < 5; i++) { global.gc(); await new Promise((r) => setImmediate(r)); }
        console.log(during - before, fds() - before);
      })();
    `);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('100 0');
  });

  it('a terminated worker closes its fds and stops its reader threads', () => {
    const r = run(`
      const { Worker } = require('node:worker_threads');
      const before = fds();
      const w = new Worker(\`
        const b = require(process.env.XTL_BIN);
        const { parentPort } = require('node:worker_threads');
        const o = b.objOpen(process.env.XTL_OBJ, 0);
        b.objLoad(o);
        const keep = [];
        for (let i = 0; i < 50; i++) keep.push(b.objMapFd(o, 'xtl_hash'));
        const m = b.objMapFd(o, 'xtl_events');
        b.mapInfo(m);
        keep.push(b.ringOpen(m, () => {}));
        parentPort.postMessage('ready');
      \`, { eval: true, env: process.env });
      w.on('message', async () => {
        const during = fds();
        await w.terminate();
        console.log(during - before > 50, fds() - before);
      });
    `);
    expect(r.stderr).toBe('');
    expect(r).toMatchObject({ status: 0, stdout: 'true 0\n' });
  });
});
