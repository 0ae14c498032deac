package demux

import (
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/clusterpeer/clusterpeer/flowhash"
	"github.com/clusterpeer/clusterpeer/tunnel/probe"
)

// fakeProber records the lanes it is asked to probe.
type fakeProber struct {
	mu      sync.Mutex
	targets []probe.Target
	fail    bool
}

func (p *fakeProber) SetTargets(ts []probe.Target) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fail {
		return errors.New("no address of that family")
	}
	p.targets = ts
	return nil
}
func (p *fakeProber) Status() []probe.LaneHealth      { return nil }
func (p *fakeProber) Interval() time.Duration         { return 10 * time.Millisecond }
func (p *fakeProber) SignalCounts() map[string]uint64 { return nil }

func (p *fakeProber) DropCounts() map[string]uint64 { return nil }
func (p *fakeProber) lanes() (ids []flowhash.LaneID) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, t := range p.targets {
		ids = append(ids, t.Lane)
	}
	return ids
}

func specs(ids ...int) []LaneSpec {
	std := conn.NewStdNetBind()
	var s []LaneSpec
	for _, id := range ids {
		near := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, 0, byte(20 + id)}), 6081)
		ep, _ := std.ParseEndpoint(near.String())
		s = append(s, LaneSpec{ID: flowhash.LaneID(id), Weight: 1, Gateway: "gw", Near: near, Endpoint: ep,
			Far: netip.AddrFrom4([4]byte{10, 2, 0, byte(20 + id)})})
	}
	return s
}

func managedDemux(t *testing.T, p Prober) *Demux {
	t.Helper()
	d, _, _ := newTestDemux(t, 0)
	d.UseLanes(LaneConfig{Prober: p, DrainTimeout: time.Minute, DrainIdle: time.Second})
	return d
}

func states(d *Demux) map[flowhash.LaneID]LaneState {
	m := map[flowhash.LaneID]LaneState{}
	for _, l := range d.Status(Status{}).Lanes {
		m[l.ID] = l.State
	}
	return m
}

func selectorState(d *Demux, id flowhash.LaneID) flowhash.LaneState {
	for _, l := range d.cfg.Selector.Snapshot().Lanes {
		if l.ID == id {
			return l.State
		}
	}
	return 255
}

// flowsOn sends n flows once and returns each flow's lane.
func flowsOn(t *testing.T, d *Demux, n int) []flowhash.LaneID {
	lanes := make([]flowhash.LaneID, n)
	now := d.cfg.Selector.Pins().Now()
	for i := range n {
		lane, drop := d.cfg.Selector.Select(udp4(t, uint16(10000+i), 0, 100), now)
		if drop != flowhash.DropNone {
			lanes[i] = 0
			continue
		}
		lanes[i] = lane
	}
	return lanes
}

func TestLanesJoinOnlyWhenHealthy(t *testing.T) {
	p := &fakeProber{}
	d := managedDemux(t, p)
	if err := d.ApplyLanes(specs(1, 2, 3)); err != nil {
		t.Fatal(err)
	}
	if got := states(d); got[1] != "down" || got[2] != "down" || got[3] != "down" {
		t.Fatalf("before any probe: %v", got)
	}
	if got := p.lanes(); len(got) != 3 {
		t.Fatalf("probing %v", got)
	}
	if l := flowsOn(t, d, 1); l[0] != 0 {
		t.Fatalf("a flow took lane %d before any lane was up", l[0])
	}
	for id := flowhash.LaneID(1); id <= 3; id++ {
		d.LaneHealth(probe.Change{Lane: id, Up: true, Reason: "3 probes answered in a row"})
	}
	if got := states(d); got[1] != "up" || got[2] != "up" || got[3] != "up" {
		t.Fatalf("after probes: %v", got)
	}
}

// TestLaneDeathMovesOnlyItsFlows: the dead lane's flows move to the
// others; no other flow moves, then or when it comes back.
func TestLaneDeathMovesOnlyItsFlows(t *testing.T) {
	d := managedDemux(t, &fakeProber{})
	d.ApplyLanes(specs(1, 2, 3))
	for id := flowhash.LaneID(1); id <= 3; id++ {
		d.LaneHealth(probe.Change{Lane: id, Up: true, Reason: "up"})
	}
	before := flowsOn(t, d, 300)
	d.LaneHealth(probe.Change{Lane: 2, Up: false, Reason: "3 probes unanswered"})
	if s := selectorState(d, 2); s != flowhash.LaneDown {
		t.Fatalf("selector state of the dead lane: %v", s)
	}
	during := flowsOn(t, d, 300)
	moved := 0
	for i := range before {
		switch {
		case before[i] == 2 && during[i] == 2:
			t.Fatalf("flow %d still on the dead lane", i)
		case before[i] == 2:
			moved++
		case during[i] != before[i]:
			t.Fatalf("flow %d moved from live lane %d to %d", i, before[i], during[i])
		}
	}
	if moved == 0 {
		t.Fatal("no flow was on lane 2")
	}
	d.LaneHealth(probe.Change{Lane: 2, Up: true, Reason: "back"})
	after := flowsOn(t, d, 300)
	for i := range during {
		if after[i] != during[i] {
			t.Fatalf("flow %d moved when lane 2 came back: %d -> %d", i, during[i], after[i])
		}
	}
	var l2 LaneStatus
	for _, l := range d.Status(Status{}).Lanes {
		if l.ID == 2 {
			l2 = l
		}
	}
	if l2.State != "up" || l2.Failovers != 1 || l2.Transitions != 3 || l2.Reason != "back" {
		t.Errorf("lane 2 status %+v", l2)
	}
}

func TestDrainKeepsPinnedFlowsThenFinishes(t *testing.T) {
	d := managedDemux(t, nil) // health off: lanes are healthy at once
	d.ApplyLanes(specs(1, 2))
	before := flowsOn(t, d, 100)
	if err := d.Drain(2, 0); err != nil {
		t.Fatal(err)
	}
	if s := selectorState(d, 2); s != flowhash.LaneDraining {
		t.Fatalf("selector state %v, want draining", s)
	}
	during := flowsOn(t, d, 100)
	for i := range before {
		if during[i] != before[i] {
			t.Fatalf("flow %d moved on drain: %d -> %d", i, before[i], during[i])
		}
	}
	// A new flow avoids the draining lane.
	now := d.cfg.Selector.Pins().Now()
	for i := range 50 {
		if lane, _ := d.cfg.Selector.Select(udp4(t, uint16(30000+i), 0, 100), now); lane == 2 {
			t.Fatalf("new flow %d went to the draining lane", i)
		}
	}
	// Traffic keeps it draining; a second of silence finishes it.
	t0 := time.Now()
	d.TickLanes(t0)
	d.C.Lanes[2].Packets.Add(1)
	d.TickLanes(t0.Add(900 * time.Millisecond))
	if got := states(d)[2]; got != "draining" {
		t.Fatalf("with traffic: %s", got)
	}
	d.TickLanes(t0.Add(2 * time.Second))
	if got := states(d)[2]; got != "drained" {
		t.Fatalf("after a second idle: %s", got)
	}
	if s := selectorState(d, 2); s != flowhash.LaneDown {
		t.Fatalf("drained lane in the selector: %v", s)
	}
	if err := d.Undrain(2); err != nil || states(d)[2] != "up" {
		t.Fatalf("undrain: %v, %s", err, states(d)[2])
	}
	if err := d.Undrain(2); err == nil {
		t.Error("undrain of an active lane accepted")
	}
	if err := d.Drain(9, 0); err == nil {
		t.Error("drain of an unknown lane accepted")
	}
}

func TestDrainDeadline(t *testing.T) {
	d := managedDemux(t, nil)
	d.ApplyLanes(specs(1, 2))
	d.Drain(2, 5*time.Second)
	t0 := time.Now()
	for i := range 60 { // busy all along: only the deadline ends it
		d.C.Lanes[2].Packets.Add(1)
		d.TickLanes(t0.Add(time.Duration(i) * 100 * time.Millisecond))
	}
	if got := states(d)[2]; got != "drained" {
		t.Fatalf("after the deadline: %s", got)
	}
}

func TestApplyLanesAddsAndRemoves(t *testing.T) {
	p := &fakeProber{}
	d := managedDemux(t, p)
	d.ApplyLanes(specs(1, 2))
	d.LaneHealth(probe.Change{Lane: 1, Up: true, Reason: "up"})
	d.LaneHealth(probe.Change{Lane: 2, Up: true, Reason: "up"})
	before := flowsOn(t, d, 200)

	// Adding lane 3 moves no established flow, before or after it is up.
	if err := d.ApplyLanes(specs(1, 2, 3)); err != nil {
		t.Fatal(err)
	}
	d.LaneHealth(probe.Change{Lane: 3, Up: true, Reason: "up"})
	after := flowsOn(t, d, 200)
	for i := range before {
		if after[i] != before[i] {
			t.Fatalf("flow %d moved when lane 3 was added: %d -> %d", i, before[i], after[i])
		}
	}
	// Removing lane 1 drains it first, then forgets it (and stops probing).
	if err := d.ApplyLanes(specs(2, 3)); err != nil {
		t.Fatal(err)
	}
	if got := states(d)[1]; got != "removing" {
		t.Fatalf("removed lane: %s", got)
	}
	t0 := time.Now()
	d.TickLanes(t0)
	d.TickLanes(t0.Add(2 * time.Second))
	if _, ok := states(d)[1]; ok {
		t.Fatalf("lane 1 still listed: %v", states(d))
	}
	if got := p.lanes(); len(got) != 2 || got[0] != 2 {
		t.Fatalf("still probing %v", got)
	}

	// A change the prober refuses is rejected whole.
	p.fail = true
	if err := d.ApplyLanes(specs(2, 3, 4)); err == nil {
		t.Fatal("accepted")
	}
	if got := states(d); len(got) != 2 {
		t.Fatalf("after a rejected change: %v", got)
	}
	if err := d.ApplyLanes(append(specs(2, 3), specs(3)...)); err == nil {
		t.Fatal("a lane listed twice was accepted")
	}
}
