package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/clusterpeer/clusterpeer/bench/xdpgen"
	"github.com/clusterpeer/clusterpeer/dataplane/xdp"
)

// blast sends UDP frames to the discard port out of one interface with
// the XDP live-frames generator for a while, and says how many it sent.
// bench-xdp runs it in its source namespace; the sink counts what arrived.
func blast(args []string) error {
	fs := flag.NewFlagSet("bench blast", flag.ContinueOnError)
	dev := fs.String("dev", "", "interface to send out of (required)")
	dstMAC := fs.String("dst-mac", "", "the next hop's MAC (required)")
	src := fs.String("src", "", "source IPv4 address (default: the interface's first)")
	dst := fs.String("dst", "", "destination IPv4 address (required)")
	size := fs.Int("size", 64, "IP packet size in bytes (28-9000)")
	flows := fs.Uint("flows", 256, "distinct UDP source ports, from --port-base")
	portBase := fs.Uint("port-base", 10000, "first UDP source port")
	duration := fs.Duration("duration", 5*time.Second, "how long to send (at most 10m)")
	rate := fs.Float64("rate", 0, "frames per second to offer, paced by the generator program (0: as many as one CPU generates)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *dev == "" || *dstMAC == "" || *dst == "" {
		return errors.New("bench blast: --dev, --dst-mac and --dst are required")
	}
	if *duration <= 0 || *duration > 10*time.Minute {
		return fmt.Errorf("bench blast: --duration %s: want more than 0 and at most 10m", *duration)
	}
	if *rate < 0 || *rate > 100e6 {
		return fmt.Errorf("bench blast: --rate %g: want 0 (as fast as it goes) up to 100e6 frames per second", *rate)
	}
	if *flows == 0 || *flows > 65535 || *portBase > 65535 {
		return fmt.Errorf("bench blast: --flows %d --port-base %d: want 1-65535 flows on ports up to 65535", *flows, *portBase)
	}
	if os.Geteuid() != 0 {
		return errors.New("bench blast: needs root (BPF_PROG_TEST_RUN)")
	}
	ifc, err := net.InterfaceByName(*dev)
	if err != nil {
		return fmt.Errorf("bench blast: --dev: %w", err)
	}
	f := xdpgen.Frame{SrcMAC: ifc.HardwareAddr, Size: *size}
	if f.DstMAC, err = net.ParseMAC(*dstMAC); err != nil {
		return fmt.Errorf("bench blast: --dst-mac: %w", err)
	}
	if f.Dst, err = netip.ParseAddr(*dst); err != nil {
		return fmt.Errorf("bench blast: --dst: %w", err)
	}
	if *src != "" {
		if f.Src, err = netip.ParseAddr(*src); err != nil {
			return fmt.Errorf("bench blast: --src: %w", err)
		}
	} else if f.Src, err = firstIPv4(ifc); err != nil {
		return fmt.Errorf("bench blast: %w", err)
	}
	frame, err := f.Bytes()
	if err != nil {
		return err
	}
	g, err := xdpgen.New(frame, ifc.Index, uint16(*portBase), uint16(*flows), *rate)
	if err != nil {
		return err
	}
	defer g.Close()
	// Batches of 64k frames take 10-50 ms here: the deadline is kept
	// within one batch. Paced, the program itself keeps the schedule and
	// most runs send nothing: a batch is then 1M runs (0.1-0.3 s).
	batch := uint32(1 << 16)
	if *rate > 0 {
		batch = 1 << 20
	}
	start := time.Now()
	for time.Since(start) < *duration {
		if err := g.Send(batch); err != nil {
			return err
		}
	}
	secs := time.Since(start).Seconds()
	sent, err := g.Sent()
	if err != nil {
		return fmt.Errorf("bench blast: read the sent count: %w", err)
	}
	fmt.Printf("blast: sent=%d seconds=%.3f mpps=%.3f size=%d flows=%d\n", sent, secs, float64(sent)/secs/1e6, *size, *flows)
	return nil
}

func firstIPv4(ifc *net.Interface) (netip.Addr, error) {
	as, err := ifc.Addrs()
	if err != nil {
		return netip.Addr{}, err
	}
	for _, a := range as {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP.To4()); ok {
				return ip, nil
			}
		}
	}
	return netip.Addr{}, fmt.Errorf("%s has no IPv4 address: give --src", ifc.Name)
}

// sink attaches (or with --off removes) the stand-in gateway's XDP
// program: GENEVE stripped, the generator's frames counted and dropped.
func sink(args []string) error {
	fs := flag.NewFlagSet("bench sink", flag.ContinueOnError)
	dev := fs.String("dev", "", "the stand-in gateway's interface (required)")
	off := fs.Bool("off", false, "remove it instead")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dev == "" {
		return errors.New("bench sink: --dev is required")
	}
	if *off {
		return xdp.DetachPass(*dev)
	}
	return xdpgen.AttachGeneveSink(*dev)
}
