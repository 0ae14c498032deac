#!/usr/bin/env bash
# The README's first command (`make demo`): a peering of two networks with
# a demux each and three lanes, in network namespaces on this machine;
# ping and iperf3 across it; which lane carried each flow; then everything
# is removed again, also on Ctrl-C or failure.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "demo: needs root (network namespaces, TUN devices)" >&2; exit 1; }
command -v iperf3 >/dev/null || { echo "demo: iperf3 missing (make deps)" >&2; exit 1; }

P=cpdemo
LANES=3
BIN=$PWD/bin
W=$(mktemp -d /tmp/clusterpeer-demo.XXXXXX)
extra_pids=()
cleanup() {
  for p in "${extra_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$W/iperf3.pid" ] && kill "$(cat "$W/iperf3.pid")" 2>/dev/null || true
  echo "removing namespaces and processes ..."
  "$BIN/bench" topology down --prefix $P --work "$W"
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
nsx() { local n=$1; shift; ip netns exec "$P-$n" "$@"; }

cat <<'PIC'
clusterpeer demo: two networks, a demux each, 3 lanes (gateway pairs
with a WireGuard tunnel each), all in network namespaces on this machine.

  network A 10.1.0.0/16 fd00:a::/64             network B 10.2.0.0/16 fd00:b::/64

  host-a --> demux-a --GENEVE--> gw-a1 ==lane 1== gw-b1 --> host-b
             (flow hash,   -->   gw-a2 ==lane 2== gw-b2
              Maglev)      -->   gw-a3 ==lane 3== gw-b3
  host-a <-- gw-a* <== lanes ==  gw-b* <--GENEVE-- demux-b <-- host-b

PIC
start=$(date +%s%N)
echo "setting up namespaces, keys, config ($W/peering.yaml) and 8 processes ..."
store=()  # DISCOVERY=etcd: lane 3's gateways join through an etcd the demo runs
[ "${DISCOVERY:-static}" = etcd ] && store=(--etcd 1 --joined 1)
"$BIN/bench" topology up --prefix $P --lanes $LANES --bin "$BIN" --work "$W" --xdp "${XDP:-off}" "${store[@]}"
printf "up in %.1f s\n\n" "$(awk -v a="$start" -v b="$(date +%s%N)" 'BEGIN {print (b - a) / 1e9}')"

for pair in "ha 10.2.0.10" "ha fd00:b::10" "hb 10.1.0.10" "hb fd00:a::10"; do
  set -- $pair
  if nsx "$1" ping -c 3 -i 0.2 -W 2 -q "$2" >/dev/null; then r=ok; else r=FAILED; fi
  printf "ping %-6s -> %-11s %s\n" "host-${1#h}" "$2" "$r"
  [ $r = ok ] || { echo "demo: ping failed; logs are in $W" >&2; exit 1; }
done

# Which lane delivers a packet to host-b: the source MAC of gw-bN.
lanes=()
for i in $(seq $LANES); do lanes+=(--lane "$i=$(nsx gb$i cat /sys/class/net/lan0/address)"); done
ip netns exec $P-hb "$BIN/lanewatch" --iface lan0 "${lanes[@]}" --json "$W/lanes.json" --ready "$W/watching" >"$W/lanewatch.txt" &
watch_pid=$!
extra_pids+=($watch_pid)
for _ in $(seq 50); do [ -e "$W/watching" ] && break; sleep 0.1; done

nsx hb iperf3 -s -D --pidfile "$W/iperf3.pid" -1 >/dev/null
sleep 0.3
echo
echo "iperf3 TCP, 8 streams, 5 s, host-a -> host-b:"
nsx ha iperf3 -c 10.2.0.10 -P 8 -t 5 -f g | grep -E 'SUM.*(sender|receiver)' | sed 's/^/  /'
nsx hb iperf3 -s -D --pidfile "$W/iperf3.pid" -1 >/dev/null
sleep 0.3
echo "iperf3 UDP, 4 streams at 50 Mbit/s each, 3 s, host-a -> host-b:"
nsx ha iperf3 -c 10.2.0.10 -u -b 50M -l 1200 -P 4 -t 3 -f g | grep -E 'SUM.*receiver' | sed 's/^/  /'

kill -TERM $watch_pid
wait $watch_pid || true
echo
echo "flows arriving at host-b, by the lane (gateway MAC) that delivered them:"
sed 's/^/  /' "$W/lanewatch.txt"

# Failover: 24 UDP flows at 1000 packets/s each; gw-a2 is killed a second
# in. The demuxes' probes notice, lane 2's flows move to lanes 1 and 3.
echo
echo "failover: 24 UDP flows at 1000 pkt/s each; SIGKILL gw-a2 after 1 s:"
nsx hb "$BIN/flows" recv --listen 10.2.0.10:7000 --idle 500ms >"$W/flows.txt" &
recv_pid=$!
extra_pids+=($recv_pid)
sleep 0.3
nsx ha "$BIN/flows" send --dst 10.2.0.10:7000 --flows 24 --rate 1000 --duration 3s >/dev/null &
send_pid=$!
extra_pids+=($send_pid)
sleep 1
kill -KILL "$(cat "$W/gw-a2.pid")"
wait $send_pid
wait $recv_pid || true
grep -h 'lane down' "$W/demux-a.log" "$W/demux-b.log" | sed -E 's/^time=[^ ]+ level=[A-Z]+ msg="lane down" node=([^ ]+) (.*) table_swap=.*/  \1: lane down, \2/'
awk '/^flow / {g = $(NF-1) + 0; n++; if (g > 20) {hit++; if (g > max) max = g} else if (g > other) other = g}
  /^flows=/ {print "  " $0}
  END {printf "  %d of %d flows (lane 2'"'"'s) stopped for at most %.1f ms, then the other lanes carried them;\n  the other flows'"'"' longest gap was %.1f ms\n", hit, n, max, other}' "$W/flows.txt"
if [ ${#store[@]} -gt 0 ]; then
  # A new instance replaces gw-a3: a new key, new addresses, its slot; no
  # file changes, no restart of anything else.
  echo
  echo "replace gw-a3 live: SIGKILL it, start a new instance (new key, 10.1.0.123, 198.18.3.11) in slot 3:"
  kill -KILL "$(cat "$W/gw-a3.pid")"
  (umask 077; "$BIN/tunnel" genkey >"$W/gw-a3-new.key")
  nsx ga3 ip addr add 10.1.0.123/24 dev lan0
  nsx ga3 ip addr add 198.18.3.11/24 dev wan0
  t0=$(date +%s%N)
  # ip netns exec directly (not nsx, a function): $! is then the gateway's
  # own pid, which topology down stops.
  ip netns exec $P-ga3 "$BIN/tunnel" join --config "$W/peering.yaml" --node gw-a3 --side a --slot 3 --geneve 10.1.0.123 \
    --endpoint 198.18.3.11 --private-key "$W/gw-a3-new.key" --tun $P-ga3 >>"$W/gw-a3.log" 2>&1 &
  echo $! >>"$W/pids"
  for _ in $(seq 100); do
    "$BIN/demux" show --config "$W/peering.yaml" --node demux-a |
      awk '/^lane 3: up/ {l = 1} /^$/ {l = 0} l && /gateway: gw-a3 \(10.1.0.123/ {ok = 1} END {exit !ok}' && break
    sleep 0.05
  done
  printf "  lane 3 up through the new gw-a3 after %.0f ms\n" "$(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN {print (b - a) / 1e6}')"
  "$BIN/demux" members --config "$W/peering.yaml" | sed 's/^./  &/'
fi
echo
"$BIN/demux" show --config "$W/peering.yaml" --node demux-a
echo
if grep -q "stayed on one lane" "$W/lanewatch.txt" && grep -q 'reordered=0 ' "$W/flows.txt"; then
  echo "demo: ok"
else
  echo "demo: a flow changed lanes or was reordered; see $W/lanes.json and $W/flows.txt" >&2
  exit 1
fi
