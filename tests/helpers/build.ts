/**
 * Build variants of the connrate object (another "release") for upgrade tests:
 * the real sources, with an edit applied to the shared header.
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const BPF_DIR = fileURLToPath(new URL('../../bpf/', import.meta.url));

/** Compile bpf/connrate.bpf.c with `edit` applied to connrate.h; returns the object's path. */
export function buildVariant(edit: (header: string) => string): string {
  const dir = mkdtempSync(join(tmpdir(), 'connrate-variant-'));
  for (const f of readdirSync(BPF_DIR)) copyFileSync(join(BPF_DIR, f), join(dir, f));
  const header = readFileSync(join(dir, 'connrate.h'), 'utf8');
  const edited = edit(header);
  if (edited === header) throw new Error('buildVariant: the edit changed nothing');
  writeFileSync(join(dir, 'connrate.h'), edited);
  const multiarch = execFileSync('gcc', ['-print-multiarch'], { encoding: 'utf8' }).trim();
  const out = join(dir, 'connrate.bpf.o');
  execFileSync('clang', ['-target', 'bpf', '-mcpu=v3', '-O2', '-g', '-Wall', '-Werror', `-I${dir}`, `-I/usr/include/${multiarch}`, '-c', join(dir, 'connrate.bpf.c'), '-o', out]);
  return out;
}
