/**
 * The source tree keeps its rules: no map, global, field or type of the BPF
 * object is named by a string outside the generated module (a typo there
 * would fail only at run time), the datapath codecs read no offsets of their
 * own, and the configuration and domain layers do not depend on the control
 * layer.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const SRC = fileURLToPath(new URL('../../src/', import.meta.url));

function sources(dir = SRC): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : [],
  );
}

/** `file:line: text` for every line of the hand-written sources that matches one of `patterns`. */
function hits(patterns: readonly RegExp[], files = sources().filter((f) => !f.endsWith('.gen.ts'))): string[] {
  const out: string[] = [];
  for (const file of files) {
    readFileSync(file, 'utf8').split('\n').forEach((line, i) => {
      if (patterns.some((p) => p.test(line))) out.push(`${relative(SRC, file)}:${i + 1}: ${line.trim()}`);
    });
  }
  return out;
}

describe('the source tree', () => {
  it('names no map, global, field, program or BTF type by a string outside the generated module', () => {
    const quoted = String.raw`\(\s*['"\x60]`;
    const patterns = [
      ...['map', 'field', 'mapPin', 'mapSpec', 'setMaxEntries', 'setPinPath', 'program'].map((fn) => new RegExp(String.raw`\b${fn}${quoted}`)),
      /\bsetGlobal\(/,
      /\bbtfStruct\(/,
      /\bbtfEnum\(/,
    ];
    expect(sources().some((f) => f.endsWith('datapath.gen.ts'))).toBe(true);
    expect(hits(patterns)).toEqual([]);
    // the check itself finds what it looks for
    expect(patterns.some((p) => p.test(`dp.map('buckets')`))).toBe(true);
    expect(patterns.some((p) => p.test(`obj.map("config")`))).toBe(true);
    expect(patterns.some((p) => p.test(`L.field('ports')`))).toBe(true);
    expect(patterns.some((p) => p.test(`words.map((w) => w)`))).toBe(false);
  });

  it('leaves layouts to the generated module: the datapath codecs read no offsets of their own', () => {
    const abi = [join(SRC, 'control', 'abi.ts')];
    expect(hits([/\boffset/, /\b(read|write)(U|I)(8|16|32|64)\b/, /\b(read|write)(Big)?U?Int\d+(LE|BE)?\(/], abi)).toEqual([]);
  });

  it('keeps configuration and domain types free of the control layer', () => {
    const layer = (dir: string): string[] => sources(join(SRC, dir));
    expect(hits([/from '\.\.\/control\//], [...layer('config'), ...layer('domain')])).toEqual([]);
    expect(hits([/from '\.\.\/(?!domain\/)/], layer('domain'))).toEqual([]);
  });
});
