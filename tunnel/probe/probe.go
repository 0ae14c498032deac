// Package probe checks lanes end to end, as BFD (RFC 5880) checks a
// forwarding path, and decides when a lane is up.
//
// A probe travels the whole lane and back:
//
//	demux --GENEVE, OAM bit--> near gateway --WireGuard--> far gateway
//	      (inner: UDP demux:port -> far gateway:port)      reflector answers
//	demux <--plain UDP-- near gateway <--WireGuard-- far gateway
//
// The near gateway forwards an OAM frame into its lane only when its inner
// packet is a probe for its peer (Ingress), the far gateway's kernel
// delivers it to the Reflector on the gateway's own address, and the
// reply is routed back into the same lane like any packet for the demux's
// network. So a lane counts as up only while both gateways, both
// directions of the encrypted tunnel and the near gateway's delivery work.
//
// Probes and replies carry an HMAC keyed per lane and direction from the
// peering's secret (tunnel/keyring), so nobody on the networks can make a
// dead lane look alive; the Prober accepts a reply only for a probe it sent and
// has not seen answered.
package probe

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"net/netip"
	"time"

	"github.com/clusterpeer/clusterpeer/dataplane/packet"
	"github.com/clusterpeer/clusterpeer/flowhash"
	"github.com/clusterpeer/clusterpeer/tunnel/keyring"
)

// Message layout (UDP payload, 52 bytes, big-endian):
//
//	0  magic "cpLP"      4
//	4  version 2         1
//	5  kind              1   1 request, 2 reply, 3 notice
//	6  lane              2
//	8  session           8   random per prober run: replies to an earlier run never count
//	16 seq               8   per lane, from 1
//	24 sent (ns)         8   the prober's clock; echoed. In a notice: the diagnostic code
//	32 key ID            1   the generation of the peering secret that signed it
//	33 reserved          3   zero
//	36 HMAC-SHA256/128  16   over bytes 0..35 with the key of the lane and direction
//
// A notice is a gateway's answer to a probe when it knows its lane cannot
// work (BFD's diagnostic codes, RFC 5880 4.1, say why): it names the
// prober's session and a sequence number that prober sent, so the prober
// can check it against what it sent, as it checks replies.
//
// The key is the lane's, for the probes of one side's demux
// (keyring.ProbePath): a gateway holds its own lane's two, and cannot
// sign for another lane; the key ID names the generation, so that while
// the secret is rotated both are accepted (BFD's authentication carries
// a key ID for the same reason, RFC 5880 4.3).
const (
	MessageLen = 52
	magic      = 0x63704c50 // "cpLP"
	version    = 2
	macLen     = 16
	offKeyID   = 32
	signedLen  = MessageLen - macLen
)

// Kind says which way a message goes.
type Kind uint8

const (
	KindRequest Kind = 1
	KindReply   Kind = 2
	KindNotice  Kind = 3 // a gateway says the lane cannot work (Diag)
)

// Diag is why a gateway reports its lane down, numbered as BFD's
// diagnostic codes (RFC 5880 4.1).
type Diag uint8

const (
	DiagNone           Diag = 0
	DiagNeighborDown   Diag = 3 // the peer gateway is unreachable (ICMP errors to its WireGuard port)
	DiagForwardingDown Diag = 4 // the gateway's TUN or WireGuard device is gone
	DiagPathDown       Diag = 5 // the underlay link or address towards the peer is gone
	DiagAdminDown      Diag = 7 // a planned stop: move the flows, nothing is lost yet
	// DiagNoHandshake is ours, past BFD's assigned codes: the gateway
	// has no valid WireGuard session with its peer (none in a while, or
	// the last one expired), so nothing crosses the lane.
	DiagNoHandshake Diag = 9
)

func (d Diag) String() string {
	switch d {
	case DiagNone:
		return "no diagnostic"
	case DiagNeighborDown:
		return "peer gateway unreachable"
	case DiagForwardingDown:
		return "forwarding plane gone"
	case DiagPathDown:
		return "underlay path down"
	case DiagAdminDown:
		return "administratively down"
	case DiagNoHandshake:
		return "no valid WireGuard handshake"
	}
	return fmt.Sprintf("diagnostic %d", uint8(d))
}

// Message is a probe or its reply.
type Message struct {
	Kind    Kind
	Lane    flowhash.LaneID
	Session uint64
	Seq     uint64
	Sent    int64
	Diag    Diag // notices only; carried where the others carry Sent
	// Side is the side whose demux sent the probe this message is or
	// answers: it chooses the key, and is not on the wire (each receiver
	// knows it from where the message came).
	Side  string
	KeyID uint8 // set by Parse: the generation that signed it
}

// Errors of Parse; the reflector and prober count drops by these.
var (
	ErrFormat = errors.New("not a clusterpeer probe")
	ErrMAC    = errors.New("probe authentication failed")
	// ErrKey: the message names a generation this node does not accept
	// (an old secret past its grace, or another peering's), or a lane
	// whose key it does not hold.
	ErrKey = errors.New("probe key unknown")
)

// Signer writes and checks messages with a node's keys (its keyring:
// one key per lane and direction, per generation). It keeps HMAC state,
// so one Signer belongs to one goroutine (or one lock).
type Signer struct {
	ring *keyring.Ring
	now  func() time.Time
	macs map[macID]hash.Hash
	sum  []byte
}

type macID struct {
	gen  uint8
	side string
	lane flowhash.LaneID
}

// maxMACs bounds the HMAC states kept (a few per lane in use).
const maxMACs = 1024

// NewSigner returns a Signer for ring's keys.
func NewSigner(ring *keyring.Ring) *Signer {
	return &Signer{ring: ring, now: time.Now, macs: map[macID]hash.Hash{}, sum: make([]byte, 0, sha256.Size)}
}

// SetRing replaces the keys (a reload): the generations it holds sign
// and are accepted from now on.
func (s *Signer) SetRing(ring *keyring.Ring) {
	s.ring = ring
	clear(s.macs)
}

// Signing returns the key ID that signs now (false: no generation does).
func (s *Signer) Signing() (uint8, bool) {
	g := s.ring.Signing(s.now())
	if g == nil {
		return 0, false
	}
	return g.ID, true
}

// mac returns the HMAC state of lane's probes of side in generation g.
func (s *Signer) mac(g *keyring.Gen, side string, lane flowhash.LaneID) hash.Hash {
	id := macID{g.ID, side, lane}
	if m, ok := s.macs[id]; ok {
		return m
	}
	k, ok := g.Key(keyring.ProbePath(side, uint16(lane)))
	if !ok || lane == 0 {
		return nil
	}
	if len(s.macs) >= maxMACs {
		clear(s.macs)
	}
	m := hmac.New(sha256.New, k[:])
	s.macs[id] = m
	return m
}

func (s *Signer) tag(m hash.Hash, b []byte) []byte {
	m.Reset()
	m.Write(b[:signedLen])
	s.sum = m.Sum(s.sum[:0])
	return s.sum[:macLen]
}

// Put writes m into b (at least MessageLen bytes) and signs it with the
// generation that signs now; false if no key of the ring can.
func (s *Signer) Put(b []byte, m Message) bool {
	g := s.ring.Signing(s.now())
	if g == nil {
		return false
	}
	mac := s.mac(g, m.Side, m.Lane)
	if mac == nil {
		return false
	}
	binary.BigEndian.PutUint32(b[0:4], magic)
	b[4], b[5] = version, byte(m.Kind)
	binary.BigEndian.PutUint16(b[6:8], uint16(m.Lane))
	binary.BigEndian.PutUint64(b[8:16], m.Session)
	binary.BigEndian.PutUint64(b[16:24], m.Seq)
	v := uint64(m.Sent)
	if m.Kind == KindNotice {
		v = uint64(m.Diag)
	}
	binary.BigEndian.PutUint64(b[24:32], v)
	b[offKeyID], b[offKeyID+1], b[offKeyID+2], b[offKeyID+3] = g.ID, 0, 0, 0
	copy(b[signedLen:MessageLen], s.tag(mac, b))
	return true
}

// Parse checks b's format and MAC, with the key of the lane it names
// for the probes of side's demux, and returns the message.
func (s *Signer) Parse(b []byte, side string) (Message, error) {
	if len(b) != MessageLen || binary.BigEndian.Uint32(b[0:4]) != magic || b[4] != version {
		return Message{}, ErrFormat
	}
	k := Kind(b[5])
	if k != KindRequest && k != KindReply && k != KindNotice {
		return Message{}, ErrFormat
	}
	lane := flowhash.LaneID(binary.BigEndian.Uint16(b[6:8]))
	g := s.ring.Accepted(b[offKeyID], s.now())
	if g == nil {
		return Message{}, ErrKey
	}
	mac := s.mac(g, side, lane)
	if mac == nil {
		return Message{}, ErrKey
	}
	if subtle.ConstantTimeCompare(s.tag(mac, b), b[signedLen:MessageLen]) != 1 {
		return Message{}, ErrMAC
	}
	m := Message{
		Kind:    k,
		Lane:    lane,
		Session: binary.BigEndian.Uint64(b[8:16]),
		Seq:     binary.BigEndian.Uint64(b[16:24]),
		Side:    side,
		KeyID:   g.ID,
	}
	v := binary.BigEndian.Uint64(b[24:32])
	if k == KindNotice {
		if v > 255 {
			return Message{}, ErrFormat
		}
		m.Diag = Diag(v)
	} else {
		m.Sent = int64(v)
	}
	return m, nil
}

// Inner packet: the probe as the near gateway forwards it into its lane.
const (
	InnerLenV4 = 20 + 8 + MessageLen
	InnerLenV6 = 40 + 8 + MessageLen
)

// PutInner writes an IP/UDP packet from src to dst carrying payload into
// b and returns its length (0 if b is short or the families differ).
// Checksums are complete: the far gateway's kernel checks them.
func PutInner(b []byte, src, dst netip.AddrPort, payload []byte) int {
	udpLen := packet.UDPLen + len(payload)
	var ipLen int
	switch {
	case src.Addr().Is4() && dst.Addr().Is4():
		ipLen = packet.IPv4MinLen
		if len(b) < ipLen+udpLen {
			return 0
		}
		packet.PutIPv4(b, packet.IPv4Fields{TOS: packet.DSCPNetworkControl, TotalLen: ipLen + udpLen, DF: true,
			Protocol: packet.ProtoUDP, Src: src.Addr(), Dst: dst.Addr()})
	case src.Addr().Is6() && dst.Addr().Is6():
		ipLen = packet.IPv6Len
		if len(b) < ipLen+udpLen {
			return 0
		}
		packet.PutIPv6(b, packet.IPv6Fields{TrafficClass: packet.DSCPNetworkControl, PayloadLen: udpLen,
			NextHeader: packet.ProtoUDP, Src: src.Addr(), Dst: dst.Addr()})
	default:
		return 0
	}
	d := b[ipLen : ipLen+udpLen]
	udp := packet.PutUDP(d, src.Port(), dst.Port(), udpLen)
	copy(d[packet.UDPLen:], payload)
	udp.SetChecksum(d, packet.PseudoHeaderSum(src.Addr(), dst.Addr(), packet.ProtoUDP, udpLen))
	return ipLen + udpLen
}

// IsProbeFor reports whether pkt, an inner packet of an OAM frame, is a
// UDP packet to dst: what a gateway forwards into its lane for its peer's
// reflector. Anything else with the OAM bit is not ours to forward.
func IsProbeFor(pkt []byte, dst netip.AddrPort) bool {
	if !dst.IsValid() {
		return false
	}
	var udp []byte
	switch packet.Version(pkt) {
	case 4:
		if len(pkt) < packet.IPv4MinLen || !dst.Addr().Is4() {
			return false
		}
		ip := packet.IPv4(pkt)
		ihl := ip.HeaderLen()
		if ihl < packet.IPv4MinLen || len(pkt) < ihl+packet.UDPLen || ip.Protocol() != packet.ProtoUDP ||
			ip.Fragment() || ip.Dst() != dst.Addr() {
			return false
		}
		udp = pkt[ihl:]
	case 6:
		if len(pkt) < packet.IPv6Len+packet.UDPLen || !dst.Addr().Is6() {
			return false
		}
		ip := packet.IPv6(pkt)
		if ip.NextHeader() != packet.ProtoUDP || ip.Dst() != dst.Addr() {
			return false
		}
		udp = pkt[packet.IPv6Len:]
	default:
		return false
	}
	return packet.UDP(udp).DstPort() == dst.Port()
}
