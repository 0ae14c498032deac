package rxtime

import (
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestReceiver: a Receiver reads a datagram with its sender and kernel
// receive time, reports an empty queue as EAGAIN, and allocates nothing.
func TestReceiver(t *testing.T) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := Enable(fd); err != nil {
		t.Fatal(err)
	}
	sa, _ := unix.Getsockname(fd)
	to := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(sa.(*unix.SockaddrInet4).Port))
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var r Receiver
	buf, oob := make([]byte, 100), make([]byte, OOBLen)
	if _, _, _, err := r.Recvmsg(fd, buf, oob, unix.MSG_DONTWAIT); !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("empty queue: %v, want EAGAIN", err)
	}
	sent := time.Now()
	const runs = 50
	for range runs + 1 {
		c.WriteToUDPAddrPort([]byte("probe"), to)
	}
	time.Sleep(50 * time.Millisecond)
	n, oobn, from, err := r.Recvmsg(fd, buf, oob, unix.MSG_DONTWAIT)
	if err != nil || string(buf[:n]) != "probe" || from != c.LocalAddr().(*net.UDPAddr).AddrPort() {
		t.Fatalf("read %q from %v: %v", buf[:n], from, err)
	}
	if rx := Parse(oob[:oobn]); rx.Before(sent.Add(-time.Second)) || rx.After(time.Now()) {
		t.Errorf("receive time %v, sent at %v", rx, sent)
	}
	if a := testing.AllocsPerRun(runs-1, func() {
		if _, _, _, err := r.Recvmsg(fd, buf, oob, unix.MSG_DONTWAIT); err != nil {
			t.Fatal(err)
		}
	}); a != 0 {
		t.Errorf("%.1f allocations a read", a)
	}
}
