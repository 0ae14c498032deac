package main

import (
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clusterpeer/clusterpeer/admin"
	"github.com/clusterpeer/clusterpeer/config"
	"github.com/clusterpeer/clusterpeer/dataplane/demux"
	"github.com/clusterpeer/clusterpeer/dataplane/geneveauth"
	"github.com/clusterpeer/clusterpeer/flowhash"
	"github.com/clusterpeer/clusterpeer/tunnel/keyring"
	"github.com/clusterpeer/clusterpeer/tunnel/probe"
)

// What `demux up` builds from the peering file, apart from the devices
// and sockets it opens: plain values, so they are tested without root.

func selectorConfig(p *config.Peering, flowKey flowhash.Key) flowhash.Config {
	return flowhash.Config{
		Key: flowKey, Mode: p.Hash.Mode, Symmetric: p.Hash.Symmetric,
		TableSize: p.Hash.TableSize, Pins: flowhash.PinConfig{Capacity: p.Hash.PinFlows},
	}
}

// demuxConfig: the remote network is the other side's; the ICMP errors
// the demux writes come from its first address of each family.
func demuxConfig(p *config.Peering, node config.Node, sel *flowhash.Selector, log *slog.Logger) demux.Config {
	cfg := demux.Config{Selector: sel, VNI: p.VNI, MTU: p.MTU, Remote: p.Networks[node.Side.Other()].Prefixes, Log: log}
	for _, a := range node.Demux.Addresses {
		if a.Is4() && !cfg.ICMPv4.IsValid() {
			cfg.ICMPv4 = a
		}
		if a.Is6() && !cfg.ICMPv6.IsValid() {
			cfg.ICMPv6 = a
		}
	}
	return cfg
}

// laneHealth is what the prober tells (a *demux.Demux).
type laneHealth interface {
	LaneHealth(probe.Change)
	LaneSettled(flowhash.LaneID)
}

func proberConfig(p *config.Peering, node config.Node, keys *keyring.Ring, dm laneHealth, log *slog.Logger) probe.ProberConfig {
	return probe.ProberConfig{
		Keys: keys, Side: string(node.Side), VNI: p.VNI, Port: p.Health.Port, Sources: node.Demux.Addresses,
		Params: p.Health.Params, MaxRate: p.Health.MaxProbeRate, OnChange: dm.LaneHealth, OnSettled: dm.LaneSettled, Log: log,
		StartDelay: probeStartDelay(node.Side),
	}
}

// probeStartDelay: side b lets side a's probes open the WireGuard sessions
// of lanes that start together (see probe.ProberConfig.StartDelay). A
// second covers a first packet held up by neighbour discovery (100 ms on
// this project's IPv6 underlay) with room to spare.
func probeStartDelay(side config.Side) time.Duration {
	if side == config.SideB {
		return time.Second
	}
	return 0
}

// families says which address families addrs hold.
func families(addrs []netip.Addr) (v4, v6 bool) {
	for _, a := range addrs {
		v4, v6 = v4 || a.Is4(), v6 || a.Is6()
	}
	return v4, v6
}

// identityOf is the part of the status that says which node this is.
func identityOf(p *config.Peering, node config.Node) demux.Status {
	d := node.Demux
	id := demux.Status{
		Node: d.Name, Peering: p.Name, Side: string(node.Side), Tun: d.Tun, MTU: p.MTU, VNI: p.VNI,
		Hash: hashName(p.Hash),
	}
	if p.Health.On {
		id.Probing = &demux.Probing{Multiplier: p.Health.DetectMultiplier, UpAfter: p.Health.UpAfter}
	}
	return id
}

func hashName(h config.Hash) string {
	s := h.Mode.String()
	if h.Symmetric {
		s += " symmetric"
	}
	return s
}

// laneControl is what the operator's lane commands change (a *demux.Demux).
type laneControl interface {
	Drain(id flowhash.LaneID, deadline time.Duration) error
	Undrain(id flowhash.LaneID) error
}

// adminActions are the status socket's commands: reload, ha, drain,
// undrain. Their arguments come from the command line of another
// process, so each is checked with an error that names the flag.
func adminActions(lanes laneControl, reload func() (string, error), role *haRole, log *slog.Logger) map[string]admin.Action {
	return map[string]admin.Action{
		"reload": func(url.Values) (string, error) { return reload() },
		"ha":     func(q url.Values) (string, error) { return role.set(q, log) },
		"drain": func(q url.Values) (string, error) {
			id, err := laneArg(q)
			if err != nil {
				return "", err
			}
			var deadline time.Duration
			if s := q.Get("deadline"); s != "" {
				if deadline, err = time.ParseDuration(s); err != nil || deadline <= 0 {
					return "", fmt.Errorf("--deadline %q: want a positive duration such as 30s", s)
				}
			}
			if err := lanes.Drain(id, deadline); err != nil {
				return "", err
			}
			return fmt.Sprintf("lane %d draining: no new flows; pinned flows stay until idle or the deadline", id), nil
		},
		"undrain": func(q url.Values) (string, error) {
			id, err := laneArg(q)
			if err != nil {
				return "", err
			}
			if err := lanes.Undrain(id); err != nil {
				return "", err
			}
			return fmt.Sprintf("lane %d back in service", id), nil
		},
	}
}

func laneArg(q url.Values) (flowhash.LaneID, error) {
	n, err := strconv.Atoi(q.Get("lane"))
	if err != nil || n < 1 || n > flowhash.MaxLaneID {
		return 0, fmt.Errorf("--lane %q: want a lane id (1..%d)", q.Get("lane"), flowhash.MaxLaneID)
	}
	return flowhash.LaneID(n), nil
}

// rotation applies a node's key generations as their times come: at
// each generation's From, every follower (the sealers, the flow hash)
// switches to it. A reload hands it the new ring.
type rotation struct {
	mu        sync.Mutex
	keys      *keyring.Ring
	signing   uint8
	timer     *time.Timer
	followers []func(keyring.Gen) // called with mu held, when the signing generation changes
}

func newRotation(keys *keyring.Ring, now time.Time) *rotation {
	r := &rotation{keys: keys}
	if g := keys.Signing(now); g != nil {
		r.signing = g.ID
	}
	return r
}

// follow adds f, which is told each later change of generation.
func (r *rotation) follow(f func(keyring.Gen)) {
	r.mu.Lock()
	r.followers = append(r.followers, f)
	r.mu.Unlock()
}

// use takes a reloaded ring and returns the generation that signs now.
// expiry is when the keys the demux runs with end (zero: never).
func (r *rotation) expiry() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.keys.Expiry()
}

func (r *rotation) use(keys *keyring.Ring) uint8 {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.keys = keys
	r.switchLocked(time.Now())
	return r.signing
}

func (r *rotation) switchLocked(now time.Time) {
	if g := r.keys.Signing(now); g != nil && g.ID != r.signing {
		r.signing = g.ID
		for _, f := range r.followers {
			f(*g)
		}
	}
	if r.timer != nil {
		r.timer.Stop()
		r.timer = nil
	}
	if next := r.keys.NextChange(now); !next.IsZero() {
		r.timer = time.AfterFunc(next.Sub(now), func() {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.switchLocked(time.Now())
		})
	}
}

// sealers gives each lane the one Sealer its frames and probes share for
// the process's life, so that its counter never starts over (a nil
// *sealers, geneve_auth off, gives none).
type sealers struct {
	mu     sync.Mutex
	gen    keyring.Gen // the generation the sealers seal with
	side   string
	sender uint8
	start  uint64
	shared func(flowhash.LaneID) *atomic.Uint64 // the XDP program's counters, or nil
	recent *geneveauth.Recent                   // the tags sealed lately, the XDP program's too
	m      map[flowhash.LaneID]*geneveauth.Sealer
}

// newSealers: the side's demux seals as sender 0, its standby as 1, with
// its keys of the generation that signs now; counters start at the clock
// (see dataplane/geneveauth). They follow rot's later generations.
// shared, if it gives a lane a counter, is the sealing XDP program's:
// the lane's sealer counts there, so that the program's frames and
// userspace's are one sequence to the gateway; recent, if not nil, is
// where the program notes its frames' tags, which the sealers note
// theirs in too (the ICMP watch checks errors against them).
func newSealers(p *config.Peering, node config.Node, keys *keyring.Ring, rot *rotation, shared func(flowhash.LaneID) *atomic.Uint64, recent *geneveauth.Recent, now time.Time) (*sealers, error) {
	if !p.Security.GeneveAuth {
		return nil, nil
	}
	g := keys.Signing(now)
	if g == nil {
		return nil, fmt.Errorf("security.geneve_auth: no key generation signs at %s", now.Format(time.RFC3339))
	}
	s := &sealers{gen: *g, side: string(node.Side), sender: p.Sender(node), start: uint64(now.UnixNano()),
		shared: shared, recent: recent, m: map[flowhash.LaneID]*geneveauth.Sealer{}}
	if s.recent == nil {
		s.recent = geneveauth.NewRecent()
	}
	rot.follow(s.switchTo)
	return s, nil
}

func (s *sealers) counterOf(id flowhash.LaneID) *atomic.Uint64 {
	if s.shared == nil {
		return nil
	}
	return s.shared(id)
}

// switchTo seals from now on with g's keys, the counters going on.
func (s *sealers) switchTo(g keyring.Gen) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gen = g
	for id, sl := range s.m {
		k, _ := g.Key(keyring.GenevePath(s.side, s.sender, uint16(id)))
		sl.SetKey(geneveauth.KeyOf(k), g.ID)
	}
}

func (s *sealers) lane(id flowhash.LaneID) *geneveauth.Sealer {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if sl := s.m[id]; sl != nil {
		return sl
	}
	k, _ := s.gen.Key(keyring.GenevePath(s.side, s.sender, uint16(id))) // the ring was checked to hold the sender's root
	var sl *geneveauth.Sealer
	if c := s.counterOf(id); c != nil {
		sl = geneveauth.NewSealerOn(geneveauth.KeyOf(k), s.gen.ID, s.sender, c, s.start)
	} else {
		sl = geneveauth.NewSealer(geneveauth.KeyOf(k), s.gen.ID, s.sender, s.start)
	}
	sl.Remember(s.recent, uint16(id))
	s.m[id] = sl
	return sl
}
