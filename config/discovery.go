package config

import (
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/clusterpeer/clusterpeer/flowhash"
)

// DiscoveryMode says where a peering's lanes come from.
type DiscoveryMode string

const (
	// DiscoveryStatic: the lanes are the file's (the default; no server).
	DiscoveryStatic DiscoveryMode = "static"
	// DiscoveryEtcd: the file's lanes plus the gateways that register
	// themselves in etcd (package membership).
	DiscoveryEtcd DiscoveryMode = "etcd"
)

// Store defaults: a lease outlives a few missed keep-alives (the client
// renews at a third of the TTL) but a gone gateway leaves within seconds.
const (
	DefaultStorePrefix = "/clusterpeer/"
	DefaultLeaseTTL    = 6 * time.Second
	DefaultDialTimeout = 2 * time.Second
)

// Discovery configures lane membership.
type Discovery struct {
	Mode DiscoveryMode `yaml:"mode,omitempty"`
	Etcd *Etcd         `yaml:"etcd,omitempty"`
}

// Etcd is the store the gateways register in and the demuxes watch.
type Etcd struct {
	// Endpoints: https://host:port, http://host:port (test setups only)
	// or unix:///path.
	Endpoints   []string      `yaml:"endpoints"`
	CAFile      string        `yaml:"ca_file,omitempty"` // TLS: the CA that signed the servers' certificates
	CertFile    string        `yaml:"cert_file,omitempty"`
	KeyFile     string        `yaml:"key_file,omitempty"` // client certificate and key, if the servers ask for one
	Prefix      string        `yaml:"prefix,omitempty"`
	LeaseTTL    time.Duration `yaml:"lease_ttl,omitempty"`
	DialTimeout time.Duration `yaml:"dial_timeout,omitempty"`
	// EnrolmentKeyFile holds the peering's Ed25519 enrolment key (its
	// 32-byte seed, base64, owner-only): gateways sign their registrations
	// with it. EnrolmentPublicKey is what every reader verifies them
	// with; a node that has the key file may leave it out.
	EnrolmentKeyFile   string `yaml:"enrolment_key_file,omitempty"`
	EnrolmentPublicKey string `yaml:"enrolment_public_key,omitempty"`

	Enrolment ed25519.PrivateKey `yaml:"-"` // read from EnrolmentKeyFile; nil without one
	Verify    ed25519.PublicKey  `yaml:"-"`
}

func (c *checker) discovery(p *Peering) {
	d := &p.Discovery
	switch d.Mode {
	case "":
		d.Mode = DiscoveryStatic
	case DiscoveryStatic, DiscoveryEtcd:
	default:
		c.errf("discovery.mode", "%q: want static (the lanes of this file) or etcd", d.Mode)
		return
	}
	if d.Mode == DiscoveryStatic {
		if d.Etcd != nil {
			c.errf("discovery.etcd", "set, but discovery.mode is static; set mode: etcd to use it")
		}
		if len(p.Lanes) == 0 {
			c.errf("lanes", "missing: at least one lane (a gateway pair), or discovery.mode: etcd for gateways that register themselves")
		}
		return
	}
	if d.Etcd == nil {
		c.errf("discovery.etcd", "missing: the store's endpoints and the enrolment key")
		return
	}
	c.etcd(d.Etcd)
}

func (c *checker) etcd(e *Etcd) {
	const f = "discovery.etcd"
	if len(e.Endpoints) == 0 {
		c.errf(f+".endpoints", "missing: at least one etcd client URL (https://host:2379)")
	}
	for i, ep := range e.Endpoints {
		u, err := url.Parse(ep)
		switch {
		case err != nil:
			c.errf(fmt.Sprintf("%s.endpoints[%d]", f, i), "%q: %v", ep, err)
		case u.Scheme == "unix":
			if u.Path == "" && u.Host == "" {
				c.errf(fmt.Sprintf("%s.endpoints[%d]", f, i), "%q: want unix:///path/to/socket", ep)
			}
		case u.Scheme == "https" || u.Scheme == "http":
			if u.Port() == "" {
				c.errf(fmt.Sprintf("%s.endpoints[%d]", f, i), "%q: want %s://host:port", ep, u.Scheme)
			}
		default:
			c.errf(fmt.Sprintf("%s.endpoints[%d]", f, i), "%q: want https://host:port, http://host:port or unix:///path", ep)
		}
	}
	for _, fp := range []*string{&e.CAFile, &e.CertFile, &e.KeyFile, &e.EnrolmentKeyFile} {
		*fp = c.path(*fp)
	}
	if (e.CertFile == "") != (e.KeyFile == "") {
		c.errf(f+".key_file", "cert_file and key_file go together (a client certificate and its key)")
	}
	if e.Prefix == "" {
		e.Prefix = DefaultStorePrefix
	}
	if !strings.HasPrefix(e.Prefix, "/") || !strings.HasSuffix(e.Prefix, "/") {
		c.errf(f+".prefix", "%q: want a key prefix that starts and ends with '/'", e.Prefix)
	}
	if e.LeaseTTL == 0 {
		e.LeaseTTL = DefaultLeaseTTL
	}
	// etcd counts leases in whole seconds, and renews them a third of the
	// way; under 3 s one late renewal would expire a live gateway.
	if e.LeaseTTL < 3*time.Second || e.LeaseTTL > time.Hour || e.LeaseTTL%time.Second != 0 {
		c.errf(f+".lease_ttl", "%s: want whole seconds, 3s..1h", e.LeaseTTL)
	}
	if e.DialTimeout == 0 {
		e.DialTimeout = DefaultDialTimeout
	}
	if e.DialTimeout < 100*time.Millisecond || e.DialTimeout > time.Minute {
		c.errf(f+".dial_timeout", "%s: want 100ms..1m", e.DialTimeout)
	}
	if e.EnrolmentKeyFile != "" {
		if k, err := ReadEnrolmentKey(e.EnrolmentKeyFile); err != nil {
			c.errf(f+".enrolment_key_file", "%v", err)
		} else {
			e.Enrolment = k
		}
	}
	if e.EnrolmentPublicKey != "" {
		b, err := base64.StdEncoding.DecodeString(e.EnrolmentPublicKey)
		if err != nil || len(b) != ed25519.PublicKeySize {
			c.errf(f+".enrolment_public_key", "not a base64 Ed25519 public key (32 bytes): `tunnel enrolpub < enrolment.key`")
		} else {
			e.Verify = b
		}
	}
	switch {
	case e.Enrolment != nil && e.Verify != nil && !e.Verify.Equal(e.Enrolment.Public()):
		c.errf(f+".enrolment_public_key", "does not belong to enrolment_key_file %s (its public key is %s)",
			e.EnrolmentKeyFile, base64.StdEncoding.EncodeToString(e.Enrolment.Public().(ed25519.PublicKey)))
	case e.Enrolment != nil:
		e.Verify = e.Enrolment.Public().(ed25519.PublicKey)
	case e.Verify == nil && e.EnrolmentKeyFile == "":
		c.errf(f+".enrolment_public_key", "missing: registrations are verified with the peering's enrolment key (`tunnel enrolkey > enrolment.key; tunnel enrolpub < enrolment.key`)")
	}
}

// ReadEnrolmentKey reads an Ed25519 enrolment key: its 32-byte seed in
// base64, from an owner-only file.
func ReadEnrolmentKey(path string) (ed25519.PrivateKey, error) {
	s, err := ReadSecretFile(path)
	if err != nil {
		return nil, err
	}
	seed, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("%s: not an enrolment key (base64 of 32 bytes; `tunnel enrolkey` makes one)", path)
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

// Joining is a gateway that is not in the file: it registers itself in
// the store (`tunnel join`), in the lowest free slot of its side or the
// one it asks for.
type Joining struct {
	Side    Side
	Slot    int // 0: the lowest free one
	Weight  uint32
	Gateway Gateway
}

// CheckJoining checks a joining gateway against the peering, with the
// file's own rules for a gateway, and fills in its defaults.
func (p *Peering) CheckJoining(j *Joining) error {
	c := checker{dir: dirOf(p.Path), names: map[string]string{}}
	for _, n := range p.NodeNames() {
		c.names[n] = "a node of " + p.Path
	}
	if p.Discovery.Mode != DiscoveryEtcd {
		c.errf("discovery.mode", "%s: a gateway joins only a peering whose discovery.mode is etcd", p.Discovery.Mode)
	}
	if j.Side != SideA && j.Side != SideB {
		c.errf("side", "%q: want a or b", j.Side)
	}
	if j.Slot < 0 || j.Slot > MaxSlot {
		c.errf("slot", "%d: want 1..%d, or 0 for the lowest free one", j.Slot, MaxSlot)
	}
	if slices.ContainsFunc(p.Lanes, func(l Lane) bool { return l.ID == j.Slot }) {
		c.errf("slot", "%d is a lane of %s; a joining gateway takes a slot the file does not", j.Slot, p.Path)
	}
	if j.Weight == 0 {
		j.Weight = 1
	}
	if j.Weight > 1000 {
		c.errf("weight", "%d: want 1..1000 (relative share of new flows)", j.Weight)
	}
	g := &j.Gateway
	c.gateway("gateway", p.Name, g)
	if g.Geneve.IsValid() && (j.Side == SideA || j.Side == SideB) && p.Health.On && !contains(p.Networks[j.Side].Prefixes, g.Geneve.Addr()) {
		c.errf("geneve", "%s is outside networks.%s.prefixes: the far demux probes this gateway through the lane at this address", g.Geneve.Addr(), j.Side)
	}
	if len(c.errs) > 0 {
		return c.errs
	}
	return nil
}

// MaxSlot is the highest lane id a store registration may take; the file
// and the store share the lane ids (flowhash.MaxLaneID).
const MaxSlot = flowhash.MaxLaneID

// GenevePrefixOK says whether a registered gateway's GENEVE address may
// be one of side's (probes reach it through the lanes).
func (p *Peering) GenevePrefixOK(side Side, a netip.Addr) bool {
	return !p.Health.On || contains(p.Networks[side].Prefixes, a)
}
