// Sends one datagram from each of `count` new sockets (new flows) at absolute
// time `startAt` (ms since the epoch), then counts echoes for `waitMs`.
// Prints {"ok": n, "failed": n}. Run pinned to a CPU with taskset.
import dgram from 'node:dgram';

const { src, dst, port, count, startAt, waitMs } = JSON.parse(process.argv[2]);
const sockets = await Promise.all(
  Array.from({ length: count }, () => new Promise((resolve) => {
    const s = dgram.createSocket(dst.includes(':') ? 'udp6' : 'udp4');
    s.bind({ address: src, port: 0 }, () => resolve(s));
  })),
);
let ok = 0;
for (const s of sockets) s.on('message', () => ok++);
const payload = Buffer.from('connrate-cpu');
while (performance.timeOrigin + performance.now() < startAt) {
  /* spin to the shared start time */
}
for (const s of sockets) s.send(payload, port, dst);
await new Promise((r) => setTimeout(r, waitMs));
for (const s of sockets) s.close();
process.stdout.write(`${JSON.stringify({ ok, failed: count - ok })}\n`);
