/** File-system helpers. */
import { existsSync, mkdirSync } from 'node:fs';
import { dirname } from 'node:path';

/**
 * mkdir -p, one level at a time. (Node's recursive mkdirSync never returns on
 * some pseudo file systems, e.g. under /proc, where mkdir fails with ENOENT.)
 */
export function mkdirs(path: string, mode: number): void {
  const missing: string[] = [];
  for (let p = path; !existsSync(p); p = dirname(p)) missing.unshift(p);
  for (const p of missing) mkdirSync(p, { mode });
}
