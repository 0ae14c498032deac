//go:build linux

package xdp

import (
	"errors"
	"fmt"
	"testing"

	"github.com/cilium/ebpf"
)

// BenchmarkProgram is what the program costs a packet it sends, plain
// and sealed (security.geneve_auth), as the kernel times each run of
// BPF_PROG_TEST_RUN: one packet of an established (pinned) UDP flow
// per run, the frame fresh each time (with a repeat count the kernel
// would run it again on the frame it had just encapsulated). ns/op is
// the whole system call; prog-ns/pkt is the program alone, the figure
// to compare with the userspace demux's BenchmarkForward. The hand-over
// gate is clear, as a second after a lane change; "gate" runs with it
// set (the flow's bucket balanced: the packet is sent).
func BenchmarkProgram(b *testing.B) {
	for _, sealed := range []bool{false, true} {
		for _, size := range []int{64, 1400} {
			name := fmt.Sprintf("plain/%d", size)
			if sealed {
				name = fmt.Sprintf("sealed/%d", size)
			}
			b.Run(name, func(b *testing.B) { benchmarkProgram(b, sealed, size, false) })
		}
	}
	b.Run("plain/64/gate", func(b *testing.B) { benchmarkProgram(b, false, 64, true) })
}

func benchmarkProgram(b *testing.B, sealed bool, size int, gate bool) {
	cfg := Config{Key: testKey, Symmetric: true, Seal: sealed, Sender: testSender}
	p := loadTest(b, cfg)
	var seal *testSeal
	if sealed {
		seal = newTestSeal(p, 0x31, 1, 2, 3)
	}
	sel := newSelector(b, cfg, 1, 2, 3)
	if err := p.Publish(sel.Snapshot(), seal.targets(testTargets(1, 2, 3))); err != nil {
		b.Fatal(err)
	}
	if !gate {
		p.ledgerWord(handoverGate).Store(0)
	}
	frame := eth(udp4(b, 40000, 5201, size-28))
	if v, _ := run(b, p.DemuxProgram(), frame); v != xdpTX {
		b.Fatalf("verdict %d, want XDP_TX", v)
	}
	var prog time_
	for b.Loop() {
		v, d, err := p.DemuxProgram().Benchmark(frame, 1, nil)
		if errors.Is(err, ebpf.ErrNotSupported) {
			b.Skipf("kernel cannot test-run XDP programs: %v", err)
		}
		if err != nil || v != xdpTX {
			b.Fatalf("verdict %d, %v", v, err)
		}
		prog.add(d.Nanoseconds())
	}
	b.ReportMetric(prog.mean(), "prog-ns/pkt")
}

type time_ struct{ sum, n int64 }

func (t *time_) add(ns int64)  { t.sum += ns; t.n++ }
func (t *time_) mean() float64 { return float64(t.sum) / float64(max(t.n, 1)) }
