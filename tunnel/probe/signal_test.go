package probe

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/clusterpeer/clusterpeer/dataplane/packet"
	"github.com/clusterpeer/clusterpeer/flowhash"
	"github.com/clusterpeer/clusterpeer/tunnel/keyring"
)

// changes records a prober's Change reports.
type changes struct {
	mu  sync.Mutex
	got []Change
	ch  chan struct{}
}

func (c *changes) add(x Change) {
	c.mu.Lock()
	c.got = append(c.got, x)
	c.mu.Unlock()
	select {
	case c.ch <- struct{}{}:
	default:
	}
}

// wait returns the first change of lane to up, waiting up to limit.
func (c *changes) wait(t *testing.T, lane flowhash.LaneID, up bool, limit time.Duration) (Change, time.Duration) {
	t.Helper()
	start := time.Now()
	for {
		c.mu.Lock()
		for i, g := range c.got {
			if g.Lane == lane && g.Up == up {
				c.got = append(c.got[:i:i], c.got[i+1:]...)
				c.mu.Unlock()
				return g, time.Since(start)
			}
		}
		c.mu.Unlock()
		select {
		case <-c.ch:
		case <-time.After(limit - time.Since(start)):
			t.Fatalf("lane %d not up=%v within %v (changes %+v)", lane, up, limit, c.got)
		}
	}
}

// signalRig is one lane over loopback (relay + reflector) probed with the
// default timers, so that only a signal can take it down quickly.
type signalRig struct {
	p       *Prober
	rf      *Reflector
	relay   *relay
	ch      *changes
	settled chan flowhash.LaneID
}

func newSignalRig(t *testing.T) *signalRig {
	key := testKey(1)
	port := freePort(t)
	r := &signalRig{ch: &changes{ch: make(chan struct{}, 1)}, settled: make(chan flowhash.LaneID, 4)}
	var err error
	r.p, err = NewProber(ProberConfig{Keys: key, VNI: 7, Port: port, Sources: []netip.Addr{netip.MustParseAddr("127.0.0.1")},
		Params: DefaultParams, OnChange: r.ch.add, OnSettled: func(l flowhash.LaneID) { r.settled <- l }})
	if err != nil {
		t.Fatal(err)
	}
	if r.rf, err = NewReflector(netip.MustParseAddrPort("127.0.0.1:0"), 1, "", "", key, "lo", nil); err != nil {
		t.Fatal(err)
	}
	go r.rf.Run()
	t.Cleanup(func() { r.rf.Close() })
	far := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), port)
	r.relay = newRelay(t, far, r.rf.conn.LocalAddr().(*net.UDPAddr).AddrPort())
	if err := r.p.SetTargets([]Target{{Lane: 1, Near: r.relay.addr(), Far: far.Addr()}}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.p.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	r.ch.wait(t, 1, true, 2*time.Second)
	return r
}

// TestICMPPortUnreachableTakesLaneDown: the near gateway's port closes
// (its process died): the kernel's ICMP port unreachable, quoting the
// next probe, takes the lane down long before the silence would.
func TestICMPPortUnreachableTakesLaneDown(t *testing.T) {
	r := newSignalRig(t)
	r.relay.conn.Close()
	c, took := r.ch.wait(t, 1, false, 2*time.Second)
	if c.ByTimeout || !strings.Contains(c.Reason, "port unreachable") {
		t.Errorf("down by %+v, want the ICMP signal", c)
	}
	if took >= DefaultParams.Detect() {
		t.Errorf("down after %v, no faster than the %v of silence", took, DefaultParams.Detect())
	}
	if c.Settle < time.Millisecond || c.Settle > 50*time.Millisecond {
		t.Errorf("settle %v, want 1-50 ms", c.Settle)
	}
	if n := r.p.C.Signals[SignalICMP].Load(); n == 0 {
		t.Error("no ICMP signal counted")
	}
	t.Logf("down %v after the port closed: %s", took, c.Reason)
}

// TestNoticeTakesLaneDownAndBack: the gateway says it is stopping; the
// prober takes the lane down on its notice, and back up once it answers.
func TestNoticeTakesLaneDownAndBack(t *testing.T) {
	r := newSignalRig(t)
	r.rf.SetCondition(DiagAdminDown)
	c, took := r.ch.wait(t, 1, false, 2*time.Second)
	if c.ByTimeout || !strings.Contains(c.Reason, "administratively down") {
		t.Errorf("down by %+v, want the gateway's notice", c)
	}
	if took >= DefaultParams.Detect() {
		t.Errorf("down after %v, no faster than the silence", took)
	}
	// A stopping gateway still forwards: its flows wait for a reply
	// through the lane, at most the detection time, however slow the
	// round trip was before.
	if !c.Delivers || c.Settle != DefaultParams.Detect() {
		t.Errorf("planned stop: delivers %v, settle %v; want true, %v", c.Delivers, c.Settle, DefaultParams.Detect())
	}
	r.rf.SetCondition(DiagNone)
	r.ch.wait(t, 1, true, 2*time.Second)
	if r.rf.C.Notices.Load() == 0 || r.p.C.Signals[SignalNotice].Load() == 0 {
		t.Errorf("notices sent %d, acted on %d", r.rf.C.Notices.Load(), r.p.C.Signals[SignalNotice].Load())
	}
}

// extendedErr builds the control message of an ICMP error as the kernel
// queues it.
func extendedErr(ee unix.SockExtendedErr, offender netip.Addr) []byte {
	const eeLen = int(unsafe.Sizeof(unix.SockExtendedErr{}))
	data := make([]byte, eeLen+16)
	copy(data, unsafe.Slice((*byte)(unsafe.Pointer(&ee)), eeLen))
	binary.NativeEndian.PutUint16(data[eeLen:], unix.AF_INET)
	a := offender.As4()
	copy(data[eeLen+4:], a[:])
	b := make([]byte, unix.CmsgSpace(len(data)))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = unix.IPPROTO_IP, unix.IP_RECVERR
	h.SetLen(unix.CmsgLen(len(data)))
	copy(b[unix.CmsgLen(0):], data)
	return b
}

// TestICMPErrorsMustQuoteARecentProbe: ICMP errors that do not quote a
// probe this prober sent to that gateway lately (forged, an unknown
// sequence, from before the lane came up, to another address) are
// ignored and counted; only a genuine one takes the lane down.
func TestICMPErrorsMustQuoteARecentProbe(t *testing.T) {
	key := testKey(1)
	p, err := NewProber(ProberConfig{Keys: key, VNI: 7, Port: freePort(t), Sources: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Params: fastParams})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	near := netip.MustParseAddrPort("127.0.0.7:6081")
	if err := p.SetTargets([]Target{{Lane: 1, Near: near, Far: netip.MustParseAddr("127.0.0.8")}}); err != nil {
		t.Fatal(err)
	}
	l := p.lanes[1]
	now := time.Now()
	stale := l.s.Sent(now) // sent before the lane came up
	for range 3 {
		seq := l.s.Sent(now)
		l.s.Reply(seq, now, now)
	}
	now = now.Add(time.Millisecond)
	if !l.s.Evaluate(now) || !l.s.Up() {
		t.Fatal("lane not up")
	}
	recent := l.s.Sent(now.Add(time.Millisecond))
	frame := func(k *keyring.Ring, m Message) []byte {
		var msg [MessageLen]byte
		NewSigner(k).Put(msg[:], m)
		b := make([]byte, packet.GeneveLen+InnerLenV4)
		n := PutInner(b[packet.GeneveLen:], netip.MustParseAddrPort("127.0.0.1:6082"), netip.MustParseAddrPort("127.0.0.8:6082"), msg[:])
		packet.PutGeneve(b, 7, packet.ProtoIPv4, true)
		return b[:packet.GeneveLen+n]
	}
	portUnreach := extendedErr(unix.SockExtendedErr{Errno: uint32(unix.ECONNREFUSED), Origin: unix.SO_EE_ORIGIN_ICMP, Type: 3, Code: 3}, near.Addr())
	to := sockaddr(near)
	probe := Message{Kind: KindRequest, Lane: 1, Session: p.session, Seq: recent}
	for _, c := range []struct {
		name  string
		b     []byte
		oob   []byte
		to    unix.Sockaddr
		count bool // counted as unmatched
	}{
		{"forged (another key)", frame(testKey(9), probe), portUnreach, to, true},
		{"another prober's session", frame(key, Message{Kind: KindRequest, Lane: 1, Session: p.session + 1, Seq: recent}), portUnreach, to, true},
		{"a sequence never sent", frame(key, Message{Kind: KindRequest, Lane: 1, Session: p.session, Seq: recent + 5}), portUnreach, to, true},
		{"a probe from before the lane came up", frame(key, Message{Kind: KindRequest, Lane: 1, Session: p.session, Seq: stale}), portUnreach, to, true},
		{"quoting a datagram to another address", frame(key, probe), portUnreach, sockaddr(netip.MustParseAddrPort("127.0.0.9:6081")), true},
		{"port unreachable from a third party", frame(key, probe),
			extendedErr(unix.SockExtendedErr{Errno: uint32(unix.ECONNREFUSED), Origin: unix.SO_EE_ORIGIN_ICMP, Type: 3, Code: 3}, netip.MustParseAddr("127.0.0.66")), to, true},
		{"truncated quote", frame(key, probe)[:40], portUnreach, to, true},
		{"fragmentation needed (not unreachable)", frame(key, probe),
			extendedErr(unix.SockExtendedErr{Errno: uint32(unix.EMSGSIZE), Origin: unix.SO_EE_ORIGIN_ICMP, Type: 3, Code: 4}, near.Addr()), to, false},
	} {
		before := p.C.Drops[ReplyICMPUnknown].Load()
		p.icmpError(c.b, c.oob, addrOf(c.to))
		if !l.s.Up() {
			t.Fatalf("%s: took the lane down", c.name)
		}
		if got := p.C.Drops[ReplyICMPUnknown].Load() - before; got != map[bool]uint64{true: 1, false: 0}[c.count] {
			t.Errorf("%s: counted %d as unmatched", c.name, got)
		}
	}
	p.icmpError(frame(key, probe), portUnreach, addrOf(to))
	if l.s.Up() || l.s.ByTimeout() || p.C.Signals[SignalICMP].Load() != 1 {
		t.Errorf("a genuine ICMP port unreachable: up %v, signals %v", l.s.Up(), p.SignalCounts())
	}
}

// TestNoticesMustAnswerARecentProbe: a notice is a signal only for a
// probe of this prober's lane's current life, from that lane's gateway.
func TestNoticesMustAnswerARecentProbe(t *testing.T) {
	key := testKey(1)
	p, err := NewProber(ProberConfig{Keys: key, Port: freePort(t), Sources: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Params: fastParams})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	near, far, other := netip.MustParseAddrPort("127.0.0.7:6081"), netip.MustParseAddr("127.0.0.8"), netip.MustParseAddr("127.0.0.9")
	p.SetTargets([]Target{{Lane: 1, Near: near, Far: far}, {Lane: 2, Near: netip.MustParseAddrPort("127.0.0.9:6081"), Far: netip.MustParseAddr("127.0.0.10")}})
	l := p.lanes[1]
	now := time.Now()
	stale := l.s.Sent(now)
	for range 3 {
		l.s.Reply(l.s.Sent(now), now, now)
	}
	l.s.Evaluate(now.Add(time.Millisecond))
	recent := l.s.Sent(now.Add(2 * time.Millisecond))
	notice := func(m Message) []byte {
		b := make([]byte, MessageLen)
		m.Kind, m.Diag = KindNotice, DiagAdminDown
		NewSigner(key).Put(b, m)
		return b
	}
	for _, c := range []struct {
		name string
		m    Message
		from netip.Addr
	}{
		{"a replayed notice from before the lane came up", Message{Lane: 1, Session: p.session, Seq: stale}, near.Addr()},
		{"a sequence never sent", Message{Lane: 1, Session: p.session, Seq: recent + 1}, near.Addr()},
		{"another lane's gateway", Message{Lane: 1, Session: p.session, Seq: recent}, other},
	} {
		p.datagram(notice(c.m), c.from, now, now)
		if !l.s.Up() {
			t.Fatalf("%s: took the lane down", c.name)
		}
	}
	if n := p.C.Drops[ReplyStale].Load(); n != 3 {
		t.Errorf("stale notices counted %d, want 3", n)
	}
	p.datagram(notice(Message{Lane: 1, Session: p.session, Seq: recent}), far, now, now)
	if l.s.Up() {
		t.Error("a genuine notice from the far gateway left the lane up")
	}
}

// TestClockStepDoesNotStretchTheRoundTrip: the kernel stamps arrivals on
// the wall clock; a +60 s step between send and receive must not make a
// 60 s round trip (and so a 60 s detection time, a dead lane left up).
func TestClockStepDoesNotStretchTheRoundTrip(t *testing.T) {
	s := NewSession(fastParams, time.Now())
	sent := time.Now()
	seq := s.Sent(sent)
	now := sent.Add(time.Millisecond)            // monotonic: 1 ms later
	rxWall := now.Round(0).Add(60 * time.Second) // the wall clock stepped ahead
	s.Reply(seq, monotonicRx(now, rxWall), now)
	if st := s.Status(now); st.RTT > 2*time.Millisecond {
		t.Errorf("rtt %v after a clock step", st.RTT)
	}
	if d := s.DetectTime(); d != fastParams.Detect() {
		t.Errorf("detect time %v after a clock step, want %v", d, fastParams.Detect())
	}
	// The ordinary case: the kernel received it 300 us before the read.
	if got := monotonicRx(now, now.Round(0).Add(-300*time.Microsecond)); now.Sub(got) != 300*time.Microsecond {
		t.Errorf("receive time %v before now, want 300us", now.Sub(got))
	}
}

// TestProbePortFloodIsCheap: a flood from an address that is no lane's
// gateway is dropped before any MAC is computed, and the lane is judged
// and answered all along.
func TestProbePortFloodIsCheap(t *testing.T) {
	r := newSignalRig(t)
	junk, err := net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 9)}, net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), r.p.cfg.Port)))
	if err != nil {
		t.Fatal(err)
	}
	defer junk.Close()
	replies := r.p.C.Replies.Load()
	msg := make([]byte, MessageLen)
	deadline := time.Now().Add(500 * time.Millisecond)
	sent := 0
	for ; sent < 50000 && time.Now().Before(deadline); sent++ {
		junk.Write(msg)
	}
	time.Sleep(50 * time.Millisecond)
	if n := r.p.C.Drops[ReplyBadSource].Load(); n == 0 {
		t.Errorf("%d junk datagrams, none counted as bad_source", sent)
	}
	if r.p.C.Drops[ReplyBadMAC].Load() != 0 {
		t.Error("junk reached the MAC check")
	}
	if r.p.C.Replies.Load() == replies {
		t.Error("no reply counted during the flood")
	}
	r.ch.mu.Lock()
	defer r.ch.mu.Unlock()
	for _, c := range r.ch.got {
		if !c.Up {
			t.Errorf("lane went down during the flood: %+v", c)
		}
	}
	t.Logf("%d junk datagrams; dropped as bad_source: %d", sent, r.p.C.Drops[ReplyBadSource].Load())
}

// TestReflectorAnswersOnlyItsInterface: a probe that arrived on another
// interface than the lane's (relayed through another lane) is refused.
func TestReflectorAnswersOnlyItsInterface(t *testing.T) {
	key := testKey(1)
	start := func(ifindex int) *Reflector {
		rf, err := NewReflector(netip.MustParseAddrPort("127.0.0.1:0"), 1, "", "", key, "lo", nil)
		if err != nil {
			t.Fatal(err)
		}
		if ifindex != 0 {
			rf.ifindex = ifindex // the lane's interface is another one: loopback is not it
		}
		go rf.Run()
		t.Cleanup(func() { rf.Close() })
		return rf
	}
	ask := func(rf *Reflector) bool {
		c, err := net.DialUDP("udp", nil, rf.conn.LocalAddr().(*net.UDPAddr))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		var req [MessageLen]byte
		NewSigner(key).Put(req[:], Message{Kind: KindRequest, Lane: 1, Session: uint64(time.Now().UnixNano()), Seq: 1})
		c.Write(req[:])
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		_, err = c.Read(req[:])
		return err == nil
	}
	if !ask(start(0)) {
		t.Fatal("a probe that arrived on the lane's interface was not answered")
	}
	other := start(9999)
	if ask(other) {
		t.Error("a probe from another interface was answered")
	}
	if other.C.Drops[ReflectWrongIface].Load() != 1 {
		t.Errorf("drops %v", other.DropCounts())
	}
}

// FuzzSignals: whatever arrives on the probe port, in the error queue or
// as an ICMP quote, or passes a gateway as a probe, is counted or
// ignored, never a panic; and without the key nothing takes a lane down.
func FuzzSignals(f *testing.F) {
	key := testKey(1)
	var notice [MessageLen]byte
	NewSigner(key).Put(notice[:], Message{Kind: KindNotice, Lane: 1, Session: 1, Seq: 1, Diag: DiagAdminDown})
	f.Add(notice[:], []byte{})
	frame := make([]byte, packet.GeneveLen+InnerLenV4)
	PutInner(frame[packet.GeneveLen:], netip.MustParseAddrPort("127.0.0.1:6082"), netip.MustParseAddrPort("127.0.0.8:6082"), notice[:])
	packet.PutGeneve(frame, 7, packet.ProtoIPv4, true)
	f.Add(frame, extendedErr(unix.SockExtendedErr{Errno: uint32(unix.ECONNREFUSED), Origin: unix.SO_EE_ORIGIN_ICMP, Type: 3, Code: 3}, netip.MustParseAddr("127.0.0.7")))
	p, err := NewProber(ProberConfig{Keys: testKey(2), VNI: 7, Port: 0, Sources: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Params: fastParams})
	if err != nil {
		f.Fatal(err)
	}
	defer p.Close()
	near := netip.MustParseAddrPort("127.0.0.7:6081")
	p.SetTargets([]Target{{Lane: 1, Near: near, Far: netip.MustParseAddr("127.0.0.8")}})
	l := p.lanes[1]
	now := time.Now()
	for range 3 {
		l.s.Reply(l.s.Sent(now), now, now)
	}
	l.s.Evaluate(now.Add(time.Millisecond))
	rf, err := NewReflector(netip.MustParseAddrPort("127.0.0.1:0"), 1, "", "", key, "", nil)
	if err != nil {
		f.Fatal(err)
	}
	defer rf.Close() // no condition: it sends nothing to the addresses the input names
	f.Fuzz(func(t *testing.T, b, oob []byte) {
		p.datagram(b, near.Addr(), now, now)
		p.icmpError(b, oob, near.Addr())
		p.QuotedProbe(b, near.Addr(), near.Addr(), true)
		if !l.s.Up() {
			t.Fatal("a lane went down without the key")
		}
		rf.SawProbe(b)
		rf.answer(slices.Clone(b), netip.MustParseAddrPort("127.0.0.1:9"))
	})
}

// TestSignalsQueuedElsewhereCountBeforeSilence: after a stall in which a
// lane's detection time ran out and its gateway's ICMP error arrived, the
// error (handed over by the BeforeJudging hook) decides, not the silence.
func TestSignalsQueuedElsewhereCountBeforeSilence(t *testing.T) {
	// Up a second ago, then silent for far longer than the detection time:
	// what a prober finds when it runs again after a stall.
	then := time.Now().Add(-time.Second)
	p, changes := proberWithLaneUp(t, 3, then)
	l := p.lanes[1]
	for range 2 * fastParams.Multiplier {
		l.s.Sent(then.Add(2 * time.Millisecond))
	}
	var calls atomic.Int32
	p.BeforeJudging(func() {
		if calls.Add(1) == 1 {
			p.Suspect(1, "ICMP port unreachable from 127.0.0.7: gateway gone")
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go p.Run(ctx)
	select {
	case c := <-changes:
		if c.Up || c.ByTimeout || !strings.Contains(c.Reason, "ICMP") {
			t.Errorf("first change %+v; want down by the ICMP error", c)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("no change")
	}
}

// TestProberSignerAcrossGoroutines: the demux's ICMP watch calls
// QuotedProbe and Suspect on its own goroutine while Run probes, checks
// replies and quoted probes on its: the one HMAC state they share must
// not be used by two at once (it panicked with "d.nx != 0" in a demux;
// the race detector sees it here).
func TestProberSignerAcrossGoroutines(t *testing.T) {
	p, err := NewProber(ProberConfig{Keys: testKey(4), VNI: 7, Port: freePort(t), Sources: []netip.Addr{netip.MustParseAddr("127.0.0.1")},
		Params: fastParams})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	near := netip.MustParseAddrPort("127.0.0.7:6081")
	if err := p.SetTargets([]Target{{Lane: 1, Near: near, Far: netip.MustParseAddr("127.0.0.8")}}); err != nil {
		t.Fatal(err)
	}
	l := p.lanes[1]
	now := time.Now()
	for range 3 {
		l.s.Reply(l.s.Sent(now), now, now)
	}
	l.s.Evaluate(now.Add(time.Millisecond))
	frame := make([]byte, packet.GeneveLen+InnerLenV4)
	packet.PutGeneve(frame, 7, packet.ProtoIPv4, true)
	var msg [MessageLen]byte
	NewSigner(testKey(4)).Put(msg[:], Message{Kind: KindRequest, Lane: 1, Session: p.session + 1, Seq: 1})
	PutInner(frame[packet.GeneveLen:], netip.MustParseAddrPort("127.0.0.1:6082"), netip.MustParseAddrPort("127.0.0.8:6082"), msg[:])

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go p.Run(ctx)
	deadline := time.Now().Add(300 * time.Millisecond)
	for time.Now().Before(deadline) {
		p.QuotedProbe(frame, near.Addr(), near.Addr(), true) // another session's: refused, after its MAC is checked
		p.Suspect(1, "test")
	}
}

// proberWithLaneUp returns a prober (keyed by testKey(key), closed at
// the test's end) whose lane 1, to 127.0.0.7, came up at when, and the
// channel its changes go to once it runs.
func proberWithLaneUp(t *testing.T, key byte, when time.Time) (*Prober, chan Change) {
	t.Helper()
	changes := make(chan Change, 4)
	p, err := NewProber(ProberConfig{Keys: testKey(key), VNI: 7, Port: freePort(t), Sources: []netip.Addr{netip.MustParseAddr("127.0.0.1")},
		Params: fastParams, OnChange: func(c Change) { changes <- c }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	if err := p.SetTargets([]Target{{Lane: 1, Near: netip.MustParseAddrPort("127.0.0.7:6081"), Far: netip.MustParseAddr("127.0.0.8")}}); err != nil {
		t.Fatal(err)
	}
	l := p.lanes[1]
	for range 3 {
		l.s.Reply(l.s.Sent(when), when, when)
	}
	if !l.s.Evaluate(when.Add(time.Millisecond)) || !l.s.Up() {
		t.Fatal("lane not up")
	}
	return p, changes
}

// TestGoneTakesTheLaneDown: a signal the demux checked (an ICMP error
// quoting a data frame it sealed) takes an up lane down at once, with no
// poll and no wait, as an ICMP signal; its flows wait 1 ms (a gone
// gateway holds nothing that could still arrive).
func TestGoneTakesTheLaneDown(t *testing.T) {
	p, changes := proberWithLaneUp(t, 5, time.Now())
	l := p.lanes[1]
	p.Gone(2, "no such lane") // ignored
	p.Gone(1, "ICMP port unreachable from 127.0.0.7 for 127.0.0.7:6081 quoting a sealed frame: gateway gw gone")
	if l.s.Up() {
		t.Fatal("Gone left the lane up")
	}
	if n := p.C.Signals[SignalICMPData].Load(); n != 1 {
		t.Errorf("%d ICMP data signals counted, want 1", n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go p.Run(ctx)
	select {
	case c := <-changes:
		if c.Up || c.ByTimeout || c.Delivers || c.Settle != time.Millisecond || !strings.Contains(c.Reason, "sealed frame") {
			t.Errorf("change %+v; want down by the signal, settle 1ms", c)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Run reported no change")
	}
}

func addrOf(sa unix.Sockaddr) netip.Addr {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrFrom4(sa.Addr)
	case *unix.SockaddrInet6:
		return netip.AddrFrom16(sa.Addr).Unmap()
	}
	return netip.Addr{}
}
