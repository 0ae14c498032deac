// Package tunlink creates a TUN, with one queue per reader, and prepares
// its kernel side the way wg-quick does: link up and the given prefixes
// routed into it, over netlink.
package tunlink

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// Create makes the TUN name with queues queues (IFF_MULTI_QUEUE when more
// than one), each a device of its own for one reader, with wireguard-go's
// virtio header and offloads (GSO super-packets in, GRO out). The kernel
// hands each flow to one queue (by the hash of its addresses and ports),
// so readers that each keep their own packets in order keep every flow's.
//
// A TUN of that name that its previous owner still holds (a process
// killed a moment ago, whose files the kernel is still closing, or a
// supervisor's restart racing it) refuses a new owner with EBUSY: Create
// tries again for up to BusyWait before it gives up. (A replacement
// gateway started right after its predecessor's SIGKILL failed so, in
// 2 of some dozens of e2e runs.)
func Create(name string, queues, mtu int) ([]tun.Device, error) {
	deadline := time.Now().Add(BusyWait)
	for {
		devs, err := create(name, queues, mtu)
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			return devs, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// BusyWait is how long Create waits for a TUN name its previous owner
// still holds (a variable for the tests).
var BusyWait = 10 * time.Second

func create(name string, queues, mtu int) ([]tun.Device, error) {
	// As tun.CreateTUN opens one, with IFF_MULTI_QUEUE for several.
	flags := uint16(unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if queues > 1 {
		flags |= unix.IFF_MULTI_QUEUE
	}
	var devs []tun.Device
	fail := func(q int, err error) ([]tun.Device, error) {
		for _, d := range devs {
			d.Close()
		}
		if queues > 1 {
			return nil, fmt.Errorf("tun %s queue %d: %w", name, q, err)
		}
		return nil, err
	}
	for q := range max(queues, 1) {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return fail(q, fmt.Errorf("open /dev/net/tun: %w", err))
		}
		ifr, err := unix.NewIfreq(name)
		if err == nil {
			ifr.SetUint16(flags)
			err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
			if q == 0 && queues > 1 && errors.Is(err, unix.EINVAL) {
				err = fmt.Errorf("%w (a TUN of that name without multiple queues exists?)", err)
			}
		}
		if err == nil {
			err = unix.SetNonblock(fd, true)
		}
		if err != nil {
			unix.Close(fd)
			return fail(q, err)
		}
		f := os.NewFile(uintptr(fd), "/dev/net/tun")
		d, err := tun.CreateTUNFromFile(f, mtu)
		if err != nil {
			f.Close()
			return fail(q, err)
		}
		devs = append(devs, d)
	}
	return devs, nil
}

// TxQueueLen is the TUN's queue towards the process reading it. The
// kernel's default, 500 packets, is 20 ms of a modest 24 kpps load: a
// process not scheduled for that long (a busy host, a GC pause) would see
// the kernel drop what it routed into the TUN. 4096 rides out such stalls
// at up to ~100 kpps; a sustained overload still drops, as it must.
const TxQueueLen = 4096

// Up sets the link up with a TxQueueLen queue and routes each prefix into
// it (replacing an existing route to the same prefix). The link gets no IPv6 link-local
// address: it is a route target, not a link, and without one the kernel
// sends no router solicitations into it. (It still sends MLD reports; the
// demux drops what is not addressed to the remote network.)
func Up(name string, routes []netip.Prefix) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find tun %s: %w", name, err)
	}
	// 1 = IN6_ADDR_GEN_MODE_NONE. Absent when IPv6 is disabled: fine.
	os.WriteFile("/proc/sys/net/ipv6/conf/"+name+"/addr_gen_mode", []byte("1"), 0)
	if err := netlink.LinkSetTxQLen(link, TxQueueLen); err != nil {
		return fmt.Errorf("set %s txqueuelen: %w", name, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	for _, p := range routes {
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: IPNet(p), Scope: netlink.SCOPE_LINK}
		if err := netlink.RouteReplace(r); err != nil {
			return fmt.Errorf("route %s dev %s: %w", p, name, err)
		}
	}
	return nil
}

// IPNet converts a prefix for netlink.
func IPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
