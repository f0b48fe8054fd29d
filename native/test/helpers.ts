// Shared test plumbing: compile the fixture BPF objects into a temp dir and
// give each test file a private bpffs directory for pins.
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const fixtures = join(dirname(fileURLToPath(import.meta.url)), 'fixtures');

export interface Fixtures {
  dir: string;
  /** xtl_test.bpf.o: maps of every kind, globals, XDP programs. */
  test: string;
  /** xtl_bad.bpf.o: rejected by the verifier. */
  bad: string;
  /** xtl_trace.bpf.o: a BTF tracepoint program that counts one process's test runs. */
  trace: string;
  /** /sys/fs/bpf/xtl-test-<pid>-<tag>/ */
  pinDir: string;
  cleanup(): void;
}

export function compileFixtures(tag: string): Fixtures {
  const dir = mkdtempSync(join(tmpdir(), 'xtl-'));
  const multiarch = execFileSync('clang', ['-print-multiarch'], { encoding: 'utf8' }).trim();
  const compile = (name: string): string => {
    const out = join(dir, `${name}.bpf.o`);
    execFileSync('clang', [
      '-target', 'bpf', '-mcpu=v3', '-O2', '-g', '-Wall', '-Werror',
      `-I/usr/include/${multiarch}`, '-c', join(fixtures, `${name}.bpf.c`), '-o', out,
    ]);
    return out;
  };
  const pinDir = `/sys/fs/bpf/xtl-test-${process.pid}-${tag}`;
  mkdirSync(pinDir, { recursive: true });
  return {
    dir,
    test: compile('xtl_test'),
    bad: compile('xtl_bad'),
    trace: compile('xtl_trace'),
    pinDir,
    cleanup() {
      rmSync(pinDir, { recursive: true, force: true });
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
}

export function u64(n: number | bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
}

/** A minimal Ethernet + IPv4 frame (TEST-NET-2 style addresses from 198.18.0.0/15). */
export function packet(len = 64): Buffer {
  const p = Buffer.alloc(len);
  p.writeUInt16BE(0x0800, 12); // ETH_P_IP
  p[14] = 0x45;
  p.writeUInt16BE(len - 14, 16);
  p[22] = 64;
  p[23] = 17; // UDP
  Buffer.from([198, 18, 0, 1]).copy(p, 26);
  Buffer.from([198, 18, 0, 2]).copy(p, 30);
  return p;
}
