// Command demux runs a peering's demux: it takes the packets its network
// routes to the remote prefixes from a TUN and spreads them over the lanes
// by flow, inside GENEVE to each lane's local gateway.
//
//	demux up    --config peering.yaml --node demux-a
//	demux show  --config peering.yaml --node demux-a [--json]
//	demux check --config peering.yaml
//	demux reload  --config peering.yaml --node demux-a   (or SIGHUP)
//	demux drain   --config peering.yaml --node demux-a --lane 2 [--deadline 30s]
//	demux undrain --config peering.yaml --node demux-a --lane 2
//	demux keepalived --config peering.yaml --node demux-a   (an HA pair's keepalived.conf)
//	demux health  --config peering.yaml --node demux-a      (keepalived's track_script)
//	demux notify  --config peering.yaml --node demux-a ...  (keepalived's notify)
//	demux members --config peering.yaml                     (the store's registrations)
//	demux which --config peering.yaml --node demux-a 10.1.0.5 10.2.0.9 tcp 40000 443
//	demux flows --config peering.yaml --node demux-a --top 5  (each lane's busiest flows)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/clusterpeer/clusterpeer/admin"
	"github.com/clusterpeer/clusterpeer/cmd/internal/cli"
	"github.com/clusterpeer/clusterpeer/cmd/internal/service"
	"github.com/clusterpeer/clusterpeer/config"
	"github.com/clusterpeer/clusterpeer/dataplane/demux"
	"github.com/clusterpeer/clusterpeer/dataplane/tunlink"
	"github.com/clusterpeer/clusterpeer/dataplane/xdp"
	"github.com/clusterpeer/clusterpeer/flowhash"
	"github.com/clusterpeer/clusterpeer/membership"
	"github.com/clusterpeer/clusterpeer/tunnel/keyring"
	"github.com/clusterpeer/clusterpeer/tunnel/probe"
)

func main() {
	cli.Main("demux", "spread a network's traffic over the lanes of an encrypted cluster peering, by flow", map[string]cli.Command{
		"up":         {Usage: "up --config FILE --node NAME", Help: "run the demux until SIGINT/SIGTERM", Run: up},
		"show":       {Usage: "show --config FILE --node NAME [--json]", Help: "print lanes, state and counters", Run: show},
		"check":      {Usage: "check --config FILE", Help: "validate a config and exit", Run: cli.Check},
		"keys":       {Usage: "keys --config FILE --secret FILE [--previous FILE --switch-in D --grace D] [--out DIR]", Help: "write each node its own key file (security.keys_dir)", Run: keys},
		"reload":     {Usage: "reload --config FILE --node NAME", Help: "re-read the config the demux runs with (as SIGHUP does)", Run: action("reload", false)},
		"drain":      {Usage: "drain --config FILE --node NAME --lane N [--deadline D]", Help: "stop new flows to a lane; pinned flows stay until idle or D", Run: action("drain", true)},
		"xdp-pass":   {Usage: "xdp-pass --dev IF [--off]", Help: "attach a pass-all XDP program to a veth peer (native XDP_TX needs one)", Run: xdpPass},
		"keepalived": {Usage: "keepalived --config FILE --node NAME [--demux-bin PATH]", Help: "print keepalived.conf for a demux of an HA pair (networks.X.ha)", Run: keepalivedConf},
		"health":     {Usage: "health --config FILE --node NAME", Help: "exit 0 if the demux runs, its TUN is up and a lane is up (keepalived's check)", Run: healthCheck},
		"notify":     {Usage: "notify --config FILE --node NAME INSTANCE NAME STATE [PRIO]", Help: "keepalived's notify: tell the demux its role, run ha.notify", Run: notify},
		"undrain":    {Usage: "undrain --config FILE --node NAME --lane N", Help: "return a drained lane to service", Run: action("undrain", true)},
		"members":    {Usage: "members --config FILE [--json]", Help: "list the store's registrations, verified (discovery: etcd)", Run: cli.Members},
		"which":      {Usage: "which --config FILE --node NAME SRC DST PROTO [SPORT DPORT]", Help: "say which lane a flow takes, why (table or pin), and which path carries it", Run: whichCmd},
		"flows":      {Usage: "flows --config FILE --node NAME [--top N] [--interval D]", Help: "list each lane's busiest pinned flows (packets/s over D)", Run: flowsCmd},
	})
}

func up(args []string) error {
	var xf xdpFlags
	queues := 0
	log, p, node, err := cli.UpWith(args, true, func(fs *flag.FlagSet) {
		xf.add(fs)
		fs.IntVar(&queues, "queues", 0, fmt.Sprintf("TUN queues, each read by a loop of its own (default: one per CPU, at most %d)", maxQueues))
	})
	if err != nil {
		return err
	}
	if queues < 0 || queues > 64 {
		return fmt.Errorf("--queues %d: want 1-64 (0: one per CPU)", queues)
	}
	if queues == 0 {
		queues = min(runtime.NumCPU(), maxQueues)
	}
	d := node.Demux
	keys, err := p.Ring(node, d.Name)
	if err != nil {
		return err
	}
	// The flow-hash key is the one of the generation signing at start; a
	// newer one applies when the demux restarts (pins are keyed by it).
	flowKey, err := keys.Flow(time.Now())
	if err != nil {
		return fmt.Errorf("security.keys_dir: %w", err)
	}
	sel, err := flowhash.New(selectorConfig(p, flowKey))
	if err != nil {
		return err
	}
	tuns, err := tunlink.Create(d.Tun, queues, p.MTU)
	if err != nil {
		return cli.NeedsCaps(fmt.Errorf("create tun %s: %w", d.Tun, err), unix.CAP_NET_ADMIN)
	}
	defer closeAll(tuns)
	if err := tunlink.Up(d.Tun, p.Networks[node.Side.Other()].Prefixes); err != nil {
		return cli.NeedsCaps(err, unix.CAP_NET_ADMIN)
	}
	// The ICMP errors the demux writes back into the TUN come from this
	// host's own address (as a router's do); without accept_local the
	// kernel drops them as martians.
	if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+d.Tun+"/accept_local", []byte("1"), 0); err != nil {
		log.Warn("cannot accept ICMP errors from the TUN; IPv4 senders will not learn the path MTU", "err", err)
	}
	bind := conn.NewStdNetBind()
	if _, _, err := bind.Open(0); err != nil {
		return fmt.Errorf("open udp socket: %w", err)
	}
	defer bind.Close()

	cfg := demuxConfig(p, node, sel, log)
	remote := cfg.Remote
	dm, err := demux.New(tuns[0], bind, cfg)
	if err != nil {
		return err
	}
	for _, t := range tuns[1:] {
		dm.AddQueue(t)
	}
	fp, err := loadFastPath(xf, p, d, p.Sender(node), flowKey, remote, log)
	if err != nil {
		return err
	}
	if fp != nil {
		defer fp.prog.Close() // detaches: the kernel path and the userspace demux take over
		dm.SetFinished(fp.prog.Finished)
	}
	lc := demux.LaneConfig{DrainTimeout: p.Health.DrainTimeout, DrainIdle: p.Health.DrainIdle}
	if fp != nil {
		fp.lanes(&lc, sel)
	}
	prober, stopHealth, err := startHealth(p, node, keys, dm, log)
	if err != nil {
		return err
	}
	defer stopHealth()
	if prober != nil { // a nil *Prober in the interface would be a prober
		lc.Prober = prober
	}
	dm.UseLanes(lc)
	rot := newRotation(keys, time.Now())
	seal, err := newSealers(p, node, keys, rot, fp.counter, fp.recent(), time.Now())
	if err != nil {
		return err
	}
	specs, err := laneSpecs(p, nil, node.Side, bind, seal)
	if err != nil {
		return err
	}
	if err := dm.ApplyLanes(specs); err != nil {
		return err
	}

	// The flow hash follows a rotated secret live: new flows take the new
	// key's table, pinned ones stay; the XDP program gets the key with
	// that table, at once, and (sealing) the sealers' new keys, which
	// switched before this follower ran.
	rot.follow(func(g keyring.Gen) {
		k, _ := g.Key(keyring.FlowPath)
		if err := sel.SetKey(flowhash.Key(k[:16])); err != nil {
			log.Error("flow-hash key not changed", "generation", fmt.Sprintf("%#02x", g.ID), "err", err)
			return
		}
		if fp != nil {
			fp.wake()
		}
		log.Info("flow-hash key changed: new flows follow its table, established ones stay on their pins", "generation", fmt.Sprintf("%#02x", g.ID))
	})
	rot.use(keys) // a generation of the file still to come switches at its time
	r := &reloader{running: p, node: d.Name, bind: bind, seal: seal, rot: rot, dm: dm, prober: prober, log: log}
	r.note(specs)
	var store *membership.Store
	if p.Discovery.Mode == config.DiscoveryEtcd {
		if store, err = membership.Dial(p, log); err != nil {
			return err
		}
		defer store.Close()
		r.view = store.View(p, r.storeChanged)
	}

	role := newHARole(p.Networks[node.Side], d.Name)
	reg := prometheus.NewRegistry()
	reg.MustRegister(dm, cli.BuildInfo("demux"), cli.KeysExpiry(rot.expiry))
	reg.MustRegister(role.collectors()...)
	if fp != nil {
		reg.MustRegister(fp.prog)
	}
	if r.view != nil {
		reg.MustRegister(r.view.Collector(d.Name))
	}
	identity := identityOf(p, node)
	srv, err := admin.Serve(d.Metrics, p.Metrics.WebConfig, d.Status, reg, func() any {
		st := status{Status: dm.Status(identity), HA: role.status(), Build: cli.BuildOf()}
		if fp != nil {
			st.XDP = fp.prog.Status()
		}
		if store != nil {
			st.Store = storeStatusOf(store, r.view)
		}
		return st
	}, log)
	if err != nil {
		return err
	}
	defer srv.Close()
	for name, act := range adminActions(dm, r.reload, role, log) {
		srv.Handle(name, act)
	}
	fr := flowReader{sel: sel, fp: fp, lanes: func() []demux.LaneStatus { return dm.Status(identity).Lanes }}
	srv.Handle("which", fr.which)
	srv.Handle("flows", fr.flows)

	ctx, stop := cli.SignalContext()
	defer stop()
	done := make(chan error, 1)
	go func() { done <- dm.Run() }()
	if prober != nil {
		go prober.Run(ctx)
	}
	if r.view != nil {
		go r.view.Run(ctx)
	}
	if fp != nil {
		if err := fp.start(ctx, sel, dm, seal, log); err != nil {
			return err
		}
	}
	log.Info("demux up", "peering", p.Name, "side", node.Side, "tun", d.Tun, "queues", len(tuns), "mtu", p.MTU,
		"lanes", len(p.Lanes), "hash", identity.Hash, "metrics", d.Metrics, "status", d.Status,
		"probe_interval", p.Health.Interval, "detect_multiplier", p.Health.DetectMultiplier)
	lanesUp := func() (bool, string) { return lanesSummary(dm.Status(identity)) }
	go service.Ready(ctx, readyWait, lanesUp)
	go service.Watchdog(ctx, func() { lanesUp() })
	go service.ReleaseMemory(ctx, service.ReleaseEvery)
	return serve(ctx, tuns, dm, done, r, lanesUp, log)
}

// readyWait is how long `demux up` waits for its first lane before it
// tells systemd it is ready anyway: its TUN and sockets are up, and lanes
// come up whenever their gateways answer.
const readyWait = 10 * time.Second

// lanesSummary says whether a lane is up, and how many are, for systemd.
func lanesSummary(st demux.Status) (bool, string) {
	up := 0
	for _, l := range st.Lanes {
		if l.Healthy {
			up++
		}
	}
	return up > 0, fmt.Sprintf("%d of %d lanes up", up, len(st.Lanes))
}

// maxQueues is the most TUN queues --queues defaults to: past a few
// cores the gateways, not the demux, need the CPU.
const maxQueues = 8

func closeAll(tuns []tun.Device) {
	for _, t := range tuns {
		t.Close()
	}
}

// startHealth opens the lane prober (none with health.enabled: false) and
// the ICMP watch over the frames sent to the gateways: a gateway that is
// gone says so within a millisecond. stop closes both.
func startHealth(p *config.Peering, node config.Node, keys *keyring.Ring, dm *demux.Demux, log *slog.Logger) (*probe.Prober, func(), error) {
	if !p.Health.On {
		log.Warn("lane health checks are off (health.enabled: false): every configured lane takes traffic")
		return nil, func() {}, nil
	}
	prober, err := probe.NewProber(proberConfig(p, node, keys, dm, log))
	if err != nil {
		return nil, nil, err
	}
	warnStrictRPFilter(log)
	v4, v6 := families(node.Demux.Addresses)
	drainICMP, stopICMP, err := dm.WatchICMP(prober, v4, v6)
	if err != nil {
		log.Warn("gateways' ICMP failure signals off; a dead gateway is noticed by the probes' silence (or its notices) only", "err", err)
		stopICMP = func() {}
	} else {
		prober.BeforeJudging(drainICMP)
	}
	return prober, func() { stopICMP(); prober.Close() }, nil
}

// serve runs until a signal ends the demux or its data path fails: SIGHUP
// reloads, and the lanes' timers tick.
func serve(ctx context.Context, tuns []tun.Device, dm *demux.Demux, done <-chan error, r *reloader, lanesUp func() (bool, string), log *slog.Logger) error {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			log.Info("demux stopping")
			service.Notify("STOPPING=1")
			closeAll(tuns)
			<-done
			return nil
		case err := <-done:
			return err
		case <-hup:
			service.Notify(service.Reloading())
			if msg, err := r.reload(); err == nil {
				log.Info("SIGHUP: " + msg)
			}
			_, lanes := lanesUp()
			service.Notify("READY=1\nSTATUS=" + lanes)
		case now := <-tick.C:
			dm.TickLanes(now)
			r.forgetLost()
		}
	}
}

// warnStrictRPFilter: probe replies come from the remote network but
// arrive on the LAN, while this host routes the remote network into the
// demux's TUN; strict reverse-path filtering drops them.
func warnStrictRPFilter(log *slog.Logger) {
	if b, err := os.ReadFile("/proc/sys/net/ipv4/conf/all/rp_filter"); err == nil && strings.TrimSpace(string(b)) == "1" {
		log.Warn("net.ipv4.conf.all.rp_filter=1 (strict) drops lane probe replies, which arrive on the LAN from the remote network; set it to 2 (loose) or every lane stays down")
	}
}

// action is a subcommand that asks the running demux to do something.
func action(name string, withLane bool) func([]string) error {
	return func(args []string) error {
		var f cli.NodeFlags
		var lane int
		var deadline time.Duration
		err := f.ParseWith(name, args, false, func(fs *flag.FlagSet) {
			if withLane {
				fs.IntVar(&lane, "lane", 0, "the lane's id")
			}
			if name == "drain" {
				fs.DurationVar(&deadline, "deadline", 0, "move the lane's remaining pinned flows after this (default: health.drain_timeout)")
			}
		})
		if err != nil {
			return err
		}
		_, node, err := f.Load()
		if err != nil {
			return err
		}
		if node.Demux == nil {
			return fmt.Errorf("node %q is a gateway; %s is a demux command", f.Node, name)
		}
		q := url.Values{}
		if withLane {
			q.Set("lane", strconv.Itoa(lane))
		}
		if deadline > 0 {
			q.Set("deadline", deadline.String())
		}
		msg, err := admin.Do(node.Demux.Status, name, q)
		if err != nil {
			return err
		}
		fmt.Println(msg)
		return nil
	}
}

// status is what `demux show` reads: the demux's, and the fast path's.
type status struct {
	demux.Status
	XDP   *xdp.Status  `json:"xdp,omitempty"`
	HA    *haStatus    `json:"ha,omitempty"`
	Store *storeStatus `json:"store,omitempty"`
	Build cli.Build    `json:"build"`
}

// storeStatus is the membership store as this demux sees it.
type storeStatus struct {
	membership.Health
	Members  []membership.Member          `json:"members"`
	Rejected map[membership.Reject]uint64 `json:"rejected"`
}

func storeStatusOf(s *membership.Store, v *membership.View) *storeStatus {
	st := &storeStatus{Health: s.Health(), Members: v.Members(), Rejected: map[membership.Reject]uint64{}}
	for r, n := range v.Rejected() {
		if n > 0 {
			st.Rejected[r] = n
		}
	}
	return st
}

// printStore says where the store is, whether it answers and since when,
// and what it holds.
func printStore(s *storeStatus) {
	if s == nil {
		return
	}
	state := "reachable"
	if !s.Up {
		state = "UNREACHABLE (lanes stay as last known): " + s.Error
	}
	fmt.Printf("  store: etcd %s, %s since %s (%s ago)\n", strings.Join(s.Endpoints, ", "), state,
		s.Since.Format("15:04:05"), time.Since(s.Since).Round(time.Second))
	lost := 0
	for _, m := range s.Members {
		if m.Lost {
			lost++
		}
	}
	fmt.Printf("    registrations: %d", len(s.Members))
	if lost > 0 {
		fmt.Printf(" (%d lost: lease ended, kept while their lanes answer)", lost)
	}
	fmt.Println()
	counts := map[string]uint64{}
	for r, n := range s.Rejected {
		counts[string(r)] = n
	}
	cli.PrintCounts("records refused", counts)
}

func show(args []string) error {
	var st status
	text, err := cli.Show(args, func(n config.Node) (string, error) {
		if n.Demux == nil {
			return "", errors.New("a gateway; use `tunnel show`")
		}
		return n.Demux.Status, nil
	}, &st)
	if text {
		printStatus(st)
	}
	return err
}

func printStatus(full status) {
	st := full.Status
	fmt.Printf("demux: %s (peering %s, side %s)\n", st.Node, st.Peering, st.Side)
	fmt.Printf("  version: %s (commit %s)\n", full.Build.Version, full.Build.Revision)
	fmt.Printf("  tun: %s (%d queues)  mtu: %d  vni: %d  hash: %s\n", st.Tun, st.Queues, st.MTU, st.VNI, st.Hash)
	if pr := st.Probing; pr != nil {
		fmt.Printf("  probes: every %s per lane, down after %d unanswered (or at once on a failure signal), up after %d answered\n",
			pr.Interval, pr.Multiplier, pr.UpAfter)
		if pr.KeyID != "" {
			fmt.Printf("  keys: probes signed with generation %s\n", pr.KeyID)
		}
	} else {
		fmt.Println("  probes: off (every configured lane takes traffic)")
	}
	fmt.Printf("  received: %d packets, %s  pinned flows: %d", st.Packets, cli.HumanBytes(st.Bytes), st.PinnedFlows)
	if st.PinEvictions > 0 {
		fmt.Printf(" (table full: %d evicted, %d of them moved their flow)", st.PinEvictions, st.PinEvictionsMoved)
	}
	fmt.Println()
	if st.TooBig > 0 || st.ICMPSent > 0 {
		fmt.Printf("  too big: %d (icmp sent: %d)\n", st.TooBig, st.ICMPSent)
	}
	if st.Held > 0 {
		fmt.Printf("  held through a failed lane's settle window: %d packets\n", st.Held)
	}
	cli.PrintDrops(st.Drops)
	printXDP(full.XDP)
	printHA(full.HA)
	printStore(full.Store)
	if st.Probing != nil {
		cli.PrintCounts("probe replies refused", st.Probing.Drops)
		cli.PrintCounts("failure signals", st.Probing.Signals)
	}
	if st.ICMPUnmatched > 0 {
		fmt.Printf("  icmp errors quoting nothing sent there (ignored): %d\n", st.ICMPUnmatched)
	}
	for _, l := range st.Lanes {
		fmt.Printf("\nlane %d: %s", l.ID, l.State)
		if !l.Since.IsZero() {
			fmt.Printf(" for %s (%d transitions, %d failovers)", time.Since(l.Since).Round(time.Millisecond), l.Transitions, l.Failovers)
		}
		fmt.Println()
		if l.Reason != "" {
			fmt.Printf("  last change: %s (%s)\n", l.Reason, l.Since.Format("15:04:05.000"))
		}
		if !l.DrainDeadline.IsZero() {
			fmt.Printf("  drain deadline: in %s\n", time.Until(l.DrainDeadline).Round(time.Second))
		}
		fmt.Printf("  gateway: %s (%s)  weight: %d  from: %s\n", l.Gateway, l.Address, l.Weight, l.Source)
		if p := l.Probes; p != nil {
			fmt.Printf("  probes: rtt %s (smoothed %s)  detect %s  loss %.1f%%  %d sent, %d answered",
				ms(p.RTT), ms(p.SmoothedRTT), ms(p.DetectTime), 100*p.Loss, p.Sent, p.Received)
			if !p.HeldUntil.IsZero() {
				fmt.Printf("  held down (flapping) for %s", time.Until(p.HeldUntil).Round(time.Millisecond))
			}
			fmt.Println()
		}
		fmt.Printf("  sent: %d packets, %s", l.Packets, cli.HumanBytes(l.Bytes))
		if x := full.XDP; x != nil {
			fmt.Printf(" (userspace) + %d packets, %s (xdp)", x.Lanes[l.ID].Packets, cli.HumanBytes(x.Lanes[l.ID].Bytes))
		}
		if l.SendErrors > 0 {
			fmt.Printf("  send errors: %d", l.SendErrors)
		}
		fmt.Println()
	}
}

// printXDP prints the fast path: where it runs and its verdicts.
func printXDP(x *xdp.Status) {
	if x == nil {
		fmt.Println("  xdp: off (userspace demux only)")
		return
	}
	fmt.Printf("  xdp: %s mode on %s, snapshot %d\n", x.Mode, x.Interface, x.Snapshot)
	if x.Error != "" {
		fmt.Printf("    counters unreadable: %s\n", x.Error)
	}
	byVerdict := map[string]map[string]uint64{"sent": {}, "passed": {}, "dropped": {}}
	for reason, n := range x.Reasons {
		byVerdict[xdp.Verdict(reason)][reason] = n
	}
	cli.PrintCounts("xdp sent", byVerdict["sent"])
	cli.PrintCounts("xdp passed to userspace", byVerdict["passed"])
	cli.PrintCounts("xdp dropped", byVerdict["dropped"])
	pn := x.Pins
	fmt.Printf("    xdp pins: %d of %d; inserted %d, unpinned %d (map full), swept %d idle, %d agreeing\n",
		pn.Held, pn.Capacity, pn.Inserts, pn.Unpinned, pn.Expired, pn.Evicted)
	if x.Runs > 0 {
		fmt.Printf("    xdp program: %.0f ns a packet over %d runs (while kernel.bpf_stats_enabled)\n", float64(x.RunTime)/float64(x.Runs), x.Runs)
	}
	if len(x.Unresolved) > 0 {
		fmt.Printf("    lanes without a resolved gateway (userspace sends): %v\n", x.Unresolved)
	}
	if x.HandoverWrittenOff > 0 {
		fmt.Printf("    hand-over: %d packets passed up never reached the userspace demux; their flows stopped waiting for them\n", x.HandoverWrittenOff)
	}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/1e6) }
