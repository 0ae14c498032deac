package main

import (
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/clusterpeer/clusterpeer/config"
	"github.com/clusterpeer/clusterpeer/dataplane/demux"
	"github.com/clusterpeer/clusterpeer/flowhash"
	"github.com/clusterpeer/clusterpeer/membership"
	"github.com/clusterpeer/clusterpeer/tunnel/keyring"
	"github.com/clusterpeer/clusterpeer/tunnel/probe"
)

// laneSpecs is the demux's view of the lanes: the file's, then the
// store's (which never take a slot of the file's). seal gives each lane
// its Sealer (nil: geneve_auth off).
func laneSpecs(p *config.Peering, stored []config.Lane, side config.Side, bind conn.Bind, seal *sealers) ([]demux.LaneSpec, error) {
	var specs []demux.LaneSpec
	file := len(p.Lanes)
	for i, l := range append(slices.Clip(p.Lanes), stored...) {
		g, far := l.End(side), l.End(side.Other())
		ep, err := bind.ParseEndpoint(g.Geneve.AddrPort.String())
		if err != nil {
			return nil, fmt.Errorf("lane %d gateway %s: %w", l.ID, g.Geneve.AddrPort, err)
		}
		source := "file"
		if i >= file {
			source = "store"
		}
		specs = append(specs, demux.LaneSpec{
			ID: flowhash.LaneID(l.ID), Weight: l.Weight, Gateway: g.Name,
			Near: g.Geneve.AddrPort, Endpoint: ep, Far: far.Geneve.AddrPort.Addr(), Source: source,
			Seal: seal.lane(flowhash.LaneID(l.ID)),
		})
	}
	if err := flowhash.CheckTableSize(p.Hash.TableSize, max(len(specs), 1)); err != nil {
		return nil, err
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
	seal    *sealers
	rot     *rotation
	dm      *demux.Demux
	prober  *probe.Prober // nil with health checks off
	// flowKeyFixed: the XDP program hashes with the flow key it loaded
	// with; a new one waits for a restart.
	flowKeyFixed bool
	keyNote      string           // what the last reload said of the keys
	view         *membership.View // nil: static discovery
	applied      []int            // the lane ids last applied
	log          *slog.Logger
}

// stored is the store's lanes (none with static discovery).
func (r *reloader) stored() []config.Lane {
	if r.view == nil {
		return nil
	}
	return r.view.Lanes()
}

// storeChanged applies the store's registrations with the running file:
// a lane joins once its probes answer, one that leaves drains, a new
// gateway in a slot (a replacement) takes its lane at once.
func (r *reloader) storeChanged() {
	r.mu.Lock()
	defer r.mu.Unlock()
	node, _ := r.running.Node(r.node)
	specs, err := laneSpecs(r.running, r.stored(), node.Side, r.bind, r.seal)
	if err == nil {
		err = r.dm.ApplyLanes(specs)
	}
	if err != nil {
		r.log.Error("store's lanes not applied; the lanes stay as they were", "err", err)
		return
	}
	if msg, changed := r.note(specs); changed {
		r.log.Info("lanes changed by the store", "lanes", msg)
	}
}

// forgetLost drops the registrations whose lease ended without a planned
// stop once their lane is no longer up (or at once without probes).
func (r *reloader) forgetLost() {
	if r.view == nil {
		return
	}
	states := r.dm.LaneStates()
	for _, m := range r.view.Members() {
		if m.Lost && (!r.running.Health.On || states[flowhash.LaneID(m.Slot)] != demux.LaneUp) {
			r.view.Forget(membership.Slot{Side: m.Side, Slot: m.Slot})
		}
	}
}

// note records the lane ids of specs and says what changed since the
// last time.
func (r *reloader) note(specs []demux.LaneSpec) (string, bool) {
	before := map[int]bool{}
	for _, id := range r.applied {
		before[id] = true
	}
	var ids, added, removed []string
	r.applied = r.applied[:0]
	for _, sp := range specs {
		id := int(sp.ID)
		r.applied = append(r.applied, id)
		ids = append(ids, strconv.Itoa(id))
		if !before[id] {
			added = append(added, strconv.Itoa(id))
		}
		delete(before, id)
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
	return msg, len(added)+len(removed) > 0
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
	keys, err := p.Ring(node, r.node)
	if err != nil {
		return "", err
	}
	specs, err := laneSpecs(p, r.stored(), node.Side, r.bind, r.seal)
	if err != nil {
		return "", err
	}
	if err := r.dm.ApplyLanes(specs); err != nil {
		return "", err
	}
	r.running = p
	msg, _ := r.note(specs)
	if note := r.applyKeys(keys); note != "" {
		msg += "; " + note
	}
	return msg, nil
}

// applyKeys gives the prober, and through the rotation the sealers and
// the flow hash, a reloaded key file's generations: each signs from its
// From and is accepted until its Until.
func (r *reloader) applyKeys(keys *keyring.Ring) string {
	if r.running.Security.KeysDir == "" {
		return ""
	}
	if r.prober != nil {
		r.prober.SetKeys(keys)
	}
	note := "key generations " + keys.String()
	signing := r.rot.use(keys)
	note += fmt.Sprintf("; signing with %#02x", signing)
	if newest := keys.Gens[0]; newest.ID != signing {
		note += fmt.Sprintf(" until %#02x from %s", newest.ID, newest.From.Format(time.RFC3339))
	}
	if note != r.keyNote {
		r.log.Info("keys reloaded", "note", note)
		r.keyNote = note
	}
	return note
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
	if !reflect.DeepEqual(a.Discovery, b.Discovery) {
		d = append(d, "discovery")
	}
	if a.Security != b.Security {
		d = append(d, "security")
	}
	return d
}
