package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/clusterpeer/clusterpeer/bench/topology"
	"github.com/clusterpeer/clusterpeer/bench/udpflows"
	"github.com/clusterpeer/clusterpeer/dataplane/demux"
)

// nonRootUser is the uid and gid TestNonRoot's nodes run as: in no
// passwd file, owning nothing but what the test gives it.
var nonRootUser = topology.Unprivileged{UID: 61999, GID: 61999}

// TestNonRoot runs a peering whose demuxes and gateways are not root and
// hold only what deploy/systemd's units grant them (CAP_NET_ADMIN and
// CAP_NET_RAW; a demux with XDP also CAP_BPF and CAP_PERFMON), and checks that it does
// all a peering does: probes bring the lanes up, traffic crosses (through
// the XDP program), a killed gateway's lane fails over, SIGHUP reloads.
// Then that a node missing a capability says which.
func TestNonRoot(t *testing.T) {
	needs(t, "iperf3", "setpriv", "ethtool")
	xdpMode := os.Getenv("XDP")
	if xdpMode == "" {
		xdpMode = "native" // the demux's unit grants what XDP needs: prove it suffices
	}
	u := nonRootUser
	tp := up(t, topology.Options{Prefix: "cpnr", Lanes: 3, XDP: xdpMode, RunAs: &u})
	xdpOn := xdpMode != "off"

	// Each node is the user, with exactly its unit's capabilities.
	for _, node := range []string{"demux-a", "demux-b", "gw-a1", "gw-b1", "gw-a2", "gw-b3"} {
		pid, err := tp.p.PID(node)
		if err != nil {
			t.Fatal(err)
		}
		binary := "tunnel"
		if strings.HasPrefix(node, "demux-") {
			binary = "demux"
		}
		var want uint64
		for _, c := range topology.UnitCaps(binary, xdpOn) {
			want |= 1 << map[string]int{"net_admin": unix.CAP_NET_ADMIN, "net_raw": unix.CAP_NET_RAW, "bpf": unix.CAP_BPF, "perfmon": unix.CAP_PERFMON}[c]
		}
		st := procStatus(t, pid)
		ids := func(n int) string { return fmt.Sprintf("%d\t%d\t%d\t%d", n, n, n, n) } // real, effective, saved, fs
		if st["Uid"] != ids(u.UID) || st["Gid"] != ids(u.GID) {
			t.Errorf("%s: Uid %q Gid %q, want %d and %d throughout", node, st["Uid"], st["Gid"], u.UID, u.GID)
		}
		for _, set := range []string{"CapEff", "CapPrm", "CapBnd", "CapAmb"} {
			if got, _ := strconv.ParseUint(st[set], 16, 64); got != want {
				t.Errorf("%s: %s %#x, want %#x (%v)", node, set, got, want, topology.UnitCaps(binary, xdpOn))
			}
		}
		if st["NoNewPrivs"] != "1" {
			t.Errorf("%s: NoNewPrivs %q", node, st["NoNewPrivs"])
		}
		// What the unit grants is all the node uses: nothing it does is
		// off for want of a capability.
		for _, l := range strings.Split(tp.p.Log(node), "\n") {
			if strings.Contains(l, "CAP_") || strings.Contains(l, "not permitted") {
				t.Errorf("%s: %s", node, l)
			}
		}
	}

	// Probes: every lane up on both demuxes (the topology waited for it).
	var before demuxStatus
	tp.status("demux-a", &before)
	for _, l := range before.Lanes {
		if !l.Healthy {
			t.Errorf("demux-a lane %d: %s", l.ID, l.State)
		}
	}
	if xdpOn && (before.XDP == nil || before.XDP.Mode == "") {
		t.Fatalf("demux-a runs no XDP program as a non-root user: %+v", before.XDP)
	}

	// Traffic, through the fast path where it is on.
	r := tp.iperf3("ha", "hb", "10.2.0.10", "-t", "2", "-P", "4")
	var after demuxStatus
	tp.status("demux-a", &after)
	carried := after.Packets - before.Packets
	if xdpOn {
		carried = after.XDP.Reasons["tx"] - before.XDP.Reasons["tx"]
	}
	t.Logf("tcp %.2f Gbit/s; the %s demux carried %d packets", r.End.SumReceived.BitsPerSecond/1e9, map[bool]string{true: "XDP", false: "userspace"}[xdpOn], carried)
	if r.End.SumReceived.BitsPerSecond <= 0 || carried < 1000 {
		t.Errorf("tcp across the non-root peering: %.0f bit/s, %d packets carried by the demux", r.End.SumReceived.BitsPerSecond, carried)
	}

	// Failover: gw-a2 killed under 24 flows; every flow goes on.
	flows := tp.sendFlows(udpflows.SendConfig{Dst: netip.MustParseAddrPort("10.2.0.10:7000"), Flows: 24, Packets: 1000, Size: 64, Interval: 3 * time.Millisecond})
	time.Sleep(time.Second)
	tp.kill("gw-a2")
	var st demux.Status
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		tp.status("demux-a", &st)
		if laneState(st, 2) == "down" {
			break
		}
	}
	if laneState(st, 2) != "down" {
		t.Fatalf("demux-a's lane 2 is %s 3 s after gw-a2 was killed", laneState(st, 2))
	}
	res := flows()
	if len(res) != 24 {
		t.Fatalf("%d of 24 flows arrived", len(res))
	}
	for _, f := range res {
		// Each flow's last packets (sent well after the failover) arrived.
		if f.MaxSeq+1 < 990 || f.Received < 900 {
			t.Errorf("flow %d: received %d of 1000, highest %d: it did not survive the failover", f.Flow, f.Received, f.MaxSeq)
		}
	}

	// SIGHUP reloads the non-root demux.
	pid, err := tp.p.PID("demux-a")
	if err != nil {
		t.Fatal(err)
	}
	syscall.Kill(pid, syscall.SIGHUP)
	tp.waitLog("demux-a", "SIGHUP: ")

	// A node missing a capability names it.
	// Each in a network namespace of its own that ends with it (not a
	// named one: `ip netns add` would bind /run/netns over itself and
	// hide the topology's namespaces from their own cleanup).
	scratch := func(name string, caps []string, args ...string) string {
		argv := append([]string{"--net", "--mount", "--propagation", "private", "bash", "-c",
			`ip link add x0 type veth peer name x1 && exec "$@"`, name}, u.Wrap(tp.work, caps, args)...)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "unshare", argv...).CombinedOutput()
		if err == nil {
			t.Errorf("%s: started without %v", name, caps)
		}
		return string(out)
	}
	demuxBin := filepath.Join(tp.bin, "demux")
	if out := scratch("nocap", nil, demuxBin, "up", "--config", tp.config(), "--node", "demux-a", "--xdp", "off"); !strings.Contains(out, "needs CAP_NET_ADMIN and it lacks CAP_NET_ADMIN") {
		t.Errorf("demux up without capabilities: %s", out)
	}
	if out := scratch("nobpf", []string{"net_admin"}, demuxBin, "up", "--config", tp.config(), "--node", "demux-a", "--xdp", "generic", "--xdp-dev", "x0"); !strings.Contains(out, "lacks CAP_BPF and CAP_PERFMON") {
		t.Errorf("demux up --xdp without CAP_BPF: %s", out)
	}
}

// procStatus reads /proc/PID/status into a map.
func procStatus(t *testing.T, pid int) map[string]string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

// waitLog waits up to 5 s for a node's log to hold want.
func (tp *topo) waitLog(node, want string) {
	tp.t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if strings.Contains(tp.p.Log(node), want) {
			return
		}
	}
	tp.t.Errorf("%s's log: no %q in 5 s", node, want)
}
