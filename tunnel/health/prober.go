package health

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/clusterpeer/clusterpeer/dataplane/rxtime"
	"github.com/clusterpeer/clusterpeer/flowhash"
	"github.com/clusterpeer/clusterpeer/tunnel/geneve"
)

// Target is one lane as the demux probes it.
type Target struct {
	Lane flowhash.LaneID
	Near netip.AddrPort // the local gateway's GENEVE address
	Far  netip.Addr     // the remote gateway's address: its reflector
}

// ProberConfig configures a Prober.
type ProberConfig struct {
	Key     Key
	VNI     uint32
	Port    uint16       // replies come back to this port; reflectors listen on it
	Sources []netip.Addr // the demux's addresses; one of the far gateway's family is the probe's source
	Params  Params
	MaxRate int // probes per second over all lanes; the interval stretches to stay below
	// StartDelay holds back a new lane's first probe. Side b's demux waits
	// so that at a simultaneous start side a's gateways alone open the
	// WireGuard sessions: when both ends of a lane initiate at once, both
	// become responders, neither may send first, and the lane waits for
	// WireGuard's 5-second handshake retry.
	StartDelay time.Duration
	// OnChange is called (from the prober's goroutine, never concurrently)
	// after a lane's state changed.
	OnChange func(lane flowhash.LaneID, up bool, reason string)
	Log      *slog.Logger
}

// ProberCounters count the prober's traffic.
type ProberCounters struct {
	Sent, Replies, SendErrors atomic.Uint64
	Drops                     [numReplyDrops]atomic.Uint64
}

// Why a datagram on the probe port was not counted as a reply.
const (
	ReplyBadFormat = iota // not a probe reply
	ReplyBadMAC           // failed authentication
	ReplyStale            // another prober run, an unknown lane, a probe never sent or already answered
	numReplyDrops
)

var replyDropNames = [numReplyDrops]string{"bad_format", "bad_mac", "stale"}

// Prober probes every lane from the demux and keeps each lane's Session.
// One goroutine (Run) sends, receives and decides, so a reply waiting in
// the socket is always counted before a lane is declared dead.
type Prober struct {
	cfg     ProberConfig
	conn    *net.UDPConn
	raw     syscall.RawConn
	signer  *Signer
	session uint64
	start   time.Time

	mu       sync.Mutex // guards lanes and interval against Status and SetTargets
	lanes    map[flowhash.LaneID]*probeLane
	interval time.Duration // per lane, after MaxRate

	C ProberCounters

	buf, oob, frame []byte
	changes         []change
}

type probeLane struct {
	t    Target
	src  netip.AddrPort
	s    *Session
	next time.Time
}

type change struct {
	lane   flowhash.LaneID
	up     bool
	reason string
}

// NewProber opens the probe socket (UDP, both families, on cfg.Port).
func NewProber(cfg ProberConfig) (*Prober, error) {
	if cfg.Params.Interval <= 0 || cfg.Params.Multiplier < 1 || cfg.Params.UpAfter < 1 {
		return nil, errors.New("health: interval, multiplier and up-after must be positive")
	}
	if cfg.MaxRate <= 0 {
		cfg.MaxRate = 1000
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	conn, err := net.ListenUDP("udp", &net.UDPAddr{Port: int(cfg.Port)})
	if err != nil {
		return nil, fmt.Errorf("health: probe socket udp/%d: %w", cfg.Port, err)
	}
	raw, err := conn.SyscallConn()
	if err == nil {
		raw.Control(func(fd uintptr) { err = rxtime.Enable(int(fd)) })
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("health: probe socket: %w", err)
	}
	var id [8]byte
	rand.Read(id[:])
	return &Prober{
		cfg: cfg, conn: conn, raw: raw, signer: NewSigner(cfg.Key),
		session: binary.BigEndian.Uint64(id[:]), start: time.Now(),
		lanes: map[flowhash.LaneID]*probeLane{}, interval: cfg.Params.Interval,
		buf: make([]byte, 2048), oob: make([]byte, rxtime.OOBLen),
		frame: make([]byte, geneve.HeaderLen+InnerLenV6),
	}, nil
}

// SetTargets sets the lanes to probe. A new lane starts down; a lane that
// stays keeps its session (its state and history) even if its addresses
// changed; a lane left out is forgotten.
func (p *Prober) SetTargets(ts []Target) error {
	now := time.Now()
	lanes := make(map[flowhash.LaneID]*probeLane, len(ts))
	for _, t := range ts {
		src, err := p.source(t.Far)
		if err != nil {
			return fmt.Errorf("lane %d: %w", t.Lane, err)
		}
		lanes[t.Lane] = &probeLane{t: t, src: src}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.interval = max(p.cfg.Params.Interval, time.Duration(len(ts))*time.Second/time.Duration(p.cfg.MaxRate))
	if p.interval > p.cfg.Params.Interval {
		p.cfg.Log.Warn("probe interval stretched to stay within the probe rate limit",
			"lanes", len(ts), "interval", p.interval, "max_rate", p.cfg.MaxRate)
	}
	ids := make([]flowhash.LaneID, 0, len(lanes))
	for id := range lanes {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for i, id := range ids {
		l := lanes[id]
		if old := p.lanes[id]; old != nil {
			l.s, l.next = old.s, old.next
			l.s.p.Interval = p.interval
			continue
		}
		params := p.cfg.Params
		params.Interval = p.interval
		l.s = NewSession(params, now)
		// Spread the lanes over the interval: a steady trickle, no bursts.
		l.next = now.Add(p.cfg.StartDelay + p.interval*time.Duration(i)/time.Duration(len(ids)))
	}
	p.lanes = lanes
	return nil
}

// source picks the demux address the far gateway answers to.
func (p *Prober) source(far netip.Addr) (netip.AddrPort, error) {
	for _, a := range p.cfg.Sources {
		if a.Is4() == far.Is4() {
			return netip.AddrPortFrom(a, p.cfg.Port), nil
		}
	}
	return netip.AddrPort{}, fmt.Errorf("no demux address of the family of %s to receive probe replies", far)
}

// Run probes until ctx ends or Close.
func (p *Prober) Run(ctx context.Context) {
	stop := context.AfterFunc(ctx, func() { p.conn.Close() })
	defer stop()
	for {
		wake := p.tick(time.Now())
		p.conn.SetReadDeadline(wake)
		// Handle replies as they come; the deadline ends the wait.
		err := p.raw.Read(func(fd uintptr) bool { p.drain(int(fd)); return false })
		if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
			return
		}
		// Whatever arrived while this goroutine waited for a CPU counts
		// before any lane is judged.
		p.conn.SetReadDeadline(time.Time{})
		if err := p.raw.Read(func(fd uintptr) bool { p.drain(int(fd)); return true }); err != nil {
			return
		}
	}
}

// Close closes the socket (Run returns).
func (p *Prober) Close() error { return p.conn.Close() }

// tick judges every lane, sends the probes that are due and returns when
// to look again.
func (p *Prober) tick(now time.Time) time.Time {
	p.mu.Lock()
	wake := now.Add(p.interval / 2)
	for id, l := range p.lanes {
		if l.s.Evaluate(now) {
			p.changes = append(p.changes, change{id, l.s.Up(), l.s.reason})
		}
		if !now.Before(l.next) {
			p.send(l, now)
			// 90-100% of the interval, as BFD jitters, so lanes never
			// synchronise into bursts.
			jitter := time.Duration(uint64(now.UnixNano())%10) * p.interval / 100
			l.next = now.Add(p.interval - jitter)
		}
		if l.next.Before(wake) {
			wake = l.next
		}
		// Judge a silent lane the moment its detection time runs out.
		if d := l.s.Deadline(); !d.IsZero() && d.After(now) && d.Before(wake) {
			wake = d
		}
	}
	changes := p.changes
	p.changes = p.changes[:0]
	p.mu.Unlock()
	for _, c := range changes {
		if p.cfg.OnChange != nil {
			p.cfg.OnChange(c.lane, c.up, c.reason)
		}
	}
	return wake
}

func (p *Prober) send(l *probeLane, now time.Time) {
	seq := l.s.Sent(now)
	var msg [MessageLen]byte
	p.signer.Put(msg[:], Message{Kind: KindRequest, Lane: l.t.Lane, Session: p.session, Seq: seq, Sent: now.UnixNano()})
	inner := p.frame[geneve.HeaderLen:]
	n := PutInner(inner, l.src, netip.AddrPortFrom(l.t.Far, p.cfg.Port), msg[:])
	proto := uint16(geneve.ProtoIPv4)
	if l.src.Addr().Is6() {
		proto = geneve.ProtoIPv6
	}
	geneve.Put(p.frame, p.cfg.VNI, proto, true)
	if _, err := p.conn.WriteToUDPAddrPort(p.frame[:geneve.HeaderLen+n], l.t.Near); err != nil {
		p.C.SendErrors.Add(1)
		return
	}
	p.C.Sent.Add(1)
}

// drain reads every datagram waiting, without blocking. Called with the
// socket's fd from Run; takes mu per reply.
func (p *Prober) drain(fd int) {
	for {
		n, _, rx, err := rxtime.Recv(fd, p.buf, p.oob, unix.MSG_DONTWAIT)
		if err != nil {
			return
		}
		m, err := p.signer.Parse(p.buf[:n])
		switch {
		case errors.Is(err, ErrMAC):
			p.C.Drops[ReplyBadMAC].Add(1)
			continue
		case err != nil || m.Kind != KindReply:
			p.C.Drops[ReplyBadFormat].Add(1)
			continue
		}
		ok := false
		if m.Session == p.session {
			p.mu.Lock()
			if l := p.lanes[m.Lane]; l != nil {
				ok = l.s.Reply(m.Seq, rx, time.Now())
			}
			p.mu.Unlock()
		}
		if !ok {
			p.C.Drops[ReplyStale].Add(1)
			continue
		}
		p.C.Replies.Add(1)
	}
}

// LaneHealth is one lane's probe state.
type LaneHealth struct {
	Lane flowhash.LaneID `json:"lane"`
	SessionStatus
}

// Status returns every lane's probe state, by lane.
func (p *Prober) Status() []LaneHealth {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]LaneHealth, 0, len(p.lanes))
	for id, l := range p.lanes {
		out = append(out, LaneHealth{Lane: id, SessionStatus: l.s.Status(now)})
	}
	slices.SortFunc(out, func(a, b LaneHealth) int { return int(a.Lane) - int(b.Lane) })
	return out
}

// Interval is the probe interval per lane in effect (after MaxRate).
func (p *Prober) Interval() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.interval
}

// DropCounts returns the reply drops by reason.
func (p *Prober) DropCounts() map[string]uint64 {
	m := make(map[string]uint64, numReplyDrops)
	for i, name := range replyDropNames {
		m[name] = p.C.Drops[i].Load()
	}
	return m
}
