package topology

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clusterpeer/clusterpeer/config"
	"github.com/clusterpeer/clusterpeer/tunnel/wgkey"
)

// The file it writes is one config loads, with every option's nodes.
func TestFileLoads(t *testing.T) {
	for _, o := range []Options{
		{Prefix: "cpf", Lanes: 3},
		{Prefix: "cpf", Lanes: 4, DemuxLanes: 2, HA: true, Underlay6: true, Health: config.Health{FlapWindow: 100 * time.Millisecond}},
	} {
		o.Work = t.TempDir()
		p := &Peering{Options: o}
		if err := p.writeFiles(); err != nil {
			t.Fatalf("%+v: %v", o, err)
		}
		c := p.Config
		if len(c.Lanes) != o.Lanes || c.Name != o.Prefix {
			t.Errorf("%d lanes, name %q; want %d, %q", len(c.Lanes), c.Name, o.Lanes, o.Prefix)
		}
		g, err := c.Node(GatewayName(config.SideB, o.Lanes))
		if err != nil {
			t.Fatal(err)
		}
		wantGeneve := fmt.Sprintf("10.2.0.%d:6081", 20+o.Lanes)
		if o.Underlay6 {
			wantGeneve = fmt.Sprintf("[fd00:b::%d]:6081", 20+o.Lanes)
		}
		if g.Self.Geneve.AddrPort.String() != wantGeneve || g.Self.Tun != fmt.Sprintf("cpf-gb%d", o.Lanes) {
			t.Errorf("gw-b%d: geneve %s tun %s; want %s cpf-gb%d", o.Lanes, g.Self.Geneve.AddrPort, g.Self.Tun, wantGeneve, o.Lanes)
		}
		// Each public key is the one of the private key file beside it.
		b, err := os.ReadFile(g.Self.PrivateKeyFile)
		if err != nil {
			t.Fatal(err)
		}
		priv, err := wgkey.Parse(strings.TrimSpace(string(b)))
		if err != nil || priv.Public() != g.Self.Public {
			t.Errorf("gw-b%d: public key does not match its private key file (%v)", o.Lanes, err)
		}
		if _, err := c.Node("demux-a2"); (err == nil) != o.HA {
			t.Errorf("HA %v: demux-a2: %v", o.HA, err)
		}
		if o.Health.FlapWindow != 0 && c.Health.FlapWindow != o.Health.FlapWindow {
			t.Errorf("flap window %s; want %s", c.Health.FlapWindow, o.Health.FlapWindow)
		}
		if o.DemuxLanes > 0 {
			d, err := config.Load(p.DemuxConfigPath())
			if err != nil || len(d.Lanes) != o.DemuxLanes {
				t.Errorf("demux.yaml: %v, want %d lanes", err, o.DemuxLanes)
			}
		}
	}
}

func TestOptionsChecked(t *testing.T) {
	bin := t.TempDir()
	for _, b := range []string{"demux", "tunnel"} {
		os.WriteFile(filepath.Join(bin, b), []byte("#!/bin/sh\n"), 0o755)
	}
	for _, c := range []struct {
		o    Options
		want string
	}{
		{Options{Prefix: "much-too-long", Lanes: 1}, "prefix"},
		{Options{Prefix: "cpo", Lanes: 0}, "lanes 0"},
		{Options{Prefix: "cpo", Lanes: 2, DemuxLanes: 3}, "demux lanes 3"},
		{Options{Prefix: "cpo", Lanes: 1, XDP: "fast"}, `xdp "fast"`},
		{Options{Prefix: "cpo", Lanes: 2, Baseline: Kernel}, "exactly 1 lane"},
		{Options{Prefix: "cpo", Lanes: 1, Baseline: WireGuardGo, WireGuardGo: "/nonexistent"}, "not a wireguard-go binary"},
		{Options{Prefix: "cpo", Lanes: 1, Baseline: "vpn"}, `baseline "vpn"`},
	} {
		c.o.Bin = bin
		err := c.o.check()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v; want an error with %q", c.o, err, c.want)
		}
	}
	o := Options{Prefix: "cpo", Lanes: 1, Bin: t.TempDir()}
	if err := o.check(); err == nil || !strings.Contains(err.Error(), "binary demux") {
		t.Errorf("no binaries: %v", err)
	}
}

func needsRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces and TUN devices (CI runs it as root)")
	}
	for _, p := range []string{"ip", "ping", "ss"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("needs %s (make deps installs it)", p)
		}
	}
}

func buildBinaries(t *testing.T) string {
	dir := t.TempDir()
	out, err := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", dir+"/",
		"github.com/clusterpeer/clusterpeer/cmd/demux", "github.com/clusterpeer/clusterpeer/cmd/tunnel").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return dir
}

// A peering comes up ready to carry traffic both ways, refuses a second
// one of its name, and Down leaves nothing behind.
func TestUpDown(t *testing.T) {
	needsRoot(t)
	o := Options{Prefix: "cptu", Lanes: 2, Bin: buildBinaries(t), Work: t.TempDir()}
	Down(o.Prefix, o.Work)
	t.Cleanup(func() { Down(o.Prefix, o.Work) })
	p, err := Up(o)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for _, c := range [][2]string{{"ha", "10.2.0.10"}, {"ha", "fd00:b::10"}, {"hb", "10.1.0.10"}, {"hb", "fd00:a::10"}} {
		if out, err := p.Run(c[0], "ping", "-c", "2", "-i", "0.2", "-W", "2", "-q", c[1]); err != nil {
			t.Errorf("ping %s from %s: %v\n%s", c[1], c[0], err, out)
		}
	}
	for _, d := range p.Demuxes() {
		if err := p.WaitLanesUp(d, 2, time.Second); err != nil {
			t.Error(err)
		}
	}
	if _, err := Up(o); err == nil || !strings.Contains(err.Error(), "exist already") {
		t.Errorf("a second peering %s: %v; want refused", o.Prefix, err)
	}
	var pids []int
	for _, n := range []string{"gw-a1", "gw-b2", "demux-a", "demux-b"} {
		pid, err := p.PID(n)
		if err != nil {
			t.Fatal(err)
		}
		pids = append(pids, pid)
	}
	if err := Down(o.Prefix, o.Work); err != nil {
		t.Fatal(err)
	}
	if left := Namespaces(o.Prefix); len(left) > 0 {
		t.Errorf("namespaces left: %v", left)
	}
	for _, pid := range pids {
		if syscall.Kill(pid, 0) == nil && alive(pid) {
			t.Errorf("process %d still runs", pid)
		}
	}
	if socks, _ := filepath.Glob(filepath.Join(config.DefaultStatusDir, o.Prefix+"-*")); len(socks) > 0 {
		t.Errorf("sockets left: %v", socks)
	}
}

// A node that does not start fails Up with its log, and Up removes what
// it had made.
func TestUpFailsClean(t *testing.T) {
	needsRoot(t)
	bin := t.TempDir()
	for _, b := range []string{"demux", "tunnel"} {
		os.WriteFile(filepath.Join(bin, b), []byte("#!/bin/sh\necho 'cannot start: broken on purpose' >&2\nexit 1\n"), 0o755)
	}
	o := Options{Prefix: "cptf", Lanes: 1, Bin: bin, Work: t.TempDir()}
	t.Cleanup(func() { Down(o.Prefix, o.Work) })
	_, err := Up(o)
	if err == nil || !strings.Contains(err.Error(), "broken on purpose") {
		t.Fatalf("Up with a broken gateway: %v; want its log in the error", err)
	}
	if left := Namespaces(o.Prefix); len(left) > 0 {
		t.Errorf("namespaces left after a failed Up: %v", left)
	}
}
