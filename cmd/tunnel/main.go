// Command tunnel runs one gateway of a peering: one end of a lane. It
// takes GENEVE from its side's demux, encrypts into the lane (WireGuard)
// and delivers what the paired gateway sends to the local network.
//
//	tunnel up     --config peering.yaml --node gw-a1
//	tunnel show   --config peering.yaml --node gw-a1 [--json]
//	tunnel genkey > gw-a1.key            (owner-only file, as `wg genkey`)
//	tunnel pubkey < gw-a1.key
//	tunnel check  --config peering.yaml
//	tunnel reflect --config peering.yaml --node gw-b1   (beside a stock WireGuard peer)
//	tunnel join   --config peering.yaml --node gw-a7 --side a --geneve 10.1.0.27 --endpoint 198.18.7.1 --private-key gw-a7.key
//	tunnel members --config peering.yaml              (the store's registrations)
//	tunnel enrolkey > enrolment.key; tunnel enrolpub < enrolment.key
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/clusterpeer/clusterpeer/admin"
	"github.com/clusterpeer/clusterpeer/cmd/internal/cli"
	"github.com/clusterpeer/clusterpeer/cmd/internal/service"
	"github.com/clusterpeer/clusterpeer/config"
	"github.com/clusterpeer/clusterpeer/dataplane/geneveauth"
	"github.com/clusterpeer/clusterpeer/flowhash"
	"github.com/clusterpeer/clusterpeer/membership"
	"github.com/clusterpeer/clusterpeer/tunnel/gateway"
	"github.com/clusterpeer/clusterpeer/tunnel/keyring"
	"github.com/clusterpeer/clusterpeer/tunnel/probe"
	"github.com/clusterpeer/clusterpeer/tunnel/wgkey"
)

func main() {
	cli.Main("tunnel", "run one gateway of an encrypted cluster peering: one end of a WireGuard lane", map[string]cli.Command{
		"up":      {Usage: "up --config FILE --node NAME", Help: "run the gateway until SIGINT/SIGTERM", Run: up},
		"show":    {Usage: "show --config FILE --node NAME [--json]", Help: "print the lane, peer and counters", Run: show},
		"genkey":  {Usage: "genkey", Help: "print a new private key (base64)", Run: genkey},
		"pubkey":  {Usage: "pubkey", Help: "read a private key on stdin, print its public key", Run: pubkey},
		"check":   {Usage: "check --config FILE", Help: "validate a config and exit", Run: cli.Check},
		"reflect": {Usage: "reflect --config FILE --node NAME [--dev IFACE]", Help: "answer lane probes only, beside a stock WireGuard peer", Run: reflect},
		"join": {Usage: "join --config FILE --node NAME --side a|b --geneve IP[:PORT] --endpoint IP[:PORT] --private-key FILE [--slot N] [--weight W]",
			Help: "run a gateway that is in no file: register in the store (discovery: etcd), take the peer from there", Run: join},
		"members":  {Usage: "members --config FILE [--json]", Help: "list the store's registrations, verified", Run: cli.Members},
		"weight":   {Usage: "weight --config FILE --node NAME --weight W", Help: "change a joined gateway's registered weight (the demuxes apply it live)", Run: weight},
		"enrolkey": {Usage: "enrolkey", Help: "print a new enrolment key (signs the store's registrations; owner-only file)", Run: enrolkey},
		"enrolpub": {Usage: "enrolpub", Help: "read an enrolment key on stdin, print its public key", Run: enrolpub},
	})
}

func genkey(args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("genkey takes no arguments")
	}
	if fi, err := os.Stdout.Stat(); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o077 != 0 {
		fmt.Fprintln(os.Stderr, "warning: writing a private key to a file others can read; run `umask 077` first or chmod 600 it")
	}
	k, err := wgkey.Generate()
	if err != nil {
		return err
	}
	fmt.Println(k.Base64())
	return nil
}

func pubkey(args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("pubkey takes no arguments; it reads the private key on stdin")
	}
	line, err := bufio.NewReader(io.LimitReader(os.Stdin, config.MaxSecretFile)).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	k, err := wgkey.Parse(strings.TrimSpace(line))
	if err != nil {
		return fmt.Errorf("stdin: %w", err)
	}
	fmt.Println(k.Public().Base64())
	return nil
}

func up(args []string) error {
	log, p, node, err := cli.Up(args, false)
	if err != nil {
		return err
	}
	self := node.Self
	if self.PrivateKeyFile == "" {
		return fmt.Errorf("%s: private_key_file is not set for this gateway", p.Path)
	}
	priv, err := readPrivateKey(self.PrivateKeyFile)
	if err != nil {
		return err
	}
	if priv.Public() != self.Public {
		return fmt.Errorf("private key %s does not belong to public_key of %s in %s (its public key is %s)",
			self.PrivateKeyFile, self.Name, p.Path, priv.Public().Base64())
	}
	return run(log, p, node, priv, nil)
}

func readPrivateKey(path string) (wgkey.Key, error) {
	s, err := config.ReadSecretFile(path)
	if err != nil {
		return wgkey.Key{}, fmt.Errorf("private key: %w", err)
	}
	priv, err := wgkey.Parse(s)
	if err != nil {
		return wgkey.Key{}, fmt.Errorf("private key %s: %w", path, err)
	}
	return priv, nil
}

// geneveOpener lets in the frames the side's demux (sender 0) and its
// standby (1) seal for lane, with the keys of every generation the
// node's ring accepts now; nil with geneve_auth off.
func geneveOpener(p *config.Peering, keys *keyring.Ring, side config.Side, lane int) *geneveauth.Opener {
	if !p.Security.GeneveAuth {
		return nil
	}
	o := geneveauth.NewOpener()
	now := time.Now()
	for _, g := range keys.Gens {
		if keys.Accepted(g.ID, now) == nil {
			continue // past its grace
		}
		for sender := range p.Networks[side].Demuxes() { // the order of their sender numbers
			if k, ok := g.Key(keyring.GenevePath(string(side), uint8(sender), uint16(lane))); ok {
				o.Add(uint8(sender), g.ID, geneveauth.KeyOf(k))
			}
		}
	}
	return o
}

// run is a gateway, of the file (up) or joining through the store (join:
// then node's lane id and peer come from the store once registered).
func run(log *slog.Logger, p *config.Peering, node config.Node, priv wgkey.Key, j *joined) error {
	self, peer := node.Self, node.Peer
	// A gateway of the file reads its keys now; one that joins through
	// the store once it knows its slot (its slot's file, or its side's).
	var keys *keyring.Ring
	if j == nil {
		var err error
		if keys, err = p.Ring(node, self.Name); err != nil {
			return err
		}
	}
	// The reflector (started once the TUN it listens behind exists) is
	// also how the gateway tells its demuxes that the lane cannot work.
	cond := &conditions{log: log}
	own, err := ownAddrs()
	if err != nil {
		return err
	}
	ingress := gateway.Ingress{Sources: p.Networks[node.Side].DemuxSources(), Local: self.Geneve.Addr(), Own: own, VNI: p.VNI, Probe: peerProbe(p, peer)}
	if j == nil {
		ingress.Auth = geneveOpener(p, keys, node.Side, node.Lane.ID)
	} else if p.Security.GeneveAuth {
		ingress.Auth = geneveauth.NewOpener() // no keys: nothing enters until the store gives the lane
	}
	var onPeer, onPath func(string)
	if p.Health.On {
		ingress.ReflectorPort = p.Health.Port // startReflector's
		ingress.OnProbe = cond.sawProbe
		onPeer = func(m string) { cond.set(probe.DiagNeighborDown, m) }
		onPath = func(m string) { cond.set(probe.DiagPathDown, m) }
	}
	l, err := gateway.Start(gateway.Config{
		Tun:          self.Tun,
		MTU:          p.MTU,
		Geneve:       self.Geneve.AddrPort,
		Ingress:      ingress,
		OnPeer:       onPeer,
		OnPath:       onPath,
		PrivateKey:   priv,
		ListenPort:   self.Endpoint.AddrPort.Port(),
		Peer:         peer.Public,
		PeerEndpoint: peer.Endpoint.AddrPort,
		Remote:       p.Networks[node.Side.Other()].Prefixes,
		UAPI:         true,
		AwaitPeer:    awaitPeer(node.Side),
		Log:          log,
	})
	if err != nil {
		return cli.NeedsCaps(err, unix.CAP_NET_ADMIN)
	}
	defer l.Close()
	ctx, stop := cli.SignalContext()
	defer stop()
	if j != nil {
		if err := j.register(ctx, p, &node, l, log); err != nil {
			return err
		}
		defer j.close()
		peer = j.peerGateway()
		var from string
		if keys, from, err = p.JoinRing(node.Side, node.Lane.ID, self.Name); err != nil {
			return err
		}
		if from != "" {
			log.Info("keys read", "file", from, "generations", keys.String())
		}
		if p.Security.GeneveAuth {
			ingress.Auth = geneveOpener(p, keys, node.Side, node.Lane.ID)
			l.SetAuth(ingress.Auth)
		}
	}
	log = log.With("lane", node.Lane.ID)

	id := strconv.Itoa(node.Lane.ID)
	reg := prometheus.NewRegistry()
	reg.MustRegister(l.Collector(id, self.Name), cli.BuildInfo("tunnel"))
	if j != nil {
		reg.MustRegister(j.view.Collector(self.Name))
	}
	rf, err := startReflector(p, node, keys, self.Tun, log)
	if err != nil {
		return err
	}
	if rf != nil {
		defer rf.Close()
		reg.MustRegister(rf.Collector(id, self.Name))
		cond.attach(rf)
		go watchHandshakes(ctx, l, cond)
	}
	var demuxes []string
	for _, a := range p.Networks[node.Side].DemuxSources() {
		demuxes = append(demuxes, a.String())
	}
	identity := gateway.Status{
		Node: self.Name, Peering: p.Name, Side: string(node.Side), Lane: node.Lane.ID, Tun: self.Tun, MTU: p.MTU,
		PublicKey: self.PublicKey, ListenPort: self.Endpoint.AddrPort.Port(), GenevePort: self.Geneve.AddrPort.Port(),
		Demuxes: demuxes, PeerName: peer.Name,
	}
	gk := &gatewayKeys{rf: rf, auth: ingress.Auth}
	gk.expire(p, keys, node.Side, node.Lane.ID)
	reg.MustRegister(cli.KeysExpiry(gk.until))
	var fp *filePeer
	if j == nil {
		fp = &filePeer{path: p.Path, name: self.Name, lane: l, keys: gk, p: p, node: node}
	}
	status := func() any {
		st := status{Status: l.Status(identity), Source: "file", Build: cli.BuildOf()}
		if fp != nil {
			st.PeerName = fp.peerName()
		}
		if rf != nil {
			rs := rf.Status()
			st.Probes = &rs
		}
		if j != nil {
			st.Source, st.PeerName = "store", j.peerName()
			h := j.store.Health()
			st.Store = &h
		}
		return st
	}
	srv, err := admin.Serve(self.Metrics, p.Metrics.WebConfig, self.Status, reg, status, log)
	if err != nil {
		return err
	}
	defer srv.Close()
	if j != nil {
		srv.Handle("weight", j.setWeight)
	}

	log.Info("tunnel up", "peering", p.Name, "side", node.Side, "tun", self.Tun, "geneve", self.Geneve.AddrPort,
		"listen", self.Endpoint.AddrPort.Port(), "peer", peer.Name, "peer_endpoint", peer.Endpoint.AddrPort,
		"metrics", self.Metrics, "status", self.Status)
	// Ready at once: a gateway's lane opens when the demuxes' first probes
	// cross it, so it has nothing of its own to wait for.
	service.Notify("READY=1\nSTATUS=lane " + id + " to " + peer.Name)
	go service.Watchdog(ctx, func() { status() })
	go service.ReleaseMemory(ctx, service.ReleaseEvery)
	// SIGHUP: a gateway of the file applies a changed peer and keys live
	// (filePeer); a joined gateway's peer changes through the store, and
	// it reloads its keys. Sent to a whole fleet, it never stops a gateway.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	var displaced <-chan string
	if j != nil {
		displaced = j.displaced
	}
	for {
		select {
		case <-ctx.Done():
			if j != nil {
				j.leave(log)
			}
			service.Notify("STOPPING=1")
			drainBeforeStop(l, cond, log)
			log.Info("tunnel stopping")
			return nil
		case by := <-displaced:
			return fmt.Errorf("slot %d of side %s was taken over by %s (a newer registration of this slot); this gateway stops", node.Lane.ID, node.Side, by)
		case <-l.Wait():
			cond.set(probe.DiagForwardingDown, "wireguard device stopped")
			return errors.New("wireguard device stopped")
		case <-hup:
			service.Notify(service.Reloading())
			reload := func() (string, error) { return reloadJoined(p.Path, self.Name, node.Side, node.Lane.ID, gk) }
			if fp != nil {
				reload = fp.reload
			}
			if msg, err := reload(); err != nil {
				log.Error("SIGHUP: " + err.Error())
			} else {
				log.Info("SIGHUP: reloaded: " + msg)
			}
			service.Notify("READY=1")
		}
	}
}

// awaitPeer: side b's gateways let side a's open each new WireGuard
// session (gateway.Config.AwaitPeer); a second covers a peer that starts
// or learns of this end a little later.
func awaitPeer(side config.Side) time.Duration {
	if side == config.SideB {
		return time.Second
	}
	return 0
}

// status is what `tunnel show` reads: the gateway's, where its lane came
// from, and the store as it last answered (joined gateways).
type status struct {
	gateway.Status
	Source string             `json:"source"` // file or store
	Store  *membership.Health `json:"store,omitempty"`
	Build  cli.Build          `json:"build"`
}

// ownAddrs are this host's addresses (but loopback's): the sources of
// the packets the gateway itself routes into its lane.
func ownAddrs() ([]netip.Addr, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("list this host's addresses: %w", err)
	}
	var own []netip.Addr
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok && !ip.IsLoopback() {
				own = append(own, ip.Unmap())
			}
		}
	}
	return own, nil
}

// conditions combines what keeps the lane from working into the one
// diagnostic the reflector reports (the most telling one first).
type conditions struct {
	mu   sync.Mutex
	rf   atomic.Pointer[probe.Reflector]
	log  *slog.Logger
	have map[probe.Diag]string
	top  probe.Diag
}

// attach starts reporting through rf.
func (c *conditions) attach(rf *probe.Reflector) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rf.Store(rf)
	rf.SetCondition(c.top)
}

// sawProbe passes a probe the gateway forwards on to the reflector.
func (c *conditions) sawProbe(inner []byte) {
	if rf := c.rf.Load(); rf != nil {
		rf.SawProbe(inner)
	}
}

var diagOrder = []probe.Diag{probe.DiagAdminDown, probe.DiagForwardingDown, probe.DiagPathDown, probe.DiagNeighborDown, probe.DiagNoHandshake}

// watchHandshakes reports, every 250 ms until ctx ends, whether the lane
// has a WireGuard session with its peer (gateway.HandshakeWatch): often
// enough that a lane whose first handshake comes waits little for the
// report to clear (its notices hold the lane down until then).
func watchHandshakes(ctx context.Context, l *gateway.Lane, cond *conditions) {
	var w gateway.HandshakeWatch
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			if p, err := l.Peer(); err == nil {
				cond.set(probe.DiagNoHandshake, w.Check(p, now))
			}
		}
	}
}

// set records that d holds for the reason missing, or with "" that it
// no longer does.
func (c *conditions) set(d probe.Diag, missing string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.have == nil {
		c.have = map[probe.Diag]string{}
	}
	if _, had := c.have[d]; had == (missing != "") && c.have[d] == missing {
		return
	}
	if missing == "" {
		delete(c.have, d)
		c.log.Info("lane condition cleared", "diag", d.String())
	} else {
		c.have[d] = missing
		c.log.Warn("lane cannot work; telling the demuxes", "diag", d.String(), "reason", missing)
	}
	c.top = probe.DiagNone
	for _, o := range diagOrder {
		if _, ok := c.have[o]; ok {
			c.top = o
			break
		}
	}
	if rf := c.rf.Load(); rf != nil {
		rf.SetCondition(c.top)
	}
}

// Stop timing: a planned stop tells the demuxes first and keeps
// forwarding until they have moved the lane's flows (nothing from the
// demux and nothing from the peer for stopQuiet), at most stopGrace.
const (
	stopQuiet = 100 * time.Millisecond
	stopGrace = 2 * time.Second
)

// drainBeforeStop is a planned stop: "administratively down" to both
// demuxes (the near one directly, the far one through the lane), then
// forwarding goes on until the lane is quiet, so nothing is lost.
func drainBeforeStop(l *gateway.Lane, cond *conditions, log *slog.Logger) {
	if cond.rf.Load() == nil {
		return // no probes: nobody to tell
	}
	cond.set(probe.DiagAdminDown, "stopping (SIGTERM)")
	start := time.Now()
	// Data packets only: the demuxes go on probing the lane.
	rf := cond.rf.Load()
	count := func() uint64 {
		c := l.Counters()
		return c.GenevePackets.Load() + c.DeliveredPackets.Load() - rf.C.Probes.Load()
	}
	last, quiet := count(), time.Now()
	for time.Since(start) < stopGrace {
		time.Sleep(10 * time.Millisecond)
		if n := count(); n != last {
			last, quiet = n, time.Now()
		} else if time.Since(quiet) >= stopQuiet {
			break
		}
	}
	log.Info("lane drained before stop", "took", time.Since(start).Round(time.Millisecond))
}

// peerProbe is where the far demux's probes for this lane go: the peer
// gateway's reflector. OAM frames for anywhere else are dropped.
func peerProbe(p *config.Peering, peer *config.Gateway) netip.AddrPort {
	if !p.Health.On || !peer.Geneve.IsValid() {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(peer.Geneve.AddrPort.Addr(), p.Health.Port)
}

// startReflector answers the far demux's probes on this gateway's own
// address, those that come out of iface (the lane's TUN; "" any), nil
// when health checks are off.
func startReflector(p *config.Peering, node config.Node, keys *keyring.Ring, iface string, log *slog.Logger) (*probe.Reflector, error) {
	if !p.Health.On {
		return nil, nil
	}
	addr := netip.AddrPortFrom(node.Self.Geneve.AddrPort.Addr(), p.Health.Port)
	rf, err := probe.NewReflector(addr, flowhash.LaneID(node.Lane.ID), string(node.Side), string(node.Side.Other()), keys, iface, log)
	if err != nil {
		return nil, err
	}
	go rf.Run()
	return rf, nil
}

// reflect runs only the reflector, for a lane end that is a stock
// WireGuard peer: the probes it decrypts reach this socket through the
// host's kernel, and the replies go back through its WireGuard interface.
func reflect(args []string) error {
	var dev string
	log, p, node, err := cli.UpWith(args, false, func(fs *flag.FlagSet) {
		fs.StringVar(&dev, "dev", "", "answer only probes that arrive on this interface (the WireGuard interface; default: any)")
	})
	if err != nil {
		return err
	}
	if !p.Health.On {
		return fmt.Errorf("%s: health checks are off (health.enabled: false); nothing to answer", p.Path)
	}
	keys, err := p.Ring(node, node.Self.Name)
	if err != nil {
		return err
	}
	rf, err := startReflector(p, node, keys, dev, log.With("lane", node.Lane.ID))
	if err != nil {
		return err
	}
	defer rf.Close()
	log.Info("reflector up", "lane", node.Lane.ID, "address", rf.Status().Address)
	ctx, stop := cli.SignalContext()
	defer stop()
	<-ctx.Done()
	return nil
}

func show(args []string) error {
	var st status
	text, err := cli.Show(args, func(n config.Node) (string, error) {
		if n.Lane == nil {
			return "", errors.New("a demux; use `demux show`")
		}
		return n.Self.Status, nil
	}, &st)
	if !text {
		return err
	}
	fmt.Printf("gateway: %s (peering %s, side %s, lane %d)\n", st.Node, st.Peering, st.Side, st.Lane)
	fmt.Printf("  version: %s (commit %s)\n", st.Build.Version, st.Build.Revision)
	fmt.Printf("  public key: %s\n  listening port: %d  geneve port: %d  tun: %s  mtu: %d\n",
		st.PublicKey, st.ListenPort, st.GenevePort, st.Tun, st.MTU)
	fmt.Printf("  demux: %s\n", strings.Join(st.Demuxes, ", "))
	if h := st.Store; h != nil {
		state := "reachable"
		if !h.Up {
			state = "UNREACHABLE (the lane goes on with the peer it has): " + h.Error
		}
		fmt.Printf("  from: the store (slot %d), etcd %s, %s since %s\n", st.Lane, strings.Join(h.Endpoints, ", "), state, h.Since.Format("15:04:05"))
	}
	fmt.Printf("  from demux: %d packets, %s  delivered: %d packets, %s\n",
		st.GenevePackets, cli.HumanBytes(st.GeneveBytes), st.DeliveredPackets, cli.HumanBytes(st.DeliveredBytes))
	cli.PrintDrops(st.Drops)
	if pr := st.Probes; pr != nil {
		fmt.Printf("  probes answered: %d (on %s)  notices sent: %d  condition: %s\n", pr.Answered, pr.Address, pr.Notices, pr.Condition)
		if pr.KeyID != "" {
			fmt.Printf("  keys: replies signed with generation %s\n", pr.KeyID)
		}
		cli.PrintCounts("probes refused", pr.Drops)
	}
	fmt.Printf("\npeer: %s (%s)\n  endpoint: %s\n", st.Peer.PublicKey, st.PeerName, st.Peer.Endpoint)
	if st.Peer.LastHandshake.IsZero() {
		fmt.Println("  latest handshake: (none)")
	} else {
		fmt.Printf("  latest handshake: %s ago\n", time.Since(st.Peer.LastHandshake).Round(time.Second))
	}
	fmt.Printf("  transfer: %s received, %s sent\n", cli.HumanBytes(st.Peer.RxBytes), cli.HumanBytes(st.Peer.TxBytes))
	return nil
}
