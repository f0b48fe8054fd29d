// One side of bench/ns-per-packet.ts's two-CPU runs, started pinned to a CPU
// (taskset): waits for the common start instant, runs the program (by id)
// `repeat` times on the frame through BPF_PROG_TEST_RUN and prints ns/packet.
import { Program } from '@xdp-ts/loader';

const [progId, repeat, hex, startAt] = process.argv.slice(2);
const prog = Program.fromId(Number(progId));
const data = Buffer.from(hex, 'hex');
prog.testRun({ data: Buffer.from(data) }); // warm: page tables, the frame
while (Date.now() < Number(startAt)) {
  /* spin: both sides start within a millisecond */
}
const { durationNs } = prog.testRun({ data, repeat: Number(repeat) });
prog.close();
console.log(durationNs);
