package packet

import "encoding/binary"

// Ethernet is a view of an Ethernet II header (no VLAN tag). Its methods
// assume EthernetLen bytes.
type Ethernet []byte

// Ethernet header fields and the EtherTypes the project reads.
const (
	EthernetLen = 14

	ethDst  = 0
	ethSrc  = 6
	ethType = 12

	EtherTypeIPv4 = ProtoIPv4
	EtherTypeIPv6 = ProtoIPv6
)

func (h Ethernet) Dst() [6]byte      { return [6]byte(h[ethDst:]) }
func (h Ethernet) Src() [6]byte      { return [6]byte(h[ethSrc:]) }
func (h Ethernet) EtherType() uint16 { return binary.BigEndian.Uint16(h[ethType:]) }
func (h Ethernet) Payload() []byte   { return h[EthernetLen:] }

// PutEthernet writes a header into b (at least EthernetLen bytes) and
// returns it.
func PutEthernet(b []byte, dst, src [6]byte, etherType uint16) Ethernet {
	h := Ethernet(b[:EthernetLen])
	copy(h[ethDst:], dst[:])
	copy(h[ethSrc:], src[:])
	binary.BigEndian.PutUint16(h[ethType:], etherType)
	return h
}
