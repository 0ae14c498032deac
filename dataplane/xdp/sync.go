//go:build linux

package xdp

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/clusterpeer/clusterpeer/dataplane/geneveauth"
	"github.com/clusterpeer/clusterpeer/dataplane/ratelog"
	"github.com/clusterpeer/clusterpeer/flowhash"
)

// resolver finds how this host reaches each lane's gateway: the route's
// interface and source address, and the next hop's MAC from the
// neighbour table. A gateway without a usable neighbour entry comes back
// with Ifindex 0 (its lane's packets go to userspace, whose sends make
// the kernel resolve it; lane probes keep the entries fresh). IPv6
// gateways are not handled by the program and also come back
// unresolved.
//
// Sync asks every 100 ms, so what a round of lanes shares is read once:
// an interface's neighbour table once per round, its own MAC once per
// linkTTL. Reading both for every lane every round was most of a
// demux's garbage (netlink dumps, parsed whole), and of its resident
// memory's sawtooth.
type resolver struct {
	neighs map[int][]netlink.Neigh // this round's, by interface
	links  map[int]ownMAC
	now    func() time.Time
}

type ownMAC struct {
	mac net.HardwareAddr
	at  time.Time
}

// linkTTL is how long an interface's own MAC is taken as read.
const linkTTL = 10 * time.Second

func newResolver() *resolver {
	return &resolver{links: map[int]ownMAC{}, now: time.Now}
}

// round starts a round: neighbour tables are read afresh.
func (r *resolver) round() { clear(r.neighs) }

func (r *resolver) resolve(lane flowhash.LaneID, gw netip.AddrPort) Target {
	t := Target{Lane: lane, Dst: gw}
	if !gw.Addr().Unmap().Is4() {
		return t
	}
	t.Dst = netip.AddrPortFrom(gw.Addr().Unmap(), gw.Port())
	routes, err := netlink.RouteGet(t.Dst.Addr().AsSlice())
	if err != nil || len(routes) == 0 {
		return t
	}
	rt := routes[0]
	next := t.Dst.Addr()
	if gwIP, ok := netip.AddrFromSlice(rt.Gw); ok && gwIP.Unmap().IsValid() && !gwIP.IsUnspecified() {
		next = gwIP.Unmap()
	}
	src, ok := netip.AddrFromSlice(rt.Src)
	if !ok || !src.Unmap().Is4() {
		return t
	}
	mac := r.linkMAC(rt.LinkIndex)
	if len(mac) != 6 {
		return t
	}
	neighs, ok := r.neighs[rt.LinkIndex]
	if !ok {
		if neighs, err = netlink.NeighList(rt.LinkIndex, netlink.FAMILY_V4); err != nil {
			return t
		}
		if r.neighs == nil {
			r.neighs = map[int][]netlink.Neigh{}
		}
		r.neighs[rt.LinkIndex] = neighs
	}
	for _, n := range neighs {
		ip, _ := netip.AddrFromSlice(n.IP)
		if ip.Unmap() != next || len(n.HardwareAddr) != 6 ||
			n.State&(netlink.NUD_REACHABLE|netlink.NUD_STALE|netlink.NUD_DELAY|netlink.NUD_PROBE|netlink.NUD_PERMANENT|netlink.NUD_NOARP) == 0 {
			continue
		}
		t.Ifindex, t.Src = rt.LinkIndex, src.Unmap()
		t.SrcMAC, t.DstMAC = mac, n.HardwareAddr
		return t
	}
	return t
}

// linkMAC is interface idx's own MAC, read at most once per linkTTL.
func (r *resolver) linkMAC(idx int) net.HardwareAddr {
	now := r.now()
	if m, ok := r.links[idx]; ok && now.Sub(m.at) < linkTTL {
		return m.mac
	}
	l, err := netlink.LinkByIndex(idx)
	if err != nil {
		delete(r.links, idx)
		return nil
	}
	r.links[idx] = ownMAC{l.Attrs().HardwareAddr, now}
	return l.Attrs().HardwareAddr
}

// SyncConfig says where Sync gets the lane set from.
type SyncConfig struct {
	Selector *flowhash.Selector
	// Gateways returns each lane's gateway GENEVE address.
	Gateways func() map[flowhash.LaneID]netip.AddrPort
	// Sealer returns the lane's sealer, whose key a sealing program
	// seals with (nil for a program that does not seal). A key change
	// (a rotation) should Kick.
	Sealer func(flowhash.LaneID) *geneveauth.Sealer
	// Kick wakes Sync at once (the demux signals every lane change).
	Kick  <-chan struct{}
	Every time.Duration // neighbour refresh; 100 ms if zero
	Log   *slog.Logger
}

// Sync keeps the maps in step with the selector and the neighbour table
// until ctx ends: at once on a kick (a lane change), and every Every to
// pick up resolved or changed gateway MACs. A failed lane's settle window
// shows in the maps as its target gone (the program passes its flows up
// to the userspace demux, which holds them); when it ends, the lane set
// without it is published at once, and the hand-over ledger keeps each
// flow's packets sent by the program behind those still with the
// userspace demux (handover.go).
func (p *Program) Sync(ctx context.Context, cfg SyncConfig) {
	if cfg.Every <= 0 {
		cfg.Every = 100 * time.Millisecond
	}
	tick := time.NewTicker(cfg.Every)
	defer tick.Stop()
	var last []Target
	res := newResolver()
	watch := new(ledgerWatch)
	var lostLog ratelog.Limiter
	lostLog.Every = 10 * time.Second
	for {
		p.publishIfChanged(cfg.Selector.Snapshot(), cfg, res, &last)
		select {
		case <-ctx.Done():
			return
		case <-cfg.Kick:
		case <-tick.C:
			if err := p.SweepPins(); err != nil {
				cfg.Log.Error("xdp: pins not swept", "err", err)
			}
			if n := p.tidyLedger(watch, time.Now()); n > 0 {
				lostLog.Warn(cfg.Log, "xdp: packets passed up to the userspace demux never reached it (dropped on the way: its TUN queue full?); their flows no longer wait for them",
					"packets", n, "total", p.writtenOff.Load())
			}
		}
	}
}

// publishIfChanged publishes snap if it or the targets changed.
func (p *Program) publishIfChanged(snap *flowhash.Snapshot, cfg SyncConfig, res *resolver, last *[]Target) {
	gws := cfg.Gateways()
	res.round()
	targets := make([]Target, 0, len(snap.Lanes))
	settling, _ := snap.Settling()
	for _, l := range snap.Lanes {
		gw, ok := gws[l.ID]
		// A lane in its settle window has no target: the program
		// passes its flows' packets up to the userspace demux, which
		// holds them until the window ends.
		if !ok || l.ID == settling {
			continue
		}
		t := res.resolve(l.ID, gw)
		// Keep a lane's last resolution through a failed lookup (a
		// netlink hiccup, a neighbour entry being re-probed): moving
		// its packets to userspace and back could reorder a flow.
		if i := slices.IndexFunc(*last, func(o Target) bool { return o.Lane == l.ID && o.Dst == t.Dst }); t.Ifindex == 0 && i >= 0 && (*last)[i].Ifindex != 0 {
			t = (*last)[i]
		}
		t.Seal = nil
		if cfg.Sealer != nil {
			if sl := cfg.Sealer(l.ID); sl != nil {
				k, id := sl.Key()
				t.Seal = &SealKey{Key: k, ID: id}
			}
		}
		targets = append(targets, t)
	}
	if snap.Version != p.Published() || !slices.EqualFunc(targets, *last, sameTarget) {
		if err := p.Publish(snap, targets); err != nil {
			cfg.Log.Error("xdp: maps not updated", "err", err)
		} else {
			logResolution(cfg.Log, *last, targets)
			*last = targets
		}
	}
}

func sameTarget(a, b Target) bool {
	return a.Lane == b.Lane && a.Ifindex == b.Ifindex && a.Src == b.Src && a.Dst == b.Dst &&
		slices.Equal(a.SrcMAC, b.SrcMAC) && slices.Equal(a.DstMAC, b.DstMAC) &&
		(a.Seal == nil) == (b.Seal == nil) && (a.Seal == nil || *a.Seal == *b.Seal)
}

// logResolution logs each lane whose gateway became reachable for the
// program, or stopped being so.
func logResolution(log *slog.Logger, old, now []Target) {
	was := map[flowhash.LaneID]Target{}
	for _, t := range old {
		was[t.Lane] = t
	}
	for _, t := range now {
		o, seen := was[t.Lane]
		switch {
		case t.Ifindex != 0 && (!seen || !sameTarget(o, t)):
			log.Info("xdp: lane gateway resolved; the fast path sends its packets", "lane", t.Lane,
				"gateway", t.Dst, "mac", t.DstMAC.String(), "ifindex", t.Ifindex)
		case t.Ifindex == 0 && (!seen || o.Ifindex != 0):
			why := "no neighbour entry yet"
			if !t.Dst.Addr().Is4() {
				why = "IPv6 underlay: the fast path encapsulates over IPv4 only"
			}
			log.Info("xdp: lane gateway not resolved; its packets go to the userspace demux", "lane", t.Lane,
				"gateway", t.Dst, "why", why)
		}
	}
}

// AttachPass attaches a program that passes every frame to ifname in
// native mode, through netlink so that it stays after this process exits
// (until the interface goes or DetachPass). Native XDP on a veth delivers
// XDP_TX'd and redirected frames only to a peer that runs an XDP program:
// this is that program, for the demux's LAN peer.
func AttachPass(ifname string) error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "xdp_pass", Type: ebpf.XDP, License: "Dual MIT/GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2 /* XDP_PASS */), asm.Return()},
	})
	if err != nil {
		return fmt.Errorf("xdp: load pass program: %w", err)
	}
	defer prog.Close()
	return AttachKept(ifname, prog)
}

// AttachKept attaches prog to ifname in native mode through netlink, so
// that it stays after this process exits (until the interface goes or
// DetachPass).
func AttachKept(ifname string, prog *ebpf.Program) error {
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("xdp: interface %s: %w", ifname, err)
	}
	if err := netlink.LinkSetXdpFdWithFlags(l, prog.FD(), unix.XDP_FLAGS_DRV_MODE); err != nil {
		return fmt.Errorf("xdp: attach to %s: %w", ifname, err)
	}
	return nil
}

// DetachPass removes what AttachPass attached.
func DetachPass(ifname string) error {
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("xdp: interface %s: %w", ifname, err)
	}
	return netlink.LinkSetXdpFdWithFlags(l, -1, unix.XDP_FLAGS_DRV_MODE)
}

// InterfaceOf is the interface that holds addr (the demux's LAN address),
// where the program attaches by default.
func InterfaceOf(addr netip.Addr) (*net.Interface, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	for i := range ifs {
		as, _ := ifs[i].Addrs()
		for _, a := range as {
			if n, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap() == addr.Unmap() {
					return &ifs[i], nil
				}
			}
		}
	}
	return nil, fmt.Errorf("xdp: no interface has the address %s", addr)
}
