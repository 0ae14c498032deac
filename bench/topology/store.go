package topology

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"

	"github.com/clusterpeer/clusterpeer/config"
	"github.com/clusterpeer/clusterpeer/membership/etcdtest"
	"github.com/clusterpeer/clusterpeer/tunnel/wgkey"
)

// A peering with discovery through etcd: the etcd servers, the enrolment
// key, and the gateways that join through the store instead of the file.

// FileLanes is how many lanes the peering file lists (the first ones).
func (p *Peering) FileLanes() int { return p.Lanes - p.Joined }

// etcdEndpoints are the servers' client sockets, as the nodes dial them.
func (p *Peering) etcdEndpoints() []string {
	var eps []string
	for i := 1; i <= p.Options.Etcd; i++ {
		eps = append(eps, fmt.Sprintf("unix://%s/c%d:2379", p.etcdDir(), i))
	}
	return eps
}

func (p *Peering) etcdDir() string { return filepath.Join(p.Work, "etcd") }

func (p *Peering) writeEnrolmentKey() error {
	seed := make([]byte, ed25519.SeedSize)
	rand.Read(seed)
	return os.WriteFile(filepath.Join(p.Work, "enrolment.key"), []byte(base64.StdEncoding.EncodeToString(seed)+"\n"), 0o600)
}

// startEtcd runs the store; its members' pids go where Down finds them.
func (p *Peering) startEtcd() error {
	if _, err := os.Stat(etcdtest.Binary); err != nil {
		return fmt.Errorf("topology: etcd: %w (Debian's etcd-server; scripts/install-deps.sh)", err)
	}
	if err := os.MkdirAll(p.etcdDir(), 0o700); err != nil {
		return err
	}
	c, err := etcdtest.Run(p.etcdDir(), etcdtest.Options{Members: p.Options.Etcd, Detach: true})
	if c != nil {
		for i := range p.Options.Etcd {
			if pid := c.PID(i); pid > 0 {
				if err := p.record("", pid); err != nil {
					return err
				}
			}
		}
	}
	if err != nil {
		return fmt.Errorf("topology: %w", err)
	}
	if got := c.Endpoints(); fmt.Sprint(got) != fmt.Sprint(p.etcdEndpoints()) {
		return fmt.Errorf("topology: etcd serves %v, the peering file names %v", got, p.etcdEndpoints())
	}
	p.Store = c
	return nil
}

// JoinArgs are what lane i's gateway of side s joins with: its slot, its
// addresses in the topology's plan, and its key file.
func (p *Peering) joinArgs(s config.Side, i int) []string {
	host := 1
	if s == config.SideB {
		host = 2
	}
	geneve, endpoint := fmt.Sprintf("10.%d.0.%d:6081", netNum(s), 20+i), fmt.Sprintf("198.18.%d.%d:51820", i, host)
	if p.Underlay6 {
		geneve, endpoint = fmt.Sprintf("[fd00:%s::%d]:6081", s, 20+i), fmt.Sprintf("[fd00:1:%d::%d]:51820", i, host)
	}
	return []string{"--side", string(s), "--slot", strconv.Itoa(i), "--geneve", geneve, "--endpoint", endpoint,
		"--private-key", filepath.Join(p.Work, GatewayName(s, i)+".key"), "--tun", fmt.Sprintf("%s-g%s%d", p.Options.Prefix, s, i)}
}

// startJoined runs `tunnel join` as lane i's gateway of side s, in its
// namespace, with args (JoinArgs, or a replacement's own).
func (p *Peering) startJoined(s config.Side, i int, args ...string) error {
	name := GatewayName(s, i)
	full := append([]string{filepath.Join(p.Bin, "tunnel"), "join", "--config", p.ConfigPath(), "--node", name, "--log-level", p.LogLevel}, args...)
	return p.spawn(GatewayNS(s, i), name, nil, full...)
}

// StartJoined starts lane i's gateway of side s through the store, as
// planned (a spare lane's), and waits until its status socket answers.
func (p *Peering) StartJoined(s config.Side, i int) error {
	if err := p.startJoined(s, i, p.joinArgs(s, i)...); err != nil {
		return err
	}
	return p.waitSocket(GatewayName(s, i))
}

// Replace starts a new instance in lane i's slot of side s, in the same
// namespace, with a new key (written to Work/NAME-new.key), as an
// autoscaling group's replacement instance comes up; the old one should
// be gone first. moved: with new addresses (GENEVE 10.N.0.(120+i),
// underlay 198.18.i.(10+host)), else those of the topology's plan.
func (p *Peering) Replace(s config.Side, i int, key wgkey.Key, moved bool) error {
	args := p.joinArgs(s, i)
	if moved {
		host := 1
		if s == config.SideB {
			host = 2
		}
		ns, n := GatewayNS(s, i), netNum(s)
		geneve, endpoint := fmt.Sprintf("10.%d.0.%d", n, 120+i), fmt.Sprintf("198.18.%d.%d", i, 10+host)
		if !p.HasAddr(ns, "lan0", netip.MustParseAddr(geneve)) {
			if err := p.Addr(ns, "lan0", geneve+"/24"); err != nil {
				return err
			}
			if err := p.Addr(ns, "wan0", endpoint+"/24"); err != nil {
				return err
			}
		}
		args = replaceArg(args, "--geneve", geneve+":6081")
		args = replaceArg(args, "--endpoint", endpoint+":51820")
	}
	keyFile := filepath.Join(p.Work, GatewayName(s, i)+"-new.key")
	if err := os.WriteFile(keyFile, []byte(key.Base64()+"\n"), 0o600); err != nil {
		return err
	}
	return p.startJoined(s, i, replaceArg(args, "--private-key", keyFile)...)
}

// replaceArg sets flag's value in args.
func replaceArg(args []string, flag, value string) []string {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			args[i+1] = value
		}
	}
	return args
}

// KillEtcd ends etcd member i at once, as a crash.
func (p *Peering) KillEtcd(i int) { p.Store.Kill(i) }

// RestartEtcd starts member i again with its data (Down finds its pid).
func (p *Peering) RestartEtcd(i int) error {
	if err := p.Store.Restart(i); err != nil {
		return err
	}
	return p.record("", p.Store.PID(i))
}
