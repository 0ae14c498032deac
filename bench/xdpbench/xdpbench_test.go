package xdpbench

import (
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// The statistics' own cost is measured, positive, and well under what
// they charge a real program (the demux's runs hundreds of ns here).
func TestStatsCost(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("BPF statistics and loading programs need root")
	}
	on, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		t.Skipf("BPF_ENABLE_STATS (Linux 5.8+): %v", err)
	}
	defer on.Close()
	ns, err := statsCost()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("an empty XDP program: %.1f ns a run by the statistics", ns)
	if ns <= 0 || ns > 1000 {
		t.Errorf("statistics charge an empty program %.1f ns a run", ns)
	}
}
