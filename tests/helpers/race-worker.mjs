// A racer for tests/kernel/cpus.test.ts: each round, after a spin barrier with
// its twin, runs every frame of the round through the program (by id),
// `repeat` times each — the twin does the same at the same instant.
import { parentPort, workerData } from 'node:worker_threads';
import { Program } from '@xdp-ts/loader';

const { progId, rounds, repeat, barrier } = workerData; // barrier: Int32Array on a SharedArrayBuffer
const prog = Program.fromId(progId);
const PARTIES = 2;
for (let r = 0; r < rounds.length; r++) {
  Atomics.add(barrier, 0, 1);
  while (Atomics.load(barrier, 0) < PARTIES * (r + 1)) {
    /* spin: both start the round within microseconds */
  }
  for (const f of rounds[r]) prog.testRun({ data: Buffer.from(f), repeat });
}
prog.close();
parentPort.postMessage('done');
