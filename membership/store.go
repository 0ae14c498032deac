package membership

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/clusterpeer/clusterpeer/config"
)

// Store is a node's connection to the peering's etcd, and what it knows
// of the store's reachability.
type Store struct {
	cli    *clientv3.Client
	keys   Keys
	verify ed25519.PublicKey
	sign   ed25519.PrivateKey // nil on nodes that only read
	ttl    time.Duration
	conf   *config.Etcd
	log    *slog.Logger

	mu      sync.Mutex
	health  Health
	checked bool
	stop    chan struct{}
	done    chan struct{}
}

// Health is the store as this node last saw it.
type Health struct {
	Endpoints []string  `json:"endpoints"`
	Up        bool      `json:"up"`
	Since     time.Time `json:"since"` // of the last change (up or down)
	Error     string    `json:"error,omitempty"`
}

// How often a node checks that the store answers, and how long it waits.
const (
	healthEvery   = time.Second
	healthTimeout = time.Second
)

// Dial connects to the peering's store (discovery.etcd). It does not
// wait for the store: a node starts, and keeps running, without one.
func Dial(p *config.Peering, log *slog.Logger) (*Store, error) {
	e := p.Discovery.Etcd
	if p.Discovery.Mode != config.DiscoveryEtcd || e == nil {
		return nil, fmt.Errorf("%s: discovery.mode is %s, not etcd", p.Path, p.Discovery.Mode)
	}
	if log == nil {
		log = slog.Default()
	}
	cfg := clientv3.Config{
		Endpoints:            e.Endpoints,
		DialTimeout:          e.DialTimeout,
		DialKeepAliveTime:    2 * time.Second,
		DialKeepAliveTimeout: 2 * time.Second,
		// The node logs the store's state itself (once per change);
		// the client's own retries would log every attempt.
		Logger: zap.NewNop(),
		// gRPC's default reconnect back-off grows to 2 minutes: after an
		// outage of 10 s the nodes found the store again 5-6 s after it
		// was back. At most 2 s between attempts here.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: time.Second,
		})},
	}
	if e.CAFile != "" || e.CertFile != "" {
		tc, err := (transport.TLSInfo{TrustedCAFile: e.CAFile, CertFile: e.CertFile, KeyFile: e.KeyFile}).ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("discovery.etcd TLS: %w", err)
		}
		tc.MinVersion = tls.VersionTLS12
		cfg.TLS = tc
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcd %v: %w", e.Endpoints, err)
	}
	s := &Store{
		cli: cli, keys: Keys{Prefix: e.Prefix, Peering: p.Name}, verify: e.Verify, sign: e.Enrolment,
		ttl: e.LeaseTTL, conf: e, log: log.With("store", "etcd"),
		health: Health{Endpoints: e.Endpoints, Since: time.Now(), Error: "not yet reached"},
		stop:   make(chan struct{}), done: make(chan struct{}),
	}
	go s.watchHealth()
	return s, nil
}

// Close ends the connection.
func (s *Store) Close() {
	close(s.stop)
	<-s.done
	s.cli.Close()
}

// Keys is where the store keeps this peering's records.
func (s *Store) Keys() Keys { return s.keys }

// Health is the store's reachability as last checked.
func (s *Store) Health() Health {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.health
}

// watchHealth asks the store for the peering's record count every second
// (a linearizable read: it needs a quorum), and logs each change.
func (s *Store) watchHealth() {
	defer close(s.done)
	t := time.NewTicker(healthEvery)
	defer t.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), healthTimeout)
		_, err := s.cli.Get(ctx, s.keys.Gateways(), clientv3.WithPrefix(), clientv3.WithCountOnly())
		cancel()
		s.noteHealth(err)
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
	}
}

func (s *Store) noteHealth(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	up, first := err == nil, !s.checked
	s.checked = true
	if !first && up == s.health.Up {
		return
	}
	was := s.health
	s.health.Up, s.health.Since, s.health.Error = up, time.Now(), ""
	switch {
	case up && first:
		s.log.Info("store reachable", "endpoints", s.health.Endpoints)
	case up:
		s.log.Info("store reachable again", "down_for", time.Since(was.Since).Round(time.Millisecond))
	default:
		s.health.Error = err.Error()
		s.log.Warn("store unreachable; lanes stay as last known (lane health still rules)", "endpoints", s.health.Endpoints, "err", err)
	}
}
