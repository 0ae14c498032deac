package topology

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/clusterpeer/clusterpeer/config"
	"github.com/clusterpeer/clusterpeer/flowhash"
	"github.com/clusterpeer/clusterpeer/tunnel/keyring"
	"github.com/clusterpeer/clusterpeer/tunnel/wgkey"
)

// writeFiles makes the keys (fresh for every peering) and the peering
// file, and loads that file back as every node will.
func (p *Peering) writeFiles() error {
	secretFile := "hash.key"
	p.Secret = make([]byte, 16)
	if p.NodeKeys {
		secretFile, p.Secret = "peering.secret", make([]byte, 32)
	}
	rand.Read(p.Secret)
	if err := os.WriteFile(filepath.Join(p.Work, secretFile), []byte(hex.EncodeToString(p.Secret)+"\n"), 0o600); err != nil {
		return err
	}
	keys := map[string]wgkey.Key{}
	for i := 1; i <= p.Lanes; i++ {
		for _, s := range config.Sides {
			k, err := wgkey.Generate()
			if err != nil {
				return err
			}
			name := GatewayName(s, i)
			keys[name] = k
			if err := os.WriteFile(filepath.Join(p.Work, name+".key"), []byte(k.Base64()+"\n"), 0o600); err != nil {
				return err
			}
		}
	}
	if p.HA {
		// The HA pair's notify hook: records each call (cloud mode would
		// repoint a route table here).
		hook := "#!/bin/sh\n" + `echo "$(date +%s.%N) $1 $2 $CLUSTERPEER_NODE $CLUSTERPEER_STATE vips=$CLUSTERPEER_VIPS remote=$CLUSTERPEER_REMOTE_PREFIXES" >>"$(dirname "$0")/ha-notify.log"` + "\n"
		if err := os.WriteFile(filepath.Join(p.Work, "ha-notify.sh"), []byte(hook), 0o700); err != nil {
			return err
		}
	}
	if p.Etcd > 0 {
		if err := p.writeEnrolmentKey(); err != nil {
			return err
		}
	}
	if err := p.writeConfig(p.ConfigPath(), p.FileLanes(), keys); err != nil {
		return err
	}
	if p.DemuxLanes > 0 {
		// The demuxes start with fewer lanes than there are gateways; the
		// rest join by reload (the add-lane scenario).
		if err := p.writeConfig(p.DemuxConfigPath(), p.DemuxLanes, keys); err != nil {
			return err
		}
	}
	var err error
	if p.Config, err = config.Load(p.ConfigPath()); err != nil || !p.NodeKeys {
		return err
	}
	return p.writeNodeKeys([]keyring.Gen{keyring.FromSecret(p.Secret, time.Time{}, time.Time{})})
}

// writeNodeKeys writes every node its key file of gens, as `demux keys` does.
func (p *Peering) writeNodeKeys(gens []keyring.Gen) error {
	// Joining gateways get their slot's keys alone (demux keys --join-slots).
	files, err := p.Config.NodeKeys(gens, time.Now(), p.Lanes)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(p.Config.Security.KeysDir, 0o700); err != nil {
		return err
	}
	for name, b := range files {
		path := p.Config.KeysFile(name)
		if err := os.WriteFile(path+".tmp", b, 0o600); err != nil {
			return err
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			return err
		}
	}
	return nil
}

// RotateKeys writes every node a key file with a new secret, which signs
// from switchIn on, beside the current one, accepted until grace after
// that (the nodes apply it when reloaded), and makes the new one the
// peering's. It returns both key IDs.
func (p *Peering) RotateKeys(switchIn, grace time.Duration) (newID, oldID uint8, err error) {
	if !p.NodeKeys {
		return 0, 0, fmt.Errorf("topology: RotateKeys needs NodeKeys")
	}
	next := make([]byte, len(p.Secret))
	for {
		rand.Read(next)
		if keyring.ID(next) != keyring.ID(p.Secret) {
			break
		}
	}
	from := time.Now().Add(switchIn)
	gens := []keyring.Gen{keyring.FromSecret(next, from, time.Time{}), keyring.FromSecret(p.Secret, time.Time{}, from.Add(grace))}
	if err := p.writeNodeKeys(gens); err != nil {
		return 0, 0, err
	}
	newID, oldID = keyring.ID(next), keyring.ID(p.Secret)
	p.Secret = next
	return newID, oldID, os.WriteFile(filepath.Join(p.Work, "peering.secret"), []byte(hex.EncodeToString(next)+"\n"), 0o600)
}

// File is the peering file for lanes 1..lanes, in config's own types.
func (p *Peering) File(lanes int, keys map[string]wgkey.Key) *config.Peering {
	f := &config.Peering{
		Name: p.Options.Prefix, VNI: 4242, MTU: 1420,
		Hash:     config.Hash{KeyFile: "hash.key", Mode: flowhash.Mode5Tuple, Symmetric: true, PinFlows: p.PinFlows},
		Health:   p.Health,
		Networks: map[config.Side]config.Network{},
		Security: config.Security{GeneveAuth: p.GeneveAuth},
	}
	if p.NodeKeys {
		f.Hash.KeyFile, f.Security.KeysDir = "", "keys"
	}
	for _, s := range config.Sides {
		n := netNum(s)
		nw := config.Network{
			Prefixes: []netip.Prefix{parse(netip.ParsePrefix, "10.%d.0.0/16", n), parse(netip.ParsePrefix, "fd00:%s::/64", s)},
			Demux:    config.Demux{Name: "demux-" + string(s), Addresses: []netip.Addr{parse(netip.ParseAddr, "10.%d.0.2", n), parse(netip.ParseAddr, "fd00:%s::2", s)}, Tun: "cpdemux"},
		}
		if s == config.SideA && p.HA {
			nw.Standby = &config.Demux{Name: "demux-a2", Addresses: []netip.Addr{parse(netip.ParseAddr, "10.1.0.3"), parse(netip.ParseAddr, "fd00:a::3")}, Tun: "cpdemux"}
			nw.HA = &config.HA{VIPs: []netip.Addr{parse(netip.ParseAddr, "10.1.0.1"), parse(netip.ParseAddr, "fd00:a::1")}, Interface: "lan0", RouterID: 42, Notify: filepath.Join(p.Work, "ha-notify.sh")}
		}
		if p.RunAs != nil {
			nw.Demux.Status = p.Socket(nw.Demux.Name)
		}
		f.Networks[s] = nw
	}
	for i := 1; i <= lanes; i++ {
		l := config.Lane{ID: i}
		for _, s := range config.Sides {
			name, host := GatewayName(s, i), 1
			if s == config.SideB {
				host = 2
			}
			g := l.End(s)
			*g = config.Gateway{
				Name:           name,
				Geneve:         HostPort("10.%d.0.%d:6081", netNum(s), 20+i),
				Endpoint:       HostPort("198.18.%d.%d:51820", i, host),
				PublicKey:      keys[name].Public().Base64(),
				PrivateKeyFile: name + ".key",
				Tun:            fmt.Sprintf("%s-g%s%d", p.Options.Prefix, s, i),
			}
			if p.RunAs != nil {
				g.Status = p.Socket(name)
			}
			if p.Underlay6 {
				g.Geneve = HostPort("[fd00:%s::%d]:6081", s, 20+i)
				g.Endpoint = HostPort("[fd00:1:%d::%d]:51820", i, host)
			}
		}
		f.Lanes = append(f.Lanes, l)
	}
	if p.Options.Etcd > 0 {
		f.Discovery = config.Discovery{Mode: config.DiscoveryEtcd, Etcd: &config.Etcd{
			Endpoints: p.etcdEndpoints(), EnrolmentKeyFile: "enrolment.key", LeaseTTL: 3 * time.Second,
		}}
	}
	return f
}

func (p *Peering) writeConfig(path string, lanes int, keys map[string]wgkey.Key) error {
	b, err := yaml.Marshal(p.File(lanes, keys))
	if err != nil {
		return err
	}
	head := fmt.Sprintf("# Written by bench/topology for the namespaces %s-*.\n", p.Options.Prefix)
	return os.WriteFile(path, append([]byte(head), b...), 0o600)
}

// parse formats an address of the topology's plan and parses it; the plan
// is fixed, so a failure is a bug here.
func parse[T any](parse func(string) (T, error), format string, args ...any) T {
	v, err := parse(fmt.Sprintf(format, args...))
	if err != nil {
		panic(err)
	}
	return v
}

// HostPort is a config address of a topology's plan ("10.%d.0.%d:6081").
func HostPort(format string, args ...any) config.HostPort {
	return config.HostPort{AddrPort: parse(netip.ParseAddrPort, format, args...)}
}
