package probe

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterpeer/clusterpeer/dataplane/packet"
	"github.com/clusterpeer/clusterpeer/flowhash"
	"github.com/clusterpeer/clusterpeer/tunnel/keyring"
)

// relay stands in for a lane on loopback: the near gateway's GENEVE port,
// the tunnel and the far gateway's kernel. It unwraps probes addressed to
// far, hands their payload to the reflector and sends the answer to the
// probe's source, unless cut.
type relay struct {
	conn      *net.UDPConn
	far       netip.AddrPort
	reflector netip.AddrPort
	cut       atomic.Bool
	notProbe  atomic.Uint64
}

func newRelay(t *testing.T, far, reflector netip.AddrPort) *relay {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{conn: c, far: far, reflector: reflector}
	t.Cleanup(func() { c.Close() })
	go r.run()
	return r
}

func (r *relay) addr() netip.AddrPort { return r.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

func (r *relay) run() {
	buf := make([]byte, 2048)
	up, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return
	}
	defer up.Close()
	for {
		n, _, err := r.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		h, inner, err := packet.ParseGeneve(buf[:n])
		if err != nil || !h.OAM() || !IsProbeFor(inner, r.far) || r.cut.Load() {
			r.notProbe.Add(1)
			continue
		}
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte(inner[12:16])), uint16(inner[20])<<8|uint16(inner[21]))
		up.WriteToUDPAddrPort(inner[28:], r.reflector)
		up.SetReadDeadline(time.Now().Add(time.Second))
		m, _, err := up.ReadFromUDPAddrPort(buf)
		if err != nil {
			continue
		}
		r.conn.WriteToUDPAddrPort(buf[:m], src)
	}
}

func freePort(t *testing.T) uint16 {
	c, err := net.ListenUDP("udp", &net.UDPAddr{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return uint16(c.LocalAddr().(*net.UDPAddr).Port)
}

type events struct {
	mu  sync.Mutex
	got []string
	ch  chan struct{}
}

func (e *events) add(lane flowhash.LaneID, up bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := "down"
	if up {
		s = "up"
	}
	e.got = append(e.got, string(rune('0'+lane))+s)
	select {
	case e.ch <- struct{}{}:
	default:
	}
}

// wait waits for event want ("2down") and returns how long it took.
func (e *events) wait(t *testing.T, want string, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		e.mu.Lock()
		for i, g := range e.got {
			if g == want {
				e.got = append(e.got[:i:i], e.got[i+1:]...)
				e.mu.Unlock()
				return time.Since(start)
			}
		}
		e.mu.Unlock()
		select {
		case <-e.ch:
		case <-time.After(limit - time.Since(start)):
			t.Fatalf("no %s within %v (events %v)", want, limit, e.got)
		}
	}
}

func TestProberAndReflectorOverLoopback(t *testing.T) {
	key := testKey(1)
	port := freePort(t)
	ev := &events{ch: make(chan struct{}, 1)}
	p, err := NewProber(ProberConfig{
		Keys: key, VNI: 7, Port: port, Sources: []netip.Addr{netip.MustParseAddr("127.0.0.1")},
		Params: DefaultParams, OnChange: func(c Change) { ev.add(c.Lane, c.Up) },
	})
	if err != nil {
		t.Fatal(err)
	}
	var targets []Target
	var relays []*relay
	var reflectors []*Reflector
	for lane := flowhash.LaneID(1); lane <= 2; lane++ {
		rf, err := NewReflector(netip.MustParseAddrPort("127.0.0.1:0"), lane, "", "", key, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		go rf.Run()
		t.Cleanup(func() { rf.Close() })
		far := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), port) // where the far gateway would be
		r := newRelay(t, far, rf.conn.LocalAddr().(*net.UDPAddr).AddrPort())
		relays, reflectors = append(relays, r), append(reflectors, rf)
		targets = append(targets, Target{Lane: lane, Near: r.addr(), Far: far.Addr()})
	}
	if err := p.SetTargets(targets); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	ev.wait(t, "1up", 2*time.Second)
	ev.wait(t, "2up", 2*time.Second)

	relays[1].cut.Store(true)
	took := ev.wait(t, "2down", 2*time.Second)
	t.Logf("lane 2 down %v after the cut (detect time %v)", took, DefaultParams.Detect())
	relays[1].cut.Store(false)
	ev.wait(t, "2up", 2*time.Second)

	st := p.Status()
	if len(st) != 2 || !st[0].Up || !st[1].Up || st[0].Transitions != 1 || st[1].Transitions != 3 {
		t.Fatalf("status %+v", st)
	}
	if st[0].SmoothedRTT <= 0 || st[0].Received == 0 {
		t.Errorf("lane 1: no RTT measured: %+v", st[0])
	}

	// Forgeries: a reply under another key, and a genuine-looking reply to
	// a session that is not this prober's.
	forge := func(k *keyring.Ring, m Message) {
		var b [MessageLen]byte
		NewSigner(k).Put(b[:], m)
		c, _ := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)))
		c.Write(b[:])
		c.Close()
	}
	forge(testKey(9), Message{Kind: KindReply, Lane: 1, Session: p.session, Seq: 1})
	forge(key, Message{Kind: KindReply, Lane: 1, Session: p.session + 1, Seq: 1})
	forge(key, Message{Kind: KindRequest, Lane: 1, Session: p.session, Seq: 1})
	deadline := time.Now().Add(2 * time.Second)
	for p.C.Drops[ReplyBadMAC].Load() != 1 || p.C.Drops[ReplyStale].Load() != 1 || p.C.Drops[ReplyBadFormat].Load() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("reply drops %v", p.DropCounts())
		}
		time.Sleep(10 * time.Millisecond)
	}

	if reflectors[0].C.Answered.Load() == 0 {
		t.Error("reflector answered nothing")
	}
}

func TestReflectorRefusesOtherLanesAndReplays(t *testing.T) {
	key := testKey(1)
	rf, err := NewReflector(netip.MustParseAddrPort("127.0.0.1:0"), 1, "", "", key, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rf.Close()
	var req [MessageLen]byte
	s := NewSigner(key)
	s.Put(req[:], Message{Kind: KindRequest, Lane: 2, Session: 5, Seq: 1})
	if d := rf.answer(append([]byte(nil), req[:]...), netip.MustParseAddrPort("10.2.0.2:6082")); d != ReflectWrongLane {
		t.Errorf("lane 2 probe at lane 1's reflector: %d", d)
	}
	s.Put(req[:], Message{Kind: KindRequest, Lane: 1, Session: 5, Seq: 10})
	if d := rf.answer(append([]byte(nil), req[:]...), netip.MustParseAddrPort("10.2.0.2:6082")); d != -1 {
		t.Errorf("fresh probe refused: %d", d)
	}
	if d := rf.answer(append([]byte(nil), req[:]...), netip.MustParseAddrPort("10.2.0.2:6082")); d != ReflectReplay {
		t.Errorf("replayed probe: %d", d)
	}
	s.Put(req[:], Message{Kind: KindReply, Lane: 1, Session: 5, Seq: 11})
	if d := rf.answer(append([]byte(nil), req[:]...), netip.MustParseAddrPort("10.2.0.2:6082")); d != ReflectBadFormat {
		t.Errorf("a reply sent to the reflector: %d", d)
	}
	NewSigner(testKey(2)).Put(req[:], Message{Kind: KindRequest, Lane: 1, Session: 5, Seq: 12})
	if d := rf.answer(append([]byte(nil), req[:]...), netip.MustParseAddrPort("10.2.0.2:6082")); d != ReflectBadMAC {
		t.Errorf("another key: %d", d)
	}
}

func TestProberStretchesIntervalForManyLanes(t *testing.T) {
	p, err := NewProber(ProberConfig{Keys: testKey(1), Port: freePort(t), MaxRate: 1000,
		Sources: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Params: DefaultParams})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var ts []Target
	for i := range 40 {
		ts = append(ts, Target{Lane: flowhash.LaneID(i + 1), Near: netip.MustParseAddrPort("127.0.0.1:9"), Far: netip.MustParseAddr("127.0.0.3")})
	}
	if err := p.SetTargets(ts); err != nil {
		t.Fatal(err)
	}
	// 40 lanes at 1000 probes/s: one probe per lane every 40 ms.
	if got := p.Interval(); got != 40*time.Millisecond {
		t.Errorf("interval %v, want 40ms", got)
	}
	if err := p.SetTargets([]Target{{Lane: 1, Near: netip.MustParseAddrPort("127.0.0.1:9"), Far: netip.MustParseAddr("fd00::1")}}); err == nil {
		t.Error("a far gateway of a family the demux has no address of was accepted")
	}
}
