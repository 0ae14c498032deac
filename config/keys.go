package config

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/clusterpeer/clusterpeer/tunnel/keyring"
)

// KeyPaths lists the keys node needs of every generation (tunnel/keyring's
// tree): a demux the flow hash, its side's probes and its own GENEVE
// tags on every lane; a gateway its lane's probes both ways and the tags
// its side's demuxes seal into its lane. A gateway that joins through
// the store (Lane nil) does not know its lane before it registers: it
// needs its side's roots.
func (p *Peering) KeyPaths(n Node) []string {
	side := string(n.Side)
	if n.Demux != nil {
		paths := []string{keyring.FlowPath, keyring.ProbePath(side, 0)}
		if p.Security.GeneveAuth {
			paths = append(paths, keyring.GenevePath(side, p.Sender(n), 0))
		}
		return paths
	}
	var lane uint16
	if n.Lane != nil {
		lane = uint16(n.Lane.ID)
	}
	paths := []string{keyring.ProbePath(string(SideA), lane), keyring.ProbePath(string(SideB), lane)}
	if p.Security.GeneveAuth {
		for sender := range p.Networks[n.Side].Demuxes() {
			paths = append(paths, keyring.GenevePath(side, uint8(sender), lane))
		}
	}
	return paths
}

// Sender is a demux's GENEVE sender number: 0 for its side's demux, 1
// for the standby.
func (p *Peering) Sender(n Node) uint8 {
	if n.Demux != nil && n.Demux.Name != p.Networks[n.Side].Demux.Name {
		return 1
	}
	return 0
}

// KeysFile is where a node named name reads its keys with
// security.keys_dir; a joining gateway without a file of its own reads
// its side's (JoinKeysName).
func (p *Peering) KeysFile(name string) string {
	return filepath.Join(p.Security.KeysDir, name+".keys")
}

// JoinKeysName is the key file name of a side's joining gateways: the
// side's roots, from which every lane's keys derive.
func JoinKeysName(s Side) string { return "join-" + string(s) }

// JoinSlotKeysName is the key file of the gateway that joins side s's
// slot: that lane's keys alone.
func JoinSlotKeysName(s Side, slot int) string { return fmt.Sprintf("join-%s-%d", s, slot) }

// JoinRing returns the keys of a gateway that joined side's slot through
// the store: its slot's file if there is one (`demux keys --join-slots`),
// else the side's (its roots).
func (p *Peering) JoinRing(side Side, slot int, name string) (*keyring.Ring, string, error) {
	if p.Security.KeysDir == "" {
		r, err := p.Ring(Node{Side: side}, name)
		return r, "", err
	}
	path := p.KeysFile(JoinSlotKeysName(side, slot))
	n := Node{Side: side, Lane: &Lane{ID: slot}}
	if _, err := os.Stat(path); os.IsNotExist(err) {
		roots := p.KeysFile(JoinKeysName(side))
		if _, err := os.Stat(roots); os.IsNotExist(err) {
			return nil, "", fmt.Errorf("security.keys_dir: no keys for slot %d of side %s: neither %s nor %s exists (`demux keys --join-slots N` writes a file per slot)",
				slot, side, path, roots)
		}
		path, n = roots, Node{Side: side}
	}
	r, err := p.readRing(path, n)
	return r, path, err
}

// Ring returns the keys of node n, named name: read from its file in
// security.keys_dir (owner-only, checked to hold what n needs), or, with
// hash.key_file, the one generation of the peering secret.
func (p *Peering) Ring(n Node, name string) (*keyring.Ring, error) {
	if p.Security.KeysDir == "" {
		return &keyring.Ring{Gens: []keyring.Gen{keyring.FromSecret(p.Hash.Key[:], time.Time{}, time.Time{})}}, nil
	}
	return p.readRing(p.KeysFile(name), n) // a joining gateway's: JoinRing
}

// readRing reads the key file at path, checked to hold what n needs.
func (p *Peering) readRing(path string, n Node) (*keyring.Ring, error) {
	b, err := ReadSecretFile(path)
	if err != nil {
		return nil, fmt.Errorf("security.keys_dir: %w", err)
	}
	r, err := keyring.Parse([]byte(b))
	if err != nil {
		return nil, fmt.Errorf("security.keys_dir: %s: %w", path, err)
	}
	if err := r.Check(p.KeyPaths(n)...); err != nil {
		return nil, fmt.Errorf("security.keys_dir: %s: %w (write it again with `demux keys`)", path, err)
	}
	return r, nil
}

// NodeKeys is what `demux keys` writes: for every node of the file (and,
// with discovery through etcd, each side's joining gateways), its key
// file's contents, cut down from gens (the generations of the secrets,
// newest first) to the keys that node needs. Joining gateways get one
// file per side, the side's roots, or with joinSlots > 0 one per slot
// 1..joinSlots that no lane of the file holds, that slot's keys alone
// (a gateway joining another slot then finds no keys).
func (p *Peering) NodeKeys(gens []keyring.Gen, written time.Time, joinSlots int) (map[string][]byte, error) {
	type file struct {
		name string
		node Node
	}
	var files []file
	for _, name := range p.NodeNames() {
		n, _ := p.Node(name)
		files = append(files, file{name, n})
	}
	if p.Discovery.Mode == DiscoveryEtcd {
		for _, s := range Sides {
			if joinSlots == 0 {
				files = append(files, file{JoinKeysName(s), Node{Side: s}})
				continue
			}
			for slot := 1; slot <= joinSlots; slot++ {
				if !slices.ContainsFunc(p.Lanes, func(l Lane) bool { return l.ID == slot }) {
					files = append(files, file{JoinSlotKeysName(s, slot), Node{Side: s, Lane: &Lane{ID: slot}}})
				}
			}
		}
	}
	out := map[string][]byte{}
	for _, f := range files {
		r := &keyring.Ring{}
		for _, g := range gens {
			cut, err := g.Only(p.KeyPaths(f.node)...)
			if err != nil {
				return nil, err
			}
			r.Gens = append(r.Gens, cut)
		}
		out[f.name] = r.Marshal(
			fmt.Sprintf("clusterpeer keys of %s (peering %s), written at %s.", f.name, p.Name, written.UTC().Format(time.RFC3339)),
			"Owner-only: this node's alone, as "+p.KeysFile(f.name)+".")
	}
	return out, nil
}
