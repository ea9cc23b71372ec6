package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"
)

// Public is an optional TLS listener for the model's clients (no client certificate): it
// terminates TLS with a server certificate read from files, e.g. a kubernetes.io/tls Secret
// (tls.crt, tls.key; cert-manager writes such Secrets), and carries each connection's bytes
// to a plain loopback backend, the endpoint process, which parses HTTP as it does without
// TLS (limits, timeouts, JSON errors). The files are read again when they change (a renewed
// certificate is used for new connections without a restart).
//
//	"public": {"listen": "tcp:0.0.0.0:8443", "backend": "127.0.0.1:8000",
//	           "cert": "/var/run/tfe-serving-tls/tls.crt", "key": "/var/run/tfe-serving-tls/tls.key"}
//
// It needs no mesh identity: a config with only "public" is a plain TLS terminator.
type Public struct {
	Listen         string `json:"listen"`
	Backend        string `json:"backend"`
	Cert           string `json:"cert"`
	Key            string `json:"key"`
	MaxConnections int    `json:"maxConnections,omitempty"` // open client connections (default 1024)
}

const defaultPublicConnections = 1024

func (p *Public) validate() error {
	if p == nil {
		return nil
	}
	var errs []error
	if _, err := parseAddr(p.Listen); err != nil {
		errs = append(errs, fmt.Errorf("public.listen: %v", err))
	}
	if b, err := parseAddr(p.Backend); err != nil {
		errs = append(errs, fmt.Errorf("public.backend: %v", err))
	} else if !isLoopback(b) {
		errs = append(errs, fmt.Errorf("public.backend: %s is not a loopback address (the bytes after TLS are plain)", b))
	}
	if p.Cert == "" || p.Key == "" {
		errs = append(errs, errors.New("public.cert, public.key: both required"))
	}
	if p.MaxConnections < 0 {
		errs = append(errs, errors.New("public.maxConnections: must be >= 0 (0: the default)"))
	}
	return errors.Join(errs...)
}

// certFiles serves the certificate of cert/key, reloading it when either file changes
// (checked at most once a second, on a handshake). A failed reload keeps the previous pair.
type certFiles struct {
	cert, key string
	mu        sync.Mutex
	pair      *tls.Certificate
	stamp     string
	checked   time.Time
}

func fileStamp(paths ...string) (string, error) {
	s := ""
	for _, p := range paths {
		fi, err := os.Stat(p) // follows the ..data symlink of a Secret volume
		if err != nil {
			return "", err
		}
		s += fmt.Sprintf("%d:%d;", fi.ModTime().UnixNano(), fi.Size())
	}
	return s, nil
}

func newCertFiles(cert, key string) (*certFiles, error) {
	c := &certFiles{cert: cert, key: key}
	if err := c.reload(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *certFiles) reload() error {
	stamp, err := fileStamp(c.cert, c.key)
	if err != nil {
		return err
	}
	pair, err := tls.LoadX509KeyPair(c.cert, c.key)
	if err != nil {
		return fmt.Errorf("public cert/key: %v", err)
	}
	c.pair, c.stamp = &pair, stamp
	return nil
}

func (c *certFiles) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now := time.Now(); now.Sub(c.checked) >= time.Second {
		c.checked = now
		if stamp, err := fileStamp(c.cert, c.key); err == nil && stamp != c.stamp {
			if err := c.reload(); err != nil {
				slog.Warn("public certificate reload failed; keeping the previous one", "error", err)
			} else {
				slog.Info("public certificate reloaded", "cert", c.cert)
			}
		}
	}
	return c.pair, nil
}

// publicTLS: TLS 1.2+ (browsers, ingress controllers, curl), no client certificate; the
// backend speaks HTTP/1.1 only.
func publicTLS(c *certFiles) *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: c.get, NextProtos: []string{"http/1.1"}}
}

type publicServer struct {
	p       *Public
	backend Addr
	tlsCfg  *tls.Config
	conns   connServer
}

func newPublic(p *Public) (*publicServer, error) {
	files, err := newCertFiles(p.Cert, p.Key)
	if err != nil {
		return nil, err
	}
	b, _ := parseAddr(p.Backend)
	n := p.MaxConnections
	if n == 0 {
		n = defaultPublicConnections
	}
	slots := make(chan struct{}, n)
	s := &publicServer{p: p, backend: b, tlsCfg: publicTLS(files)}
	s.conns.admit = func() (func(), bool) {
		select {
		case slots <- struct{}{}:
			return func() { <-slots }, true
		default: // over the limit: refuse at once rather than queue
			return nil, false
		}
	}
	return s, nil
}

func (s *publicServer) Serve(l net.Listener) error { return s.conns.serve(l, s.handle) }

func (s *publicServer) handle(raw net.Conn) {
	defer raw.Close()
	tc := tls.Server(raw, s.tlsCfg)
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		slog.Debug("public handshake failed", "remote", addrString(raw.RemoteAddr()), "error", err)
		return
	}
	d := net.Dialer{Timeout: 5 * time.Second}
	back, err := d.DialContext(ctx, s.backend.Network, s.backend.Address)
	if err != nil {
		slog.Warn("public: backend unavailable", "backend", s.backend.String(), "error", err)
		return
	}
	cancel()
	defer back.Close()
	pipe(tc, back)
}

// Shutdown stops accepting, waits for open connections until ctx ends, then closes them.
func (s *publicServer) Shutdown(ctx context.Context) { s.conns.shutdown(ctx) }
