// Package gateway runs one end of a lane in a gateway: GENEVE from the local
// demux in, WireGuard (golang.zx2c4.com/wireguard's device, embedded) to
// the paired gateway, decrypted packets out to the local network through a
// kernel TUN.
//
//	demux --GENEVE/UDP--> Device.Read --> WireGuard encrypt --> conn.Bind --> peer
//	peer --> conn.Bind --> WireGuard decrypt --> Device.Write --> kernel TUN --> hosts
//
// The WireGuard side is the stock protocol: the far end may be any
// WireGuard peer (Debian's wireguard-go, the kernel module). The device's
// UAPI socket is opened as wireguard-go's own is, so `wg show <tun>` works.
package gateway

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"

	"github.com/clusterpeer/clusterpeer/dataplane/geneveauth"
	"github.com/clusterpeer/clusterpeer/dataplane/tunlink"
	"github.com/clusterpeer/clusterpeer/tunnel/wgkey"
)

// Config is one gateway's end of a lane.
type Config struct {
	Tun          string // kernel TUN delivering to the local network; also the UAPI name
	MTU          int
	Geneve       netip.AddrPort // the GENEVE socket's address: its demuxes send here, and only here
	Ingress      Ingress
	PrivateKey   wgkey.Key
	ListenPort   uint16
	Peer         wgkey.Key
	PeerEndpoint netip.AddrPort
	Remote       []netip.Prefix // the far network: allowed IPs, routed into the TUN
	UAPI         bool           // open /var/run/wireguard/<tun>.sock for `wg`
	// OnPeer is told when ICMP errors say the peer gateway is gone (what
	// they said), and with "" when the peer is heard again; OnPath when
	// the underlay route or link towards the peer goes ("" when back).
	// Nil: not watched.
	OnPeer, OnPath func(missing string)
	// AwaitPeer > 0: when the lane gets a new peer (at start, or a new
	// key through SetPeer), this end sends nothing until a WireGuard
	// packet arrives (the peer's handshake), at most AwaitPeer, so that the peer's handshake is the
	// only one. Two ends that initiate at the same moment can each take
	// the other's initiation before the answer to their own, and then
	// neither may send until WireGuard's 5-second retry (seen when a
	// replacement instance and its peer both had traffic at once). One
	// side of a peering waits (b), the other does not.
	AwaitPeer time.Duration
	Log       *slog.Logger
}

// Lane is a running gateway.
type Lane struct {
	dev  *device.Device
	tdev *Device
	wb   *watchedBind
	uapi net.Listener

	mu     sync.Mutex // over the peer's part: cfg, icmp, watch
	cfg    Config
	icmp   *icmpWatch
	watch  chan struct{} // closed to stop the path watch
	closed bool

	// Peer's scratch: it runs every 250 ms (the handshake watch), and
	// reading the device anew each time was a gateway's steadiest
	// garbage.
	peerMu  sync.Mutex
	peerBuf bytes.Buffer
	peerWas PeerStatus
}

// Start creates the TUN, binds the GENEVE and WireGuard ports and brings
// the lane up. Close undoes all of it.
func Start(cfg Config) (l *Lane, err error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	// The TUN comes before the sockets. A killed process's files are
	// released from the highest descriptor down (the kernel runs the
	// closes as task work, newest first), and closing a TUN unregisters a
	// network device, which takes tens of milliseconds: with the sockets'
	// descriptors above it, they close first, so the demux's next frames
	// (and the peer's WireGuard packets) draw ICMP port unreachable at
	// once, which is how they learn the gateway is gone. Nothing else a
	// gateway holds is slow to close (listenUAPI). Measured here
	// (docs/health.md): SIGKILL to the GENEVE socket closed in 3.3-5.6 ms
	// idle; 3-22 ms while wireguard-go's UAPI listener held an inotify
	// descriptor above them; 15-26 ms with the TUN above them too.
	kernels, err := tunlink.Create(cfg.Tun, 1, cfg.MTU)
	if err != nil {
		return nil, fmt.Errorf("create tun %s: %w", cfg.Tun, err)
	}
	kernel := kernels[0]
	gsock, err := listenGeneve(cfg.Geneve, max(kernel.BatchSize(), conn.IdealBatchSize))
	if err != nil {
		kernel.Close()
		return nil, err
	}
	defer func() {
		if err != nil && kernel != nil {
			gsock.Close()
			kernel.Close()
		}
	}()
	wb := &watchedBind{Bind: newLaneBind()}
	wb.peer.Store(&cfg.PeerEndpoint)
	if err := tunlink.Up(cfg.Tun, cfg.Remote); err != nil {
		return nil, err
	}
	tdev := newDevice(kernel, []geneveReceive{gsock.receive}, gsock.Close, cfg.Ingress, cfg.MTU, cfg.Log)
	kernel = nil // tdev owns it now
	logger := &device.Logger{
		Verbosef: func(format string, args ...any) { cfg.Log.Debug(fmt.Sprintf(format, args...)) },
		Errorf:   func(format string, args ...any) { cfg.Log.Error(fmt.Sprintf(format, args...)) },
	}
	if cfg.OnPeer != nil {
		wb.onHeard = func() { cfg.OnPeer("") }
	}
	wb.heardAwaited = func() { tdev.hold(0) }
	if cfg.Peer != (wgkey.Key{}) {
		awaitPeer(wb, tdev, cfg.AwaitPeer)
	}
	dev := device.NewDevice(tdev, wb, logger)
	l = &Lane{cfg: cfg, dev: dev, tdev: tdev, wb: wb, watch: make(chan struct{})}
	if err := dev.IpcSet(cfg.uapiConfig()); err != nil {
		dev.Close()
		return nil, fmt.Errorf("configure wireguard: %w", err)
	}
	if err := dev.Up(); err != nil {
		dev.Close()
		return nil, fmt.Errorf("wireguard up: %w", err)
	}
	if cfg.UAPI {
		// `wg show` is a window on the lane, not part of it: a gateway
		// that may not write /var/run/wireguard (a non-root one whose
		// unit lacks RuntimeDirectory=wireguard) carries traffic without.
		if err := l.listenUAPI(); err != nil {
			cfg.Log.Warn("`wg show` will not see this lane (`tunnel show` does)", "err", err)
		}
	}
	if err := l.watchPeer(); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// watchPeer starts the ICMP and path watches towards the peer's endpoint
// (none while the lane has no peer yet). Called with mu held, or before
// the lane is shared.
func (l *Lane) watchPeer() error {
	cfg := &l.cfg
	if !cfg.PeerEndpoint.IsValid() {
		return nil
	}
	if cfg.OnPeer != nil {
		// Without it the far demux learns of a dead peer from the
		// probes' silence alone: slower, not wrong.
		var err error
		if l.icmp, err = startICMPWatch(l.wb, cfg.ListenPort, cfg.OnPeer); err != nil {
			cfg.Log.Warn("peer failure signals off; a dead peer is noticed by the probes' silence only", "err", err)
		}
	}
	if cfg.OnPath != nil {
		if err := watchPath(cfg.PeerEndpoint.Addr(), l.watch, cfg.OnPath); err != nil {
			return err
		}
	}
	return nil
}

// SetPeer makes another gateway the lane's far end, live: its WireGuard
// public key and endpoint, and the address its demux probes through the
// lane (probe). The same key with a new endpoint keeps the session (as a
// roaming WireGuard peer does); a new key replaces the peer, and the two
// SetAuth changes whose sealed GENEVE frames the lane takes in
// (Ingress.Auth).
func (l *Lane) SetAuth(o *geneveauth.Opener) { l.tdev.SetAuth(o) }

// handshake afresh.
func (l *Lane) SetPeer(key wgkey.Key, endpoint, probe netip.AddrPort) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errors.New("lane closed")
	}
	old := l.cfg
	l.cfg.Peer, l.cfg.PeerEndpoint = key, endpoint
	if key != old.Peer {
		awaitPeer(l.wb, l.tdev, l.cfg.AwaitPeer) // before WireGuard has the peer to initiate to
	}
	var uapi string
	if key == old.Peer {
		uapi = fmt.Sprintf("public_key=%s\nendpoint=%s\n", key.UAPIHex(), endpoint)
	} else {
		uapi = l.cfg.peerConfig(true)
	}
	if err := l.dev.IpcSet(uapi); err != nil {
		l.cfg = old
		l.tdev.hold(0)
		l.wb.awaiting.Store(false)
		return fmt.Errorf("set wireguard peer: %w", err)
	}
	l.tdev.SetProbe(probe)
	l.wb.peer.Store(&endpoint)
	if l.wb.down.Swap(false) && l.cfg.OnPeer != nil {
		l.cfg.OnPeer("") // what ICMP errors said of the old peer is not said of this one
	}
	if endpoint.Addr() == old.PeerEndpoint.Addr() && old.PeerEndpoint.IsValid() {
		return nil
	}
	close(l.watch)
	l.watch = make(chan struct{})
	if l.icmp != nil {
		l.icmp.Close()
		l.icmp = nil
	}
	return l.watchPeer()
}

// awaitPeer holds d's sends until wb hears from the peer, at most dur.
func awaitPeer(wb *watchedBind, d *Device, dur time.Duration) {
	if dur <= 0 {
		return
	}
	d.hold(dur)
	wb.awaiting.Store(true)
}

// uapiConfig is the device's configuration in wireguard-go's UAPI form.
// It carries the private key, so it is never logged.
// A lane without a peer yet (a joining gateway whose far end has not
// registered) has none in it.
func (c *Config) uapiConfig() string {
	return fmt.Sprintf("private_key=%s\nlisten_port=%d\n", c.PrivateKey.UAPIHex(), c.ListenPort) + c.peerConfig(true)
}

// peerConfig is the peer's part of the UAPI configuration; replace:
// the peer replaces any other.
func (c *Config) peerConfig(replace bool) string {
	var b strings.Builder
	if replace {
		b.WriteString("replace_peers=true\n")
	}
	if c.Peer == (wgkey.Key{}) {
		return b.String()
	}
	fmt.Fprintf(&b, "public_key=%s\n", c.Peer.UAPIHex())
	if c.PeerEndpoint.IsValid() {
		fmt.Fprintf(&b, "endpoint=%s\n", c.PeerEndpoint)
	}
	b.WriteString("replace_allowed_ips=true\n")
	for _, p := range c.Remote {
		fmt.Fprintf(&b, "allowed_ip=%s\n", p)
	}
	return b.String()
}

// listenUAPI answers the `wg` tool on the lane's socket
// (/var/run/wireguard/TUN.sock), removed again when the lane closes. Not
// through ipc.UAPIListen: that one also watches the file with inotify
// (to end a wg-quick device whose socket someone deleted), and a dead
// process's inotify descriptor takes an SRCU grace period to close, which
// held the sockets opened after it (Start).
func (l *Lane) listenUAPI() error {
	f, err := ipc.UAPIOpen(l.cfg.Tun)
	if err != nil {
		return fmt.Errorf("uapi socket for %s: %w", l.cfg.Tun, err)
	}
	defer f.Close()
	ln, err := net.FileListener(f)
	if err != nil {
		return fmt.Errorf("uapi listen %s: %w", l.cfg.Tun, err)
	}
	if ul, ok := ln.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(true)
	}
	l.uapi = ln
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go l.dev.IpcHandle(c)
		}
	}()
	return nil
}

// Close stops the lane and removes its TUN (and with it the routes).
func (l *Lane) Close() {
	l.mu.Lock()
	l.closed = true
	close(l.watch)
	if l.icmp != nil {
		l.icmp.Close()
	}
	l.mu.Unlock()
	if l.uapi != nil {
		l.uapi.Close()
		// wireguard-go's listener does not unlink its socket; `wg show`
		// would list a dead interface.
		os.Remove("/var/run/wireguard/" + l.cfg.Tun + ".sock")
	}
	l.dev.Close() // closes the Device, hence the TUN and GENEVE bind
}

// Wait returns a channel closed when the device has stopped.
func (l *Lane) Wait() <-chan struct{} { return l.dev.Wait() }

// PeerStatus is what WireGuard knows of the peer.
type PeerStatus struct {
	PublicKey     string    `json:"public_key"`
	Endpoint      string    `json:"endpoint"`
	LastHandshake time.Time `json:"last_handshake"`
	RxBytes       uint64    `json:"rx_bytes"`
	TxBytes       uint64    `json:"tx_bytes"`
}

// Peer reads the peer's state from the device (public data only).
func (l *Lane) Peer() (PeerStatus, error) {
	l.peerMu.Lock()
	defer l.peerMu.Unlock()
	l.peerBuf.Reset()
	if err := l.dev.IpcGetOperation(&l.peerBuf); err != nil {
		return PeerStatus{}, err
	}
	b := l.peerBuf.Bytes()
	p, err := parsePeer(b, l.peerWas)
	clear(b) // the answer holds the private key; it does not stay in the heap
	if err == nil {
		l.peerWas = p
	}
	return p, err
}

// parsePeer reads the first peer of a UAPI "get" answer; the private key
// line is skipped, never kept. An endpoint equal to was's is was's, so
// that an unchanged one costs no allocation.
func parsePeer(b []byte, was PeerStatus) (PeerStatus, error) {
	var p PeerStatus
	var sec, nsec int64
	inPeer := false
	for len(b) > 0 {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte("\n"))
		k, v, ok := bytes.Cut(line, []byte("="))
		if !ok {
			continue
		}
		switch string(k) {
		case "public_key":
			if inPeer {
				return p, nil // only one peer
			}
			inPeer = true
			var key wgkey.Key
			if n, err := hex.Decode(key[:], v); err == nil && n == len(key) {
				p.PublicKey = key.Base64()
			}
		case "endpoint":
			p.Endpoint = was.Endpoint
			if string(v) != was.Endpoint {
				p.Endpoint = string(v)
			}
		case "last_handshake_time_sec":
			sec, _ = strconv.ParseInt(string(v), 10, 64)
		case "last_handshake_time_nsec":
			nsec, _ = strconv.ParseInt(string(v), 10, 64)
		case "rx_bytes":
			p.RxBytes, _ = strconv.ParseUint(string(v), 10, 64)
		case "tx_bytes":
			p.TxBytes, _ = strconv.ParseUint(string(v), 10, 64)
		}
	}
	if !inPeer {
		return p, errors.New("wireguard device has no peer")
	}
	if sec != 0 || nsec != 0 {
		p.LastHandshake = time.Unix(sec, nsec)
	}
	return p, nil
}

// Counters returns the gateway's packet counts.
func (l *Lane) Counters() *DeviceCounters { return &l.tdev.C }
