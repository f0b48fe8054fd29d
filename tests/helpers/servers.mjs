#!/usr/bin/env node
// Test servers for the end-to-end testbed, run inside the appliance netns.
//
//   node servers.mjs --tcp 443,11115 --udp 1194,53
//
// TCP: one dual-stack listener on '::' per port; accepted sockets are kept
// open (echoing anything received) until the client closes them.
// UDP: echo servers on '0.0.0.0' and '::' (IPv6-only) per port.
// Prints exactly one line `ready` once everything listens; exits 0 on SIGTERM
// or SIGINT.
import dgram from 'node:dgram';
import net from 'node:net';

function ports(flag) {
  const i = process.argv.indexOf(flag);
  if (i < 0) return [];
  const v = process.argv[i + 1] ?? '';
  return v
    .split(',')
    .filter((s) => s !== '')
    .map((s) => {
      const n = Number(s);
      if (!Number.isInteger(n) || n < 1 || n > 65535) {
        console.error(`servers.mjs: bad port ${JSON.stringify(s)} for ${flag}`);
        process.exit(2);
      }
      return n;
    });
}

const tcpPorts = ports('--tcp');
const udpPorts = ports('--udp');

/** @type {net.Server[]} */
const servers = [];
/** @type {Set<net.Socket>} */
const conns = new Set();
/** @type {dgram.Socket[]} */
const udpSockets = [];

function listenTcp(port) {
  return new Promise((resolve, reject) => {
    const srv = net.createServer((sock) => {
      conns.add(sock);
      sock.on('data', (d) => sock.write(d));
      sock.on('end', () => sock.end());
      sock.on('error', () => sock.destroy());
      sock.on('close', () => conns.delete(sock));
    });
    srv.once('error', reject);
    srv.listen({ host: '::', port, ipv6Only: false, backlog: 4096 }, () => {
      srv.off('error', reject);
      srv.on('error', (e) => console.error(`servers.mjs: tcp ${port}: ${e.message}`));
      servers.push(srv);
      resolve();
    });
  });
}

function bindUdp(type, address, port) {
  return new Promise((resolve, reject) => {
    const sock = dgram.createSocket({ type, ipv6Only: type === 'udp6', reuseAddr: false });
    sock.once('error', reject);
    sock.on('message', (msg, rinfo) => {
      sock.send(msg, rinfo.port, rinfo.address, () => {});
    });
    sock.bind({ address, port, exclusive: true }, () => {
      sock.off('error', reject);
      sock.on('error', (e) => console.error(`servers.mjs: udp ${address} ${port}: ${e.message}`));
      udpSockets.push(sock);
      resolve();
    });
  });
}

function shutdown() {
  for (const c of conns) c.destroy();
  for (const s of servers) s.close();
  for (const u of udpSockets) {
    try {
      u.close();
    } catch {
      /* already closed */
    }
  }
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

try {
  for (const p of tcpPorts) await listenTcp(p);
  for (const p of udpPorts) {
    await bindUdp('udp4', '0.0.0.0', p);
    await bindUdp('udp6', '::', p);
  }
} catch (e) {
  console.error(`servers.mjs: ${e instanceof Error ? e.message : String(e)}`);
  process.exit(1);
}
process.stdout.write('ready\n');
