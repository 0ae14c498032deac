#!/usr/bin/env bash
# Builds (up) or removes (down) a clusterpeer peering in network namespaces:
#
#   network A (10.1.0.0/16, fd00:a::/64)            network B (10.2.0.0/16, fd00:b::/64)
#
#   host-a --+                                          +-- host-b
#            | LAN A bridge                LAN B bridge |
#   demux-a -+-- gw-a1 ===== lane 1 (WireGuard) ===== gw-b1 --+- demux-b
#            +-- gw-a2 ===== lane 2 ===================== gw-b2 --+
#            +-- gw-a3 ===== lane 3 ===================== gw-b3 --+
#
# host-a routes network B to demux-a, which spreads flows over the lanes
# (GENEVE to gw-aN); gw-bN delivers to host-b. The way back is the mirror
# image through demux-b. Each lane has its own underlay veth, 198.18.N.0/24
# and fd00:1:N::/64.
#
#   topology.sh up   PREFIX LANES BINDIR WORKDIR   # prints nothing but errors; ready when it returns
#     STOCK_B1=1: gw-b1 is Debian's stock wireguard-go configured with `wg`
#     instead of our tunnel (interop), and host-b routes network A to gw-b1
#     directly, so both directions cross the stock peer.
#     UNDERLAY6=1: GENEVE and WireGuard run over IPv6 (the inner traffic is
#     still IPv4 and IPv6).
#     HEALTH='{interval: 10ms, ...}': the config's health section.
#   topology.sh down PREFIX WORKDIR                # removes namespaces, stops processes
#
#     XDP=native|generic|off (default off): the demuxes' fast path. For
#     native XDP on veths, the demux LAN ports on the switch run a pass-all
#     XDP program (XDP_TX'd frames arrive only at a peer that runs one) and
#     the hosts send with checksum offload off (a native program on a veth
#     cannot finish partial checksums); generic mode needs the hosts'
#     TSO/GSO off. docs/xdp.md has the kernel facts behind this.
#     RPS=1: every interface in the namespaces steers each flow to one CPU
#     (rps_cpus), as a NIC's RSS queues would. Without it a veth queues a
#     received packet on the sending CPU, and a packet left behind on a busy
#     CPU can arrive after the next one, sent from the other (docs/xdp.md).
#     HA=1: network A has two demuxes, demux-a and its standby demux-a2
#     (namespace -da2, 10.1.0.3, fd00:a::3), with keepalived on both (the
#     config from `demux keepalived`) moving the VIPs 10.1.0.1 and
#     fd00:a::1, which host-a routes network B to. Their notify hook
#     appends its calls to WORKDIR/ha-notify.log.
#     DEMUX_LANES=N: the demuxes run WORKDIR/demux.yaml, which lists only the
#     first N lanes (more join by editing it and `demux reload`).
#     BASELINE=kernel|wgo (LANES must be 1; the benchmark's baselines): no
#     demux and no clusterpeer tunnel. The hosts route the other network
#     through gw-a1/gw-b1, which either forward in the kernel without
#     encryption (kernel) or run one plain WireGuard tunnel with the
#     wireguard-go binary WGO, configured with `wg` (wgo), over the same
#     links as lane 1.
#
# Namespaces are PREFIX-ha, -da, -gaN, -gbN, -db, -hb, -swa, -swb (and -da2). Process
# ids go to WORKDIR/pids (and WORKDIR/NODE.pid), logs to WORKDIR/*.log,
# config and keys to WORKDIR.
# Only processes listed in WORKDIR/pids are ever stopped.
set -euo pipefail

cmd=${1:?usage: topology.sh up|down PREFIX ...}
P=${2:?prefix}

ns() { echo "$P-$1"; }
nsx() { local n=$1; shift; ip netns exec "$(ns "$n")" "$@"; }

down() {
  local work=$1
  if [ -f "$work/pids" ]; then
    while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$work/pids"
    for _ in $(seq 50); do
      alive=0
      while read -r pid; do kill -0 "$pid" 2>/dev/null && alive=1; done <"$work/pids"
      [ $alive = 0 ] && break
      sleep 0.1
    done
    while read -r pid; do kill -9 "$pid" 2>/dev/null || true; done <"$work/pids"
    rm -f "$work/pids"
  fi
  if [ -f "$work/pids.children" ]; then
    while read -r pid; do
      grep -q keepalived "/proc/$pid/cmdline" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    done <"$work/pids.children"
    rm -f "$work/pids.children"
  fi
  for n in $(ip netns list | awk '{print $1}' | grep "^$P-" || true); do
    ip netns del "$n" 2>/dev/null || true
  done
  rm -f /run/clusterpeer/"$P"-*.sock
  # A gateway killed outright leaves its UAPI socket (`wg show` would
  # list a dead interface); the TUNs are named ${P:0:9}-gXN.
  rm -f /var/run/wireguard/"${P:0:9}"-g[ab][0-9]*.sock
}

lan_join() { # node side
  local node=$1 side=$2 sw
  sw=sw$side
  ip link add "$node" netns "$(ns "$sw")" type veth peer name lan0 netns "$(ns "$node")"
  nsx "$sw" ip link set "$node" master br0 up
  nsx "$node" ip link set lan0 up
}

addr() { # node ipv4/len ipv6/len
  nsx "$1" ip addr add "$2" dev lan0
  nsx "$1" ip -6 addr add "$3" dev lan0 nodad
}

node_ns() {
  ip netns add "$(ns "$1")"
  nsx "$1" ip link set lo up
  nsx "$1" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
}

# write_config LANES: the peering file for lanes 1..LANES (keys exist).
write_config() {
  echo "# Generated by scripts/topology.sh for namespaces $P-*."
  echo "name: $P"
  echo "vni: 4242"
  echo "mtu: 1420"
  echo "hash: {key_file: hash.key, mode: 5-tuple, symmetric: true}"
  [ -n "${HEALTH:-}" ] && echo "health: $HEALTH"
  echo "networks:"
  for s in a b; do
    local n=1
    [ $s = b ] && n=2
    echo "  $s:"
    echo "    prefixes: [10.$n.0.0/16, fd00:$s::/64]"
    echo "    demux: {name: demux-$s, addresses: [10.$n.0.2, fd00:$s::2], tun: cpdemux}"
    if [ $s = a ] && [ "${HA:-}" = 1 ]; then
      echo "    standby: {name: demux-a2, addresses: [10.1.0.3, fd00:a::3], tun: cpdemux}"
      echo "    ha: {vips: [10.1.0.1, fd00:a::1], interface: lan0, router_id: 42, notify: $work/ha-notify.sh}"
    fi
  done
  echo "lanes:"
  for i in $(seq "$1"); do
    echo "  - id: $i"
    for s in a b; do
      local n=1 w=1
      [ $s = b ] && n=2 && w=2
      echo "    $s:"
      echo "      name: gw-$s$i"
      if [ "${UNDERLAY6:-}" = 1 ]; then
        echo "      geneve: \"[fd00:$s::$((20 + i))]:6081\""
        echo "      endpoint: \"[fd00:1:$i::$w]:51820\""
      else
        echo "      geneve: 10.$n.0.$((20 + i)):6081"
        echo "      endpoint: 198.18.$i.$w:51820"
      fi
      echo "      public_key: $("$bin/tunnel" pubkey <"$work/gw-$s$i.key")"
      echo "      private_key_file: gw-$s$i.key"
      echo "      tun: ${P:0:9}-g$s$i"
    done
  done
}

up() {
  local lanes=$1 bin=$2 work=$3
  if ip netns list | awk '{print $1}' | grep -qx "$P-da"; then
    echo "topology: a peering $P-* exists already; remove it first (topology.sh down $P WORKDIR)" >&2
    exit 1
  fi
  mkdir -p "$work"
  chmod 700 "$work"
  : >"$work/pids"
  for s in a b; do
    node_ns sw$s
    nsx sw$s ip link add br0 type bridge
    nsx sw$s ip link set br0 up
    # A LAN switch does not run the host's iptables on bridged frames
    # (br_netfilter, where loaded, would in every namespace).
    nsx sw$s sysctl -qw net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0 \
      net.bridge.bridge-nf-call-arptables=0 2>/dev/null || true
  done
  for s in a b; do
    local n=1
    [ $s = b ] && n=2
    node_ns h$s; lan_join h$s $s; addr h$s 10.$n.0.10/24 fd00:$s::10/64
    node_ns d$s; lan_join d$s $s; addr d$s 10.$n.0.2/24 fd00:$s::2/64
    local demuxes=(d$s) via=10.$n.0.2 via6=fd00:$s::2
    if [ $s = a ] && [ "${HA:-}" = 1 ]; then
      node_ns da2; lan_join da2 a; addr da2 10.1.0.3/24 fd00:a::3/64
      demuxes+=(da2) via=10.1.0.1 via6=fd00:a::1
    fi
    case ${XDP:-off} in
      native)
        for d in "${demuxes[@]}"; do ip netns exec "$(ns sw$s)" "$bin/demux" xdp-pass --dev "$d"; done
        nsx h$s ethtool -K lan0 tx off >/dev/null ;;
      generic)
        nsx h$s ethtool -K lan0 tx off tso off gso off >/dev/null ;;
    esac
    nsx h$s ip route add 10.$((3 - n)).0.0/16 via $via
    nsx h$s ip -6 route add fd00:$( [ $s = a ] && echo b || echo a)::/64 via $via6
  done
  for i in $(seq "$lanes"); do
    for s in a b; do
      local n=1
      [ $s = b ] && n=2
      node_ns g$s$i; lan_join g$s$i $s; addr g$s$i 10.$n.0.$((20 + i))/24 fd00:$s::$((20 + i))/64
    done
    ip link add wan0 netns "$(ns ga$i)" type veth peer name wan0 netns "$(ns gb$i)"
    nsx ga$i ip addr add 198.18.$i.1/24 dev wan0
    nsx gb$i ip addr add 198.18.$i.2/24 dev wan0
    nsx ga$i ip -6 addr add fd00:1:$i::1/64 dev wan0 nodad
    nsx gb$i ip -6 addr add fd00:1:$i::2/64 dev wan0 nodad
    nsx ga$i ip link set wan0 up
    nsx gb$i ip link set wan0 up
  done
  # Resolve each underlay neighbour once now. On a fresh veth the kernel's
  # first IPv6 neighbour solicitation can go unanswered and is retried a
  # second later; a WireGuard handshake held up that long can cross its
  # peer's and stall the lane for WireGuard's 5-second retry.
  local warm=()
  for i in $(seq "$lanes"); do
    nsx ga$i ping -c 1 -W 3 -q 198.18.$i.2 >/dev/null 2>&1 & warm+=($!)
    nsx ga$i ping -6 -c 1 -W 3 -q fd00:1:$i::2 >/dev/null 2>&1 & warm+=($!)
  done
  wait "${warm[@]}" || true

  # Keys and config, generated fresh for every run.
  (umask 077; openssl rand -hex 16 >"$work/hash.key" 2>/dev/null || head -c16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/hash.key")
  for i in $(seq "$lanes"); do
    for s in a b; do (umask 077; "$bin/tunnel" genkey >"$work/gw-$s$i.key"); done
  done
  local cfg=$work/peering.yaml dcfg=$work/peering.yaml
  if [ "${HA:-}" = 1 ]; then
    # The HA pair's notify hook: records each call (cloud mode would
    # repoint a route table here).
    printf '%s\n' '#!/bin/sh' \
      'echo "$(date +%s.%N) $1 $2 $CLUSTERPEER_NODE $CLUSTERPEER_STATE vips=$CLUSTERPEER_VIPS remote=$CLUSTERPEER_REMOTE_PREFIXES" >>"$(dirname "$0")/ha-notify.log"' \
      >"$work/ha-notify.sh"
    chmod 700 "$work/ha-notify.sh"
  fi
  write_config "$lanes" >"$cfg"
  if [ -n "${DEMUX_LANES:-}" ]; then
    # The demuxes start with fewer lanes than there are gateways; the rest
    # join by reload (the add-lane scenario).
    dcfg=$work/demux.yaml
    write_config "$DEMUX_LANES" >"$dcfg"
  fi

  if [ -n "${BASELINE:-}" ]; then
    [ "$lanes" = 1 ] || { echo "topology: BASELINE needs exactly 1 lane" >&2; exit 1; }
    baseline "$work" "$BASELINE"
    return
  fi

  start() { # ns binary node [config]
    local extra=()
    [ "$2" = demux ] && extra=(--xdp "${XDP:-off}")
    ip netns exec "$(ns "$1")" "$bin/$2" up --config "${4:-$cfg}" --node "$3" --log-level "${LOG_LEVEL:-info}" "${extra[@]}" >"$work/$3.log" 2>&1 &
    echo $! >>"$work/pids"
    echo $! >"$work/$3.pid"
  }
  for i in $(seq "$lanes"); do
    start ga$i tunnel gw-a$i
    if [ "$i" = 1 ] && [ "${STOCK_B1:-}" = 1 ]; then
      stock_b1 "$work"
    else
      start gb$i tunnel gw-b$i
    fi
  done
  # A node is ready when its status socket answers. The demuxes start
  # once every gateway is: their first probes make the gateways open the
  # WireGuard sessions, and a handshake sent to a peer that is not yet
  # listening is retried only after 5 s.
  ready() {
    for node in "$@"; do
      for t in $(seq 100); do
        [ -S "/run/clusterpeer/$P-$node.sock" ] && break
        if [ "$t" = 100 ]; then echo "topology: $node did not start; its log:" >&2; cat "$work/$node.log" >&2; exit 1; fi
        sleep 0.1
      done
    done
  }
  ready $(for i in $(seq "$lanes"); do echo gw-a$i; [ "$i.${STOCK_B1:-}" = 1.1 ] || echo gw-b$i; done)
  start da demux demux-a "$dcfg"
  start db demux demux-b "$dcfg"
  ready demux-a demux-b
  local all_demuxes=(demux-a demux-b)
  if [ "${HA:-}" = 1 ]; then
    start da2 demux demux-a2 "$dcfg"
    ready demux-a2
    all_demuxes+=(demux-a2)
  fi
  # And when each demux's lanes are up: their probes crossed both gateways
  # and the tunnel. (demux-b never sees lane 1 up beside a stock gw-b1,
  # which takes no GENEVE; host-b bypasses demux-b then.)
  local want=${DEMUX_LANES:-$lanes}
  for d in "${all_demuxes[@]}"; do
    local need=$want
    [ "$d.${STOCK_B1:-}" = demux-b.1 ] && need=$((want - 1))
    for t in $(seq 100); do
      [ "$("$bin/demux" show --config "$dcfg" --node "$d" | grep -c '^lane [0-9]*: up')" -ge "$need" ] && break
      if [ "$t" = 100 ]; then
        echo "topology: $d's lanes did not come up:" >&2
        "$bin/demux" show --config "$dcfg" --node "$d" >&2
        exit 1
      fi
      sleep 0.1
    done
  done
  if [ "${RPS:-}" = 1 ]; then
    local all=$(( (1 << $(nproc)) - 1 ))
    for n in $(ip netns list | awk '{print $1}' | grep "^$P-"); do
      ip netns exec "$n" sh -c "for f in /sys/class/net/*/queues/rx-*/rps_cpus; do printf %x $all >\$f; done"
    done
  fi
  [ "${HA:-}" = 1 ] && ha_up "$dcfg"
  return 0
}

# ha_up CONFIG: keepalived beside demux-a and demux-a2, with the config
# `demux keepalived` writes; ready when one of them holds the VIPs.
ha_up() {
  local dcfg=$1
  for pair in da:demux-a da2:demux-a2; do
    local n=${pair%%:*} node=${pair#*:}
    "$bin/demux" keepalived --config "$dcfg" --node "$node" >"$work/keepalived-$node.conf"
    ip netns exec "$(ns "$n")" keepalived --vrrp --dont-fork --log-console --log-detail --no-syslog \
      -f "$work/keepalived-$node.conf" -p "$work/keepalived-$node.pid" -r "$work/keepalived-$node-vrrp.pid" \
      >"$work/keepalived-$node.log" 2>&1 &
    echo $! >>"$work/pids"
  done
  # The VRRP children, for down to end should their parent have died
  # without ending them (a parent ends and restarts its own).
  for node in demux-a demux-a2; do
    for _ in $(seq 50); do [ -s "$work/keepalived-$node-vrrp.pid" ] && break; sleep 0.1; done
    cat "$work/keepalived-$node-vrrp.pid" >>"$work/pids.children" 2>/dev/null || true
  done
  # Both start as backup: the first to time out takes the VIPs (demux-a,
  # unless its keepalived started late) and, without preemption, keeps them.
  for t in $(seq 100); do
    for n in da da2; do
      nsx $n ip -4 addr show dev lan0 | grep -q ' 10.1.0.1/32 ' && return 0
    done
    sleep 0.1
  done
  echo "topology: neither demux took the VIP; keepalived said:" >&2
  cat "$work/keepalived-demux-a.log" "$work/keepalived-demux-a2.log" >&2
  exit 1
}

# stock_gw SIDE BINARY: gw-SIDE1 as a stock WireGuard peer, BINARY (a
# wireguard-go) in the foreground so its PID is ours to stop, configured
# with wg and ip as an operator would; it routes the other network into
# the tunnel.
stock_gw() {
  local work=$1 s=$2 wgo=$3 o=b n=2 ifname=${P:0:9}-g${2}1
  [ "$s" = b ] && o=a && n=1
  ip netns exec "$(ns g${s}1)" env WG_PROCESS_FOREGROUND=1 "$wgo" -f "$ifname" >"$work/gw-${s}1.log" 2>&1 &
  echo $! >>"$work/pids"
  echo $! >"$work/gw-${s}1.pid"
  for _ in $(seq 50); do nsx g${s}1 ip link show "$ifname" >/dev/null 2>&1 && break; sleep 0.1; done
  local w=1 ow=2
  [ "$s" = b ] && w=2 && ow=1
  nsx g${s}1 wg set "$ifname" private-key "$work/gw-${s}1.key" listen-port 51820 \
    peer "$("$bin/tunnel" pubkey <"$work/gw-${o}1.key")" endpoint 198.18.1.$ow:51820 allowed-ips 10.$n.0.0/16,fd00:$o::/64
  nsx g${s}1 ip link set "$ifname" mtu 1420 up
  nsx g${s}1 ip route add 10.$n.0.0/16 dev "$ifname"
  nsx g${s}1 ip -6 route add fd00:$o::/64 dev "$ifname"
}

# gw-b1 as Debian's stock wireguard-go (interop), with host-b routing
# network A to it directly.
stock_b1() {
  local work=$1
  stock_gw "$work" b wireguard-go
  # The stock peer has no probe reflector of its own; this answers the
  # probes it decrypts, as an operator beside a stock peer would run it.
  ip netns exec "$(ns gb1)" "$bin/tunnel" reflect --config "$cfg" --node gw-b1 >"$work/gw-b1-reflect.log" 2>&1 &
  echo $! >>"$work/pids"
  nsx hb ip route replace 10.1.0.0/16 via 10.2.0.21
  nsx hb ip -6 route replace fd00:a::/64 via fd00:b::21
}

# baseline MODE: hosts route through gw-a1/gw-b1 instead of the demuxes;
# the gateways forward in the kernel (kernel) or through one plain
# WireGuard tunnel (wgo).
baseline() {
  local work=$1 mode=$2
  case $mode in
    kernel)
      nsx ga1 ip route add 10.2.0.0/16 via 198.18.1.2
      nsx ga1 ip -6 route add fd00:b::/64 via fd00:1:1::2
      nsx gb1 ip route add 10.1.0.0/16 via 198.18.1.1
      nsx gb1 ip -6 route add fd00:a::/64 via fd00:1:1::1 ;;
    wgo)
      [ -x "${WGO:-}" ] || { echo "topology: BASELINE=wgo needs WGO=path to a wireguard-go binary" >&2; exit 1; }
      stock_gw "$work" a "$WGO"
      stock_gw "$work" b "$WGO" ;;
    *) echo "topology: BASELINE=$mode: want kernel or wgo" >&2; exit 1 ;;
  esac
  nsx ha ip route replace 10.2.0.0/16 via 10.1.0.21
  nsx ha ip -6 route replace fd00:b::/64 via fd00:a::21
  nsx hb ip route replace 10.1.0.0/16 via 10.2.0.21
  nsx hb ip -6 route replace fd00:a::/64 via fd00:b::21
}

case $cmd in
  up) up "${3:?lanes}" "${4:?bindir}" "${5:?workdir}" ;;
  down) down "${3:?workdir}" ;;
  *) echo "usage: topology.sh up|down PREFIX ..." >&2; exit 2 ;;
esac
