// Package rxtime reads datagrams with the time the kernel received them
// (SO_TIMESTAMPNS), so that measurements of arrival gaps and round trips
// do not include how late a busy process got around to reading.
package rxtime

import (
	"encoding/binary"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
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
