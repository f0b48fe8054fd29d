// Layouts from a BPF object's BTF: what a value of a given type looks like in
// memory (scalars, byte arrays, arrays with their stride, structs with their
// member offsets), the named structs and enums an object's maps and globals
// use, and a fingerprint over them. The generator writes code from these; at
// run time they tell whether an object still matches the generated code.
import { createHash } from 'node:crypto';
import type { NativeBtfType } from './binding.js';

/** How a value is stored, resolved through typedefs and qualifiers. */
export type Shape =
  | { readonly kind: 'int'; readonly size: 1 | 2 | 4 | 8; readonly signed: boolean }
  | { readonly kind: 'bool' }
  | { readonly kind: 'enum'; readonly name: string; readonly size: 1 | 2 | 4 | 8; readonly signed: boolean }
  /** char/u8 arrays, unions, floats and anything else kept as raw bytes. */
  | { readonly kind: 'bytes'; readonly size: number; readonly what: string }
  | { readonly kind: 'array'; readonly elem: Shape; readonly count: number; readonly stride: number }
  | { readonly kind: 'struct'; readonly name: string };

export interface StructField { readonly name: string; readonly offset: number; readonly shape: Shape }
export interface StructLayout { readonly name: string; readonly size: number; readonly fields: readonly StructField[] }
export interface EnumLayout { readonly name: string; readonly size: number; readonly signed: boolean; readonly values: readonly (readonly [string, bigint])[] }

/** The BTF type table of one object (index = type id). */
export class BtfTable {
  readonly #types: readonly (NativeBtfType | null)[];
  /** Layouts of the structs met so far, by name (anonymous ones get "<parent>_<member>"). */
  readonly structs = new Map<string, StructLayout>();
  readonly enums = new Map<string, EnumLayout>();
  readonly #structIds = new Map<number, string>();

  constructor(types: readonly (NativeBtfType | null)[]) {
    this.#types = types;
  }

  type(id: number): NativeBtfType {
    const t = this.#types[id];
    if (t === undefined || t === null) throw new Error(`BTF: no type with id ${id}`);
    return t;
  }

  /** Follow typedefs, const, volatile, restrict and type tags. */
  resolve(id: number): NativeBtfType {
    let t = this.type(id);
    for (let hops = 0; hops < this.#types.length; hops++) {
      if (!['typedef', 'const', 'volatile', 'restrict', 'type_tag'].includes(t.kind)) return t;
      t = this.type(t.type ?? 0);
    }
    throw new Error(`BTF: a loop of typedefs at id ${id}`);
  }

  /** Size in bytes of a type. */
  sizeOf(id: number): number {
    const t = this.resolve(id);
    if (t.kind === 'array') return (t.nelems ?? 0) * this.sizeOf(t.type ?? 0);
    if (t.kind === 'ptr') return 8;
    if (t.size === undefined) throw new Error(`BTF: type ${id} (${t.kind} ${t.name}) has no size`);
    return t.size;
  }

  /** The shape of type `id`; `hint` names an anonymous struct. Records structs and enums met on the way. */
  shape(id: number, hint: string): Shape {
    const t = this.resolve(id);
    switch (t.kind) {
      case 'int': {
        const size = t.size ?? 0;
        if (t.bool && size === 1) return { kind: 'bool' };
        if ((t.bitOffset ?? 0) !== 0 || t.bits !== size * 8 || ![1, 2, 4, 8].includes(size)) {
          return { kind: 'bytes', size, what: `int${t.bits}` };
        }
        return { kind: 'int', size: size as 1 | 2 | 4 | 8, signed: t.signed === true };
      }
      case 'enum':
      case 'enum64': {
        const size = t.size ?? 4;
        const name = t.name || `${hint}_enum`;
        if (!this.enums.has(name)) {
          this.enums.set(name, { name, size, signed: t.signed === true, values: (t.values ?? []).map(([n, v]) => [n, v] as const) });
        }
        return { kind: 'enum', name, size: size as 1 | 2 | 4 | 8, signed: t.signed === true };
      }
      case 'ptr':
        return { kind: 'int', size: 8, signed: false };
      case 'array': {
        const elemId = t.type ?? 0;
        const stride = this.sizeOf(elemId);
        const elem = this.shape(elemId, hint);
        const count = t.nelems ?? 0;
        if (elem.kind === 'int' && elem.size === 1) return { kind: 'bytes', size: count, what: `${elem.signed ? 's8' : 'u8'}[${count}]` };
        return { kind: 'array', elem, count, stride };
      }
      case 'struct':
        return { kind: 'struct', name: this.#struct(id, t, hint) };
      default:
        return { kind: 'bytes', size: this.sizeOf(id), what: t.kind === 'union' ? `union ${t.name || hint}` : t.kind };
    }
  }

  #struct(id: number, t: NativeBtfType, hint: string): string {
    const resolvedId = this.#resolveId(id);
    const known = this.#structIds.get(resolvedId);
    if (known !== undefined) return known;
    const name = t.name || hint;
    const clash = this.structs.get(name);
    if (clash !== undefined) throw new Error(`BTF: two different structs would both be named ${name}`);
    this.#structIds.set(resolvedId, name);
    const fields: StructField[] = [];
    this.#fields(t, name, 0, fields);
    this.structs.set(name, { name, size: t.size ?? 0, fields });
    return name;
  }

  #fields(t: NativeBtfType, owner: string, base: number, out: StructField[]): void {
    for (const m of t.members ?? []) {
      if (m.bitSize !== 0 || m.bitOffset % 8 !== 0) {
        throw new Error(`BTF: ${owner}.${m.name || '(anonymous)'} is a bitfield, which is not supported`);
      }
      const offset = base + m.bitOffset / 8;
      const mt = this.resolve(m.type);
      if (m.name === '' && mt.kind === 'struct') {
        this.#fields(mt, owner, offset, out); // an anonymous struct member: its fields belong to the owner
        continue;
      }
      out.push({ name: m.name || `anon${out.length}`, offset, shape: this.shape(m.type, `${owner}_${m.name}`) });
    }
  }

  #resolveId(id: number): number {
    let cur = id;
    for (let hops = 0; hops < this.#types.length; hops++) {
      const t = this.type(cur);
      if (!['typedef', 'const', 'volatile', 'restrict', 'type_tag'].includes(t.kind)) return cur;
      cur = t.type ?? 0;
    }
    return cur;
  }

  /** Type ids of named structs/unions and enums, for lookups by name. */
  findNamed(name: string): number | undefined {
    for (let id = 1; id < this.#types.length; id++) {
      const t = this.#types[id];
      if (t && t.name === name && ['struct', 'enum', 'enum64'].includes(t.kind)) return id;
    }
    return undefined;
  }

  /** The datasec entries: section name and its variables (name, offset, size, type id, linkage). */
  datasecs(): { name: string; vars: { name: string; offset: number; size: number; type: number; linkage: number }[] }[] {
    const out: { name: string; vars: { name: string; offset: number; size: number; type: number; linkage: number }[] }[] = [];
    for (const t of this.#types) {
      if (t?.kind !== 'datasec') continue;
      out.push({
        name: t.name,
        vars: (t.vars ?? []).map((v) => {
          const vt = this.type(v.type);
          return { name: vt.name, offset: v.offset, size: v.size, type: vt.type ?? 0, linkage: vt.linkage ?? 0 };
        }),
      });
    }
    return out;
  }
}

/** A compact, stable text for a shape (used in the layout description). */
export function shapeText(s: Shape): string {
  switch (s.kind) {
    case 'int':
      return `${s.signed ? 's' : 'u'}${s.size * 8}`;
    case 'bool':
      return 'bool';
    case 'enum':
      return `enum ${s.name}`;
    case 'bytes':
      return `bytes[${s.size}]`;
    case 'array': {
      // C order: the outermost dimension first (count/stride in bytes)
      let dims = '';
      let e: Shape = s;
      while (e.kind === 'array') {
        dims += `[${e.count}/${e.stride}]`;
        e = e.elem;
      }
      return `${shapeText(e)}${dims}`;
    }
    case 'struct':
      return `struct ${s.name}`;
  }
}

/** Size of a shape in bytes. */
export function shapeSize(s: Shape, structs: ReadonlyMap<string, StructLayout>): number {
  switch (s.kind) {
    case 'int':
    case 'enum':
      return s.size;
    case 'bool':
      return 1;
    case 'bytes':
      return s.size;
    case 'array':
      return s.count * s.stride;
    case 'struct': {
      const l = structs.get(s.name);
      if (l === undefined) throw new Error(`no layout for struct ${s.name}`);
      return l.size;
    }
  }
}

/**
 * The layouts of the given structs and enums (and every struct and enum they
 * use) as one stable text: names sorted, one line per struct or enum.
 */
export function describeLayouts(table: BtfTable, structs: readonly string[], enums: readonly string[]): string {
  // Anonymous structs ("<parent>_<member>") are not found by name: their parents reach them.
  for (const name of structs) {
    const id = table.findNamed(name);
    if (id !== undefined && table.resolve(id).kind === 'struct' && !table.structs.has(name)) table.shape(id, name);
  }
  for (const name of enums) {
    const id = table.findNamed(name);
    if (id !== undefined && ['enum', 'enum64'].includes(table.resolve(id).kind) && !table.enums.has(name)) table.shape(id, name);
  }
  const missing = [
    ...structs.filter((n) => !table.structs.has(n)).map((n) => `struct ${n}`),
    ...enums.filter((n) => !table.enums.has(n)).map((n) => `enum ${n}`),
  ];
  if (missing.length > 0) throw new Error(`not in BTF: ${missing.join(', ')}`);
  const lines: string[] = [];
  for (const s of [...table.structs.values()].sort((a, b) => cmp(a.name, b.name))) {
    lines.push(`struct ${s.name} ${s.size} { ${s.fields.map((f) => `${f.name}@${f.offset}: ${shapeText(f.shape)}`).join('; ')} }`);
  }
  for (const e of [...table.enums.values()].sort((a, b) => cmp(a.name, b.name))) {
    const values = [...e.values].sort(([a], [b]) => cmp(a, b)).map(([n, v]) => `${n}=${v}`);
    lines.push(`enum ${e.name} ${e.size}${e.signed ? ' signed' : ''} { ${values.join(', ')} }`);
  }
  return lines.join('\n');
}

/** SHA-256 (hex) of a layout description. */
export function layoutFingerprint(description: string): string {
  return createHash('sha256').update(description).digest('hex');
}

/** Code-point order, independent of locale. */
export function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
