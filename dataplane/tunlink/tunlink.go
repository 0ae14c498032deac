// Package tunlink prepares the kernel side of a TUN the way wg-quick does:
// link up and the given prefixes routed into it, over netlink.
package tunlink

import (
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
)

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
