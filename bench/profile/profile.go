// Package profile reads the benchmark's instance profiles (bench/profiles.yaml)
// and turns a profile into the limits that emulate it on this host: a CPU
// quota and period for each gateway's cgroup, optionally a cpuset, and a
// link rate for tc. The scale between an instance's vCPUs and this host's
// CPUs is decided once per run (Resolve) and the reason is kept for the
// report, so every figure says what it was measured under.
package profile

import (
	"bytes"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/clusterpeer/clusterpeer/config"
)

// File is a profiles file.
type File struct {
	Host     Host      `yaml:"host" json:"host"`
	VPC      VPC       `yaml:"vpc" json:"vpc"`
	Profiles []Profile `yaml:"profiles" json:"profiles"`
	Path     string    `yaml:"-" json:"path"`
}

// Host says how instances map onto this host's CPUs.
type Host struct {
	Scale          string        `yaml:"scale" json:"scale"` // "auto" or a number
	ShortHostScale float64       `yaml:"short_host_scale" json:"short_host_scale"`
	ReservedCPUs   int           `yaml:"reserved_cpus" json:"reserved_cpus"`
	ScaleNetwork   bool          `yaml:"scale_network" json:"scale_network"`
	CPUPeriod      time.Duration `yaml:"cpu_period" json:"cpu_period"`
}

// VPC is the line rate of the networks being peered.
type VPC struct {
	OneWayGbps   float64 `yaml:"one_way_gbps" json:"one_way_gbps"`
	BothWaysGbps float64 `yaml:"both_ways_gbps" json:"both_ways_gbps"`
	Enforce      bool    `yaml:"enforce" json:"enforce"`
}

// Profile is one instance type.
type Profile struct {
	Name        string  `yaml:"name" json:"name"`
	VCPUs       int     `yaml:"vcpus" json:"vcpus"`
	Network     string  `yaml:"network" json:"network"`
	NetworkGbps float64 `yaml:"network_gbps" json:"network_gbps"`
	Notes       string  `yaml:"notes" json:"notes,omitempty"`
}

// Load reads and checks a profiles file.
func Load(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("profiles: %w", err)
	}
	f, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("profiles %s:\n%w", path, err)
	}
	f.Path = path
	return f, nil
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$`)

// Parse checks a profiles file's contents and returns every problem at
// once, each naming its field.
func Parse(data []byte) (*File, error) {
	f := File{Host: Host{Scale: "auto", ShortHostScale: 0.05, ReservedCPUs: 4, CPUPeriod: 10 * time.Millisecond}}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, config.YAMLErrors(data, err)
	}
	var errs config.Errors
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if f.Host.Scale != "auto" {
		if s, err := strconv.ParseFloat(f.Host.Scale, 64); err != nil || !(s > 0 && s <= 1) {
			bad("host.scale", "%q: want auto or a number in (0, 1]", f.Host.Scale)
		}
	}
	if !(f.Host.ShortHostScale > 0 && f.Host.ShortHostScale <= 1) {
		bad("host.short_host_scale", "%v: want a number in (0, 1]", f.Host.ShortHostScale)
	}
	if f.Host.ReservedCPUs < 0 {
		bad("host.reserved_cpus", "%d: must not be negative", f.Host.ReservedCPUs)
	}
	if f.Host.CPUPeriod < time.Millisecond || f.Host.CPUPeriod > time.Second {
		bad("host.cpu_period", "%v: want 1ms to 1s (the kernel's limits)", f.Host.CPUPeriod)
	}
	if !(f.VPC.OneWayGbps > 0) {
		bad("vpc.one_way_gbps", "%v: must be positive", f.VPC.OneWayGbps)
	}
	if f.VPC.BothWaysGbps < f.VPC.OneWayGbps {
		bad("vpc.both_ways_gbps", "%v: must be at least one_way_gbps (%v)", f.VPC.BothWaysGbps, f.VPC.OneWayGbps)
	}
	if len(f.Profiles) == 0 {
		bad("profiles", "none listed")
	}
	seen := map[string]int{}
	for i, p := range f.Profiles {
		field := fmt.Sprintf("profiles[%d]", i)
		if !nameRE.MatchString(p.Name) {
			bad(field+".name", "%q: want letters, digits, '.', '_' or '-', at most 40", p.Name)
		} else if j, dup := seen[p.Name]; dup {
			bad(field+".name", "%q is also profiles[%d]", p.Name, j)
		}
		seen[p.Name] = i
		if p.VCPUs < 1 || p.VCPUs > 1024 {
			bad(field+".vcpus", "%d: want 1 to 1024", p.VCPUs)
		}
		if !(p.NetworkGbps > 0) || p.NetworkGbps > 1000 {
			bad(field+".network_gbps", "%v: want a rate above 0 and at most 1000", p.NetworkGbps)
		}
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return &f, nil
}

// Select returns the named profiles in the file's order of the names given;
// no names means all of them.
func (f *File) Select(names []string) ([]Profile, error) {
	if len(names) == 0 {
		return f.Profiles, nil
	}
	var out []Profile
	for _, n := range names {
		i := f.index(n)
		if i < 0 {
			have := make([]string, len(f.Profiles))
			for j, p := range f.Profiles {
				have[j] = p.Name
			}
			return nil, fmt.Errorf("profile %q is not in %s (it has %s)", n, f.Path, strings.Join(have, ", "))
		}
		out = append(out, f.Profiles[i])
	}
	return out, nil
}

func (f *File) index(name string) int {
	for i, p := range f.Profiles {
		if p.Name == name {
			return i
		}
	}
	return -1
}

// Emulation is how a run maps instances onto this host.
type Emulation struct {
	Scale        float64       `json:"scale"`  // host CPUs per emulated vCPU
	Reason       string        `json:"reason"` // why this scale
	Cpusets      bool          `json:"cpusets"`
	ScaleNetwork bool          `json:"scale_network"`
	CPUPeriod    time.Duration `json:"cpu_period"`
	HostCPUs     int           `json:"host_cpus"`
}

// Resolve decides the scale for a sweep of up to maxLanes lanes of the
// given profiles on a host with hostCPUs CPUs. override, when not empty,
// is a --scale flag that takes precedence over the file.
func (f *File) Resolve(profiles []Profile, maxLanes, hostCPUs int, override string) (Emulation, error) {
	e := Emulation{ScaleNetwork: f.Host.ScaleNetwork, CPUPeriod: f.Host.CPUPeriod, HostCPUs: hostCPUs}
	want := f.Host.Scale
	if override != "" {
		want = override
	}
	need := 0
	for _, p := range profiles {
		need = max(need, 2*maxLanes*p.VCPUs+f.Host.ReservedCPUs)
	}
	if want != "auto" {
		s, err := strconv.ParseFloat(want, 64)
		if err != nil || !(s > 0 && s <= 1) {
			return e, fmt.Errorf("scale %q: want auto or a number in (0, 1]", want)
		}
		e.Scale = s
		e.Reason = fmt.Sprintf("scale %g set by %s", s, map[bool]string{true: "--scale", false: "the profiles file"}[override != ""])
		e.Cpusets = s == 1 && hostCPUs >= need
		return e, nil
	}
	if hostCPUs >= need {
		e.Scale, e.Cpusets = 1, true
		e.Reason = fmt.Sprintf("1:1: the host has %d CPUs, the sweep needs %d (2 gateways x %d lanes x vCPUs + %d reserved)",
			hostCPUs, need, maxLanes, f.Host.ReservedCPUs)
		return e, nil
	}
	e.Scale = f.Host.ShortHostScale
	e.Reason = fmt.Sprintf("the host has %d CPUs but 1:1 needs %d (2 gateways x %d lanes x vCPUs + %d reserved), "+
		"so one vCPU is %g of a host CPU (short_host_scale)", hostCPUs, need, maxLanes, f.Host.ReservedCPUs, f.Host.ShortHostScale)
	return e, nil
}

// Limits is what emulates one gateway of a profile.
type Limits struct {
	CPUs       float64       `json:"cpus"` // host CPUs of quota per period
	Quota      time.Duration `json:"quota"`
	Period     time.Duration `json:"period"`
	RateBitsPS uint64        `json:"rate_bits_per_sec"` // each of the gateway's links, egress
}

// minQuota is the kernel's smallest CFS quota.
const minQuota = time.Millisecond

// Limits returns the limits for one gateway of p.
func (e Emulation) Limits(p Profile) Limits {
	cpus := float64(p.VCPUs) * e.Scale
	period := e.CPUPeriod
	quota := time.Duration(cpus * float64(period))
	if quota < minQuota { // stretch the period rather than round the share
		period = time.Duration(float64(minQuota) / cpus)
		quota = minQuota
	}
	return Limits{CPUs: cpus, Quota: quota, Period: period, RateBitsPS: e.rate(p.NetworkGbps)}
}

// LineRate is the VPC's one-way rate on this host, in bits per second.
func (e Emulation) LineRate(v VPC) uint64 { return e.rate(v.OneWayGbps) }

// LineRateBothWays is the VPC's rate with traffic both ways at once.
func (e Emulation) LineRateBothWays(v VPC) uint64 { return e.rate(v.BothWaysGbps) }

func (e Emulation) rate(gbps float64) uint64 {
	if e.ScaleNetwork {
		gbps *= e.Scale
	}
	return uint64(gbps * 1e9)
}
