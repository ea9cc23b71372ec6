package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"path"
	"strings"
	"time"
)

// IdentityHeader carries the caller's verified identity to the HTTP backend; whatever the
// caller sent under that name is dropped.
const IdentityHeader = "X-Tfe-Identity"

type httpInbound struct {
	cfg    *Loaded
	in     Inbound
	name   string
	proxy  *httputil.ReverseProxy
	server *http.Server
}

func newHTTPInbound(cfg *Loaded, in Inbound) *httpInbound {
	baddr, _ := parseAddr(in.Backend)
	target := &url.URL{Scheme: "http", Host: baddr.Address}
	dialer := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	if baddr.Network == "unix" {
		target.Host = "localhost"
	}
	transport := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, baddr.Network, baddr.Address)
		},
		// One loopback connection per request: never a race with a backend closing an idle
		// kept-alive connection (waitress does after 30 s); a loopback connect costs microseconds.
		DisableKeepAlives:     true,
		ExpectContinueTimeout: time.Second,
		ForceAttemptHTTP2:     false,
	}
	h := &httpInbound{cfg: cfg, in: in, name: "http " + in.Listen}
	h.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Header.Del(IdentityHeader)
			if id, ok := identityOf(pr.In.TLS); ok {
				pr.Out.Header.Set(IdentityHeader, id)
			}
		},
		Transport:     transport,
		FlushInterval: -1, // stream bodies as they come
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			slog.Warn("backend error", "listener", h.name, "method", r.Method, "path", r.URL.Path, "error", err)
			// The backend is gone (e.g. a pod terminating after its main container exited): the
			// caller's kept-alive connection leads nowhere useful, so it ends with this answer and
			// the caller's next connection can reach a live replica.
			w.Header().Set("Connection", "close")
			writeJSONError(w, http.StatusBadGateway, "bad_gateway", "tfe-guard: backend unavailable")
		},
		ErrorLog: log.New(slogWriter{}, "", 0),
	}
	h.server = &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    1 << 20,
		// Connections arrive already TLS-authenticated (tlsListener); HTTP/1.1 only, so that
		// a plain HTTP/1.1 client behind a peer's outbound listener is understood.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ErrorLog:     log.New(slogWriter{}, "", 0),
	}
	return h
}

func (h *httpInbound) Serve(l net.Listener) error {
	tl := newTLSListener(l, serverTLS(h.cfg, []string{"http/1.1"}), h.name)
	err := h.server.Serve(tl)
	if err == http.ErrServerClosed {
		return nil
	}
	return err
}

func (h *httpInbound) Shutdown(ctx context.Context) {
	if err := h.server.Shutdown(ctx); err != nil {
		h.server.Close()
	}
}

func (h *httpInbound) allowed(identity, method, p string) bool {
	for _, r := range h.in.Rules {
		if !matchAny(r.Identities, identity) {
			continue
		}
		methodOK := false
		for _, m := range r.Methods {
			if m == "*" || m == method {
				methodOK = true
				break
			}
		}
		if !methodOK {
			continue
		}
		for _, prefix := range r.Paths {
			if strings.HasPrefix(p, prefix) {
				return true
			}
		}
	}
	return false
}

// canonicalPath: a path that a backend could resolve differently from the prefix check
// ("/v1/public-key/../admin", "//x") is refused rather than interpreted.
func canonicalPath(p string) bool {
	if p == "" || p[0] != '/' {
		return false
	}
	c := path.Clean(p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	return c == p
}

func (h *httpInbound) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	identity, ok := identityOf(r.TLS)
	reason := ""
	switch {
	case !ok:
		identity, reason = "-", "no verified client certificate"
	case !canonicalPath(r.URL.Path):
		reason = "non-canonical path"
	case !h.allowed(identity, r.Method, r.URL.Path):
		reason = "no rule admits it"
	}
	if reason != "" {
		slog.Warn("refused request", "listener", h.name, "identity", identity, "method", r.Method, "path", r.URL.Path, "reason", reason)
		refusals.record("http", identity, fmt.Sprintf("request %s %s: %s", r.Method, r.URL.Path, reason))
		writeJSONError(w, http.StatusForbidden, "forbidden",
			fmt.Sprintf("tfe-guard %s: identity %s may not %s %s: %s", h.cfg.Identity, identity, r.Method, r.URL.Path, reason))
		return
	}
	if r.URL.Path == RefusalsPath && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
		refusals.serve(w, h.cfg.Identity)
		return
	}
	if r.URL.Path == StatsPath && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
		callStatsAll.serve(w, h.cfg.Identity)
		return
	}
	// Read the request body whole before proxying. Streamed, the backend can answer as soon as it
	// has Content-Length bytes; the proxy then writes the response header, which closes the
	// incoming body before the transport's final read has seen EOF, and the transport, taking that
	// for a failed request write, drops the backend connection mid-response (seen under fuzzing:
	// "read error during body copy: use of closed network connection", headers without a body).
	if r.Body != nil && r.Body != http.NoBody {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxHTTPBody))
		if err != nil {
			var tooLarge *http.MaxBytesError
			if errors.As(err, &tooLarge) {
				writeJSONError(w, http.StatusRequestEntityTooLarge, "too_large",
					fmt.Sprintf("tfe-guard: request body over %d bytes", maxHTTPBody))
			} else {
				writeJSONError(w, http.StatusBadRequest, "bad_request", "tfe-guard: could not read the request body")
			}
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
	}
	h.proxy.ServeHTTP(w, r)
}

// maxHTTPBody bounds a request body the guard holds in memory (the workers accept 64 MiB).
const maxHTTPBody = 96 << 20

func writeJSONError(w http.ResponseWriter, code int, kind, msg string) {
	body, _ := json.Marshal(map[string]any{"error": map[string]string{"code": kind, "message": msg}})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", fmt.Sprint(len(body)))
	w.WriteHeader(code)
	w.Write(body)
}

// slogWriter sends net/http's internal log lines to our logger.
type slogWriter struct{}

func (slogWriter) Write(p []byte) (int, error) {
	slog.Warn(strings.TrimSpace(string(p)))
	return len(p), nil
}
