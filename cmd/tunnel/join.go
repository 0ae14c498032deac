package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/clusterpeer/clusterpeer/admin"
	"github.com/clusterpeer/clusterpeer/cmd/internal/cli"
	"github.com/clusterpeer/clusterpeer/config"
	"github.com/clusterpeer/clusterpeer/membership"
	"github.com/clusterpeer/clusterpeer/tunnel/gateway"
)

// registerWait is how long a joining gateway waits for the store at
// start: a gateway nobody can find is of no use, so it fails then.
const registerWait = 30 * time.Second

// join runs a gateway that is in no file: it registers in the store
// (discovery: etcd) and takes its peer from there, live.
func join(args []string) error {
	var f cli.NodeFlags
	var j config.Joining
	var side, geneve, endpoint string
	var weight uint
	err := f.ParseWith("join", args, false, func(fs *flag.FlagSet) {
		fs.StringVar(&side, "side", "", "the network this gateway serves: a or b")
		fs.IntVar(&j.Slot, "slot", 0, "the lane slot to take (a replacement takes its predecessor's); default: the lowest free one")
		fs.UintVar(&weight, "weight", 1, "relative share of new flows, 1..1000")
		fs.StringVar(&geneve, "geneve", "", "ip[:port] where this side's demux sends GENEVE (inside the side's prefixes)")
		fs.StringVar(&endpoint, "endpoint", "", "ip[:port] of WireGuard, as the peer gateway dials it")
		fs.StringVar(&j.Gateway.PrivateKeyFile, "private-key", "", "this gateway's WireGuard private key file (owner-only)")
		fs.StringVar(&j.Gateway.Tun, "tun", "", "the TUN's name (default cp-NAME)")
		fs.StringVar(&j.Gateway.Metrics, "metrics", "", "ip:port for /metrics, or off (default "+config.DefaultMetricsAddr+")")
		fs.StringVar(&j.Gateway.Status, "status", "", "the status socket (default "+config.DefaultStatusDir+"/PEERING-NAME.sock)")
	})
	if err != nil {
		return err
	}
	if f.Node == "" {
		return errors.New("--node is required: this gateway's name (a new one, in no file)")
	}
	log, err := f.Logger()
	if err != nil {
		return err
	}
	p, err := config.Load(f.Config)
	if err != nil {
		return err
	}
	if j.Gateway.PrivateKeyFile == "" {
		return errors.New("--private-key is required (`tunnel genkey > gw.key`)")
	}
	priv, err := readPrivateKey(j.Gateway.PrivateKeyFile)
	if err != nil {
		return err
	}
	j.Side, j.Weight, j.Gateway.Name, j.Gateway.PublicKey = config.Side(side), uint32(min(weight, 1<<31)), f.Node, priv.Public().Base64()
	var errs config.Errors
	for _, a := range []struct {
		flag, v string
		to      *config.HostPort
	}{{"--geneve", geneve, &j.Gateway.Geneve}, {"--endpoint", endpoint, &j.Gateway.Endpoint}} {
		if err := a.to.UnmarshalText([]byte(a.v)); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: %w", a.flag, a.v, err))
		}
	}
	if len(errs) > 0 {
		return errs
	}
	if err := p.CheckJoining(&j); err != nil {
		return fmt.Errorf("tunnel join:\n%w", err)
	}
	store, err := membership.Dial(p, log)
	if err != nil {
		return err
	}
	jd := &joined{store: store, joining: j, displaced: make(chan string, 1)}
	node := config.Node{Side: j.Side, Lane: &config.Lane{Weight: j.Weight}, Self: &j.Gateway, Peer: &config.Gateway{}}
	return run(log, p, node, priv, jd)
}

// joined is a gateway's membership: its registration, and the view of
// the store through which it follows its peer.
type joined struct {
	store     *membership.Store
	joining   config.Joining
	reg       *membership.Registration
	view      *membership.View
	stop      context.CancelFunc
	displaced chan string

	mu   sync.Mutex
	peer membership.Member // the far end now in the lane ("" name: none yet)
}

// register claims the slot, fills node's lane in, and follows the peer:
// a new far end (a replacement, with its new key and address) goes into
// the WireGuard device live.
func (j *joined) register(ctx context.Context, p *config.Peering, node *config.Node, l *gateway.Lane, log *slog.Logger) error {
	rctx, cancel := context.WithTimeout(ctx, registerWait)
	defer cancel()
	reg, err := j.store.Register(rctx, p, j.joining)
	if err != nil {
		j.store.Close()
		return fmt.Errorf("register in the store %v: %w", p.Discovery.Etcd.Endpoints, err)
	}
	j.reg = reg
	rec := reg.Record()
	node.Lane.ID = rec.Slot
	if node.Side == config.SideA {
		node.Lane.A = *node.Self
	} else {
		node.Lane.B = *node.Self
	}
	log.Info("registered in the store", "side", rec.Side, "slot", rec.Slot, "name", rec.Name)
	self := membership.Slot{Side: node.Side, Slot: rec.Slot}
	far := membership.Slot{Side: node.Side.Other(), Slot: rec.Slot}
	apply := func() {
		if m, ok := j.view.Member(self); ok && !m.Lost && !reg.Mine(m) {
			select {
			case j.displaced <- m.Name:
			default:
			}
			return
		}
		m, ok := j.view.Member(far)
		if !ok || m.State != membership.StateUp {
			return // none yet, or leaving: keep what the lane has
		}
		j.mu.Lock()
		defer j.mu.Unlock()
		if m.PublicKey == j.peer.PublicKey && m.Endpoint == j.peer.Endpoint && m.Geneve == j.peer.Geneve {
			return
		}
		g := m.Gateway()
		if err := l.SetPeer(g.Public, g.Endpoint.AddrPort, peerProbe(p, &g)); err != nil {
			log.Error("cannot take the new peer", "peer", m.Name, "err", err)
			return
		}
		log.Info("peer set from the store", "peer", m.Name, "endpoint", m.Endpoint, "public_key", m.PublicKey)
		j.peer = m
	}
	vctx, stop := context.WithCancel(context.Background())
	j.stop = stop
	loaded := make(chan struct{})
	var once sync.Once
	j.view = j.store.View(p, func() { once.Do(func() { close(loaded) }); apply() })
	go j.view.Run(vctx)
	select {
	case <-loaded: // the peer, if registered, is in the lane before the reflector starts
	case <-time.After(2 * time.Second):
	}
	return nil
}

func (j *joined) peerName() string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.peer.Name
}

// peerGateway is the far end now in the lane (an empty one: none yet).
func (j *joined) peerGateway() *config.Gateway {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.peer.Name == "" {
		return &config.Gateway{}
	}
	g := j.peer.Gateway()
	return &g
}

// leave is the store's part of a planned stop: the record says leaving,
// so both demuxes drain the lane, then goes.
func (j *joined) leave(log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := j.reg.Leave(ctx); err != nil {
		log.Warn("could not leave the store; the registration ends with its lease", "err", err)
	}
}

func (j *joined) close() {
	j.stop()
	j.reg.Close()
	j.store.Close()
}

// setWeight is the status socket's "weight" action.
func (j *joined) setWeight(q url.Values) (string, error) {
	w, err := strconv.ParseUint(q.Get("weight"), 10, 32)
	if err != nil {
		return "", fmt.Errorf("--weight %q: want 1..1000", q.Get("weight"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := j.reg.SetWeight(ctx, uint32(w)); err != nil {
		return "", err
	}
	return fmt.Sprintf("weight %d registered; the demuxes apply it to new flows", w), nil
}

// weight asks a running joined gateway to change its registered weight.
func weight(args []string) error {
	var f cli.NodeFlags
	var w uint
	if err := f.ParseWith("weight", args, false, func(fs *flag.FlagSet) {
		fs.UintVar(&w, "weight", 0, "relative share of new flows, 1..1000")
	}); err != nil {
		return err
	}
	_, node, err := f.LoadAny()
	if err != nil {
		return err
	}
	if node.Lane == nil {
		return fmt.Errorf("node %q is a demux; weight is a joined gateway's", f.Node)
	}
	msg, err := admin.Do(node.Self.Status, "weight", url.Values{"weight": {strconv.FormatUint(uint64(w), 10)}})
	if err != nil {
		return err
	}
	fmt.Println(msg)
	return nil
}

// enrolkey prints a new enrolment key (an Ed25519 seed, base64).
func enrolkey(args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("enrolkey takes no arguments")
	}
	if fi, err := os.Stdout.Stat(); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o077 != 0 {
		fmt.Fprintln(os.Stderr, "warning: writing the enrolment key to a file others can read; run `umask 077` first or chmod 600 it")
	}
	seed := make([]byte, ed25519.SeedSize)
	if _, err := rand.Read(seed); err != nil {
		return err
	}
	fmt.Println(base64.StdEncoding.EncodeToString(seed))
	return nil
}

// enrolpub reads an enrolment key on stdin and prints its public key,
// for the demuxes' discovery.etcd.enrolment_public_key.
func enrolpub(args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("enrolpub takes no arguments; it reads the enrolment key on stdin")
	}
	b, err := io.ReadAll(io.LimitReader(os.Stdin, config.MaxSecretFile))
	if err != nil {
		return err
	}
	seed, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(seed) != ed25519.SeedSize {
		return errors.New("stdin: not an enrolment key (base64 of 32 bytes)")
	}
	fmt.Println(base64.StdEncoding.EncodeToString(ed25519.NewKeyFromSeed(seed).Public().(ed25519.PublicKey)))
	return nil
}
