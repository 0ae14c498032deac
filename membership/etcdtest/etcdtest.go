// Package etcdtest runs real etcd servers (Debian's etcd-server) for
// tests: one member or a cluster of three, on unix sockets in a
// directory of the test's (reachable from every network namespace of the
// machine, and from nowhere else), or on loopback TCP with TLS.
package etcdtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Binary is the etcd server used; tests skip where it is missing.
const Binary = "/usr/bin/etcd"

// Cluster is a running etcd cluster.
type Cluster struct {
	dir     string
	detach  bool
	members []*member
	TLS     *TLSFiles // nil: plain unix sockets
}

type member struct {
	name, client, peer string // URLs
	args               []string
	cmd                *exec.Cmd
	log                *os.File
}

// Options: how many members (1 or 3), TLS on loopback TCP, and whether
// the servers outlive the process that started them (Detach: a topology
// left running by `bench topology up`; its Down stops them by pid).
type Options struct {
	Members int
	TLS     bool
	Detach  bool
}

// Skip skips t where etcd is not installed.
func Skip(t testing.TB) {
	t.Helper()
	if _, err := os.Stat(Binary); err != nil {
		t.Skipf("%s not installed (Debian's etcd-server; scripts/install-deps.sh installs it): %v", Binary, err)
	}
}

// Start starts a cluster in dir (which it keeps its data and sockets in)
// and waits until it serves; Stop, registered with t.Cleanup, ends it.
func Start(t testing.TB, dir string, o Options) *Cluster {
	t.Helper()
	Skip(t)
	c, err := Run(dir, o)
	if c != nil {
		t.Cleanup(c.Stop)
	}
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Run starts a cluster in dir and waits until it serves. On error the
// members it started are stopped again.
func Run(dir string, o Options) (_ *Cluster, err error) {
	if o.Members == 0 {
		o.Members = 1
	}
	c := &Cluster{dir: dir, detach: o.Detach}
	defer func() {
		if err != nil {
			c.Stop()
		}
	}()
	if o.TLS {
		if c.TLS, err = writeTLS(dir); err != nil {
			return nil, err
		}
	}
	var initial []string
	for i := range o.Members {
		m := &member{name: fmt.Sprintf("m%d", i+1)}
		if o.TLS {
			cp, err1 := freePort()
			pp, err2 := freePort()
			if err := errors.Join(err1, err2); err != nil {
				return nil, err
			}
			m.client, m.peer = "https://"+cp, "http://"+pp
		} else {
			// etcd takes unix://name:port and makes a socket of that
			// name in its working directory, the cluster's.
			m.client, m.peer = fmt.Sprintf("unix://c%d:2379", i+1), fmt.Sprintf("unix://p%d:2380", i+1)
		}
		initial = append(initial, m.name+"="+m.peer)
		c.members = append(c.members, m)
	}
	for _, m := range c.members {
		m.args = []string{
			"--name", m.name, "--data-dir", filepath.Join(dir, m.name),
			"--listen-client-urls", m.client, "--advertise-client-urls", m.client,
			"--listen-peer-urls", m.peer, "--initial-advertise-peer-urls", m.peer,
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new",
			"--initial-cluster-token", "clusterpeer-test",
			// Quick elections: a member killed in a test is replaced as
			// leader within a second.
			"--heartbeat-interval", "50", "--election-timeout", "500",
		}
		if o.TLS {
			m.args = append(m.args, "--cert-file", c.TLS.ServerCert, "--key-file", c.TLS.ServerKey,
				"--trusted-ca-file", c.TLS.CA, "--client-cert-auth")
		}
	}
	for i := range c.members {
		if err := c.start(i); err != nil {
			return c, err
		}
	}
	for i := range c.members {
		if err := c.waitServing(i, 10*time.Second); err != nil {
			return c, err
		}
		if err := c.waitQuorum(i, 10*time.Second); err != nil {
			return c, err
		}
	}
	return c, nil
}

// Endpoints are the client URLs, as a peering's discovery.etcd.endpoints.
func (c *Cluster) Endpoints() []string {
	var eps []string
	for i := range c.members {
		eps = append(eps, c.Endpoint(i))
	}
	return eps
}

// Endpoint is member i's client URL.
func (c *Cluster) Endpoint(i int) string {
	m := c.members[i]
	if after, ok := strings.CutPrefix(m.client, "unix://"); ok {
		return "unix://" + filepath.Join(c.dir, after)
	}
	return m.client
}

func (c *Cluster) start(i int) error {
	m := c.members[i]
	var err error
	if m.log, err = os.OpenFile(filepath.Join(c.dir, m.name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600); err != nil {
		return err
	}
	m.cmd = exec.Command(Binary, m.args...)
	m.cmd.Dir = c.dir
	m.cmd.Stdout, m.cmd.Stderr = m.log, m.log
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if c.detach {
		m.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	}
	if err := m.cmd.Start(); err != nil {
		m.log.Close()
		return fmt.Errorf("start etcd %s: %w", m.name, err)
	}
	return nil
}

// waitServing waits until member i's client socket accepts.
func (c *Cluster) waitServing(i int, timeout time.Duration) error {
	m := c.members[i]
	network, addr := "tcp", strings.TrimPrefix(m.client, "https://")
	if strings.HasPrefix(m.client, "unix://") {
		network, addr = "unix", strings.TrimPrefix(c.Endpoint(i), "unix://")
	}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if conn, err := net.DialTimeout(network, addr, 100*time.Millisecond); err == nil {
			conn.Close()
			return nil
		}
		if m.cmd.ProcessState != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	log, _ := os.ReadFile(filepath.Join(c.dir, m.name+".log"))
	return fmt.Errorf("etcd %s not serving %s after %s; its log:\n%s", m.name, m.client, timeout, tail(log, 2000))
}

// Kill ends member i at once (SIGKILL), as a crash; Restart brings it
// back with its data.
func (c *Cluster) Kill(i int) {
	m := c.members[i]
	if m == nil || m.cmd == nil {
		return
	}
	m.cmd.Process.Kill()
	m.cmd.Wait()
	m.cmd = nil
	m.log.Close()
	// A killed server leaves its socket files behind; the next one
	// binds them again.
	for _, u := range []string{m.client, m.peer} {
		if after, ok := strings.CutPrefix(u, "unix://"); ok {
			os.Remove(filepath.Join(c.dir, after))
		}
	}
}

// Restart starts member i again and waits until it accepts connections
// (WaitQuorum: until it serves with its cluster).
func (c *Cluster) Restart(i int) error {
	if c.members[i].cmd != nil {
		return nil
	}
	if err := c.start(i); err != nil {
		return err
	}
	return c.waitServing(i, 10*time.Second)
}

// WaitQuorum waits until a linearizable read through member i succeeds
// (it needs a leader and a quorum): a member that only accepts
// connections may not have rejoined yet, and killing another then would
// leave none.
func (c *Cluster) WaitQuorum(i int) error { return c.waitQuorum(i, 10*time.Second) }

func (c *Cluster) waitQuorum(i int, timeout time.Duration) error {
	cfg := clientv3.Config{Endpoints: []string{c.Endpoint(i)}, DialTimeout: time.Second, Logger: zap.NewNop()}
	if c.TLS != nil {
		tc, err := (transport.TLSInfo{TrustedCAFile: c.TLS.CA, CertFile: c.TLS.ClientCert, KeyFile: c.TLS.ClientKey}).ClientConfig()
		if err != nil {
			return err
		}
		cfg.TLS = tc
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return err
	}
	defer cli.Close()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		_, err := cli.Get(ctx, "/etcdtest-quorum")
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("etcd %s: no quorum after %s: %w", c.members[i].name, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// PID is member i's process id (0 if it is not running).
func (c *Cluster) PID(i int) int {
	if m := c.members[i]; m.cmd != nil {
		return m.cmd.Process.Pid
	}
	return 0
}

// Stop ends every member.
func (c *Cluster) Stop() {
	for i := range c.members {
		c.Kill(i)
	}
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
