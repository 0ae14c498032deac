#!/usr/bin/env bash
# iperf3 TCP single-stream throughput through demux + 1 lane, and through
# plain upstream wireguard-go point to point between two namespaces, in
# the same run, alternating, RUNS times each; prints each run and medians.
#
#   scripts/lane-vs-wgo.sh [RUNS] [SECONDS]     (root; `make compare`)
#
# Upstream wireguard-go is built from the Go module proxy at WGO_VERSION.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
SECS=${2:-5}
WGO_VERSION=${WGO_VERSION:-latest}
[ "$(id -u)" -eq 0 ] || { echo "needs root" >&2; exit 1; }

W=$(mktemp -d /tmp/clusterpeer-compare.XXXXXX)
P=cpcmp
cleanup() {
  [ -f "$W/iperf.pid" ] && kill "$(cat "$W/iperf.pid")" 2>/dev/null || true
  [ -f "$W/wgo.pids" ] && while read -r p; do kill "$p" 2>/dev/null || true; done <"$W/wgo.pids"
  ip netns del $P-w1 2>/dev/null || true
  ip netns del $P-w2 2>/dev/null || true
  scripts/topology.sh down $P "$W/topo" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "building upstream wireguard-go ($WGO_VERSION) from the module proxy ..."
GOBIN=$W go install "golang.zx2c4.com/wireguard@$WGO_VERSION"
go build -o bin/ ./cmd/...

# Plain wireguard-go: two namespaces, one veth, one tunnel.
ip netns add $P-w1
ip netns add $P-w2
ip link add veth0 netns $P-w1 type veth peer name veth0 netns $P-w2
for i in 1 2; do
  ip -n $P-w$i link set lo up
  ip -n $P-w$i addr add 198.19.0.$i/24 dev veth0
  ip -n $P-w$i link set veth0 up
  (umask 077; wg genkey >"$W/w$i.key")
done
: >"$W/wgo.pids"
for i in 1 2; do
  ip netns exec $P-w$i env WG_PROCESS_FOREGROUND=1 "$W/wireguard" -f cpwgo$i >"$W/wgo$i.log" 2>&1 &
  echo $! >>"$W/wgo.pids"
done
for i in 1 2; do
  for _ in $(seq 50); do ip -n $P-w$i link show cpwgo$i >/dev/null 2>&1 && break; sleep 0.1; done
  j=$((3 - i))
  ip netns exec $P-w$i wg set cpwgo$i private-key "$W/w$i.key" listen-port 51820 \
    peer "$(wg pubkey <"$W/w$j.key")" endpoint 198.19.0.$j:51820 allowed-ips 10.9.0.$j/32
  ip -n $P-w$i addr add 10.9.0.$i/24 dev cpwgo$i
  ip -n $P-w$i link set cpwgo$i mtu 1420 up
done

scripts/topology.sh up $P 1 "$PWD/bin" "$W/topo"

gbps() { # ns-client ns-server dst
  ip netns exec "$2" iperf3 -s -1 -D --pidfile "$W/iperf.pid" >/dev/null
  sleep 0.3
  ip netns exec "$1" iperf3 -c "$3" -t "$SECS" -f g | awk '/receiver/ {print $(NF-2)}'
}
ours=() wgo=()
for r in $(seq "$RUNS"); do
  o=$(gbps $P-ha $P-hb 10.2.0.10)
  g=$(gbps $P-w1 $P-w2 10.9.0.2)
  ours+=("$o"); wgo+=("$g")
  echo "run $r: demux+1 lane ${o} Gbit/s   upstream wireguard-go ${g} Gbit/s"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mo=$(median "${ours[@]}"); mg=$(median "${wgo[@]}")
echo "compare: runs=$RUNS seconds=$SECS lane_gbps=$mo wgo_gbps=$mg ratio=$(awk -v a="$mo" -v b="$mg" 'BEGIN {printf "%.2f", a / b}')"
