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
          bpftool iproute2 iptables nftables linux-perf)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

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
fi

# BPF objects are pinned under /sys/fs/bpf; mount bpffs if nothing is there.
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

npm ci --no-audit --no-fund
npm run build
