package main

import (
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/clusterpeer/clusterpeer/config"
	"github.com/clusterpeer/clusterpeer/dataplane/demux"
	"github.com/clusterpeer/clusterpeer/flowhash"
)

// laneSpecs is the demux's view of the configured lanes.
func laneSpecs(p *config.Peering, side config.Side, bind conn.Bind) ([]demux.LaneSpec, error) {
	var specs []demux.LaneSpec
	for _, l := range p.Lanes {
		g, far := l.End(side), l.End(side.Other())
		ep, err := bind.ParseEndpoint(g.Geneve.AddrPort.String())
		if err != nil {
			return nil, fmt.Errorf("lane %d gateway %s: %w", l.ID, g.Geneve.AddrPort, err)
		}
		specs = append(specs, demux.LaneSpec{
			ID: flowhash.LaneID(l.ID), Weight: l.Weight, Gateway: g.Name,
			Near: g.Geneve.AddrPort, Endpoint: ep, Far: far.Geneve.AddrPort.Addr(),
		})
	}
	return specs, nil
}

// reloader applies a changed config file to the running demux: the lanes
// change live; anything else needs a restart and makes the whole reload
// fail, as does an invalid file, so the running state is never half new.
type reloader struct {
	mu      sync.Mutex
	running *config.Peering
	node    string
	bind    conn.Bind
	dm      *demux.Demux
	log     *slog.Logger
}

func (r *reloader) reload() (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	msg, err := r.apply()
	if err != nil {
		r.log.Error("reload rejected; still running the previous config", "config", r.running.Path, "err", err)
		return "", fmt.Errorf("reload rejected, still running the previous config:\n%w", err)
	}
	r.log.Info("config reloaded", "config", r.running.Path, "lanes", msg)
	return "reloaded " + r.running.Path + ": " + msg, nil
}

func (r *reloader) apply() (string, error) {
	old := r.running
	p, err := config.Load(old.Path)
	if err != nil {
		return "", err
	}
	node, err := p.Node(r.node)
	if err != nil {
		return "", err
	}
	if node.Demux == nil {
		return "", fmt.Errorf("%s is no longer a demux in %s", r.node, p.Path)
	}
	if diff := restartFields(old, p); len(diff) > 0 {
		return "", fmt.Errorf("%s changed; these apply only on restart (lanes are what reload changes)", strings.Join(diff, ", "))
	}
	specs, err := laneSpecs(p, node.Side, r.bind)
	if err != nil {
		return "", err
	}
	if err := r.dm.ApplyLanes(specs); err != nil {
		return "", err
	}
	r.running = p
	before := map[int]bool{}
	for _, l := range old.Lanes {
		before[l.ID] = true
	}
	var ids, added, removed []string
	for _, l := range p.Lanes {
		ids = append(ids, strconv.Itoa(l.ID))
		if !before[l.ID] {
			added = append(added, strconv.Itoa(l.ID))
		}
		delete(before, l.ID)
	}
	for id := range before {
		removed = append(removed, strconv.Itoa(id))
	}
	slices.Sort(removed)
	msg := "lanes " + strings.Join(ids, " ")
	if len(added) > 0 {
		msg += "; added " + strings.Join(added, " ") + " (joining once their probes answer)"
	}
	if len(removed) > 0 {
		msg += "; removing " + strings.Join(removed, " ") + " (draining first)"
	}
	return msg, nil
}

// restartFields lists what differs between two configs outside the lanes.
func restartFields(a, b *config.Peering) []string {
	var d []string
	if a.Name != b.Name {
		d = append(d, "name")
	}
	if a.VNI != b.VNI {
		d = append(d, "vni")
	}
	if a.MTU != b.MTU {
		d = append(d, "mtu")
	}
	if !reflect.DeepEqual(a.Hash, b.Hash) {
		d = append(d, "hash")
	}
	if !reflect.DeepEqual(a.Health, b.Health) {
		d = append(d, "health")
	}
	if !reflect.DeepEqual(a.Networks, b.Networks) {
		d = append(d, "networks")
	}
	return d
}
