package topology

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netnsDir is where named namespaces live (as `ip netns` names them).
const netnsDir = "/run/netns"

// Lab is a set of named network namespaces, PREFIX-NAME, and what links
// them. Its methods fail with the namespace and device in the message.
type Lab struct {
	Prefix  string
	handles map[string]*netlink.Handle
	fds     map[string]netns.NsHandle
}

// NewLab returns an empty lab whose namespaces are named prefix-*.
func NewLab(prefix string) *Lab {
	return &Lab{Prefix: prefix, handles: map[string]*netlink.Handle{}, fds: map[string]netns.NsHandle{}}
}

// NS is the full name of a namespace of the lab.
func (l *Lab) NS(name string) string { return l.Prefix + "-" + name }

// Add makes a namespace with loopback up and the sysctls given
// ("net/ipv4/ip_forward": "1"); a sysctl the kernel lacks is skipped when
// its value starts with "?".
func (l *Lab) Add(name string, sysctls map[string]string) error {
	full := l.NS(name)
	var h netns.NsHandle
	err := onThread(func() error {
		var err error
		h, err = netns.NewNamed(full)
		if err != nil {
			return err
		}
		return writeSysctls(sysctls)
	})
	if err != nil {
		return fmt.Errorf("namespace %s: %w", full, err)
	}
	l.fds[name] = h
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		return fmt.Errorf("namespace %s: netlink: %w", full, err)
	}
	l.handles[name] = nh
	return l.Up(name, "lo")
}

// onThread runs fn on a thread of its own, which ends with it: fn may
// switch that thread's namespace and leave it switched.
func onThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		errc <- fn()
	}()
	return <-errc
}

// InNS runs fn on a thread in namespace name (opened sockets stay there).
func (l *Lab) InNS(name string, fn func() error) error {
	return onThread(func() error {
		h, err := netns.GetFromName(l.NS(name))
		if err != nil {
			return err
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			return err
		}
		return fn()
	})
}

// writeSysctls writes /proc/sys/KEY on the calling thread, whose network
// namespace /proc/sys/net shows.
func writeSysctls(s map[string]string) error {
	for k, v := range s {
		optional := strings.HasPrefix(v, "?")
		err := os.WriteFile(filepath.Join("/proc/sys", k), []byte(strings.TrimPrefix(v, "?")), 0)
		if err != nil && !(optional && errors.Is(err, os.ErrNotExist)) {
			return fmt.Errorf("sysctl %s: %w", k, err)
		}
	}
	return nil
}

func (l *Lab) handle(name string) (*netlink.Handle, error) {
	if h, ok := l.handles[name]; ok {
		return h, nil
	}
	return nil, fmt.Errorf("namespace %s is not part of this lab", l.NS(name))
}

// Veth links namespace a's device ifA to b's ifB, both up.
func (l *Lab) Veth(a, ifA, b, ifB string) error {
	va, vb := l.fds[a], l.fds[b]
	link := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: ifA, Namespace: netlink.NsFd(va)},
		PeerName:  ifB, PeerNamespace: netlink.NsFd(vb),
	}
	if err := netlink.LinkAdd(link); err != nil {
		return fmt.Errorf("veth %s/%s-%s/%s: %w", l.NS(a), ifA, l.NS(b), ifB, err)
	}
	if err := l.Up(a, ifA); err != nil {
		return err
	}
	return l.Up(b, ifB)
}

// Bridge makes a bridge dev in ns, up.
func (l *Lab) Bridge(ns, dev string) error {
	h, err := l.handle(ns)
	if err != nil {
		return err
	}
	if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: dev}}); err != nil {
		return fmt.Errorf("%s: bridge %s: %w", l.NS(ns), dev, err)
	}
	return l.Up(ns, dev)
}

// Enslave puts ns's dev into its bridge br.
func (l *Lab) Enslave(ns, dev, br string) error {
	h, err := l.handle(ns)
	if err != nil {
		return err
	}
	d, err := h.LinkByName(dev)
	if err == nil {
		var b netlink.Link
		if b, err = h.LinkByName(br); err == nil {
			err = h.LinkSetMaster(d, b)
		}
	}
	if err != nil {
		return fmt.Errorf("%s: %s into bridge %s: %w", l.NS(ns), dev, br, err)
	}
	return nil
}

// Up sets ns's dev up.
func (l *Lab) Up(ns, dev string) error {
	h, err := l.handle(ns)
	if err != nil {
		return err
	}
	d, err := h.LinkByName(dev)
	if err == nil {
		err = h.LinkSetUp(d)
	}
	if err != nil {
		return fmt.Errorf("%s: %s up: %w", l.NS(ns), dev, err)
	}
	return nil
}

// MTU sets ns's dev's MTU.
func (l *Lab) MTU(ns, dev string, mtu int) error {
	h, err := l.handle(ns)
	if err != nil {
		return err
	}
	d, err := h.LinkByName(dev)
	if err == nil {
		err = h.LinkSetMTU(d, mtu)
	}
	if err != nil {
		return fmt.Errorf("%s: %s mtu %d: %w", l.NS(ns), dev, mtu, err)
	}
	return nil
}

// Addr adds addresses ("10.1.0.2/24") to ns's dev; IPv6 ones skip
// duplicate address detection, so they work at once.
func (l *Lab) Addr(ns, dev string, addrs ...string) error {
	h, err := l.handle(ns)
	if err != nil {
		return err
	}
	d, err := h.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("%s: %s: %w", l.NS(ns), dev, err)
	}
	for _, s := range addrs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return err
		}
		a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := h.AddrAdd(d, a); err != nil {
			return fmt.Errorf("%s: address %s on %s: %w", l.NS(ns), s, dev, err)
		}
	}
	return nil
}

// HasAddr says whether ns's dev holds address a.
func (l *Lab) HasAddr(ns, dev string, a netip.Addr) bool {
	h, err := l.handle(ns)
	if err != nil {
		return false
	}
	d, err := h.LinkByName(dev)
	if err != nil {
		return false
	}
	addrs, _ := h.AddrList(d, netlink.FAMILY_ALL)
	for _, x := range addrs {
		if ip, ok := netip.AddrFromSlice(x.IP); ok && ip.Unmap() == a {
			return true
		}
	}
	return false
}

// Route is a route: to Dst ("10.2.0.0/16") via the next hop Via, or out
// of the device Dev when Via is empty; from the source address Src if set.
type Route struct{ Dst, Via, Dev, Src string }

// Route adds r in ns, replacing a route to its destination.
func (l *Lab) Route(ns string, r Route) error {
	nr, err := l.route(ns, r)
	if err == nil {
		err = l.handles[ns].RouteReplace(nr)
	}
	if err != nil {
		return fmt.Errorf("%s: route %+v: %w", l.NS(ns), r, err)
	}
	return nil
}

// RouteDel removes r from ns.
func (l *Lab) RouteDel(ns string, r Route) error {
	nr, err := l.route(ns, r)
	if err == nil {
		err = l.handles[ns].RouteDel(nr)
	}
	if err != nil {
		return fmt.Errorf("%s: delete route %+v: %w", l.NS(ns), r, err)
	}
	return nil
}

func (l *Lab) route(ns string, r Route) (*netlink.Route, error) {
	h, err := l.handle(ns)
	if err != nil {
		return nil, err
	}
	p, err := netip.ParsePrefix(r.Dst)
	if err != nil {
		return nil, err
	}
	nr := &netlink.Route{Dst: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	for _, a := range []struct {
		s  string
		ip *net.IP
	}{{r.Via, &nr.Gw}, {r.Src, &nr.Src}} {
		if a.s == "" {
			continue
		}
		ip, err := netip.ParseAddr(a.s)
		if err != nil {
			return nil, err
		}
		*a.ip = ip.AsSlice()
	}
	if r.Dev != "" {
		d, err := h.LinkByName(r.Dev)
		if err != nil {
			return nil, err
		}
		nr.LinkIndex = d.Attrs().Index
	}
	return nr, nil
}

// MAC is the hardware address of ns's dev.
func (l *Lab) MAC(ns, dev string) (net.HardwareAddr, error) {
	h, err := l.handle(ns)
	if err != nil {
		return nil, err
	}
	d, err := h.LinkByName(dev)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %w", l.NS(ns), dev, err)
	}
	return d.Attrs().HardwareAddr, nil
}

// Command is a command to run in namespace ns (through `ip netns exec`,
// which also gives it the namespace's /sys).
func (l *Lab) Command(ns string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", l.NS(ns)}, args...)...)
}

// Run runs a command in ns to its end; its output is in the error.
func (l *Lab) Run(ns string, args ...string) (string, error) {
	var out bytes.Buffer
	cmd := l.Command(ns, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s: %s: %v: %s", l.NS(ns), strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// Close drops the lab's netlink handles (the namespaces stay).
func (l *Lab) Close() {
	for _, h := range l.handles {
		h.Close()
	}
	for _, f := range l.fds {
		f.Close()
	}
	l.handles, l.fds = map[string]*netlink.Handle{}, map[string]netns.NsHandle{}
}

// Namespaces lists the namespaces named prefix-*, whoever made them.
func Namespaces(prefix string) []string {
	ents, _ := os.ReadDir(netnsDir)
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix+"-") {
			out = append(out, e.Name())
		}
	}
	return out
}

// RemoveNamespaces deletes the namespaces named prefix-*; their links
// go with them.
func RemoveNamespaces(prefix string) error {
	var errs []error
	for _, n := range Namespaces(prefix) {
		// As `ip netns del`: detach the bind mount, then the file (a file
		// whose mount is already gone is removed too).
		path := filepath.Join(netnsDir, n)
		if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && err != unix.EINVAL && err != unix.ENOENT {
			errs = append(errs, fmt.Errorf("namespace %s: unmount: %w", n, err))
			continue
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("namespace %s: %w", n, err))
		}
	}
	return errors.Join(errs...)
}

// WaitListen waits until something in ns listens on TCP port: a server
// (iperf3's daemon writes its pidfile before it listens, and on a busy
// host forks and binds hundreds of milliseconds late) is ready.
func (l *Lab) WaitListen(ctx context.Context, ns string, port int, timeout time.Duration) error {
	for deadline := time.Now().Add(timeout); ; time.Sleep(20 * time.Millisecond) {
		out, _ := l.Command(ns, "ss", "-Hltn", fmt.Sprintf("sport = :%d", port)).Output()
		if strings.TrimSpace(string(out)) != "" {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nothing listens on tcp port %d in %s after %s", port, l.NS(ns), timeout)
		}
	}
}

// Metrics returns the body of http://127.0.0.1:9100/metrics (the nodes'
// default metrics address) as namespace ns sees it. The connection is
// dialled on the namespace's thread: net/http would dial from another,
// outside it.
func (l *Lab) Metrics(ns string) (string, error) {
	var body string
	err := l.InNS(ns, func() error {
		c, err := net.DialTimeout("tcp", "127.0.0.1:9100", 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n"); err != nil {
			return err
		}
		b, err := io.ReadAll(c)
		if err != nil {
			return err
		}
		head, rest, ok := strings.Cut(string(b), "\r\n\r\n")
		if !ok || !strings.Contains(head, " 200 ") {
			return fmt.Errorf("metrics in %s: %.80q", ns, head)
		}
		body = rest
		return nil
	})
	return body, err
}
