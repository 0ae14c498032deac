//go:build linux

package xdp

import (
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// inNewNetns runs fn on a thread in a network namespace of its own, which
// goes when fn returns.
func inNewNetns(t *testing.T, fn func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: a network namespace")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // not unlocked: the thread ends with its namespace
		if _, err := netns.New(); err != nil {
			t.Error(err)
			return
		}
		fn()
	}()
	<-done
}

// TestResolver: a gateway on a link is resolved to the link, its address
// and both MACs; a neighbour's new MAC is seen on the next round, while
// the link's own MAC is read once per linkTTL; a gateway without a usable
// neighbour entry stays unresolved.
func TestResolver(t *testing.T) {
	inNewNetns(t, func() {
		la := netlink.NewLinkAttrs()
		la.Name, la.HardwareAddr = "res0", net.HardwareAddr{2, 0, 0, 0, 0, 1}
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "res1"}); err != nil {
			t.Error(err)
			return
		}
		link, _ := netlink.LinkByName("res0")
		addr, _ := netlink.ParseAddr("10.9.0.1/24")
		netlink.AddrAdd(link, addr)
		netlink.LinkSetUp(link)
		if peer, err := netlink.LinkByName("res1"); err == nil {
			netlink.LinkSetUp(peer)
		}
		neigh := &netlink.Neigh{LinkIndex: link.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
			IP: net.IPv4(10, 9, 0, 2), HardwareAddr: net.HardwareAddr{2, 0, 0, 0, 0, 2}}
		if err := netlink.NeighSet(neigh); err != nil {
			t.Error(err)
			return
		}
		now := time.Unix(1000, 0)
		r := newResolver()
		r.now = func() time.Time { return now }
		gw := netip.MustParseAddrPort("10.9.0.2:6081")
		r.round()
		got := r.resolve(3, gw)
		if got.Ifindex != link.Attrs().Index || got.Src != netip.MustParseAddr("10.9.0.1") ||
			got.SrcMAC.String() != "02:00:00:00:00:01" || got.DstMAC.String() != "02:00:00:00:00:02" {
			t.Errorf("resolved %+v", got)
		}
		if other := r.resolve(4, netip.MustParseAddrPort("10.9.0.3:6081")); other.Ifindex != 0 {
			t.Errorf("a gateway with no neighbour entry resolved: %+v", other)
		}

		// A new own MAC flushes the link's neighbours, permanent ones too.
		if err := netlink.LinkSetHardwareAddr(link, net.HardwareAddr{2, 0, 0, 0, 0, 9}); err != nil {
			t.Error(err)
		}
		neigh.HardwareAddr = net.HardwareAddr{2, 0, 0, 0, 0, 3}
		netlink.NeighSet(neigh)
		if got := r.resolve(3, gw); got.DstMAC.String() != "02:00:00:00:00:02" {
			t.Errorf("within a round the neighbour table is read once: %v", got.DstMAC)
		}
		r.round()
		got = r.resolve(3, gw)
		if got.DstMAC.String() != "02:00:00:00:00:03" || got.SrcMAC.String() != "02:00:00:00:00:01" {
			t.Errorf("next round: dst %v src %v; want the new neighbour MAC, the cached own MAC", got.DstMAC, got.SrcMAC)
		}
		now = now.Add(linkTTL)
		r.round()
		if got := r.resolve(3, gw); got.SrcMAC.String() != "02:00:00:00:00:09" {
			t.Errorf("after linkTTL the own MAC is %v, want the new one", got.SrcMAC)
		}
	})
}
