#!/usr/bin/env bash
# Install what connrate needs on Debian 12 (as root), then build it:
# the libbpf addon, the BPF objects and the TypeScript.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: run as root (it installs Debian packages and loads BPF programs)" >&2
  exit 1
fi

PACKAGES=(clang llvm libbpf-dev libelf-dev zlib1g-dev pkg-config cmake make g++
          bpftool iproute2 iptables nftables linux-perf
          etcd-server etcd-client openssl)
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
fi

# BPF objects are pinned under /sys/fs/bpf; mount bpffs if nothing is there.
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

npm ci --no-audit --no-fund
npm run build
