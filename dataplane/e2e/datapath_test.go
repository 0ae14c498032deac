package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
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

	"github.com/clusterpeer/clusterpeer/bench/lanewatch"
	"github.com/clusterpeer/clusterpeer/bench/topology"
	"github.com/clusterpeer/clusterpeer/bench/udpflows"
	"github.com/clusterpeer/clusterpeer/dataplane/demux"
	"github.com/clusterpeer/clusterpeer/dataplane/packet"
	"github.com/clusterpeer/clusterpeer/tunnel/gateway"
	"github.com/clusterpeer/clusterpeer/tunnel/keyring"
	"github.com/clusterpeer/clusterpeer/tunnel/probe"
	"github.com/clusterpeer/clusterpeer/tunnel/wgkey"
)

const lanes = 3

// TestDataPath builds the demo's peering once and checks what crosses it.
func TestDataPath(t *testing.T) {
	needs(t, "iperf3", "ping")
	tp := up(t, topology.Options{Prefix: "cpe2e", Lanes: lanes})

	t.Run("ping", func(t *testing.T) {
		for _, c := range [][2]string{{"ha", "10.2.0.10"}, {"ha", "fd00:b::10"}, {"hb", "10.1.0.10"}, {"hb", "fd00:a::10"}} {
			tp.run(c[0], "ping", "-c", "3", "-i", "0.2", "-W", "2", c[1])
		}
	})

	t.Run("iperf3", func(t *testing.T) {
		for _, c := range []struct {
			name, dst string
			args      []string
		}{
			{"tcp-1-stream", "10.2.0.10", []string{"-t", "2"}},
			{"tcp-8-streams", "10.2.0.10", []string{"-t", "2", "-P", "8"}},
			{"tcp-ipv6", "fd00:b::10", []string{"-t", "2"}},
			{"tcp-reverse", "10.2.0.10", []string{"-t", "2", "-R"}},
		} {
			r := tp.iperf3("ha", "hb", c.dst, c.args...)
			t.Logf("%s: %.2f Gbit/s", c.name, r.End.SumReceived.BitsPerSecond/1e9)
			if r.End.SumReceived.Bytes <= 0 {
				t.Errorf("%s: nothing received", c.name)
			}
		}
		// Loss is judged on the path (udpLoss).
		r, atHost, pathLost := tp.udpLoss("ha", "hb", "10.2.0.10", "-b", "40M", "-l", "1200", "-P", "2", "-t", "2")
		t.Logf("udp: %.0f packets, %.0f lost (%.2f%%): %.0f at host-b's socket, %.0f on the path",
			r.End.Sum.Packets, r.End.Sum.LostPackets, r.End.Sum.LostPercent, atHost, pathLost)
		if r.End.Sum.Bytes <= 0 || r.End.Sum.Packets <= 0 || pathLost > 0.2*r.End.Sum.Packets {
			drops, _ := tp.try("da", "cat", "/sys/class/net/cpdemux/statistics/tx_dropped")
			t.Errorf("udp: %.0f bytes, %.0f of %.0f packets lost on the path (demux-a tun tx_dropped %s)",
				r.End.Sum.Bytes, pathLost, r.End.Sum.Packets, strings.TrimSpace(drops))
		}
	})

	t.Run("wire-format", func(t *testing.T) { testWireFormat(t, tp) })
	t.Run("stickiness", func(t *testing.T) { testStickiness(t, tp) })
	t.Run("too-big", func(t *testing.T) { testTooBig(t, tp) })
	t.Run("bad-geneve", func(t *testing.T) { testBadGeneve(t, tp) })
	t.Run("probes", func(t *testing.T) { testProbes(t, tp) })
	t.Run("metrics-and-show", func(t *testing.T) { testMetricsAndShow(t, tp) })
	t.Run("close-order", func(t *testing.T) { testCloseOrder(t, tp) })
	t.Run("peer-key-reload", func(t *testing.T) { testPeerKeyReload(t, tp) }) // last: it rekeys gw-b1
}

// testPeerKeyReload: gw-b1 is replaced by an instance with a new key, and
// the file says so. gw-a1 still has the old key for its peer, so lane 1
// cannot work until gw-a1 is sent SIGHUP: then it takes the new key live
// (no restart) and the lane comes back on both demuxes. Meanwhile the new
// gw-b1, which never completes a handshake, tells demux-b why its lane
// is down (probe.DiagNoHandshake).
func testPeerKeyReload(t *testing.T, tp *topo) {
	k, err := wgkey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	old := tp.p.Config.Lanes[0].B.PublicKey
	b, err := os.ReadFile(tp.config())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(old)) {
		t.Fatalf("gw-b1's key %s is not in the file", old)
	}
	if err := os.WriteFile(filepath.Join(tp.work, "gw-b1.key"), []byte(k.Base64()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tp.config(), bytes.ReplaceAll(b, []byte(old), []byte(k.Public().Base64())), 0o600); err != nil {
		t.Fatal(err)
	}
	tp.kill("gw-b1")
	if err := tp.p.Start("gb1", "tunnel", "gw-b1", tp.config()); err != nil {
		t.Fatal(err)
	}
	laneState := func(node string) string {
		var st demux.Status
		tp.status(node, &st)
		for _, l := range st.Lanes {
			if l.ID == 1 {
				return string(l.State)
			}
		}
		return "absent"
	}
	waitLane := func(want string, within time.Duration) {
		t.Helper()
		deadline := time.Now().Add(within)
		for {
			a, b := laneState("demux-a"), laneState("demux-b")
			if a == want && b == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("lane 1: demux-a %s, demux-b %s after %v; want %s", a, b, within, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitLane("down", 10*time.Second) // gw-a1 handshakes with the old key
	var why string
	for deadline := time.Now().Add(gateway.HandshakeGrace + 5*time.Second); ; time.Sleep(100 * time.Millisecond) {
		var st demux.Status
		tp.status("demux-b", &st)
		for _, l := range st.Lanes {
			if l.ID == 1 && l.Probes != nil {
				why = l.Probes.Reason
			}
		}
		if strings.Contains(why, "reports: no valid WireGuard handshake") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("demux-b's lane 1 down for %q, %v after gw-b1 restarted: want gw-b1's report of no handshake", why, gateway.HandshakeGrace+5*time.Second)
		}
	}
	t.Logf("demux-b: lane 1 %s", why)
	pid, err := tp.p.PID("gw-a1")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLane("up", 15*time.Second)
	t.Logf("lane 1 up on both demuxes %v after gw-a1's SIGHUP", time.Since(start).Round(time.Millisecond))
	if p, _ := tp.p.PID("gw-a1"); p != pid {
		t.Errorf("gw-a1 restarted (pid %d, was %d): the reload must be live", p, pid)
	}
	log, _ := os.ReadFile(filepath.Join(tp.work, "gw-a1.log"))
	if !bytes.Contains(log, []byte("SIGHUP: reloaded: peer gw-b1 now has key "+k.Public().Base64())) {
		t.Errorf("gw-a1's log does not say it took the new key:\n%s", log[max(0, len(log)-2000):])
	}
	tp.run("ha", "ping", "-c", "2", "-i", "0.2", "-W", "2", "10.2.0.10")
}

// testCloseOrder checks that a gateway killed outright closes its ports
// before its TUN: a dead process's files are released from the highest
// descriptor down, and a TUN's close unregisters a device (tens of
// milliseconds), an inotify descriptor's waits for an SRCU grace period
// (wireguard-go's UAPI listener held one), so every UDP port of the lane
// (GENEVE, WireGuard) must have a higher descriptor than either for the
// demux's and the peer's next packets to draw ICMP port unreachable at
// once (docs/health.md, "Failure signals").
func testCloseOrder(t *testing.T, tp *topo) {
	for _, gw := range []string{"gw-a1", "gw-b2"} {
		b, err := os.ReadFile(filepath.Join(tp.work, gw+".pid"))
		if err != nil {
			t.Fatal(err)
		}
		pid := strings.TrimSpace(string(b))
		// The highest of the descriptors slow to close: the TUN (a device
		// to unregister) and any inotify one (an SRCU grace period).
		tunFD, slowFD, slow, sockets := -1, -1, "", map[string]int{} // socket inode: descriptor
		fds, err := os.ReadDir("/proc/" + pid + "/fd")
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range fds {
			fd, _ := strconv.Atoi(e.Name())
			target, _ := os.Readlink("/proc/" + pid + "/fd/" + e.Name())
			switch {
			case target == "/dev/net/tun" || target == "anon_inode:inotify":
				if target == "/dev/net/tun" {
					tunFD = fd
				}
				if fd > slowFD {
					slowFD, slow = fd, target
				}
			case strings.HasPrefix(target, "socket:["):
				sockets[strings.Trim(target[len("socket:"):], "[]")] = fd
			}
		}
		if tunFD < 0 {
			t.Fatalf("%s: no /dev/net/tun among its descriptors", gw)
		}
		ports := map[int]bool{6081: false, 51820: false}
		for _, table := range []string{"udp", "udp6"} {
			b, err := os.ReadFile("/proc/" + pid + "/net/" + table) // the process's namespace
			if err != nil {
				t.Fatal(err)
			}
			for _, line := range strings.Split(string(b), "\n")[1:] {
				f := strings.Fields(line)
				if len(f) < 10 {
					continue
				}
				local := f[1]
				port, _ := strconv.ParseInt(local[strings.LastIndexByte(local, ':')+1:], 16, 32)
				fd, ours := sockets[f[9]]
				if _, watched := ports[int(port)]; !watched || !ours {
					continue
				}
				ports[int(port)] = true
				if fd < slowFD {
					t.Errorf("%s: udp port %d is descriptor %d, below %s's %d: killed, it would close after that one", gw, port, fd, slow, slowFD)
				}
			}
		}
		for port, seen := range ports {
			if !seen {
				t.Errorf("%s: no socket of its own bound to udp port %d", gw, port)
			}
		}
	}
}

// testWireFormat has tshark, an independent dissector, read the GENEVE
// frames demux-a puts on LAN A while host-a pings host-b, and its lane
// probes (OAM bit set, inner UDP to the far gateway's reflector).
func testWireFormat(t *testing.T, tp *topo) {
	if _, err := exec.LookPath("tshark"); err != nil {
		t.Skip("needs tshark (make deps installs it)")
	}
	// udp[9] is the GENEVE flags byte; 0x80 the OAM bit.
	// On the switch's port for demux-a: frames the XDP fast path sends
	// with XDP_TX never pass the demux's own capture point.
	data := tp.tshark("swa/da", "udp dst port 6081 and udp[9] & 0x80 = 0", 3, func() {
		tp.run("ha", "ping", "-c", "3", "-i", "0.2", "-W", "2", "10.2.0.10")
	}, "udp.dstport", "geneve.version", "geneve.vni", "geneve.proto_type",
		"geneve.flags.oam", "ip.src", "ip.dst", "icmp.type")
	for _, f := range data {
		want := []string{"6081", "0", "0x001092", "0x0800", "0"} // port, version, VNI 4242, IPv4, OAM clear
		if len(f) != 8 || strings.Join(f[:5], "/") != strings.Join(want, "/") ||
			f[5] != "10.1.0.2,10.1.0.10" || !strings.HasSuffix(f[6], ",10.2.0.10") || f[7] != "8" {
			t.Errorf("tshark read %q; want outer 10.1.0.2 -> a gateway, GENEVE %v, inner echo request 10.1.0.10 -> 10.2.0.10", f, want)
		}
	}
	probes := tp.tshark("da", "udp dst port 6081 and udp[9] & 0x80 != 0", 6, nil,
		"geneve.flags.oam", "geneve.vni", "ip.src", "ip.dst", "udp.dstport", "udp.length")
	for _, f := range probes {
		// OAM set, VNI 4242, inner 10.1.0.2:6082 -> far gateway 10.2.0.2N:6082, 8 + MessageLen bytes.
		if len(f) != 6 || f[0] != "1" || f[1] != "0x001092" || !strings.HasPrefix(f[2], "10.1.0.2,10.1.0.2") ||
			!strings.Contains(f[3], ",10.2.0.2") || !strings.HasSuffix(f[4], ",6082") || !strings.HasSuffix(f[5], ","+strconv.Itoa(8+probe.MessageLen)) {
			t.Errorf("tshark read probe %q; want OAM GENEVE, inner UDP 10.1.0.2 -> 10.2.0.2N port 6082, %d-byte payload", f, probe.MessageLen)
		}
	}
}

// tshark captures count frames matching filter on a node's lan0, or on
// "node/interface" (while trigger runs, if any), and returns the fields of
// each.
func (tp *topo) tshark(at, filter string, count int, trigger func(), fields ...string) [][]string {
	t := tp.t
	node, iface, ok := strings.Cut(at, "/")
	if !ok {
		iface = "lan0"
	}
	args := []string{"netns", "exec", tp.ns(node), "tshark", "-i", iface, "-n", "-c", strconv.Itoa(count), "-a", "duration:10",
		"-f", filter, "-T", "fields", "-E", "separator=;"}
	for _, f := range fields {
		args = append(args, "-e", f)
	}
	cmd := exec.Command("ip", args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		once := false
		for sc.Scan() {
			if !once && strings.Contains(sc.Text(), "Capturing on") {
				once = true
				close(started)
			}
		}
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatal("tshark did not start capturing")
	}
	if trigger != nil {
		time.Sleep(200 * time.Millisecond)
		trigger()
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("tshark: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != count {
		t.Fatalf("tshark saw %d frames matching %q, want %d:\n%s", len(lines), filter, count, out.String())
	}
	var rows [][]string
	for _, l := range lines {
		rows = append(rows, strings.Split(l, ";"))
	}
	return rows
}

// testStickiness sends 64 sequence-numbered UDP flows from host-a to
// host-b and checks, at host-b, that each arrived through exactly one lane
// (one gateway MAC) and in order, and that every lane carried flows.
func testStickiness(t *testing.T, tp *topo) {
	const flows, packets = 64, 200
	macs := map[string]int{}
	for i := 1; i <= lanes; i++ {
		mac := strings.TrimSpace(tp.run(fmt.Sprintf("gb%d", i), "cat", "/sys/class/net/lan0/address"))
		macs[mac] = i
	}
	var (
		w    *lanewatch.Watcher
		recv *udpflows.Receiver
		send *udpflows.Sender
		err  error
	)
	dst := netip.MustParseAddrPort("10.2.0.10:7000")
	tp.inNS("hb", func() {
		if w, err = lanewatch.Open("lan0", macs); err != nil {
			return
		}
		recv, err = udpflows.Listen(dst)
	})
	if err != nil {
		t.Fatal(err)
	}
	tp.inNS("ha", func() {
		send, err = udpflows.NewSender(udpflows.SendConfig{Dst: dst, Flows: flows, Packets: packets, Size: 200, Interval: 2 * time.Millisecond})
	})
	if err != nil {
		t.Fatal(err)
	}
	defer send.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	watchCtx, stopWatch := context.WithCancel(ctx)
	watched := make(chan struct{})
	go func() { w.Run(watchCtx); close(watched) }()
	received := make(chan []udpflows.FlowResult)
	go func() { recv.Run(ctx, time.Second); received <- recv.Results() }()
	if err := send.Run(ctx); err != nil {
		t.Fatal(err)
	}
	results := <-received
	stopWatch()
	<-watched
	rep := w.Report()

	if len(results) != flows {
		t.Fatalf("received %d flows, want %d", len(results), flows)
	}
	var got, ooo uint64
	for _, r := range results {
		got += r.Received
		ooo += r.OutOfOrder
		if r.OutOfOrder != 0 {
			t.Errorf("flow %d (%s): %d packets out of order", r.Flow, r.From, r.OutOfOrder)
		}
	}
	if got < flows*packets*9/10 {
		t.Errorf("received %d of %d packets", got, flows*packets)
	}
	udp := 0
	for _, f := range rep.Flows {
		if !strings.HasPrefix(f.Flow, "udp ") || !strings.HasSuffix(f.Flow, dst.String()) {
			continue
		}
		udp++
		if len(f.Lanes) != 1 {
			t.Errorf("%s arrived through lanes %v", f.Flow, keys(f.Lanes))
		}
	}
	if udp != flows {
		t.Errorf("lanewatch saw %d of the %d flows", udp, flows)
	}
	for id, l := range rep.Lanes {
		t.Logf("lane %d: %d flows, %d packets", id, l.Flows, l.Packets)
		if l.Flows == 0 {
			t.Errorf("lane %d carried no flow", id)
		}
	}
	t.Logf("%d flows, %d packets received, %d out of order, %d split", len(results), got, ooo, rep.SplitFlows)
}

func keys(m map[int]*lanewatch.Count) []int {
	var k []int
	for id := range m {
		k = append(k, id)
	}
	return k
}

// testTooBig raises the demux TUN's MTU above the lane MTU, so the kernel
// hands it packets a lane cannot carry, and expects the router's answer.
func testTooBig(t *testing.T, tp *topo) {
	tp.run("da", "ip", "link", "set", "cpdemux", "mtu", "1500")
	defer tp.run("da", "ip", "link", "set", "cpdemux", "mtu", "1420")
	// Forget the path MTU host-a learnt earlier (from the kernel in front
	// of the TUN, while its MTU was 1420), so the big packets are sent.
	tp.run("ha", "ip", "route", "flush", "cache")
	tp.run("ha", "ip", "-6", "route", "flush", "cache")
	out, _ := tp.try("ha", "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1472", "10.2.0.10")
	if !strings.Contains(out, "mtu = 1420") {
		t.Errorf("IPv4 DF ping of 1500 bytes: want 'Frag needed ... mtu = 1420', got:\n%s", out)
	}
	out, _ = tp.try("ha", "ping", "-6", "-c", "1", "-W", "2", "-M", "do", "-s", "1452", "fd00:b::10")
	if !strings.Contains(out, "mtu=1420") {
		t.Errorf("IPv6 ping of 1500 bytes: want 'Packet too big: mtu=1420', got:\n%s", out)
	}
	var st demux.Status
	tp.status("demux-a", &st)
	if st.TooBig < 2 || st.ICMPSent < 2 {
		t.Errorf("demux counted too_big=%d icmp_sent=%d, want >= 2 each", st.TooBig, st.ICMPSent)
	}
	// Path MTU discovery then works: the host retries at 1420.
	tp.run("ha", "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1392", "10.2.0.10")
}

// testBadGeneve sends malformed and unauthorised GENEVE to gw-a1 and
// checks each is counted under its reason and the gateway keeps working.
func testBadGeneve(t *testing.T, tp *topo) {
	inner := tp.pingPacket()
	valid := func(vni uint32, proto uint16, oam bool) []byte {
		b := make([]byte, packet.GeneveLen+len(inner))
		packet.PutGeneve(b, vni, proto, oam)
		copy(b[packet.GeneveLen:], inner)
		return b
	}
	badVersion := valid(4242, packet.ProtoIPv4, false)
	badVersion[0] |= 0x40
	critical := make([]byte, 0, 64)
	critical = append(critical, valid(4242, packet.ProtoIPv4, false)[:packet.GeneveLen]...)
	critical[0] |= 1 // one 4-byte option
	critical[1] |= 0x40
	critical = append(critical, 0x01, 0x02, 0x80, 0x00) // class 0x0102, type 0x80 (critical), len 0
	critical = append(critical, inner...)
	cases := []struct {
		from   string
		pkt    []byte
		reason string
	}{
		{"ha", valid(4242, packet.ProtoIPv4, false), "unknown_source"},
		{"da", []byte{0, 0, 8}, "truncated"},
		{"da", badVersion, "bad_version"},
		{"da", valid(7, packet.ProtoIPv4, false), "wrong_vni"},
		{"da", valid(4242, 0x1234, false), "bad_protocol"},
		{"da", valid(4242, packet.ProtoIPv6, false), "bad_protocol"},
		{"da", valid(4242, packet.ProtoIPv4, true), "oam"},
		{"da", critical, "critical_option"},
	}
	var before gateway.Status
	tp.status("gw-a1", &before)
	want := map[string]uint64{}
	for _, c := range cases {
		tp.sendUDP(c.from, "10.1.0.21:6081", c.pkt)
		want[c.reason]++
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		var after gateway.Status
		tp.status("gw-a1", &after)
		missing := ""
		for reason, n := range want {
			if got := after.Drops[reason] - before.Drops[reason]; got != n {
				missing += fmt.Sprintf(" %s=%d (want %d)", reason, got, n)
			}
		}
		if missing == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("drop counters:%s", missing)
		}
		time.Sleep(50 * time.Millisecond)
	}
	tp.run("ha", "ping", "-c", "2", "-i", "0.2", "-W", "2", "10.2.0.10")
}

// testProbes checks that both demuxes see every lane up through their
// probes, and that forged probes and replies are refused and counted,
// changing nothing: a "reply" from an address that is no lane's gateway
// before any MAC is computed, a "probe" that reaches a reflector from the
// LAN instead of out of its lane's TUN, and one made without the
// peering's key that does come out of the TUN.
func testProbes(t *testing.T, tp *topo) {
	for _, d := range []string{"demux-a", "demux-b"} {
		var st demux.Status
		tp.status(d, &st)
		if st.Probing == nil || st.Probing.Interval <= 0 {
			t.Fatalf("%s: probing %+v", d, st.Probing)
		}
		for _, l := range st.Lanes {
			if l.State != "up" || !l.Healthy || l.Probes == nil || l.Probes.Received == 0 || l.Probes.SmoothedRTT <= 0 {
				t.Errorf("%s lane %d: %+v %+v", d, l.ID, l, l.Probes)
			}
		}
	}
	// Another secret under the peering's key ID (it is on the wire): the
	// MAC must fail.
	wrongSecret := make([]byte, 16)
	rand.Read(wrongSecret)
	wrong := keyring.FromSecret(wrongSecret, time.Time{}, time.Time{})
	wrong.ID = keyring.ID(tp.p.Config.Hash.Key[:])
	wrongKey := &keyring.Ring{Gens: []keyring.Gen{wrong}}
	forged := make([]byte, probe.MessageLen)
	probe.NewSigner(wrongKey).Put(forged, probe.Message{Kind: probe.KindReply, Lane: 1, Side: "a", Seq: 1})
	var da0 demux.Status
	var gb0 gateway.Status
	tp.status("demux-a", &da0)
	tp.status("gw-b1", &gb0)
	tp.sendUDP("ha", "10.1.0.2:6082", forged) // a "reply" to demux-a from its own network
	probe.NewSigner(wrongKey).Put(forged, probe.Message{Kind: probe.KindRequest, Lane: 1, Side: "a", Seq: 1})
	tp.sendUDP("hb", "10.2.0.21:6082", forged)          // a "probe" to gw-b1's reflector from its LAN
	tp.sendUDP("hb", "10.2.0.21:6082", []byte("hello")) // not a probe at all, from its LAN
	tp.sendUDP("ha", "10.2.0.21:6082", forged)          // through lane 1 (or another), out of a TUN
	deadline := time.Now().Add(3 * time.Second)
	for {
		var da demux.Status
		var gb gateway.Status
		tp.status("demux-a", &da)
		tp.status("gw-b1", &gb)
		// host-a's datagram reaches gw-b1 out of lane 1's TUN only if its
		// flow hashes to lane 1: else out of another gateway's TUN, and
		// never to gw-b1's reflector.
		wrongIface := gb.Probes.Drops["wrong_interface"] - gb0.Probes.Drops["wrong_interface"]
		badMAC := gb.Probes.Drops["bad_mac"] - gb0.Probes.Drops["bad_mac"]
		ok := da.Probing.Drops["bad_source"] == da0.Probing.Drops["bad_source"]+1 &&
			da.Probing.Drops["bad_mac"] == da0.Probing.Drops["bad_mac"] &&
			wrongIface >= 2 && wrongIface+badMAC == 3 && gb.Probes.Drops["bad_format"] == gb0.Probes.Drops["bad_format"]
		if ok {
			for i, l := range da.Lanes {
				if l.State != "up" || l.Transitions != da0.Lanes[i].Transitions {
					t.Errorf("lane %d after forgeries: %s, %d transitions (was %d)", l.ID, l.State, l.Transitions, da0.Lanes[i].Transitions)
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("forgeries not counted: demux-a %v, gw-b1 %v", da.Probing.Drops, gb.Probes.Drops)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pingPacket is an ICMP echo from host-a to host-b, as a demux would
// encapsulate it.
func (tp *topo) pingPacket() []byte {
	p := make([]byte, 28)
	p[0], p[2], p[3], p[8], p[9] = 0x45, 0, 28, 64, 1
	copy(p[12:16], []byte{10, 1, 0, 10})
	copy(p[16:20], []byte{10, 2, 0, 10})
	binary.BigEndian.PutUint16(p[10:12], packet.Checksum(p[:20], 0))
	p[20] = 8
	binary.BigEndian.PutUint16(p[22:24], packet.Checksum(p[20:], 0))
	return p
}

// testMetricsAndShow reads /metrics inside the demux and gateway
// namespaces and runs the show commands.
func testMetricsAndShow(t *testing.T, tp *topo) {
	for node, want := range map[string][]string{
		"da": {`clusterpeer_lane_packets_total{gateway="gw-a1",lane="1"}`, `clusterpeer_demux_drops_total{reason="too_big"}`, `clusterpeer_lane_up{gateway="gw-a3",lane="3"} 1`,
			`clusterpeer_lane_healthy{gateway="gw-a2",lane="2"} 1`, `clusterpeer_lane_state{gateway="gw-a1",lane="1",state="up"} 1`,
			`clusterpeer_lane_probe_rtt_seconds{gateway="gw-a1",lane="1"}`, `clusterpeer_lane_failovers_total{gateway="gw-a1",lane="1"} `,
			`clusterpeer_demux_probe_reply_drops_total{reason="bad_mac"}`},
		"ga1": {`clusterpeer_gateway_geneve_packets_total{gateway="gw-a1",lane="1"}`, `clusterpeer_gateway_drops_total{gateway="gw-a1",lane="1",reason="unknown_source"}`, `clusterpeer_gateway_wireguard_tx_bytes_total`,
			`clusterpeer_gateway_probes_answered_total{gateway="gw-a1",lane="1"}`},
	} {
		body := tp.scrape(node)
		for _, w := range append(want, `clusterpeer_build_info{binary="`) {
			if !strings.Contains(body, w) {
				t.Errorf("%s /metrics lacks %s", node, w)
			}
		}
	}
	out := tp.run("ha", tp.bin+"/demux", "show", "--config", tp.config(), "--node", "demux-a")
	for _, w := range []string{"lane 1: up", "lane 3: up", "gateway: gw-a2 (10.1.0.22:6081)", "  version: "} {
		if !strings.Contains(out, w) {
			t.Errorf("demux show lacks %q:\n%s", w, out)
		}
	}
	priv, _ := os.ReadFile(tp.work + "/gw-a1.key")
	for _, args := range [][]string{{"show"}, {"show", "--json"}} {
		out := tp.run("ha", append([]string{tp.bin + "/tunnel"}, append(args, "--config", tp.config(), "--node", "gw-a1")...)...)
		if strings.Contains(out, strings.TrimSpace(string(priv))) {
			t.Errorf("tunnel %v prints the private key", args)
		}
		if !strings.Contains(out, "198.18.1.2:51820") {
			t.Errorf("tunnel %v lacks the peer endpoint:\n%s", args, out)
		}
	}
}

// TestInteropStockWireGuard makes lane 1's far end Debian's wireguard-go,
// configured with wg, and sends traffic both ways through it.
func TestInteropStockWireGuard(t *testing.T) {
	needs(t, "iperf3", "ping", "wireguard-go", "wg")
	tp := up(t, topology.Options{Prefix: "cpwg", Lanes: 1, StockB1: true})
	for _, c := range [][2]string{{"ha", "10.2.0.10"}, {"ha", "fd00:b::10"}, {"hb", "10.1.0.10"}, {"hb", "fd00:a::10"}} {
		tp.run(c[0], "ping", "-c", "3", "-i", "0.2", "-W", "2", c[1])
	}
	for _, args := range [][]string{{"-t", "2"}, {"-t", "2", "-R"}} {
		r := tp.iperf3("ha", "hb", "10.2.0.10", args...)
		t.Logf("iperf3 %v: %.2f Gbit/s", args, r.End.SumReceived.BitsPerSecond/1e9)
		if r.End.SumReceived.Bytes <= 0 {
			t.Errorf("iperf3 %v: nothing received", args)
		}
	}
	out := tp.run("gb1", "wg", "show")
	if !strings.Contains(out, "latest handshake") {
		t.Errorf("stock peer shows no handshake:\n%s", out)
	}
	// And `wg show` sees our gateway's lane through its UAPI socket.
	out = tp.run("ga1", "wg", "show", "cpwg-ga1")
	if !strings.Contains(out, "interface: cpwg-ga1") || !strings.Contains(out, "latest handshake") {
		t.Errorf("wg show cpwg-ga1 (our gateway):\n%s", out)
	}
}

// TestIPv6Underlay runs GENEVE and WireGuard over IPv6 (as in an IPv6-only
// VPC); IPv4 and IPv6 inner traffic cross both ways.
func TestIPv6Underlay(t *testing.T) {
	needs(t, "iperf3", "ping")
	tp := up(t, topology.Options{Prefix: "cpv6", Lanes: 2, Underlay6: true})
	for _, c := range [][2]string{{"ha", "10.2.0.10"}, {"ha", "fd00:b::10"}, {"hb", "10.1.0.10"}, {"hb", "fd00:a::10"}} {
		tp.run(c[0], "ping", "-c", "3", "-i", "0.2", "-W", "2", c[1])
	}
	r := tp.iperf3("ha", "hb", "fd00:b::10", "-t", "2", "-P", "4")
	t.Logf("iperf3 4 streams: %.2f Gbit/s", r.End.SumReceived.BitsPerSecond/1e9)
	var accepted uint64
	for _, gw := range []string{"gw-a1", "gw-a2"} {
		var st gateway.Status
		tp.status(gw, &st)
		accepted += st.GenevePackets
		if st.Drops["unknown_source"] != 0 {
			t.Errorf("%s dropped %d GENEVE packets from its IPv6 demux as unknown", gw, st.Drops["unknown_source"])
		}
		if !strings.HasPrefix(st.Peer.Endpoint, "[fd00:1:") {
			t.Errorf("%s peer endpoint %q, want the IPv6 underlay", gw, st.Peer.Endpoint)
		}
	}
	if accepted == 0 || r.End.SumReceived.Bytes <= 0 {
		t.Errorf("gateways accepted %d GENEVE packets; iperf3 received %.0f bytes", accepted, r.End.SumReceived.Bytes)
	}
}
