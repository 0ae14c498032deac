package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/clusterpeer/clusterpeer/cmd/internal/cli"
	"github.com/clusterpeer/clusterpeer/config"
	"github.com/clusterpeer/clusterpeer/dataplane/demux"
	"github.com/clusterpeer/clusterpeer/dataplane/geneveauth"
	"github.com/clusterpeer/clusterpeer/dataplane/xdp"
	"github.com/clusterpeer/clusterpeer/flowhash"
)

// xdpFlags are `demux up`'s fast path options.
type xdpFlags struct {
	mode string
	dev  string
}

func (f *xdpFlags) add(fs *flag.FlagSet) {
	fs.StringVar(&f.mode, "xdp", string(xdp.Native), "XDP fast path: native (falls back to generic), generic or off")
	fs.StringVar(&f.dev, "xdp-dev", "", "interface to attach to (default: the one holding the demux's first address)")
}

// fastPath is the loaded XDP program and what feeds it.
type fastPath struct {
	prog *xdp.Program
	kick chan struct{}
	dev  string
	mode xdp.Mode
}

// loadFastPath loads the program (not yet attached); nil with --xdp=off.
// With security.geneve_auth the program seals as sender does, each
// frame's counter from the one it shares with the lane's userspace
// sealer (fastPath.counter).
func loadFastPath(f xdpFlags, p *config.Peering, d *config.Demux, sender uint8, flowKey flowhash.Key, remote []netip.Prefix, log *slog.Logger) (*fastPath, error) {
	mode, err := xdp.ParseMode(f.mode)
	if err != nil || mode == xdp.Off {
		return nil, err
	}
	dev := f.dev
	var mac []byte
	if dev == "" {
		if len(d.Addresses) == 0 {
			return nil, fmt.Errorf("--xdp: the demux has no address to find its interface by; give --xdp-dev")
		}
		ifc, err := xdp.InterfaceOf(d.Addresses[0])
		if err != nil {
			return nil, fmt.Errorf("--xdp: %w (give --xdp-dev, or --xdp=off)", err)
		}
		dev, mac = ifc.Name, ifc.HardwareAddr
	} else {
		ifc, err := net.InterfaceByName(dev)
		if err != nil {
			return nil, fmt.Errorf("--xdp-dev: %w", err)
		}
		mac = ifc.HardwareAddr
	}
	prog, err := xdp.Load(xdp.Config{
		Key: flowKey, HashMode: p.Hash.Mode, Symmetric: p.Hash.Symmetric,
		TableSize: p.Hash.TableSize, PinFlows: p.Hash.PinFlows,
		MTU: p.MTU, VNI: p.VNI, Remote: remote, IngressMAC: mac,
		Seal: p.Security.GeneveAuth, Sender: sender,
	})
	if err != nil {
		// Loading takes CAP_BPF, and CAP_PERFMON for the verifier to allow
		// what the program does with pointers; CAP_NET_ADMIN attaches it.
		return nil, fmt.Errorf("%w (run with --xdp=off to use the userspace demux alone)", cli.NeedsCaps(err, unix.CAP_BPF, unix.CAP_PERFMON, unix.CAP_NET_ADMIN))
	}
	return &fastPath{prog: prog, kick: make(chan struct{}, 1), dev: dev, mode: mode}, nil
}

// wake makes the map sync publish the selector's snapshot now (a lane
// change, a new flow-hash key).
func (fp *fastPath) wake() {
	select {
	case fp.kick <- struct{}{}:
	default:
	}
}

// lanes hooks the fast path into the demux's lane changes.
func (fp *fastPath) lanes(lc *demux.LaneConfig, sel *flowhash.Selector) {
	lc.OnPublish = fp.wake
	lc.FastPathPackets = fp.prog.LanePackets
	lc.FastPathFence = func(limit time.Duration) bool {
		return fp.prog.WaitPublished(sel.Snapshot().Version, limit)
	}
}

// counter is the lane's seal counter in the program's map, which the
// lane's userspace sealer shares (nil: the program does not seal).
func (fp *fastPath) counter(lane flowhash.LaneID) *atomic.Uint64 {
	if fp == nil {
		return nil
	}
	return fp.prog.SealCounter(lane)
}

// recent is where the program notes the tags it seals (nil: it does
// not seal, or there is no program).
func (fp *fastPath) recent() *geneveauth.Recent {
	if fp == nil {
		return nil
	}
	return fp.prog.SealRecent()
}

// start publishes the lanes, then attaches, and keeps the maps in step
// until ctx ends. A sealing program seals each lane's frames with its
// sealer's key of the moment (a rotation wakes the sync).
func (fp *fastPath) start(ctx context.Context, sel *flowhash.Selector, dm *demux.Demux, seal *sealers, log *slog.Logger) error {
	cfg := xdp.SyncConfig{Selector: sel, Gateways: dm.Gateways, Kick: fp.kick, Log: log}
	if seal != nil {
		cfg.Sealer = seal.lane
	}
	go fp.prog.Sync(ctx, cfg)
	at, err := fp.prog.Attach(fp.dev, fp.mode, log)
	if err != nil {
		return fmt.Errorf("%w (run with --xdp=off to use the userspace demux alone)", cli.NeedsCaps(err, unix.CAP_NET_ADMIN))
	}
	log.Info("xdp: fast path attached", "interface", at.Interface, "mode", at.Mode)
	if isVeth(at.Interface) && at.Mode == xdp.Native {
		log.Info("xdp: native mode on a veth: its peer must run an XDP program (`demux xdp-pass --dev PEER` in the peer's namespace) for sent frames to arrive, senders toward it need `ethtool -K DEV tx off`, and `ethtool -K " + at.Interface + " tso off` here has the demux's own sends share the peer's receive ring with the program's frames (a flow moving from one to the other then stays in order)")
	}
	return nil
}

func isVeth(dev string) bool {
	l, err := netlink.LinkByName(dev)
	return err == nil && l.Type() == "veth"
}

// xdpPass attaches (or with --off removes) the pass-everything program a
// veth peer needs for native XDP_TX to arrive.
func xdpPass(args []string) error {
	fs := flag.NewFlagSet("xdp-pass", flag.ContinueOnError)
	dev := fs.String("dev", "", "the interface (the demux LAN veth's peer)")
	off := fs.Bool("off", false, "remove it instead")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dev == "" {
		return fmt.Errorf("xdp-pass: --dev is required")
	}
	if *off {
		return xdp.DetachPass(*dev)
	}
	return xdp.AttachPass(*dev)
}
