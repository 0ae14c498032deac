package membership

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clusterpeer/clusterpeer/config"
	"github.com/clusterpeer/clusterpeer/config/configtest"
	"github.com/clusterpeer/clusterpeer/membership/etcdtest"
	"github.com/clusterpeer/clusterpeer/tunnel/wgkey"
)

// testPeering is the example peering (file lanes 1 and 2) with
// discovery through the given etcd endpoints and extra YAML under etcd.
func testPeering(t *testing.T, dir string, endpoints []string, extra string) *config.Peering {
	t.Helper()
	seed := make([]byte, ed25519.SeedSize)
	for i := range seed {
		seed[i] = byte(i * 7)
	}
	if err := os.WriteFile(filepath.Join(dir, "enrolment.key"), []byte(base64.StdEncoding.EncodeToString(seed)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	y := configtest.Example(t, dir) + fmt.Sprintf("discovery:\n  mode: etcd\n  etcd:\n    endpoints: [%s]\n    enrolment_key_file: enrolment.key\n    lease_ttl: 3s\n%s",
		strings.Join(endpoints, ", "), extra)
	path := filepath.Join(dir, "peering.yaml")
	if err := os.WriteFile(path, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func dial(t *testing.T, p *config.Peering) *Store {
	t.Helper()
	s, err := Dial(p, slog.New(slog.NewTextHandler(testWriter{t}, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// joining is a gateway of side that is not in the file (its GENEVE
// address is inside the side's prefixes, as probes need).
func joining(t *testing.T, p *config.Peering, side config.Side, n, slot int) config.Joining {
	t.Helper()
	k, err := wgkey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	net := map[config.Side]int{config.SideA: 1, config.SideB: 2}[side]
	j := config.Joining{Side: side, Slot: slot, Gateway: config.Gateway{
		Name: fmt.Sprintf("gw-%s%d", side, n), PublicKey: k.Public().Base64(),
	}}
	j.Gateway.Geneve.AddrPort = mustAP(fmt.Sprintf("10.%d.0.%d:6081", net, 100+n))
	j.Gateway.Endpoint.AddrPort = mustAP(fmt.Sprintf("198.18.%d.%d:51820", 100+n, net))
	if err := p.CheckJoining(&j); err != nil {
		t.Fatal(err)
	}
	return j
}

func register(t *testing.T, s *Store, p *config.Peering, j config.Joining) *Registration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := s.Register(ctx, p, j)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

// follow runs a view until the test ends; changed receives a tick per
// change.
func follow(t *testing.T, s *Store, p *config.Peering) (*View, chan struct{}) {
	changed := make(chan struct{}, 100)
	v := s.View(p, func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { v.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return v, changed
}

// eventually waits up to d for cond.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fixture is a store with a peering and a view following it.
type fixture struct {
	c *etcdtest.Cluster
	p *config.Peering
	s *Store
	v *View
}

func newFixture(t *testing.T, o etcdtest.Options) fixture {
	dir := t.TempDir()
	c := etcdtest.Start(t, dir, o)
	p := testPeering(t, dir, c.Endpoints(), "")
	s := dial(t, p)
	v, _ := follow(t, s, p)
	return fixture{c, p, s, v}
}

// lane registers both ends of slot n (gateways gw-a<n>, gw-b<n>) and
// waits until the view has the lane; it returns side a's registration.
func (f fixture) lane(t *testing.T, n int) *Registration {
	t.Helper()
	ra := register(t, f.s, f.p, joining(t, f.p, config.SideA, n, 0))
	register(t, f.s, f.p, joining(t, f.p, config.SideB, n, 0))
	eventually(t, 5*time.Second, fmt.Sprintf("lane %d", n), func() bool {
		return slices.ContainsFunc(f.v.Lanes(), func(l config.Lane) bool { return l.ID == ra.Record().Slot })
	})
	return ra
}

func laneIDs(v *View) []int {
	var ids []int
	for _, l := range v.Lanes() {
		ids = append(ids, l.ID)
	}
	return ids
}

func TestRegisterAndWatch(t *testing.T) {
	f := newFixture(t, etcdtest.Options{})
	s, p, v := f.s, f.p, f.v

	ja := joining(t, p, config.SideA, 3, 0)
	ja.Weight = 5
	ra := register(t, s, p, ja)
	if got := ra.Record().Slot; got != 3 {
		t.Fatalf("first joining gateway took slot %d; the file has lanes 1 and 2, so want 3", got)
	}
	eventually(t, 3*time.Second, "side a's registration seen", func() bool { _, ok := v.Member(Slot{config.SideA, 3}); return ok })
	if ids := laneIDs(v); len(ids) != 0 {
		t.Fatalf("lanes %v with only side a registered; a lane needs both ends", ids)
	}
	jb := joining(t, p, config.SideB, 3, 0)
	jb.Weight = 2
	register(t, s, p, jb)
	eventually(t, 3*time.Second, "lane 3 formed", func() bool { return len(v.Lanes()) == 1 })
	l := v.Lanes()[0]
	if l.ID != 3 || l.Weight != 2 || l.A.Name != ja.Gateway.Name || l.B.Public != jb.Gateway.Public || l.B.Endpoint != jb.Gateway.Endpoint {
		t.Fatalf("lane %+v, want id 3, weight 2 (the smaller), %s and %s", l, ja.Gateway.Name, jb.Gateway.Name)
	}
	// The weight changes live: the lane takes the smaller of the two.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := ra.SetWeight(ctx, 1); err != nil {
		t.Fatal(err)
	}
	eventually(t, 3*time.Second, "lane 3 at weight 1", func() bool { ls := v.Lanes(); return len(ls) == 1 && ls[0].Weight == 1 })
	if err := ra.SetWeight(ctx, 0); err == nil {
		t.Fatal("weight 0 accepted")
	}
	if h := s.Health(); !h.Up {
		eventually(t, 3*time.Second, "store reported up", func() bool { return s.Health().Up })
	}
}

// Of gateways racing for slots, each gets its own.
func TestSlotRace(t *testing.T) {
	dir := t.TempDir()
	c := etcdtest.Start(t, dir, etcdtest.Options{})
	p := testPeering(t, dir, c.Endpoints(), "")
	const n = 8
	var wg sync.WaitGroup
	slots := make([]int, n)
	for i := range n {
		s := dial(t, p) // one client each, as separate gateways have
		j := joining(t, p, config.SideA, 10+i, 0)
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			r, err := s.Register(ctx, p, j)
			if err != nil {
				t.Error(err)
				return
			}
			t.Cleanup(r.Close)
			slots[i] = r.Record().Slot
		}()
	}
	wg.Wait()
	seen := map[int]bool{}
	for _, sl := range slots {
		if sl < 3 || sl > 2+n || seen[sl] {
			t.Fatalf("slots %v: want each of 3..%d once (lanes 1 and 2 are the file's)", slots, 2+n)
		}
		seen[sl] = true
	}
}

// Records that write access to etcd alone can make are refused and
// counted: signed with another key, altered, copied to another slot, or
// an old record brought back.
func TestForgedRecordsRefused(t *testing.T) {
	f := newFixture(t, etcdtest.Options{})
	s, p, v := f.s, f.p, f.v
	r := register(t, s, p, joining(t, p, config.SideA, 3, 0))
	eventually(t, 3*time.Second, "registration seen", func() bool { return len(v.Members()) == 1 })
	good := v.Members()[0]
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	kv := func(key string) (*clientv3.GetResponse, error) { return s.cli.Get(ctx, key) }
	resp, err := kv(s.keys.Slot(config.SideA, 3))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("get own record: %v", err)
	}
	original := resp.Kvs[0].Value

	attackerLease, err := s.cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	rogue := r.Record()
	rogue.Slot, rogue.Name, rogue.Lease = 4, "rogue", int64(attackerLease.ID)
	rogueVal, _ := Seal(rogue, testKey(t))
	put := func(key string, val []byte, lease clientv3.LeaseID) {
		t.Helper()
		if _, err := s.cli.Put(ctx, key, string(val), clientv3.WithLease(lease)); err != nil {
			t.Fatal(err)
		}
	}
	before := v.Rejected()
	put(s.keys.Slot(config.SideA, 4), rogueVal, attackerLease.ID)                                        // another key
	put(s.keys.Slot(config.SideA, 5), []byte(strings.Replace(string(original), "gw-a3", "gw-a9", 1)), 0) // altered
	put(s.keys.Slot(config.SideA, 6), original, clientv3.LeaseID(r.Record().Lease))                      // copied elsewhere
	put(s.keys.Slot(config.SideB, 3), original, attackerLease.ID)                                        // other side, other lease
	put(s.keys.Slot(config.SideA, 7), []byte("not a record"), 0)
	eventually(t, 3*time.Second, "five forgeries counted", func() bool {
		got := v.Rejected()
		return got[RejectSignature]-before[RejectSignature] == 2 && got[RejectKey]-before[RejectKey] == 2 && got[RejectMalformed]-before[RejectMalformed] == 1
	})

	// An older update brought back under the live lease: stale. The
	// gateway updates its record (serial 2), the attacker replays serial 1.
	r.mu.Lock()
	r.rec.Weight, r.rec.Serial = 7, 2
	err = r.put(ctx)
	r.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 3*time.Second, "update seen", func() bool { m, _ := v.Member(Slot{config.SideA, 3}); return m.Weight == 7 })
	put(s.keys.Slot(config.SideA, 3), original, clientv3.LeaseID(r.Record().Lease))
	eventually(t, 3*time.Second, "replay counted stale", func() bool { return v.Rejected()[RejectStale] > before[RejectStale] })
	// The old record under a new lease (its own lease long gone): refused.
	put(s.keys.Slot(config.SideA, 3), original, attackerLease.ID)
	eventually(t, 3*time.Second, "replay under another lease counted", func() bool { return v.Rejected()[RejectLease] > before[RejectLease] })
	if ms := v.Members(); len(ms) != 1 || ms[0].Name != good.Name || ms[0].Weight != 7 || ms[0].Lost {
		t.Fatalf("members after the forgeries: %+v; want only %s, weight 7", ms, good.Name)
	}
	// A record that is not ours in a file lane's slot: refused too.
	fileSlot := r.Record()
	fileSlot.Slot, fileSlot.Lease = 1, int64(attackerLease.ID)
	val, _ := Seal(fileSlot, p.Discovery.Etcd.Enrolment)
	put(s.keys.Slot(config.SideA, 1), val, attackerLease.ID)
	eventually(t, 3*time.Second, "file slot refused", func() bool { return v.Rejected()[RejectFileSlot] > before[RejectFileSlot] })
}

// A planned stop removes the gateway; a lease that merely ends marks it
// lost, kept until its lane is found down (Forget).
func TestLeaveAndLost(t *testing.T) {
	f := newFixture(t, etcdtest.Options{})
	v := f.v
	ra := f.lane(t, 3)
	ra4 := f.lane(t, 4)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := ra4.Leave(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 3*time.Second, "lane 4 gone after a planned stop", func() bool { return fmt.Sprint(laneIDs(v)) == "[3]" })
	eventually(t, 3*time.Second, "a4 no longer a member once its lease is revoked", func() bool {
		_, ok := v.Member(Slot{config.SideA, 4})
		return !ok
	})
	if m, _ := v.Member(Slot{config.SideB, 4}); m.Lost || m.State != StateUp {
		t.Fatalf("b4, which did not leave: %+v", m)
	}

	// Gateway a3 stops renewing (cut off, or killed): after the TTL its
	// record is gone from etcd, but lane 3 stays until its health says.
	ra.Close()
	eventually(t, 8*time.Second, "a3's lease ended", func() bool { m, _ := v.Member(Slot{config.SideA, 3}); return m.Lost })
	if ids := laneIDs(v); fmt.Sprint(ids) != "[3]" {
		t.Fatalf("lanes %v after a3's lease ended; a lost registration keeps its lane while it works", ids)
	}
	if !v.Forget(Slot{config.SideA, 3}) || len(v.Lanes()) != 0 {
		t.Fatalf("Forget(a3): lanes %v", laneIDs(v))
	}
	if v.Forget(Slot{config.SideB, 3}) {
		t.Fatal("Forget took b3, whose lease is alive")
	}
}

// A replacement in the same slot wins at once, with its new key and
// address; the old instance's lease no longer matters.
func TestReplaceInSlot(t *testing.T) {
	f := newFixture(t, etcdtest.Options{})
	s, p, v := f.s, f.p, f.v
	old := f.lane(t, 3)
	old.Close() // killed: its lease is still alive for up to the TTL
	repl := joining(t, p, config.SideA, 33, 3)
	start := time.Now()
	rr := register(t, s, p, repl)
	eventually(t, 2*time.Second, "replacement seen", func() bool {
		ls := v.Lanes()
		return len(ls) == 1 && ls[0].A.Public == repl.Gateway.Public && ls[0].A.Endpoint == repl.Gateway.Endpoint
	})
	t.Logf("replacement in lane 3 after %s", time.Since(start).Round(time.Millisecond))
	m, _ := v.Member(Slot{config.SideA, 3})
	if old.Mine(m) || !rr.Mine(m) {
		t.Fatalf("the replacement's record: old instance says mine=%v, replacement mine=%v; want false, true", old.Mine(m), rr.Mine(m))
	}
	time.Sleep(4 * time.Second) // the old lease's end must not remove the replacement
	if m, ok := v.Member(Slot{config.SideA, 3}); !ok || m.Lost || m.Name != repl.Gateway.Name {
		t.Fatalf("after the old lease's TTL: %+v", m)
	}
}

// The watch resumes after its history was compacted: the view reloads.
func TestWatchAfterCompaction(t *testing.T) {
	dir := t.TempDir()
	c := etcdtest.Start(t, dir, etcdtest.Options{})
	p := testPeering(t, dir, c.Endpoints(), "")
	s := dial(t, p)
	v := s.View(p, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := v.load(ctx); err != nil {
		t.Fatal(err)
	}
	register(t, s, p, joining(t, p, config.SideA, 3, 0))
	register(t, s, p, joining(t, p, config.SideB, 3, 0))
	resp, err := s.cli.Put(ctx, "/unrelated", "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.cli.Compact(ctx, resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { v.watch(ctx); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("watch from a compacted revision did not end")
	}
	if len(v.Lanes()) != 0 {
		t.Fatal("the watch applied changes from a compacted history")
	}
	go v.Run(ctx)
	eventually(t, 3*time.Second, "lane 3 after the reload", func() bool { return len(v.Lanes()) == 1 })
	if v.Events.Resyncs.Load() == 0 {
		t.Fatal("no resync counted")
	}
}

// With the store gone, nothing is forgotten; when it returns, lost
// leases are registered again and the view carries on.
func TestStoreDown(t *testing.T) {
	f := newFixture(t, etcdtest.Options{})
	c, s, v := f.c, f.s, f.v
	ra := f.lane(t, 3)
	eventually(t, 3*time.Second, "store up", func() bool { return s.Health().Up })

	c.Kill(0)
	downAt := time.Now()
	eventually(t, 4*time.Second, "store reported down", func() bool { return !s.Health().Up })
	t.Logf("store down noticed after %s: %s", time.Since(downAt).Round(time.Millisecond), s.Health().Error)
	time.Sleep(4 * time.Second) // past the lease TTL: every lease would have ended
	if ms := v.Members(); len(ms) != 2 || ms[0].Lost || ms[1].Lost || len(v.Lanes()) != 1 {
		t.Fatalf("with the store down: members %+v", ms)
	}
	if err := c.Restart(0); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "store up again", func() bool { return s.Health().Up })
	// The leases ran out while the server was down (etcd restores them
	// with a fresh TTL, then expires them): both gateways register again.
	oldLease := ra.Record().Lease
	eventually(t, 15*time.Second, "a3 registered, the view current", func() bool {
		m, ok := v.Member(Slot{config.SideA, 3})
		return ok && !m.Lost && ra.Mine(m) && m.Lease == ra.Record().Lease
	})
	t.Logf("a3's lease before the outage %x, after %x", oldLease, ra.Record().Lease)
	if len(v.Lanes()) != 1 {
		t.Fatalf("lanes %v after the store returned", laneIDs(v))
	}
}

// One member of three killed: registrations and the watch go on.
func TestClusterMemberDown(t *testing.T) {
	f := newFixture(t, etcdtest.Options{Members: 3})
	c, s, p, v := f.c, f.s, f.p, f.v
	f.lane(t, 3)
	for i := range 3 {
		c.Kill(i)
		register(t, s, p, joining(t, p, config.SideA, 10+i, 0))
		register(t, s, p, joining(t, p, config.SideB, 10+i, 0))
		eventually(t, 5*time.Second, fmt.Sprintf("lane formed with member %d down", i+1), func() bool { return len(v.Lanes()) == 2+i })
		if err := c.Restart(i); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitQuorum(i); err != nil {
			t.Fatal(err)
		}
	}
	if ms := v.Members(); len(ms) != 8 {
		t.Fatalf("%d members, want 8", len(ms))
	}
	for _, m := range v.Members() {
		if m.Lost {
			t.Fatalf("%s lost with one member of three down", m.Name)
		}
	}
}

// TLS with a client certificate, as a production store runs.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	c := etcdtest.Start(t, dir, etcdtest.Options{TLS: true})
	tf := c.TLS
	p := testPeering(t, dir, c.Endpoints(), fmt.Sprintf("    ca_file: %s\n    cert_file: %s\n    key_file: %s\n", tf.CA, tf.ClientCert, tf.ClientKey))
	s := dial(t, p)
	v, _ := follow(t, s, p)
	register(t, s, p, joining(t, p, config.SideA, 3, 0))
	register(t, s, p, joining(t, p, config.SideB, 3, 0))
	eventually(t, 3*time.Second, "lane 3 over TLS", func() bool { return len(v.Lanes()) == 1 })

	// Without the client certificate the server refuses the node.
	noCert := testPeering(t, t.TempDir(), c.Endpoints(), fmt.Sprintf("    ca_file: %s\n", tf.CA))
	s2 := dial(t, noCert)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if _, err := s2.Register(ctx, noCert, joining(t, noCert, config.SideA, 4, 0)); err == nil {
		t.Fatal("registered without a client certificate")
	}
	if s2.Health().Up {
		t.Fatal("store reported up without a client certificate")
	}
}
