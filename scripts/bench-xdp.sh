#!/usr/bin/env bash
# Measures the demux's three ways of forwarding on one topology, in one run:
# the XDP fast path, the userspace demux (--xdp=off) and plain kernel
# ip_forward (no demux, no GENEVE), with iperf3 as the traffic.
#
#   src (10.8.0.1) --lan-- demux (10.8.0.2 | 10.9.0.1) --wan-- sink (10.9.0.2, .21-.23)
#     |                                                          | XDP strips GENEVE
#     +------------------------- back (10.7.0.0/24) -------------+ 10.2.0.10: iperf3 -s
#
# src sends to 10.2.0.10 through the demux. The demux sends each flow inside
# GENEVE to one of three "gateways" (addresses of sink) over the wan link
# (XDP_REDIRECT through a devmap), or, for kernel-forward, routes the plain
# packet to sink. sink strips GENEVE in XDP (`demux xdp-pass --geneve-sink`)
# and answers over the back link.
#
#   bench-xdp.sh BINDIR [SECONDS] [RUNS]    # prints one `xdp:` line per path and size
#
# UDP figures are what iperf3's receiver got (sent minus lost) per second;
# pkt is the IP packet size. TCP is iperf3's received throughput, 4 streams.
# Medians of RUNS runs.
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
nsx sink ip route add 10.8.0.0/24 via 10.7.0.1
# Native XDP on veths: redirected frames arrive only at a peer running an
# XDP program (here one that also strips GENEVE, standing in for the
# gateways: this kernel has no geneve module); a native program cannot
# finish partial checksums.
ip netns exec "$(ns sink)" "$bin/demux" xdp-pass --dev wan0 --geneve-sink
nsx src ethtool -K lan0 tx off >/dev/null
for d in 10.9.0.2 10.9.0.21 10.9.0.22 10.9.0.23; do nsx demux ping -c1 -W2 -q $d >/dev/null; done
nsx src ping -c1 -W2 -q 10.8.0.2 >/dev/null

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

nsx sink iperf3 -s -p 5201 >/dev/null 2>&1 &
pids+=($!)
sleep 0.3

# measure PATH: one iperf3 run per size; prints "udp64 udp1400 tcp" results as "mpps gbps".
measure() {
  local pkt out
  for pkt in 64 1400; do
    out=$(nsx src timeout $((secs + 5)) iperf3 -c 10.2.0.10 -u -b 0 -l $((pkt - 28)) -t "$secs" -P 2 -J 2>/dev/null || true)
    python3 -c '
import json,sys
pkt=int(sys.argv[1])
try:
    d=None
    d=json.loads(sys.stdin.read()); s=d["end"]["sum"]
    got=s["packets"]-s["lost_packets"]; secs=s["seconds"]
    print("%.4f %.4f" % (got/secs/1e6, got*pkt*8/secs/1e9))
except Exception as e:
    print("bench-xdp: udp %d B: no result (%s): %s" % (pkt, e, d.get("error", "") if isinstance(d, dict) else ""), file=sys.stderr)
    print("0 0")
' "$pkt" <<<"$out"
  done
  out=$(nsx src timeout $((secs + 15)) iperf3 -c 10.2.0.10 -t "$secs" -P 4 -J 2>/dev/null || true)
  python3 -c '
import json,sys
try:
    d=json.loads(sys.stdin.read()); bps=d["end"]["sum_received"]["bits_per_second"]
    print("%.4f %.4f" % (bps/8/1420/1e6, bps/1e9))
except Exception:
    print("0 0")
' <<<"$out"
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
    mapfile -t lines < <(measure)
    echo "$path 64 ${lines[0]}" >>"$results"
    echo "$path 1400 ${lines[1]}" >>"$results"
    echo "$path tcp ${lines[2]}" >>"$results"
    case $path in
      kernel-forward) nsx demux ip route del 10.2.0.0/16 via 10.9.0.2 ;;
      *) [ "$path" = xdp ] && "$bin/demux" show --config "$work/peering.yaml" --node demux-a | grep "xdp" >&2; stop_demux ;;
    esac
  done
done

python3 - "$results" <<'EOF'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
med = {}
for path in ("xdp", "userspace", "kernel-forward"):
    for size in ("64", "1400", "tcp"):
        vals = [(float(r[2]), float(r[3])) for r in rows if r[0] == path and r[1] == size]
        m = (statistics.median(v[0] for v in vals), statistics.median(v[1] for v in vals))
        med[path, size] = m
        pkt = "1420" if size == "tcp" else size
        proto = "tcp" if size == "tcp" else "udp"
        print(f"xdp: path={path} pkt={pkt} mpps={m[0]:.2f} gbps={m[1]:.2f} proto={proto}")
for size in ("64", "1400", "tcp"):
    x, u, k = med["xdp", size][0], med["userspace", size][0], med["kernel-forward", size][0]
    print(f"xdp: ratio {size}: xdp/kernel-forward={x / k if k else 0:.2f} xdp/userspace={x / u if u else 0:.2f}")
EOF
