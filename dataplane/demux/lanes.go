package demux

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/clusterpeer/clusterpeer/dataplane/geneveauth"
	"github.com/clusterpeer/clusterpeer/flowhash"
	"github.com/clusterpeer/clusterpeer/tunnel/probe"
)

// LaneSpec is a lane as the config describes it.
type LaneSpec struct {
	ID       flowhash.LaneID
	Weight   uint32
	Gateway  string         // the local gateway's node name
	Near     netip.AddrPort // its GENEVE address
	Endpoint conn.Endpoint  // the same, for the bind
	Far      netip.Addr     // the remote gateway's address: its probe reflector
	Source   string         // where the lane came from ("file", "store"), for operators
	// Seal, if set, seals the lane's frames and probes (one per lane for
	// the process's life: its counter must not start over).
	Seal *geneveauth.Sealer
}

// Admin is what the operator asked of a lane.
type Admin uint8

const (
	AdminActive   Admin = iota
	AdminDraining       // no new flows; pinned flows stay until idle or the deadline
	AdminDrained        // drained: carries nothing until undrained or removed
	AdminRemoving       // left the config: draining, then forgotten
)

var adminNames = [...]string{"active", "draining", "drained", "removing"}

func (a Admin) String() string { return adminNames[a] }

// LaneState is a lane as status and metrics show it: an active lane is
// up or down by its health; otherwise its admin state names it.
type LaneState string

const (
	LaneUp       LaneState = "up"
	LaneDown     LaneState = "down"
	LaneDraining LaneState = "draining"
	LaneDrained  LaneState = "drained"
	LaneRemoving LaneState = "removing"
)

var laneStates = []LaneState{LaneUp, LaneDown, LaneDraining, LaneDrained, LaneRemoving}

func (mb *member) shown() LaneState {
	switch {
	case mb.admin == AdminActive && mb.healthy:
		return LaneUp
	case mb.admin == AdminActive:
		return LaneDown
	}
	return LaneState(mb.admin.String())
}

// Prober is the lane health checker (tunnel/probe.Prober).
type Prober interface {
	SetTargets([]probe.Target) error
	Status() []probe.LaneHealth
	Interval() time.Duration
	DropCounts() map[string]uint64
	SignalCounts() map[string]uint64
}

// LaneConfig configures how the demux manages lanes.
type LaneConfig struct {
	Prober       Prober        // nil: no health checks, every lane counts as healthy
	DrainTimeout time.Duration // pinned flows of a draining lane move after this
	DrainIdle    time.Duration // a draining lane that carried nothing this long is done
	// OnPublish is called after every change of the lane set (with the
	// lanes' lock held: it must not block), e.g. to wake the XDP sync.
	OnPublish func()
	// FastPathPackets is what another path (XDP) sent into a lane, counted
	// with the demux's own when judging whether a draining lane is idle.
	FastPathPackets func(flowhash.LaneID) uint64
	// FastPathFence waits, at most limit, until another path (XDP) has
	// the lane set of now, so that it sends nothing more into a lane
	// that just failed; false if it did not in time. Like the loops'
	// fence: the probe whose reply ends a settle window must leave
	// behind what that path sent into the lane too.
	FastPathFence func(limit time.Duration) bool
}

// member is one lane's admin and health state; guarded by lanes.mu.
type member struct {
	spec     LaneSpec
	admin    Admin
	healthy  bool
	deadline time.Time // of a drain
	packets  uint64    // the lane's packet counter when last looked at
	idle     time.Time // since when it has carried nothing

	state       LaneState // as shown
	since       time.Time
	transitions uint64
	failovers   uint64 // times it left the table because it died
	reason      string
	settle      time.Duration // for the publish in which it fails: how long its flows wait
}

// lanes is the demux's lane set: config, operator and health decide each
// lane's selector state; every change is one new selector snapshot.
type lanes struct {
	mu       sync.Mutex
	cfg      LaneConfig
	members  map[flowhash.LaneID]*member
	lastSwap time.Duration // the selector's part of the last health publish
}

func (m *lanes) prober() Prober {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cfg.Prober
}

// UseLanes sets how lanes are managed; call before ApplyLanes.
func (d *Demux) UseLanes(cfg LaneConfig) {
	d.lanes.mu.Lock()
	defer d.lanes.mu.Unlock()
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = time.Minute
	}
	if cfg.DrainIdle <= 0 {
		cfg.DrainIdle = 2 * time.Second
	}
	d.lanes.cfg = cfg
}

// ApplyLanes makes the configured lanes specs. New lanes join once healthy
// (pinned flows stay where they are, so adding moves no established flow);
// lanes left out are drained, then forgotten; changed weights and
// addresses apply at once. It checks everything first and changes nothing
// on error.
func (d *Demux) ApplyLanes(specs []LaneSpec) error {
	m := &d.lanes
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	next := make(map[flowhash.LaneID]*member, len(specs))
	for id, old := range m.members {
		c := *old
		next[id] = &c
	}
	seen := map[flowhash.LaneID]bool{}
	for _, s := range specs {
		if seen[s.ID] {
			return fmt.Errorf("lane %d listed twice", s.ID)
		}
		seen[s.ID] = true
		if old := next[s.ID]; old != nil {
			old.spec = s
			if old.admin == AdminRemoving {
				old.admin = AdminActive
				old.reason = "back in the config"
			}
			continue
		}
		next[s.ID] = &member{spec: s, healthy: m.cfg.Prober == nil, since: now, reason: "added"}
	}
	for id, mb := range next {
		if seen[id] {
			continue
		}
		switch mb.admin {
		case AdminActive, AdminDraining:
			mb.admin, mb.deadline, mb.idle = AdminRemoving, now.Add(m.cfg.DrainTimeout), time.Time{}
			mb.reason = "removed from the config: draining"
		case AdminDrained:
			delete(next, id)
		}
	}
	if err := d.publish(next, now, true); err != nil {
		return err
	}
	for id := range seen {
		if m.members == nil || m.members[id] == nil {
			d.cfg.Log.Info("lane added", "lane", id, "gateway", next[id].spec.Gateway, "state", next[id].state)
		}
	}
	m.members = next
	return nil
}

// publish computes every lane's selector state from next and installs it
// (with the targets and, if probes changed, the prober's lanes). Called
// with mu held; on error nothing changed.
func (d *Demux) publish(next map[flowhash.LaneID]*member, now time.Time, probes bool) error {
	m := &d.lanes
	ids := make([]flowhash.LaneID, 0, len(next))
	for id := range next {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	sel := make([]flowhash.Lane, 0, len(ids))
	targets := make([]Target, 0, len(ids))
	probeTargets := make([]probe.Target, 0, len(ids))
	for _, id := range ids {
		mb := next[id]
		st := flowhash.LaneDown
		switch {
		case mb.healthy && mb.admin == AdminActive:
			st = flowhash.LaneUp
		case mb.healthy && (mb.admin == AdminDraining || mb.admin == AdminRemoving):
			st = flowhash.LaneDraining
		}
		sel = append(sel, flowhash.Lane{ID: id, Weight: mb.spec.Weight, State: st, Settle: mb.settle})
		targets = append(targets, Target{ID: id, Name: mb.spec.Gateway, Endpoint: mb.spec.Endpoint, Addr: mb.spec.Near, Seal: mb.spec.Seal})
		probeTargets = append(probeTargets, probe.Target{Lane: id, Near: mb.spec.Near, Far: mb.spec.Far, Seal: mb.spec.Seal})
	}
	if probes && m.cfg.Prober != nil {
		old := m.cfg.Prober.Status()
		if err := m.cfg.Prober.SetTargets(probeTargets); err != nil {
			return err
		}
		if err := d.cfg.Selector.SetLanes(sel); err != nil {
			// Put the prober's lanes back as they were.
			var back []probe.Target
			for _, h := range old {
				if mb := m.members[h.Lane]; mb != nil {
					back = append(back, probe.Target{Lane: h.Lane, Near: mb.spec.Near, Far: mb.spec.Far, Seal: mb.spec.Seal})
				}
			}
			m.cfg.Prober.SetTargets(back)
			return err
		}
	} else {
		start := time.Now()
		if err := d.cfg.Selector.SetLanes(sel); err != nil {
			return err
		}
		m.lastSwap = time.Since(start)
	}
	d.SetTargets(targets)
	if m.cfg.OnPublish != nil {
		m.cfg.OnPublish()
	}
	for _, id := range ids {
		mb := next[id]
		state := mb.shown()
		if state != mb.state {
			if mb.state != "" {
				mb.transitions++
			}
			if mb.state == LaneUp && state == LaneDown {
				mb.failovers++
			}
			mb.state, mb.since = state, now
		}
	}
	return nil
}

// LaneHealth records a probe verdict (the prober's OnChange). A lane that
// dies leaves the table at once (a prebuilt table: one pointer store) and
// its pins are void, so its flows move to the lanes that are up, after
// the lane's settle window, during which their packets are held; no
// other flow moves. A lane that comes back rejoins; flows pinned
// elsewhere stay there.
func (d *Demux) LaneHealth(c probe.Change) {
	m := &d.lanes
	m.mu.Lock()
	defer m.mu.Unlock()
	mb := m.members[c.Lane]
	if mb == nil || mb.healthy == c.Up {
		return
	}
	mb.healthy, mb.reason = c.Up, c.Reason
	wasUp := mb.state == LaneUp
	if !c.Up && wasUp {
		mb.settle = c.Settle
	}
	start := time.Now()
	err := d.publish(m.members, start, false)
	total := time.Since(start)
	mb.settle = 0
	if err != nil {
		d.cfg.Log.Error("lane state not applied", "lane", c.Lane, "err", err)
		return
	}
	args := []any{"lane", c.Lane, "gateway", mb.spec.Gateway, "reason", c.Reason,
		"table_swap", m.lastSwap.Round(time.Microsecond), "publish", total.Round(time.Microsecond)}
	lvl := slog.LevelInfo
	if !c.Up {
		lvl = slog.LevelWarn
		detected := "signal"
		if c.ByTimeout {
			detected = "timeout"
		}
		args = append(args, "detected", detected)
		if wasUp && c.Settle > 0 {
			args = append(args, "settle", c.Settle.Round(10*time.Microsecond))
			d.settleTimer(c.Settle)
			// The prober probes the lane when this returns; what the
			// loops gave the lane before must be sent first.
			if c.Delivers && !d.fence(c.Settle) {
				args = append(args, "fence", "timed out: a loop stalled inside a batch")
			}
			if c.Delivers && m.cfg.FastPathFence != nil && !m.cfg.FastPathFence(c.Settle) {
				args = append(args, "fast_path_fence", "timed out: the XDP maps were not updated")
			}
		}
	}
	d.cfg.Log.Log(context.Background(), lvl, "lane "+string(mb.state), args...)
}

// Drain stops new flows to lane id; its pinned flows stay until the lane
// has been idle for the drain idle time or until the deadline (0: the
// configured drain timeout), then they move and the lane is drained.
func (d *Demux) Drain(id flowhash.LaneID, deadline time.Duration) error {
	m := &d.lanes
	m.mu.Lock()
	defer m.mu.Unlock()
	mb := m.members[id]
	if mb == nil {
		return fmt.Errorf("lane %d: no such lane", id)
	}
	if mb.admin == AdminRemoving {
		return fmt.Errorf("lane %d: already being removed", id)
	}
	if deadline <= 0 {
		deadline = m.cfg.DrainTimeout
	}
	now := time.Now()
	mb.admin, mb.deadline, mb.idle = AdminDraining, now.Add(deadline), time.Time{}
	mb.reason = fmt.Sprintf("drain requested (deadline %s)", deadline)
	if err := d.publish(m.members, now, false); err != nil {
		return err
	}
	d.cfg.Log.Info("lane draining", "lane", id, "gateway", mb.spec.Gateway, "deadline", deadline)
	return nil
}

// Undrain returns a draining or drained lane to service.
func (d *Demux) Undrain(id flowhash.LaneID) error {
	m := &d.lanes
	m.mu.Lock()
	defer m.mu.Unlock()
	mb := m.members[id]
	if mb == nil {
		return fmt.Errorf("lane %d: no such lane", id)
	}
	if mb.admin != AdminDraining && mb.admin != AdminDrained {
		return fmt.Errorf("lane %d: %s, not draining", id, mb.admin)
	}
	mb.admin, mb.reason = AdminActive, "undrained"
	if err := d.publish(m.members, time.Now(), false); err != nil {
		return err
	}
	d.cfg.Log.Info("lane undrained", "lane", id, "gateway", mb.spec.Gateway, "state", mb.state)
	return nil
}

// pinSweepTicks: at 10 ticks a second, an idle pin leaves the count
// within about 3 s of its idle timeout.
const pinSweepTicks = 32

// TickLanes finishes drains: a draining lane whose traffic stopped for the
// idle time, or whose deadline passed, is drained (its remaining pins
// move); a removed lane is then forgotten. It also sweeps a slice of the
// pin table (all of it every pinSweepTicks calls), which keeps the pinned
// flow count current. Call it a few times a second.
func (d *Demux) TickLanes(now time.Time) {
	pins := d.cfg.Selector.Pins()
	pins.Sweep(pins.Now(), max(1, pins.Buckets()/pinSweepTicks))
	m := &d.lanes
	m.mu.Lock()
	defer m.mu.Unlock()
	changed, forget := false, false
	for id, mb := range m.members {
		if mb.admin != AdminDraining && mb.admin != AdminRemoving {
			continue
		}
		n := d.C.Lanes[id].Packets.Load()
		if m.cfg.FastPathPackets != nil {
			n += m.cfg.FastPathPackets(id)
		}
		if n != mb.packets || mb.idle.IsZero() {
			mb.packets, mb.idle = n, now
		}
		var why string
		switch {
		case now.Sub(mb.idle) >= m.cfg.DrainIdle:
			why = fmt.Sprintf("idle for %s", m.cfg.DrainIdle)
		case !now.Before(mb.deadline):
			why = "drain deadline passed; its remaining flows move"
		default:
			continue
		}
		changed = true
		if mb.admin == AdminRemoving {
			forget = true
			d.cfg.Log.Info("lane removed", "lane", id, "gateway", mb.spec.Gateway, "reason", why)
			delete(m.members, id)
			continue
		}
		mb.admin, mb.reason = AdminDrained, "drained: "+why
		d.cfg.Log.Info("lane drained", "lane", id, "gateway", mb.spec.Gateway, "reason", why)
	}
	if changed {
		if err := d.publish(m.members, now, forget); err != nil {
			d.cfg.Log.Error("lane drain not applied", "err", err)
		}
	}
}

// LaneStates is each lane's state, as Status shows it (cheaply: no
// counters).
func (d *Demux) LaneStates() map[flowhash.LaneID]LaneState {
	m := &d.lanes
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[flowhash.LaneID]LaneState, len(m.members))
	for id, mb := range m.members {
		out[id] = mb.state
	}
	return out
}

// laneStatus fills the admin and health part of each lane's status.
func (d *Demux) laneStatus(out []LaneStatus) []LaneStatus {
	m := &d.lanes
	var probes []probe.LaneHealth
	if m.cfg.Prober != nil {
		probes = m.cfg.Prober.Status()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	ids := make([]flowhash.LaneID, 0, len(m.members))
	for id := range m.members {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		mb := m.members[id]
		ls := LaneStatus{
			ID: id, State: mb.state, Admin: mb.admin.String(), Healthy: mb.healthy, Weight: mb.spec.Weight,
			Gateway: mb.spec.Gateway, Address: mb.spec.Near.String(), Source: mb.spec.Source,
			Since: mb.since, Transitions: mb.transitions, Failovers: mb.failovers, Reason: mb.reason,
		}
		if mb.admin == AdminDraining || mb.admin == AdminRemoving {
			ls.DrainDeadline = mb.deadline
		}
		for i := range probes {
			if probes[i].Lane == id {
				ls.Probes = &probes[i].SessionStatus
			}
		}
		out = append(out, ls)
	}
	return out
}
