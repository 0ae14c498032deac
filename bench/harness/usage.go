package harness

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/clusterpeer/clusterpeer/bench/cgroup"
)

// snap is the CPU accounting at one instant: every group's and the host's.
type snap struct {
	at     time.Time
	groups map[string]cgroup.Stat
	host   hostCPU
}

func (h *harness) snapshot() (snap, error) {
	s := snap{at: time.Now(), groups: map[string]cgroup.Stat{}}
	for name, g := range h.groups {
		st, err := g.Stat()
		if err != nil {
			return s, err
		}
		s.groups[name] = st
	}
	var err error
	s.host, err = readHostCPU()
	return s, err
}

// component is what a process group is reported as: the gateways of one
// side together (gw-a3 is gw-a), everything else by its own name.
func component(group string) string {
	if strings.HasPrefix(group, "gw-") && len(group) > 4 {
		return group[:4]
	}
	return group
}

// usage is the CPUs each component used between two snapshots, the share
// of its CFS periods in which it was throttled, and how busy the host was.
func usage(a, b snap) (cpus, throttled map[string]float64, hostBusy float64) {
	wall := b.at.Sub(a.at).Seconds()
	cpus, throttled = map[string]float64{}, map[string]float64{}
	periods, thr := map[string]uint64{}, map[string]uint64{}
	for name, sb := range b.groups {
		sa, ok := a.groups[name]
		if !ok {
			continue
		}
		c := component(name)
		cpus[c] += (sb.Usage - sa.Usage).Seconds() / wall
		periods[c] += sb.Periods - sa.Periods
		thr[c] += sb.Throttled - sa.Throttled
	}
	for c, p := range periods {
		if p > 0 {
			throttled[c] = float64(thr[c]) / float64(p)
		}
	}
	total := b.host.total - a.host.total
	if total > 0 {
		hostBusy = 1 - float64(b.host.idle-a.host.idle)/float64(total)
	}
	return cpus, throttled, hostBusy
}

// hostCPU is /proc/stat's first line: all CPUs' time, and the idle part.
type hostCPU struct{ total, idle uint64 }

func readHostCPU() (hostCPU, error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return hostCPU{}, err
	}
	return parseProcStat(string(data))
}

// parseProcStat reads "cpu  user nice system idle iowait irq softirq steal
// ..."; idle and iowait are idle, guest time is already in user.
func parseProcStat(s string) (hostCPU, error) {
	line, _, _ := strings.Cut(s, "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return hostCPU{}, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var h hostCPU
	for i, v := range f[1:min(len(f), 9)] {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return hostCPU{}, fmt.Errorf("/proc/stat: %w", err)
		}
		h.total += n
		if i == 3 || i == 4 {
			h.idle += n
		}
	}
	return h, nil
}
