package membership

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clusterpeer/clusterpeer/config"
)

// Registration is this gateway's record in the store, kept alive: when
// its lease is lost (the store was unreachable for longer than the TTL)
// it registers again in the same slot as soon as the store answers.
type Registration struct {
	s *Store

	mu     sync.Mutex
	rec    Record
	lease  clientv3.LeaseID
	cancel context.CancelFunc
	done   chan struct{}
}

// ErrNoSlot says every slot of the side is taken.
var ErrNoSlot = errors.New("no free slot")

// ErrSlotTaken says the slot is held by another gateway.
var ErrSlotTaken = errors.New("slot taken by another gateway")

// Register puts j in the store: in j.Slot if set (the newest registration
// of a slot wins: that is how a replacement instance takes its slot at
// once, without waiting for the old lease to end), else in the lowest
// slot of its side that neither the file nor a registration uses, claimed
// in a transaction (of two gateways racing for one slot, one wins and the
// other takes the next). It waits for the store up to ctx's deadline.
func (s *Store) Register(ctx context.Context, p *config.Peering, j config.Joining) (*Registration, error) {
	if s.sign == nil {
		return nil, fmt.Errorf("%s: discovery.etcd.enrolment_key_file is not set; a gateway signs its registration with it", p.Path)
	}
	r := &Registration{s: s, rec: Record{
		Peering: s.keys.Peering, Side: j.Side, Slot: j.Slot, Name: j.Gateway.Name, State: StateUp,
		PublicKey: j.Gateway.PublicKey, Endpoint: j.Gateway.Endpoint.String(), Geneve: j.Gateway.Geneve.String(),
		Weight: j.Weight,
	}}
	file := map[int]bool{}
	for _, l := range p.Lanes {
		file[l.ID] = true
	}
	if err := r.claim(ctx, file); err != nil {
		return nil, err
	}
	kctx, cancel := context.WithCancel(context.Background())
	r.cancel, r.done = cancel, make(chan struct{})
	go r.keep(kctx)
	return r, nil
}

// claim grants a lease and puts the record in its slot, or in the lowest
// free one.
func (r *Registration) claim(ctx context.Context, file map[int]bool) error {
	if err := r.grant(ctx); err != nil {
		return err
	}
	if r.rec.Slot != 0 {
		return retry(ctx, r.put)
	}
	for range config.MaxSlot {
		var resp *clientv3.GetResponse
		err := retry(ctx, func(ctx context.Context) (err error) {
			resp, err = r.s.cli.Get(ctx, r.s.keys.Side(r.rec.Side), clientv3.WithPrefix(), clientv3.WithKeysOnly())
			return err
		})
		if err != nil {
			return fmt.Errorf("etcd: %w", err)
		}
		used := map[int]bool{}
		for _, kv := range resp.Kvs {
			if _, slot, ok := r.s.keys.Parse(string(kv.Key)); ok {
				used[slot] = true
			}
		}
		slot := 0
		for n := 1; n <= config.MaxSlot; n++ {
			if !used[n] && !file[n] {
				slot = n
				break
			}
		}
		if slot == 0 {
			return fmt.Errorf("side %s: %w (%d)", r.rec.Side, ErrNoSlot, config.MaxSlot)
		}
		r.rec.Slot = slot
		val, err := Seal(r.rec, r.s.sign)
		if err != nil {
			return err
		}
		key := r.s.keys.Slot(r.rec.Side, slot)
		won := false
		err = retry(ctx, func(ctx context.Context) error {
			t, err := r.s.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
				Then(clientv3.OpPut(key, string(val), clientv3.WithLease(r.lease))).
				Else(clientv3.OpGet(key)).Commit()
			if err != nil {
				return err
			}
			// A retried transaction may find the put of an attempt whose
			// answer was lost: the slot is ours if it is under our lease.
			won = t.Succeeded || (len(t.Responses) == 1 && len(t.Responses[0].GetResponseRange().Kvs) == 1 &&
				t.Responses[0].GetResponseRange().Kvs[0].Lease == int64(r.lease))
			return nil
		})
		if err != nil {
			return fmt.Errorf("etcd: %w", err)
		}
		if won {
			return nil
		}
		r.rec.Slot = 0 // lost the race for it; look again
	}
	return fmt.Errorf("side %s: %w after %d tries", r.rec.Side, ErrNoSlot, config.MaxSlot)
}

// grant takes a new lease for the record.
func (r *Registration) grant(ctx context.Context) error {
	var lease *clientv3.LeaseGrantResponse
	err := retry(ctx, func(ctx context.Context) (err error) {
		lease, err = r.s.cli.Grant(ctx, int64(r.s.ttl/time.Second))
		return err
	})
	if err != nil {
		return fmt.Errorf("etcd lease: %w", err)
	}
	r.lease = lease.ID
	r.rec.Lease, r.rec.Serial = int64(lease.ID), 1
	return nil
}

// retry runs an etcd call with a timeout per attempt, until it succeeds
// or ctx ends: a call in flight when a cluster's leader dies is never
// answered (measured: a lease grant then waits out its whole deadline),
// while the next one, a few milliseconds later, goes through.
func retry(ctx context.Context, call func(context.Context) error) error {
	for {
		actx, cancel := context.WithTimeout(ctx, healthTimeout)
		err := call(actx)
		cancel()
		if err == nil || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// put writes the record (a new serial each time) under the lease.
func (r *Registration) put(ctx context.Context) error {
	r.rec.Issued = time.Now().UTC().Truncate(time.Millisecond)
	val, err := Seal(r.rec, r.s.sign)
	if err != nil {
		return err
	}
	if _, err := r.s.cli.Put(ctx, r.s.keys.Slot(r.rec.Side, r.rec.Slot), string(val), clientv3.WithLease(r.lease)); err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	return nil
}

// keep renews the lease; when it is lost, it registers the same slot
// again once the store answers, unless another gateway holds it now.
func (r *Registration) keep(ctx context.Context) {
	defer close(r.done)
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		r.mu.Lock()
		lease := r.lease
		r.mu.Unlock()
		if lease != 0 {
			ch, err := r.s.cli.KeepAlive(ctx, lease)
			if err == nil {
				for range ch {
					backoff = 100 * time.Millisecond
				}
			}
			if ctx.Err() != nil {
				return
			}
			r.s.log.Warn("registration's lease lost; registering again when the store answers", "slot", r.rec.Slot, "err", err)
			r.mu.Lock()
			r.lease = 0
			r.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
		if err := r.again(ctx); err != nil {
			if errors.Is(err, ErrSlotTaken) {
				r.s.log.Error("not registering again", "err", err)
				return
			}
			continue
		}
		r.s.log.Info("registered again", "side", r.rec.Side, "slot", r.rec.Slot)
	}
}

// again registers in the slot held before, if it is free or still holds
// this gateway's own record.
func (r *Registration) again(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*healthTimeout)
	defer cancel()
	r.mu.Lock()
	defer r.mu.Unlock()
	key := r.s.keys.Slot(r.rec.Side, r.rec.Slot)
	resp, err := r.s.cli.Get(ctx, key)
	if err != nil {
		return err
	}
	if len(resp.Kvs) > 0 {
		if other, err := Open(resp.Kvs[0].Value, r.s.verify); err == nil && other.PublicKey != r.rec.PublicKey {
			return fmt.Errorf("side %s slot %d: %w (%s)", r.rec.Side, r.rec.Slot, ErrSlotTaken, other.Name)
		}
	}
	if err := r.grant(ctx); err != nil {
		return err
	}
	return r.put(ctx)
}

// Record is what is registered now.
func (r *Registration) Record() Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rec
}

// SetWeight changes the registered weight: the demuxes apply it live.
func (r *Registration) SetWeight(ctx context.Context, w uint32) error {
	if w < 1 || w > 1000 {
		return fmt.Errorf("weight %d: want 1..1000", w)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.lease == 0 {
		return errors.New("not registered now (the store is unreachable); try again")
	}
	old := r.rec
	r.rec.Weight = w
	r.rec.Serial++
	if err := retry(ctx, r.put); err != nil {
		r.rec = old
		return err
	}
	return nil
}

// Mine says whether m is this gateway's registration: its public key,
// under whichever lease (while it registers again after the store was
// gone, the view may still hold the record of its previous lease). A
// replacement instance has a key of its own.
func (r *Registration) Mine(m Member) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return m.PublicKey == r.rec.PublicKey
}

// Leave is a planned stop: the record says "leaving" first (the demuxes
// drain the lane), then the lease is revoked and the record is gone.
func (r *Registration) Leave(ctx context.Context) error {
	r.cancel()
	<-r.done
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.lease == 0 {
		return nil
	}
	r.rec.State = StateLeaving
	r.rec.Serial++
	err := retry(ctx, r.put)
	if rerr := retry(ctx, func(ctx context.Context) error { _, err := r.s.cli.Revoke(ctx, r.lease); return err }); err == nil && rerr != nil {
		err = fmt.Errorf("etcd revoke: %w", rerr)
	}
	r.lease = 0
	return err
}

// Close stops renewing without leaving: the lease runs out (or is
// revoked by Leave).
func (r *Registration) Close() {
	r.cancel()
	<-r.done
}
