package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"
)

// Health is an optional plain-HTTP listener for what has to reach a party without a
// certificate: the kubelet's probes and the API server's proxy (the operator in proxy mode).
// It passes on GET (and HEAD) of the listed paths only, exactly as listed (no prefixes, no
// query strings), with no request headers or body, to a loopback backend:
//
//	"health": {"listen": "tcp:0.0.0.0:5444", "backend": "127.0.0.1:8081",
//	           "paths": ["/healthz", "/readyz", "/v1/public-key"]}
//
// Everything else gets 403 (path) or 405 (method). Only public information belongs here.
type Health struct {
	Listen  string   `json:"listen"`
	Backend string   `json:"backend"`
	Paths   []string `json:"paths"`
}

// maxHealthBody bounds what a health answer may carry back (a public key is ~100 bytes).
const maxHealthBody = 64 << 10

// validate is nil-safe: no "health" key, nothing to check.
func (h *Health) validate() error {
	if h == nil {
		return nil
	}
	var errs []error
	if _, err := parseAddr(h.Listen); err != nil {
		errs = append(errs, fmt.Errorf("health.listen: %v", err))
	}
	if b, err := parseAddr(h.Backend); err != nil {
		errs = append(errs, fmt.Errorf("health.backend: %v", err))
	} else if !isLoopback(b) {
		errs = append(errs, fmt.Errorf("health.backend: %s is not a loopback address", b))
	}
	if len(h.Paths) == 0 {
		errs = append(errs, errors.New("health.paths: at least one path is required"))
	}
	for _, p := range h.Paths {
		if !strings.HasPrefix(p, "/") || strings.ContainsAny(p, "?#") {
			errs = append(errs, fmt.Errorf("health.paths: %q must be a plain absolute path", p))
		}
	}
	return errors.Join(errs...)
}

type healthServer struct {
	h        *Health
	identity string
	backend  Addr
	paths    map[string]bool
	client   *http.Client
	server   *http.Server
}

func newHealth(h *Health, identity string) *healthServer {
	backend, _ := parseAddr(h.Backend)
	dialer := &net.Dialer{Timeout: 2 * time.Second}
	s := &healthServer{h: h, identity: identity, backend: backend, paths: map[string]bool{}}
	for _, p := range h.Paths {
		s.paths[p] = true
	}
	s.client = &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return dialer.DialContext(ctx, backend.Network, backend.Address)
			},
			MaxIdleConns:    4,
			IdleConnTimeout: 30 * time.Second,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	s.server = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       5 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          log.New(slogWriter{}, "", 0),
	}
	return s
}

func (s *healthServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeJSONError(w, http.StatusMethodNotAllowed, "method_not_allowed", "tfe-guard health: GET only")
		return
	}
	if !s.paths[r.URL.Path] || r.URL.RawQuery != "" {
		writeJSONError(w, http.StatusForbidden, "forbidden", "tfe-guard health: not a health path")
		return
	}
	if r.URL.Path == RefusalsPath {
		refusals.serve(w, s.identity)
		return
	}
	if r.URL.Path == StatsPath {
		callStatsAll.serve(w, s.identity)
		return
	}
	host := "localhost"
	if s.backend.Network == "tcp" {
		host = s.backend.Address
	}
	req, err := http.NewRequestWithContext(r.Context(), r.Method, "http://"+host+r.URL.Path, nil)
	if err != nil {
		writeJSONError(w, http.StatusInternalServerError, "internal", "tfe-guard health: bad request")
		return
	}
	resp, err := s.client.Do(req)
	if err != nil {
		slog.Debug("health backend error", "path", r.URL.Path, "error", err)
		writeJSONError(w, http.StatusBadGateway, "bad_gateway", "tfe-guard health: backend unavailable")
		return
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "" {
		w.Header().Set("Content-Type", ct)
	}
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, io.LimitReader(resp.Body, maxHealthBody))
}

func (s *healthServer) Serve(l net.Listener) error {
	err := s.server.Serve(l)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

func (s *healthServer) Shutdown(ctx context.Context) {
	_ = s.server.Shutdown(ctx)
}
