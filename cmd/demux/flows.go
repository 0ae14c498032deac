package main

// `demux which` and `demux flows`: where one flow goes and why, and which
// flows load each lane. Operators debugging one connection ask exactly
// this; the answers come from the running demux's own selector and pin
// tables (and the XDP program's), through the status socket.

import (
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/clusterpeer/clusterpeer/admin"
	"github.com/clusterpeer/clusterpeer/cmd/internal/cli"
	"github.com/clusterpeer/clusterpeer/dataplane/demux"
	"github.com/clusterpeer/clusterpeer/dataplane/xdp"
	"github.com/clusterpeer/clusterpeer/flowhash"
)

var protoNumbers = map[string]uint8{"tcp": flowhash.ProtoTCP, "udp": flowhash.ProtoUDP, "sctp": flowhash.ProtoSCTP,
	"icmp": flowhash.ProtoICMP, "icmpv6": flowhash.ProtoICMPv6}

// parseFlow reads a flow from which's query: src, dst, proto, and the
// ports (or, for ICMP echo, the identifier as both).
func parseFlow(q url.Values) (flowhash.Tuple, error) {
	var t flowhash.Tuple
	src, err := netip.ParseAddr(q.Get("src"))
	if err != nil {
		return t, fmt.Errorf("SRC %q: want an IP address", q.Get("src"))
	}
	dst, err := netip.ParseAddr(q.Get("dst"))
	if err != nil {
		return t, fmt.Errorf("DST %q: want an IP address", q.Get("dst"))
	}
	if src.Unmap().Is4() != dst.Unmap().Is4() {
		return t, fmt.Errorf("SRC %s and DST %s: one is IPv4, the other IPv6", src, dst)
	}
	name := strings.ToLower(q.Get("proto"))
	proto, ok := protoNumbers[name]
	if !ok {
		n, err := strconv.ParseUint(name, 10, 8)
		if err != nil {
			return t, fmt.Errorf("PROTO %q: want tcp, udp, sctp, icmp, icmpv6 or a protocol number", q.Get("proto"))
		}
		proto = uint8(n)
	}
	if proto == flowhash.ProtoICMP && !src.Unmap().Is4() {
		proto = flowhash.ProtoICMPv6
	}
	t.Src, t.Dst, t.Proto = src.As16(), dst.As16(), proto
	ports := proto == flowhash.ProtoTCP || proto == flowhash.ProtoUDP || proto == flowhash.ProtoSCTP
	sp, dp := q.Get("sport"), q.Get("dport")
	switch {
	case sp == "" && dp == "" && ports:
		return t, fmt.Errorf("%s: give SPORT and DPORT (the lane depends on them)", name)
	case sp == "" && dp == "":
		return t, nil
	}
	for _, p := range []struct {
		s   string
		out *uint16
	}{{sp, &t.SrcPort}, {dp, &t.DstPort}} {
		n, err := strconv.ParseUint(p.s, 10, 16)
		if err != nil {
			return t, fmt.Errorf("port %q: want 0-65535", p.s)
		}
		*p.out = uint16(n)
	}
	return t, nil
}

// flowReader is what the two commands read of a running demux.
type flowReader struct {
	sel   *flowhash.Selector
	fp    *fastPath // nil: no XDP program
	lanes func() []demux.LaneStatus
}

func (r flowReader) laneName(lanes []demux.LaneStatus, id flowhash.LaneID) string {
	for _, l := range lanes {
		if l.ID == id {
			return fmt.Sprintf("lane %d (%s, %s)", id, l.Gateway, l.State)
		}
	}
	return fmt.Sprintf("lane %d (not configured)", id)
}

// which is the "which" action: the lane a flow takes, what decided it
// (a pin of the XDP program's or the userspace demux's, or the table),
// and which path carries it.
func (r flowReader) which(q url.Values) (string, error) {
	t, err := parseFlow(q)
	if err != nil {
		return "", err
	}
	lanes := r.lanes()
	c := r.sel.Explain(&t)
	var xp xdp.FlowPin
	xdpPinned, xdpValid := false, false
	if r.fp != nil {
		xp, xdpPinned = r.fp.prog.Pin(c.Words)
		xdpValid = xdpPinned && r.sel.Snapshot().Gen(xp.Lane) == xp.Gen
	}
	var b strings.Builder
	fmt.Fprintf(&b, "flow %s (either direction)\n", t)
	switch {
	case c.Settling:
		fmt.Fprintf(&b, "  held: its lane %d just failed; its packets wait out the settle window, then take the table's lane without it\n", c.Table)
	case c.Lane == 0:
		b.WriteString("  no lane: none is up; its packets are dropped (no_lane)\n")
	case xdpValid:
		fmt.Fprintf(&b, "  %s: pinned by the XDP fast path (%d packets, the last %s ago)\n", r.laneName(lanes, xp.Lane), xp.Packets, xp.Idle)
	case c.Pinned:
		fmt.Fprintf(&b, "  %s: pinned by the userspace demux (its last packet %s ago)\n", r.laneName(lanes, c.Lane), c.PinIdle)
	default:
		fmt.Fprintf(&b, "  %s: by the table (no live pin: no packet of it lately); its next packet pins it there\n", r.laneName(lanes, c.Lane))
	}
	fmt.Fprintf(&b, "  table: lane %d", c.Table)
	if (xdpValid && xp.Lane != c.Table) || (c.Pinned && c.Lane != c.Table) {
		b.WriteString(" (a new flow would go there; the pin keeps this one where it started)")
	}
	b.WriteString("\n  userspace pin: ")
	switch {
	case c.Pinned:
		fmt.Fprintf(&b, "lane %d, last packet %s ago\n", c.Lane, c.PinIdle)
	case c.PinnedTo != 0:
		fmt.Fprintf(&b, "lane %d, void (that lane failed or left)\n", c.PinnedTo)
	default:
		b.WriteString("none\n")
	}
	if r.fp == nil {
		b.WriteString("  carried by: the userspace demux (no XDP program)")
		return b.String(), nil
	}
	b.WriteString("  XDP pin: ")
	switch {
	case xdpValid:
		fmt.Fprintf(&b, "lane %d, %d packets, last %s ago\n", xp.Lane, xp.Packets, xp.Idle)
	case xdpPinned:
		fmt.Fprintf(&b, "lane %d, void (that lane failed or left)\n", xp.Lane)
	default:
		b.WriteString("none\n")
	}
	st := r.fp.prog.Status()
	fmt.Fprintf(&b, "  carried by: the XDP fast path (%s on %s); what it passes up (fragments, IP options, over the lane MTU, TTL 1) the userspace demux sends alike", st.Mode, st.Interface)
	return b.String(), nil
}

// pinKey is a flow's pin to a lane in one of the two tables.
type pinKey struct {
	words flowhash.Words
	lane  flowhash.LaneID
	xdp   bool // the program's table, not userspace's
}

// flowRate is a flow's packets on a lane over flows' interval.
type flowRate struct {
	words         flowhash.Words
	lane          flowhash.LaneID
	packets       uint64
	xdp, userland bool // which paths carried some
}

// counts reads every live pin's packet count, in both tables.
func (r flowReader) counts() (map[pinKey]uint64, error) {
	out := map[pinKey]uint64{}
	r.sel.Pins().Each(r.sel.Pins().Now(), func(p flowhash.Pin) {
		out[pinKey{words: p.Words, lane: p.Lane}] = p.Packets
	})
	if r.fp == nil {
		return out, nil
	}
	err := r.fp.prog.EachPin(func(p xdp.FlowPin) {
		out[pinKey{words: p.Words, lane: p.Lane, xdp: true}] = p.Packets
	})
	return out, err
}

// flows is the "flows" action: the busiest pinned flows of each lane,
// by packets over an interval (both the userspace and the XDP tables).
func (r flowReader) flows(q url.Values) (string, error) {
	top, err := strconv.Atoi(q.Get("top"))
	if err != nil || top < 1 || top > 1000 {
		return "", fmt.Errorf("--top %q: want 1-1000", q.Get("top"))
	}
	interval, err := time.ParseDuration(q.Get("interval"))
	// Within the command's 30 s wait for the answer (admin.Do).
	if err != nil || interval < 100*time.Millisecond || interval > 20*time.Second {
		return "", fmt.Errorf("--interval %q: want 100ms to 20s", q.Get("interval"))
	}
	before, err := r.counts()
	if err != nil {
		return "", err
	}
	time.Sleep(interval)
	after, err := r.counts()
	if err != nil {
		return "", err
	}
	type flowLane struct {
		words flowhash.Words
		lane  flowhash.LaneID
	}
	byFlow := map[flowLane]*flowRate{}
	for k, n := range after {
		d := n // a pin made (or remade) during the interval counts whole
		if was, ok := before[k]; ok && was <= n {
			d = n - was
		}
		if d == 0 {
			continue
		}
		f := byFlow[flowLane{k.words, k.lane}]
		if f == nil {
			f = &flowRate{words: k.words, lane: k.lane}
			byFlow[flowLane{k.words, k.lane}] = f
		}
		f.packets += d
		f.xdp = f.xdp || k.xdp
		f.userland = f.userland || !k.xdp
	}
	perLane := map[flowhash.LaneID][]*flowRate{}
	for _, f := range byFlow {
		perLane[f.lane] = append(perLane[f.lane], f)
	}
	lanes := r.lanes()
	var b strings.Builder
	fmt.Fprintf(&b, "busiest pinned flows per lane over %s (packets/s; fast path: XDP, userspace, or both)\n", interval)
	if len(perLane) == 0 {
		b.WriteString("  no pinned flow sent a packet in the interval\n")
	}
	for _, l := range lanes {
		fs := perLane[l.ID]
		if len(fs) == 0 {
			continue
		}
		sort.Slice(fs, func(i, j int) bool { return fs[i].packets > fs[j].packets })
		fmt.Fprintf(&b, "\n%s: %d active flows\n", r.laneName(lanes, l.ID), len(fs))
		for _, f := range fs[:min(top, len(fs))] {
			path := map[[2]bool]string{{true, false}: "XDP", {false, true}: "userspace", {true, true}: "both"}[[2]bool{f.xdp, f.userland}]
			fmt.Fprintf(&b, "  %10.0f  %-9s %s\n", float64(f.packets)/interval.Seconds(), path, f.words.Tuple())
		}
	}
	return strings.TrimRight(b.String(), "\n"), nil
}

// whichCmd is `demux which SRC DST PROTO [SPORT DPORT]`.
func whichCmd(args []string) error {
	var rest []string
	f := cli.NodeFlags{Args: &rest}
	if err := f.Parse("which", args, false); err != nil {
		return err
	}
	if len(rest) != 3 && len(rest) != 5 {
		return errors.New("usage: demux which --config FILE --node NAME SRC DST PROTO [SPORT DPORT]")
	}
	q := url.Values{"src": {rest[0]}, "dst": {rest[1]}, "proto": {rest[2]}}
	if len(rest) == 5 {
		q.Set("sport", rest[3])
		q.Set("dport", rest[4])
	}
	if _, err := parseFlow(q); err != nil { // said here, before asking the demux
		return err
	}
	return ask(f, "which", q)
}

// flowsCmd is `demux flows --top N [--interval D]`.
func flowsCmd(args []string) error {
	var f cli.NodeFlags
	top, interval := 10, time.Second
	if err := f.ParseWith("flows", args, false, func(fs *flag.FlagSet) {
		fs.IntVar(&top, "top", 10, "flows to list per lane")
		fs.DurationVar(&interval, "interval", time.Second, "how long to count their packets")
	}); err != nil {
		return err
	}
	return ask(f, "flows", url.Values{"top": {strconv.Itoa(top)}, "interval": {interval.String()}})
}

// ask sends a read-only action to the node's demux and prints its answer.
func ask(f cli.NodeFlags, name string, q url.Values) error {
	_, node, err := f.Load()
	if err != nil {
		return err
	}
	if node.Demux == nil {
		return fmt.Errorf("node %q is a gateway; %s is a demux command", f.Node, name)
	}
	msg, err := admin.Do(node.Demux.Status, name, q)
	if err != nil {
		return err
	}
	fmt.Println(msg)
	return nil
}
