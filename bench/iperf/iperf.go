// Package iperf runs iperf3 clients in network namespaces and reads their
// JSON reports (-J): the arguments for a TCP or UDP test go in, the
// delivered throughput, retransmits, loss and iperf3's own CPU use come
// out. iperf3 reports failures inside its JSON ("error"), which become Go
// errors here, so a run that did not measure never reads as a zero.
package iperf

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"time"
)

// Test is one iperf3 client run.
type Test struct {
	Server   string        // address of the iperf3 server
	Port     int           // 0: iperf3's default, 5201
	UDP      bool          // UDP at Rate instead of TCP
	Streams  int           // -P
	Duration time.Duration // -t, whole seconds
	Rate     uint64        // UDP: bits per second over all streams
	Length   int           // UDP datagram payload (-l); 0: 1200
	Bidir    bool          // both directions at once (--bidir); Rate is then over both
}

// Args are the iperf3 client arguments for t, JSON output included.
func (t Test) Args() []string {
	secs := max(1, int(t.Duration.Round(time.Second)/time.Second))
	a := []string{"-c", t.Server, "-J", "-t", strconv.Itoa(secs), "-P", strconv.Itoa(max(1, t.Streams)), "--connect-timeout", "3000"}
	if t.Port != 0 {
		a = append(a, "-p", strconv.Itoa(t.Port))
	}
	ways := uint64(1)
	if t.Bidir {
		a = append(a, "--bidir")
		ways = 2
	}
	if t.UDP {
		l := t.Length
		if l == 0 {
			l = 1200
		}
		// -b is per stream and, with --bidir, per direction.
		a = append(a, "-u", "-b", strconv.FormatUint(t.Rate/uint64(max(1, t.Streams))/ways, 10), "-l", strconv.Itoa(l))
	}
	return a
}

// Result is what one run measured.
type Result struct {
	Seconds      float64 `json:"seconds"`
	Bps          float64 `json:"bps"`                   // delivered to the receiver (with --bidir: both receivers)
	SentBps      float64 `json:"sent_bps"`              // offered by the sender (with --bidir: both senders)
	ReverseBps   float64 `json:"reverse_bps,omitempty"` // with --bidir, the part of Bps the server sent
	Retransmits  int64   `json:"retransmits,omitempty"`
	LostPercent  float64 `json:"lost_percent,omitempty"`
	JitterMs     float64 `json:"jitter_ms,omitempty"`
	ClientCPUPct float64 `json:"client_cpu_pct"` // iperf3's own view, host_total
	ServerCPUPct float64 `json:"server_cpu_pct"` // remote_total
}

type report struct {
	Start struct {
		Version string `json:"version"`
	} `json:"start"`
	End struct {
		Sum         *summary `json:"sum"` // UDP: the receiver's loss and jitter
		SumSent     *summary `json:"sum_sent"`
		SumReceived *summary `json:"sum_received"`
		// With --bidir, the same for what the server sent.
		SumReverse         *summary `json:"sum_bidir_reverse"`
		SumSentReverse     *summary `json:"sum_sent_bidir_reverse"`
		SumReceivedReverse *summary `json:"sum_received_bidir_reverse"`
		CPU                struct {
			HostTotal   float64 `json:"host_total"`
			RemoteTotal float64 `json:"remote_total"`
		} `json:"cpu_utilization_percent"`
	} `json:"end"`
	Error string `json:"error"`
}

type summary struct {
	Seconds     float64 `json:"seconds"`
	Bytes       float64 `json:"bytes"`
	Bps         float64 `json:"bits_per_second"`
	Retransmits int64   `json:"retransmits"`
	JitterMs    float64 `json:"jitter_ms"`
	LostPackets float64 `json:"lost_packets"`
	Packets     float64 `json:"packets"`
	LostPercent float64 `json:"lost_percent"`
}

// Parse reads an iperf3 -J report.
func Parse(data []byte) (Result, error) {
	var r report
	if err := json.Unmarshal(data, &r); err != nil {
		return Result{}, fmt.Errorf("iperf3 report: %w", err)
	}
	if r.Error != "" {
		return Result{}, fmt.Errorf("iperf3: %s", r.Error)
	}
	e := r.End
	if e.SumSent == nil || e.SumReceived == nil {
		return Result{}, errors.New("iperf3 report: no end.sum_sent/sum_received (did the test run?)")
	}
	res := Result{
		Seconds: e.SumReceived.Seconds, Bps: e.SumReceived.Bps, SentBps: e.SumSent.Bps,
		Retransmits: e.SumSent.Retransmits, ClientCPUPct: e.CPU.HostTotal, ServerCPUPct: e.CPU.RemoteTotal,
	}
	if e.Sum != nil && e.Sum.Packets > 0 { // UDP
		// iperf3 3.12 reports the receiver's rate as the bytes sent; what
		// arrived is the share of datagrams not lost.
		res.LostPercent = e.Sum.LostPercent
		res.JitterMs = e.Sum.JitterMs
		res.Bps = e.Sum.Bps * (e.Sum.Packets - e.Sum.LostPackets) / e.Sum.Packets
	}
	if e.SumReceivedReverse != nil && e.SumSentReverse != nil { // --bidir
		res.ReverseBps = e.SumReceivedReverse.Bps
		res.SentBps += e.SumSentReverse.Bps
		res.Retransmits += e.SumSentReverse.Retransmits
		if f, r := e.Sum, e.SumReverse; f != nil && r != nil && f.Packets > 0 && r.Packets > 0 { // UDP
			res.ReverseBps = r.Bps * (r.Packets - r.LostPackets) / r.Packets
			res.LostPercent = 100 * (f.LostPackets + r.LostPackets) / (f.Packets + r.Packets)
			res.JitterMs = max(f.JitterMs, r.JitterMs)
		}
		res.Bps += res.ReverseBps
	}
	if !(res.Seconds > 0) {
		return Result{}, errors.New("iperf3 report: the test lasted 0 seconds")
	}
	return res, nil
}

// Run runs the client as `ip netns exec ns iperf3 ...`; started, if not
// nil, gets the PID as soon as the process exists (to put it in a cgroup).
// The run is bounded by its duration plus 15 s.
func Run(ctx context.Context, ns string, t Test, started func(pid int)) (Result, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, t.Duration+15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, "iperf3"}, t.Args()...)...)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Start(); err != nil {
		return Result{}, nil, fmt.Errorf("iperf3: %w", err)
	}
	if started != nil {
		started(cmd.Process.Pid)
	}
	werr := cmd.Wait()
	res, err := Parse(out.Bytes())
	switch {
	case err == nil:
		return res, out.Bytes(), nil
	case ctx.Err() != nil:
		return Result{}, out.Bytes(), fmt.Errorf("iperf3 to %s did not finish in %v (stderr: %q; stdout ends %q)", t.Server,
			t.Duration+15*time.Second, tail(stderr.Bytes(), 200), tail(out.Bytes(), 300))
	case werr != nil && out.Len() == 0:
		return Result{}, nil, fmt.Errorf("iperf3: %v: %s", werr, bytes.TrimSpace(stderr.Bytes()))
	}
	return Result{}, out.Bytes(), err
}

func tail(b []byte, n int) []byte {
	b = bytes.TrimSpace(b)
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
