// Package udpbatch is a UDP socket that moves datagrams in batches:
// recvmmsg and sendmmsg, with the kernel's UDP offloads where it has them
// (UDP_GRO: a sender's datagrams read as one, split here; UDP_SEGMENT:
// equal-sized datagrams to one address written as one, split by the
// kernel or the NIC).
//
//	kernel --recvmmsg--> Reader.Read --> bufs, sizes, senders
//	bufs, destination --> Writer.Write --sendmmsg--> kernel
//
// Neither allocates per datagram or per batch: each Reader and Writer
// makes its system calls' headers, addresses and control space once.
// x/net's ReadBatch, which the gateways used before, makes a net.UDPAddr
// for every datagram read, and wireguard-go's bind a net.UDPAddr and an
// endpoint; under load that garbage set a gateway's collection rate.
//
// A Reader belongs to one goroutine, and so does a Writer; a Conn has as
// many of either as its users need.
package udpbatch

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Options say how to open a Conn.
type Options struct {
	// Buffer is SO_RCVBUF and SO_SNDBUF (forced past the sysctl limits
	// with CAP_NET_ADMIN); 0 leaves the kernel's.
	Buffer int
	// GRO and GSO ask for the offloads; the Conn says which it got.
	GRO, GSO bool
}

// Conn is a bound UDP socket.
type Conn struct {
	*net.UDPConn
	raw syscall.RawConn
	gro bool
	gso atomic.Bool // cleared if a segmented send fails (no checksum offload)
	v6  bool
}

// MaxDatagram is the largest UDP payload, what one GRO read may hold.
const MaxDatagram = 65535

// MaxSegments is the most datagrams one GRO read or GSO write carries
// (the kernel's UDP_MAX_SEGMENTS).
const MaxSegments = 64

// Listen binds a UDP socket to addr (an unspecified address: every
// address of its family; port 0: any port).
func Listen(addr netip.AddrPort, o Options) (*Conn, error) {
	c := &Conn{v6: addr.Addr().Is6() && !addr.Addr().Is4In6()}
	gso := false
	lc := net.ListenConfig{Control: func(network, address string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) {
			if o.Buffer > 0 {
				for _, opt := range [...]int{unix.SO_RCVBUF, unix.SO_SNDBUF, unix.SO_RCVBUFFORCE, unix.SO_SNDBUFFORCE} {
					unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt, o.Buffer)
				}
			}
			c.gro = o.GRO && unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO, 1) == nil
			if o.GSO {
				_, err := unix.GetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT)
				gso = err == nil
			}
		})
	}}
	network := "udp4"
	if c.v6 {
		network = "udp6"
	}
	pc, err := lc.ListenPacket(context.Background(), network, addr.String())
	if err != nil {
		return nil, err
	}
	c.UDPConn = pc.(*net.UDPConn)
	if c.raw, err = c.SyscallConn(); err != nil {
		c.Close()
		return nil, err
	}
	c.gso.Store(gso)
	return c, nil
}

// GRO reports whether reads may be coalesced by the kernel.
func (c *Conn) GRO() bool { return c.gro }

// GSO reports whether writes are segmented by the kernel.
func (c *Conn) GSO() bool { return c.gso.Load() }

// Port is the bound port.
func (c *Conn) Port() uint16 { return c.LocalAddr().(*net.UDPAddr).AddrPort().Port() }

// SetMark sets the firewall mark (SO_MARK) on what the socket sends.
func (c *Conn) SetMark(mark uint32) error {
	var err error
	if cerr := c.raw.Control(func(fd uintptr) {
		err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
	}); cerr != nil {
		return cerr
	}
	return os.NewSyscallError("setsockopt SO_MARK", err)
}

// mmsg is one system call's worth of message headers.
type mmsg struct {
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6 // large enough for either family
	oobs  [][]byte
}

func newMmsg(n, oob int) mmsg {
	m := mmsg{
		hdrs:  make([]unix.Mmsghdr, n),
		iovs:  make([]unix.Iovec, n),
		names: make([]unix.RawSockaddrInet6, n),
		oobs:  make([][]byte, n),
	}
	for i := range m.hdrs {
		m.oobs[i] = make([]byte, oob)
		h := &m.hdrs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&m.names[i]))
		h.Iov = &m.iovs[i]
		h.Iovlen = 1
		h.Control = &m.oobs[i][0]
	}
	return m
}

// Reader reads batches of datagrams from a Conn.
type Reader struct {
	c     *Conn
	m     mmsg
	big   [][]byte // with GRO, Read's reads land here and are split into the caller's buffers
	views [][]byte // Read's datagrams, before it copies them

	// One call's span and result, so that call (made once) needs no
	// closure per read.
	count, got int
	errno      syscall.Errno
	call       func(fd uintptr) bool
}

// NewReader makes a Reader for batches of up to batch datagrams.
func (c *Conn) NewReader(batch int) *Reader {
	r := &Reader{c: c, views: make([][]byte, batch)}
	reads := batch
	if c.gro {
		// A fully coalesced read splits into MaxSegments datagrams, so
		// this many reads fill a batch.
		reads = Reads(batch)
		r.big = make([][]byte, reads)
		for i := range r.big {
			r.big[i] = make([]byte, MaxDatagram)
		}
	}
	r.m = newMmsg(reads, unix.CmsgSpace(4)) // UDP_GRO's segment size, an int
	r.call = r.recvmmsg
	return r
}

// Reads is how many coalesced reads of MaxDatagram bytes fill a batch
// of batch datagrams (with GRO: what ReadViews needs as recv).
func Reads(batch int) int { return max(1, batch/MaxSegments) }

// recvmmsg is the RawConn.Read callback: false (wait for the socket to
// be readable) only when nothing is queued. The socket never blocks, so
// the call is a raw system call (as sendmmsg's): a plain one marks the P
// as in a system call, and Go's sysmon then wakes every 20 µs to hand
// it off, which a busy gateway's profile showed as 10% of its CPU
// (wireguard-go's too); with these raw, 5-6%.
func (r *Reader) recvmmsg(fd uintptr) bool {
	for {
		n, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.m.hdrs[0])), uintptr(r.count), 0, 0, 0)
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		r.got, r.errno = int(n), e
		return true
	}
}

// Read waits for datagrams and reads as many as are queued and fit into
// bufs, each one's size and sender. It returns how many. A negative size
// is a datagram longer than its buffer, not delivered (the caller counts
// it); a read never cuts one short. With GRO it reads into the Reader's
// own buffers and splits what the kernel coalesced into bufs; without, it
// reads into bufs directly.
func (r *Reader) Read(bufs [][]byte, sizes []int, srcs []netip.AddrPort) (int, error) {
	views := r.views[:min(len(bufs), len(r.views))]
	recv := bufs
	if r.c.gro {
		recv = r.big
	}
	n, err := r.ReadViews(recv, views, srcs)
	for i, v := range views[:n] {
		switch {
		case v == nil || len(v) > len(bufs[i]):
			sizes[i] = -1
		case r.c.gro:
			sizes[i] = copy(bufs[i], v)
		default:
			sizes[i] = len(v) // read in place
		}
		views[i] = nil
	}
	return n, err
}

// ReadViews is Read without the copy: datagrams stay where the kernel
// wrote them, in recv, and views[i] is the i-th, aliasing recv (nil: it
// was longer than its buffer). With GRO each of recv holds a coalesced
// read, so each must have MaxDatagram bytes, and Reads(len(views)) of
// them are enough; without, each holds one datagram. The caller owns
// recv and the views until it reads into recv again, so several batches
// can be in flight, each with its own recv.
func (r *Reader) ReadViews(recv, views [][]byte, srcs []netip.AddrPort) (int, error) {
	r.count = min(len(recv), len(views), len(r.m.hdrs))
	if r.c.gro {
		r.count = min(r.count, Reads(len(views)))
	}
	for i := range r.count {
		b := recv[i]
		r.m.iovs[i].Base = &b[0]
		r.m.iovs[i].SetLen(len(b))
		h := &r.m.hdrs[i].Hdr
		h.Namelen = unix.SizeofSockaddrInet6
		h.SetControllen(len(r.m.oobs[i]))
		h.Flags = 0
	}
	if err := r.c.raw.Read(r.call); err != nil {
		return 0, err
	}
	if r.errno != 0 {
		return 0, &net.OpError{Op: "read", Net: "udp", Source: r.c.LocalAddr(), Err: os.NewSyscallError("recvmmsg", r.errno)}
	}
	n := 0
	for i := range r.got {
		m := &r.m.hdrs[i]
		src := SockaddrAddrPort(&r.m.names[i])
		data := recv[i][:m.Len:m.Len]
		seg := len(data) // one datagram (perhaps empty, or cut short: nil)
		if r.c.gro {
			if s := groSize(r.m.oobs[i][:m.Hdr.Controllen]); s > 0 && s < len(data) {
				seg = s
			}
		}
		for start := 0; ; start += seg {
			if n == len(views) {
				return n, errors.New("udpbatch: coalesced datagrams overflow the batch")
			}
			end := min(start+seg, len(data))
			views[n], srcs[n] = data[start:end:end], src
			if m.Hdr.Flags&unix.MSG_TRUNC != 0 {
				views[n] = nil
			}
			n++
			if end == len(data) {
				break
			}
		}
	}
	return n, nil
}

// SockaddrAddrPort is the address the kernel wrote into sa (either
// family: an IPv4 one is read through its own layout; unmapped). An
// unknown family reads as the zero AddrPort.
func SockaddrAddrPort(sa *unix.RawSockaddrInet6) netip.AddrPort {
	port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
	switch sa.Family {
	case unix.AF_INET:
		return netip.AddrPortFrom(netip.AddrFrom4((*unix.RawSockaddrInet4)(unsafe.Pointer(sa)).Addr), port)
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), port)
	}
	return netip.AddrPort{}
}

// groSize is the segment size of a coalesced read (UDP_GRO control
// message), 0 if none.
func groSize(oob []byte) int {
	for len(oob) > unix.SizeofCmsghdr {
		h, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			return 0
		}
		if h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO {
			switch {
			case len(data) >= 4: // an int, as the kernel writes it
				return int(binary.NativeEndian.Uint32(data))
			case len(data) >= 2:
				return int(binary.NativeEndian.Uint16(data))
			}
		}
		oob = rest
	}
	return 0
}

// Writer writes batches of datagrams to one destination at a time.
type Writer struct {
	c    *Conn
	m    mmsg
	name unix.RawSockaddrInet6 // the destination, shared by every header

	from, count, sent int
	errno             syscall.Errno
	call              func(fd uintptr) bool
}

// NewWriter makes a Writer for batches of up to batch datagrams.
func (c *Conn) NewWriter(batch int) *Writer {
	w := &Writer{c: c, m: newMmsg(batch, unix.CmsgSpace(2))} // UDP_SEGMENT's size, a u16
	w.call = w.sendmmsg
	return w
}

func (w *Writer) sendmmsg(fd uintptr) bool {
	for {
		n, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&w.m.hdrs[w.from])), uintptr(w.count-w.from), 0, 0, 0)
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		w.sent, w.errno = int(n), e
		return true
	}
}

// maxPayload is the most a UDP datagram can carry (the IP length field).
func maxPayload(v6 bool) int {
	if v6 {
		return 1<<16 - 1 - 8
	}
	return 1<<16 - 1 - 20 - 8
}

// Write sends bufs to dst, in order. With GSO, runs of equal-sized
// datagrams (the last of a run may be shorter) go out as one, appended
// into the spare capacity of the run's first buffer, as wireguard-go's
// bind does; bufs' own lengths are left as they were.
func (w *Writer) Write(bufs [][]byte, dst netip.AddrPort) error {
	if len(bufs) > len(w.m.hdrs) {
		for len(bufs) > 0 {
			k := min(len(bufs), len(w.m.hdrs))
			if err := w.Write(bufs[:k], dst); err != nil {
				return err
			}
			bufs = bufs[k:]
		}
		return nil
	}
	if !w.c.v6 && !dst.Addr().Unmap().Is4() {
		return &net.OpError{Op: "write", Net: "udp4", Source: w.c.LocalAddr(), Err: unix.EAFNOSUPPORT}
	}
	namelen := putSockaddr(&w.name, dst, w.c.v6)
	gso := w.c.gso.Load()
	err := w.send(w.pack(bufs, namelen, gso))
	if gso && errors.Is(err, unix.EIO) {
		// The route's device cannot checksum for us, which segmenting
		// needs: send datagram by datagram from now on.
		w.c.gso.Store(false)
		err = w.send(w.pack(bufs, namelen, false))
	}
	return err
}

// pack fills the headers for bufs and returns how many messages they make.
func (w *Writer) pack(bufs [][]byte, namelen uint32, gso bool) int {
	base, seg, segs, ended := -1, 0, 0, false
	var run []byte
	limit := maxPayload(w.c.v6)
	flush := func() {
		if base < 0 {
			return
		}
		w.m.iovs[base].Base = &run[0]
		w.m.iovs[base].SetLen(len(run))
		h := &w.m.hdrs[base].Hdr
		h.SetControllen(0)
		if segs > 1 {
			oob := w.m.oobs[base]
			c := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
			c.Level, c.Type = unix.SOL_UDP, unix.UDP_SEGMENT
			c.SetLen(unix.CmsgLen(2))
			binary.NativeEndian.PutUint16(oob[unix.CmsgLen(0):], uint16(seg))
			h.SetControllen(len(oob))
		}
	}
	for _, b := range bufs {
		if gso && base >= 0 && !ended && segs < MaxSegments && len(b) <= seg &&
			len(run)+len(b) <= limit && len(run)+len(b) <= cap(run) {
			run = append(run, b...)
			segs++
			ended = len(b) < seg // a short one ends its run
			continue
		}
		flush()
		base++
		run, seg, segs, ended = b, len(b), 1, false
		h := &w.m.hdrs[base].Hdr
		h.Name = (*byte)(unsafe.Pointer(&w.name))
		h.Namelen = namelen
	}
	flush()
	return base + 1
}

func (w *Writer) send(n int) error {
	w.from, w.count = 0, n
	for w.from < w.count {
		if err := w.c.raw.Write(w.call); err != nil {
			return err
		}
		if w.errno != 0 {
			return &net.OpError{Op: "write", Net: "udp", Source: w.c.LocalAddr(), Err: os.NewSyscallError("sendmmsg", w.errno)}
		}
		w.from += w.sent
	}
	return nil
}

// putSockaddr writes ap into sa for a socket of the family v6 says, and
// returns its length.
func putSockaddr(sa *unix.RawSockaddrInet6, ap netip.AddrPort, v6 bool) uint32 {
	if !v6 {
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		sa4.Family = unix.AF_INET
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa4.Port))[:], ap.Port())
		sa4.Addr = ap.Addr().Unmap().As4()
		return unix.SizeofSockaddrInet4
	}
	sa.Family = unix.AF_INET6
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:], ap.Port())
	sa.Addr = ap.Addr().As16()
	sa.Flowinfo, sa.Scope_id = 0, 0
	return unix.SizeofSockaddrInet6
}

// String names the socket and its offloads, for logs.
func (c *Conn) String() string {
	return fmt.Sprintf("udp %s gro=%v gso=%v", c.LocalAddr(), c.gro, c.GSO())
}

// IsV6 reports whether the socket is an IPv6 one.
func (c *Conn) IsV6() bool { return c.v6 }
