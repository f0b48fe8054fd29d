/** Aligned text tables for the CLI. */

export type Align = 'left' | 'right';

export interface Column {
  readonly header: string;
  readonly align?: Align;
}

/** Columns padded to their widest cell, two spaces apart, header underlined. */
export function table(columns: readonly Column[], rows: readonly (readonly string[])[]): string {
  const widths = columns.map((c, i) => Math.max(c.header.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]): string =>
    cells
      .map((cell, i) => (columns[i]?.align === 'right' ? cell.padStart(widths[i] ?? 0) : cell.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd();
  return [line(columns.map((c) => c.header)), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}

/** The appliance's extc table: `application |variable |value` with a +-ruled header. */
export function extcTable(application: string, rows: readonly (readonly [string, string])[]): string {
  const headers = ['application', 'variable', 'value'];
  const w0 = Math.max(headers[0]!.length, application.length);
  const w1 = Math.max(headers[1]!.length, ...rows.map(([n]) => n.length));
  const w2 = Math.max(headers[2]!.length, ...rows.map(([, v]) => v.length));
  const out = [`${headers[0]!.padEnd(w0)}|${headers[1]!.padEnd(w1)}|${headers[2]}`, `${'-'.repeat(w0)}+${'-'.repeat(w1)}+${'-'.repeat(w2)}`];
  rows.forEach(([name, value], i) => out.push(`${(i === 0 ? application : '').padEnd(w0)}|${name.padEnd(w1)}|${value}`));
  return out.join('\n');
}
