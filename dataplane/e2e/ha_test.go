package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clusterpeer/clusterpeer/admin"
	"github.com/clusterpeer/clusterpeer/bench/topology"
	"github.com/clusterpeer/clusterpeer/config"
	"github.com/clusterpeer/clusterpeer/dataplane/demux"
)

// haTopo is the failover topology with an HA pair on side a: demux-a and
// its standby demux-a2, keepalived beside each (topology.Options.HA).
type haTopo struct{ *foTopo }

var haDemuxNS = map[string]string{"demux-a": "da", "demux-a2": "da2"}

// haStatus is the part of `demux show --json` these tests read.
type haStatus struct {
	demux.Status
	HA *struct {
		Role string `json:"role"`
	} `json:"ha"`
}

// TestDemuxHA: kill -9 the active demux under UDP flows and TCP streams;
// the standby takes the VIPs, every flow keeps its lane and TCP survives;
// the old active comes back as standby without a second move. Then split
// brain (both active is harmless: the tables agree) and a demux that
// cannot reach any lane giving the VIPs up. `make failover` prints the
// summary lines with the lane scenarios'.
func TestDemuxHA(t *testing.T) {
	needs(t, "iperf3", "keepalived", "bridge")
	// Lanes judged over 200 ms: what moves here is the demux, and a lane
	// that flaps on a busy machine would move flows of its own.
	tp := haTopo{&foTopo{topo: up(t, topology.Options{Prefix: "cpha", Lanes: 3, Health: config.Health{DetectMultiplier: 20}, HA: true})}}
	tp.full = tp.config()
	tp.three = tp.full
	tp.waitLanes(map[int]string{1: "up", 2: "up", 3: "up"})
	first := tp.holder()
	if first != "demux-a" && first != "demux-a2" {
		t.Fatalf("VIP holder at start: %q, want one demux", first)
	}
	tp.waitRole(first, "MASTER")
	tp.waitRole(tp.other(first), "BACKUP")

	t.Run("keepalived-accepts-config", func(t *testing.T) {
		for node, ns := range haDemuxNS {
			conf := filepath.Join(tp.work, "keepalived-"+node+".conf")
			if out, err := tp.try(ns, "keepalived", "-t", "-f", conf); err != nil {
				t.Errorf("keepalived -t %s: %v\n%s", conf, err, out)
			}
		}
	})

	var killed, survivor string
	kill := func(tp *foTopo) {
		killed = haTopo{tp}.holder()
		survivor = haTopo{tp}.other(killed)
		tp.kill(killed)
	}
	var afterRecover string
	recover := func(tp *foTopo) {
		h := haTopo{tp}
		h.restartDemux(killed)
		h.waitRole(killed, "BACKUP")
		h.waitDemuxLanes(killed, 3)
		afterRecover = h.holder()
	}
	noSecondMove := func(r *foResult) {
		if afterRecover != survivor {
			r.iperfError += fmt.Sprintf("; after %s came back the VIPs are on %q, want them to stay on %s", killed, afterRecover, survivor)
		}
	}
	summary := tp.runScenarios(t, []foScenario{
		{name: "kill-active-demux", lossy: true, fault: kill, restore: recover, check: noSecondMove},
		{name: "demux-recover",
			before: func(tp *foTopo) {
				kill(tp)
				haTopo{tp}.waitHolder(survivor)
			},
			fault: func(tp *foTopo) { haTopo{tp}.restartDemux(killed) },
			restore: func(tp *foTopo) {
				h := haTopo{tp}
				h.waitRole(killed, "BACKUP")
				h.waitDemuxLanes(killed, 3)
				afterRecover = h.holder()
			},
			check: noSecondMove},
	})

	t.Run("split-brain", func(t *testing.T) {
		tp.t = t
		defer func() { tp.t = t }()
		// The demuxes stop hearing each other's adverts; both still reach
		// every lane, so both become active.
		active := tp.holder()
		standby := tp.other(active)
		// Isolated ports of the LAN switch do not reach each other, but
		// reach every other port: the gateways and the host.
		isolate := func(on string) {
			for _, ns := range haDemuxNS {
				tp.run("swa", "bridge", "link", "set", "dev", ns, "isolated", on)
			}
		}
		isolate("on")
		heal := sync.OnceFunc(func() { isolate("off") })
		defer heal()
		tp.waitHolder("both")
		// Which one the hosts reach depends on whose ARP came last; both
		// forward the same flow to the same lane. Move host-a from one to
		// the other in the middle of the traffic, as a gratuitous ARP
		// would: no flow may change lane and no TCP stream reset. (Packets
		// still inside the old demux can be overtaken by the next ones
		// through the new, as on any change of path; counted, not failed.)
		mac := strings.TrimSpace(tp.run(haDemuxNS[standby], "cat", "/sys/class/net/lan0/address"))
		rs := tp.runScenarios(t, []foScenario{{name: "split-brain", lossy: true, reorders: true,
			before: func(tp *foTopo) {
				other := strings.TrimSpace(tp.run(haDemuxNS[active], "cat", "/sys/class/net/lan0/address"))
				tp.run("ha", "ip", "neigh", "replace", "10.1.0.1", "lladdr", other, "dev", "lan0", "nud", "reachable")
			},
			fault: func(tp *foTopo) {
				tp.run("ha", "ip", "neigh", "replace", "10.1.0.1", "lladdr", mac, "dev", "lan0", "nud", "reachable")
			},
			restore: func(*foTopo) {}}})
		summary = append(summary, rs...)
		heal()
		tp.waitHolderNot("both")
	})

	t.Run("no-lane-gives-up-vip", func(t *testing.T) {
		tp.t = t
		defer func() { tp.t = t }()
		active := tp.holder()
		standby := tp.other(active)
		ns := haDemuxNS[active]
		// The active demux loses every lane: no route to its gateways, so
		// its GENEVE (and with it the probes) goes nowhere. `demux health`
		// fails; keepalived gives the VIPs to the standby, which still
		// reaches the lanes.
		route := func(op string) {
			for i := 1; i <= 3; i++ {
				tp.try(ns, "ip", "route", op, "prohibit", fmt.Sprintf("10.1.0.%d/32", 20+i))
			}
		}
		route("add")
		restore := sync.OnceFunc(func() { route("del") })
		defer restore()
		start := time.Now()
		tp.waitHolder(standby)
		t.Logf("%s lost its lanes; %s holds the VIPs after %v", active, standby, time.Since(start).Round(time.Millisecond))
		tp.waitRole(active, "FAULT")
		tp.run("ha", "ping", "-c", "3", "-i", "0.2", "-W", "2", "10.2.0.10")
		tp.run("ha", "ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", "fd00:b::10")
		restore()
		tp.waitDemuxLanes(active, 3)
		tp.waitRole(active, "BACKUP")
		if h := tp.holder(); h != standby {
			t.Errorf("after %s's lanes came back the VIPs are on %q, want them to stay on %s", active, h, standby)
		}
	})

	t.Run("notify-hook", func(t *testing.T) {
		// The operator's hook (the topology's recording script) ran for
		// every change of role on both demuxes.
		b, err := os.ReadFile(filepath.Join(tp.work, "ha-notify.log"))
		if err != nil {
			t.Fatal(err)
		}
		log := string(b)
		for _, want := range []string{"MASTER demux-a demux-a MASTER", "BACKUP demux-a2 demux-a2 BACKUP", "MASTER demux-a2 demux-a2 MASTER", "FAULT",
			"vips=10.1.0.1,fd00:a::1 remote=10.2.0.0/16,fd00:b::/64"} {
			if !strings.Contains(log, want) {
				t.Errorf("the notify hook's calls lack %q:\n%s", want, log)
			}
		}
	})
	tp.t = t
	for _, l := range summary {
		fmt.Println(l) // `make failover` ends with these
	}
}

// holder names the demux whose LAN interface has the IPv4 VIP: "demux-a",
// "demux-a2", "both" or "".
func (tp haTopo) holder() string {
	var has []string
	for _, node := range []string{"demux-a", "demux-a2"} {
		out, _ := tp.try(haDemuxNS[node], "ip", "-4", "-o", "addr", "show", "dev", "lan0")
		if strings.Contains(out, " 10.1.0.1/32 ") {
			has = append(has, node)
		}
	}
	switch len(has) {
	case 0:
		return ""
	case 1:
		return has[0]
	}
	return "both"
}

func (tp haTopo) other(node string) string {
	if node == "demux-a" {
		return "demux-a2"
	}
	return "demux-a"
}

func (tp haTopo) waitHolder(want string) {
	tp.t.Helper()
	tp.waitFor(fmt.Sprintf("the VIPs on %q", want), func() bool { return tp.holder() == want })
}

func (tp haTopo) waitHolderNot(not string) {
	tp.t.Helper()
	tp.waitFor("the VIPs on one demux", func() bool { h := tp.holder(); return h != not && h != "" })
}

// waitRole waits until keepalived has told the demux (through `demux
// notify`) that it is in role.
func (tp haTopo) waitRole(node, role string) {
	tp.t.Helper()
	tp.waitFor(node+" in role "+role, func() bool {
		var st haStatus
		return admin.Fetch(tp.socket(node), &st) == nil && st.HA != nil && st.HA.Role == role
	})
}

func (tp haTopo) waitDemuxLanes(node string, n int) {
	tp.t.Helper()
	tp.waitFor(fmt.Sprintf("%s with %d lanes up", node, n), func() bool {
		var st haStatus
		if admin.Fetch(tp.socket(node), &st) != nil {
			return false
		}
		up := 0
		for _, l := range st.Lanes {
			if l.State == "up" {
				up++
			}
		}
		return up == n
	})
}

func (tp haTopo) waitFor(what string, ok func() bool) {
	tp.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(tp.work, "ha-notify.log"))
			tp.t.Fatalf("waited 15s for %s; VIPs on %q; notify calls:\n%s", what, tp.holder(), b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// restartDemux starts a demux of the pair again, as the topology did.
func (tp haTopo) restartDemux(node string) {
	tp.start(haDemuxNS[node], "demux", node, tp.full, "--xdp", "off")
}
