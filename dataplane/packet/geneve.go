// GENEVE (RFC 8926), the encapsulation between a demux and its local
// gateways (UDP port 6081, as AWS Gateway Load Balancer uses). The demux
// writes a header in the headroom in front of an inner IP packet
// (PutGeneve); a gateway checks a received UDP payload (ParseGeneve) and
// hands on the inner packet. Health probes set the O (OAM) bit; data
// packets never do.
//
//	 0                   1                   2                   3
//	|Ver|  Opt Len  |O|C|    Rsvd.  |          Protocol Type        |
//	|        Virtual Network Identifier (VNI)       |    Reserved   |
//	|                    Variable-Length Options                    |

package packet

import (
	"encoding/binary"
	"errors"
)

const (
	GenevePort       = 6081 // IANA-assigned UDP port
	GeneveLen        = 8    // fixed part
	GeneveMaxOptions = 63 * 4

	ProtoIPv4 = 0x0800 // inner packet types (EtherType)
	ProtoIPv6 = 0x86dd

	MaxVNI = 1<<24 - 1

	// The authentication option (dataplane/geneveauth): a class from the
	// experimental range (RFC 8926 section 8.1: 0xFFF0-0xFFFF), critical,
	// so that a receiver that does not know it drops the frame. It is the
	// one critical option ParseGeneve knows.
	GeneveAuthClass = 0xfff0
	GeneveAuthType  = 0x81
)

// Errors ParseGeneve returns; data paths count them as drop reasons.
var (
	ErrGeneveTruncated      = errors.New("geneve: truncated")
	ErrGeneveVersion        = errors.New("geneve: unknown version")
	ErrGeneveOptions        = errors.New("geneve: malformed options")
	ErrGeneveCriticalOption = errors.New("geneve: unknown critical option")
)

// Geneve is a view of a GENEVE header at the start of a UDP payload. Its
// methods assume the length was checked (by ParseGeneve, or by PutGeneve writing it).
type Geneve []byte

func (h Geneve) Version() uint8       { return h[0] >> 6 }
func (h Geneve) OptionsLen() int      { return int(h[0]&0x3f) * 4 }
func (h Geneve) OAM() bool            { return h[1]&0x80 != 0 }
func (h Geneve) Critical() bool       { return h[1]&0x40 != 0 }
func (h Geneve) Protocol() uint16     { return binary.BigEndian.Uint16(h[2:4]) }
func (h Geneve) VNI() uint32          { return binary.BigEndian.Uint32(h[4:8]) >> 8 }
func (h Geneve) Len() int             { return GeneveLen + h.OptionsLen() }
func (h Geneve) Options() []byte      { return h[GeneveLen:h.Len()] }
func (h Geneve) SetVNI(vni uint32)    { binary.BigEndian.PutUint32(h[4:8], vni<<8) }
func (h Geneve) SetProtocol(p uint16) { binary.BigEndian.PutUint16(h[2:4], p) }

// Put writes a header without options into b[:GeneveLen] (the headroom in
// front of the inner packet) and returns it.
func PutGeneve(b []byte, vni uint32, proto uint16, oam bool) Geneve {
	h := Geneve(b[:GeneveLen])
	h[0] = 0 // version 0, no options
	h[1] = 0
	if oam {
		h[1] = 0x80
	}
	h.SetProtocol(proto)
	h.SetVNI(vni & MaxVNI)
	return h
}

// Parse checks the GENEVE header at the start of a UDP payload and returns
// it and the inner packet. Options are walked and checked: each must fit,
// and a packet carrying a critical option this implementation does not
// know is refused, as RFC 8926 requires (we know the authentication
// option alone; geneveauth checks it). Non-critical options are skipped.
func ParseGeneve(b []byte) (Geneve, []byte, error) {
	if len(b) < GeneveLen {
		return nil, nil, ErrGeneveTruncated
	}
	h := Geneve(b)
	if h.Version() != 0 {
		return nil, nil, ErrGeneveVersion
	}
	if len(b) < h.Len() {
		return nil, nil, ErrGeneveTruncated
	}
	for opts := h.Options(); len(opts) > 0; {
		o, rest, err := NextGeneveOption(opts)
		if err != nil {
			return nil, nil, err
		}
		if o.Critical() && (o.Class != GeneveAuthClass || o.Type != GeneveAuthType) {
			return nil, nil, ErrGeneveCriticalOption
		}
		opts = rest
	}
	return h[:h.Len()], b[h.Len():], nil
}

// GeneveOption is one TLV option: class, type, and data (a view, not a copy).
type GeneveOption struct {
	Class uint16
	Type  uint8
	Data  []byte // a multiple of 4 bytes, up to 124
}

// Critical reports whether a receiver that does not know the option must
// drop the packet (the type's high bit).
func (o GeneveOption) Critical() bool { return o.Type&0x80 != 0 }

// NextGeneveOption reads the first option of opts and returns it and the rest.
func NextGeneveOption(opts []byte) (GeneveOption, []byte, error) {
	if len(opts) < 4 {
		return GeneveOption{}, nil, ErrGeneveOptions
	}
	n := 4 + int(opts[3]&0x1f)*4
	if len(opts) < n {
		return GeneveOption{}, nil, ErrGeneveOptions
	}
	return GeneveOption{Class: binary.BigEndian.Uint16(opts), Type: opts[2], Data: opts[4:n]}, opts[n:], nil
}

// AppendGeneveOption appends an option's wire form to b. Data must be a multiple
// of 4 bytes, at most 124.
func AppendGeneveOption(b []byte, o GeneveOption) ([]byte, error) {
	if len(o.Data)%4 != 0 || len(o.Data) > 124 {
		return b, ErrGeneveOptions
	}
	b = binary.BigEndian.AppendUint16(b, o.Class)
	b = append(b, o.Type, byte(len(o.Data)/4))
	return append(b, o.Data...), nil
}

// PutGeneveWithOptions writes a header followed by already-encoded options
// (AppendGeneveOption) into b and returns it. The C bit is set when any option is
// critical.
func PutGeneveWithOptions(b []byte, vni uint32, proto uint16, oam bool, opts []byte) (Geneve, error) {
	if len(opts)%4 != 0 || len(opts) > GeneveMaxOptions || len(b) < GeneveLen+len(opts) {
		return nil, ErrGeneveOptions
	}
	PutGeneve(b, vni, proto, oam)
	h := Geneve(b[:GeneveLen+len(opts)])
	h[0] = byte(len(opts) / 4)
	copy(h[GeneveLen:], opts)
	for rest := opts; len(rest) > 0; {
		o, r, err := NextGeneveOption(rest)
		if err != nil {
			return nil, err
		}
		if o.Critical() {
			h[1] |= 0x40
		}
		rest = r
	}
	return h, nil
}
