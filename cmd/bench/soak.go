package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/clusterpeer/clusterpeer/bench/soak"
)

// soakCmd is `make soak`: progress on stderr, the summary line last on
// stdout; exits non-zero if anything grew or a packet was lost.
func soakCmd(args []string) error {
	fs := flag.NewFlagSet("bench soak", flag.ContinueOnError)
	var cfg soak.Config
	fs.DurationVar(&cfg.Duration, "duration", 10*time.Minute, "how long the load runs")
	fs.IntVar(&cfg.Flows, "flows", 100000, "concurrent flows")
	fs.DurationVar(&cfg.Period, "period", 4*time.Second, "each flow sends a packet this often")
	fs.DurationVar(&cfg.Churn, "churn", 5*time.Second, "every churn, a tenth of the flows end and as many start")
	fs.DurationVar(&cfg.WarmUp, "warm-up", 0, "growth is measured from its end (default: a fifth of --duration, at least 30s)")
	fs.DurationVar(&cfg.Drain, "drain", time.Minute, "every drain, demux-a drains the next lane for half of it (negative: none)")
	fs.DurationVar(&cfg.Reload, "reload", 45*time.Second, "every reload, every node gets SIGHUP (negative: none)")
	fs.StringVar(&cfg.XDP, "xdp", "native", "the demuxes' fast path: native, generic or off")
	bin := fs.String("bin", "bin", "directory with the demux and tunnel binaries")
	out := fs.String("json", "", "also write the result, every sample included, to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces, raw sockets)")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg.Bin, _ = filepath.Abs(*bin)
	work, err := os.MkdirTemp("", "clusterpeer-soak")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	cfg.Work, cfg.Prefix, cfg.Log = work, "cpsoak", os.Stderr
	res, err := soak.Run(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Printf("soak-detail: flows_total=%d sent=%d received=%d drains=%d reloads=%d worst_rss=%s worst_goroutines=%s worst_fds=%s\n",
		res.FlowsTotal, res.Sent, res.Received, res.Drains, res.Reloads, res.Worst["rss"], res.Worst["goroutines"], res.Worst["fds"])
	fmt.Println(res.Line())
	if *out != "" {
		b, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(*out, b, 0o644); err != nil {
			return err
		}
	}
	if p := res.Problems(); len(p) > 0 {
		return errors.New(strings.Join(p, "; "))
	}
	return nil
}
