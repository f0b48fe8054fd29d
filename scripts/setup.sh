#!/usr/bin/env bash
# Install what connrate needs on Debian 12 (as root), then build it:
# the libbpf addon, the BPF objects and the TypeScript.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: run as root (it installs Debian packages and loads BPF programs)" >&2
  exit 1
fi

# Node.js comes first: connrate needs 20 or newer, and Debian 12's own nodejs is 18.
MIN_NODE_MAJOR=20
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt "$MIN_NODE_MAJOR" ]; then
  echo "setup: connrate needs Node.js $MIN_NODE_MAJOR or newer; found $(node --version 2>/dev/null || echo none)." >&2
  echo "setup: Debian 12's nodejs package is 18: install Node.js $MIN_NODE_MAJOR+ (e.g. NodeSource's nodejs package, or Debian 13's) and run this again." >&2
  exit 1
fi

# build and test: compilers, libbpf, network tools; for the packaging tests dpkg-dev,
# systemd (systemd-analyze, systemd-notify), systemd-container (systemd-nspawn boots the
# installed unit) and python3 (a notify-socket peer); groff-base checks the man page renders
PACKAGES=(clang llvm libbpf-dev libelf-dev zlib1g-dev pkg-config cmake make g++
          bpftool iproute2 iptables nftables linux-perf
<<<<<<< HEAD
          dpkg-dev systemd systemd-container python3 groff-base)
=======
          etcd-server etcd-client openssl)
>>>>>>> fleetx
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  # Debian's etcd-server starts a host etcd on 127.0.0.1:2379 when installed.
  # connrate's tests and demo start their own members on free ports, so keep
  # the packaged service from starting (policy-rc.d 101 = "do not start").
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

<<<<<<< HEAD
# promtool (the tests check the shipped alert rules with it) comes with Debian's
# prometheus package, which would also start and enable a Prometheus server
# listening on :9090. Install it with service starts refused (policy-rc.d), then
# disable the server; a Prometheus that was here before is left alone.
if ! command -v promtool >/dev/null; then
  echo "setup: installing prometheus (for promtool; its server is disabled)"
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  if [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  else
    systemctl disable prometheus.service >/dev/null 2>&1 || true
  fi
=======
# The packaged etcd service is not used: stop and disable it if it runs
# (the fleet's tests never use port 2379; connrate's default CONNRATE_ETCD
# points there only for a real deployment).
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  if systemctl is-enabled --quiet etcd 2>/dev/null || systemctl is-active --quiet etcd 2>/dev/null; then
    echo "setup: stopping and disabling the packaged etcd service (tests start their own members)"
    systemctl disable --now etcd >/dev/null 2>&1 || true
  fi
elif [ -x /etc/init.d/etcd ] && /etc/init.d/etcd status >/dev/null 2>&1; then
  echo "setup: stopping the packaged etcd service (tests start their own members)"
  /etc/init.d/etcd stop >/dev/null 2>&1 || true
>>>>>>> fleetx
fi

# BPF objects are pinned under /sys/fs/bpf; mount bpffs if nothing is there.
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

npm ci --no-audit --no-fund
npm run build
