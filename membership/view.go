package membership

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clusterpeer/clusterpeer/config"
)

// Member is a registration a View holds.
type Member struct {
	Record
	Key   string    `json:"key"`
	Seen  time.Time `json:"seen"` // when this node first took this registration (this lease)
	Lost  bool      `json:"lost"` // its lease ended without a planned stop; kept while its lane works
	Lease int64     `json:"-"`
}

// Slot names a registration: a side's lane slot.
type Slot struct {
	Side config.Side
	Slot int
}

// View is the peering's registrations as this node knows them: loaded,
// then kept current by a watch, every record verified before it counts.
// What it held when the store went away it keeps.
type View struct {
	s         *Store
	p         *config.Peering
	fileSlots map[int]bool
	onChange  func()
	log       *slog.Logger

	mu      sync.Mutex
	members map[Slot]*Member
	serials map[int64]uint64 // per lease, the highest serial taken
	rev     int64

	Events  struct{ Puts, Deletes, Resyncs atomic.Uint64 }
	rejects sync.Map // Reject -> *atomic.Uint64
}

// View starts following the store's registrations; onChange is called
// (from the view's goroutine) after each change. Slots that are lanes of
// p's file are not the store's to fill (a record for one is refused).
func (s *Store) View(p *config.Peering, onChange func()) *View {
	v := &View{s: s, p: p, fileSlots: map[int]bool{}, onChange: onChange, log: s.log,
		members: map[Slot]*Member{}, serials: map[int64]uint64{}}
	for _, l := range p.Lanes {
		v.fileSlots[l.ID] = true
	}
	for _, r := range Rejects {
		v.rejects.Store(r, new(atomic.Uint64))
	}
	return v
}

// Run loads the registrations and watches them until ctx ends. Each time
// the watch ends (the store gone, its history compacted past where the
// watch was) it loads them again, with back-off, and resumes.
func (v *View) Run(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		if err := v.load(ctx); err != nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		v.watch(ctx)
	}
}

// load reads every registration at one revision and makes the view that.
func (v *View) load(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, healthTimeout)
	defer cancel()
	resp, err := v.s.cli.Get(ctx, v.s.keys.Gateways(), clientv3.WithPrefix())
	if err != nil {
		return err
	}
	v.mu.Lock()
	present := map[Slot]bool{}
	changed := false
	for _, kv := range resp.Kvs {
		if sl, ok := v.putLocked(kv); ok {
			present[sl] = true
			changed = true
		} else if side, slot, ok := v.s.keys.Parse(string(kv.Key)); ok {
			present[Slot{side, slot}] = v.members[Slot{side, slot}] != nil
		}
	}
	for sl := range v.members {
		if !present[sl] {
			changed = v.deleteLocked(sl) || changed
		}
	}
	resync := v.rev != 0
	v.rev = resp.Header.Revision
	v.mu.Unlock()
	if resync {
		v.Events.Resyncs.Add(1)
	}
	if changed && v.onChange != nil {
		v.onChange()
	}
	return nil
}

// watch follows changes from the loaded revision on, until the watch
// ends. WithRequireLeader: a member cut off from its cluster's leader
// ends the watch, so the view reloads through a member that has one.
func (v *View) watch(ctx context.Context) {
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	v.mu.Lock()
	from := v.rev + 1
	v.mu.Unlock()
	for resp := range v.s.cli.Watch(ctx, v.s.keys.Gateways(), clientv3.WithPrefix(), clientv3.WithRev(from)) {
		if err := resp.Err(); err != nil {
			if !errors.Is(err, rpctypes.ErrCompacted) && ctx.Err() == nil {
				v.log.Debug("store watch ended; reloading", "err", err)
			}
			return
		}
		changed := false
		v.mu.Lock()
		for _, ev := range resp.Events {
			switch ev.Type {
			case mvccpb.PUT:
				v.Events.Puts.Add(1)
				_, ok := v.putLocked(ev.Kv)
				changed = changed || ok
			case mvccpb.DELETE:
				v.Events.Deletes.Add(1)
				if side, slot, ok := v.s.keys.Parse(string(ev.Kv.Key)); ok {
					changed = v.deleteLocked(Slot{side, slot}) || changed
				}
			}
		}
		v.rev = resp.Header.Revision
		v.mu.Unlock()
		if changed && v.onChange != nil {
			v.onChange()
		}
	}
}

// putLocked takes a stored registration if it verifies; it reports the
// slot and whether the view changed.
func (v *View) putLocked(kv *mvccpb.KeyValue) (Slot, bool) {
	r, err := Open(kv.Value, v.s.verify)
	if err == nil {
		err = v.s.keys.Check(string(kv.Key), kv.Lease, r)
	}
	if err == nil && v.fileSlots[r.Slot] {
		err = reject(RejectFileSlot, "slot %d is a lane of the file", r.Slot)
	}
	if err == nil && !v.p.GenevePrefixOK(r.Side, r.Gateway().Geneve.Addr()) {
		err = reject(RejectInvalid, "geneve %s is outside networks.%s.prefixes", r.Geneve, r.Side)
	}
	if err == nil && r.Serial < v.serials[r.Lease] {
		err = reject(RejectStale, "serial %d of lease %x, %d already taken", r.Serial, r.Lease, v.serials[r.Lease])
	}
	if err != nil {
		v.refuse(string(kv.Key), err)
		return Slot{}, false
	}
	v.serials[r.Lease] = r.Serial
	sl := Slot{r.Side, r.Slot}
	old := v.members[sl]
	if old != nil && old.Lease == kv.Lease && old.Record == r && !old.Lost {
		return sl, false
	}
	m := &Member{Record: r, Key: string(kv.Key), Lease: kv.Lease, Seen: time.Now()}
	if old != nil && old.Lease == kv.Lease {
		m.Seen = old.Seen
	}
	v.members[sl] = m
	if old == nil || old.Lease != m.Lease {
		v.log.Info("gateway registered", "side", r.Side, "slot", r.Slot, "name", r.Name, "endpoint", r.Endpoint, "geneve", r.Geneve, "state", r.State)
	} else if old.State != r.State {
		v.log.Info("gateway "+string(r.State), "side", r.Side, "slot", r.Slot, "name", r.Name)
	}
	return sl, true
}

// deleteLocked: a registration that said it was leaving goes; one whose
// lease just ended (the gateway gone, or only cut off from the store)
// stays, marked lost, until Forget: its lane's health decides.
func (v *View) deleteLocked(sl Slot) bool {
	m := v.members[sl]
	if m == nil || m.Lost {
		return false
	}
	if m.State == StateLeaving {
		delete(v.members, sl)
		v.log.Info("gateway left", "side", sl.Side, "slot", sl.Slot, "name", m.Name)
		return true
	}
	m.Lost = true
	v.log.Warn("gateway's registration ended without a planned stop; its lane stays while its probes answer", "side", sl.Side, "slot", sl.Slot, "name", m.Name)
	return true
}

func (v *View) refuse(key string, err error) {
	r := ReasonOf(err)
	if c, ok := v.rejects.Load(r); ok {
		c.(*atomic.Uint64).Add(1)
	}
	v.log.Warn("store record refused", "key", key, "reason", r, "err", err)
}

// Rejected counts refused records by reason.
func (v *View) Rejected() map[Reject]uint64 {
	out := map[Reject]uint64{}
	v.rejects.Range(func(k, c any) bool {
		out[k.(Reject)] = c.(*atomic.Uint64).Load()
		return true
	})
	return out
}

// Forget drops a lost registration (its lane is down). It reports
// whether there was one.
func (v *View) Forget(sl Slot) bool {
	v.mu.Lock()
	m := v.members[sl]
	gone := m != nil && m.Lost
	if gone {
		delete(v.members, sl)
		v.log.Info("lost gateway forgotten: its lane is down", "side", sl.Side, "slot", sl.Slot, "name", m.Name)
	}
	v.mu.Unlock()
	if gone && v.onChange != nil {
		v.onChange()
	}
	return gone
}

// Members lists the registrations held, by side and slot.
func (v *View) Members() []Member {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make([]Member, 0, len(v.members))
	for _, m := range v.members {
		out = append(out, *m)
	}
	slices.SortFunc(out, func(a, b Member) int {
		return cmp.Or(cmp.Compare(a.Side, b.Side), cmp.Compare(a.Slot, b.Slot))
	})
	return out
}

// Member is one slot's registration, if the view holds one.
func (v *View) Member(sl Slot) (Member, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	m := v.members[sl]
	if m == nil {
		return Member{}, false
	}
	return *m, true
}

// Lanes are the slots with a registered gateway on both sides, neither
// leaving: each is a lane, of the smaller of the two weights (both
// demuxes compute the same).
func (v *View) Lanes() []config.Lane {
	v.mu.Lock()
	defer v.mu.Unlock()
	var out []config.Lane
	for sl, a := range v.members {
		if sl.Side != config.SideA {
			continue
		}
		b := v.members[Slot{config.SideB, sl.Slot}]
		if b == nil || a.State == StateLeaving || b.State == StateLeaving {
			continue
		}
		out = append(out, config.Lane{ID: sl.Slot, Weight: min(a.Weight, b.Weight), A: a.Gateway(), B: b.Gateway()})
	}
	slices.SortFunc(out, func(x, y config.Lane) int { return cmp.Compare(x.ID, y.ID) })
	return out
}

// Listing is one stored value under the peering's registrations, as a
// reader judges it: the record, or why it is refused.
type Listing struct {
	Key     string        `json:"key"`
	Record  *Record       `json:"record,omitempty"`
	TTL     time.Duration `json:"ttl_ns"` // left on its lease (0: none, or expired)
	Refused string        `json:"refused,omitempty"`
}

// List reads every registration once, verified as a view would (without
// the history a view keeps, so an old record replayed under its own
// lease is not told apart here).
func (s *Store) List(ctx context.Context, p *config.Peering) ([]Listing, error) {
	resp, err := s.cli.Get(ctx, s.keys.Gateways(), clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	v := s.View(p, nil)
	var out []Listing
	for _, kv := range resp.Kvs {
		l := Listing{Key: string(kv.Key)}
		r, err := Open(kv.Value, s.verify)
		if err == nil {
			err = s.keys.Check(l.Key, kv.Lease, r)
		}
		if err == nil && v.fileSlots[r.Slot] {
			err = reject(RejectFileSlot, "slot %d is a lane of the file", r.Slot)
		}
		if err != nil {
			l.Refused = err.Error()
		} else {
			l.Record = &r
		}
		if kv.Lease != 0 {
			if ttl, err := s.cli.TimeToLive(ctx, clientv3.LeaseID(kv.Lease)); err == nil && ttl.TTL > 0 {
				l.TTL = time.Duration(ttl.TTL) * time.Second
			}
		}
		out = append(out, l)
	}
	return out, nil
}
