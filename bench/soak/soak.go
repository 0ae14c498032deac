// Package soak runs a peering for a long time under churning load and
// watches its processes for growth. What flows through it: a peering in
// namespaces (bench/topology); UDP flows from host-a to host-b, crafted
// on a raw socket so that 100,000 of them (each its own source address
// and port) cost one socket, a tenth of them ending and as many new ones
// starting every few seconds; lanes drained and restored and every node
// reloaded on a schedule; out come each node's memory, goroutines and
// descriptors over time, and every flow's packets as host-b counted them.
//
// A drain here always ends (undrain) before its deadline, so no pinned
// flow is moved: nothing the soak does may lose a packet, and any loss
// counts against the peering.
package soak

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/clusterpeer/clusterpeer/admin"
	"github.com/clusterpeer/clusterpeer/bench/topology"
	"github.com/clusterpeer/clusterpeer/config"
	"github.com/clusterpeer/clusterpeer/dataplane/packet"
)

// Config is a soak run.
type Config struct {
	Bin, Work, Prefix string
	XDP               string        // the demuxes' fast path: native, generic or off
	Lanes             int           // gateway pairs (default 3)
	Duration          time.Duration // of the load
	Flows             int           // concurrent flows
	Period            time.Duration // each flow sends a packet this often (default 4 s)
	Churn             time.Duration // every Churn a tenth of the flows end and as many start (default 5 s)
	// WarmUp is the least warm-up (default a fifth of Duration, at least
	// 30 s); a node's own lasts until it has also collected its garbage
	// twice under the load (see Result.growth).
	WarmUp time.Duration
	Sample time.Duration // how often the nodes are sampled (default 10 s)
	Drain  time.Duration // every Drain, demux-a drains the next lane for half of it (default 60 s; <0: none)
	Reload time.Duration // every Reload, every node reloads (default 45 s; <0: none)
	Log    io.Writer     // progress lines; nil: none
}

func (c *Config) defaults() error {
	if c.Lanes == 0 {
		c.Lanes = 3
	}
	if c.Period == 0 {
		c.Period = 4 * time.Second
	}
	if c.Churn == 0 {
		c.Churn = 5 * time.Second
	}
	if c.WarmUp == 0 {
		c.WarmUp = max(c.Duration/5, 30*time.Second)
	}
	if c.Sample == 0 {
		c.Sample = 10 * time.Second
	}
	if c.Drain == 0 {
		c.Drain = time.Minute
	}
	if c.Reload == 0 {
		c.Reload = 45 * time.Second
	}
	if c.Log == nil {
		c.Log = io.Discard
	}
	switch {
	case c.Flows < 10 || c.Flows > 1_000_000:
		return fmt.Errorf("soak: flows %d: want 10 to 1,000,000", c.Flows)
	case c.Duration < c.WarmUp+3*c.Sample:
		return fmt.Errorf("soak: duration %s: want the warm-up (%s) and three samples (%s) at least", c.Duration, c.WarmUp, 3*c.Sample)
	case c.Period < time.Millisecond:
		return fmt.Errorf("soak: period %s: want 1 ms or more", c.Period)
	}
	return nil
}

// Sample is one node's resources at one moment.
type Sample struct {
	At         time.Duration `json:"at"`
	RSS        uint64        `json:"rss_bytes"`
	HeapInuse  uint64        `json:"heap_inuse_bytes"` // Go's heap in use: what RSS holds for the program, not the allocator
	Goroutines int           `json:"goroutines"`
	FDs        int           `json:"fds"`
	GCs        uint64        `json:"gc_cycles"` // garbage collections since the process started
}

// Result is what a soak measured.
type Result struct {
	Minutes    float64 `json:"minutes"`
	Flows      int     `json:"flows"`       // concurrent
	FlowsTotal int     `json:"flows_total"` // that ever ran
	Sent       uint64  `json:"sent"`
	Received   uint64  `json:"received"`
	Lost       uint64  `json:"lost"` // below each flow's highest sequence, never arrived
	Drains     int     `json:"drains"`
	Reloads    int     `json:"reloads"`
	// Growth after warm-up: the median of the last three samples against
	// the median of the first three after warm-up, the largest of any
	// node (and which).
	WarmedUp        map[string]time.Duration `json:"warmed_up"` // node -> when its warm-up ended
	RSSGrowthPct    float64                  `json:"rss_growth_pct"`
	GoroutineGrowth int                      `json:"goroutine_growth"`
	FDGrowth        int                      `json:"fd_growth"`
	Worst           map[string]string        `json:"worst"` // measure -> node
	Samples         map[string][]Sample      `json:"samples"`
}

// Line is the summary line `make soak` prints.
func (r Result) Line() string {
	return fmt.Sprintf("soak: minutes=%.1f flows=%d rss_growth_pct=%.1f goroutine_growth=%d fd_growth=%d lost=%d",
		r.Minutes, r.Flows, r.RSSGrowthPct, r.GoroutineGrowth, r.FDGrowth, r.Lost)
}

// Problems are the ways r falls short of what a soak must show.
func (r Result) Problems() []string {
	var p []string
	if r.Lost > 0 {
		p = append(p, fmt.Sprintf("%d packets lost", r.Lost))
	}
	if r.RSSGrowthPct > 10 {
		p = append(p, fmt.Sprintf("%s's memory grew %.1f%% after warm-up", r.Worst["rss"], r.RSSGrowthPct))
	}
	if r.GoroutineGrowth > 0 {
		p = append(p, fmt.Sprintf("%s has %d more goroutines than after warm-up", r.Worst["goroutines"], r.GoroutineGrowth))
	}
	if r.FDGrowth > 0 {
		p = append(p, fmt.Sprintf("%s has %d more descriptors than after warm-up", r.Worst["fds"], r.FDGrowth))
	}
	if r.Received == 0 {
		p = append(p, "nothing arrived")
	}
	return p
}

const (
	magic = 0x63705331 // "cpS1"
	port  = 7000
)

var dst = netip.MustParseAddr("10.2.0.10")

// flowSource is flow f's source: one of 12,500 addresses of network A
// outside its hosts' (10.1.200.1 on), 60,000 ports each, so that no two
// flows of a run share a 5-tuple.
func flowSource(f uint32) (netip.Addr, uint16) {
	a := f / 60000
	return netip.AddrFrom4([4]byte{10, 1, byte(200 + a%50), byte(1 + (a/50)%250)}), uint16(1024 + f%60000)
}

// Run builds the peering, soaks it and removes it.
func Run(ctx context.Context, cfg Config) (res Result, err error) {
	if err := cfg.defaults(); err != nil {
		return res, err
	}
	down := func() error { return topology.Down(cfg.Prefix, cfg.Work) }
	down() // an interrupted run's leftovers
	p, err := topology.Up(topology.Options{Prefix: cfg.Prefix, Lanes: cfg.Lanes, Bin: cfg.Bin, Work: cfg.Work, XDP: cfg.XDP,
		PinFlows: max(4*cfg.Flows, 1<<20)})
	if err != nil {
		return res, err
	}
	defer func() {
		p.Close()
		if derr := down(); derr != nil && err == nil {
			err = derr
		}
	}()
	nodes := append(p.Demuxes(), gateways(cfg.Lanes)...)
	fmt.Fprintf(cfg.Log, "soak: %d concurrent flows, a packet each every %s (%.0f packets/s), a tenth replaced every %s; %s, warm-up %s; nodes %s\n",
		cfg.Flows, cfg.Period, float64(cfg.Flows)/cfg.Period.Seconds(), cfg.Churn, cfg.Duration, cfg.WarmUp, strings.Join(nodes, " "))

	recv, err := listen(p)
	if err != nil {
		return res, err
	}
	defer recv.close()
	send, err := newSender(p, cfg)
	if err != nil {
		return res, err
	}
	defer send.close()

	runCtx, stop := context.WithTimeout(ctx, cfg.Duration)
	defer stop()
	received := make(chan struct{})
	go func() { recv.run(); close(received) }()
	sending := make(chan struct{})
	go func() { send.run(runCtx); close(sending) }()

	res.Samples = map[string][]Sample{}
	start := time.Now()
	sampleT, drainT, reloadT := time.NewTicker(cfg.Sample), ticker(cfg.Drain), ticker(cfg.Reload)
	defer sampleT.Stop()
	var undrain <-chan time.Time
	drained := 0
	demuxA := p.Socket("demux-a")
loop:
	for {
		select {
		case <-runCtx.Done():
			break loop
		case <-sampleT.C:
			at := time.Since(start)
			for _, n := range nodes {
				s, err := sample(p, n)
				if err != nil {
					return res, fmt.Errorf("soak: sample %s: %w", n, err)
				}
				s.At = at
				res.Samples[n] = append(res.Samples[n], s)
			}
			fmt.Fprintf(cfg.Log, "soak: %s  sent %d, received %d; demux-a rss %.1f MiB, %d goroutines, %d fds\n",
				at.Round(time.Second), send.sent.Load(), recv.received(), float64(last(res.Samples["demux-a"]).RSS)/(1<<20),
				last(res.Samples["demux-a"]).Goroutines, last(res.Samples["demux-a"]).FDs)
		case <-drainT:
			drained = drained%cfg.Lanes + 1
			// The deadline is past the undrain: no pinned flow is moved.
			if _, err := admin.Do(demuxA, "drain", url.Values{"lane": {strconv.Itoa(drained)}, "deadline": {(2 * cfg.Drain).String()}}); err != nil {
				return res, fmt.Errorf("soak: drain lane %d: %w", drained, err)
			}
			res.Drains++
			undrain = time.After(cfg.Drain / 2)
		case <-undrain:
			if _, err := admin.Do(demuxA, "undrain", url.Values{"lane": {strconv.Itoa(drained)}}); err != nil {
				return res, fmt.Errorf("soak: undrain lane %d: %w", drained, err)
			}
			undrain = nil
		case <-reloadT:
			for _, n := range nodes {
				pid, err := p.PID(n)
				if err == nil {
					err = syscall.Kill(pid, syscall.SIGHUP)
				}
				if err != nil {
					return res, fmt.Errorf("soak: reload %s: %w", n, err)
				}
			}
			res.Reloads++
		}
	}
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	<-sending
	time.Sleep(time.Second) // the last packets arrive
	recv.close()
	<-received
	res.Minutes = time.Since(start).Minutes()
	res.Flows, res.FlowsTotal, res.Sent = cfg.Flows, int(send.total()), send.sent.Load()
	res.Received, res.Lost = recv.result()
	res.growth(cfg.WarmUp)
	for _, n := range nodes {
		fmt.Fprintf(cfg.Log, "soak: %s warmed up at %s (%d collections by then)\n", n, res.WarmedUp[n].Round(time.Second), gcsAt(res.Samples[n], res.WarmedUp[n]))
	}
	return res, nil
}

// gcsAt is a node's collection count at the sample taken at at.
func gcsAt(s []Sample, at time.Duration) uint64 {
	if i := slices.IndexFunc(s, func(x Sample) bool { return x.At == at }); i >= 0 {
		return s[i].GCs
	}
	return 0
}

func gateways(lanes int) []string {
	var g []string
	for i := 1; i <= lanes; i++ {
		for _, s := range config.Sides {
			g = append(g, topology.GatewayName(s, i))
		}
	}
	return g
}

func ticker(every time.Duration) <-chan time.Time {
	if every < 0 {
		return nil
	}
	return time.NewTicker(every).C
}

func last(s []Sample) Sample {
	if len(s) == 0 {
		return Sample{}
	}
	return s[len(s)-1]
}

// growth compares, for each node, the last three samples with the first
// three after warm-up, and keeps the largest, each by the medians of
// the three: a leak raises a median, while a burst or a dip that one
// sample caught in passing (a reload restarting goroutines) does not.
//
// A node's warm-up lasts at least warmUp, and until it has collected its
// garbage twice since the first sample. Until its first collection under
// the load, a Go heap grows into fresh memory up to the collector's goal
// (twice the live heap), and resident memory with it; the goal that the
// first one sets reflects the load, and from the second on the heap
// reuses what it freed. A demux allocating little reaches that point in
// minutes, so a fixed warm-up counted the heap finding its size as growth.
// A node with fewer collections is judged from warmUp.
func (r *Result) growth(warmUp time.Duration) {
	r.Worst = map[string]string{}
	r.WarmedUp = map[string]time.Duration{}
	median := func(s []Sample, f func(Sample) float64) float64 {
		v := make([]float64, len(s))
		for i := range s {
			v[i] = f(s[i])
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	for n, s := range r.Samples {
		i := slices.IndexFunc(s, func(x Sample) bool { return x.At >= warmUp && x.GCs >= s[0].GCs+2 })
		if i < 0 || len(s)-i < 3 {
			i = slices.IndexFunc(s, func(x Sample) bool { return x.At >= warmUp })
		}
		if i < 0 || len(s)-i < 3 {
			continue
		}
		r.WarmedUp[n] = s[i].At
		base, end := s[i:min(i+3, len(s))], s[len(s)-3:]
		rss := func(x Sample) float64 { return float64(x.RSS) }
		if g := (median(end, rss) - median(base, rss)) / median(base, rss) * 100; g > r.RSSGrowthPct || r.Worst["rss"] == "" {
			r.RSSGrowthPct, r.Worst["rss"] = g, n
		}
		gor := func(x Sample) float64 { return float64(x.Goroutines) }
		if g := int(median(end, gor) - median(base, gor)); g > r.GoroutineGrowth || r.Worst["goroutines"] == "" {
			r.GoroutineGrowth, r.Worst["goroutines"] = g, n
		}
		fds := func(x Sample) float64 { return float64(x.FDs) }
		if g := int(median(end, fds) - median(base, fds)); g > r.FDGrowth || r.Worst["fds"] == "" {
			r.FDGrowth, r.Worst["fds"] = g, n
		}
	}
}

// sample reads a node's resident memory and descriptors from /proc and
// its goroutines from its own metrics.
func sample(p *topology.Peering, node string) (Sample, error) {
	pid, err := p.PID(node)
	if err != nil {
		return Sample{}, err
	}
	var s Sample
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			s.RSS = kb << 10
		}
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return s, err
	}
	s.FDs = len(fds)
	body, err := p.Metrics(nodeNS(node))
	if err != nil {
		return s, err
	}
	for _, l := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(l, "go_goroutines "); ok {
			s.Goroutines, _ = strconv.Atoi(strings.TrimSpace(v))
		}
		if v, ok := strings.CutPrefix(l, "go_gc_duration_seconds_count "); ok {
			s.GCs, _ = strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
		if v, ok := strings.CutPrefix(l, "go_memstats_heap_inuse_bytes "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			s.HeapInuse = uint64(f)
		}
	}
	return s, nil
}

// nodeNS is a node's namespace (without the prefix).
func nodeNS(node string) string {
	if d, ok := strings.CutPrefix(node, "demux-"); ok {
		return "d" + d
	}
	return "g" + strings.TrimPrefix(node, "gw-")
}

// sender crafts the flows' datagrams on a raw socket in host-a.
type sender struct {
	fd    int
	cfg   Config
	slots []slot // the concurrent flows; slot i holds flow i + k*Flows
	base  uint32 // flows replaced so far; the next to go is slot base%Flows
	sent  atomic.Uint64
}

type slot struct {
	flow uint32
	seq  uint64
}

func newSender(p *topology.Peering, cfg Config) (*sender, error) {
	s := &sender{cfg: cfg, slots: make([]slot, cfg.Flows)}
	for i := range s.slots {
		s.slots[i].flow = uint32(i)
	}
	err := p.InNS("ha", func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		s.fd = fd
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("soak: raw socket in host-a: %w", err)
	}
	return s, nil
}

func (s *sender) close() { unix.Close(s.fd) }

// total is how many flows have run.
func (s *sender) total() uint32 { return uint32(len(s.slots)) + s.base }

// run sends every slot's next packet once per Period, spread over it in
// 1 ms rounds, and replaces a tenth of the flows every Churn.
func (s *sender) run(ctx context.Context) {
	const round = time.Millisecond
	per := max(1, int(float64(len(s.slots))*round.Seconds()/s.cfg.Period.Seconds()))
	tick, churn := time.NewTicker(round), time.NewTicker(s.cfg.Churn)
	defer tick.Stop()
	defer churn.Stop()
	pkt := make([]byte, packet.IPv4MinLen+packet.UDPLen+16)
	to := &unix.SockaddrInet4{Addr: dst.As4()}
	next := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-churn.C:
			n := uint32(len(s.slots) / 10)
			for range n {
				i := s.base % uint32(len(s.slots))
				s.slots[i] = slot{flow: s.base + uint32(len(s.slots))}
				s.base++
			}
		case <-tick.C:
			for range per {
				sl := &s.slots[next]
				next = (next + 1) % len(s.slots)
				src, sport := flowSource(sl.flow)
				packet.PutIPv4(pkt, packet.IPv4Fields{TotalLen: len(pkt), Protocol: packet.ProtoUDP, Src: src, Dst: dst})
				packet.PutUDP(pkt[packet.IPv4MinLen:], sport, port, len(pkt)-packet.IPv4MinLen)
				body := pkt[packet.IPv4MinLen+packet.UDPLen:]
				binary.BigEndian.PutUint32(body[0:4], magic)
				binary.BigEndian.PutUint32(body[4:8], sl.flow)
				binary.BigEndian.PutUint64(body[8:16], sl.seq)
				sl.seq++
				if err := unix.Sendto(s.fd, pkt, 0, to); err == nil {
					s.sent.Add(1)
				}
			}
		}
	}
}

// receiver counts each flow's datagrams at host-b.
type receiver struct {
	conn *net.UDPConn
	mu   sync.Mutex
	got  []flowCount // by flow
	n    uint64
	once sync.Once
}

type flowCount struct {
	received, next uint64 // next: one past the highest sequence seen
}

func listen(p *topology.Peering) (*receiver, error) {
	r := &receiver{}
	err := p.InNS("hb", func() error {
		c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, port)))
		if err != nil {
			return err
		}
		r.conn = c
		raw, err := c.SyscallConn()
		if err != nil {
			return err
		}
		return raw.Control(func(fd uintptr) {
			// A receiver not scheduled for a few ms must not lose what it counts.
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20)
		})
	})
	if err != nil {
		return nil, fmt.Errorf("soak: listen in host-b: %w", err)
	}
	return r, nil
}

func (r *receiver) run() {
	buf := make([]byte, 2048)
	for {
		n, err := r.conn.Read(buf)
		if err != nil {
			return // closed
		}
		if n < 16 || binary.BigEndian.Uint32(buf[0:4]) != magic {
			continue
		}
		f, seq := binary.BigEndian.Uint32(buf[4:8]), binary.BigEndian.Uint64(buf[8:16])
		r.mu.Lock()
		if int(f) >= len(r.got) {
			r.got = append(r.got, make([]flowCount, int(f)+1-len(r.got)+1024)...)
		}
		c := &r.got[f]
		c.received++
		c.next = max(c.next, seq+1)
		r.n++
		r.mu.Unlock()
	}
}

func (r *receiver) received() uint64 { r.mu.Lock(); defer r.mu.Unlock(); return r.n }

func (r *receiver) close() { r.once.Do(func() { r.conn.Close() }) }

// result is what arrived, and what never did below each flow's highest
// sequence (a duplicate would hide a loss; none is expected).
func (r *receiver) result() (received, lost uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.got {
		received += c.received
		lost += c.next - min(c.next, c.received)
	}
	return received, lost
}
