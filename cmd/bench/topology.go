package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/clusterpeer/clusterpeer/bench/topology"
	"github.com/clusterpeer/clusterpeer/config"
)

// topologyCmd builds (up) or removes (down) a peering in namespaces, as
// the tests do (package bench/topology): for `make demo` and scripts
// that run their own load across it.
func topologyCmd(args []string) error {
	if len(args) == 0 || (args[0] != "up" && args[0] != "down") {
		return errors.New("want topology up [flags] or topology down --prefix P --work DIR")
	}
	fs := flag.NewFlagSet("bench topology "+args[0], flag.ContinueOnError)
	prefix := fs.String("prefix", "cpdemo", "namespaces are named PREFIX-* (at most 9 characters)")
	work := fs.String("work", "", "the peering's directory: config, keys, logs, pids (required)")
	var o topology.Options
	fs.IntVar(&o.Lanes, "lanes", 3, "gateway pairs")
	bin := fs.String("bin", "bin", "directory with the demux and tunnel binaries")
	health := fs.String("health", "", "the peering's health section, e.g. '{interval: 10ms}'")
	fs.StringVar(&o.XDP, "xdp", "off", "the demuxes' fast path: off, native or generic")
	fs.IntVar(&o.Queues, "queues", 0, "the demuxes' TUN queues (0: one per CPU)")
	fs.StringVar(&o.LogLevel, "log-level", "info", "the nodes' log level")
	fs.IntVar(&o.DemuxLanes, "demux-lanes", 0, "the demuxes start with only the first N lanes (demux.yaml)")
	fs.BoolVar(&o.HA, "ha", false, "network A gets a standby demux and keepalived")
	fs.BoolVar(&o.StockB1, "stock-b1", false, "gw-b1 is Debian's stock wireguard-go (interop)")
	fs.BoolVar(&o.Underlay6, "underlay6", false, "GENEVE and WireGuard over IPv6")
	fs.BoolVar(&o.RPS, "rps", false, "steer each flow to one CPU on every interface")
	fs.IntVar(&o.Etcd, "etcd", 0, "discovery through etcd: a cluster of 1 or 3 members (0: the file only)")
	fs.IntVar(&o.Joined, "joined", 0, "with --etcd: the last N lanes are in no file; their gateways run `tunnel join`")
	fs.IntVar(&o.Spare, "spare", 0, "of the joined lanes, the last N are not started")
	baseline := fs.String("baseline", "", "kernel or wgo: one of the benchmark's baselines instead of the demuxes (1 lane)")
	fs.StringVar(&o.WireGuardGo, "wgo", "bin/wireguard-go", "the wireguard-go binary for --baseline wgo")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *work == "" {
		return errors.New("--work: required")
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces, TUN devices)")
	}
	if args[0] == "down" {
		return topology.Down(*prefix, *work)
	}
	var err error
	if o.Health, err = config.ParseHealth(*health); err != nil {
		return err
	}
	o.Prefix, o.Work, o.Baseline = *prefix, *work, topology.Baseline(*baseline)
	abs := func(p string) string { a, _ := filepath.Abs(p); return a }
	o.Bin, o.WireGuardGo = abs(*bin), abs(o.WireGuardGo)
	p, err := topology.Up(o)
	if err != nil {
		return err
	}
	p.Close()
	return nil
}
