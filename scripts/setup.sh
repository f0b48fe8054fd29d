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

# BPF objects are pinned under /sys/fs/bpf; mount bpffs if nothing is there.
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

npm ci --no-audit --no-fund
npm run build
