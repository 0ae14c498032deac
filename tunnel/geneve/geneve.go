// Package geneve reads and writes GENEVE headers (RFC 8926), the
// encapsulation between a demux and its local gateways (UDP port 6081, as
// AWS Gateway Load Balancer uses).
//
// What flows through it: the demux writes a Header in the headroom in front
// of an inner IP packet (Put); a gateway checks a received UDP payload
// (Parse) and hands on the inner packet. Both work in place on the packet's
// bytes and never allocate. Health probes set the O (OAM) bit; data packets
// never do.
//
//	 0                   1                   2                   3
//	|Ver|  Opt Len  |O|C|    Rsvd.  |          Protocol Type        |
//	|        Virtual Network Identifier (VNI)       |    Reserved   |
//	|                    Variable-Length Options                    |
package geneve

import (
	"encoding/binary"
	"errors"
)

const (
	Port       = 6081 // IANA-assigned UDP port
	HeaderLen  = 8    // fixed part
	MaxOptions = 63 * 4

	ProtoIPv4 = 0x0800 // inner packet types (EtherType)
	ProtoIPv6 = 0x86dd

	MaxVNI = 1<<24 - 1
)

// Errors Parse returns; data paths count them as drop reasons.
var (
	ErrTruncated      = errors.New("geneve: truncated")
	ErrVersion        = errors.New("geneve: unknown version")
	ErrOptions        = errors.New("geneve: malformed options")
	ErrCriticalOption = errors.New("geneve: unknown critical option")
)

// Header is a view of a GENEVE header at the start of a UDP payload. Its
// methods assume the length was checked (by Parse, or by Put writing it).
type Header []byte

func (h Header) Version() uint8       { return h[0] >> 6 }
func (h Header) OptionsLen() int      { return int(h[0]&0x3f) * 4 }
func (h Header) OAM() bool            { return h[1]&0x80 != 0 }
func (h Header) Critical() bool       { return h[1]&0x40 != 0 }
func (h Header) Protocol() uint16     { return binary.BigEndian.Uint16(h[2:4]) }
func (h Header) VNI() uint32          { return binary.BigEndian.Uint32(h[4:8]) >> 8 }
func (h Header) Len() int             { return HeaderLen + h.OptionsLen() }
func (h Header) Options() []byte      { return h[HeaderLen:h.Len()] }
func (h Header) SetVNI(vni uint32)    { binary.BigEndian.PutUint32(h[4:8], vni<<8) }
func (h Header) SetProtocol(p uint16) { binary.BigEndian.PutUint16(h[2:4], p) }

// Put writes a header without options into b[:HeaderLen] (the headroom in
// front of the inner packet) and returns it.
func Put(b []byte, vni uint32, proto uint16, oam bool) Header {
	h := Header(b[:HeaderLen])
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
// know is refused, as RFC 8926 requires (we know none). Non-critical
// options are skipped.
func Parse(b []byte) (Header, []byte, error) {
	if len(b) < HeaderLen {
		return nil, nil, ErrTruncated
	}
	h := Header(b)
	if h.Version() != 0 {
		return nil, nil, ErrVersion
	}
	if len(b) < h.Len() {
		return nil, nil, ErrTruncated
	}
	for opts := h.Options(); len(opts) > 0; {
		o, rest, err := NextOption(opts)
		if err != nil {
			return nil, nil, err
		}
		if o.Critical() {
			return nil, nil, ErrCriticalOption
		}
		opts = rest
	}
	return h[:h.Len()], b[h.Len():], nil
}

// Option is one TLV option: class, type, and data (a view, not a copy).
type Option struct {
	Class uint16
	Type  uint8
	Data  []byte // a multiple of 4 bytes, up to 124
}

// Critical reports whether a receiver that does not know the option must
// drop the packet (the type's high bit).
func (o Option) Critical() bool { return o.Type&0x80 != 0 }

// NextOption reads the first option of opts and returns it and the rest.
func NextOption(opts []byte) (Option, []byte, error) {
	if len(opts) < 4 {
		return Option{}, nil, ErrOptions
	}
	n := 4 + int(opts[3]&0x1f)*4
	if len(opts) < n {
		return Option{}, nil, ErrOptions
	}
	return Option{Class: binary.BigEndian.Uint16(opts), Type: opts[2], Data: opts[4:n]}, opts[n:], nil
}

// AppendOption appends an option's wire form to b. Data must be a multiple
// of 4 bytes, at most 124.
func AppendOption(b []byte, o Option) ([]byte, error) {
	if len(o.Data)%4 != 0 || len(o.Data) > 124 {
		return b, ErrOptions
	}
	b = binary.BigEndian.AppendUint16(b, o.Class)
	b = append(b, o.Type, byte(len(o.Data)/4))
	return append(b, o.Data...), nil
}

// PutWithOptions writes a header followed by already-encoded options
// (AppendOption) into b and returns it. The C bit is set when any option is
// critical.
func PutWithOptions(b []byte, vni uint32, proto uint16, oam bool, opts []byte) (Header, error) {
	if len(opts)%4 != 0 || len(opts) > MaxOptions || len(b) < HeaderLen+len(opts) {
		return nil, ErrOptions
	}
	Put(b, vni, proto, oam)
	h := Header(b[:HeaderLen+len(opts)])
	h[0] = byte(len(opts) / 4)
	copy(h[HeaderLen:], opts)
	for rest := opts; len(rest) > 0; {
		o, r, err := NextOption(rest)
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
