package main

import (
	"fmt"
	reflection "reflect" // this package has a func reflect (the reflect command)
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/clusterpeer/clusterpeer/config"
	"github.com/clusterpeer/clusterpeer/dataplane/geneveauth"
	"github.com/clusterpeer/clusterpeer/tunnel/gateway"
	"github.com/clusterpeer/clusterpeer/tunnel/keyring"
	"github.com/clusterpeer/clusterpeer/tunnel/probe"
)

// filePeer is a gateway of the peering file (tunnel up) on SIGHUP: it
// rereads the file and applies live what a running gateway can change,
// its peer (a new public key after the far end's key was rotated or the
// instance replaced, a new WireGuard endpoint, a new GENEVE address for
// the probes), and names whatever else of its own changed, which applies
// on restart. The rest of the file (other lanes, the demuxes' lane lists)
// is the demuxes' business: a fleet-wide SIGHUP must not disturb a
// gateway whose lane did not change.
type filePeer struct {
	path, name string
	lane       *gateway.Lane
	keys       *gatewayKeys

	mu   sync.Mutex // p, node: the select loop writes, status reads
	p    *config.Peering
	node config.Node
}

// gatewayKeys are the keys a running gateway checks with, its
// reflector's (probes) and its opener's (sealed GENEVE): a reload
// replaces them, and a generation's GENEVE keys leave the opener when
// its grace ends (probes check the time themselves).
type gatewayKeys struct {
	rf   *probe.Reflector   // nil with health checks off
	auth *geneveauth.Opener // nil with geneve_auth off

	mu     sync.Mutex
	ring   *keyring.Ring
	expiry *time.Timer
}

// until is when the keys the gateway runs with end (zero: never).
func (g *gatewayKeys) until() time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ring == nil {
		return time.Time{}
	}
	return g.ring.Expiry()
}

// use checks from now on with keys (of peering p, for the gateway of
// side's lane).
func (g *gatewayKeys) use(p *config.Peering, keys *keyring.Ring, side config.Side, lane int) {
	if g.rf != nil {
		g.rf.SetKeys(keys)
	}
	if g.auth != nil {
		g.auth.UseKeysOf(geneveOpener(p, keys, side, lane))
	}
	g.expire(p, keys, side, lane)
}

// expire arms a timer for the ring's next change, which rebuilds the
// opener's keys without the generations whose grace has ended.
func (g *gatewayKeys) expire(p *config.Peering, keys *keyring.Ring, side config.Side, lane int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.ring = keys
	if g.auth == nil {
		return
	}
	if g.expiry != nil {
		g.expiry.Stop()
		g.expiry = nil
	}
	now := time.Now()
	next := keys.NextChange(now)
	if next.IsZero() {
		return
	}
	g.expiry = time.AfterFunc(next.Sub(now), func() {
		g.auth.UseKeysOf(geneveOpener(p, keys, side, lane))
		g.expire(p, keys, side, lane) // the next change, if one is to come
	})
}

// reloadJoined is a gateway that joined through the store on SIGHUP: its
// peer follows the store, so what a reload gives it is its keys, read
// again from its slot's join file or its side's (a rotation); the rest
// of the file applies on restart.
func reloadJoined(path, name string, side config.Side, lane int, keys *gatewayKeys) (string, error) {
	next, err := config.Load(path)
	if err != nil {
		return "", fmt.Errorf("reload refused, nothing changed: %w", err)
	}
	if next.Security.KeysDir == "" {
		return "no keys to reload (security.keys_dir is not set); a joined gateway's peer follows the store, the rest of the file applies on restart", nil
	}
	ring, from, err := next.JoinRing(side, lane, name)
	if err != nil {
		return "", fmt.Errorf("reload refused, nothing changed: %w", err)
	}
	keys.use(next, ring, side, lane)
	return "key generations " + ring.String() + " from " + from + "; a joined gateway's peer follows the store, the rest of the file applies on restart", nil
}

func (f *filePeer) peerName() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.node.Peer.Name
}

// reload rereads the file and returns what it did, for the log.
func (f *filePeer) reload() (string, error) {
	next, err := config.Load(f.path)
	if err != nil {
		return "", fmt.Errorf("reload refused, nothing changed: %w", err)
	}
	node, err := next.Node(f.name)
	if err != nil || node.Lane == nil {
		return "", fmt.Errorf("reload refused: %s is no longer a gateway in %s; it keeps running as it is until stopped", f.name, f.path)
	}
	f.mu.Lock()
	old, oldNode := f.p, f.node
	f.mu.Unlock()
	restart := restartOnly(old, oldNode, next, node)
	if node.Lane.ID != oldNode.Lane.ID || node.Side != oldNode.Side {
		return "", fmt.Errorf("reload refused: %s moved from lane %d side %s to lane %d side %s; restart it", f.name,
			oldNode.Lane.ID, oldNode.Side, node.Lane.ID, node.Side)
	}
	var did []string
	if next.Security.KeysDir != "" && len(restart) == 0 {
		keys, err := next.Ring(node, f.name)
		if err != nil {
			return "", fmt.Errorf("reload refused, nothing changed: %w", err)
		}
		f.keys.use(next, keys, node.Side, node.Lane.ID)
		did = append(did, "key generations "+keys.String())
	}
	op, np := oldNode.Peer, node.Peer
	probe := peerProbe(next, np)
	if np.Public != op.Public || np.Endpoint.AddrPort != op.Endpoint.AddrPort || probe != peerProbe(old, op) {
		if err := f.lane.SetPeer(np.Public, np.Endpoint.AddrPort, probe); err != nil {
			return "", fmt.Errorf("reload: set peer %s: %w", np.Name, err)
		}
		switch {
		case np.Public != op.Public:
			did = append(did, fmt.Sprintf("peer %s now has key %s, endpoint %s", np.Name, np.PublicKey, np.Endpoint.AddrPort))
		default:
			did = append(did, fmt.Sprintf("peer %s now at %s (probes to %s)", np.Name, np.Endpoint.AddrPort, probe))
		}
	}
	f.mu.Lock()
	f.p, f.node = next, node
	f.mu.Unlock()
	msg := "no change for this gateway"
	if len(did) > 0 {
		msg = strings.Join(did, "; ")
	}
	if len(restart) > 0 {
		msg += "; changed, applies on restart: " + strings.Join(restart, ", ")
	}
	return msg, nil
}

// restartOnly names the settings this gateway uses that changed but
// cannot change while it runs.
func restartOnly(old *config.Peering, oldNode config.Node, next *config.Peering, node config.Node) []string {
	var out []string
	add := func(changed bool, what string) {
		if changed {
			out = append(out, what)
		}
	}
	add(old.VNI != next.VNI, "vni")
	add(old.MTU != next.MTU, "mtu")
	add(old.Hash.Key != next.Hash.Key, "hash.key_file (the probe key)")
	add(!reflection.DeepEqual(old.Health, next.Health), "health")
	add(old.Security != next.Security, "security")
	side := node.Side
	add(!slices.Equal(old.Networks[side].DemuxSources(), next.Networks[side].DemuxSources()), "networks."+string(side)+" demux addresses")
	add(!slices.Equal(old.Networks[side.Other()].Prefixes, next.Networks[side.Other()].Prefixes), "networks."+string(side.Other())+".prefixes")
	add(!reflection.DeepEqual(*oldNode.Self, *node.Self), "this gateway's own entry")
	return out
}
