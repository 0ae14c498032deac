// Command demux runs a peering's demux: it takes the packets its network
// routes to the remote prefixes from a TUN and spreads them over the lanes
// by flow, inside GENEVE to each lane's local gateway.
//
//	demux up    --config peering.yaml --node demux-a
//	demux show  --config peering.yaml --node demux-a [--json]
//	demux check --config peering.yaml
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/clusterpeer/clusterpeer/admin"
	"github.com/clusterpeer/clusterpeer/cmd/internal/cli"
	"github.com/clusterpeer/clusterpeer/config"
	"github.com/clusterpeer/clusterpeer/dataplane/demux"
	"github.com/clusterpeer/clusterpeer/dataplane/tunlink"
	"github.com/clusterpeer/clusterpeer/flowhash"
)

func main() {
	cli.Main("demux", map[string]cli.Command{
		"up":    {Usage: "up --config FILE --node NAME", Help: "run the demux until SIGINT/SIGTERM", Run: up},
		"show":  {Usage: "show --config FILE --node NAME [--json]", Help: "print lanes, state and counters", Run: show},
		"check": {Usage: "check --config FILE", Help: "validate a config and exit", Run: cli.Check},
	})
}

func up(args []string) error {
	log, p, node, err := cli.Up(args, true)
	if err != nil {
		return err
	}
	d := node.Demux
	sel, err := flowhash.New(flowhash.Config{
		Key: p.Hash.Key, Mode: p.Hash.HashMode, Symmetric: p.Hash.Symmetric,
		TableSize: p.Hash.TableSize, Pins: flowhash.PinConfig{Capacity: p.Hash.PinFlows},
	})
	if err != nil {
		return err
	}
	lanes := make([]flowhash.Lane, len(p.Lanes))
	for i, l := range p.Lanes {
		lanes[i] = flowhash.Lane{ID: flowhash.LaneID(l.ID), Weight: l.Weight, State: flowhash.LaneUp}
	}
	if err := sel.SetLanes(lanes); err != nil {
		return err
	}

	t, err := tun.CreateTUN(d.Tun, p.MTU)
	if err != nil {
		return fmt.Errorf("create tun %s: %w", d.Tun, err)
	}
	defer t.Close()
	if err := tunlink.Up(d.Tun, p.Networks[config.Other(node.Side)].Parsed); err != nil {
		return err
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

	remote := p.Networks[config.Other(node.Side)].Parsed
	cfg := demux.Config{Selector: sel, VNI: p.VNI, MTU: p.MTU, Remote: remote, Log: log}
	for _, a := range d.Sources {
		if a.Is4() && !cfg.ICMPv4.IsValid() {
			cfg.ICMPv4 = a
		}
		if a.Is6() && !cfg.ICMPv6.IsValid() {
			cfg.ICMPv6 = a
		}
	}
	dm, err := demux.New(t, bind, cfg)
	if err != nil {
		return err
	}
	var targets []demux.Target
	for _, l := range p.Lanes {
		g := l.End(node.Side)
		ep, err := bind.ParseEndpoint(g.GeneveAddr.String())
		if err != nil {
			return fmt.Errorf("lane %d gateway %s: %w", l.ID, g.GeneveAddr, err)
		}
		targets = append(targets, demux.Target{ID: flowhash.LaneID(l.ID), Name: g.Name, Endpoint: ep, Addr: g.GeneveAddr})
	}
	dm.SetTargets(targets)

	reg := prometheus.NewRegistry()
	reg.MustRegister(dm)
	identity := demux.Status{
		Node: d.Name, Peering: p.Name, Side: node.Side, Tun: d.Tun, MTU: p.MTU, VNI: p.VNI,
		Hash: hashName(p.Hash),
	}
	srv, err := admin.Serve(d.Metrics, d.Status, reg, func() any { return dm.Status(identity) }, log)
	if err != nil {
		return err
	}
	defer srv.Close()

	ctx, stop := cli.SignalContext()
	defer stop()
	done := make(chan error, 1)
	go func() { done <- dm.Run() }()
	log.Info("demux up", "peering", p.Name, "side", node.Side, "tun", d.Tun, "mtu", p.MTU,
		"lanes", len(p.Lanes), "hash", identity.Hash, "metrics", d.Metrics, "status", d.Status)
	select {
	case <-ctx.Done():
		log.Info("demux stopping")
		t.Close()
		<-done
		return nil
	case err := <-done:
		return err
	}
}

func hashName(h config.Hash) string {
	s := h.HashMode.String()
	if h.Symmetric {
		s += " symmetric"
	}
	return s
}

func show(args []string) error {
	var st demux.Status
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

func printStatus(st demux.Status) {
	fmt.Printf("demux: %s (peering %s, side %s)\n", st.Node, st.Peering, st.Side)
	fmt.Printf("  tun: %s  mtu: %d  vni: %d  hash: %s\n", st.Tun, st.MTU, st.VNI, st.Hash)
	fmt.Printf("  received: %d packets, %s  pinned flows: %d\n", st.Packets, cli.HumanBytes(st.Bytes), st.PinnedFlows)
	if st.TooBig > 0 || st.ICMPSent > 0 {
		fmt.Printf("  too big: %d (icmp sent: %d)\n", st.TooBig, st.ICMPSent)
	}
	cli.PrintDrops(st.Drops)
	for _, l := range st.Lanes {
		fmt.Printf("\nlane %d: %s\n", l.ID, l.State)
		fmt.Printf("  gateway: %s (%s)  weight: %d\n", l.Gateway, l.Address, l.Weight)
		fmt.Printf("  sent: %d packets, %s", l.Packets, cli.HumanBytes(l.Bytes))
		if l.SendErrors > 0 {
			fmt.Printf("  send errors: %d", l.SendErrors)
		}
		fmt.Println()
	}
}
