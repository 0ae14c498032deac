package config

import (
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// HA defaults. Adverts every 50 ms put a silent active's replacement at
// 3 x 50 ms + skew (under 200 ms); a demux that exits is noticed at once,
// through its TUN (see package ha).
const (
	DefaultAdvertInterval = 50 * time.Millisecond
	DefaultCheckInterval  = time.Second
	ActivePriority        = 150 // networks.X.demux
	StandbyPriority       = 100 // networks.X.standby
)

// HA is an active/standby demux pair: keepalived (VRRPv3) on both demux
// hosts owns the VIPs, the hosts' next hop to the remote prefixes, and
// moves them to the standby when the active fails. Both demuxes run all the
// time with the same lanes, so they build the same tables.
type HA struct {
	VIPs           []netip.Addr  `yaml:"vips"`                      // hosts route the remote prefixes via these
	Interface      string        `yaml:"interface"`                 // where the VIPs live, on both demux hosts
	RouterID       int           `yaml:"router_id"`                 // VRRP virtual_router_id, unique on the LAN
	AdvertInterval time.Duration `yaml:"advert_interval,omitempty"` // VRRPv3, in centiseconds
	CheckInterval  time.Duration `yaml:"check_interval,omitempty"`  // how often keepalived runs `demux health`
	Preempt        bool          `yaml:"preempt,omitempty"`         // the demux takes the VIPs back when it returns
	Unicast        bool          `yaml:"unicast,omitempty"`         // adverts to the other demux, where multicast is blocked (VPCs)
	Notify         string        `yaml:"notify,omitempty"`          // run on every change of role (cloud mode)
}

// Demuxes returns the side's demux and, where there is one, its standby.
func (n Network) Demuxes() []Demux {
	if n.Standby == nil {
		return []Demux{n.Demux}
	}
	return []Demux{n.Demux, *n.Standby}
}

// DemuxSources are the addresses this side's gateways accept GENEVE from:
// those of every demux of the side.
func (n Network) DemuxSources() []netip.Addr {
	var s []netip.Addr
	for _, d := range n.Demuxes() {
		s = append(s, d.Addresses...)
	}
	return s
}

// Pair returns the other demux of name's HA pair (nil without a standby).
func (n Network) Pair(name string) *Demux {
	switch {
	case n.Standby == nil:
		return nil
	case name == n.Demux.Name:
		return n.Standby
	case name == n.Standby.Name:
		d := n.Demux
		return &d
	}
	return nil
}

// Priority is the VRRP priority of a demux of this side: the demux
// outranks its standby, which matters when both start and, with preempt,
// when the demux returns.
func (n Network) Priority(name string) int {
	if name == n.Demux.Name {
		return ActivePriority
	}
	return StandbyPriority
}

func (c *checker) ha(f string, n *Network) {
	h := n.HA
	switch {
	case h == nil && n.Standby == nil:
		return
	case h == nil:
		c.errf(f+".ha", "missing: a standby demux needs ha (the VIPs that keepalived moves to whichever demux is active)")
		return
	case n.Standby == nil:
		c.errf(f+".standby", "missing: ha needs a standby demux (name, addresses), the second of the pair")
	}
	hf := f + ".ha"
	if len(h.VIPs) == 0 {
		c.errf(hf+".vips", "missing: the addresses the hosts route the remote prefixes to (one per family)")
	}
	own := map[netip.Addr]bool{}
	for _, d := range n.Demuxes() {
		for _, a := range d.Addresses {
			own[a] = true
		}
	}
	h.VIPs = unmapped(h.VIPs) // bad ones were reported while decoding
	for i, a := range h.VIPs {
		vf := fmt.Sprintf("%s.vips[%d]", hf, i)
		switch {
		case own[a]:
			c.errf(vf, "%s is a demux's own address; a VIP must be one that neither demux holds", a)
		case a.IsLinkLocalUnicast() || a.IsMulticast() || a.IsUnspecified():
			c.errf(vf, "%s: want a unicast address of this network", a)
		}
	}
	if h.Interface == "" {
		c.errf(hf+".interface", "missing: the LAN interface the VIPs live on (the same name on both demux hosts)")
	} else {
		c.ifname(hf+".interface", h.Interface)
	}
	if h.RouterID < 1 || h.RouterID > 255 {
		c.errf(hf+".router_id", "%d: want 1..255, a VRRP router id no other VRRP group on this LAN uses", h.RouterID)
	}
	if h.AdvertInterval == 0 {
		h.AdvertInterval = DefaultAdvertInterval
	}
	if h.AdvertInterval < 10*time.Millisecond || h.AdvertInterval > 40950*time.Millisecond || h.AdvertInterval%(10*time.Millisecond) != 0 {
		c.errf(hf+".advert_interval", "%s: want 10ms..40.95s in whole centiseconds (VRRPv3)", h.AdvertInterval)
	}
	if h.CheckInterval == 0 {
		h.CheckInterval = DefaultCheckInterval
	}
	if h.CheckInterval < time.Second || h.CheckInterval > time.Hour || h.CheckInterval%time.Second != 0 {
		c.errf(hf+".check_interval", "%s: want whole seconds, 1s..1h (keepalived runs scripts at most once a second)", h.CheckInterval)
	}
	if h.Unicast && n.Standby != nil && len(h.VIPs) > 0 {
		// The adverts are of the first VIP's family; each demux sends from
		// its first address of that family to the other's.
		v4 := h.VIPs[0].Is4()
		for _, d := range n.Demuxes() {
			if !d.hasFamily(v4) {
				c.errf(hf+".unicast", "demux %s has no %s address to send VRRP adverts from", d.Name, family(v4))
			}
		}
	}
	if strings.ContainsAny(h.Notify, "\n\x00") {
		c.errf(hf+".notify", "one command line, please")
	}
}

func (d *Demux) hasFamily(v4 bool) bool {
	_, ok := d.FirstOf(v4)
	return ok
}

// FirstOf returns the demux's first address of a family.
func (d *Demux) FirstOf(v4 bool) (netip.Addr, bool) {
	for _, a := range d.Addresses {
		if a.Is4() == v4 {
			return a, true
		}
	}
	return netip.Addr{}, false
}

func family(v4 bool) string {
	if v4 {
		return "IPv4"
	}
	return "IPv6"
}
