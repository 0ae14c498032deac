package cgroup

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseMounts(t *testing.T) {
	// This project's CI machines: v1 cpu, cpuacct and cpuset, and a
	// cgroup2 mount whose cpu controller is bound to v1.
	v2 := t.TempDir()
	os.WriteFile(filepath.Join(v2, "cgroup.controllers"), []byte("hugetlb\n"), 0o644)
	mi := strings.Join([]string{
		"30 25 0:26 / /sys/fs/cgroup/cpu rw,relatime shared:8 - cgroup cgroup rw,cpu",
		"31 25 0:27 / /sys/fs/cgroup/cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpuacct",
		"32 25 0:28 / /sys/fs/cgroup/cpuset rw,relatime shared:10 - cgroup cgroup rw,cpuset",
		"33 25 0:29 / " + v2 + " rw,relatime shared:11 - cgroup2 cgroup2 rw",
		"34 25 0:30 /sub /elsewhere rw - cgroup cgroup rw,cpu", // a bind of a subtree
	}, "\n")
	m := parseMounts(mi)
	if m.v2 != "" || m.cpu != "/sys/fs/cgroup/cpu" || m.acct != "/sys/fs/cgroup/cpuacct" || m.cpuset != "/sys/fs/cgroup/cpuset" {
		t.Errorf("v1 host: %+v", m)
	}
	os.WriteFile(filepath.Join(v2, "cgroup.controllers"), []byte("cpuset cpu io memory pids\n"), 0o644)
	if m := parseMounts(mi); m.v2 != v2 {
		t.Errorf("v2 with cpu: %+v", m)
	}
	// Co-mounted cpu,cpuacct (older distributions).
	m = parseMounts("30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct")
	if m.cpu != "/sys/fs/cgroup/cpu,cpuacct" || m.acct != m.cpu {
		t.Errorf("co-mounted: %+v", m)
	}
}

func TestParseKV(t *testing.T) {
	kv := parseKV("usage_usec 1500\nuser_usec 1000\nnr_periods 24\nnr_throttled 21\nthrottled_usec x\n")
	if kv["usage_usec"] != 1500 || kv["nr_periods"] != 24 || kv["nr_throttled"] != 21 {
		t.Errorf("%v", kv)
	}
	if _, ok := kv["throttled_usec"]; ok {
		t.Error("a value that is not a number was kept")
	}
}

// fakeV1 lays out v1 hierarchies in a directory, as the kernel would
// show them, so the file writes can be checked without root.
func fakeV1(t *testing.T) mounts {
	root := t.TempDir()
	m := mounts{cpu: filepath.Join(root, "cpu"), acct: filepath.Join(root, "cpuacct"), cpuset: filepath.Join(root, "cpuset")}
	for _, d := range []string{m.cpu, m.acct, m.cpuset} {
		os.Mkdir(d, 0o755)
	}
	os.WriteFile(filepath.Join(m.cpuset, "cpuset.cpus"), []byte("0-1\n"), 0o644)
	os.WriteFile(filepath.Join(m.cpuset, "cpuset.mems"), []byte("0\n"), 0o644)
	return m
}

func TestV1Files(t *testing.T) {
	mt := fakeV1(t)
	m, err := openAt(mt, "run")
	if err != nil {
		t.Fatal(err)
	}
	g, err := m.Group("gw-a1")
	if err != nil {
		t.Fatal(err)
	}
	if got := read(t, mt.cpuset, "run/gw-a1/cpuset.mems"); got != "0" {
		t.Errorf("cpuset.mems inherited %q", got)
	}
	if err := g.Limit(time.Millisecond, 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if q, p := read(t, mt.cpu, "run/gw-a1/cpu.cfs_quota_us"), read(t, mt.cpu, "run/gw-a1/cpu.cfs_period_us"); q != "1000" || p != "10000" {
		t.Errorf("quota %s period %s", q, p)
	}
	if err := g.Pin("1"); err != nil || read(t, mt.cpuset, "run/gw-a1/cpuset.cpus") != "1" {
		t.Errorf("pin: %v", err)
	}
	os.WriteFile(filepath.Join(mt.cpu, "run/gw-a1/cpu.stat"), []byte("nr_periods 10\nnr_throttled 4\nthrottled_time 5\n"), 0o644)
	os.WriteFile(filepath.Join(mt.acct, "run/gw-a1/cpuacct.usage"), []byte("2500000\n"), 0o644)
	st, err := g.Stat()
	if err != nil || st.Usage != 2500*time.Microsecond || st.Periods != 10 || st.Throttled != 4 {
		t.Errorf("stat %+v %v", st, err)
	}
	if m.Version() != "v1" {
		t.Error(m.Version())
	}
}

func read(t *testing.T, dir, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// TestRealQuota runs a busy loop in a group limited to a tenth of a CPU:
// the kernel must account its CPU to the group and throttle it, and Close
// must leave no directory behind, with the loop still running in it.
func TestRealQuota(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make control groups")
	}
	m, err := Open(fmt.Sprintf("clusterpeer-test-%d", os.Getpid()))
	if err != nil {
		t.Skipf("no usable cgroup hierarchy: %v", err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			m.Close()
		}
	})
	g, err := m.Group("spin")
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Limit(time.Millisecond, 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	spin := exec.Command("sh", "-c", "while :; do :; done")
	if err := spin.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { spin.Process.Kill(); spin.Wait() })
	if err := g.Add(spin.Process.Pid); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	st, err := g.Stat()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %+v", m.Version(), st)
	if st.Usage <= 0 || st.Periods == 0 || st.Throttled == 0 {
		t.Errorf("a busy loop at 1 ms per 10 ms: %+v, want CPU accounted and periods throttled", st)
	}
	dirs := append(g.dirs(), m.v2, m.cpu, m.acct, m.cpuset)
	if err := m.Close(); err != nil { // the loop is still in the group
		t.Fatal(err)
	}
	closed = true
	for _, d := range dirs {
		if _, err := os.Stat(d); d != "" && err == nil {
			t.Errorf("%s left behind", d)
		}
	}
}
