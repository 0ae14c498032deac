package tunlink

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// inNamespace runs fn on a thread of its own in a new network namespace,
// removed afterwards: the TUNs it makes never touch the host's.
func inNamespace(t *testing.T, fn func()) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: TUN devices in a network namespace")
	}
	name := fmt.Sprintf("cptl%d", os.Getpid())
	done := make(chan struct{})
	go func() { // the thread stays in the namespace and ends with the goroutine
		defer close(done)
		runtime.LockOSThread()
		ns, err := netns.NewNamed(name)
		if err != nil {
			t.Errorf("new namespace: %v", err)
			return
		}
		defer netns.DeleteNamed(name)
		defer ns.Close()
		fn()
	}()
	<-done
}

func closeAll(devs []tun.Device) {
	for _, d := range devs {
		d.Close()
	}
}

// TestCreateWaitsForABusyName: a TUN whose name another owner still holds
// is taken once that owner lets go (as a killed process's files close),
// within BusyWait; past it, Create says EBUSY.
func TestCreateWaitsForABusyName(t *testing.T) {
	inNamespace(t, func() {
		first, err := Create("cpt0", 1, 1420)
		if err != nil {
			t.Error(err)
			return
		}
		old := BusyWait
		defer func() { BusyWait = old }()
		BusyWait = 100 * time.Millisecond
		if devs, err := Create("cpt0", 1, 1420); !errors.Is(err, unix.EBUSY) {
			closeAll(devs)
			t.Errorf("a name held past BusyWait: %v, want EBUSY", err)
		}
		BusyWait = 5 * time.Second
		start := time.Now()
		time.AfterFunc(300*time.Millisecond, func() { closeAll(first) })
		second, err := Create("cpt0", 1, 1420)
		if err != nil {
			t.Errorf("after the first owner let go: %v", err)
			return
		}
		defer closeAll(second)
		if waited := time.Since(start); waited < 250*time.Millisecond {
			t.Errorf("Create returned after %v, before the first owner let go", waited)
		}
	})
}

// TestQueuesKeepFlowsWhole: a TUN of 4 queues; 32 UDP flows routed into
// it, 40 packets each. Every flow's packets come out of one queue, in
// order, and the flows are spread over the queues.
func TestQueuesKeepFlowsWhole(t *testing.T) {
	inNamespace(t, func() {
		const queues, flows, packets = 4, 32, 40
		devs, err := Create("cpt1", queues, 1420)
		if err != nil {
			t.Error(err)
			return
		}
		defer closeAll(devs)
		if len(devs) != queues {
			t.Errorf("%d devices for %d queues", len(devs), queues)
			return
		}
		if err := Up("cpt1", []netip.Prefix{netip.MustParsePrefix("10.77.0.0/24")}); err != nil {
			t.Error(err)
			return
		}
		// A source address for the flows.
		link, err := netlink.LinkByName("cpt1")
		if err == nil {
			err = netlink.AddrAdd(link, &netlink.Addr{IPNet: IPNet(netip.MustParsePrefix("10.77.1.1/32"))})
		}
		if err != nil {
			t.Error(err)
			return
		}
		type arrival struct {
			queue int
			seq   uint32
		}
		var mu sync.Mutex
		got := map[uint16][]arrival{} // by source port
		var wg sync.WaitGroup
		for qi, d := range devs {
			wg.Add(1)
			go func() { // reads the queue's fd: any thread will do
				defer wg.Done()
				bufs, sizes := [][]byte{make([]byte, 65535+16)}, []int{0}
				for {
					n, err := d.Read(bufs, sizes, 16)
					if err != nil {
						return
					}
					for i := range n {
						p := bufs[i][16 : 16+sizes[i]]
						if len(p) < 32 || p[0]>>4 != 4 || p[9] != unix.IPPROTO_UDP {
							continue
						}
						mu.Lock()
						sport := binary.BigEndian.Uint16(p[20:])
						got[sport] = append(got[sport], arrival{qi, binary.BigEndian.Uint32(p[28:])})
						mu.Unlock()
					}
				}
			}()
		}
		var conns []*net.UDPConn
		for range flows {
			c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(10, 77, 0, 9), Port: 7000})
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			conns = append(conns, c)
		}
		for seq := range uint32(packets) {
			for _, c := range conns {
				c.Write(binary.BigEndian.AppendUint32(nil, seq))
			}
		}
		deadline := time.Now().Add(2 * time.Second)
		for {
			mu.Lock()
			n := 0
			for _, a := range got {
				n += len(a)
			}
			mu.Unlock()
			if n >= flows*packets || time.Now().After(deadline) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		closeAll(devs)
		wg.Wait()
		used := map[int]bool{}
		for sport, as := range got {
			for i, a := range as {
				if a.queue != as[0].queue {
					t.Errorf("flow from port %d came out of queues %d and %d", sport, as[0].queue, a.queue)
					break
				}
				if a.seq != uint32(i) {
					t.Errorf("flow from port %d: packet %d came %dth", sport, a.seq, i)
					break
				}
			}
			used[as[0].queue] = true
		}
		if len(got) != flows || len(used) < 2 {
			t.Errorf("%d flows arrived, over %d queues; want %d over several", len(got), len(used), flows)
		}
		t.Logf("%d flows over %d of %d queues", len(got), len(used), queues)
	})
}
