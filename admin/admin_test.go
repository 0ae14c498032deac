package admin

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/prometheus/client_golang/prometheus"
)

func serve(t *testing.T) (*Server, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "node.sock")
	s, err := Serve("off", path, prometheus.NewRegistry(), func() any { return map[string]string{"node": "n"} }, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	s.Handle("poke", func(url.Values) (string, error) { return "poked", nil })
	return s, path
}

// TestSocketOwnerOnly: the socket is 0600 whatever the umask, and its
// owner's actions run.
func TestSocketOwnerOnly(t *testing.T) {
	old := unix.Umask(0)
	defer unix.Umask(old)
	_, path := serve(t)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if m := fi.Mode().Perm(); m != 0o600 {
		t.Errorf("socket mode %o, want 600", m)
	}
	if msg, err := Do(path, "poke", nil); err != nil || msg != "poked" {
		t.Errorf("owner's action: %q, %v", msg, err)
	}
}

// TestActionOtherUser: a process of another user that can reach the
// socket (an operator widened its mode for monitoring) reads status but
// is refused actions. The connecting thread alone takes another
// effective uid (a raw setresuid is per thread), which SO_PEERCRED
// reports.
func TestActionOtherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the test connects as uid 65534")
	}
	_, path := serve(t)
	for _, p := range []string{filepath.Dir(filepath.Dir(path)), filepath.Dir(path)} {
		if err := os.Chmod(p, 0o711); err != nil { // t.TempDir's are 0700
			t.Fatal(err)
		}
	}
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	dial := func() net.Conn {
		ch := make(chan net.Conn, 1)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
			if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), 65534, ^uintptr(0)); e != 0 {
				t.Errorf("setresuid: %v", e)
				ch <- nil
				return
			}
			c, err := net.Dial("unix", path)
			if err != nil {
				t.Errorf("dial as uid 65534: %v", err)
			}
			ch <- c
		}()
		return <-ch
	}
	do := func(method, target string) (int, string) {
		c := dial()
		if c == nil {
			t.FailNow()
		}
		hc := &http.Client{Transport: &http.Transport{DialContext: func(context.Context, string, string) (net.Conn, error) { return c, nil }}}
		req, _ := http.NewRequest(method, "http://node"+target, nil)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := do("GET", "/status"); code != http.StatusOK || !strings.Contains(body, `"node"`) {
		t.Errorf("status as another user: %d %q", code, body)
	}
	code, body := do("POST", "/action/poke")
	if code != http.StatusForbidden || !strings.Contains(body, "uid 65534") {
		t.Errorf("action as another user: %d %q, want 403 naming the uid", code, body)
	}
	if msg, err := Do(path, "poke", nil); err != nil || msg != "poked" {
		t.Errorf("root's action: %q, %v", msg, err)
	}
}
