package gateway

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/clusterpeer/clusterpeer/dataplane/geneveauth"
	"github.com/clusterpeer/clusterpeer/dataplane/packet"
	"github.com/clusterpeer/clusterpeer/dataplane/ratelog"
)

// Device is the tun.Device that WireGuard's engine sees in a gateway.
//
//	Read:  GENEVE from the demux (batched UDP, GRO) -> Ingress.Check -> inner
//	       packets; plus what the gateway itself routes into the TUN
//	       (Ingress.CheckLocal: its reflector's replies, its ICMP errors)
//	Write: decrypted packets from the peer -> the kernel TUN (GRO), which
//	       delivers them to the local network
//
// Each source runs its own goroutine that fills a batch from a bounded
// pool; Read copies inner packets into WireGuard's buffers. A source keeps
// its order, so a flow (always from one demux) is never reordered here.
type Device struct {
	kernel    tun.Device
	ingress   atomic.Pointer[Ingress] // replaced whole when the peer changes (SetProbe)
	mtu       int
	frameLen  int // the longest GENEVE datagram let in (slotLen)
	batchSize int

	free   chan *batch // bounded pool: a slow engine slows the sources
	ready  chan *batch
	cur    *batch
	events chan tun.Event
	evMu   sync.Mutex // orders event sends against closing events
	evShut bool
	done   chan struct{}
	close  sync.Once
	wg     sync.WaitGroup
	closer func() error // closes the GENEVE bind
	// holdUntil (unix ns; 0: none): until then Read drops what it is
	// handed, so that WireGuard has nothing to send (AwaitPeer).
	holdUntil atomic.Int64
	log       *slog.Logger
	errLog    ratelog.Limiter

	C DeviceCounters
}

// DeviceCounters are a gateway's packet counts.
type DeviceCounters struct {
	GenevePackets, GeneveBytes       atomic.Uint64 // accepted from the demux
	LocalPackets, LocalBytes         atomic.Uint64 // routed into the TUN by the gateway itself
	ReadErrors                       atomic.Uint64 // failed reads of the kernel TUN or GENEVE socket, survived
	DeliveredPackets, DeliveredBytes atomic.Uint64 // decrypted, written to the TUN
	Drops                            [NumDrops]atomic.Uint64
}

type batch struct {
	bufs   [][]byte // one frame each (slotLen)
	sizes  []int
	recv   [][]byte // a GRO source's coalesced reads (geneveSocket.receive)
	dgrams [][]byte // a GENEVE source's datagrams, aliasing bufs or recv
	srcs   []netip.AddrPort
	pkts   [][]byte // accepted packets, aliasing bufs or recv
	next   int
}

// kernelOffset is the headroom the kernel TUN needs for its virtio header.
const kernelOffset = 16

// slotLen is a batch buffer's size: one packet of the lane's MTU, read
// from the kernel TUN after its headroom, or one GENEVE frame (header
// and every option it may carry). Both sources read larger units into
// buffers of their own (a GSO super-packet, a GRO'd datagram) and split
// them into these; at 64 KiB a slot, a gateway held 32 MiB of batches,
// most of it never touched.
func slotLen(mtu int) int {
	return max(kernelOffset+mtu, packet.GeneveLen+packet.GeneveMaxOptions+mtu)
}

// newDevice wires the GENEVE receive functions (of an open socket) and
// the kernel TUN into one tun.Device. closeGeneve closes that socket.
func newDevice(kernel tun.Device, geneve []geneveReceive, closeGeneve func() error, ingress Ingress, mtu int, log *slog.Logger) *Device {
	sources := len(geneve) + 1
	batchSize := kernel.BatchSize()
	if batchSize < conn.IdealBatchSize {
		batchSize = conn.IdealBatchSize
	}
	d := &Device{
		kernel:    kernel,
		mtu:       mtu,
		frameLen:  slotLen(mtu),
		batchSize: batchSize,
		free:      make(chan *batch, sources+2),
		ready:     make(chan *batch, sources+2),
		events:    make(chan tun.Event, 4),
		done:      make(chan struct{}),
		closer:    closeGeneve,
		log:       log,
		errLog:    ratelog.Limiter{Every: 10 * time.Second},
	}
	for range sources + 2 {
		b := &batch{
			bufs:   make([][]byte, batchSize),
			sizes:  make([]int, batchSize),
			dgrams: make([][]byte, batchSize),
			srcs:   make([]netip.AddrPort, batchSize),
			pkts:   make([][]byte, 0, batchSize),
		}
		for i := range b.bufs {
			b.bufs[i] = make([]byte, slotLen(mtu))
		}
		d.free <- b
	}
	d.ingress.Store(&ingress)
	d.events <- tun.EventUp
	d.wg.Add(sources)
	for _, fn := range geneve {
		go d.readGeneve(fn)
	}
	go d.readKernel()
	go d.drainKernelEvents()
	return d
}

// hold makes Read drop what it is handed for d (0: stop now).
func (d *Device) hold(dur time.Duration) {
	if dur <= 0 {
		d.holdUntil.Store(0)
		return
	}
	d.holdUntil.Store(time.Now().Add(dur).UnixNano())
}

// SetProbe changes where the far demux's probes may go (the peer
// gateway's reflector): a new peer took the lane's other end.
func (d *Device) SetProbe(ap netip.AddrPort) {
	in := *d.ingress.Load()
	in.Probe = ap
	d.ingress.Store(&in)
}

// SetAuth changes whose sealed frames enter (a joining gateway learns its
// lane, and so its keys, after it started).
func (d *Device) SetAuth(o *geneveauth.Opener) {
	in := *d.ingress.Load()
	in.Auth = o
	d.ingress.Store(&in)
}

func (d *Device) take() (*batch, bool) {
	select {
	case b := <-d.free:
		b.pkts, b.next = b.pkts[:0], 0
		return b, true
	case <-d.done:
		return nil, false
	}
}

func (d *Device) readGeneve(fn geneveReceive) {
	defer d.wg.Done()
	for {
		b, ok := d.take()
		if !ok {
			return
		}
		n, err := fn(b)
		var bytes uint64
		in := d.ingress.Load() // once per batch
		for i, dgram := range b.dgrams[:n] {
			b.dgrams[i] = nil
			if dgram == nil || len(dgram) > d.frameLen {
				d.C.Drops[DropOversize].Add(1)
				continue
			}
			if len(dgram) == 0 {
				continue
			}
			inner, drop := in.Check(b.srcs[i].Addr(), dgram)
			if drop != DropNone {
				d.C.Drops[drop].Add(1)
				continue
			}
			bytes += uint64(len(inner))
			b.pkts = append(b.pkts, inner)
		}
		d.C.GenevePackets.Add(uint64(len(b.pkts)))
		d.C.GeneveBytes.Add(bytes)
		d.hand(b)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Transient socket errors (ICMP-induced ECONNREFUSED and the
			// like) must not stop the lane, nor spin it.
			d.readError("geneve", err, n)
		}
	}
}

// readError counts and logs (throttled) a failed read that the lane
// survives, and keeps a persistent failure from spinning a core.
func (d *Device) readError(source string, err error, n int) {
	d.C.ReadErrors.Add(1)
	d.errLog.Warn(d.log, "read failed; the lane carries on", "source", source, "err", err)
	if n == 0 {
		time.Sleep(time.Millisecond)
	}
}

func (d *Device) readKernel() {
	defer d.wg.Done()
	for {
		b, ok := d.take()
		if !ok {
			return
		}
		n, err := d.kernel.Read(b.bufs, b.sizes, kernelOffset)
		var bytes uint64
		in := d.ingress.Load()
		for i := range n {
			pkt := b.bufs[i][kernelOffset : kernelOffset+b.sizes[i]]
			if drop := in.CheckLocal(pkt); drop != DropNone {
				d.C.Drops[drop].Add(1)
				continue
			}
			b.pkts = append(b.pkts, pkt)
			bytes += uint64(len(pkt))
		}
		d.C.LocalPackets.Add(uint64(len(b.pkts)))
		d.C.LocalBytes.Add(bytes)
		d.hand(b)
		if err != nil {
			select {
			case <-d.done:
				return
			default:
			}
			if errors.Is(err, os.ErrClosed) {
				return
			}
			d.readError("tun", err, n)
		}
	}
}

// hand passes a filled batch to Read, or back to the pool when empty.
func (d *Device) hand(b *batch) {
	if len(b.pkts) == 0 {
		d.free <- b
		return
	}
	d.ready <- b // never blocks: ready holds every batch there is
}

// drainKernelEvents passes the kernel TUN's MTU changes on (its up/down
// events do not concern the lane) until the kernel TUN closes them.
func (d *Device) drainKernelEvents() {
	for e := range d.kernel.Events() {
		if e&tun.EventMTUUpdate == 0 {
			continue
		}
		d.evMu.Lock()
		if !d.evShut {
			select {
			case d.events <- tun.EventMTUUpdate:
			default:
			}
		}
		d.evMu.Unlock()
	}
}

// Read hands WireGuard the next packets to encrypt.
func (d *Device) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if d.cur == nil {
		select {
		case d.cur = <-d.ready:
		case <-d.done:
			return 0, os.ErrClosed
		}
	}
	b := d.cur
	if h := d.holdUntil.Load(); h != 0 {
		if time.Now().UnixNano() < h {
			d.C.Drops[DropAwaitingPeer].Add(uint64(len(b.pkts) - b.next))
			clear(b.pkts[b.next:])
			d.cur = nil
			d.free <- b
			return 0, nil
		}
		d.holdUntil.CompareAndSwap(h, 0)
	}
	n := 0
	for n < len(bufs) && b.next < len(b.pkts) {
		p := b.pkts[b.next]
		b.pkts[b.next] = nil
		b.next++
		sizes[n] = copy(bufs[n][offset:], p)
		n++
	}
	if b.next == len(b.pkts) {
		d.cur = nil
		d.free <- b
	}
	return n, nil
}

// Write delivers decrypted packets to the local network.
func (d *Device) Write(bufs [][]byte, offset int) (int, error) {
	var bytes uint64
	for _, b := range bufs {
		bytes += uint64(len(b) - offset)
	}
	n, err := d.kernel.Write(bufs, offset)
	d.C.DeliveredPackets.Add(uint64(len(bufs)))
	d.C.DeliveredBytes.Add(bytes)
	return n, err
}

func (d *Device) File() *os.File           { return nil }
func (d *Device) MTU() (int, error)        { return d.mtu, nil }
func (d *Device) Name() (string, error)    { return d.kernel.Name() }
func (d *Device) Events() <-chan tun.Event { return d.events }
func (d *Device) BatchSize() int           { return d.batchSize }

// Close stops the sources and closes the kernel TUN and the GENEVE bind.
func (d *Device) Close() error {
	var err error
	d.close.Do(func() {
		close(d.done)
		err = errors.Join(d.closer(), d.kernel.Close())
		d.wg.Wait()
		d.evMu.Lock()
		d.evShut = true
		close(d.events)
		d.evMu.Unlock()
	})
	return err
}
