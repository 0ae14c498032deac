package geneveauth

import (
	"bytes"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterpeer/clusterpeer/dataplane/packet"
	"github.com/clusterpeer/clusterpeer/tunnel/keyring"
)

var secret = []byte("0123456789abcdef")

// frame returns a sealed-size GENEVE frame around inner, header written.
func frame(inner []byte, oam bool) []byte {
	f := make([]byte, HeaderLen+len(inner))
	packet.PutGeneve(f, 4242, packet.ProtoIPv4, oam)
	copy(f[HeaderLen:], inner)
	return f
}

func inner(n int) []byte {
	b := make([]byte, n)
	b[0] = 0x45
	for i := 1; i < n; i++ {
		b[i] = byte(i * 7)
	}
	return b
}

// deriveKey and keyID are a secret's keys as a node holding it derives them.
func deriveKey(secret []byte, side string, sender uint8, lane uint16) Key {
	g := keyring.FromSecret(secret, time.Time{}, time.Time{})
	k, _ := g.Key(keyring.GenevePath(side, sender, lane))
	return KeyOf(k)
}

func keyID(secret []byte) uint8 { return keyring.ID(secret) }

func pair(lane uint16) (*Sealer, *Opener) {
	k := deriveKey(secret, "a", 0, lane)
	id := keyID(secret)
	o := NewOpener()
	o.Add(0, id, k)
	return NewSealer(k, id, 0, 1_000_000), o
}

func TestSealOpen(t *testing.T) {
	s, o := pair(1)
	f := frame(inner(100), false)
	s.Seal(f, s.Reserve(1))
	h, in, err := packet.ParseGeneve(f)
	if err != nil {
		t.Fatalf("ParseGeneve of a sealed frame: %v", err)
	}
	if h.Len() != HeaderLen || !h.Critical() || h.VNI() != 4242 || !bytes.Equal(in, inner(100)) {
		t.Fatalf("sealed frame: header %d bytes, critical %v, vni %d, inner intact %v", h.Len(), h.Critical(), h.VNI(), bytes.Equal(in, inner(100)))
	}
	if err := o.Open(f); err != nil {
		t.Fatalf("Open: %v", err)
	}
	if err := o.Open(f); !errors.Is(err, ErrReplayed) {
		t.Fatalf("the same frame again: %v, want ErrReplayed", err)
	}
}

// Every bit counts: a frame with any one bit flipped is refused (a bit
// of the tag itself, by not matching).
func TestTamperedFrameRefused(t *testing.T) {
	s, _ := pair(1)
	f := frame(inner(61), true)
	s.Seal(f, s.Reserve(1))
	for i := range f {
		for bit := range 8 {
			_, o := pair(1)
			g := bytes.Clone(f)
			g[i] ^= 1 << bit
			if err := o.Open(g); err == nil {
				t.Fatalf("byte %d bit %d flipped: accepted", i, bit)
			}
		}
	}
}

func TestOpenRefuses(t *testing.T) {
	s, _ := pair(1)
	f := frame(inner(64), false)
	s.Seal(f, s.Reserve(1))

	other, _ := pair(2) // another lane's key
	g := frame(inner(64), false)
	other.Seal(g, other.Reserve(1))
	_, o := pair(1)
	if err := o.Open(g); !errors.Is(err, ErrBadTag) {
		t.Errorf("another lane's frame: %v, want ErrBadTag", err)
	}

	standby := NewSealer(deriveKey(secret, "a", 1, 1), keyID(secret), 1, 5)
	g = frame(inner(64), false)
	standby.Seal(g, standby.Reserve(1))
	if err := o.Open(g); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("a sender the gateway has no key for: %v, want ErrUnknownKey", err)
	}

	plain := make([]byte, packet.GeneveLen+64)
	packet.PutGeneve(plain, 4242, packet.ProtoIPv4, false)
	if err := o.Open(plain); !errors.Is(err, ErrNoTag) {
		t.Errorf("an unsealed frame: %v, want ErrNoTag", err)
	}

	g = bytes.Clone(f)
	g[offSender] = Senders
	if err := o.Open(g); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("sender %d: %v, want ErrUnknownKey", Senders, err)
	}
	g = bytes.Clone(f)
	g[offKeyID]++
	if err := o.Open(g); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("another key ID: %v, want ErrUnknownKey", err)
	}
	if err := o.Open(f); err != nil {
		t.Errorf("the good frame after the refused ones: %v", err)
	}
}

// The window: frames a little out of order open, each once; a counter
// far behind the newest does not.
func TestReplayWindow(t *testing.T) {
	s, o := pair(3)
	base := s.Reserve(10000)
	seal := func(c uint64) []byte {
		f := frame(inner(40), false)
		s.Seal(f, c)
		return f
	}
	for _, c := range []uint64{base + 5, base + 3, base + 4, base + 9000, base + 8999} {
		if err := o.Open(seal(c)); err != nil {
			t.Fatalf("counter %d: %v", c-base, err)
		}
	}
	if err := o.Open(seal(base + 3)); !errors.Is(err, ErrReplayed) {
		t.Fatalf("counter 3 again: %v", err)
	}
	if err := o.Open(seal(base + 5)); !errors.Is(err, ErrReplayed) {
		t.Fatalf("counter 5, 8995 behind the newest (window %d): %v", 8128, err)
	}
}

// A restarted demux seals from its clock, above what it sent before.
func TestRestartedSenderOpens(t *testing.T) {
	k := deriveKey(secret, "b", 0, 4)
	o := NewOpener()
	o.Add(0, keyID(secret), k)
	before := NewSealer(k, keyID(secret), 0, 1_000)
	f := frame(inner(40), false)
	before.Seal(f, before.Reserve(1))
	if err := o.Open(f); err != nil {
		t.Fatal(err)
	}
	after := NewSealer(k, keyID(secret), 0, 2_000_000)
	g := frame(inner(40), false)
	after.Seal(g, after.Reserve(1))
	if err := o.Open(g); err != nil {
		t.Fatalf("after a restart: %v", err)
	}
	if err := o.Open(f); !errors.Is(err, ErrReplayed) {
		t.Fatalf("the old run's frame after the restart: %v", err)
	}
}

// Two sealers of one lane on one counter (the userspace demux and the
// XDP program) seal one sequence: interleaved, each frame opens once;
// the shared counter is raised to the later start, never lowered.
func TestSealersShareACounter(t *testing.T) {
	k := deriveKey(secret, "a", 0, 3)
	o := NewOpener()
	o.Add(0, keyID(secret), k)
	var c atomic.Uint64
	c.Store(5_000)
	a := NewSealerOn(k, keyID(secret), 0, &c, 1_000)
	if c.Load() != 5_000 {
		t.Fatalf("a start below the counter moved it to %d", c.Load())
	}
	b := NewSealerOn(k, keyID(secret), 0, &c, 9_000)
	if c.Load() != 9_000 {
		t.Fatalf("counter %d, want raised to the later start 9000", c.Load())
	}
	seen := map[uint64]bool{}
	for i := range 200 {
		s := a
		if i%3 == 0 {
			s = b
		}
		n := s.Reserve(1 + i%4)
		for j := range uint64(1 + i%4) {
			if seen[n+j] {
				t.Fatalf("counter %d handed out twice", n+j)
			}
			seen[n+j] = true
			f := frame(inner(60), false)
			s.Seal(f, n+j)
			if err := o.Open(f); err != nil {
				t.Fatalf("frame %d (counter %d): %v", i, n+j, err)
			}
		}
	}
	if got, id := b.Key(); got != k || id != keyID(secret) || b.Sender() != 0 {
		t.Fatalf("Key() = %x, %d", got, id)
	}
}

func TestRotation(t *testing.T) {
	old, next := []byte("old secret 0123456"), []byte("new secret 6543210")
	o := NewOpener()
	o.Add(0, keyID(old), deriveKey(old, "a", 0, 1))
	o.Add(0, keyID(next), deriveKey(next, "a", 0, 1))
	for i, sec := range [][]byte{old, next, old} {
		s := NewSealer(deriveKey(sec, "a", 0, 1), keyID(sec), 0, uint64(1000*(i+1)))
		f := frame(inner(40), false)
		s.Seal(f, s.Reserve(1))
		if err := o.Open(f); err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
	}
}

func TestSealOpenAllocs(t *testing.T) {
	s, o := pair(1)
	s.Remember(NewRecent(), 1)
	f := frame(inner(1400), false)
	if n := testing.AllocsPerRun(1000, func() {
		s.Seal(f, s.Reserve(1))
		if err := o.Open(f); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Fatalf("%v allocations per sealed and opened frame", n)
	}
}

func BenchmarkSeal(b *testing.B) {
	for _, n := range []int{64, 1400} {
		b.Run(map[int]string{64: "64B", 1400: "1400B"}[n], func(b *testing.B) {
			s, _ := pair(1)
			s.Remember(NewRecent(), 1)
			f := frame(inner(n), false)
			b.SetBytes(int64(n))
			for b.Loop() {
				s.Seal(f, s.Reserve(1))
			}
		})
	}
}

func BenchmarkOpen(b *testing.B) {
	s, o := pair(1)
	f := frame(inner(1400), false)
	b.SetBytes(1400)
	for b.Loop() {
		s.Seal(f, s.Reserve(1))
		o.Open(f)
	}
}

// TestRotationKeepsTheWindow: a gateway's Opener given a rotated ring's
// keys (UseKeysOf) opens the new key's frames, refuses the old key once
// it is left out, and still refuses a frame it had seen: the replay
// window survives the change, as the sender's counter goes on across
// SetKey.
func TestRotationKeepsTheWindow(t *testing.T) {
	oldKey, newKey := deriveKey(secret, "a", 0, 1), deriveKey([]byte("fedcba9876543210"), "a", 0, 1)
	o := NewOpener()
	o.Add(0, 1, oldKey)
	s := NewSealer(oldKey, 1, 0, 1000)
	seen := frame(inner(60), false)
	s.Seal(seen, s.Reserve(1))
	if err := o.Open(bytes.Clone(seen)); err != nil {
		t.Fatal(err)
	}
	both := NewOpener()
	both.Add(0, 2, newKey)
	both.Add(0, 1, oldKey)
	o.UseKeysOf(both)
	s.SetKey(newKey, 2)
	f := frame(inner(60), false)
	s.Seal(f, s.Reserve(1))
	if err := o.Open(f); err != nil || s.KeyID() != 2 {
		t.Fatalf("the new key's frame: %v (sealer key ID %d)", err, s.KeyID())
	}
	if err := o.Open(bytes.Clone(seen)); !errors.Is(err, ErrReplayed) {
		t.Errorf("a frame seen before the rotation, again: %v, want ErrReplayed", err)
	}
	onlyNew := NewOpener()
	onlyNew.Add(0, 2, newKey)
	o.UseKeysOf(onlyNew)
	stale := NewSealer(oldKey, 1, 0, 1<<40)
	g := frame(inner(60), false)
	stale.Seal(g, stale.Reserve(1))
	if err := o.Open(g); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("the old key after its grace: %v, want ErrUnknownKey", err)
	}
	if a := testing.AllocsPerRun(100, func() { s.Seal(f, s.Reserve(1)); o.Open(f) }); a != 0 {
		t.Errorf("%v allocations per frame", a)
	}
}

// TestSentKnowsItsOwnFrames: an ICMP error quotes the start of a frame;
// Sent believes it only if this lane sealed that frame lately. A forger
// who guesses a counter, takes a real one with a made-up tag, quotes
// another lane's frame or another sender's, or one long gone, is told
// no.
func TestSentKnowsItsOwnFrames(t *testing.T) {
	r := NewRecent()
	s1, _ := pair(1)
	s2, _ := pair(2)
	s1.Remember(r, 1)
	s2.Remember(r, 2)
	seal := func(s *Sealer) []byte {
		f := frame(inner(600), false)
		s.Seal(f, s.Reserve(1))
		return f
	}
	f1, f2 := seal(s1), seal(s2)
	// ICMP quotes at most 548 bytes of the datagram: the frame's start.
	if !s1.Sent(f1[:HeaderLen]) || !s2.Sent(f2[:100]) {
		t.Fatal("a lane's own frame, just sealed, not recognised")
	}
	if s1.Sent(f2) || s2.Sent(f1) {
		t.Error("a frame of lane 2 recognised as lane 1's (or the other way)")
	}
	forged := func(change func(f []byte)) []byte {
		f := bytes.Clone(f1)
		change(f)
		return f
	}
	for name, f := range map[string][]byte{
		"tag guessed":       forged(func(f []byte) { f[offTag] ^= 1 }),
		"tag zero":          forged(func(f []byte) { clear(f[offTag : offTag+8]) }),
		"counter not sent":  forged(func(f []byte) { f[offCounter+7]++ }),
		"counter far back":  forged(func(f []byte) { f[offCounter+5]-- }),
		"other sender":      forged(func(f []byte) { f[offSender] = 1 }),
		"no option":         frame(inner(60), false)[:packet.GeneveLen+4],
		"cut in the option": f1[:HeaderLen-1],
	} {
		if s1.Sent(f) {
			t.Errorf("%s: recognised as sent", name)
		}
	}
	// A slot never written reads zero; an unused counter below the
	// first one must not pass with a zero tag either.
	if s1.Sent(forged(func(f []byte) { clear(f[offTag : offTag+8]); f[offCounter+7] -= 3 })) {
		t.Error("a counter before the first frame, tag zero: recognised")
	}
	// Forgotten once the lane has sealed RecentSlots frames since.
	for range RecentSlots {
		s1.Seal(frame(nil, false), s1.Reserve(1))
	}
	if s1.Sent(f1) {
		t.Error("a frame RecentSlots frames old still recognised")
	}
	if f := seal(s1); !s1.Sent(f) {
		t.Error("the newest frame not recognised")
	}
	var none Sealer
	if none.Sent(f1) {
		t.Error("a Sealer that remembers nothing recognised a frame")
	}
}

// TestSentSharedWithAnotherSealer: the lane's sealers (the data path's,
// or the XDP program's through the same memory) note into one Recent,
// so a frame either sealed is recognised by both.
func TestSentSharedWithAnotherSealer(t *testing.T) {
	mem := make([]byte, RecentSlots*8)
	r := RecentOn(mem)
	if RecentOn(mem[:8]) != nil {
		t.Fatal("RecentOn took memory too short for its slots")
	}
	var c atomic.Uint64
	k := deriveKey(secret, "a", 0, 3)
	a := NewSealerOn(k, keyID(secret), 0, &c, 5000)
	b := NewSealerOn(k, keyID(secret), 0, &c, 5000)
	a.Remember(r, 3)
	b.Remember(r, 3)
	f := frame(inner(64), false)
	b.Seal(f, b.Reserve(1))
	if !a.Sent(f) {
		t.Fatal("a frame the lane's other sealer sealed not recognised")
	}
}
