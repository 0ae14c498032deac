// Package config reads and checks a peering's YAML file: both networks'
// prefixes, the demux of each side, the lanes (gateway pairs) with their
// keys and addresses, the hash and the MTU. One file describes the whole
// peering and every node reads the same file, picking its own part by name,
// so two demuxes or two ends of a lane cannot disagree.
//
// Everything is checked before anything starts: Load returns every problem
// at once, each naming the field ("lanes[1].b.endpoint: ...").
package config

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/exporter-toolkit/web"
	"gopkg.in/yaml.v3"

	"github.com/clusterpeer/clusterpeer/dataplane/geneveauth"
	"github.com/clusterpeer/clusterpeer/flowhash"
	"github.com/clusterpeer/clusterpeer/tunnel/probe"
	"github.com/clusterpeer/clusterpeer/tunnel/wgkey"
)

// Defaults. The MTU arithmetic is in docs/datapath.md: a 1500-byte underlay
// minus WireGuard over IPv6 (40 + 8 + 32) leaves 1420 for the inner packet,
// and the GENEVE hop (inner + 8 + 8 + 40 at most) fits a 1500-byte LAN.
const (
	DefaultMTU         = 1420
	MinMTU             = 1280 // IPv6's minimum link MTU
	MaxMTU             = 9000 - WireGuardOverheadV6
	DefaultGenevePort  = 6081
	DefaultWGPort      = 51820
	DefaultMetricsAddr = "127.0.0.1:9100"
	DefaultStatusDir   = "/run/clusterpeer"
	DefaultProbePort   = 6082
	DefaultProbeRate   = 1000
	DefaultDrainTime   = 60 * time.Second
	DefaultDrainIdle   = 2 * time.Second

	// WireGuardOverheadV6 is what a lane adds to an inner packet on an
	// IPv6 underlay: IPv6 40 + UDP 8 + WireGuard header 16 + Poly1305 tag 16.
	WireGuardOverheadV6 = 40 + 8 + 16 + 16
	// GeneveOverheadV6 is what the demux-to-gateway hop adds on IPv6:
	// IPv6 40 + UDP 8 + GENEVE base header 8.
	GeneveOverheadV6 = 40 + 8 + 8
	// GeneveAuthLen is what security.geneve_auth adds to that: its
	// option. At the default MTU a sealed frame still fits a 1500-byte
	// LAN on IPv6: 1420 + 56 + 24 = 1500.
	GeneveAuthLen = geneveauth.OptionLen
)

// Peering is the whole file.
type Peering struct {
	Name     string           `yaml:"name"`
	VNI      uint32           `yaml:"vni"`
	MTU      int              `yaml:"mtu,omitempty"`
	Hash     Hash             `yaml:"hash"`
	Health   Health           `yaml:"health,omitempty"`
	Networks map[Side]Network `yaml:"networks"`
	Lanes    []Lane           `yaml:"lanes,omitempty"`
	// Discovery says whether gateways may also join through a store.
	Discovery Discovery `yaml:"discovery,omitempty"`
	Metrics   Metrics   `yaml:"metrics,omitempty"`
	Security  Security  `yaml:"security,omitempty"`

	Path string `yaml:"-"` // the file it came from, for messages
}

// Hash configures the flow hash; both demuxes must agree on all of it.
type Hash struct {
	KeyFile   string        `yaml:"key_file"`
	Mode      flowhash.Mode `yaml:"mode"`
	Symmetric bool          `yaml:"symmetric,omitempty"`
	TableSize uint32        `yaml:"table_size,omitempty"`
	PinFlows  int           `yaml:"pin_flows,omitempty"`

	Key flowhash.Key `yaml:"-"` // read from KeyFile
}

// Health configures the lane probes (see tunnel/probe) and draining.
// Both demuxes probe with it; the gateways answer on Port.
type Health struct {
	Enabled          *bool         `yaml:"enabled,omitempty"` // default true; off: every lane counts as up
	Interval         time.Duration `yaml:"interval,omitempty"`
	DetectMultiplier int           `yaml:"detect_multiplier,omitempty"`
	UpAfter          int           `yaml:"up_after,omitempty"`
	HoldDown         time.Duration `yaml:"hold_down,omitempty"`
	HoldDownMax      time.Duration `yaml:"hold_down_max,omitempty"`
	FlapWindow       time.Duration `yaml:"flap_window,omitempty"`
	MaxProbeRate     int           `yaml:"max_probe_rate,omitempty"` // per demux, all lanes together
	Port             uint16        `yaml:"port,omitempty"`
	DrainTimeout     time.Duration `yaml:"drain_timeout,omitempty"` // a draining lane's pinned flows move after this
	DrainIdle        time.Duration `yaml:"drain_idle,omitempty"`    // a draining lane idle this long is done

	Params probe.Params `yaml:"-"`
	On     bool         `yaml:"-"`
}

// Security configures the guards beyond WireGuard's (docs/security.md).
type Security struct {
	// GeneveAuth seals every GENEVE frame a demux sends its gateways (a
	// tag and a counter per frame, dataplane/geneveauth), for underlays
	// where a host can forge the demux's address; the gateways then take
	// only sealed frames, each once. All nodes of the peering must agree:
	// changing it needs a restart of all of them. The XDP fast path does
	// not seal (yet): a demux with both refuses to start.
	GeneveAuth bool `yaml:"geneve_auth,omitempty"`
	// KeysDir holds each node's own keys (NODE.keys, written by `demux
	// keys` from the peering secret): with it, no node holds the secret
	// and hash.key_file is left out; a reload applies a new generation
	// (tunnel/keyring, docs/security.md).
	KeysDir string `yaml:"keys_dir,omitempty"`
}

// Metrics configures every node's /metrics listener (each node's own
// metrics field is its address).
type Metrics struct {
	// WebConfig is a Prometheus exporter web configuration file (TLS,
	// client certificates, basic auth with bcrypt hashes), as node
	// exporters read it: https://prometheus.io/docs/prometheus/latest/configuration/https/.
	// Empty: plain HTTP, which the loopback default is meant for.
	WebConfig string `yaml:"web_config,omitempty"`
}

// Network is one side of the peering ("a" or "b").
type Network struct {
	Prefixes []netip.Prefix `yaml:"prefixes"`
	Demux    Demux          `yaml:"demux"`
	// Standby is a second demux of this side, warm, that keepalived makes
	// active when Demux fails (see HA); nil without one.
	Standby *Demux `yaml:"standby,omitempty"`
	HA      *HA    `yaml:"ha,omitempty"`
}

// Demux is the demux node of one side.
type Demux struct {
	Name      string       `yaml:"name"`
	Addresses []netip.Addr `yaml:"addresses"` // GENEVE sources this side's gateways accept
	Tun       string       `yaml:"tun,omitempty"`
	Metrics   string       `yaml:"metrics,omitempty"`
	Status    string       `yaml:"status,omitempty"`
}

// Lane is a gateway pair and the WireGuard tunnel between them.
type Lane struct {
	ID     int     `yaml:"id"`
	Weight uint32  `yaml:"weight,omitempty"`
	A      Gateway `yaml:"a"`
	B      Gateway `yaml:"b"`
}

// Gateway is one end of a lane: a tunnel node.
type Gateway struct {
	Name           string   `yaml:"name"`
	Geneve         HostPort `yaml:"geneve"`   // where its demux sends GENEVE
	Endpoint       HostPort `yaml:"endpoint"` // its WireGuard address, as its peer dials it
	PublicKey      string   `yaml:"public_key"`
	PrivateKeyFile string   `yaml:"private_key_file,omitempty"`
	Tun            string   `yaml:"tun,omitempty"`
	Metrics        string   `yaml:"metrics,omitempty"`
	Status         string   `yaml:"status,omitempty"`

	// Public is PublicKey parsed. The key stays a string in the file's
	// struct: a wgkey.Key that marshalled itself to text would let
	// private keys out through any encoder.
	Public wgkey.Key `yaml:"-"`
}

// Side names one of the two networks of a peering.
type Side string

const (
	SideA Side = "a"
	SideB Side = "b"
)

// Sides are the two sides, in the order lanes list them.
var Sides = [2]Side{SideA, SideB}

// Other returns the side facing s.
func (s Side) Other() Side {
	if s == SideA {
		return SideB
	}
	return SideA
}

// End returns the lane's gateway on side.
func (l *Lane) End(side Side) *Gateway {
	if side == SideA {
		return &l.A
	}
	return &l.B
}

// Errors collects every problem found in a file.
type Errors []error

func (e Errors) Error() string {
	s := make([]string, len(e))
	for i, err := range e {
		s[i] = err.Error()
	}
	return strings.Join(s, "\n")
}

// Load reads, defaults and checks a peering file. Key files are read (and
// their permissions checked) too, so a node that starts has everything.
func Load(path string) (*Peering, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	p, err := Parse(data, dirOf(path))
	if err != nil {
		return nil, fmt.Errorf("config %s:\n%w", path, err)
	}
	p.Path = path
	return p, nil
}

func dirOf(path string) string {
	if i := strings.LastIndexByte(path, '/'); i >= 0 {
		return path[:i+1]
	}
	return ""
}

// Parse checks a peering file's contents; relative key file paths are taken
// relative to dir.
func Parse(data []byte, dir string) (*Peering, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, YAMLErrors(data, err)
	}
	var p Peering
	c := checker{dir: dir}
	if root.Kind != 0 {
		c.bad = checkTree(&root, reflect.TypeFor[Peering](), "", &c.errs)
		if err := root.Decode(&p); err != nil {
			c.errs = append(c.errs, YAMLErrors(data, err)...)
		}
	}
	c.peering(&p)
	if len(c.errs) > 0 {
		return nil, c.errs
	}
	return &p, nil
}

// YAMLErrors names the field of each error yaml.v3 reports by line
// ("line 3: cannot unmarshal !!int `-1` into uint32" becomes
// "vni (line 3): cannot unmarshal ..."). Other YAML files of the project
// (the benchmark's profiles) report their errors with it too.
func YAMLErrors(data []byte, err error) Errors {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return Errors{fmt.Errorf("yaml: %s", strings.TrimPrefix(err.Error(), "yaml: "))}
	}
	var root yaml.Node
	yaml.Unmarshal(data, &root)
	fields := map[int]string{}
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, path)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k := path + n.Content[i].Value
				if _, seen := fields[n.Content[i].Line]; !seen {
					fields[n.Content[i].Line] = k
				}
				walk(n.Content[i+1], k+".")
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				k := fmt.Sprintf("%s[%d]", strings.TrimSuffix(path, "."), i)
				if _, seen := fields[c.Line]; !seen {
					fields[c.Line] = k
				}
				walk(c, k+".")
			}
		}
	}
	walk(&root, "")
	var errs Errors
	for _, msg := range te.Errors {
		var line int
		if _, err := fmt.Sscanf(msg, "line %d:", &line); err == nil && fields[line] != "" {
			msg = fmt.Sprintf("%s (line %d):%s", fields[line], line, msg[strings.IndexByte(msg, ':')+1:])
		}
		errs = append(errs, errors.New(msg))
	}
	return errs
}

type checker struct {
	dir   string
	errs  Errors
	names map[string]string // node name -> field that defined it
	bad   []string          // fields whose value did not parse (reported while decoding)
}

// errf reports a problem of field, unless it follows from a value there
// that did not parse (an address list whose one address was bad is not
// also "missing").
func (c *checker) errf(field, format string, args ...any) {
	for _, b := range c.bad {
		if b == field || strings.HasPrefix(b, field+"[") || strings.HasPrefix(b, field+".") {
			return
		}
	}
	c.errs = append(c.errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)

// Interface names: at most 15 bytes (IFNAMSIZ-1), no '/', whitespace or ':'.
var ifnameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,15}$`)

func (c *checker) peering(p *Peering) {
	c.names = map[string]string{}
	if !nameRE.MatchString(p.Name) {
		c.errf("name", "%q: want 1-32 lowercase letters, digits or '-'", p.Name)
	}
	if p.VNI >= 1<<24 {
		c.errf("vni", "%d: a GENEVE VNI has 24 bits (0..16777215)", p.VNI)
	}
	if p.MTU == 0 {
		p.MTU = DefaultMTU
	}
	if p.MTU < MinMTU || p.MTU > MaxMTU {
		c.errf("mtu", "%d: want %d..%d (the inner packet size a lane carries; see docs/datapath.md)", p.MTU, MinMTU, MaxMTU)
	}
	c.hash(&p.Hash, len(p.Lanes), p.Security.KeysDir != "")
	if p.Security.KeysDir != "" {
		p.Security.KeysDir = c.path(p.Security.KeysDir)
	}
	if p.Metrics.WebConfig != "" {
		p.Metrics.WebConfig = c.path(p.Metrics.WebConfig)
		if err := web.Validate(p.Metrics.WebConfig); err != nil {
			c.errf("metrics.web_config", "%s: %v", p.Metrics.WebConfig, err)
		}
	}
	for k := range p.Networks {
		if k != SideA && k != SideB {
			c.errf("networks."+string(k), "unknown network; the two sides are named a and b")
		}
	}
	var all []netip.Prefix
	var allField []string
	for _, side := range Sides {
		n, ok := p.Networks[side]
		f := "networks." + string(side)
		if !ok {
			c.errf(f, "missing")
			continue
		}
		c.network(f, p.Name, &n)
		p.Networks[side] = n
		for i, pr := range n.Prefixes {
			all = append(all, pr)
			allField = append(allField, fmt.Sprintf("%s.prefixes[%d]", f, i))
		}
	}
	for i := range all {
		for j := i + 1; j < len(all); j++ {
			if all[i].Overlaps(all[j]) {
				c.errf(allField[j], "%s overlaps %s (%s)", all[j], allField[i], all[i])
			}
		}
	}
	c.lanes(p)
	c.discovery(p)
	c.health(p)
}

func (c *checker) health(p *Peering) {
	h := &p.Health
	h.On = h.Enabled == nil || *h.Enabled
	d := probe.DefaultParams
	dur := func(field string, v *time.Duration, def, lo, hi time.Duration) {
		if *v == 0 {
			*v = def
		}
		if *v < lo || *v > hi {
			c.errf("health."+field, "%s: want %s..%s", *v, lo, hi)
		}
	}
	count := func(field string, v *int, def, lo, hi int) {
		if *v == 0 {
			*v = def
		}
		if *v < lo || *v > hi {
			c.errf("health."+field, "%d: want %d..%d", *v, lo, hi)
		}
	}
	dur("interval", &h.Interval, d.Interval, time.Millisecond, 10*time.Second)
	count("detect_multiplier", &h.DetectMultiplier, d.Multiplier, 1, 255)
	count("up_after", &h.UpAfter, d.UpAfter, 1, 255)
	dur("hold_down", &h.HoldDown, d.HoldDown, time.Millisecond, time.Hour)
	dur("hold_down_max", &h.HoldDownMax, d.HoldDownMax, h.HoldDown, time.Hour)
	dur("flap_window", &h.FlapWindow, d.FlapWindow, time.Millisecond, time.Hour)
	count("max_probe_rate", &h.MaxProbeRate, DefaultProbeRate, 10, 1000000)
	dur("drain_timeout", &h.DrainTimeout, DefaultDrainTime, time.Second, 24*time.Hour)
	dur("drain_idle", &h.DrainIdle, DefaultDrainIdle, 100*time.Millisecond, time.Hour)
	if h.Port == 0 {
		h.Port = DefaultProbePort
	}
	h.Params = probe.Params{
		Interval: h.Interval, Multiplier: h.DetectMultiplier, UpAfter: h.UpAfter,
		HoldDown: h.HoldDown, HoldDownMax: h.HoldDownMax, FlapWindow: h.FlapWindow,
	}
	if !h.On || len(c.bad) > 0 {
		return // with values that did not parse, these would report them again
	}
	// A probe's reply is routed back through the lane to the demux, so
	// every address on the way must be one the lanes carry.
	for _, side := range Sides {
		n := p.Networks[side]
		for _, d := range n.Demuxes() {
			role := "demux"
			if d.Name != n.Demux.Name {
				role = "standby"
			}
			for i, a := range d.Addresses {
				if !contains(n.Prefixes, a) {
					c.errf(fmt.Sprintf("networks.%s.%s.addresses[%d]", side, role, i),
						"%s is outside networks.%s.prefixes: lane probes answer to it through the lanes (or set health.enabled: false)", a, side)
				}
			}
		}
	}
	for i := range p.Lanes {
		l := &p.Lanes[i]
		for _, side := range Sides {
			g := l.End(side)
			if !g.Geneve.IsValid() {
				continue
			}
			f := fmt.Sprintf("lanes[%d].%s.geneve", i, side)
			if !contains(p.Networks[side].Prefixes, g.Geneve.Addr()) {
				c.errf(f, "%s is outside networks.%s.prefixes: the far demux probes this gateway through the lane at this address (or set health.enabled: false)", g.Geneve.Addr(), side)
			}
			for _, far := range p.Networks[side.Other()].Demuxes() {
				if !slices.ContainsFunc(far.Addresses, func(a netip.Addr) bool { return a.Is4() == g.Geneve.Addr().Is4() }) {
					c.errf(f, "%s: demux %s has no address of this family to probe it from", g.Geneve.Addr(), far.Name)
				}
			}
		}
	}
}

func contains(prefixes []netip.Prefix, a netip.Addr) bool {
	return slices.ContainsFunc(prefixes, func(p netip.Prefix) bool { return p.Contains(a) })
}

func (c *checker) hash(h *Hash, lanes int, keysDir bool) {
	if h.TableSize == 0 {
		h.TableSize = flowhash.DefaultTableSize
	}
	if lanes > 0 {
		if err := flowhash.CheckTableSize(h.TableSize, lanes); err != nil {
			c.errf("hash.table_size", "%v", err)
		}
	}
	if h.PinFlows < 0 {
		c.errf("hash.pin_flows", "%d: must not be negative (0 means the default)", h.PinFlows)
	}
	switch {
	case keysDir && h.KeyFile != "":
		c.errf("hash.key_file", "not with security.keys_dir: each node reads its own keys from there, and none holds the peering secret")
		return
	case keysDir:
		return
	case h.KeyFile == "":
		c.errf("hash.key_file", "missing: the peering's shared hash secret, 32 hex digits (`openssl rand -hex 16 > key; chmod 600 key`), or security.keys_dir")
		return
	}
	h.KeyFile = c.path(h.KeyFile)
	s, err := ReadSecretFile(h.KeyFile)
	if err != nil {
		c.errf("hash.key_file", "%v", err)
		return
	}
	if h.Key, err = flowhash.ParseKey(s); err != nil {
		c.errf("hash.key_file", "%s: %v", h.KeyFile, err)
	}
}

func (c *checker) path(p string) string {
	if p == "" || strings.HasPrefix(p, "/") {
		return p
	}
	return c.dir + p
}

func (c *checker) name(field, name string) {
	if !nameRE.MatchString(name) {
		c.errf(field, "%q: want 1-32 lowercase letters, digits or '-'", name)
		return
	}
	if prev, dup := c.names[name]; dup {
		c.errf(field, "%q is already the name of %s; node names must be unique", name, prev)
		return
	}
	c.names[name] = field
}

func (c *checker) network(f, peering string, n *Network) {
	if len(n.Prefixes) == 0 {
		c.errf(f+".prefixes", "missing: the address ranges of this network that the other side may reach")
	}
	for i, pr := range n.Prefixes {
		if pr.IsValid() && pr != pr.Masked() {
			c.errf(fmt.Sprintf("%s.prefixes[%d]", f, i), "%s has host bits set; did you mean %s?", pr, pr.Masked())
		}
	}
	// Bad ones were reported while decoding; the checks below see the rest.
	n.Prefixes = slices.DeleteFunc(n.Prefixes, func(p netip.Prefix) bool { return !p.IsValid() || p != p.Masked() })
	c.demux(f+".demux", peering, &n.Demux)
	if n.Standby != nil {
		c.demux(f+".standby", peering, n.Standby)
	}
	c.ha(f, n)
}

func (c *checker) demux(df, peering string, d *Demux) {
	c.name(df+".name", d.Name)
	if len(d.Addresses) == 0 {
		c.errf(df+".addresses", "missing: the source addresses of this side's GENEVE (its gateways accept only these)")
	}
	d.Addresses = unmapped(d.Addresses) // bad ones were reported while decoding
	if d.Tun == "" {
		d.Tun = "cp-" + truncate(d.Name, 12)
	}
	c.ifname(df+".tun", d.Tun)
	c.node(df, peering, d.Name, &d.Metrics, &d.Status)
}

func (c *checker) node(f, peering, name string, metrics, status *string) {
	if *metrics == "" {
		*metrics = DefaultMetricsAddr
	}
	if *metrics != "off" {
		if _, err := netip.ParseAddrPort(*metrics); err != nil {
			c.errf(f+".metrics", "%q: want ip:port (e.g. 127.0.0.1:9100) or off", *metrics)
		}
	}
	if *status == "" {
		*status = DefaultStatusDir + "/" + peering + "-" + name + ".sock"
	}
	if !strings.HasPrefix(*status, "/") {
		c.errf(f+".status", "%q: want an absolute path for the status socket", *status)
	}
}

func (c *checker) ifname(field, s string) {
	if !ifnameRE.MatchString(s) {
		c.errf(field, "%q: an interface name has 1-15 letters, digits, '_', '.' or '-'", s)
	}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func (c *checker) lanes(p *Peering) {
	if len(p.Lanes) > 1024 {
		c.errf("lanes", "%d lanes: at most 1024", len(p.Lanes))
	}
	ids := map[int]int{}
	endpoints := map[netip.AddrPort]string{}
	for i := range p.Lanes {
		l := &p.Lanes[i]
		f := fmt.Sprintf("lanes[%d]", i)
		if l.ID < 1 || l.ID > flowhash.MaxLaneID {
			c.errf(f+".id", "%d: want 1..%d (a stable lane number; 0 means none)", l.ID, flowhash.MaxLaneID)
		} else if j, dup := ids[l.ID]; dup {
			c.errf(f+".id", "%d is already the id of lanes[%d]", l.ID, j)
		} else {
			ids[l.ID] = i
		}
		if l.Weight == 0 {
			l.Weight = 1
		}
		if l.Weight > 1000 {
			c.errf(f+".weight", "%d: want 1..1000 (relative share of new flows)", l.Weight)
		}
		for _, side := range Sides {
			g := l.End(side)
			gf := f + "." + string(side)
			c.gateway(gf, p.Name, g)
			for _, ap := range []netip.AddrPort{g.Geneve.AddrPort, g.Endpoint.AddrPort} {
				if !ap.IsValid() {
					continue
				}
				if prev, dup := endpoints[ap]; dup {
					c.errf(gf, "address %s is also used by %s", ap, prev)
				}
				endpoints[ap] = gf
			}
		}
		if l.A.PublicKey != "" && l.A.PublicKey == l.B.PublicKey {
			c.errf(f+".b.public_key", "same key as %s.a: each gateway needs its own key pair", f)
		}
	}
}

func (c *checker) gateway(f, peering string, g *Gateway) {
	c.name(f+".name", g.Name)
	c.addrPort(f+".geneve", &g.Geneve, DefaultGenevePort)
	c.addrPort(f+".endpoint", &g.Endpoint, DefaultWGPort)
	if g.PublicKey == "" {
		c.errf(f+".public_key", "missing: the gateway's WireGuard public key (`tunnel pubkey < private.key`)")
	} else if k, err := wgkey.Parse(g.PublicKey); err != nil {
		c.errf(f+".public_key", "%v", err)
	} else {
		g.Public = k
	}
	g.PrivateKeyFile = c.path(g.PrivateKeyFile)
	if g.Tun == "" {
		g.Tun = "cp-" + truncate(g.Name, 12)
	}
	c.ifname(f+".tun", g.Tun)
	c.node(f, peering, g.Name, &g.Metrics, &g.Status)
}

// addrPort fills in the default port of a bare address; a bad one was
// reported while decoding.
func (c *checker) addrPort(field string, h *HostPort, defPort uint16) {
	switch {
	case !h.IsValid():
		c.errf(field, "missing: ip:port")
	case h.Port() == 0:
		h.AddrPort = netip.AddrPortFrom(h.Addr(), defPort)
	}
}

// unmapped drops invalid addresses (reported while decoding) and turns
// IPv4-mapped IPv6 ones into IPv4.
func unmapped(as []netip.Addr) []netip.Addr {
	out := as[:0]
	for _, a := range as {
		if a.IsValid() {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// Node is what one process runs: a demux or one end of a lane.
type Node struct {
	Side  Side
	Demux *Demux   // set for a demux (the side's demux or its standby)
	Lane  *Lane    // set for a gateway
	Self  *Gateway // this end of Lane
	Peer  *Gateway // the other end
}

// ErrUnknownNode says a --node name is not in the file.
var ErrUnknownNode = errors.New("no node of that name")

// Node finds a node by name.
func (p *Peering) Node(name string) (Node, error) {
	for _, side := range Sides {
		for _, d := range p.Networks[side].Demuxes() {
			if d.Name == name {
				return Node{Side: side, Demux: &d}, nil
			}
		}
	}
	for i := range p.Lanes {
		l := &p.Lanes[i]
		for _, side := range Sides {
			if l.End(side).Name == name {
				return Node{Side: side, Lane: l, Self: l.End(side), Peer: l.End(side.Other())}, nil
			}
		}
	}
	return Node{}, fmt.Errorf("%q: %w (known: %s)", name, ErrUnknownNode, strings.Join(p.NodeNames(), ", "))
}

// NodeNames lists every node, sorted.
func (p *Peering) NodeNames() []string {
	var s []string
	for _, side := range Sides {
		for _, d := range p.Networks[side].Demuxes() {
			s = append(s, d.Name)
		}
	}
	for _, l := range p.Lanes {
		s = append(s, l.A.Name, l.B.Name)
	}
	sort.Strings(s)
	return s
}

// ParseHealth reads a health section on its own ("{interval: 20ms}"), as
// commands that build a peering take it on their command line. Defaults
// are filled in when the peering it goes into is checked.
func ParseHealth(s string) (Health, error) {
	var h Health
	dec := yaml.NewDecoder(strings.NewReader(s))
	dec.KnownFields(true)
	if err := dec.Decode(&h); err != nil && !errors.Is(err, io.EOF) {
		return Health{}, fmt.Errorf("health %q: %w", s, YAMLErrors([]byte(s), err))
	}
	return h, nil
}
