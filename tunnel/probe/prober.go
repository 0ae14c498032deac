package probe

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/clusterpeer/clusterpeer/dataplane/geneveauth"
	"github.com/clusterpeer/clusterpeer/dataplane/packet"
	"github.com/clusterpeer/clusterpeer/dataplane/rxtime"
	"github.com/clusterpeer/clusterpeer/flowhash"
	"github.com/clusterpeer/clusterpeer/tunnel/keyring"
)

// Target is one lane as the demux probes it.
type Target struct {
	Lane flowhash.LaneID
	Near netip.AddrPort     // the local gateway's GENEVE address
	Far  netip.Addr         // the remote gateway's address: its reflector
	Seal *geneveauth.Sealer // seals the probe frames, as the lane's data (nil: geneve_auth off)
}

// Change is a lane's new state, as the prober reports it.
type Change struct {
	Lane   flowhash.LaneID
	Up     bool
	Reason string
	// When the lane went down: whether silence decided it (else a
	// signal: an ICMP error or a gateway's notice), and how long its
	// flows should wait before moving (Session.Settle).
	ByTimeout bool
	Settle    time.Duration
	Delivers  bool // the lane may still deliver what was sent into it (a planned stop, or judged on silence)
}

// ProberConfig configures a Prober.
type ProberConfig struct {
	Keys    *keyring.Ring // the demux's: its side's probe keys
	Side    string        // the demux's side: its probes are signed for it
	VNI     uint32
	Port    uint16       // replies come back to this port; reflectors listen on it
	Sources []netip.Addr // the demux's addresses: a probe socket is bound to each; one of the far gateway's family is the probe's source
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
	OnChange func(Change)
	// OnSettled is called (likewise) when a lane that went down answers a
	// probe sent after it did: the probe crossed the lane behind every
	// packet sent into it before, so nothing of those can still overtake
	// the flows' packets on their new lanes, and their wait may end.
	OnSettled func(flowhash.LaneID)
	Log       *slog.Logger
}

// ProberCounters count the prober's traffic.
type ProberCounters struct {
	Sent, Replies, SendErrors atomic.Uint64
	Signals                   [numSignals]atomic.Uint64
	Drops                     [numReplyDrops]atomic.Uint64
}

// Why a datagram on the probe port was not counted.
const (
	ReplyBadFormat   = iota // not a probe reply or notice
	ReplyBadMAC             // failed authentication
	ReplyStale              // another prober run, an unknown lane, a probe never sent or already answered
	ReplyBadSource          // not from a gateway of a lane: dropped before any MAC is computed
	ReplyICMPUnknown        // an ICMP error that quotes no probe this prober sent to that gateway lately
	ReplyICMPPolled         // an ICMP error quoting a data frame: not trusted alone, the lane was polled (Suspect)
	ReplyUnknownKey         // signed by a generation not accepted (past its grace, or another peering's)
	numReplyDrops
)

var replyDropNames = [numReplyDrops]string{"bad_format", "bad_mac", "stale", "bad_source", "icmp_unmatched", "icmp_data_polled", "unknown_key"}

// Which signal took a lane down.
const (
	SignalICMP     = iota // an ICMP error quoting a recent probe: the near gateway's process or host is gone
	SignalNotice          // a gateway's authenticated notice answering a recent probe
	SignalICMPData        // an ICMP error quoting a data frame the lane sealed lately (Gone)
	numSignals
)

var signalNames = [numSignals]string{"icmp", "notice", "icmp_data"}

// maxReadsPerWake bounds the datagrams read from one socket before the
// lanes are judged again, so that a flood on the probe port cannot hold
// judging up; what is left waits for the next wake-up.
const maxReadsPerWake = 256

// Prober probes every lane from the demux and keeps each lane's Session.
// One goroutine (Run) sends, receives and decides, so a reply waiting in
// the socket is always counted before a lane is declared dead.
//
// Besides replies it acts on two kinds of signal, so that the common
// faults are known in milliseconds instead of after the silence: ICMP
// errors (port or host unreachable, read from the sockets' error queues)
// that quote a probe this prober sent to that lane's gateway lately, and
// notices, in which a gateway answers a probe with why its lane cannot
// work (Diag). Both are checked against what was sent, so neither a
// forged ICMP error nor a replayed notice can take a lane down.
type Prober struct {
	cfg     ProberConfig
	socks   []probeSocket
	wake    int        // eventfd: Close wakes Run
	signer  *Signer    // only through sign and parse: sigMu
	sigMu   sync.Mutex // Run, the demux's ICMP watch (QuotedProbe) and Suspect all sign or check
	session uint64
	closed  atomic.Bool
	running atomic.Bool

	beforeJudging atomic.Pointer[func()] // see BeforeJudging
	done          chan struct{}
	once          sync.Once

	mu       sync.Mutex // guards lanes, sources and interval against Status and SetTargets
	lanes    map[flowhash.LaneID]*probeLane
	sources  map[netip.Addr]bool // gateway addresses replies and notices may come from
	interval time.Duration       // per lane, after MaxRate

	C ProberCounters

	buf, oob, frame []byte
	recv            rxtime.Receiver // drain's: one goroutine reads
	changes         []Change
	settled         []flowhash.LaneID
}

// probeSocket is one bound probe socket: replies to the probes sent from
// addr arrive on it.
type probeSocket struct {
	fd   int
	addr netip.Addr
}

type probeLane struct {
	t    Target
	src  netip.AddrPort
	sock int // index into socks
	s    *Session
	next time.Time
	// settleFrom: after the lane went down, the first probe sent since;
	// a reply to it or a later one ends the flows' wait (0: none).
	settleFrom uint64
}

// NewProber opens a probe socket on each of cfg.Sources at cfg.Port.
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
	if len(cfg.Sources) == 0 {
		return nil, errors.New("health: no demux address to probe from")
	}
	p := &Prober{
		cfg: cfg, signer: NewSigner(cfg.Keys), done: make(chan struct{}),
		lanes: map[flowhash.LaneID]*probeLane{}, interval: cfg.Params.Interval,
		buf: make([]byte, 2048), oob: make([]byte, 512),
		frame: make([]byte, geneveauth.HeaderLen+InnerLenV6),
	}
	var err error
	if p.wake, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC); err != nil {
		return nil, fmt.Errorf("health: eventfd: %w", err)
	}
	for _, a := range cfg.Sources {
		fd, err := openProbeSocket(netip.AddrPortFrom(a.Unmap(), cfg.Port))
		if err != nil {
			p.closeFds()
			return nil, err
		}
		p.socks = append(p.socks, probeSocket{fd: fd, addr: a.Unmap()})
	}
	var id [8]byte
	rand.Read(id[:])
	p.session = binary.BigEndian.Uint64(id[:])
	return p, nil
}

// openProbeSocket binds a UDP socket to addr with kernel receive times
// and the ICMP error queue on.
func openProbeSocket(addr netip.AddrPort) (int, error) {
	family, level, recverr := unix.AF_INET, unix.IPPROTO_IP, unix.IP_RECVERR
	if addr.Addr().Is6() {
		family, level, recverr = unix.AF_INET6, unix.IPPROTO_IPV6, unix.IPV6_RECVERR
	}
	sa := sockaddr(addr)
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("health: probe socket: %w", err)
	}
	set := func(level, opt, v int) {
		if err == nil {
			err = unix.SetsockoptInt(fd, level, opt, v)
		}
	}
	if family == unix.AF_INET6 {
		set(unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1)
	}
	set(level, recverr, 1)
	set(unix.SOL_SOCKET, unix.SO_RCVBUF, 1<<20)
	if err == nil {
		err = rxtime.Enable(fd)
	}
	if err == nil {
		if err = unix.Bind(fd, sa); err != nil {
			err = fmt.Errorf("bind %s: %w (each demux address must be one of this host's)", addr, err)
		}
	}
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("health: probe socket: %w", err)
	}
	return fd, nil
}

func (p *Prober) closeFds() {
	for _, s := range p.socks {
		unix.Close(s.fd)
	}
	p.socks = nil
	if p.wake > 0 {
		unix.Close(p.wake)
	}
}

// SetTargets sets the lanes to probe. A new lane starts down; a lane that
// stays keeps its session (its state and history) even if its addresses
// changed; a lane left out is forgotten.
func (p *Prober) SetTargets(ts []Target) error {
	now := time.Now()
	lanes := make(map[flowhash.LaneID]*probeLane, len(ts))
	sources := make(map[netip.Addr]bool, 2*len(ts))
	for _, t := range ts {
		i, err := p.socketFor(t.Far)
		if err != nil {
			return fmt.Errorf("lane %d: %w", t.Lane, err)
		}
		lanes[t.Lane] = &probeLane{t: t, src: netip.AddrPortFrom(p.socks[i].addr, p.cfg.Port), sock: i}
		sources[t.Far.Unmap()] = true
		sources[t.Near.Addr().Unmap()] = true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.interval = max(p.cfg.Params.Interval, time.Duration(len(ts))*time.Second/time.Duration(p.cfg.MaxRate))
	if p.interval > p.cfg.Params.Interval {
		p.cfg.Log.Warn("probe interval stretched to stay within the probe rate limit",
			"lanes", len(ts), "interval", p.interval, "max_rate", p.cfg.MaxRate)
	}
	ids := slices.Sorted(func(yield func(flowhash.LaneID) bool) {
		for id := range lanes {
			if !yield(id) {
				return
			}
		}
	})
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
	p.lanes, p.sources = lanes, sources
	return nil
}

// socketFor picks the socket whose address the far gateway answers to.
func (p *Prober) socketFor(far netip.Addr) (int, error) {
	for i, s := range p.socks {
		if s.addr.Is4() == far.Unmap().Is4() {
			return i, nil
		}
	}
	return 0, fmt.Errorf("no demux address of the family of %s to receive probe replies", far)
}

// Run probes until ctx ends or Close.
func (p *Prober) Run(ctx context.Context) {
	if p.closed.Load() || !p.running.CompareAndSwap(false, true) {
		return
	}
	defer close(p.done)
	defer p.closeFds()
	stop := context.AfterFunc(ctx, func() { p.signalClose() })
	defer stop()
	fds := make([]unix.PollFd, len(p.socks)+1)
	for i, s := range p.socks {
		fds[i] = unix.PollFd{Fd: int32(s.fd), Events: unix.POLLIN}
	}
	fds[len(p.socks)] = unix.PollFd{Fd: int32(p.wake), Events: unix.POLLIN}
	for !p.closed.Load() {
		if f := p.beforeJudging.Load(); f != nil {
			(*f)()
		}
		wake := p.tick(time.Now())
		ts := unix.NsecToTimespec(max(time.Until(wake), 0).Nanoseconds())
		if _, err := unix.Ppoll(fds, &ts, nil); err != nil && !errors.Is(err, unix.EINTR) {
			p.cfg.Log.Error("probe sockets: poll", "err", err)
			time.Sleep(p.interval)
		}
		var pokes [8]byte
		unix.Read(p.wake, pokes[:]) // reset (Fail or Close woke it)
		// Whatever arrived while this goroutine waited for a CPU counts
		// before any lane is judged (up to a bound per socket).
		for i := range p.socks {
			p.drain(i)
		}
	}
}

// Close stops Run and closes the sockets.
func (p *Prober) Close() error {
	p.signalClose()
	if p.running.Load() {
		<-p.done
	} else {
		p.once.Do(p.closeFds)
	}
	return nil
}

func (p *Prober) signalClose() {
	if p.closed.CompareAndSwap(false, true) {
		p.poke()
	}
}

// tick judges every lane, sends the probes that are due and returns when
// to look again.
func (p *Prober) tick(now time.Time) time.Time {
	p.mu.Lock()
	wake := now.Add(p.interval / 2)
	for id, l := range p.lanes {
		if l.s.Evaluate(now) {
			if l.s.Confirmed() {
				p.C.Signals[SignalICMP].Add(1)
			}
			p.changes = append(p.changes, p.change(id, l.s))
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
	p.mu.Unlock()
	p.report()
	return wake
}

func (p *Prober) change(id flowhash.LaneID, s *Session) Change {
	c := Change{Lane: id, Up: s.Up(), Reason: s.reason}
	if !c.Up {
		c.ByTimeout, c.Settle, c.Delivers = s.ByTimeout(), s.Settle(), s.delivers
	}
	return c
}

// report hands the changes found to OnChange, outside mu. After a lane
// went down (its flows now wait), it probes the lane at once: the reply,
// if the lane still delivers, says when the wait can end (OnSettled).
func (p *Prober) report() {
	p.mu.Lock()
	changes, settled := p.changes, p.settled
	p.changes, p.settled = nil, nil
	p.mu.Unlock()
	for _, c := range changes {
		if p.cfg.OnChange != nil {
			p.cfg.OnChange(c)
		}
		if c.Up || !c.Delivers {
			continue
		}
		p.mu.Lock()
		if l := p.lanes[c.Lane]; l != nil && !l.s.Up() {
			now := time.Now()
			l.settleFrom = l.s.seq + 1
			p.send(l, now)
			l.next = now.Add(p.interval)
		}
		p.mu.Unlock()
	}
	for _, id := range settled {
		if p.cfg.OnSettled != nil {
			p.cfg.OnSettled(id)
		}
	}
}

func (p *Prober) send(l *probeLane, now time.Time) {
	seq := l.s.Sent(now)
	var msg [MessageLen]byte
	p.sign(msg[:], Message{Kind: KindRequest, Lane: l.t.Lane, Side: p.cfg.Side, Session: p.session, Seq: seq, Sent: now.UnixNano()})
	hdr := packet.GeneveLen
	if l.t.Seal != nil {
		hdr = geneveauth.HeaderLen
	}
	n := PutInner(p.frame[hdr:], l.src, netip.AddrPortFrom(l.t.Far, p.cfg.Port), msg[:])
	proto := uint16(packet.ProtoIPv4)
	if l.src.Addr().Is6() {
		proto = packet.ProtoIPv6
	}
	frame := p.frame[:hdr+n]
	packet.PutGeneve(frame, p.cfg.VNI, proto, true)
	if l.t.Seal != nil {
		l.t.Seal.Seal(frame, l.t.Seal.Reserve(1))
	}
	if err := unix.Sendto(p.socks[l.sock].fd, frame, unix.MSG_DONTWAIT, sockaddr(l.t.Near)); err != nil {
		p.C.SendErrors.Add(1)
		return
	}
	p.C.Sent.Add(1)
}

// sign and parse use the prober's one Signer (it keeps HMAC state) from
// whichever goroutine: two at once corrupted it ("d.nx != 0" panics in
// sha256, seen when Suspect's poll and a quoted probe coincided).
func (p *Prober) sign(b []byte, m Message) {
	p.sigMu.Lock()
	p.signer.Put(b, m)
	p.sigMu.Unlock()
}

func (p *Prober) parse(b []byte) (Message, error) {
	p.sigMu.Lock()
	defer p.sigMu.Unlock()
	return p.signer.Parse(b, p.cfg.Side)
}

// SetKeys replaces the prober's keys (a reload that rotates the peering
// secret): the next probes are signed, and replies checked, with them.
func (p *Prober) SetKeys(r *keyring.Ring) {
	p.sigMu.Lock()
	p.signer.SetRing(r)
	p.sigMu.Unlock()
}

// KeyID returns the generation the prober signs with now.
func (p *Prober) KeyID() (uint8, bool) {
	p.sigMu.Lock()
	defer p.sigMu.Unlock()
	return p.signer.Signing()
}

func sockaddr(a netip.AddrPort) unix.Sockaddr {
	if a.Addr().Unmap().Is4() {
		return &unix.SockaddrInet4{Port: int(a.Port()), Addr: a.Addr().Unmap().As4()}
	}
	return &unix.SockaddrInet6{Port: int(a.Port()), Addr: a.Addr().As16()}
}

// drain reads what waits on socket i, without blocking: first its ICMP
// error queue, then up to maxReadsPerWake datagrams.
func (p *Prober) drain(i int) {
	fd := p.socks[i].fd
	for range maxReadsPerWake {
		n, oobn, to, err := p.recv.Recvmsg(fd, p.buf, p.oob, unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
		if err != nil {
			break
		}
		p.icmpError(p.buf[:n], p.oob[:oobn], to.Addr())
	}
	for range maxReadsPerWake {
		n, oobn, from, err := p.recv.Recvmsg(fd, p.buf, p.oob, unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EAGAIN) {
			return
		}
		if err != nil {
			continue // an ICMP error reported once more as the socket's error: the queue has it
		}
		now := time.Now()
		p.datagram(p.buf[:n], from.Addr(), monotonicRx(now, rxtime.Parse(p.oob[:oobn])), now)
	}
}

// monotonicRx turns the kernel's receive time (wall clock) into a time on
// now's monotonic clock, so that a round trip is monotonic receive minus
// monotonic send: a step of the wall clock between send and receive must
// not stretch (or shrink) it. Only the short wait between the kernel's
// receipt and now is taken from the wall clock; if the clock stepped
// within it, that wait is taken as nothing.
func monotonicRx(now, rxWall time.Time) time.Time {
	wait := now.Round(0).Sub(rxWall)
	if wait < 0 || wait > time.Second {
		wait = 0
	}
	return now.Add(-wait)
}

// datagram handles a reply or a notice from src.
func (p *Prober) datagram(b []byte, src netip.Addr, rx, now time.Time) {
	p.mu.Lock()
	known := p.sources[src]
	p.mu.Unlock()
	if !known {
		p.C.Drops[ReplyBadSource].Add(1)
		return
	}
	m, err := p.parse(b)
	switch {
	case errors.Is(err, ErrMAC):
		p.C.Drops[ReplyBadMAC].Add(1)
		return
	case errors.Is(err, ErrKey):
		p.C.Drops[ReplyUnknownKey].Add(1)
		return
	case err != nil || (m.Kind != KindReply && m.Kind != KindNotice):
		p.C.Drops[ReplyBadFormat].Add(1)
		return
	}
	ok := false
	if m.Session == p.session {
		p.mu.Lock()
		if l := p.lanes[m.Lane]; l != nil && (src == l.t.Far.Unmap() || src == l.t.Near.Addr().Unmap()) {
			if m.Kind == KindReply {
				ok = l.s.Reply(m.Seq, rx, now)
				if ok && l.settleFrom != 0 && m.Seq >= l.settleFrom {
					l.settleFrom = 0
					p.settled = append(p.settled, l.t.Lane)
				}
			} else if ok = l.s.Recent(m.Seq); ok {
				p.C.Signals[SignalNotice].Add(1)
				// A planned stop still delivers what was sent into the
				// lane; so may a link being taken down (packets already
				// queued on it can still leave: measured, 7 ms after the
				// report). A gone peer or device delivers nothing more.
				delivers := m.Diag == DiagAdminDown || m.Diag == DiagPathDown
				if l.s.Signal(now, m.Seq, fmt.Sprintf("gateway %s reports: %s", src, m.Diag), delivers) {
					if delivers {
						l.s.SettleLong()
					}
					p.changes = append(p.changes, p.change(l.t.Lane, l.s))
				}
			}
		}
		p.mu.Unlock()
	}
	if !ok {
		p.C.Drops[ReplyStale].Add(1)
		return
	}
	if m.Kind == KindReply {
		p.C.Replies.Add(1)
	}
}

// icmpError handles an entry of a socket's error queue: b is the payload
// of the datagram it concerns (a probe frame this prober sent, if it is
// genuine), oob holds the extended error, to its original destination.
func (p *Prober) icmpError(b, oob []byte, to netip.Addr) {
	ee, offender, ok := parseExtendedErr(oob)
	if !ok || !unreachable(ee) {
		return // a local error (e.g. message too long): nothing about the lane
	}
	p.QuotedProbe(b, to, offender, ee.Errno == uint32(unix.ECONNREFUSED))
}

// QuotedProbe acts on an ICMP port (port) or host unreachable from
// offender about a datagram to dst whose payload, as quoted, is b. It
// takes the lane down if b is a probe frame this prober sent to that
// lane's gateway lately (and, for port unreachable, the gateway's own
// host said so); anything else is counted and ignored. It reports
// whether b was such a probe.
func (p *Prober) QuotedProbe(b []byte, dst, offender netip.Addr, port bool) bool {
	m, ok := p.quotedProbe(b)
	matched := false
	if ok && m.Session == p.session {
		p.mu.Lock()
		if l := p.lanes[m.Lane]; l != nil && dst.Unmap() == l.t.Near.Addr().Unmap() && l.s.Recent(m.Seq) && (!port || offender == dst.Unmap()) {
			matched = true
			p.C.Signals[SignalICMP].Add(1)
			what := "host unreachable"
			if port {
				what = "port unreachable"
			}
			if l.s.Signal(time.Now(), m.Seq, fmt.Sprintf("ICMP %s from %s: gateway %s gone", what, offender, dst), false) {
				p.changes = append(p.changes, p.change(l.t.Lane, l.s))
			}
		}
		p.mu.Unlock()
	}
	if !matched {
		p.C.Drops[ReplyICMPUnknown].Add(1)
	}
	return matched
}

// Suspect acts on a signal that anyone able to forge the gateway's
// address could have sent: an ICMP error quoting one of the lane's data
// frames, whose inner packet may be the forger's own flow. (One quoting a
// probe is checked against the probe's session and sequence number,
// which no one else knows: QuotedProbe.) The lane is polled at once, and
// goes down only if its oldest unanswered probe waits the confirmation
// time (Session.ConfirmWait: 2-25 ms) with no reply to the poll; Run,
// which Suspect wakes, reports that.
func (p *Prober) Suspect(lane flowhash.LaneID, reason string) {
	p.mu.Lock()
	if l := p.lanes[lane]; l != nil {
		now := time.Now()
		if l.s.Suspect(now, reason) {
			p.C.Drops[ReplyICMPPolled].Add(1)
			p.send(l, now)
			l.next = now.Add(p.interval)
		}
	}
	p.mu.Unlock()
	p.poke()
}

// Gone takes lane down on a failure signal its caller checked: an ICMP
// error quoting a data frame whose tag says this demux sealed it lately
// (dataplane/geneveauth: Sealer.Sent). Run, which Gone wakes, reports
// the change.
func (p *Prober) Gone(lane flowhash.LaneID, reason string) {
	p.mu.Lock()
	if l := p.lanes[lane]; l != nil {
		p.C.Signals[SignalICMPData].Add(1)
		if l.s.Fail(time.Now(), reason, false) {
			p.changes = append(p.changes, p.change(l.t.Lane, l.s))
		}
	}
	p.mu.Unlock()
	p.poke()
}

// BeforeJudging has Run call f before every judgement of the lanes: f
// hands over failure signals that wait in other queues (the demux's ICMP
// watch), so that after a stall a signal that arrived first counts first,
// as the probe sockets' replies do. f may call Fail.
func (p *Prober) BeforeJudging(f func()) { p.beforeJudging.Store(&f) }

// poke wakes Run.
func (p *Prober) poke() {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	unix.Write(p.wake, one[:])
}

// quotedProbe finds the signed probe inside a quoted probe frame.
func (p *Prober) quotedProbe(b []byte) (Message, bool) {
	_, inner, err := packet.ParseGeneve(b)
	if err != nil {
		return Message{}, false
	}
	_, payload, ok := probePayload(inner)
	if !ok {
		return Message{}, false
	}
	m, err := p.parse(payload)
	if err != nil || m.Kind != KindRequest {
		return Message{}, false
	}
	return m, true
}

// parseExtendedErr reads the IP_RECVERR / IPV6_RECVERR control message:
// the extended error and the address of the node that sent the ICMP.
func parseExtendedErr(oob []byte) (unix.SockExtendedErr, netip.Addr, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return unix.SockExtendedErr{}, netip.Addr{}, false
	}
	for _, m := range msgs {
		if !(m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_RECVERR) &&
			!(m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_RECVERR) {
			continue
		}
		const eeLen = int(unsafe.Sizeof(unix.SockExtendedErr{}))
		if len(m.Data) < eeLen {
			continue
		}
		var ee unix.SockExtendedErr
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&ee)), eeLen), m.Data)
		var from netip.Addr
		if rest := m.Data[eeLen:]; len(rest) >= 8 {
			switch binary.NativeEndian.Uint16(rest[0:2]) {
			case unix.AF_INET:
				from = netip.AddrFrom4([4]byte(rest[4:8]))
			case unix.AF_INET6:
				if len(rest) >= 24 {
					from = netip.AddrFrom16([16]byte(rest[8:24])).Unmap()
				}
			}
		}
		return ee, from, true
	}
	return unix.SockExtendedErr{}, netip.Addr{}, false
}

// unreachable: an ICMP destination unreachable saying the port or host is
// gone (not, say, "fragmentation needed", which says nothing of a lane).
func unreachable(ee unix.SockExtendedErr) bool {
	switch ee.Origin {
	case unix.SO_EE_ORIGIN_ICMP:
		return ee.Type == 3 && (ee.Code == 1 || ee.Code == 3) // host, port unreachable
	case unix.SO_EE_ORIGIN_ICMP6:
		return ee.Type == 1 && (ee.Code == 3 || ee.Code == 4) // address, port unreachable
	}
	return false
}

func icmpName(ee unix.SockExtendedErr) string {
	if ee.Errno == uint32(unix.ECONNREFUSED) {
		return "port unreachable"
	}
	return "host unreachable"
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

// SignalCounts returns the signals acted on, by kind.
func (p *Prober) SignalCounts() map[string]uint64 {
	m := make(map[string]uint64, numSignals)
	for i, name := range signalNames {
		m[name] = p.C.Signals[i].Load()
	}
	return m
}
