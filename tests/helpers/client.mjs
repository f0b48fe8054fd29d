#!/usr/bin/env node
// Test client for the end-to-end testbed, run inside the Internet-side netns.
//
//   node client.mjs '<ClientRequest JSON>'
//
// kinds (see tests/helpers/testbed.ts):
//   tcp-connect  `count` new TCP connections from `src` (each a new ephemeral
//                port), ok when established within timeoutMs (default 700 ms,
//                below the 1 s SYN retransmit); sequential unless `concurrent`.
//                All are closed at the end.
//   udp-new      `count` new flows, each a new socket (new source port) that
//                sends one datagram and waits timeoutMs for the echo.
//   udp-flow     one socket (source port `srcPort`, default ephemeral) that
//                sends `count` datagrams in turn, each waiting for its echo.
//
// Prints one JSON line {"ok":N,"failed":N,"ms":N} and exits 0; exits 2 on a
// bad request.
import dgram from 'node:dgram';
import net from 'node:net';

function fail(msg) {
  console.error(`client.mjs: ${msg}`);
  process.exit(2);
}

let req;
try {
  req = JSON.parse(process.argv[2] ?? '');
} catch {
  fail('usage: client.mjs <ClientRequest JSON>');
}
const { kind, src, dst, port, count } = req;
if (!net.isIP(src) || !net.isIP(dst) || net.isIP(src) !== net.isIP(dst)) fail(`bad src/dst ${src} ${dst}`);
if (!Number.isInteger(port) || port < 1 || port > 65535) fail(`bad port ${port}`);
if (!Number.isInteger(count) || count < 0) fail(`bad count ${count}`);
const timeoutMs = req.timeoutMs ?? 700;
const udpType = net.isIPv6(dst) ? 'udp6' : 'udp4';

/** @type {Set<net.Socket>} */
const open = new Set();

/** One TCP connection attempt: resolves true when established in time. */
function tcpAttempt() {
  return new Promise((resolve) => {
    const sock = net.connect({ host: dst, port, localAddress: src });
    let done = false;
    const finish = (ok) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (ok) open.add(sock);
      else sock.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => finish(false), timeoutMs);
    sock.once('connect', () => finish(true));
    sock.on('error', () => {
      open.delete(sock);
      finish(false);
    });
    sock.on('close', () => open.delete(sock));
    // The server only echoes; nothing to read, but drain so FIN is handled.
    sock.on('data', () => {});
  });
}

/** Wait for a datagram whose payload equals `want` on `sock`, within timeoutMs. */
function udpExchange(sock, payload) {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      sock.off('message', onMsg);
      resolve(false);
    }, timeoutMs);
    function onMsg(msg) {
      if (!msg.equals(payload)) return; // a late echo of an earlier datagram
      clearTimeout(timer);
      sock.off('message', onMsg);
      resolve(true);
    }
    sock.on('message', onMsg);
    sock.send(payload, port, dst, (err) => {
      if (err) {
        clearTimeout(timer);
        sock.off('message', onMsg);
        resolve(false);
      }
    });
  });
}

function udpSocket(srcPort) {
  return new Promise((resolve, reject) => {
    const sock = dgram.createSocket({ type: udpType });
    sock.once('error', reject);
    sock.bind({ address: src, port: srcPort, exclusive: true }, () => {
      sock.off('error', reject);
      sock.on('error', () => {});
      resolve(sock);
    });
  });
}

let ok = 0;
let failed = 0;
const count1 = (good) => (good ? ok++ : failed++);
const t0 = performance.now();

switch (kind) {
  case 'tcp-connect': {
    if (req.concurrent) {
      const results = await Promise.all(Array.from({ length: count }, () => tcpAttempt()));
      results.forEach(count1);
    } else {
      for (let i = 0; i < count; i++) count1(await tcpAttempt());
    }
    break;
  }
  case 'udp-new': {
    for (let i = 0; i < count; i++) {
      let sock;
      try {
        sock = await udpSocket(0);
      } catch {
        failed++;
        continue;
      }
      count1(await udpExchange(sock, Buffer.from(`connrate-udp-new ${process.pid} ${i}`)));
      sock.close();
    }
    break;
  }
  case 'udp-flow': {
    let sock;
    try {
      sock = await udpSocket(req.srcPort ?? 0);
    } catch (e) {
      fail(`bind ${src}:${req.srcPort ?? 0}: ${e instanceof Error ? e.message : String(e)}`);
    }
    for (let i = 0; i < count; i++) {
      count1(await udpExchange(sock, Buffer.from(`connrate-udp-flow ${process.pid} ${i}`)));
    }
    sock.close();
    break;
  }
  default:
    fail(`unknown kind ${JSON.stringify(kind)}`);
}

const ms = Math.round(performance.now() - t0);
for (const s of open) s.destroy();
process.stdout.write(`${JSON.stringify({ ok, failed, ms })}\n`);
process.exit(0);
