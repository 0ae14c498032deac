package gateway

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// watchPath follows the gateway's underlay towards its peer through
// netlink: on every link, address or route change it looks the route to
// the peer up again, and calls report with "" when there is one through
// a link that is up, or with what is missing. It stops when done closes.
func watchPath(peer netip.Addr, done <-chan struct{}, report func(missing string)) error {
	links := make(chan netlink.LinkUpdate, 16)
	addrs := make(chan netlink.AddrUpdate, 16)
	routes := make(chan netlink.RouteUpdate, 16)
	if err := netlink.LinkSubscribe(links, done); err != nil {
		return fmt.Errorf("netlink link updates: %w", err)
	}
	if err := netlink.AddrSubscribe(addrs, done); err != nil {
		return fmt.Errorf("netlink address updates: %w", err)
	}
	if err := netlink.RouteSubscribe(routes, done); err != nil {
		return fmt.Errorf("netlink route updates: %w", err)
	}
	last := "unknown"
	check := func() {
		if m := pathMissing(peer); m != last {
			last = m
			report(m)
		}
	}
	check()
	go func() {
		for {
			select {
			case <-done:
				return
			case _, ok := <-links:
				if !ok {
					return
				}
			case _, ok := <-addrs:
				if !ok {
					return
				}
			case _, ok := <-routes:
				if !ok {
					return
				}
			}
			check()
		}
	}()
	return nil
}

// pathMissing says what keeps packets from leaving towards peer ("" if
// nothing does).
func pathMissing(peer netip.Addr) string {
	rs, err := netlink.RouteGet(peer.AsSlice())
	if err != nil || len(rs) == 0 {
		return fmt.Sprintf("no route to the peer %s", peer)
	}
	l, err := netlink.LinkByIndex(rs[0].LinkIndex)
	if err != nil {
		return fmt.Sprintf("the route to the peer %s has no link", peer)
	}
	a := l.Attrs()
	if a.Flags&1 == 0 || a.OperState == netlink.OperDown || a.OperState == netlink.OperLowerLayerDown {
		return fmt.Sprintf("link %s towards the peer %s is down", a.Name, peer)
	}
	return ""
}
