// Package admin serves a node's operator interfaces: Prometheus metrics
// over HTTP on a TCP address (loopback by default), and on a unix socket
// the status document (JSON, GET /status) that the `show` subcommands
// read and the node's actions (POST /action/<name>: reload, drain, ...).
//
// The socket is created owner-only (the umask is narrowed around the
// bind, as wireguard-go's UAPI socket is, so it is never reachable with a
// wider mode): status names keys' public halves and addresses. Actions
// change the node, so they are taken only from root or the socket's owner
// (SO_PEERCRED), even if an operator widens the socket's mode to let a
// monitoring group read status.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/exporter-toolkit/web"
)

// Server is a running pair of endpoints.
type Server struct {
	servers []*http.Server
	socket  string
	mux     *http.ServeMux // of the socket
}

// Action is an operator command: it gets the request's query parameters
// and returns a line for the operator, or an error that the command
// prints and exits 1 with.
type Action func(args url.Values) (string, error)

// Handle registers an action under POST /action/<name>.
func (s *Server) Handle(name string, a Action) {
	s.mux.HandleFunc("POST /action/"+name, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if ok, why := mayAct(r); !ok {
			w.WriteHeader(http.StatusForbidden)
			fmt.Fprintf(w, "%s: %s\n", name, why)
			return
		}
		msg, err := a(r.URL.Query())
		if err != nil {
			w.WriteHeader(http.StatusConflict)
			fmt.Fprintln(w, err)
			return
		}
		fmt.Fprintln(w, msg)
	})
}

// Serve starts /metrics on metricsAddr ("off": none) and /status on the
// unix socket at statusPath. status is called per request. webConfig, if
// set, is a Prometheus web configuration file (TLS, basic auth) for the
// metrics listener, served as exporters do (exporter-toolkit, which
// rereads it for each connection); the caller has validated it.
func Serve(metricsAddr, webConfig, statusPath string, reg *prometheus.Registry, status func() any, log *slog.Logger) (*Server, error) {
	s := &Server{}
	if metricsAddr != "off" {
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		ln, err := net.Listen("tcp", metricsAddr)
		if err != nil {
			return nil, fmt.Errorf("metrics listen %s: %w", metricsAddr, err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		h := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: idleTimeout}
		s.servers = append(s.servers, h)
		go func() {
			err := web.Serve(ln, h, &web.FlagConfig{WebConfigFile: &webConfig}, log)
			if err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics server stopped", "addr", ln.Addr(), "err", err)
			}
		}()
	}
	if err := os.MkdirAll(filepath.Dir(statusPath), 0o755); err != nil {
		s.Close()
		return nil, fmt.Errorf("status socket dir: %w", err)
	}
	// A socket left by a crashed run is removed; one that answers is in use.
	if c, err := net.DialTimeout("unix", statusPath, 200*time.Millisecond); err == nil {
		c.Close()
		s.Close()
		return nil, fmt.Errorf("status socket %s is in use by another process", statusPath)
	}
	os.Remove(statusPath)
	ln, err := listenOwnerOnly(statusPath)
	if err != nil {
		s.Close()
		return nil, err
	}
	s.socket = statusPath
	mux := http.NewServeMux()
	s.mux = mux
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(status())
	})
	// Go's profiles, for whoever may open the socket (its owner): where
	// a node spends its CPU and what it allocates, on the live process.
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	s.start(&http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: idleTimeout, ConnContext: withPeer}, ln, log)
	return s, nil
}

// listenOwnerOnly binds a unix socket with mode 0600 from the start.
// The umask is the process's, so this briefly narrows it for every
// thread; nothing else here creates files at start-up.
func listenOwnerOnly(path string) (net.Listener, error) {
	old := unix.Umask(0o077)
	ln, err := net.Listen("unix", path)
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("status listen %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("status socket %s: %w", path, err)
	}
	return ln, nil
}

type peerKey struct{}

// withPeer records the connecting process's credentials (SO_PEERCRED) in
// the connection's context.
func withPeer(ctx context.Context, c net.Conn) context.Context {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return ctx
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return ctx
	}
	var cred *unix.Ucred
	raw.Control(func(fd uintptr) {
		cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if err != nil || cred == nil {
		return ctx
	}
	return context.WithValue(ctx, peerKey{}, *cred)
}

// mayAct says whether the request's peer may run actions: root, or the
// user the node runs as (who owns the socket).
func mayAct(r *http.Request) (bool, string) {
	cred, ok := r.Context().Value(peerKey{}).(unix.Ucred)
	if !ok {
		return false, "the caller's credentials are unknown"
	}
	if cred.Uid == 0 || int(cred.Uid) == os.Geteuid() {
		return true, ""
	}
	return false, fmt.Sprintf("uid %d (pid %d) may read status but not run actions: only root or uid %d, who runs this node, may", cred.Uid, cred.Pid, os.Geteuid())
}

func (s *Server) start(h *http.Server, ln net.Listener, log *slog.Logger) {
	s.servers = append(s.servers, h)
	go func() {
		if err := h.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("admin server stopped", "addr", ln.Addr(), "err", err)
		}
	}()
}

// Close stops both endpoints and removes the socket.
func (s *Server) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	for _, h := range s.servers {
		h.Shutdown(ctx)
	}
	if s.socket != "" {
		os.Remove(s.socket)
	}
}

// idleTimeout closes a kept-alive connection its client left idle: a
// scraper or a status client that never closes one would otherwise hold
// a descriptor and a goroutine of the node for good (make soak found a
// demux gaining one per drain command).
const idleTimeout = 30 * time.Second

// client is one request's: its connection is closed after the answer
// (keep-alive off), since each call makes a client of its own.
func client(statusPath string, timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", statusPath)
		}},
	}
}

// Do runs a node's action and returns its message.
func Do(statusPath, name string, args url.Values) (string, error) {
	resp, err := client(statusPath, 30*time.Second).Post("http://node/action/"+name+"?"+args.Encode(), "", nil)
	if err != nil {
		return "", fmt.Errorf("%s %s: %w (is the node running?)", name, statusPath, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	msg := strings.TrimSpace(string(b))
	switch resp.StatusCode {
	case http.StatusOK:
		return msg, nil
	case http.StatusConflict, http.StatusForbidden:
		return "", errors.New(msg)
	default:
		return "", fmt.Errorf("%s: %s: %s", name, resp.Status, msg)
	}
}

// Fetch reads a node's status document into v.
func Fetch(statusPath string, v any) error {
	resp, err := client(statusPath, 3*time.Second).Get("http://node/status")
	if err != nil {
		return fmt.Errorf("status %s: %w (is the node running?)", statusPath, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s: %s", statusPath, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}
