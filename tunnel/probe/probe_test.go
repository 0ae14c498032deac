package probe

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/clusterpeer/clusterpeer/tunnel/keyring"
)

// testKey is the ring of secret b; every b's generation has key ID 1,
// so another b's messages fail the MAC, as a forger's would, not the
// key lookup.
func testKey(b byte) *keyring.Ring {
	g := keyring.FromSecret([]byte{b, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, time.Time{}, time.Time{})
	g.ID = 1
	return &keyring.Ring{Gens: []keyring.Gen{g}}
}

// TestKeysPerLaneAndDirection: a message signed for one lane or one
// side's demux does not check as another's, and a node that holds only
// lane 1's keys (a gateway's file) can neither sign nor check lane 2's.
func TestKeysPerLaneAndDirection(t *testing.T) {
	s := NewSigner(testKey(1))
	var b [MessageLen]byte
	if !s.Put(b[:], Message{Kind: KindRequest, Lane: 1, Side: "a", Seq: 1}) {
		t.Fatal("Put refused")
	}
	if _, err := s.Parse(b[:], "a"); err != nil {
		t.Fatalf("own direction: %v", err)
	}
	if _, err := s.Parse(b[:], "b"); !errors.Is(err, ErrMAC) {
		t.Errorf("checked as the other side's: %v, want ErrMAC", err)
	}
	binary.BigEndian.PutUint16(b[6:8], 2) // the lane field, now claiming lane 2
	if _, err := s.Parse(b[:], "a"); !errors.Is(err, ErrMAC) {
		t.Errorf("lane 1's message claiming lane 2: %v, want ErrMAC", err)
	}

	g, err := testKey(1).Gens[0].Only(keyring.ProbePath("a", 1), keyring.ProbePath("b", 1))
	if err != nil {
		t.Fatal(err)
	}
	gw := NewSigner(&keyring.Ring{Gens: []keyring.Gen{g}})
	s.Put(b[:], Message{Kind: KindRequest, Lane: 1, Side: "b", Seq: 2})
	if _, err := gw.Parse(b[:], "b"); err != nil {
		t.Errorf("lane 1's gateway, lane 1's probe: %v", err)
	}
	s.Put(b[:], Message{Kind: KindRequest, Lane: 2, Side: "b", Seq: 3})
	if _, err := gw.Parse(b[:], "b"); !errors.Is(err, ErrKey) {
		t.Errorf("lane 1's gateway, lane 2's probe: %v, want ErrKey", err)
	}
	if gw.Put(b[:], Message{Kind: KindReply, Lane: 2, Side: "b"}) {
		t.Error("lane 1's gateway signed for lane 2")
	}
}

// TestKeyRotation: a ring with a new generation that signs from a time
// to come and the old one accepted until later checks both, signs with
// the old until the switch and the new after it, and refuses the old
// once its grace is over.
func TestKeyRotation(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 6, 0, 0, 0, time.UTC)
	oldSecret, newSecret := []byte("0123456789abcdef"), []byte("fedcba9876543210")
	old := &keyring.Ring{Gens: []keyring.Gen{keyring.FromSecret(oldSecret, time.Time{}, time.Time{})}}
	both := &keyring.Ring{Gens: []keyring.Gen{
		keyring.FromSecret(newSecret, t0.Add(time.Minute), time.Time{}),
		keyring.FromSecret(oldSecret, time.Time{}, t0.Add(10*time.Minute)),
	}}
	oldID, newID := keyring.ID(oldSecret), keyring.ID(newSecret)
	if oldID == newID {
		t.Skip("the two test secrets' key IDs collide") // 1 in 256; fixed secrets, so never
	}
	now := t0
	clock := func() time.Time { return now }
	notYet, rotated := NewSigner(old), NewSigner(both)
	notYet.now, rotated.now = clock, clock
	var b [MessageLen]byte
	check := func(what string, from, to *Signer, wantID uint8, wantErr error) {
		t.Helper()
		if !from.Put(b[:], Message{Kind: KindRequest, Lane: 3, Side: "a", Seq: 1}) {
			t.Fatalf("%s: Put refused", what)
		}
		m, err := to.Parse(b[:], "a")
		if !errors.Is(err, wantErr) || (err == nil && m.KeyID != wantID) {
			t.Errorf("%s: key ID %#02x, %v; want %#02x, %v", what, m.KeyID, err, wantID, wantErr)
		}
	}
	check("before the switch, reloaded -> not yet", rotated, notYet, oldID, nil)
	check("before the switch, not yet -> reloaded", notYet, rotated, oldID, nil)
	now = t0.Add(2 * time.Minute)
	check("after the switch, reloaded -> reloaded", rotated, rotated, newID, nil)
	check("after the switch, not yet reloaded -> reloaded", notYet, rotated, oldID, nil)
	now = t0.Add(11 * time.Minute)
	check("after the grace, the old key", notYet, rotated, 0, ErrKey)
	if id, ok := rotated.Signing(); !ok || id != newID {
		t.Errorf("Signing = %#02x, %v; want %#02x", id, ok, newID)
	}
}

func TestMessageRoundTrip(t *testing.T) {
	s := NewSigner(testKey(1))
	want := Message{Kind: KindRequest, Lane: 7, Session: 0xdeadbeef, Seq: 42, Sent: 1234567890, KeyID: 1}
	var b [MessageLen]byte
	s.Put(b[:], want)
	got, err := s.Parse(b[:], "")
	if err != nil || got != want {
		t.Fatalf("Parse = %+v, %v; want %+v", got, err, want)
	}
}

func TestMessageRejects(t *testing.T) {
	s := NewSigner(testKey(1))
	var good [MessageLen]byte
	s.Put(good[:], Message{Kind: KindReply, Lane: 1, Session: 9, Seq: 3})
	for i := range MessageLen {
		b := good
		b[i] ^= 0x10
		if _, err := s.Parse(b[:], ""); err == nil {
			t.Errorf("byte %d flipped: accepted", i)
		}
	}
	if _, err := NewSigner(testKey(2)).Parse(good[:], ""); !errors.Is(err, ErrMAC) {
		t.Errorf("another peering's key: %v, want ErrMAC", err)
	}
	for _, b := range [][]byte{nil, good[:10], append(good[:], 0)} {
		if _, err := s.Parse(b, ""); !errors.Is(err, ErrFormat) {
			t.Errorf("%d bytes: %v, want ErrFormat", len(b), err)
		}
	}
	bad := good
	bad[5] = 4 // unknown kind, re-signed
	copy(bad[signedLen:], s.tag(s.mac(&s.ring.Gens[0], "", 1), bad[:]))
	if _, err := s.Parse(bad[:], ""); !errors.Is(err, ErrFormat) {
		t.Errorf("kind 4: %v, want ErrFormat", err)
	}
}

func TestInnerPacketDecodes(t *testing.T) {
	payload := make([]byte, MessageLen)
	for i := range payload {
		payload[i] = byte(i)
	}
	for _, tc := range []struct {
		src, dst string
		n        int
		first    gopacket.LayerType
	}{
		{"10.1.0.2:6082", "10.2.0.22:6082", InnerLenV4, layers.LayerTypeIPv4},
		{"[fd00:a::2]:6082", "[fd00:b::22]:6082", InnerLenV6, layers.LayerTypeIPv6},
	} {
		src, dst := netip.MustParseAddrPort(tc.src), netip.MustParseAddrPort(tc.dst)
		b := make([]byte, 200)
		n := PutInner(b, src, dst, payload)
		if n != tc.n {
			t.Fatalf("%s: length %d, want %d", tc.src, n, tc.n)
		}
		pkt := gopacket.NewPacket(b[:n], tc.first, gopacket.Default)
		if el := pkt.ErrorLayer(); el != nil {
			t.Fatalf("%s: decode: %v", tc.src, el.Error())
		}
		udp, _ := pkt.Layer(layers.LayerTypeUDP).(*layers.UDP)
		if udp == nil || int(udp.SrcPort) != int(src.Port()) || int(udp.DstPort) != int(dst.Port()) || string(udp.Payload) != string(payload) {
			t.Fatalf("%s: udp layer %+v", tc.src, udp)
		}
		// Recompute the checksums with gopacket and compare.
		ip := pkt.NetworkLayer()
		if v4, ok := ip.(*layers.IPv4); ok {
			want := v4.Checksum
			buf := gopacket.NewSerializeBuffer()
			gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true}, v4, gopacket.Payload(v4.Payload))
			if v4.Checksum != want {
				t.Errorf("ipv4 checksum %#x, gopacket computes %#x", want, v4.Checksum)
			}
		}
		want := udp.Checksum
		udp.SetNetworkLayerForChecksum(ip)
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true}, udp, gopacket.Payload(udp.Payload)); err != nil {
			t.Fatal(err)
		}
		if udp.Checksum != want {
			t.Errorf("%s: udp checksum %#x, gopacket computes %#x", tc.src, want, udp.Checksum)
		}
		if !IsProbeFor(b[:n], dst) {
			t.Errorf("%s: IsProbeFor(own dst) = false", tc.src)
		}
		for _, other := range []netip.AddrPort{netip.AddrPortFrom(dst.Addr(), 53), netip.AddrPortFrom(src.Addr(), dst.Port()), {}} {
			if IsProbeFor(b[:n], other) {
				t.Errorf("%s: IsProbeFor(%s) = true", tc.src, other)
			}
		}
	}
	if PutInner(make([]byte, 200), netip.MustParseAddrPort("10.0.0.1:1"), netip.MustParseAddrPort("[::1]:1"), payload) != 0 {
		t.Error("mixed families accepted")
	}
	if PutInner(make([]byte, 20), netip.MustParseAddrPort("10.0.0.1:1"), netip.MustParseAddrPort("10.0.0.2:1"), payload) != 0 {
		t.Error("short buffer accepted")
	}
}

func TestIsProbeForRefusesFragmentsAndOtherProtocols(t *testing.T) {
	dst := netip.MustParseAddrPort("10.2.0.22:6082")
	b := make([]byte, 200)
	n := PutInner(b, netip.MustParseAddrPort("10.1.0.2:6082"), dst, make([]byte, MessageLen))
	frag := append([]byte(nil), b[:n]...)
	frag[6] |= 0x20 // more fragments
	tcp := append([]byte(nil), b[:n]...)
	tcp[9] = 6
	for name, p := range map[string][]byte{"fragment": frag, "tcp": tcp, "truncated": b[:24], "garbage": {0xff, 1, 2}} {
		if IsProbeFor(p, dst) {
			t.Errorf("%s: accepted", name)
		}
	}
}

// FuzzParse: arbitrary datagrams on the probe port and arbitrary inner
// packets with the OAM bit are dropped, never a panic.
func FuzzParse(f *testing.F) {
	s := NewSigner(testKey(1))
	var good [MessageLen]byte
	s.Put(good[:], Message{Kind: KindRequest, Lane: 1, Session: 1, Seq: 1})
	f.Add(good[:])
	b := make([]byte, 200)
	n := PutInner(b, netip.MustParseAddrPort("10.1.0.2:6082"), netip.MustParseAddrPort("10.2.0.22:6082"), good[:])
	f.Add(b[:n])
	n = PutInner(b, netip.MustParseAddrPort("[fd00:a::2]:6082"), netip.MustParseAddrPort("[fd00:b::22]:6082"), good[:])
	f.Add(b[:n])
	dst4, dst6 := netip.MustParseAddrPort("10.2.0.22:6082"), netip.MustParseAddrPort("[fd00:b::22]:6082")
	f.Fuzz(func(t *testing.T, data []byte) {
		if m, err := s.Parse(data, ""); err == nil && len(data) != MessageLen {
			t.Fatalf("accepted %d bytes: %+v", len(data), m)
		}
		IsProbeFor(data, dst4)
		IsProbeFor(data, dst6)
	})
}
