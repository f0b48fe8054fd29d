/**
 * The BPF LRU keeps free nodes in per-CPU lists: a run whose thread moves
 * between CPUs strands some in the list of the CPU it left, so which key is
 * evicted, and when, depends on the scheduler. Packets of one NIC queue are
 * handled on one CPU; a test that counts on the LRU's order pins its thread
 * (BPF_PROG_TEST_RUN runs on the caller's CPU) to one CPU the same way.
 */
import { spawnSync } from 'node:child_process';

function affinity(list?: string): string {
  const r = spawnSync('taskset', list ? ['-pc', list, String(process.pid)] : ['-pc', String(process.pid)], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`taskset: ${r.stderr.trim() || `exit ${r.status}`}`);
  return r.stdout.trim().split(': ').pop() ?? '';
}

/** Pin this thread to the first of its CPUs; returns what gives it its CPUs back. */
export function pinToOneCpu(): () => void {
  const cpus = affinity();
  affinity(cpus.split(/[,-]/)[0]);
  return () => void affinity(cpus);
}
