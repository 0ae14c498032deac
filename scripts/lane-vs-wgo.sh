#!/usr/bin/env bash
# iperf3 TCP single-stream throughput through demux + 1 lane, and through
# one plain wireguard-go tunnel over the same kind of links (the bench
# harness's baseline: bench topology --baseline wgo), in the same run,
# alternating, RUNS times each; prints each run and medians.
#
#   scripts/lane-vs-wgo.sh [RUNS] [SECONDS]     (root; `make compare`)
#
# wireguard-go is bin/wireguard-go, built by `make bench-tools` at the
# version go.mod pins (the one embedded in the gateway).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
SECS=${2:-5}
[ "$(id -u)" -eq 0 ] || { echo "needs root" >&2; exit 1; }
[ -x bin/wireguard-go ] || { echo "needs bin/wireguard-go (make bench-tools)" >&2; exit 1; }

W=$(mktemp -d /tmp/clusterpeer-compare.XXXXXX)
cleanup() {
  [ -f "$W/iperf.pid" ] && kill "$(cat "$W/iperf.pid")" 2>/dev/null || true
  bin/bench topology down --prefix cpcmp --work "$W/lane"
  bin/bench topology down --prefix cpcmw --work "$W/wgo"
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bin/bench topology up --prefix cpcmp --lanes 1 --work "$W/lane"
bin/bench topology up --prefix cpcmw --lanes 1 --baseline wgo --work "$W/wgo"

gbps() { # PREFIX: host-a to host-b
  ip netns exec "$1-hb" iperf3 -s -1 -D --pidfile "$W/iperf.pid" >/dev/null
  sleep 0.3
  ip netns exec "$1-ha" iperf3 -c 10.2.0.10 -t "$SECS" -f g | awk '/receiver/ {print $(NF-2)}'
}
ours=() wgo=()
for r in $(seq "$RUNS"); do
  o=$(gbps cpcmp)
  g=$(gbps cpcmw)
  ours+=("$o"); wgo+=("$g")
  echo "run $r: demux+1 lane ${o} Gbit/s   wireguard-go ${g} Gbit/s"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mo=$(median "${ours[@]}"); mg=$(median "${wgo[@]}")
echo "compare: runs=$RUNS seconds=$SECS lane_gbps=$mo wgo_gbps=$mg ratio=$(awk -v a="$mo" -v b="$mg" 'BEGIN {printf "%.2f", a / b}')"
