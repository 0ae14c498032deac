// Package rxtime reads datagrams with the time the kernel received them
// (SO_TIMESTAMPNS), so that measurements of arrival gaps and round trips
// do not include how late a busy process got around to reading.
package rxtime

import (
	"encoding/binary"
	"net/netip"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/clusterpeer/clusterpeer/dataplane/udpbatch"
)

// OOBLen is the control buffer Recv needs.
const OOBLen = 64

// Enable asks the kernel to timestamp what fd receives.
func Enable(fd int) error {
	return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
}

// Recv reads one datagram from fd with flags (e.g. unix.MSG_DONTWAIT)
// and returns its length, sender and arrival time. The time is time.Now()
// when the kernel gave none.
func Recv(fd int, buf, oob []byte, flags int) (int, unix.Sockaddr, time.Time, error) {
	n, oobn, _, from, err := unix.Recvmsg(fd, buf, oob, flags)
	if err != nil {
		return 0, nil, time.Time{}, err
	}
	return n, from, Parse(oob[:oobn]), nil
}

// Receiver reads one datagram at a time from a descriptor, as Recv does,
// without allocating: its message header and the sender's address are
// made once (unix.Recvmsg makes both for every call). A Receiver is one
// goroutine's.
type Receiver struct {
	hdr  unix.Msghdr
	iov  unix.Iovec
	name unix.RawSockaddrInet6 // large enough for either family
	none [1]byte               // where an empty buf reads to
}

// Recvmsg reads one datagram from fd with flags into buf, and its
// control messages into oob; with unix.MSG_ERRQUEUE, an entry of the
// socket's error queue, whose address is the failed datagram's
// destination. It returns both lengths and the address. Errors are
// unix.Errno values (unix.EAGAIN: nothing queued).
func (r *Receiver) Recvmsg(fd int, buf, oob []byte, flags int) (n, oobn int, from netip.AddrPort, err error) {
	if len(buf) == 0 {
		buf = r.none[:]
	}
	r.iov.Base = &buf[0]
	r.iov.SetLen(len(buf))
	r.hdr.Iov, r.hdr.Iovlen = &r.iov, 1
	r.hdr.Name, r.hdr.Namelen = (*byte)(unsafe.Pointer(&r.name)), unix.SizeofSockaddrInet6
	r.hdr.Control = nil
	r.hdr.SetControllen(0)
	if len(oob) > 0 {
		r.hdr.Control = &oob[0]
		r.hdr.SetControllen(len(oob))
	}
	r.hdr.Flags = 0
	for {
		got, _, e := unix.Syscall(unix.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(&r.hdr)), uintptr(flags))
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return 0, 0, netip.AddrPort{}, e
		}
		from = netip.AddrPort{}
		if r.hdr.Namelen > 0 {
			from = udpbatch.SockaddrAddrPort(&r.name)
		}
		return int(got), int(r.hdr.Controllen), from, nil
	}
}

// Parse returns the SCM_TIMESTAMPNS time in a control message buffer, or
// time.Now() if there is none.
func Parse(oob []byte) time.Time {
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || l > len(oob) {
			break
		}
		if h.Level == unix.SOL_SOCKET && h.Type == unix.SCM_TIMESTAMPNS && l >= unix.CmsgLen(16) {
			d := oob[unix.CmsgLen(0):]
			sec := int64(binary.NativeEndian.Uint64(d[0:8]))
			nsec := int64(binary.NativeEndian.Uint64(d[8:16]))
			return time.Unix(sec, nsec)
		}
		oob = oob[min(unix.CmsgSpace(l-unix.CmsgLen(0)), len(oob)):]
	}
	return time.Now()
}
