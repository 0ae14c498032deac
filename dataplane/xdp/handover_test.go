//go:build linux

package xdp

import (
	"net"
	"testing"
	"time"

	"github.com/google/gopacket/layers"

	"github.com/clusterpeer/clusterpeer/flowhash"
)

// ledger reads the hand-over ledger's bucket b: passed up, finished.
func ledger(p *Program, b int) (uint64, uint64) {
	return p.ledgerWord(b).Load(), p.ledgerWord(handoverBuckets + b).Load()
}

// ledgerTotal is the packets passed up, all buckets.
func ledgerTotal(p *Program) uint64 {
	var n uint64
	for b := range handoverBuckets {
		n += p.ledgerWord(b).Load()
	}
	return n
}

// TestHandoverKeepsAFlowBehindItsPassedPackets: a flow whose packets the
// program passed up (its lane had no target) moves to the program's path
// when a target comes; while the userspace demux has not finished with
// what was passed up, the program passes the flow's next packets up too
// (counted "handover"), and sends them itself only once everything is
// finished. With the gate clear it does not wait; a bucket left
// unbalanced, unchanged, is written off after handoverQuiet ticks.
func TestHandoverKeepsAFlowBehindItsPassedPackets(t *testing.T) {
	cfg := Config{Key: testKey, Symmetric: true}
	p := loadTest(t, cfg)
	sel := newSelector(t, cfg, 1, 2, 3)
	pkt := udp4(t, 40000, 5201, 100)
	fwd := kernelForward(pkt)
	b, ok := p.ledgerBucket(fwd)
	if !ok {
		t.Fatal("the ledger does not count a plain UDP packet")
	}
	step := func(what string, wantVerdict uint32, wantReason string, wantPassed, wantFinished uint64) {
		t.Helper()
		before := counts(t, p)
		verdict, _ := run(t, p.DemuxProgram(), eth(pkt))
		if d := diff(before, counts(t, p)); verdict != wantVerdict || d[wantReason] != 1 {
			t.Fatalf("%s: verdict %d, counters moved %v; want verdict %d, %s +1", what, verdict, d, wantVerdict, wantReason)
		}
		if passed, fin := ledger(p, b); passed != wantPassed || fin != wantFinished {
			t.Fatalf("%s: ledger %d passed up, %d finished; want %d, %d", what, passed, fin, wantPassed, wantFinished)
		}
	}

	if err := p.Publish(sel.Snapshot(), nil); err != nil { // no lane has a target yet
		t.Fatal(err)
	}
	step("no target", xdpPass, "no_target", 1, 0)
	step("no target", xdpPass, "no_target", 2, 0)
	if err := p.Publish(sel.Snapshot(), testTargets(1, 2, 3)); err != nil {
		t.Fatal(err)
	}
	step("targets, two still with userspace", xdpPass, "handover", 3, 0)
	p.Finished(fwd)
	p.Finished(fwd)
	step("targets, one still with userspace", xdpPass, "handover", 4, 2)
	p.Finished(fwd)
	p.Finished(fwd)
	step("all finished", xdpTX, "tx", 4, 4)
	step("all finished", xdpTX, "tx", 4, 4)

	// What the program does not count, the ledger does not either.
	for _, c := range []struct {
		name string
		pkt  []byte
	}{
		{"ipv4-options", options4(t)},
		{"ipv4-fragment", frag4(t, 8, false)},
		{"ipv6-fragment", frag6(t)},
		{"ipv6-hop-by-hop", hopByHop6(t)},
		{"ipv4-icmp-error", unreach4(t)},
		{"ipv6-packet-too-big", tooBig6(t)},
		{"ipv4-gre", gre4(t)},
		{"ipv4-not-remote", withDst(udp4(t, 1, 2, 10), net.IP{10, 1, 0, 2})},
		{"ipv4-over-mtu", udp4(t, 1, 2, testMTU-27)},
	} {
		if b, ok := p.ledgerBucket(kernelForward(c.pkt)); ok {
			t.Errorf("%s: the ledger counts it (bucket %d); the program passes it up uncounted", c.name, b)
		}
	}

	// A bucket left unbalanced (a packet lost on the way up) holds its
	// flows only while the gate is set, and is written off once quiet.
	p.ledgerWord(b).Add(1)
	step("lost on the way up, gate set", xdpPass, "handover", 6, 4)
	var w ledgerWatch
	if n := p.tidyLedger(&w, time.Now().Add(HandoverGate)); n != 0 {
		t.Fatalf("wrote off %d at the first look", n)
	}
	step("gate clear", xdpTX, "tx", 6, 4)
	for i := 1; i < handoverQuiet; i++ {
		if n := p.tidyLedger(&w, time.Now()); n != 0 {
			t.Fatalf("wrote off %d after %d quiet ticks", n, i)
		}
	}
	if n := p.tidyLedger(&w, time.Now()); n != 2 {
		t.Fatalf("wrote off %d after %d quiet ticks, want 2", n, handoverQuiet)
	}
	if passed, fin := ledger(p, b); passed != fin {
		t.Fatalf("after the write-off: %d passed up, %d finished", passed, fin)
	}
	if got := p.Status().HandoverWrittenOff; got != 2 {
		t.Errorf("status: %d written off, want 2", got)
	}
	// A Publish sets the gate again; the bucket is balanced: no wait.
	if err := p.Publish(sel.Snapshot(), testTargets(1, 2, 3)); err != nil {
		t.Fatal(err)
	}
	step("balanced, gate set", xdpTX, "tx", 6, 6)
}

// TestFinishedAllocsNothing: Finished runs once per packet the userspace
// demux sends while the fast path is attached.
func TestFinishedAllocsNothing(t *testing.T) {
	p := loadTest(t, Config{Key: testKey, Symmetric: true})
	v4, v6 := kernelForward(udp4(t, 1, 2, 100)), kernelForward(tcp6(t, 3, 4, 100))
	if n := testing.AllocsPerRun(1000, func() { p.Finished(v4); p.Finished(v6) }); n != 0 {
		t.Errorf("%.1f allocations per packet", n)
	}
}

// TestHandoverBucketIsTheProgramsBucket: the Go bucket of a flow is the
// one the program counts it in, for every hash mode.
func TestHandoverBucketIsTheProgramsBucket(t *testing.T) {
	for _, cfg := range []Config{{Key: testKey, Symmetric: true}, {Key: testKey, HashMode: 1}, {Key: testKey, HashMode: 2, Symmetric: true}} {
		p := loadTest(t, cfg) // published nothing: every packet is passed up, counted
		for i, pkt := range [][]byte{
			udp4(t, 1, 2, 10), tcp4(t, 40000, 80, 0), udp6(t, 9, 10, 30), tcp6(t, 443, 5555, 1),
			echo4(t, 7), echo6(t, 8), (flow{src: net.IP{10, 1, 2, 3}, dst: net.IP{10, 2, 3, 4}, proto: layers.IPProtocolSCTP, sport: 5, dport: 6}).packet(t, 0, 64),
		} {
			b, ok := p.ledgerBucket(kernelForward(pkt))
			if !ok {
				t.Fatalf("mode %v, packet %d: not counted", cfg.HashMode, i)
			}
			before, total := p.ledgerWord(b).Load(), ledgerTotal(p)
			if v, _ := run(t, p.DemuxProgram(), eth(pkt)); v != xdpPass {
				t.Fatalf("mode %v, packet %d: verdict %d", cfg.HashMode, i, v)
			}
			if p.ledgerWord(b).Load() != before+1 || ledgerTotal(p) != total+1 {
				t.Errorf("mode %v, packet %d: the program did not count it in bucket %d", cfg.HashMode, i, b)
			}
		}
	}
}

// TestWaitPublished: the demux's fence on the fast path returns once the
// maps hold the snapshot it asks for (or a later one), and gives up at
// its limit.
func TestWaitPublished(t *testing.T) {
	cfg := Config{Key: testKey, Symmetric: true}
	p := loadTest(t, cfg)
	sel := newSelector(t, cfg, 1, 2, 3)
	if err := p.Publish(sel.Snapshot(), testTargets(1, 2, 3)); err != nil {
		t.Fatal(err)
	}
	v := sel.Snapshot().Version
	if !p.WaitPublished(v, time.Millisecond) || !p.WaitPublished(v-1, time.Millisecond) {
		t.Fatal("waited for a snapshot the maps hold")
	}
	start := time.Now()
	if p.WaitPublished(v+1, 20*time.Millisecond) {
		t.Fatal("a snapshot not published yet counted as published")
	}
	if waited := time.Since(start); waited < 20*time.Millisecond {
		t.Errorf("gave up after %v, before its limit", waited)
	}
	if err := sel.SetLanes([]flowhash.Lane{{ID: 1}, {ID: 2, State: flowhash.LaneDown}, {ID: 3}}); err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(10 * time.Millisecond)
		p.Publish(sel.Snapshot(), testTargets(1, 2, 3))
	}()
	if !p.WaitPublished(sel.Snapshot().Version, 5*time.Second) {
		t.Fatal("the publish did not end the wait")
	}
}
