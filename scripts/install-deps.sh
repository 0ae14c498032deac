#!/usr/bin/env bash
# Installs the Debian packages that clusterpeer's demo, tests and benchmarks
# use, when they are missing. Idempotent: does nothing when all are present.
# Without root it only says what is missing (root-only tests then skip).
set -euo pipefail

pkgs=(
  iperf3          # throughput across the data path (demo, bench)
  wireguard-tools # wg: configures the stock interop peer
  wireguard-go    # the stock userspace WireGuard peer for interop tests
  iproute2        # ip netns / link / addr in scripts
  ethtool         # offload settings on veth (XDP needs tx checksum off)
  iputils-ping    # ping across the peering in tests and troubleshooting
  openssl         # hash keys in the demo topology
  tshark          # an independent decoder checks our GENEVE on the wire (tests)
  keepalived      # VRRP for the active/standby demux pair (HA tests, make failover)
  nftables        # fault injection: one-way loss and blackholes in the failover scenarios
  etcd-server     # the membership store (discovery: etcd) in tests and make membership
  prometheus      # promtool: lints live scrapes, checks and unit-tests the alerting rules (deploy/)
  lintian         # checks the Debian package make package builds
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing ${missing[*]} (not root: run 'sudo apt-get install ${missing[*]}'; root-only tests will skip)" >&2
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Packages with a service (prometheus, etcd-server, keepalived) would start
# it on install; only their programs are wanted. A policy-rc.d that says
# no is how Debian keeps maintainer scripts from starting services; one
# the machine has already is left as it is.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
