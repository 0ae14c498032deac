package tunlink

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/clusterpeer/clusterpeer/dataplane/packet"
)

// VirtioHdrLen is the virtio_net_hdr in front of each packet a TUN with
// IFF_VNET_HDR (as Create makes them) hands over: GSO type, size and
// where the checksum the kernel left to us starts and goes.
const VirtioHdrLen = 10

// Reader reads a TUN queue (one device of Create) without waiting, for a
// loop that has read once through wireguard-go and takes what else is
// queued into the same batch. One goroutine uses a Reader.
type Reader struct {
	rc   syscall.RawConn
	read func(fd uintptr) bool // r.readFD, bound once: no closure per read
	buf  []byte
	n    int
	err  error
}

// NewReader reads dev's queue; nil if dev has no file to read (a test's
// device).
func NewReader(dev tun.Device) *Reader {
	f := dev.File()
	if f == nil {
		return nil
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return nil
	}
	r := &Reader{rc: rc}
	r.read = r.readFD
	return r
}

// readFD reads once. The descriptor does not block (wireguard-go's TUN
// is non-blocking), so the read is a raw system call: the goroutine keeps
// its P, and Go's sysmon, which wakes every 20 µs while a P sits in a
// system call to hand it off, has nothing to do.
func (r *Reader) readFD(fd uintptr) bool {
	var p unsafe.Pointer
	if len(r.buf) > 0 {
		p = unsafe.Pointer(&r.buf[0])
	}
	n, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(p), uintptr(len(r.buf)))
	r.n, r.err = int(n), nil
	if e != 0 {
		r.n, r.err = -1, e
	}
	return true // one try: never wait
}

// ReadNow reads what the queue holds now, without waiting: 0 packets and
// no error if it holds nothing. A packet lands in bufs[0][offset:], the
// virtio header in the offset's last VirtioHdrLen bytes; a GSO
// super-packet is split into MTU-sized packets in bufs[0], bufs[1], ... (at
// most len(bufs): more segments than that is tun.ErrTooManySegments, the
// super-packet dropped), and every checksum the kernel left partial is
// completed: what wireguard-go's Read gives, in one system call and no
// copy of a plain packet. (wireguard-go's Read needs a poll before it to
// read without waiting: one more system call, 17% of a userspace demux's
// time at 64-byte packets.) The read holds the file's lock, as os.File's
// own reads do, so a Close meanwhile cannot hand the descriptor's number
// to another file under it: then the error is os.ErrClosed.
func (r *Reader) ReadNow(bufs [][]byte, sizes []int, offset int) (int, error) {
	if offset < VirtioHdrLen || len(bufs) == 0 || len(sizes) < len(bufs) || len(bufs[0]) <= offset {
		return 0, errors.New("tunlink: ReadNow needs a buffer with VirtioHdrLen of offset")
	}
	r.buf = bufs[0][offset-VirtioHdrLen:]
	if err := r.rc.Read(r.read); err != nil {
		return 0, fmt.Errorf("%w: %v", os.ErrClosed, err) // only a closing file fails here
	}
	n, err := r.n, r.err
	r.buf, r.err = nil, nil
	switch {
	case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
		return 0, nil // nothing now (or a signal came first): the loop's next read waits
	case errors.Is(err, unix.EBADFD):
		return 0, os.ErrClosed
	case err != nil:
		return 0, err
	case n < VirtioHdrLen:
		return 0, fmt.Errorf("tunlink: a %d-byte read, shorter than the virtio header", n)
	}
	return handleRead(bufs[0][offset-VirtioHdrLen:offset-VirtioHdrLen+n], bufs, sizes, offset)
}

// virtioHdr is struct virtio_net_hdr (little-endian on every Linux
// wireguard-go supports, as the TUN is created without TUNSETVNETBE).
type virtioHdr struct {
	flags, gsoType                      uint8
	hdrLen, gsoSize, csumStart, csumOff uint16
}

func decodeVirtio(b []byte) virtioHdr {
	return virtioHdr{flags: b[0], gsoType: b[1],
		hdrLen: binary.LittleEndian.Uint16(b[2:]), gsoSize: binary.LittleEndian.Uint16(b[4:]),
		csumStart: binary.LittleEndian.Uint16(b[6:]), csumOff: binary.LittleEndian.Uint16(b[8:])}
}

// handleRead takes in (virtio header, then the packet, which starts at
// bufs[0][offset:]) apart.
func handleRead(in []byte, bufs [][]byte, sizes []int, offset int) (int, error) {
	h := decodeVirtio(in)
	pkt := in[VirtioHdrLen:]
	if len(pkt) == 0 {
		return 0, errors.New("tunlink: a read of a virtio header and no packet")
	}
	if h.gsoType == unix.VIRTIO_NET_HDR_GSO_NONE {
		if h.flags&unix.VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
			at := int(h.csumStart) + int(h.csumOff)
			if at+2 > len(pkt) {
				return 0, fmt.Errorf("tunlink: checksum at %d+%d of a %d-byte packet", h.csumStart, h.csumOff, len(pkt))
			}
			// The kernel left the pseudo-header's sum in the field.
			initial := uint64(binary.BigEndian.Uint16(pkt[at:]))
			pkt[at], pkt[at+1] = 0, 0
			c := packet.Checksum(pkt[h.csumStart:], initial)
			if c == 0 && h.csumOff == 6 { // UDP's checksum field
				c = 0xffff // UDP's zero means "no checksum" (RFC 768)
			}
			binary.BigEndian.PutUint16(pkt[at:], c)
		}
		sizes[0] = len(pkt)
		return 1, nil
	}
	return splitGSO(pkt, h, bufs, sizes, offset)
}

// TCP flags a segment other than the last must not carry.
const (
	tcpFlagFIN = 0x01
	tcpFlagPSH = 0x08
)

// splitGSO cuts the super-packet in (at bufs[0][offset:]) into segments of
// h.gsoSize payload bytes each, with their own headers: IPv4 ID stepped,
// lengths, TCP sequence numbers and flags, and full checksums, as the
// kernel's GSO would on the wire. The first segment stays where it is, so
// it is built last.
func splitGSO(in []byte, h virtioHdr, bufs [][]byte, sizes []int, offset int) (int, error) {
	v6 := in[0]>>4 == 6
	var proto uint8
	switch h.gsoType {
	case unix.VIRTIO_NET_HDR_GSO_TCPV4, unix.VIRTIO_NET_HDR_GSO_TCPV6:
		proto = packet.ProtoTCP
		if v6 != (h.gsoType == unix.VIRTIO_NET_HDR_GSO_TCPV6) {
			return 0, fmt.Errorf("tunlink: GSO type %d on an IPv%d packet", h.gsoType, in[0]>>4)
		}
	case unix.VIRTIO_NET_HDR_GSO_UDP_L4:
		proto = packet.ProtoUDP
	default:
		return 0, fmt.Errorf("tunlink: unsupported GSO type %d", h.gsoType)
	}
	ipLen := int(h.csumStart) // the kernel's csum_start is where the transport header starts
	// The IP header says what carries the transport header (IPv6 with
	// extension headers: not checked).
	protoAt, fixed := 9, int(in[0]&0x0f)*4
	if v6 {
		protoAt, fixed = 6, 40
	}
	if ipLen < fixed || (!v6 && ipLen != fixed) || ipLen+20 > len(in) || h.gsoSize == 0 {
		return 0, fmt.Errorf("tunlink: GSO header at %d of a %d-byte packet, segment size %d", ipLen, len(in), h.gsoSize)
	}
	if ipLen == fixed && in[protoAt] != proto {
		return 0, fmt.Errorf("tunlink: GSO type %d on IP protocol %d", h.gsoType, in[protoAt])
	}
	// hdrLen from the kernel may cover the whole first packet on a
	// forwarding path (wireguard-go found): the transport header says.
	hdrLen := ipLen + 8
	if proto == packet.ProtoTCP {
		hdrLen = ipLen + int(in[ipLen+12]>>4)*4
		if hdrLen < ipLen+20 || hdrLen > len(in) {
			return 0, fmt.Errorf("tunlink: a TCP header of %d bytes in a %d-byte packet", hdrLen-ipLen, len(in))
		}
	}
	seg := int(h.gsoSize)
	count := (len(in) - hdrLen + seg - 1) / seg
	if count > len(bufs) {
		return 0, tun.ErrTooManySegments
	}
	srcAt, addrLen := 12, 4
	if v6 {
		srcAt, addrLen = 8, 16
	} else {
		in[10], in[11] = 0, 0 // the IPv4 header checksum, recomputed per segment
	}
	csumAt := ipLen + 16 // TCP
	if proto == packet.ProtoUDP {
		csumAt = ipLen + 6
	}
	in[csumAt], in[csumAt+1] = 0, 0
	seq := binary.BigEndian.Uint32(in[ipLen+4:])
	pseudo := packet.ChecksumAdd(in[srcAt:srcAt+2*addrLen], uint64(proto))
	for i := count - 1; i >= 0; i-- {
		start := hdrLen + i*seg
		end := min(start+seg, len(in))
		total := hdrLen + end - start
		out := bufs[i][offset:]
		if len(out) < total {
			return 0, fmt.Errorf("tunlink: a %d-byte segment does not fit a %d-byte buffer", total, len(out))
		}
		if i > 0 {
			copy(out[:hdrLen], in[:hdrLen])
			copy(out[hdrLen:total], in[start:end])
		}
		if v6 {
			binary.BigEndian.PutUint16(out[4:], uint16(total-40))
		} else {
			binary.BigEndian.PutUint16(out[4:], binary.BigEndian.Uint16(in[4:])+uint16(i))
			binary.BigEndian.PutUint16(out[2:], uint16(total))
			binary.BigEndian.PutUint16(out[10:], packet.Checksum(out[:ipLen], 0))
		}
		if proto == packet.ProtoTCP {
			binary.BigEndian.PutUint32(out[ipLen+4:], seq+uint32(i*seg))
			if i < count-1 {
				out[ipLen+13] &^= tcpFlagFIN | tcpFlagPSH
			}
		} else {
			binary.BigEndian.PutUint16(out[ipLen+4:], uint16(total-ipLen))
		}
		c := packet.Checksum(out[ipLen:total], pseudo+uint64(total-ipLen))
		if c == 0 && proto == packet.ProtoUDP {
			c = 0xffff // UDP's zero means "no checksum" (RFC 768)
		}
		binary.BigEndian.PutUint16(out[csumAt:], c)
		sizes[i] = total
	}
	return count, nil
}
