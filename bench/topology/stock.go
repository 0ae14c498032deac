package topology

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/clusterpeer/clusterpeer/config"
)

// stockGateway runs lane 1's gateway of side s as a stock WireGuard peer:
// wgo (a wireguard-go) in the foreground, so its pid is ours to stop,
// configured with wg and routes as an operator would, the other network
// routed into the tunnel.
func (p *Peering) stockGateway(s config.Side, wgo string) error {
	ns, name, o := GatewayNS(s, 1), GatewayName(s, 1), s.Other()
	ifname := fmt.Sprintf("%s-g%s1", p.Options.Prefix, s)
	if err := p.spawn(ns, name, []string{"WG_PROCESS_FOREGROUND=1"}, wgo, "-f", ifname); err != nil {
		return err
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if err := p.Up(ns, ifname); err == nil {
			break
		} else if time.Now().After(deadline) {
			return fmt.Errorf("%s: %w; its log:\n%s", name, err, p.Log(name))
		}
	}
	peer := p.Config.Lanes[0].End(o)
	if _, err := p.Run(ns, "wg", "set", ifname, "private-key", filepath.Join(p.Work, name+".key"), "listen-port", "51820",
		"peer", peer.PublicKey, "endpoint", peer.Endpoint.String(),
		"allowed-ips", fmt.Sprintf("10.%d.0.0/16,fd00:%s::/64", netNum(o), o)); err != nil {
		return err
	}
	if err := p.MTU(ns, ifname, p.Config.MTU); err != nil {
		return err
	}
	if err := p.Route(ns, Route{Dst: fmt.Sprintf("10.%d.0.0/16", netNum(o)), Dev: ifname}); err != nil {
		return err
	}
	return p.Route(ns, Route{Dst: fmt.Sprintf("fd00:%s::/64", o), Dev: ifname})
}

// stockB1 is gw-b1 as Debian's stock wireguard-go (interop), with host-b
// routing network A to it directly.
func (p *Peering) stockB1() error {
	if err := p.stockGateway(config.SideB, "wireguard-go"); err != nil {
		return err
	}
	// The stock peer has no probe reflector of its own; this answers the
	// probes it decrypts, as an operator beside a stock peer would run it.
	if err := p.spawn("gb1", "gw-b1-reflect", nil, filepath.Join(p.Bin, "tunnel"), "reflect", "--config", p.ConfigPath(), "--node", "gw-b1"); err != nil {
		return err
	}
	return p.hostVia(config.SideB, 1)
}

// hostVia routes side s's host to the other network through lane i's
// gateway instead of the demux.
func (p *Peering) hostVia(s config.Side, i int) error {
	h, o, n := "h"+string(s), s.Other(), netNum(s)
	if err := p.Route(h, Route{Dst: fmt.Sprintf("10.%d.0.0/16", netNum(o)), Via: fmt.Sprintf("10.%d.0.%d", n, 20+i)}); err != nil {
		return err
	}
	return p.Route(h, Route{Dst: fmt.Sprintf("fd00:%s::/64", o), Via: fmt.Sprintf("fd00:%s::%d", s, 20+i)})
}

// baseline: the hosts route through gw-a1/gw-b1 instead of the demuxes;
// the gateways forward in the kernel or through one plain WireGuard tunnel.
func (p *Peering) baseline() error {
	switch p.Baseline {
	case Kernel:
		for _, r := range [][3]string{
			{"ga1", "10.2.0.0/16", "198.18.1.2"}, {"ga1", "fd00:b::/64", "fd00:1:1::2"},
			{"gb1", "10.1.0.0/16", "198.18.1.1"}, {"gb1", "fd00:a::/64", "fd00:1:1::1"},
		} {
			if err := p.Route(r[0], Route{Dst: r[1], Via: r[2]}); err != nil {
				return err
			}
		}
	case WireGuardGo:
		for _, s := range config.Sides {
			if err := p.stockGateway(s, p.WireGuardGo); err != nil {
				return err
			}
		}
	}
	for _, s := range config.Sides {
		if err := p.hostVia(s, 1); err != nil {
			return err
		}
	}
	return nil
}

// haUp runs keepalived beside demux-a and demux-a2, with the config
// `demux keepalived` writes; ready when one of them holds the VIPs.
func (p *Peering) haUp() error {
	for _, node := range []string{"demux-a", "demux-a2"} {
		conf := filepath.Join(p.Work, "keepalived-"+node+".conf")
		out, err := p.runHost(filepath.Join(p.Bin, "demux"), "keepalived", "--config", p.DemuxConfigPath(), "--node", node)
		if err != nil {
			return err
		}
		if err := os.WriteFile(conf, out, 0o600); err != nil {
			return err
		}
		if err := p.spawn(demuxNS(node), "keepalived-"+node, nil, "keepalived", "--vrrp", "--dont-fork", "--log-console", "--log-detail", "--no-syslog",
			"-f", conf, "-p", filepath.Join(p.Work, "keepalived-"+node+"-main.pid"), "-r", filepath.Join(p.Work, "keepalived-"+node+"-vrrp.pid")); err != nil {
			return err
		}
	}
	// The VRRP children, for Down to end should their parent have died
	// without ending them.
	for _, node := range []string{"demux-a", "demux-a2"} {
		f := filepath.Join(p.Work, "keepalived-"+node+"-vrrp.pid")
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if b, err := os.ReadFile(f); err == nil && len(b) > 0 {
				for _, pid := range readPids(f) {
					p.recordChild(pid)
				}
				break
			}
		}
	}
	// Both start as backup: the first to time out takes the VIPs (demux-a,
	// unless its keepalived started late) and, without preemption, keeps them.
	vip := netip.MustParseAddr("10.1.0.1")
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if p.HasAddr("da", "lan0", vip) || p.HasAddr("da2", "lan0", vip) {
			return nil
		}
	}
	return fmt.Errorf("topology: neither demux took the VIP; keepalived said:\n%s\n%s", p.Log("keepalived-demux-a"), p.Log("keepalived-demux-a2"))
}

func (p *Peering) recordChild(pid int) {
	f, err := os.OpenFile(filepath.Join(p.Work, "pids.children"), os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return
	}
	fmt.Fprintln(f, pid)
	f.Close()
}

// runHost runs a command outside the namespaces and returns its output.
func (p *Peering) runHost(args ...string) ([]byte, error) {
	out, err := exec.Command(args[0], args[1:]...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%v: %s", err, strings.TrimSpace(string(ee.Stderr)))
		}
		return nil, fmt.Errorf("%s: %w", strings.Join(args, " "), err)
	}
	return out, nil
}
