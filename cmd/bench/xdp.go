package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/clusterpeer/clusterpeer/bench/xdpbench"
)

// xdpCmd is `make bench-xdp`: every path Runs times, one progress line
// per figure on stderr, the medians and ratios on stdout.
func xdpCmd(args []string) error {
	fs := flag.NewFlagSet("bench xdp", flag.ContinueOnError)
	duration := fs.Duration("duration", 5*time.Second, "each figure's sending time (whole seconds, at most 1m)")
	runs := fs.Int("runs", 3, "runs of every path; the summary gives medians")
	bin := fs.String("bin", "bin", "directory with the demux and bench binaries")
	only := fs.String("paths", "", "comma-separated paths to measure, of "+strings.Join(xdpbench.Paths, ",")+" (default: all)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *duration < time.Second || *duration > time.Minute || *runs < 1 || *runs > 20 {
		return errors.New("--duration: 1s to 1m; --runs: 1 to 20")
	}
	var paths []string
	if *only != "" {
		paths = strings.Split(*only, ",")
		for _, p := range paths {
			if !slices.Contains(xdpbench.Paths, p) {
				return fmt.Errorf("--paths: %q: want some of %s", p, strings.Join(xdpbench.Paths, ","))
			}
		}
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces, XDP)")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	abs, _ := filepath.Abs(*bin)
	res, err := xdpbench.Run(ctx, xdpbench.Options{Bin: abs, Duration: *duration, Runs: *runs, Paths: paths, Progress: os.Stderr})
	if err != nil {
		return err
	}
	return xdpbench.Summarize(res, paths, os.Stdout)
}
