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
	rf         *probe.Reflector   // nil with health checks off
	auth       *geneveauth.Opener // nil with geneve_auth off
	expiry     *time.Timer        // drops a generation from auth at its until

	mu   sync.Mutex // p, node: the select loop writes, status reads
	p    *config.Peering
	node config.Node
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
		if f.rf != nil {
			f.rf.SetKeys(keys)
		}
		if f.auth != nil {
			f.auth.UseKeysOf(geneveOpener(next, keys, node.Side, node.Lane.ID))
			f.expire(keys)
		}
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

// expire takes a generation's GENEVE keys out of the opener when its
// grace ends, waking at each change of the ring (probes check the time
// themselves).
func (f *filePeer) expire(keys *keyring.Ring) {
	if f.auth == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.expiry != nil {
		f.expiry.Stop()
		f.expiry = nil
	}
	now := time.Now()
	next := keys.NextChange(now)
	if next.IsZero() {
		return
	}
	p, node := f.p, f.node
	f.expiry = time.AfterFunc(next.Sub(now), func() {
		f.auth.UseKeysOf(geneveOpener(p, keys, node.Side, node.Lane.ID))
		f.expire(keys) // the next change, if one is to come
	})
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
