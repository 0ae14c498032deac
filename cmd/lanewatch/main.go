// Command lanewatch reports which lane carried each flow arriving on an
// interface, by the delivering gateway's source MAC (see bench/lanewatch).
//
//	lanewatch --iface lan0 --lane 1=02:..:01 --lane 2=02:..:02 [--duration 10s] [--json out.json]
//
// It runs until the duration ends or SIGINT/SIGTERM, then prints one line
// per lane and whether any flow was split between lanes.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/clusterpeer/clusterpeer/bench/lanewatch"
	"github.com/clusterpeer/clusterpeer/cmd/internal/cli"
)

type laneFlags map[string]int

func (l laneFlags) String() string { return fmt.Sprint(map[string]int(l)) }
func (l laneFlags) Set(s string) error {
	id, mac, ok := strings.Cut(s, "=")
	n, err := strconv.Atoi(id)
	if !ok || err != nil || n < 1 {
		return fmt.Errorf("want LANE=MAC, e.g. 1=02:00:00:00:00:01")
	}
	l[mac] = n
	return nil
}

func main() {
	lanes := laneFlags{}
	iface := flag.String("iface", "lan0", "interface to capture on (in this network namespace)")
	dur := flag.Duration("duration", 0, "stop after this long (0: until SIGINT/SIGTERM)")
	out := flag.String("json", "", "write the full report (every flow) to this file")
	ready := flag.String("ready", "", "create this file once capturing")
	flag.Var(lanes, "lane", "LANE=MAC of the gateway that delivers that lane (repeat)")
	flag.Parse()
	if err := run(*iface, lanes, *dur, *out, *ready); err != nil {
		fmt.Fprintln(os.Stderr, "lanewatch:", err)
		os.Exit(1)
	}
}

func run(iface string, lanes laneFlags, dur time.Duration, out, ready string) error {
	if len(lanes) == 0 {
		return fmt.Errorf("no --lane given")
	}
	w, err := lanewatch.Open(iface, lanes)
	if err != nil {
		return err
	}
	ctx, stop := cli.SignalContext()
	defer stop()
	if dur > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, dur)
		defer cancel()
	}
	if ready != "" {
		os.WriteFile(ready, nil, 0o644)
	}
	w.Run(ctx)
	r := w.Report()
	if out != "" {
		b, _ := json.MarshalIndent(r, "", "  ")
		if err := os.WriteFile(out, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	ids := make([]int, 0, len(r.Lanes))
	for id := range r.Lanes {
		ids = append(ids, id)
	}
	sort.Ints(ids)
	for _, id := range ids {
		l := r.Lanes[id]
		fmt.Printf("lane %d: %3d flows  %8d packets  %10s\n", id, l.Flows, l.Packets, cli.HumanBytes(l.Bytes))
	}
	if r.SplitFlows == 0 {
		fmt.Printf("every one of %d flows stayed on one lane\n", len(r.Flows))
	} else {
		fmt.Printf("%d of %d flows were split between lanes\n", r.SplitFlows, len(r.Flows))
	}
	return nil
}
