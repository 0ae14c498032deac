package demux

import (
	"encoding/binary"
	"errors"
	"hash/maphash"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/clusterpeer/clusterpeer/dataplane/geneveauth"
	"github.com/clusterpeer/clusterpeer/dataplane/packet"
	"github.com/clusterpeer/clusterpeer/flowhash"
	"github.com/prometheus/client_golang/prometheus"
)

// fakeTUN hands out queued batches and records what is written back.
type fakeTUN struct {
	in      chan [][]byte
	errs    chan error // a read that fails
	mu      sync.Mutex
	written [][]byte
	closed  chan struct{}
	once    sync.Once
}

func newFakeTUN() *fakeTUN {
	return &fakeTUN{in: make(chan [][]byte, 16), errs: make(chan error, 16), closed: make(chan struct{})}
}

func (f *fakeTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	select {
	case pkts := <-f.in:
		for i, p := range pkts {
			sizes[i] = copy(bufs[i][offset:], p)
		}
		return len(pkts), nil
	case err := <-f.errs:
		return 0, err
	case <-f.closed:
		return 0, os.ErrClosed
	}
}

func (f *fakeTUN) Write(bufs [][]byte, offset int) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, b := range bufs {
		f.written = append(f.written, append([]byte(nil), b[offset:]...))
	}
	return len(bufs), nil
}

func (f *fakeTUN) File() *os.File           { return nil }
func (f *fakeTUN) MTU() (int, error)        { return 1420, nil }
func (f *fakeTUN) Name() (string, error)    { return "fake", nil }
func (f *fakeTUN) Events() <-chan tun.Event { return nil }
func (f *fakeTUN) BatchSize() int           { return conn.IdealBatchSize }
func (f *fakeTUN) Close() error             { f.once.Do(func() { close(f.closed) }); return nil }

// fakeBind records the frames sent to each endpoint.
type fakeBind struct {
	conn.Bind
	record bool
	mu     sync.Mutex // the queues' loops send at once
	sent   map[string][][]byte
	fail   bool
	block  func() // if set, each Send calls it first
}

func (b *fakeBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	if b.block != nil {
		b.block()
	}
	if b.fail {
		return net.ErrClosed
	}
	if b.record {
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, f := range bufs {
			b.sent[ep.DstToString()] = append(b.sent[ep.DstToString()], append([]byte(nil), f...))
		}
	}
	return nil
}
func (b *fakeBind) BatchSize() int { return conn.IdealBatchSize }

func udp4(t testing.TB, sport uint16, seq uint32, size int) []byte {
	ip := &layers.IPv4{Version: 4, TTL: 63, Protocol: layers.IPProtocolUDP, Flags: layers.IPv4DontFragment,
		SrcIP: net.IP{10, 1, 0, 10}, DstIP: net.IP{10, 2, 0, 10}}
	u := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: 7000}
	u.SetNetworkLayerForChecksum(ip)
	payload := make([]byte, size-28)
	binary.BigEndian.PutUint32(payload, seq)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ip, u, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

const testVNI = 4242

func newTestDemux(t testing.TB, lanes int) (*Demux, *fakeTUN, *fakeBind) {
	sel, err := flowhash.New(flowhash.Config{Key: flowhash.Key{1, 2, 3}, Pins: flowhash.PinConfig{Capacity: 1 << 12}})
	if err != nil {
		t.Fatal(err)
	}
	var ls []flowhash.Lane
	var targets []Target
	bind := &fakeBind{record: true, sent: map[string][][]byte{}}
	std := conn.NewStdNetBind()
	for i := 1; i <= lanes; i++ {
		ls = append(ls, flowhash.Lane{ID: flowhash.LaneID(i)})
		addr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, 0, byte(20 + i)}), 6081)
		ep, _ := std.ParseEndpoint(addr.String())
		targets = append(targets, Target{ID: flowhash.LaneID(i), Name: "gw", Endpoint: ep, Addr: addr})
	}
	if err := sel.SetLanes(ls); err != nil {
		t.Fatal(err)
	}
	ft := newFakeTUN()
	d, err := New(ft, bind, Config{Selector: sel, VNI: testVNI, MTU: 1420,
		ICMPv4: netip.MustParseAddr("10.1.0.2"), ICMPv6: netip.MustParseAddr("fd00:a::2")})
	if err != nil {
		t.Fatal(err)
	}
	d.SetTargets(targets)
	return d, ft, bind
}

// load copies packets into the demux's read buffers as the TUN would.
func load(d *Demux, pkts [][]byte) ([][]byte, []int) {
	q := d.queues[0]
	for i, p := range pkts {
		q.sizes[i] = copy(q.bufs[i][Headroom:], p)
	}
	return q.bufs[:len(pkts)], q.sizes[:len(pkts)]
}

// TestForwardEncapsulates: 32 flows x 4 packets, interleaved, leave as
// GENEVE frames carrying the packets unchanged; each flow goes to one
// gateway in order, and every gateway gets some.
func TestForwardEncapsulates(t *testing.T) {
	d, _, bind := newTestDemux(t, 3)
	var pkts [][]byte
	for seq := range 4 {
		for f := range 32 {
			pkts = append(pkts, udp4(t, uint16(5000+f), uint32(seq), 200))
		}
	}
	bufs, sizes := load(d, pkts)
	d.Forward(bufs, sizes, 0)

	flowDst := map[uint16]string{}
	nextSeq := map[uint16]uint32{}
	total := 0
	for dst, frames := range bind.sent {
		for _, f := range frames {
			total++
			h, inner, err := packet.ParseGeneve(f)
			if err != nil || h.VNI() != testVNI || h.Protocol() != packet.ProtoIPv4 || h.OAM() {
				t.Fatalf("frame to %s: %v vni %d proto %#x", dst, err, h.VNI(), h.Protocol())
			}
			sport := binary.BigEndian.Uint16(inner[20:22])
			seq := binary.BigEndian.Uint32(inner[28:32])
			if prev, ok := flowDst[sport]; ok && prev != dst {
				t.Errorf("flow %d went to %s and %s", sport, prev, dst)
			}
			flowDst[sport] = dst
			if seq != nextSeq[sport] {
				t.Errorf("flow %d: seq %d, want %d", sport, seq, nextSeq[sport])
			}
			nextSeq[sport] = seq + 1
		}
	}
	if total != len(pkts) || len(bind.sent) != 3 {
		t.Errorf("%d frames to %d gateways, want %d to 3", total, len(bind.sent), len(pkts))
	}
	var sum uint64
	for i := 1; i <= 3; i++ {
		sum += d.C.Lanes[i].Packets.Load()
	}
	if sum != uint64(len(pkts)) || d.C.Packets.Load() != uint64(len(pkts)) {
		t.Errorf("counters: lanes %d, total %d", sum, d.C.Packets.Load())
	}
}

func TestForwardDrops(t *testing.T) {
	d, ft, bind := newTestDemux(t, 2)
	big := udp4(t, 1, 0, 1500)
	garbage := []byte{0x45, 0, 0}
	v7 := udp4(t, 2, 0, 100)
	v7[0] = 0x75
	bufs, sizes := load(d, [][]byte{garbage, v7, big, udp4(t, 3, 0, 100)})
	d.Forward(bufs, sizes, 0)
	if got := d.C.Drops[flowhash.DropTruncated].Load(); got != 1 {
		t.Errorf("truncated: %d", got)
	}
	if got := d.C.Drops[flowhash.DropBadVersion].Load(); got != 1 {
		t.Errorf("bad_ip_version: %d", got)
	}
	if d.C.TooBig.Load() != 1 || d.C.ICMPSent.Load() != 1 || len(ft.written) != 1 {
		t.Fatalf("too big %d, icmp %d, written %d", d.C.TooBig.Load(), d.C.ICMPSent.Load(), len(ft.written))
	}
	icmp := ft.written[0]
	if icmp[9] != 1 || icmp[20] != 3 || icmp[21] != 4 || binary.BigEndian.Uint16(icmp[26:28]) != 1420 {
		t.Errorf("not a frag-needed with mtu 1420: % x", icmp[:28])
	}
	sent := 0
	for _, f := range bind.sent {
		sent += len(f)
	}
	if sent != 1 {
		t.Errorf("%d frames sent, want 1", sent)
	}

	// Only the remote network is forwarded: the kernel's own multicast
	// (here an IGMP-like 224.0.0.22 and an MLD report) is dropped.
	d.cfg.Remote = []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16"), netip.MustParsePrefix("fd00:b::/64")}
	mcast := udp4(t, 7, 0, 100)
	copy(mcast[16:20], []byte{224, 0, 0, 22})
	mld := make([]byte, 76)
	mld[0], mld[6] = 0x60, 0
	copy(mld[24:40], []byte{0xff, 0x02, 14: 0, 15: 0x16})
	before := len(bind.sent["10.1.0.21:6081"]) + len(bind.sent["10.1.0.22:6081"])
	bufs, sizes = load(d, [][]byte{mcast, mld, udp4(t, 8, 0, 100)})
	d.Forward(bufs, sizes, 0)
	if got := d.C.NotRemote.Load(); got != 2 {
		t.Errorf("not_remote: %d, want 2", got)
	}
	if after := len(bind.sent["10.1.0.21:6081"]) + len(bind.sent["10.1.0.22:6081"]); after != before+1 {
		t.Errorf("sent %d frames, want 1", after-before)
	}

	// A lane without a gateway address, and a failing send.
	d.SetTargets(nil)
	bufs, sizes = load(d, [][]byte{udp4(t, 4, 0, 100)})
	d.Forward(bufs, sizes, 0)
	if got := d.C.Drops[flowhash.DropNoLane].Load(); got != 1 {
		t.Errorf("no_lane: %d", got)
	}
	d2, _, bind2 := newTestDemux(t, 1)
	bind2.fail = true
	bufs, sizes = load(d2, [][]byte{udp4(t, 5, 0, 100), udp4(t, 6, 0, 100)})
	d2.Forward(bufs, sizes, 0)
	if d2.C.SendErrors.Load() != 2 || d2.C.Lanes[1].SendErrors.Load() != 2 || d2.C.Lanes[1].Packets.Load() != 0 {
		t.Errorf("send errors: %d lane %d packets %d", d2.C.SendErrors.Load(), d2.C.Lanes[1].SendErrors.Load(), d2.C.Lanes[1].Packets.Load())
	}
}

// TestICMPBudget: at most ICMPPerSecond errors per second in all, and
// ICMPPerSourcePerSecond to one sender, so that a flood of oversized
// packets from one host leaves the others their errors.
func TestICMPBudget(t *testing.T) {
	d, ft, _ := newTestDemux(t, 1)
	from := func(host int) []byte {
		p := udp4(t, 1, 0, 1500)
		p[14], p[15] = byte(host>>8), byte(host) // 10.1.x.y
		return p
	}
	flood := from(10)
	batch := make([][]byte, 100)
	for i := range batch {
		batch[i] = flood
	}
	for range 10 {
		bufs, sizes := load(d, batch)
		d.Forward(bufs, sizes, 7)
	}
	if n := len(ft.written); n != ICMPPerSourcePerSecond {
		t.Fatalf("one sender, 1000 oversized packets: %d errors, want %d", n, ICMPPerSourcePerSecond)
	}
	bucket := func(p []byte) uint64 { return maphash.Bytes(d.icmpSeed, packet.IPv4(p).SrcSlice()) % icmpBuckets }
	other := from(11)
	for h := 12; bucket(other) == bucket(flood); h++ { // the seed is random: pick a sender of another bucket
		other = from(h)
	}
	bufs, sizes := load(d, [][]byte{other})
	d.Forward(bufs, sizes, 7)
	if n := len(ft.written); n != ICMPPerSourcePerSecond+1 {
		t.Errorf("another sender in the same second: %d errors, want its own", n-ICMPPerSourcePerSecond)
	}

	// Many senders: the total is bounded.
	d, ft, _ = newTestDemux(t, 1)
	for h := range 4 * ICMPPerSecond / ICMPPerSourcePerSecond {
		for i := range batch {
			batch[i] = from(1000 + h)
		}
		bufs, sizes := load(d, batch[:ICMPPerSourcePerSecond])
		d.Forward(bufs, sizes, 7)
	}
	if n := len(ft.written); n != ICMPPerSecond {
		t.Errorf("%d ICMP errors in one second, want %d", n, ICMPPerSecond)
	}
	if d.C.ICMPLimited.Load() != 3*ICMPPerSecond {
		t.Errorf("limited %d, want %d", d.C.ICMPLimited.Load(), 3*ICMPPerSecond)
	}
	bufs, sizes = load(d, [][]byte{flood})
	d.Forward(bufs, sizes, 8)
	if n := len(ft.written); n != ICMPPerSecond+1 {
		t.Errorf("next second: %d", n)
	}
}

// TestForwardAllocs: the select+encap(+seal)+send path allocates nothing.
func TestForwardAllocs(t *testing.T) {
	for _, sealed := range []bool{false, true} {
		d, _, bind := newTestDemux(t, 3)
		if sealed {
			sealTargets(d)
		}
		bind.record = false
		var pkts [][]byte
		for f := range 128 {
			pkts = append(pkts, udp4(t, uint16(f), 0, 1400))
		}
		bufs, sizes := load(d, pkts)
		allocs := testing.AllocsPerRun(50, func() {
			load(d, pkts)
			d.Forward(bufs, sizes, 0)
		})
		if allocs != 0 {
			t.Errorf("sealed %v: %v allocs per batch of %d", sealed, allocs, len(pkts))
		}
	}
}

// sealTargets gives every lane of d a Sealer, its tags noted in one
// Recent as a sealing demux's are (for the ICMP watch), and returns the
// gateways' Openers, by gateway address.
func sealTargets(d *Demux) map[string]*geneveauth.Opener {
	openers := map[string]*geneveauth.Opener{}
	recent := geneveauth.NewRecent()
	var ts []Target
	for _, t := range d.targets.Load() {
		if t == nil {
			continue
		}
		k := geneveauth.Key{byte(t.ID), 0xa0} // one key per lane
		o := geneveauth.NewOpener()
		o.Add(0, 7, k)
		openers[t.Endpoint.DstToString()] = o
		tt := *t
		tt.Seal = geneveauth.NewSealer(k, 7, 0, 1<<40)
		tt.Seal.Remember(recent, uint16(t.ID))
		ts = append(ts, tt)
	}
	d.SetTargets(ts)
	return openers
}

// TestForwardSeals: with sealing lanes, every frame carries the option,
// opens at its own gateway (once) and at no other, and its inner packet
// is the packet read.
func TestForwardSeals(t *testing.T) {
	d, _, bind := newTestDemux(t, 3)
	openers := sealTargets(d)
	var pkts [][]byte
	for f := range 64 {
		pkts = append(pkts, udp4(t, uint16(7000+f), 0, 100+f))
	}
	bufs, sizes := load(d, pkts)
	d.Forward(bufs, sizes, 0)
	inners := map[string]bool{}
	for _, p := range pkts {
		inners[string(p)] = true
	}
	n := 0
	for dst, frames := range bind.sent {
		for _, f := range frames {
			n++
			h, inner, err := packet.ParseGeneve(f)
			if err != nil || h.Len() != geneveauth.HeaderLen || !inners[string(inner)] {
				t.Fatalf("frame to %s: %v, header %d bytes, inner known %v", dst, err, h.Len(), inners[string(inner)])
			}
			for other, o := range openers {
				if other != dst && o.Open(f) == nil {
					t.Fatalf("a frame for %s opened at %s", dst, other)
				}
			}
			if err := openers[dst].Open(f); err != nil {
				t.Fatalf("frame to %s: %v", dst, err)
			}
			if err := openers[dst].Open(f); err == nil {
				t.Fatalf("frame to %s opened twice", dst)
			}
		}
	}
	if n != len(pkts) || d.C.Lanes[1].Bytes.Load()+d.C.Lanes[2].Bytes.Load()+d.C.Lanes[3].Bytes.Load() != uint64(64*100+63*64/2) {
		t.Fatalf("%d frames of %d; lane bytes counted without the headers: %d", n, len(pkts),
			d.C.Lanes[1].Bytes.Load()+d.C.Lanes[2].Bytes.Load()+d.C.Lanes[3].Bytes.Load())
	}
}

// TestRunSurvivesReadErrors: failed TUN reads are counted and the demux
// goes on forwarding; reads that fail without a packet for tunFailFor
// end Run with the error.
func TestRunSurvivesReadErrors(t *testing.T) {
	d, ft, _ := newTestDemux(t, 2)
	done := make(chan error, 1)
	go func() { done <- d.Run() }()
	ft.errs <- tun.ErrTooManySegments
	ft.errs <- syscall.EIO
	ft.errs <- syscall.EAGAIN
	for t0 := time.Now(); d.C.ReadErrors.Load() < 3 && time.Since(t0) < 2*time.Second; {
		time.Sleep(time.Millisecond)
	}
	ft.in <- [][]byte{udp4(t, 1, 0, 100)}
	for t0 := time.Now(); d.C.Packets.Load() == 0 && time.Since(t0) < 2*time.Second; {
		time.Sleep(time.Millisecond)
	}
	if d.C.Packets.Load() != 1 || d.C.ReadErrors.Load() != 3 {
		t.Fatalf("after 3 failed reads: %d packets, %d read errors", d.C.Packets.Load(), d.C.ReadErrors.Load())
	}
	select {
	case err := <-done:
		t.Fatalf("Run ended: %v", err)
	default:
	}

	old := tunFailFor
	tunFailFor = 50 * time.Millisecond
	defer func() { tunFailFor = old }()
	for range cap(ft.errs) {
		ft.errs <- syscall.EBADFD
	}
	go func() { // a TUN that is gone fails every read
		for {
			select {
			case ft.errs <- syscall.EBADFD:
			case <-ft.closed:
				return
			}
		}
	}()
	defer ft.Close()
	select {
	case err := <-done:
		if !errors.Is(err, syscall.EBADFD) {
			t.Errorf("Run: %v, want the read error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run went on although every read failed")
	}
}

// TestRunStops: Run returns when the TUN closes and leaves no goroutine.
func TestRunStops(t *testing.T) {
	before := runtime.NumGoroutine()
	d, ft, bind := newTestDemux(t, 2)
	done := make(chan error)
	go func() { done <- d.Run() }()
	ft.in <- [][]byte{udp4(t, 1, 0, 100)}
	deadline := time.Now().Add(2 * time.Second)
	for d.C.Packets.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	ft.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Run did not return after the TUN closed")
	}
	if len(bind.sent) != 1 {
		t.Errorf("sent to %d gateways", len(bind.sent))
	}
	for i := 0; runtime.NumGoroutine() > before && i < 100; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("%d goroutines after, %d before", n, before)
	}
}

// TestQueuesKeepEachFlowInOrder: with several TUN queues, each read by
// its own loop at once, every packet leaves for its flow's lane and each
// flow's packets leave in the order its queue gave them (the kernel puts
// a flow on one queue). Run returns nil once every queue is closed; a
// queue whose reads keep failing ends Run with its error.
func TestQueuesKeepEachFlowInOrder(t *testing.T) {
	d, q0, bind := newTestDemux(t, 3)
	queues := []*fakeTUN{q0, newFakeTUN(), newFakeTUN()}
	for _, q := range queues[1:] {
		d.AddQueue(q)
	}
	if d.Queues() != 3 {
		t.Fatalf("Queues() = %d, want 3", d.Queues())
	}
	done := make(chan error, 1)
	go func() { done <- d.Run() }()
	const flows, perFlow = 48, 60
	var wg sync.WaitGroup
	for qi, q := range queues {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := range perFlow {
				var batch [][]byte
				for f := qi; f < flows; f += len(queues) { // flow f on queue f mod 3
					batch = append(batch, udp4(t, uint16(9000+f), uint32(seq), 64))
				}
				q.in <- batch
			}
		}()
	}
	wg.Wait()
	want := uint64(flows * perFlow)
	for t0 := time.Now(); d.C.Packets.Load() < want && time.Since(t0) < 5*time.Second; {
		time.Sleep(time.Millisecond)
	}
	for _, q := range queues {
		q.Close()
	}
	if err := <-done; err != nil {
		t.Fatalf("Run: %v after every queue closed", err)
	}
	next := map[uint16]uint32{}
	laneOf := map[uint16]string{}
	n := 0
	bind.mu.Lock()
	for dst, frames := range bind.sent {
		for _, f := range frames {
			_, inner, err := packet.ParseGeneve(f)
			if err != nil {
				t.Fatal(err)
			}
			sport := packet.UDP(inner[packet.IPv4MinLen:]).SrcPort()
			seq := binary.BigEndian.Uint32(inner[packet.IPv4MinLen+packet.UDPLen:])
			if was, ok := laneOf[sport]; ok && was != dst {
				t.Fatalf("flow %d sent to %s and %s", sport, was, dst)
			}
			laneOf[sport] = dst
			if seq != next[sport] {
				t.Fatalf("flow %d: packet %d left after %d", sport, seq, next[sport]-1)
			}
			next[sport]++
			n++
		}
	}
	bind.mu.Unlock()
	if n != flows*perFlow || len(laneOf) != flows {
		t.Fatalf("%d packets of %d flows left, want %d of %d", n, len(laneOf), flows*perFlow, flows)
	}

	// One queue's TUN gone: its error ends Run although the others work.
	d2, _, _ := newTestDemux(t, 2)
	bad, good := newFakeTUN(), newFakeTUN()
	d2.queues = d2.queues[:0]
	d2.AddQueue(good)
	d2.AddQueue(bad)
	old := tunFailFor
	tunFailFor = 20 * time.Millisecond
	defer func() { tunFailFor = old }()
	go func() { done <- d2.Run() }()
	go func() {
		for {
			select {
			case bad.errs <- syscall.EBADFD:
			case <-bad.closed:
				return
			}
		}
	}()
	select {
	case err := <-done:
		if !errors.Is(err, syscall.EBADFD) {
			t.Errorf("Run: %v, want the failing queue's error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run went on although one queue's reads all failed")
	}
	good.Close()
	bad.Close()
}

// BenchmarkForward: select + GENEVE encap + per-lane batching, per packet.
// BenchmarkForward: the demux's work per packet apart from the system
// calls, plain and sealed (security.geneve_auth).
func BenchmarkForward(b *testing.B) {
	for _, c := range []struct {
		size   int
		sealed bool
	}{{64, false}, {1400, false}, {64, true}, {1400, true}} {
		name := map[int]string{64: "64B", 1400: "1400B"}[c.size]
		if c.sealed {
			name += "-sealed"
		}
		size := c.size
		b.Run(name, func(b *testing.B) {
			d, _, bind := newTestDemux(b, 3)
			if c.sealed {
				sealTargets(d)
			}
			bind.record = false
			var pkts [][]byte
			for f := range 128 {
				pkts = append(pkts, udp4(b, uint16(f), 0, size))
			}
			bufs, sizes := load(d, pkts)
			b.SetBytes(int64(size) * int64(len(pkts)))
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				d.Forward(bufs, sizes, 0)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(pkts)), "ns/pkt")
		})
	}
}

// BenchmarkCollect: a /metrics scrape of a demux with the default pin
// table of a million slots, half full. The pin count is a counter, not a
// scan (a scan took 52 ms per scrape).
func BenchmarkCollect(b *testing.B) {
	sel, err := flowhash.New(flowhash.Config{Key: flowhash.Key{1, 2, 3}})
	if err != nil {
		b.Fatal(err)
	}
	if err := sel.SetLanes([]flowhash.Lane{{ID: 1, Weight: 1}, {ID: 2, Weight: 1}}); err != nil {
		b.Fatal(err)
	}
	for i := range sel.Pins().Capacity() / 2 {
		tu := flowhash.Tuple{Proto: flowhash.ProtoUDP, SrcPort: uint16(i), DstPort: uint16(i >> 16)}
		sel.SelectTuple(&tu, 0)
	}
	d, err := New(newFakeTUN(), &fakeBind{sent: map[string][][]byte{}}, Config{Selector: sel, VNI: testVNI, MTU: 1420})
	if err != nil {
		b.Fatal(err)
	}
	ch := make(chan prometheus.Metric, 1024)
	b.Run("scrape", func(b *testing.B) {
		for range b.N {
			d.Collect(ch)
			for len(ch) > 0 {
				<-ch
			}
		}
	})
	b.Run("pin-scan", func(b *testing.B) { // what each scrape cost before
		for range b.N {
			sel.Pins().Live(0)
		}
	})
}
