#!/usr/bin/env bash
# Measures the demux's three ways of forwarding on one topology, in one run:
# the XDP fast path, the userspace demux (--xdp=off) and plain kernel
# ip_forward (no demux, no GENEVE). UDP load comes from `bench blast` (an
# XDP live-frames generator: iperf3's one sending thread stops near 0.16
# Mpps whatever the size), TCP from iperf3.
#
#   src (10.8.0.1) --lan-- demux (10.8.0.2 | 10.9.0.1) --wan-- sink (10.9.0.2, .21-.23)
#     |                                                          | XDP strips GENEVE
#     +------------------------- back (10.7.0.0/24) -------------+ 10.2.0.10: iperf3 -s
#
# src sends to 10.2.0.10 through the demux. The demux sends each flow inside
# GENEVE to one of three "gateways" (addresses of sink) over the wan link
# (XDP_REDIRECT through a devmap), or, for kernel-forward, routes the plain
# packet to sink. sink strips GENEVE in XDP (`bench sink`)
# and answers over the back link; UDP to the discard port (the generator's)
# it counts and drops there, and those counts are the UDP figures.
#
#   bench-xdp.sh BINDIR [SECONDS] [RUNS]    # prints one `xdp:` line per path and size
#
# UDP figures are the packets that reached the sink per second of sending
# (256 flows, offered at what one CPU generates); pkt is the IP packet size.
# TCP is iperf3's received throughput, 4 streams. Medians of RUNS runs.
set -euo pipefail
bin=${1:?usage: bench-xdp.sh BINDIR [SECONDS] [RUNS]}
secs=${2:-5}
runs=${3:-3}
P=cpbx$$
work=$(mktemp -d /tmp/bench-xdp.XXXXXX)
pids=()

ns() { echo "$P-$1"; }
nsx() { local n=$1; shift; ip netns exec "$(ns "$n")" "$@"; }
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  for n in src demux sink; do ip netns del "$(ns $n)" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

for n in src demux sink; do
  ip netns add "$(ns $n)"
  nsx $n ip link set lo up
  nsx $n sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
done
ip link add lan0 netns "$(ns src)" type veth peer name lan0 netns "$(ns demux)"
ip link add wan0 netns "$(ns demux)" type veth peer name wan0 netns "$(ns sink)"
ip link add back0 netns "$(ns src)" type veth peer name back0 netns "$(ns sink)"
nsx src ip addr add 10.8.0.1/24 dev lan0
nsx src ip addr add 10.7.0.1/24 dev back0
nsx demux ip addr add 10.8.0.2/24 dev lan0
nsx demux ip addr add 10.9.0.1/24 dev wan0
nsx sink ip addr add 10.9.0.2/24 dev wan0
for i in 1 2 3; do nsx sink ip addr add 10.9.0.2$i/24 dev wan0; done
nsx sink ip addr add 10.7.0.2/24 dev back0
for n in src demux sink; do for d in lan0 wan0 back0; do nsx $n ip link set $d up 2>/dev/null || true; done; done
nsx src ip link set lan0 mtu 1420
nsx src ip route add 10.2.0.0/16 via 10.8.0.2
# The destination, on sink.
nsx sink ip addr add 10.2.0.10/32 dev lo
# Answers leave from 10.2.0.10: iperf3's UDP sockets are connected to it,
# and a reply from the back link's own address would match no socket.
nsx sink ip route add 10.8.0.0/24 via 10.7.0.1 src 10.2.0.10
# Native XDP on veths: redirected frames arrive only at a peer running an
# XDP program (here one that also strips GENEVE, standing in for the
# gateways: this kernel has no geneve module); a native program cannot
# finish partial checksums.
ip netns exec "$(ns sink)" "$bin/bench" sink --dev wan0
nsx src ethtool -K lan0 tx off >/dev/null
for d in 10.9.0.2 10.9.0.21 10.9.0.22 10.9.0.23; do nsx demux ping -c1 -W2 -q $d >/dev/null; done
nsx src ping -c1 -W2 -q 10.8.0.2 >/dev/null
lan_mac=$(nsx demux cat /sys/class/net/lan0/address)

(umask 077; head -c16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/hash.key")
{
  echo "name: benchxdp"
  echo "vni: 4242"
  echo "mtu: 1420"
  echo "hash: {key_file: hash.key, mode: 5-tuple, symmetric: true}"
  echo "health: {enabled: false}"
  echo "networks:"
  echo "  a: {prefixes: [10.8.0.0/16], demux: {name: demux-a, addresses: [10.8.0.2], tun: cpbench}}"
  echo "  b: {prefixes: [10.2.0.0/16], demux: {name: demux-b, addresses: [10.2.0.2], tun: cpbench}}"
  echo "lanes:"
  for i in 1 2 3; do
    echo "  - id: $i"
    for s in a b; do
      (umask 077; "$bin/tunnel" genkey >"$work/gw-$s$i.key")
      g=10.9.0.2$i
    [ $s = b ] && g=10.2.0.2$i
    echo "    $s: {name: gw-$s$i, geneve: \"$g:6081\", endpoint: \"198.18.$i.$([ $s = a ] && echo 1 || echo 2):51820\", public_key: $("$bin/tunnel" pubkey <"$work/gw-$s$i.key"), private_key_file: gw-$s$i.key, tun: cpbg$s$i}"
    done
  done
} >"$work/peering.yaml"
"$bin/demux" check --config "$work/peering.yaml" >/dev/null

demux_pid=
start_demux() { # xdp mode
  ip netns exec "$(ns demux)" "$bin/demux" up --config "$work/peering.yaml" --node demux-a --xdp "$1" >"$work/demux-$1.log" 2>&1 &
  demux_pid=$!
  pids+=("$demux_pid")
  for _ in $(seq 100); do
    [ -S /run/clusterpeer/benchxdp-demux-a.sock ] && break
    sleep 0.1
  done
  if [ "$1" != off ]; then
    for _ in $(seq 50); do
      grep -q "fast path attached" "$work/demux-$1.log" && grep -q "lane gateway resolved" "$work/demux-$1.log" && break
      sleep 0.1
    done
  fi
}
stop_demux() {
  kill "$demux_pid"
  wait "$demux_pid" 2>/dev/null || true
}

# Not through nsx: $! of a backgrounded function is its subshell, not iperf3.
ip netns exec "$(ns sink)" iperf3 -s -p 5201 >/dev/null 2>&1 &
pids+=($!)
sleep 0.3

# xdp_drops: what the sink's XDP program has counted and dropped (the
# generator's UDP to the discard port), summed over wan0's queues.
xdp_drops() {
  nsx sink ethtool -S wan0 | awk '/rx_queue_[0-9]+_xdp_drops:/ {n += $2} END {print n + 0}'
}

# udp PATH PKT: `bench blast` offers PKT-byte UDP packets (256 flows) out
# of src at what one CPU can generate; prints "mpps gbps" of what reached
# the sink. The generator's frames arrive at the demux as XDP frames, so
# for the paths without the demux's program lan0 gets a pass-all one.
udp() {
  local path=$1 pkt=$2 before after out rc=0
  [ "$path" = xdp ] || ip netns exec "$(ns demux)" "$bin/demux" xdp-pass --dev lan0
  before=$(xdp_drops)
  out=$(nsx src timeout $((secs + 30)) "$bin/bench" blast --dev lan0 --dst-mac "$lan_mac" --dst 10.2.0.10 \
    --size "$pkt" --flows 256 --duration "${secs}s" 2>&1) || rc=$?
  sleep 0.5 # what the userspace demux still has queued
  after=$(xdp_drops)
  [ "$path" = xdp ] || ip netns exec "$(ns demux)" "$bin/demux" xdp-pass --dev lan0 --off
  if [ "$rc" != 0 ]; then
    echo "bench-xdp: $path udp $pkt B: blast failed ($rc): $out" >&2
    echo "0 0"
    return
  fi
  echo "bench-xdp: $path udp $pkt B: $out received=$((after - before))" >&2
  awk -v got="$((after - before))" -v pkt="$pkt" -v secs="$(sed -n 's/.*seconds=\([0-9.]*\).*/\1/p' <<<"$out")" \
    'BEGIN { if (secs > 0) printf "%.4f %.4f\n", got / secs / 1e6, got * pkt * 8 / secs / 1e9; else print "0 0" }'
}

# tcp: iperf3, 4 streams, through the path; prints "mpps gbps" received.
tcp() {
  local out
  out=$(nsx src timeout $((secs + 15)) iperf3 -c 10.2.0.10 -t "$secs" -P 4 -J 2>/dev/null || true)
  "$bin/bench" iperf-rate <<<"$out"
}

# measure PATH: prints "udp64 udp1400 tcp" results, one "mpps gbps" per line.
measure() {
  udp "$1" 64
  udp "$1" 1400
  tcp
}

results=$work/results
: >"$results"
for r in $(seq "$runs"); do
  for path in xdp userspace kernel-forward; do
    case $path in
      xdp) start_demux native ;;
      userspace) start_demux off ;;
      kernel-forward) nsx demux ip route add 10.2.0.0/16 via 10.9.0.2 ;;
    esac
    echo "bench-xdp: run $r/$runs: $path" >&2
    mapfile -t lines < <(measure "$path")
    echo "$path 64 ${lines[0]}" >>"$results"
    echo "$path 1400 ${lines[1]}" >>"$results"
    echo "$path tcp ${lines[2]}" >>"$results"
    case $path in
      kernel-forward) nsx demux ip route del 10.2.0.0/16 via 10.9.0.2 ;;
      *) [ "$path" = xdp ] && "$bin/demux" show --config "$work/peering.yaml" --node demux-a | grep -E "^ +xdp" >&2; stop_demux ;;
    esac
  done
done

"$bin/bench" xdp-summary "$results"
