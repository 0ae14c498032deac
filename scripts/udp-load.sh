#!/usr/bin/env bash
# Many small UDP flows through a 3-lane peering: what the demux drops at
# its TUN (the kernel's queue in front of a userspace demux that cannot
# keep up) and what the receiver lost, end to end. The speed issue's
# measure (docs/datapath.md).
#
#   [XDP=off|native] [QUEUES=N] scripts/udp-load.sh [PPS_PER_FLOW] [FLOWS] [SECONDS]   e.g. 1000 64 3
#
# QUEUES is the demuxes' TUN queues (0, the default: one per CPU). Prints
# one line:
#   udp-load: demux=userspace|xdp queues=N flows=N offered_pps=N sent=N received=N lost_pct=X tun_dropped=N
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "needs root" >&2; exit 1; }
RATE=${1:-1000} FLOWS=${2:-64} SECS=${3:-3} XDP=${XDP:-off} QUEUES=${QUEUES:-0}
P=cpudp
W=$(mktemp -d /tmp/clusterpeer-udp.XXXXXX)
RECV=
cleanup() {
  [ -n "$RECV" ] && kill "$RECV" 2>/dev/null || true
  bin/bench topology down --prefix $P --work "$W"
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
go build -o bin/ ./cmd/...
bin/bench topology down --prefix $P --work "$W"
bin/bench topology up --prefix $P --lanes 3 --xdp "$XDP" --queues "$QUEUES" --work "$W" >/dev/null
tun_dropped() { ip netns exec $P-da cat /sys/class/net/cpdemux/statistics/tx_dropped; }
before=$(tun_dropped)
ip netns exec $P-hb bin/flows recv --listen 10.2.0.10:7000 --idle 2s >"$W/recv.txt" &
RECV=$!
sleep 0.3
ip netns exec $P-ha timeout $((SECS + 30)) bin/flows send --dst 10.2.0.10:7000 --flows "$FLOWS" --rate "$RATE" --duration "${SECS}s" >"$W/send.txt"
wait "$RECV" || true
RECV=
dropped=$(( $(tun_dropped) - before ))
sent=$(awk '/^sent / {print $2 * $5}' "$W/send.txt")
received=$(awk '/^flow / {n += $6} END {print n + 0}' "$W/recv.txt")
lost=$(( sent - received ))
demux=userspace
[ "$XDP" != off ] && demux=xdp
queues=$(ip netns exec $P-da ls /sys/class/net/cpdemux/queues | grep -c '^tx-')
echo "udp-load: demux=$demux queues=$queues flows=$FLOWS offered_pps=$(( FLOWS * RATE )) sent=$sent received=$received lost_pct=$(awk -v l=$lost -v s=$sent 'BEGIN {printf "%.2f", 100 * l / s}') tun_dropped=$dropped"
