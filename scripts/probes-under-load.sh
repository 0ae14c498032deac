#!/usr/bin/env bash
# Counts lanes taken down falsely while nothing fails but the CPU is
# saturated: iperf3 TCP, 8 streams each way through a 3-lane peering.
# This is how the default probe timers were chosen (docs/health.md).
#
#   scripts/probes-under-load.sh [HEALTH] [RUNS]   e.g. '{interval: 10ms, detect_multiplier: 3}' 3
#
# Prints one line per run: the transitions to down logged by both demuxes.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "needs root" >&2; exit 1; }
HEALTH=${1:-} RUNS=${2:-3}
P=cpload
W=$(mktemp -d /tmp/clusterpeer-load.XXXXXX)
cleanup() {
  [ -f "$W/iperf3.pid" ] && kill "$(cat "$W/iperf3.pid")" 2>/dev/null || true
  bin/bench topology down --prefix $P --work "$W"
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
go build -o bin/ ./cmd/...
for run in $(seq "$RUNS"); do
  bin/bench topology down --prefix $P --work "$W"
  bin/bench topology up --prefix $P --lanes 3 --health "$HEALTH" --work "$W"
  ip netns exec $P-hb iperf3 -s -D --pidfile "$W/iperf3.pid"
  sleep 0.3
  a=$(ip netns exec $P-ha timeout 30 iperf3 -c 10.2.0.10 -P 8 -t 10 -f g | awk '/SUM.*receiver/ {print $6}')
  b=$(ip netns exec $P-ha timeout 30 iperf3 -c 10.2.0.10 -P 8 -t 5 -R -f g | awk '/SUM.*receiver/ {print $6}')
  kill "$(cat "$W/iperf3.pid")" 2>/dev/null || true
  rm -f "$W/iperf3.pid"
  echo "probes-under-load: health=${HEALTH:-defaults} run=$run gbps_ab=$a gbps_ba=$b false_downs=$(cat "$W"/demux-*.log | grep -c 'lane down' || true)"
  grep -h "lane down" "$W"/demux-*.log | sed -E 's/.*node=([^ ]+) lane=([0-9]+).*reason="([^"]*)".*/  \1 lane \2: \3/' || true
done
