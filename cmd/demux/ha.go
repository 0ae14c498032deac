package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clusterpeer/clusterpeer/admin"
	"github.com/clusterpeer/clusterpeer/cmd/internal/cli"
	"github.com/clusterpeer/clusterpeer/config"
	"github.com/clusterpeer/clusterpeer/ha"
)

// keepalivedConf prints the keepalived config for a demux of an HA pair.
func keepalivedConf(args []string) error {
	var f cli.NodeFlags
	var bin string
	if err := f.ParseWith("keepalived", args, false, func(fs *flag.FlagSet) {
		fs.StringVar(&bin, "demux-bin", "", "the demux binary's path on the demux host (default: this one)")
	}); err != nil {
		return err
	}
	if f.Node == "" {
		return fmt.Errorf("--node is required: the demux whose keepalived config to write")
	}
	p, err := config.Load(f.Config)
	if err != nil {
		return err
	}
	if bin == "" {
		if bin, err = os.Executable(); err != nil {
			return err
		}
	}
	cfg, err := filepath.Abs(f.Config)
	if err != nil {
		return err
	}
	b, err := ha.Keepalived(p, f.Node, ha.Paths{Demux: bin, Config: cfg})
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(b)
	return err
}

// healthCheck is keepalived's track_script: exit 0 while this demux may
// hold the VIPs.
func healthCheck(args []string) error {
	var f cli.NodeFlags
	if err := f.Parse("health", args, false); err != nil {
		return err
	}
	_, node, err := f.Load()
	if err != nil {
		return err
	}
	if node.Demux == nil {
		return fmt.Errorf("node %q is a gateway; health judges a demux", f.Node)
	}
	var st status
	if err := admin.Fetch(node.Demux.Status, &st); err != nil {
		return err
	}
	ifc, err := net.InterfaceByName(st.Tun)
	msg, err := ha.Healthy(st.Status, err == nil && ifc.Flags&net.FlagUp != 0)
	if err != nil {
		return err
	}
	fmt.Println(msg)
	return nil
}

// notify is keepalived's notify script: it tells the demux its new role
// (for `demux show` and the metrics) and runs the operator's hook.
func notify(args []string) error {
	var f cli.NodeFlags
	var rest []string
	f.Args = &rest
	if err := f.Parse("notify", args, false); err != nil {
		return err
	}
	p, node, err := f.Load()
	if err != nil {
		return err
	}
	state, err := ha.State(rest)
	if err != nil {
		return err
	}
	if node.Demux == nil {
		return fmt.Errorf("node %q is a gateway; notify is for a demux", f.Node)
	}
	var errs []error
	if _, err := admin.Do(node.Demux.Status, "ha", url.Values{"state": {state}}); err != nil {
		// A demux that is gone is why keepalived moved; the hook still runs.
		errs = append(errs, fmt.Errorf("telling the demux: %w", err))
	}
	out, err := ha.Hook(context.Background(), p, f.Node, state)
	os.Stdout.Write(out)
	return errors.Join(append(errs, err)...)
}

// haRole is the role keepalived last reported to this demux.
type haRole struct {
	mu  sync.Mutex
	now haStatus
}

// haStatus is the HA part of `demux show`.
type haStatus struct {
	Role        string    `json:"role"` // MASTER, BACKUP, FAULT, STOP, or "" before keepalived reported
	Since       time.Time `json:"since"`
	Transitions int       `json:"transitions"`
	VIPs        []string  `json:"vips"`
	Pair        string    `json:"pair"`
}

func newHARole(nw config.Network, node string) *haRole {
	if nw.HA == nil {
		return nil
	}
	vips := make([]string, len(nw.HA.VIPs))
	for i, v := range nw.HA.VIPs {
		vips[i] = v.String()
	}
	return &haRole{now: haStatus{VIPs: vips, Pair: nw.Pair(node).Name}}
}

func (r *haRole) status() *haStatus {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.now
	return &s
}

// set is the "ha" action that `demux notify` calls.
func (r *haRole) set(q url.Values, log *slog.Logger) (string, error) {
	if r == nil {
		return "", errors.New("this demux has no ha section in its config")
	}
	state, err := ha.State([]string{"", "", q.Get("state")})
	if err != nil {
		return "", err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if state != r.now.Role {
		log.Info("ha role", "from", r.now.Role, "to", state, "vips", strings.Join(r.now.VIPs, ","))
		r.now.Role, r.now.Since = state, time.Now()
		r.now.Transitions++
	}
	return "role " + state, nil
}

func (r *haRole) collectors() []prometheus.Collector {
	if r == nil {
		return nil
	}
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "clusterpeer_demux_ha_active",
			Help: "1 while keepalived has made this demux the active one (MASTER)."},
			func() float64 {
				if r.status().Role == "MASTER" {
					return 1
				}
				return 0
			}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "clusterpeer_demux_ha_transitions_total",
			Help: "Changes of HA role keepalived reported."},
			func() float64 { return float64(r.status().Transitions) }),
	}
}

func printHA(h *haStatus) {
	if h == nil {
		return
	}
	role := h.Role
	if role == "" {
		fmt.Printf("  ha: no role reported by keepalived yet (vips %s, pair %s)\n", strings.Join(h.VIPs, " "), h.Pair)
		return
	}
	fmt.Printf("  ha: %s for %s (%d changes)  vips: %s  pair: %s\n", role,
		time.Since(h.Since).Round(time.Millisecond), h.Transitions, strings.Join(h.VIPs, " "), h.Pair)
}
