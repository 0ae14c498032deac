// Package geneveauth authenticates the GENEVE frames a demux sends its
// gateways, for underlays where a host can forge a demux's source
// address (a shared LAN; cloud VPCs check sources for you). A demux
// seals each frame: an option carrying who sent it, which key, a
// counter and a tag. A gateway opens it: it checks the tag, then
// refuses a counter it has seen or one too old for its window, as
// WireGuard refuses replayed packets (RFC 6479's sliding window, through
// wireguard-go's replay.Filter).
//
// The option follows the 8-byte GENEVE header, so a sealed header is 32
// bytes (the demux's headroom holds it; the lane MTU budget counts it):
//
//	 8  class 0xfff0 (experimental) | type 0x81 (critical) | length 5 words
//	12  sender 1 | key ID 1 | reserved 2
//	16  counter 8, big-endian
//	24  tag 8: SipHash-2-4 of bytes 0..23 and everything after byte 31
//
// The tag covers the header (VNI, protocol, OAM bit), the counter and the
// whole inner packet; the outer addresses are not covered, but the key
// is one demux-gateway pair's (KeyOf), so a frame sealed for one
// gateway does not open at another. 64 bits of tag leave a forger one
// chance in 2^64 per frame sent, and every failed one is counted.
//
// Counters start at the sender's wall clock in nanoseconds and count up,
// so a restarted demux (or its standby, which has its own sender number
// and window) starts above anything it sent before, without state on
// disk: WireGuard's handshake relies on the clock the same way (its
// TAI64N timestamps). A demux whose clock was stepped back by more than
// its downtime is refused as replaying until it catches up; the gateway
// counts that as replayed and the demux's lanes go down, loudly.
//
// A demux also remembers the tags of the frames it sealed lately
// (Recent), so that it can tell an ICMP error about a frame it sent,
// which quotes the frame's option, from a forged one (Sealer.Sent):
// only a host that saw the frame knows its tag.
package geneveauth

import (
	"encoding/binary"
	"errors"
	"math"
	"sync/atomic"
	"unsafe"

	"golang.zx2c4.com/wireguard/replay"

	"github.com/clusterpeer/clusterpeer/dataplane/packet"
	"github.com/clusterpeer/clusterpeer/dataplane/siphash"
	"github.com/clusterpeer/clusterpeer/tunnel/keyring"
)

const (
	OptionLen = 24                           // the option, its own header included
	HeaderLen = packet.GeneveLen + OptionLen // a sealed frame's GENEVE header
	// Senders is how many demuxes one gateway tells apart: a side's demux
	// (0) and its standby (1).
	Senders = 2

	offSender  = packet.GeneveLen + 4
	offKeyID   = offSender + 1
	offCounter = packet.GeneveLen + 8
	offTag     = packet.GeneveLen + 16
)

// Errors of Open; the gateway counts drops by them.
var (
	ErrNoTag      = errors.New("geneve: no authentication option")
	ErrUnknownKey = errors.New("geneve: unknown sender or key ID")
	ErrBadTag     = errors.New("geneve: authentication tag does not match")
	ErrReplayed   = errors.New("geneve: counter seen before or older than the window")
)

// Key is one demux-gateway pair's SipHash key.
type Key [16]byte

// KeyOf is the SipHash key of a demux-gateway pair's node of the key
// tree (keyring.GenevePath: one per side, sender and lane, so a frame
// sealed for one gateway does not open at another).
func KeyOf(k keyring.Key) Key { return Key(k[:len(Key{})]) }

func (k Key) words() (uint64, uint64) {
	return binary.LittleEndian.Uint64(k[0:8]), binary.LittleEndian.Uint64(k[8:16])
}

// Sealer seals one sender's frames into one lane. Reserve, Seal and
// SetKey are safe from any goroutine (the data path and the prober share
// a Sealer); Seal writes only the frame it is given.
type Sealer struct {
	key    atomic.Pointer[sealKey]
	sender uint8
	next   *atomic.Uint64 // &own, or a counter shared with the XDP program
	own    atomic.Uint64
	recent *Recent // where Seal notes its tags (nil: nowhere)
	lane   uint16
}

type sealKey struct {
	k      Key
	k0, k1 uint64
	id     uint8
}

// NewSealer returns a Sealer whose first counter is start (the wall
// clock in nanoseconds, see the package comment).
func NewSealer(k Key, keyID, sender uint8, start uint64) *Sealer {
	s := &Sealer{sender: sender}
	s.next = &s.own
	s.SetKey(k, keyID)
	s.next.Store(start)
	return s
}

// NewSealerOn returns a Sealer that takes its counters from c, which
// another sealer of the same lane's frames shares (the XDP program,
// through a memory-mapped map): the gateway's replay window is per
// sender, so all of one sender's frames to it must count in one
// sequence. c is raised to start if it is below.
func NewSealerOn(k Key, keyID, sender uint8, c *atomic.Uint64, start uint64) *Sealer {
	s := &Sealer{sender: sender, next: c}
	s.SetKey(k, keyID)
	for {
		old := c.Load()
		if old >= start || c.CompareAndSwap(old, start) {
			return s
		}
	}
}

// SetKey seals the frames from now on with k, named keyID (a rotated
// secret's generation); the counter goes on, so the gateway's replay
// window, which is per sender, keeps working across the change.
func (s *Sealer) SetKey(k Key, keyID uint8) {
	sk := &sealKey{k: k, id: keyID}
	sk.k0, sk.k1 = k.words()
	s.key.Store(sk)
}

// KeyID is the key ID the Sealer seals with now.
func (s *Sealer) KeyID() uint8 { return s.key.Load().id }

// Key is the key and key ID the Sealer seals with now (the XDP program
// seals the lane's frames with the same).
func (s *Sealer) Key() (Key, uint8) {
	k := s.key.Load()
	return k.k, k.id
}

// Sender is the sender number the Sealer writes.
func (s *Sealer) Sender() uint8 { return s.sender }

// Reserve returns the first of n counters for the caller's frames: one
// atomic add per batch, not per frame.
func (s *Sealer) Reserve(n int) uint64 { return s.next.Add(uint64(n)) - uint64(n) }

// Remember has Seal note each tag in r, under lane (the lane's sealers
// share r with the lane's other sealers and the XDP program), for Sent.
// It is for building a Sealer, before its first Seal.
func (s *Sealer) Remember(r *Recent, lane uint16) { s.recent, s.lane = r, lane }

// Seal writes the option into frame, whose first 8 bytes are a GENEVE
// header without options (packet.PutGeneve) followed by OptionLen bytes
// of room and the inner packet, and tags it with counter.
func (s *Sealer) Seal(frame []byte, counter uint64) {
	_ = frame[HeaderLen-1]
	k := s.key.Load()
	frame[0] = frame[0]&0xc0 | OptionLen/4
	frame[1] |= 0x40 // a critical option follows
	binary.BigEndian.PutUint16(frame[packet.GeneveLen:], packet.GeneveAuthClass)
	frame[packet.GeneveLen+2] = packet.GeneveAuthType
	frame[packet.GeneveLen+3] = OptionLen/4 - 1
	frame[offSender], frame[offKeyID] = s.sender, k.id
	frame[offKeyID+1], frame[offKeyID+2] = 0, 0
	binary.BigEndian.PutUint64(frame[offCounter:], counter)
	tag := siphash.Sum24(k.k0, k.k1, frame[:offTag], frame[HeaderLen:])
	binary.BigEndian.PutUint64(frame[offTag:], tag)
	if s.recent != nil {
		s.recent.tags[RecentSlot(s.lane, counter)].Store(tag)
	}
}

// Sent reports whether quoted, the start of a GENEVE frame as an ICMP
// error quotes it, is one this Sealer's lane sealed among its last
// RecentSlots frames (nearly always: a slot another lane's frame took
// since forgets one): its counter is one of those and its tag the one
// noted for it. A forger who has not seen the frame must guess 64 bits.
func (s *Sealer) Sent(quoted []byte) bool {
	if s.recent == nil || len(quoted) < HeaderLen || !hasOption(quoted) || quoted[offSender] != s.sender {
		return false
	}
	counter, tag := binary.BigEndian.Uint64(quoted[offCounter:]), binary.BigEndian.Uint64(quoted[offTag:])
	next := s.next.Load()
	if counter >= next || next-counter > RecentSlots || tag == 0 {
		return false // not sent yet, too old, or a slot never written
	}
	return s.recent.tags[RecentSlot(s.lane, counter)].Load() == tag
}

// hasOption reports whether frame, a GENEVE header of at least
// packet.GeneveLen bytes and what follows, starts its options with ours.
func hasOption(frame []byte) bool {
	return packet.Geneve(frame).OptionsLen() >= OptionLen && len(frame) >= HeaderLen &&
		binary.BigEndian.Uint16(frame[packet.GeneveLen:]) == packet.GeneveAuthClass &&
		frame[packet.GeneveLen+2] == packet.GeneveAuthType && frame[packet.GeneveLen+3]&0x1f == OptionLen/4-1
}

// RecentSlots is how many tags a Recent holds, of all lanes' frames
// together: at a million frames a second, the last 65 ms.
const RecentSlots = 1 << 16

// Recent holds the tags of the frames a demux sealed lately, for Sent:
// a slot per counter of a lane, lanes spread across the slots so that
// their counters (which start at one clock) do not take each other's.
// The XDP program writes the same slots (RECENT_SLOTS in demux.c).
type Recent struct {
	tags []atomic.Uint64
}

// NewRecent returns an empty Recent.
func NewRecent() *Recent { return &Recent{tags: make([]atomic.Uint64, RecentSlots)} }

// RecentOn returns a Recent in mem, RecentSlots 8-byte words shared with
// the XDP program (a memory-mapped map), or nil if mem is too short.
func RecentOn(mem []byte) *Recent {
	if len(mem) < RecentSlots*8 {
		return nil
	}
	return &Recent{tags: unsafe.Slice((*atomic.Uint64)(unsafe.Pointer(&mem[0])), RecentSlots)}
}

// RecentSlot is the slot of lane's frame with counter.
func RecentSlot(lane uint16, counter uint64) uint32 {
	return uint32(counter^uint64(lane)*0x9e3779b97f4a7c15) & (RecentSlots - 1)
}

// Opener checks sealed frames at a gateway. It keeps each sender's
// replay window, so Open belongs to one goroutine (the gateway's GENEVE
// reader); the keys change from any goroutine (UseKeysOf, a reload), one
// atomic load per frame.
type Opener struct {
	keys    atomic.Pointer[[Senders][]openKey]
	windows [Senders]replay.Filter
}

type openKey struct {
	id     uint8
	k0, k1 uint64
}

// NewOpener returns an Opener with no keys; Add gives it some.
func NewOpener() *Opener {
	o := &Opener{}
	o.keys.Store(&[Senders][]openKey{})
	return o
}

// Add lets the frames sender seals with k (named id) in. A sender may
// have several keys at once, while a secret is rotated; they are tried
// in the order added among those with the frame's ID. Add is for
// building an Opener; a running one takes new keys with UseKeysOf.
func (o *Opener) Add(sender, id uint8, k Key) {
	ok := openKey{id: id}
	ok.k0, ok.k1 = k.words()
	keys := *o.keys.Load()
	keys[sender] = append(keys[sender][:len(keys[sender]):len(keys[sender])], ok)
	o.keys.Store(&keys)
}

// UseKeysOf makes o open with the keys of n (built afresh from a
// reloaded key file) and no others, keeping o's replay windows: a
// rotation must not let a frame seen before in again.
func (o *Opener) UseKeysOf(n *Opener) { o.keys.Store(n.keys.Load()) }

// Open checks frame (a GENEVE header, as packet.ParseGeneve accepted it,
// and the inner packet) and, if it is sealed by a known sender with a
// key it holds and a counter not seen, records the counter.
func (o *Opener) Open(frame []byte) error {
	if !hasOption(frame) {
		return ErrNoTag
	}
	sender, id := frame[offSender], frame[offKeyID]
	if sender >= Senders {
		return ErrUnknownKey
	}
	keys := o.keys.Load()[sender]
	tag := binary.BigEndian.Uint64(frame[offTag:])
	known := false
	for i := range keys {
		k := &keys[i]
		if k.id != id {
			continue
		}
		known = true
		if siphash.Sum24(k.k0, k.k1, frame[:offTag], frame[HeaderLen:]) == tag {
			if !o.windows[sender].ValidateCounter(binary.BigEndian.Uint64(frame[offCounter:]), math.MaxUint64) {
				return ErrReplayed
			}
			return nil
		}
	}
	if !known {
		return ErrUnknownKey
	}
	return ErrBadTag
}
