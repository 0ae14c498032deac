// Package cgroup puts the benchmark's processes (gateways, demuxes, iperf3)
// into control groups of their own, limits their CPU the way an instance
// size would (a CFS quota per period, a cpuset where there are cores for
// one) and reads back how much CPU each used and how often it was
// throttled. Processes flow in by PID; usage and throttling flow out.
//
// It works on cgroup v2 where the cpu controller is there and on the v1
// cpu, cpuacct and cpuset hierarchies otherwise (hosts and containers that
// still mount v1, like this project's CI machines): the same CFS bandwidth
// control behind both.
package cgroup

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Manager owns one directory per hierarchy (the run's parent group) and
// every group made under it; Close removes them all.
type Manager struct {
	v2                 string // the run's directory on cgroup v2, or ""
	cpu, acct, cpuset  string // the run's directories on v1 ("" where absent)
	rootV2, rootCpuset string // hierarchy roots, where leftover tasks go
	rootCPU, rootAcct  string
	groups             []*Group
}

// Group is one process group, e.g. "gw-a1".
type Group struct {
	m                 *Manager
	Name              string
	v2                string
	cpu, acct, cpuset string
}

// Stat is a group's CPU accounting.
type Stat struct {
	Usage     time.Duration // CPU time used by its processes
	Periods   uint64        // CFS periods in which it ran
	Throttled uint64        // periods in which it hit its quota
}

// Version says which hierarchy is in use: "v2" or "v1".
func (m *Manager) Version() string {
	if m.v2 != "" {
		return "v2"
	}
	return "v1"
}

// Open makes the run's parent group, named name (e.g.
// "clusterpeer-bench-1234"), on the hierarchies found in
// /proc/self/mountinfo.
func Open(name string) (*Manager, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	return openAt(parseMounts(string(data)), name)
}

// mounts are where the hierarchies this package uses are mounted.
type mounts struct {
	v2                string // cgroup2 with the cpu controller available
	cpu, acct, cpuset string // v1
}

// parseMounts reads /proc/self/mountinfo: "36 25 0:31 / /sys/fs/cgroup/cpu
// rw,relatime shared:9 - cgroup cgroup rw,cpu". A cgroup2 mount counts only
// if the cpu controller is available in it (not bound to v1).
func parseMounts(mountinfo string) mounts {
	var m mounts
	for _, line := range strings.Split(mountinfo, "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 3 || f[3] != "/" {
			continue
		}
		dir := f[4]
		switch g[0] {
		case "cgroup2":
			if c, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers")); err == nil &&
				slices.Contains(strings.Fields(string(c)), "cpu") && m.v2 == "" {
				m.v2 = dir
			}
		case "cgroup":
			opts := strings.Split(g[2], ",")
			if slices.Contains(opts, "cpu") && m.cpu == "" {
				m.cpu = dir
			}
			if slices.Contains(opts, "cpuacct") && m.acct == "" {
				m.acct = dir
			}
			if slices.Contains(opts, "cpuset") && m.cpuset == "" {
				m.cpuset = dir
			}
		}
	}
	return m
}

func openAt(mt mounts, name string) (*Manager, error) {
	m := &Manager{}
	switch {
	case mt.v2 != "":
		m.rootV2 = mt.v2
		m.v2 = filepath.Join(mt.v2, name)
		// The controllers must be enabled for the children of every level.
		for _, c := range []string{"+cpu", "+cpuset"} {
			if err := write(filepath.Join(mt.v2, "cgroup.subtree_control"), c); err != nil && c == "+cpu" {
				return nil, err
			}
		}
		if err := mkdir(m.v2); err != nil {
			return nil, err
		}
		write(filepath.Join(m.v2, "cgroup.subtree_control"), "+cpu")
		write(filepath.Join(m.v2, "cgroup.subtree_control"), "+cpuset")
	case mt.cpu != "" && mt.acct != "":
		m.rootCPU, m.rootAcct, m.rootCpuset = mt.cpu, mt.acct, mt.cpuset
		m.cpu, m.acct = filepath.Join(mt.cpu, name), filepath.Join(mt.acct, name)
		if mt.cpuset != "" {
			m.cpuset = filepath.Join(mt.cpuset, name)
		}
		for _, d := range []string{m.cpu, m.acct, m.cpuset} {
			if d == "" {
				continue
			}
			if err := mkdir(d); err != nil { // cpu and cpuacct may be one hierarchy: mkdir allows that
				m.Close()
				return nil, err
			}
		}
		if m.cpuset != "" {
			if err := inheritCpuset(m.cpuset); err != nil {
				m.Close()
				return nil, err
			}
		}
	default:
		return nil, errors.New("cgroup: no cgroup v2 with the cpu controller and no v1 cpu and cpuacct hierarchies are mounted")
	}
	return m, nil
}

// Group makes a group under the run's directory.
func (m *Manager) Group(name string) (*Group, error) {
	g := &Group{m: m, Name: name}
	if m.v2 != "" {
		g.v2 = filepath.Join(m.v2, name)
		if err := mkdir(g.v2); err != nil {
			return nil, err
		}
	} else {
		g.cpu, g.acct = filepath.Join(m.cpu, name), filepath.Join(m.acct, name)
		if m.cpuset != "" {
			g.cpuset = filepath.Join(m.cpuset, name)
		}
		for _, d := range g.dirs() {
			if err := mkdir(d); err != nil {
				return nil, err
			}
		}
		if g.cpuset != "" {
			if err := inheritCpuset(g.cpuset); err != nil {
				return nil, err
			}
		}
	}
	m.groups = append(m.groups, g)
	return g, nil
}

// dirs are the group's directories, each once (cpu and cpuacct may be one
// hierarchy).
func (g *Group) dirs() []string {
	var out []string
	for _, d := range []string{g.v2, g.cpu, g.acct, g.cpuset} {
		if d != "" && !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	return out
}

// Limit sets the CPU quota per period; quota 0 removes the limit.
func (g *Group) Limit(quota, period time.Duration) error {
	if g.v2 != "" {
		q := "max"
		if quota > 0 {
			q = strconv.FormatInt(quota.Microseconds(), 10)
		}
		return write(filepath.Join(g.v2, "cpu.max"), fmt.Sprintf("%s %d", q, period.Microseconds()))
	}
	// v1 checks quota against the current period: lift the quota first.
	if err := write(filepath.Join(g.cpu, "cpu.cfs_quota_us"), "-1"); err != nil {
		return err
	}
	if err := write(filepath.Join(g.cpu, "cpu.cfs_period_us"), strconv.FormatInt(period.Microseconds(), 10)); err != nil {
		return err
	}
	if quota <= 0 {
		return nil
	}
	return write(filepath.Join(g.cpu, "cpu.cfs_quota_us"), strconv.FormatInt(quota.Microseconds(), 10))
}

// Pin restricts the group to cpus ("2-3", the kernel's list format); ""
// gives it every CPU its parent has.
func (g *Group) Pin(cpus string) error {
	dir := g.v2
	if dir == "" {
		dir = g.cpuset
	}
	if dir == "" {
		return errors.New("cgroup: no cpuset hierarchy")
	}
	if cpus == "" {
		parent, err := os.ReadFile(filepath.Join(filepath.Dir(dir), effectiveCpus(g.v2 != "")))
		if err != nil {
			return fmt.Errorf("cgroup: %w", err)
		}
		cpus = strings.TrimSpace(string(parent))
	}
	return write(filepath.Join(dir, "cpuset.cpus"), cpus)
}

func effectiveCpus(v2 bool) string {
	if v2 {
		return "cpuset.cpus.effective"
	}
	return "cpuset.cpus"
}

// Add moves a process (all its threads) into the group.
func (g *Group) Add(pid int) error {
	for _, d := range g.dirs() {
		if err := write(filepath.Join(d, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
			return fmt.Errorf("cgroup %s: adding pid %d: %w", g.Name, pid, err)
		}
	}
	return nil
}

// Stat reads the group's CPU use and throttling.
func (g *Group) Stat() (Stat, error) {
	if g.v2 != "" {
		data, err := os.ReadFile(filepath.Join(g.v2, "cpu.stat"))
		if err != nil {
			return Stat{}, fmt.Errorf("cgroup: %w", err)
		}
		kv := parseKV(string(data))
		return Stat{Usage: time.Duration(kv["usage_usec"]) * time.Microsecond, Periods: kv["nr_periods"], Throttled: kv["nr_throttled"]}, nil
	}
	data, err := os.ReadFile(filepath.Join(g.cpu, "cpu.stat"))
	if err != nil {
		return Stat{}, fmt.Errorf("cgroup: %w", err)
	}
	kv := parseKV(string(data))
	usage, err := os.ReadFile(filepath.Join(g.acct, "cpuacct.usage"))
	if err != nil {
		return Stat{}, fmt.Errorf("cgroup: %w", err)
	}
	ns, err := strconv.ParseUint(strings.TrimSpace(string(usage)), 10, 64)
	if err != nil {
		return Stat{}, fmt.Errorf("cgroup: cpuacct.usage: %w", err)
	}
	return Stat{Usage: time.Duration(ns), Periods: kv["nr_periods"], Throttled: kv["nr_throttled"]}, nil
}

// parseKV reads "key value" lines (cpu.stat).
func parseKV(s string) map[string]uint64 {
	kv := map[string]uint64{}
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), " ")
		if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64); ok && err == nil {
			kv[k] = n
		}
	}
	return kv
}

// Close removes every group and the run's directories. Processes still in
// a group (there should be none: the harness stops its processes first)
// are moved to the hierarchy's root so that nothing is left behind.
func (m *Manager) Close() error {
	var errs []error
	for i := len(m.groups) - 1; i >= 0; i-- {
		for _, d := range m.groups[i].dirs() {
			errs = append(errs, m.remove(d))
		}
	}
	m.groups = nil
	for _, d := range []string{m.v2, m.cpuset, m.acct, m.cpu} {
		if d != "" {
			errs = append(errs, m.remove(d))
		}
	}
	return errors.Join(errs...)
}

func (m *Manager) remove(dir string) error {
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	root := m.rootV2
	for _, r := range []string{m.rootCPU, m.rootAcct, m.rootCpuset} {
		if r != "" && strings.HasPrefix(dir, r+"/") {
			root = r
		}
	}
	var err error
	for try := 0; try < 50; try++ {
		if data, rerr := os.ReadFile(filepath.Join(dir, "cgroup.procs")); rerr == nil && root != "" {
			for _, pid := range strings.Fields(string(data)) {
				write(filepath.Join(root, "cgroup.procs"), pid)
			}
		}
		if err = os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		time.Sleep(20 * time.Millisecond) // a process on its way out
	}
	return fmt.Errorf("cgroup: %w", err)
}

// inheritCpuset copies the parent's cpus and mems: a v1 cpuset starts
// empty and takes no tasks until both are set.
func inheritCpuset(dir string) error {
	for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
		v, err := os.ReadFile(filepath.Join(filepath.Dir(dir), f))
		if err != nil {
			return fmt.Errorf("cgroup: %w", err)
		}
		if err := write(filepath.Join(dir, f), strings.TrimSpace(string(v))); err != nil {
			return err
		}
	}
	return nil
}

func mkdir(dir string) error {
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("cgroup: %w", err)
	}
	return nil
}

func write(path, value string) error {
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("cgroup: writing %q to %s: %w", value, path, err)
	}
	return nil
}
