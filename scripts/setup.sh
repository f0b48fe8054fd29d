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
# installed unit) and python3 (a notify-socket peer); groff-base checks the man page renders;
# the fleet: etcd-server and etcd-client (tests start their own members), openssl (test CAs);
# prometheus for promtool (the tests check the shipped alert rules with it)
PACKAGES=(clang llvm libbpf-dev libelf-dev zlib1g-dev pkg-config cmake make g++
          bpftool iproute2 iptables nftables linux-perf
          dpkg-dev systemd systemd-container python3 groff-base
          etcd-server etcd-client openssl prometheus)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  # etcd-server and prometheus start servers (127.0.0.1:2379, :9090) when installed.
  # connrate uses neither: its tests and demo start their own etcd members on free
  # ports, and only promtool is wanted. Keep package services from starting while
  # installing (policy-rc.d 101 = "do not start"); a policy already there is left alone.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The packaged etcd and prometheus services are not used: disable them (and stop
# them if they run), so nothing is left listening on the host.
for svc in etcd prometheus; do
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    if systemctl is-enabled --quiet "$svc" 2>/dev/null || systemctl is-active --quiet "$svc" 2>/dev/null; then
      echo "setup: stopping and disabling the packaged $svc service"
      systemctl disable --now "$svc" >/dev/null 2>&1 || true
    fi
  else
    systemctl disable "$svc" >/dev/null 2>&1 || true
    if [ -x "/etc/init.d/$svc" ] && "/etc/init.d/$svc" status >/dev/null 2>&1; then
      echo "setup: stopping the packaged $svc service"
      "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
    fi
  fi
done

# BPF objects are pinned under /sys/fs/bpf; mount bpffs if nothing is there.
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

npm ci --no-audit --no-fund
npm run build
