// Command flows sends and receives sequence-numbered UDP flows at a fixed
// rate (bench/udpflows) and reports per flow the loss, the reordering and
// the longest gap between arrivals: a failover's blackout, measured from
// outside the data path.
//
//	flows recv --listen 10.2.0.10:7000 [--idle 1s] [--json out.json]   # on the receiving host
//	flows send --dst 10.2.0.10:7000 --flows 24 --rate 1000 --duration 5s
//
// recv ends once nothing arrived for --idle after the first datagram (or
// on SIGINT/SIGTERM) and prints one line per flow and a summary.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"time"

	"github.com/clusterpeer/clusterpeer/bench/udpflows"
	"github.com/clusterpeer/clusterpeer/cmd/internal/cli"
)

func main() {
	cli.Main("flows", "send and receive sequence-numbered UDP flows; report loss, reordering and gaps per flow", map[string]cli.Command{
		"send": {Usage: "send --dst IP:PORT [--flows N] [--rate PPS] [--duration D] [--size B]", Help: "send flows at a fixed rate", Run: send},
		"recv": {Usage: "recv --listen IP:PORT [--idle D] [--json FILE]", Help: "receive and report per flow", Run: recv},
	})
}

func send(args []string) error {
	fs := flag.NewFlagSet("send", flag.ContinueOnError)
	dst := fs.String("dst", "", "receiver address ip:port")
	flows := fs.Int("flows", 24, "number of flows (one source port each)")
	rate := fs.Int("rate", 1000, "packets per second per flow")
	dur := fs.Duration("duration", 5*time.Second, "how long to send")
	size := fs.Int("size", 64, "UDP payload bytes (at least 16)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ap, err := netip.ParseAddrPort(*dst)
	if err != nil {
		return fmt.Errorf("--dst %q: want ip:port", *dst)
	}
	if *flows < 1 || *flows > 4096 || *rate < 1 || *rate > 100000 || *dur <= 0 || *dur > time.Hour {
		return errors.New("want 1..4096 flows, 1..100000 packets/s per flow, a duration up to 1h")
	}
	interval := time.Second / time.Duration(*rate)
	s, err := udpflows.NewSender(udpflows.SendConfig{Dst: ap, Flows: *flows, Packets: int(*dur / interval), Size: *size, Interval: interval})
	if err != nil {
		return err
	}
	defer s.Close()
	ctx, stop := cli.SignalContext()
	defer stop()
	if err := s.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	fmt.Printf("sent %d flows x %d packets to %s\n", *flows, int(*dur/interval), ap)
	return nil
}

func recv(args []string) error {
	fs := flag.NewFlagSet("recv", flag.ContinueOnError)
	listen := fs.String("listen", "", "address to receive on, ip:port")
	idle := fs.Duration("idle", time.Second, "stop after this long without a datagram")
	out := fs.String("json", "", "write every flow's result to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ap, err := netip.ParseAddrPort(*listen)
	if err != nil {
		return fmt.Errorf("--listen %q: want ip:port", *listen)
	}
	r, err := udpflows.Listen(ap)
	if err != nil {
		return err
	}
	ctx, stop := cli.SignalContext()
	defer stop()
	r.Run(ctx, *idle)
	res := r.Results()
	if *out != "" {
		b, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(*out, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	var lost, ooo uint64
	var gaps []time.Duration
	for _, f := range res {
		fmt.Printf("flow %3d from %-22s received %7d  lost %5d  out of order %4d  longest gap %8.2f ms\n",
			f.Flow, f.From, f.Received, f.Lost, f.OutOfOrder, float64(f.LongestGap)/1e6)
		lost += f.Lost
		ooo += f.OutOfOrder
		gaps = append(gaps, f.LongestGap)
	}
	if len(gaps) == 0 {
		return errors.New("nothing received")
	}
	slices.Sort(gaps)
	fmt.Printf("flows=%d lost=%d reordered=%d longest_gap_median_ms=%.2f longest_gap_max_ms=%.2f\n",
		len(res), lost, ooo, float64(gaps[len(gaps)/2])/1e6, float64(gaps[len(gaps)-1])/1e6)
	return nil
}
