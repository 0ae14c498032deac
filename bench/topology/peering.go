// Package topology builds a clusterpeer peering in network namespaces on
// this machine, from typed options: the namespaces, bridges, veths,
// addresses and routes (netlink), the keys and the peering file (written
// from config's own types, then loaded and checked by config like any
// node's), the gateways and demuxes (the real binaries), and keepalived
// for an HA pair. A peering is ready when every demux's status socket
// says its lanes are up. The e2e tests, the benchmark harness, `make demo`
// and `make compare` build their peerings with it (`bench topology` is
// its command line).
//
//	network A (10.1.0.0/16, fd00:a::/64)            network B (10.2.0.0/16, fd00:b::/64)
//
//	host-a --+                                          +-- host-b
//	         | LAN A bridge                LAN B bridge |
//	demux-a -+-- gw-a1 ===== lane 1 (WireGuard) ===== gw-b1 --+- demux-b
//	         +-- gw-a2 ===== lane 2 ===================== gw-b2 --+
//	         +-- gw-a3 ===== lane 3 ===================== gw-b3 --+
//
// host-a routes network B to demux-a, which spreads flows over the lanes
// (GENEVE to gw-aN); gw-bN delivers to host-b. The way back is the mirror
// image through demux-b. Each lane has its own underlay veth, 198.18.N.0/24
// and fd00:1:N::/64.
//
// Namespaces are PREFIX-ha, -da, -gaN, -gbN, -db, -hb, -swa, -swb (and
// -da2). Everything a peering makes is listed in its work directory
// (pids, NODE.pid, NODE.log, the config and keys), so Down, also from
// another process, removes exactly that: it stops only the processes
// listed there.
package topology

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/clusterpeer/clusterpeer/admin"
	"github.com/clusterpeer/clusterpeer/config"
	"github.com/clusterpeer/clusterpeer/dataplane/demux"
	"github.com/clusterpeer/clusterpeer/membership/etcdtest"
)

// Baseline replaces the demuxes and lanes with one of the benchmark's
// baselines over lane 1's links.
type Baseline string

const (
	// Kernel: the gateways route in the kernel, without encryption.
	Kernel Baseline = "kernel"
	// WireGuardGo: one plain WireGuard tunnel between gw-a1 and gw-b1,
	// upstream wireguard-go configured with wg.
	WireGuardGo Baseline = "wgo"
)

// Options say what to build.
type Options struct {
	Prefix string // namespace names PREFIX-*, at most 9 bytes (TUN names)
	Lanes  int
	Bin    string // directory holding demux, tunnel
	Work   string // the peering's files; made if missing
	Health config.Health
	// XDP is the demuxes' fast path: "off" (default), "native" or
	// "generic". Native XDP on veths needs an XDP program on the switch's
	// demux ports (XDP_TX'd frames arrive only at a peer that runs one)
	// and the hosts sending with checksum offload off; generic needs the
	// hosts' TSO/GSO off. docs/xdp.md has the kernel facts behind this.
	XDP string
	// Queues > 0: the demuxes read their TUN with that many queues
	// (`demux up --queues`; 0: the default, one per CPU).
	Queues   int
	LogLevel string // the nodes' --log-level (default info)
	// PinFlows > 0: the demuxes' flow pin table holds that many flows
	// (hash.pin_flows; default a million).
	PinFlows int
	// GeneveAuth: the peering seals its GENEVE frames
	// (security.geneve_auth), in the XDP program too if XDP is on.
	GeneveAuth bool
	// NodeKeys: no node holds the peering secret; each reads its own keys
	// from Work/keys (security.keys_dir), written from Work/peering.secret
	// as `demux keys` writes them. RotateKeys rotates the secret.
	NodeKeys bool
	// DemuxLanes > 0: the demuxes run Work/demux.yaml, which lists only
	// the first DemuxLanes lanes (more join by editing it and reload).
	DemuxLanes int
	// HA: network A has demux-a and its standby demux-a2 (10.1.0.3,
	// fd00:a::3), keepalived on both moving the VIPs 10.1.0.1 and
	// fd00:a::1, which host-a routes network B to. Their notify hook
	// appends its calls to Work/ha-notify.log.
	HA bool
	// StockB1: gw-b1 is Debian's stock wireguard-go configured with wg
	// (interop), and host-b routes network A to gw-b1 directly.
	StockB1 bool
	// Underlay6: GENEVE and WireGuard over IPv6.
	Underlay6 bool
	// RPS: every interface steers each flow to one CPU (rps_cpus), as a
	// NIC's RSS queues would (docs/xdp.md says why XDP tests want it).
	RPS         bool
	Baseline    Baseline // with Lanes 1
	WireGuardGo string   // the wireguard-go binary for Baseline WireGuardGo
	// Etcd > 0: discovery through etcd, a cluster of that many members
	// (1 or 3) on unix sockets in Work/etcd (reachable from every
	// namespace). The last Joined lanes are in no file: their gateways
	// run `tunnel join --slot N`; the last Spare of those are not started
	// (StartJoined starts them).
	Etcd, Joined, Spare int
	// RunAs, if set, runs every demux and gateway as that user with only
	// the capabilities its systemd unit grants (deploy/systemd), through
	// setpriv; see unprivileged.go.
	RunAs *Unprivileged
	// Env is added to every demux's and gateway's environment (a test's
	// NOTIFY_SOCKET, as systemd sets it).
	Env []string
}

// Peering is a built peering.
type Peering struct {
	Options
	*Lab
	Config *config.Peering   // Work/peering.yaml, as the nodes read it
	Secret []byte            // the peering secret (hash.key_file's, or Work/peering.secret's with NodeKeys)
	Store  *etcdtest.Cluster // the etcd servers, with Options.Etcd

	mu     sync.Mutex               // the pids file, exited
	exited map[string]chan struct{} // closed when the node's process ended
}

// Up builds the peering o describes and returns once it is ready. On
// failure everything it made is removed again.
func Up(o Options) (_ *Peering, err error) {
	if err := o.check(); err != nil {
		return nil, err
	}
	if len(Namespaces(o.Prefix)) > 0 {
		return nil, fmt.Errorf("topology: namespaces %s-* exist already; remove them first (bench topology down --prefix %s --work DIR)", o.Prefix, o.Prefix)
	}
	if err := os.MkdirAll(o.Work, 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(o.Work, "pids"), nil, 0o600); err != nil {
		return nil, err
	}
	p := &Peering{Options: o, Lab: NewLab(o.Prefix)}
	defer func() {
		if err != nil {
			p.Close()
			if derr := Down(o.Prefix, o.Work); derr != nil {
				err = errors.Join(err, derr)
			}
		}
	}()
	if err := p.links(); err != nil {
		return nil, err
	}
	if err := p.writeFiles(); err != nil {
		return nil, err
	}
	if o.RunAs != nil {
		if err := p.unprivileged(); err != nil {
			return nil, err
		}
	}
	if o.Etcd > 0 {
		if err := p.startEtcd(); err != nil {
			return nil, err
		}
	}
	if o.Baseline != "" {
		return p, p.baseline()
	}
	if err := p.startNodes(); err != nil {
		return nil, err
	}
	if o.RPS {
		if err := p.rps(); err != nil {
			return nil, err
		}
	}
	if o.HA {
		if err := p.haUp(); err != nil {
			return nil, err
		}
	}
	return p, nil
}

func (o *Options) check() error {
	var errs []error
	if o.Prefix == "" || len(o.Prefix) > 9 || strings.ContainsAny(o.Prefix, "/ -") {
		errs = append(errs, fmt.Errorf("prefix %q: want 1-9 characters without '/', ' ' or '-'", o.Prefix))
	}
	if o.Lanes < 1 || o.Lanes > 200 {
		errs = append(errs, fmt.Errorf("lanes %d: want 1..200", o.Lanes))
	}
	if o.DemuxLanes > o.Lanes {
		errs = append(errs, fmt.Errorf("demux lanes %d: more than the %d lanes", o.DemuxLanes, o.Lanes))
	}
	switch {
	case o.Etcd != 0 && o.Etcd != 1 && o.Etcd != 3:
		errs = append(errs, fmt.Errorf("etcd %d: want 0 (static discovery), 1 or 3 members", o.Etcd))
	case o.Etcd == 0 && o.Joined+o.Spare > 0:
		errs = append(errs, errors.New("joined and spare lanes need etcd"))
	case o.Joined < 0 || o.Spare < 0 || o.Spare > o.Joined || o.Joined >= o.Lanes:
		errs = append(errs, fmt.Errorf("joined %d, spare %d of %d lanes: want spare <= joined < lanes (lane 1 is the file's)", o.Joined, o.Spare, o.Lanes))
	case o.Etcd > 0 && (o.DemuxLanes > 0 || o.StockB1 || o.Baseline != ""):
		errs = append(errs, errors.New("etcd: not with demux lanes, a stock peer or a baseline"))
	}
	if o.RunAs != nil && (o.Etcd > 0 || o.HA || o.StockB1 || o.Baseline != "") {
		errs = append(errs, errors.New("run as: not with etcd, HA, a stock peer or a baseline (they run as root)"))
	}
	switch o.XDP {
	case "":
		o.XDP = "off"
	case "off", "native", "generic":
	default:
		errs = append(errs, fmt.Errorf("xdp %q: want off, native or generic", o.XDP))
	}
	if o.LogLevel == "" {
		o.LogLevel = "info"
	}
	switch o.Baseline {
	case "":
	case Kernel, WireGuardGo:
		if o.Lanes != 1 || o.HA || o.StockB1 || o.DemuxLanes > 0 {
			errs = append(errs, fmt.Errorf("baseline %s: needs exactly 1 lane and no HA, stock peer or demux lanes", o.Baseline))
		}
		if o.Baseline == WireGuardGo {
			if st, err := os.Stat(o.WireGuardGo); err != nil || st.Mode()&0o111 == 0 {
				errs = append(errs, fmt.Errorf("baseline wgo: %q is not a wireguard-go binary (make bench-tools)", o.WireGuardGo))
			}
		}
	default:
		errs = append(errs, fmt.Errorf("baseline %q: want kernel or wgo", o.Baseline))
	}
	for _, b := range []string{"demux", "tunnel"} {
		if _, err := os.Stat(filepath.Join(o.Bin, b)); err != nil {
			errs = append(errs, fmt.Errorf("binary %s: %w (make build)", b, err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("topology: %w", errors.Join(errs...))
	}
	return nil
}

// side's network number (10.N.0.0/16), name letter and demux namespaces.
func netNum(s config.Side) int {
	if s == config.SideA {
		return 1
	}
	return 2
}

// GatewayNS is the namespace (without prefix) of lane i's gateway on side s.
func GatewayNS(s config.Side, i int) string { return fmt.Sprintf("g%s%d", s, i) }

// GatewayName is the node name of lane i's gateway on side s.
func GatewayName(s config.Side, i int) string { return fmt.Sprintf("gw-%s%d", s, i) }

var nodeSysctls = map[string]string{
	"net/ipv4/ip_forward":              "1",
	"net/ipv6/conf/all/forwarding":     "1",
	"net/ipv6/conf/all/accept_dad":     "0",
	"net/ipv6/conf/default/accept_dad": "0",
}

// join makes node's namespace and plugs its lan0 into side's switch.
func (p *Peering) join(node string, s config.Side, addrs ...string) error {
	sw := "sw" + string(s)
	if err := p.Add(node, nodeSysctls); err != nil {
		return err
	}
	if err := p.Veth(sw, node, node, "lan0"); err != nil {
		return err
	}
	if err := p.Enslave(sw, node, "br0"); err != nil {
		return err
	}
	return p.Addr(node, "lan0", addrs...)
}

// demuxNodes are side s's demux namespaces.
func (p *Peering) demuxNodes(s config.Side) []string {
	if s == config.SideA && p.HA {
		return []string{"da", "da2"}
	}
	return []string{"d" + string(s)}
}

func (p *Peering) links() error {
	for _, s := range config.Sides {
		sw := "sw" + string(s)
		// A LAN switch does not run the host's iptables on bridged frames
		// (br_netfilter, where loaded, would in every namespace).
		if err := p.Add(sw, map[string]string{
			"net/bridge/bridge-nf-call-iptables": "?0", "net/bridge/bridge-nf-call-ip6tables": "?0",
			"net/bridge/bridge-nf-call-arptables": "?0",
		}); err != nil {
			return err
		}
		if err := p.Bridge(sw, "br0"); err != nil {
			return err
		}
	}
	for _, s := range config.Sides {
		n, o := netNum(s), s.Other()
		h := "h" + string(s)
		if err := p.join(h, s, fmt.Sprintf("10.%d.0.10/24", n), fmt.Sprintf("fd00:%s::10/64", s)); err != nil {
			return err
		}
		if err := p.join("d"+string(s), s, fmt.Sprintf("10.%d.0.2/24", n), fmt.Sprintf("fd00:%s::2/64", s)); err != nil {
			return err
		}
		via, via6 := fmt.Sprintf("10.%d.0.2", n), fmt.Sprintf("fd00:%s::2", s)
		if s == config.SideA && p.HA {
			if err := p.join("da2", s, "10.1.0.3/24", "fd00:a::3/64"); err != nil {
				return err
			}
			via, via6 = "10.1.0.1", "fd00:a::1"
		}
		switch p.XDP {
		case "native":
			for _, d := range p.demuxNodes(s) {
				if _, err := p.Run("sw"+string(s), filepath.Join(p.Bin, "demux"), "xdp-pass", "--dev", d); err != nil {
					return err
				}
				// Without TSO on the demux's side, the userspace demux's
				// UDP sends enter the peer by the ring its XDP_TX frames
				// take (veth takes a TSO device's non-GRO-able frames to
				// the receiving CPU's backlog instead): one queue, so a
				// packet the userspace demux sent before the program
				// sends the next of its flow arrives before it, as the
				// hand-over ledger means it to (xdp/handover.go).
				if _, err := p.Run(d, "ethtool", "-K", "lan0", "tso", "off"); err != nil {
					return err
				}
			}
			if _, err := p.Run(h, "ethtool", "-K", "lan0", "tx", "off"); err != nil {
				return err
			}
		case "generic":
			if _, err := p.Run(h, "ethtool", "-K", "lan0", "tx", "off", "tso", "off", "gso", "off"); err != nil {
				return err
			}
		}
		if err := p.Route(h, Route{Dst: fmt.Sprintf("10.%d.0.0/16", netNum(o)), Via: via}); err != nil {
			return err
		}
		if err := p.Route(h, Route{Dst: fmt.Sprintf("fd00:%s::/64", o), Via: via6}); err != nil {
			return err
		}
	}
	for i := 1; i <= p.Lanes; i++ {
		for _, s := range config.Sides {
			n := netNum(s)
			if err := p.join(GatewayNS(s, i), s, fmt.Sprintf("10.%d.0.%d/24", n, 20+i), fmt.Sprintf("fd00:%s::%d/64", s, 20+i)); err != nil {
				return err
			}
		}
		if p.XDP == "native" {
			// A gateway's LAN port receives on one CPU, as a one-queue
			// NIC whose interrupt is bound to it (gateway i on CPU i-1).
			// A veth receives on the CPU that sent, and with XDP the
			// switch port's ring is drained by whichever CPU scheduled
			// it last (the demux's, the sender's): one flow then entered
			// two CPUs' backlogs and came out reordered now and then,
			// with no failure at all (1-2 packets in 3 of 30 runs of 24
			// flows for 3 s; 0 in 50 runs steered so, though not never:
			// docs/xdp.md).
			//
			// And it coalesces what it receives (GRO), as a NIC's driver
			// does, so that the program's frames, which arrive one by
			// one, reach WireGuard in batches as the userspace demux's
			// GSO sends do (docs/xdp.md). A veth receives through GRO
			// only with GRO on and a sender without TSO (else into the
			// CPU's backlog): the switch's port towards the gateway.
			// (Only here: without XDP the hosts' TSO segments would then
			// be cut at that port, in software, for the baselines' TCP.)
			for _, s := range config.Sides {
				g := GatewayNS(s, i)
				mask := fmt.Sprintf("echo %x > /sys/class/net/lan0/queues/rx-0/rps_cpus", 1<<((i-1)%min(runtime.NumCPU(), 32)))
				if _, err := p.Run(g, "sh", "-c", mask); err != nil {
					return err
				}
				if _, err := p.Run(g, "ethtool", "-K", "lan0", "gro", "on"); err != nil {
					return err
				}
				if _, err := p.Run("sw"+string(s), "ethtool", "-K", g, "tso", "off"); err != nil {
					return err
				}
			}
		}
		ga, gb := GatewayNS(config.SideA, i), GatewayNS(config.SideB, i)
		if err := p.Veth(ga, "wan0", gb, "wan0"); err != nil {
			return err
		}
		if err := p.Addr(ga, "wan0", fmt.Sprintf("198.18.%d.1/24", i), fmt.Sprintf("fd00:1:%d::1/64", i)); err != nil {
			return err
		}
		if err := p.Addr(gb, "wan0", fmt.Sprintf("198.18.%d.2/24", i), fmt.Sprintf("fd00:1:%d::2/64", i)); err != nil {
			return err
		}
	}
	return p.warm()
}

// warm resolves each underlay neighbour once. On a fresh veth the
// kernel's first IPv6 neighbour solicitation can go unanswered and is
// retried a second later; a WireGuard handshake held up that long can
// cross its peer's and stall the lane for WireGuard's 5-second retry.
func (p *Peering) warm() error {
	var wg sync.WaitGroup
	for i := 1; i <= p.Lanes; i++ {
		for _, dst := range []string{fmt.Sprintf("198.18.%d.2", i), fmt.Sprintf("fd00:1:%d::2", i)} {
			wg.Go(func() { p.Run(GatewayNS(config.SideA, i), "ping", "-c", "1", "-W", "3", "-q", dst) })
		}
	}
	wg.Wait()
	return nil
}

// Start runs binary (demux or tunnel) `up` as node in namespace ns with
// the given config file: its output appends to Work/NODE.log, its pid goes
// to Work/NODE.pid and Work/pids, where Down finds it.
func (p *Peering) Start(ns, binary, node, configPath string, extra ...string) error {
	args := append([]string{filepath.Join(p.Bin, binary), "up", "--config", configPath, "--node", node, "--log-level", p.LogLevel}, extra...)
	if p.RunAs != nil {
		args = p.RunAs.Wrap(p.Work, UnitCaps(binary, p.XDP != "off"), args)
	}
	return p.spawn(ns, node, p.Env, args...)
}

// spawn starts args in ns as node (its log, pid files).
func (p *Peering) spawn(ns, node string, env []string, args ...string) error {
	log, err := os.OpenFile(filepath.Join(p.Work, node+".log"), os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := p.Command(ns, args...)
	cmd.Stdout, cmd.Stderr = log, log
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: %w", node, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }() // reaped here while this process lives
	p.mu.Lock()
	if p.exited == nil {
		p.exited = map[string]chan struct{}{}
	}
	p.exited[node] = done
	p.mu.Unlock()
	return p.record(node, cmd.Process.Pid)
}

// record notes a process of node's for Down.
func (p *Peering) record(node string, pid int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if node != "" {
		if err := os.WriteFile(filepath.Join(p.Work, node+".pid"), []byte(strconv.Itoa(pid)+"\n"), 0o600); err != nil {
			return err
		}
	}
	f, err := os.OpenFile(filepath.Join(p.Work, "pids"), os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = fmt.Fprintln(f, pid)
	return err
}

// PID is the pid a node's process was last started with.
func (p *Peering) PID(node string) (int, error) {
	b, err := os.ReadFile(filepath.Join(p.Work, node+".pid"))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// ConfigPath is the peering file; DemuxConfigPath the demuxes' (the same
// file unless DemuxLanes is set).
func (p *Peering) ConfigPath() string { return filepath.Join(p.Work, "peering.yaml") }

func (p *Peering) DemuxConfigPath() string {
	if p.DemuxLanes > 0 {
		return filepath.Join(p.Work, "demux.yaml")
	}
	return p.ConfigPath()
}

// Socket is a node's status socket.
func (p *Peering) Socket(node string) string {
	if p.RunAs != nil {
		return filepath.Join(statusDir(p.Options.Prefix), node+".sock")
	}
	return fmt.Sprintf("%s/%s-%s.sock", config.DefaultStatusDir, p.Options.Prefix, node)
}

func (p *Peering) startNodes() error {
	var gateways []string
	for i := 1; i <= p.Lanes; i++ {
		for _, s := range config.Sides {
			name := GatewayName(s, i)
			if s == config.SideB && i == 1 && p.StockB1 {
				if err := p.stockB1(); err != nil {
					return err
				}
				continue
			}
			switch {
			case i > p.Lanes-p.Spare:
				continue
			case i > p.FileLanes():
				if err := p.startJoined(s, i, p.joinArgs(s, i)...); err != nil {
					return err
				}
			default:
				if err := p.Start(GatewayNS(s, i), "tunnel", name, p.ConfigPath()); err != nil {
					return err
				}
			}
			gateways = append(gateways, name)
		}
	}
	// The demuxes start once every gateway is up: their first probes make
	// the gateways open the WireGuard sessions, and a handshake sent to a
	// peer that is not yet listening is retried only after 5 s.
	for _, g := range gateways {
		if err := p.waitSocket(g); err != nil {
			return err
		}
	}
	demuxes := p.Demuxes()
	for _, d := range demuxes {
		args := []string{"--xdp", p.XDP}
		if p.Queues > 0 {
			args = append(args, "--queues", strconv.Itoa(p.Queues))
		}
		if err := p.Start(demuxNS(d), "demux", d, p.DemuxConfigPath(), args...); err != nil {
			return err
		}
	}
	for _, d := range demuxes {
		if err := p.waitSocket(d); err != nil {
			return err
		}
	}
	// And when each demux's lanes are up: their probes crossed both
	// gateways and the tunnel. (demux-b never sees lane 1 up beside a
	// stock gw-b1, which takes no GENEVE; host-b bypasses demux-b then.)
	want := p.Lanes - p.Spare
	if p.DemuxLanes > 0 {
		want = p.DemuxLanes
	}
	for _, d := range demuxes {
		need := want
		if d == "demux-b" && p.StockB1 {
			need--
		}
		if err := p.WaitLanesUp(d, need, 10*time.Second); err != nil {
			return err
		}
	}
	return nil
}

// Demuxes are the demux nodes, standby included.
func (p *Peering) Demuxes() []string {
	d := []string{"demux-a", "demux-b"}
	if p.HA {
		d = append(d, "demux-a2")
	}
	return d
}

func demuxNS(node string) string { return "d" + strings.TrimPrefix(node, "demux-") }

// waitSocket waits until node's status socket answers.
func (p *Peering) waitSocket(node string) error {
	p.mu.Lock()
	done := p.exited[node]
	p.mu.Unlock()
	var last error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		var st map[string]any
		if last = admin.Fetch(p.Socket(node), &st); last == nil {
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("topology: %s exited at start; its log:\n%s", node, p.Log(node))
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("topology: %s did not start (%v); its log:\n%s", node, last, p.Log(node))
}

// WaitLanesUp waits until demux node has n lanes up.
func (p *Peering) WaitLanesUp(node string, n int, timeout time.Duration) error {
	var st demux.Status
	for deadline := time.Now().Add(timeout); ; time.Sleep(50 * time.Millisecond) {
		st = demux.Status{}
		err := admin.Fetch(p.Socket(node), &st)
		up := 0
		for _, l := range st.Lanes {
			if l.State == demux.LaneUp {
				up++
			}
		}
		if err == nil && up >= n {
			return nil
		}
		if time.Now().After(deadline) {
			var got []string
			for _, l := range st.Lanes {
				got = append(got, fmt.Sprintf("lane %d %s", l.ID, l.State))
			}
			return fmt.Errorf("topology: %s has not %d lanes up after %s (%v; %s); its log:\n%s",
				node, n, timeout, err, strings.Join(got, ", "), p.Log(node))
		}
	}
}

// Log is the end of node's log.
func (p *Peering) Log(node string) string {
	b, _ := os.ReadFile(filepath.Join(p.Work, node+".log"))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// rps steers each flow to one CPU on every interface of the peering.
func (p *Peering) rps() error {
	mask := strconv.FormatInt(int64(1)<<runtime.NumCPU()-1, 16)
	for _, n := range Namespaces(p.Options.Prefix) {
		name := strings.TrimPrefix(n, p.Options.Prefix+"-")
		if _, err := p.Run(name, "sh", "-c", "for f in /sys/class/net/*/queues/rx-*/rps_cpus; do printf "+mask+" >$f; done"); err != nil {
			return err
		}
	}
	return nil
}

// Down stops the processes listed in work and removes the namespaces
// prefix-* and the sockets their nodes left; it is safe to call on a
// peering that is half built or gone.
func Down(prefix, work string) error {
	pids := readPids(filepath.Join(work, "pids"))
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGTERM)
	}
	for range 50 {
		if !slices.ContainsFunc(pids, alive) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	os.Remove(filepath.Join(work, "pids"))
	// keepalived's VRRP children, should their parent have died without
	// ending them (a parent ends and restarts its own).
	for _, pid := range readPids(filepath.Join(work, "pids.children")) {
		if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); strings.Contains(string(b), "keepalived") {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	os.Remove(filepath.Join(work, "pids.children"))
	err := RemoveNamespaces(prefix)
	socks, _ := filepath.Glob(filepath.Join(config.DefaultStatusDir, prefix+"-*.sock"))
	// A gateway killed outright leaves its UAPI socket (`wg show` would
	// list a dead interface); the TUNs are named PREFIX-gXN.
	uapi, _ := filepath.Glob(fmt.Sprintf("/var/run/wireguard/%s-g[ab][0-9]*.sock", prefix))
	for _, s := range append(socks, uapi...) {
		os.Remove(s)
	}
	os.RemoveAll(statusDir(prefix)) // RunAs's
	return err
}

func readPids(path string) []int {
	b, _ := os.ReadFile(path)
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
			out = append(out, pid)
		}
	}
	return out
}

// alive says whether pid runs (a zombie counts as gone).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command's closing parenthesis.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}
