package admin

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/sys/unix"

	"github.com/prometheus/client_golang/prometheus"
)

func serve(t *testing.T) (*Server, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "node.sock")
	s, err := Serve("off", "", path, prometheus.NewRegistry(), func() any { return map[string]string{"node": "n"} }, nil)
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

// TestMetricsWebConfig: with a web configuration file, /metrics is
// served over TLS and only with the basic-auth user's password, as a
// Prometheus exporter serves it.
func TestMetricsWebConfig(t *testing.T) {
	dir := t.TempDir()
	certPEM, keyPEM := selfSigned(t)
	os.WriteFile(filepath.Join(dir, "cert.pem"), certPEM, 0o600)
	os.WriteFile(filepath.Join(dir, "key.pem"), keyPEM, 0o600)
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	webConfig := filepath.Join(dir, "web.yml")
	os.WriteFile(webConfig, []byte("tls_server_config:\n  cert_file: "+filepath.Join(dir, "cert.pem")+
		"\n  key_file: "+filepath.Join(dir, "key.pem")+"\nbasic_auth_users:\n  prom: "+string(hash)+"\n"), 0o600)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	reg := prometheus.NewRegistry()
	s, err := Serve(addr, webConfig, filepath.Join(dir, "n.sock"), reg, func() any { return nil }, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	get := func(url, user, pass string) (int, string, error) {
		req, _ := http.NewRequest("GET", url, nil)
		if user != "" {
			req.SetBasicAuth(user, pass)
		}
		resp, err := hc.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	var code int
	var body string
	for t0 := time.Now(); time.Since(t0) < 5*time.Second; time.Sleep(20 * time.Millisecond) {
		if code, body, err = get("https://"+addr+"/metrics", "prom", "s3cret"); err == nil {
			break
		}
	}
	if code != http.StatusOK || !strings.Contains(body, "go_goroutines") {
		t.Fatalf("with the password over TLS: %d %v %.200q", code, err, body)
	}
	if code, _, _ := get("https://"+addr+"/metrics", "prom", "wrong"); code != http.StatusUnauthorized {
		t.Errorf("wrong password: %d, want 401", code)
	}
	if code, _, _ := get("https://"+addr+"/metrics", "", ""); code != http.StatusUnauthorized {
		t.Errorf("no credentials: %d, want 401", code)
	}
	if code, body, err := get("http://"+addr+"/metrics", "prom", "s3cret"); err == nil && code == http.StatusOK {
		t.Errorf("plain HTTP was served: %.100q", body)
	}
}

func selfSigned(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "node"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

// TestCallsLeaveNoConnection: status reads and actions close their
// connection, so neither the caller nor the node keeps a descriptor or a
// goroutine per call (a demux once gained one per drain command).
func TestCallsLeaveNoConnection(t *testing.T) {
	_, path := serve(t)
	if _, err := Do(path, "poke", nil); err != nil { // the server's goroutines start
		t.Fatal(err)
	}
	before := runtime.NumGoroutine()
	for range 20 {
		var v map[string]string
		if err := Fetch(path, &v); err != nil || v["node"] != "n" {
			t.Fatal(v, err)
		}
		if msg, err := Do(path, "poke", nil); err != nil || msg != "poked" {
			t.Fatal(msg, err)
		}
	}
	var after int
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if after = runtime.NumGoroutine(); after <= before+2 {
			return
		}
	}
	t.Errorf("goroutines %d before 40 calls, %d after: connections kept open", before, after)
}

// TestProfiles: the status socket serves Go's profiles (the heap's, for
// one).
func TestProfiles(t *testing.T) {
	_, path := serve(t)
	resp, err := client(path, 5*time.Second).Get("http://node/debug/pprof/heap?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "heap profile:") {
		t.Errorf("heap profile: %s %.80q", resp.Status, body)
	}
}
