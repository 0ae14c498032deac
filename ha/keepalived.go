// Package ha makes a side's two demuxes an active/standby pair, with
// keepalived (VRRPv3) as the election and VIP engine: what flows through it
// is the peering file, out of which it writes each demux host's keepalived
// config (so the two cannot disagree), and the demux's status, which it
// judges for keepalived's track_script. Keepalived's notify hook comes back
// through `demux notify`, which runs the operator's command (Hook).
//
// The active demux is found three ways, fastest first: its TUN vanishes
// the moment the process exits, however it exits (track_interface, a
// netlink event to keepalived); keepalived on a dead host stops sending
// adverts (3 x advert_interval + skew); and `demux health` fails when the
// demux stops answering or has no lane up (track_script, every
// check_interval).
package ha

import (
	"bytes"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/clusterpeer/clusterpeer/config"
)

// Paths are where keepalived finds the demux binary and the peering file
// on the demux host; both go into the commands keepalived runs.
type Paths struct {
	Demux  string // absolute path of the demux binary
	Config string // absolute path of the peering file
}

// Keepalived returns keepalived.conf for the demux node of p.
func Keepalived(p *config.Peering, node string, paths Paths) ([]byte, error) {
	n, err := p.Node(node)
	if err != nil {
		return nil, err
	}
	if n.Demux == nil {
		return nil, fmt.Errorf("%s is a gateway; keepalived runs beside a demux", node)
	}
	nw := p.Networks[n.Side]
	if nw.HA == nil {
		return nil, fmt.Errorf("networks.%s has no ha section: %s has no standby to share VIPs with", n.Side, node)
	}
	for _, s := range []struct{ what, path string }{{"demux binary", paths.Demux}, {"config", paths.Config}} {
		if !strings.HasPrefix(s.path, "/") || strings.ContainsAny(s.path, "\"\\ \t\n") {
			return nil, fmt.Errorf("%s path %q: want an absolute path without spaces, quotes or backslashes (keepalived runs it)", s.what, s.path)
		}
	}
	h := nw.HA
	v := view{
		Peering: p.Name, Side: string(n.Side), Node: node, Config: paths.Config, Demux: paths.Demux,
		Instance: "clusterpeer_" + strings.ReplaceAll(p.Name, "-", "_") + "_" + string(n.Side),
		HA:       h, Priority: nw.Priority(node), Tun: n.Demux.Tun,
		Advert: seconds(h.AdvertInterval), Check: int(h.CheckInterval / time.Second),
	}
	for _, a := range h.VIPs {
		if a.Is4() == h.VIPs[0].Is4() {
			v.VIPs = append(v.VIPs, a)
		} else {
			v.OtherVIPs = append(v.OtherVIPs, a)
		}
	}
	if h.Unicast {
		v4 := h.VIPs[0].Is4()
		v.UnicastSrc, _ = n.Demux.FirstOf(v4)
		v.UnicastPeer, _ = nw.Pair(node).FirstOf(v4)
	}
	var b bytes.Buffer
	if err := conf.Execute(&b, v); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

type view struct {
	Peering, Side, Node, Config, Demux, Instance, Tun string
	HA                                                *config.HA
	Priority, Check                                   int
	Advert                                            string
	VIPs, OtherVIPs                                   []netip.Addr
	UnicastSrc, UnicastPeer                           netip.Addr
}

// seconds formats a duration as keepalived's decimal seconds ("0.05").
func seconds(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds(), 'f', -1, 64)
}

var conf = template.Must(template.New("keepalived.conf").Parse(`# keepalived.conf for {{.Node}}, side {{.Side}} of peering {{.Peering}}.
# Written by: {{.Demux}} keepalived --config {{.Config}} --node {{.Node}}
# Regenerate it when the peering file changes; do not edit it.

global_defs {
    router_id {{.Peering}}-{{.Node}}
    vrrp_version 3
    script_user root
    enable_script_security
    # The demux's TUN exists only while the demux runs: keepalived starts
    # without it (in FAULT) and follows it as it comes and goes.
    dynamic_interfaces
}

# Fails unless the demux answers on its status socket, its TUN is up and at
# least one lane is up: a demux that cannot reach any lane gives up the VIPs.
vrrp_script clusterpeer_health {
    script "{{.Demux}} health --config {{.Config}} --node {{.Node}}"
    interval {{.Check}}
    timeout {{.Check}}
    fall 1
    rise 2
}

vrrp_instance {{.Instance}} {
    # Both start as backup; the higher priority wins the first election.
    state BACKUP
    interface {{.HA.Interface}}
    virtual_router_id {{.HA.RouterID}}
    priority {{.Priority}}
    advert_int {{.Advert}}
{{- if not .HA.Preempt}}
    # A demux that comes back stays standby: no second move.
    nopreempt
{{- end}}
    track_interface {
        # The demux's TUN: it vanishes the moment the demux exits, however
        # it exits, and keepalived hears of it at once (netlink).
        {{.Tun}}
    }
    track_script {
        clusterpeer_health
    }
    virtual_ipaddress {
{{- range .VIPs}}
        {{.}}
{{- end}}
    }
{{- if .OtherVIPs}}
    virtual_ipaddress_excluded {
{{- range .OtherVIPs}}
        {{.}}
{{- end}}
    }
{{- end}}
{{- if .UnicastSrc.IsValid}}
    # Adverts by unicast to the other demux, where the network carries no
    # multicast (cloud VPCs).
    unicast_src_ip {{.UnicastSrc}}
    unicast_peer {
        {{.UnicastPeer}}
    }
{{- end}}
    # Tells the demux its role and runs networks.{{.Side}}.ha.notify, if set.
    notify "{{.Demux}} notify --config {{.Config}} --node {{.Node}}"
}
`))
