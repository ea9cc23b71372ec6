package main

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// A plain HTTP backend on loopback that answers with the path it saw.
func startPlainHTTP(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte(r.Method + " " + r.URL.Path + " " + string(body)))
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

func httpsClient(ca *testCA) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: ca.pool(), ServerName: "localhost"}, DisableKeepAlives: true}}
}

func TestPublicTerminatesTLSToThePlainBackend(t *testing.T) {
	ca := newCA(t, "public-ca")
	leaf := ca.issue(t, "localhost")
	backend := startPlainHTTP(t)
	g, _ := startGuard(t, Config{Public: &Public{Listen: "tcp:127.0.0.1:0", Backend: backend,
		Cert: leaf.cert, Key: leaf.key}})
	url := "https://" + g.addr(0)
	resp, err := httpsClient(ca).Post(url+"/v1/models/m:predict", "application/json", strings.NewReader(`{"x":1}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if got := string(body); got != `POST /v1/models/m:predict {"x":1}` {
		t.Fatalf("backend saw %q", got)
	}
	// A client that does not trust the CA is refused by its own verification.
	plain := &http.Client{Timeout: 5 * time.Second}
	if _, err := plain.Get(url + "/healthz"); err == nil {
		t.Fatal("a client without the CA accepted the certificate")
	}
	// Plain HTTP on the TLS port gets nothing from the backend.
	c, err := net.DialTimeout("tcp", g.addr(0), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = c.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
	got, _ := io.ReadAll(c)
	c.Close()
	if strings.Contains(string(got), "GET /healthz") {
		t.Fatalf("plain HTTP reached the backend: %q", got)
	}
}

func TestPublicReloadsARenewedCertificate(t *testing.T) {
	ca := newCA(t, "public-ca")
	first := ca.issue(t, "localhost")
	backend := startPlainHTTP(t)
	dir := t.TempDir()
	crt, key := dir+"/tls.crt", dir+"/tls.key"
	copyFile := func(src, dst string) {
		raw, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst+".tmp", raw, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(dst+".tmp", dst); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(first.cert, crt)
	copyFile(first.key, key)
	g, _ := startGuard(t, Config{Public: &Public{Listen: "tcp:127.0.0.1:0", Backend: backend, Cert: crt, Key: key}})
	serial := func() string {
		c, err := tls.Dial("tcp", g.addr(0), &tls.Config{RootCAs: ca.pool(), ServerName: "localhost"})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	before := serial()
	second := ca.issue(t, "localhost")
	copyFile(second.cert, crt)
	copyFile(second.key, key)
	future := time.Now().Add(2 * time.Second) // a distinct mtime even on coarse clocks
	os.Chtimes(crt, future, future)
	os.Chtimes(key, future, future)
	deadline := time.Now().Add(10 * time.Second)
	for serial() == before {
		if time.Now().After(deadline) {
			t.Fatal("the renewed certificate was not served within 10 s")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func TestPublicValidation(t *testing.T) {
	for _, tc := range []struct {
		p    Public
		want string
	}{
		{Public{Listen: "tcp:0.0.0.0:8443", Backend: "10.0.0.1:8000", Cert: "c", Key: "k"}, "not a loopback"},
		{Public{Listen: "tcp:0.0.0.0:8443", Backend: "127.0.0.1:8000"}, "both required"},
		{Public{Listen: "nope", Backend: "127.0.0.1:8000", Cert: "c", Key: "k"}, "public.listen"},
	} {
		c := Config{Public: &tc.p}
		err := c.validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want %q", tc.p, err, tc.want)
		}
	}
	// A mesh config still needs its identity with a public listener beside it.
	c := Config{Public: &Public{Listen: "tcp:0.0.0.0:8443", Backend: "127.0.0.1:8000", Cert: "c", Key: "k"},
		Outbound: []Outbound{{Listen: "tcp:127.0.0.1:8090", Dial: "tcp:relay:5443", Expect: "coordinator"}}}
	if err := c.validate(); err == nil || !strings.Contains(err.Error(), "identity") {
		t.Fatalf("mesh config without identity: %v", err)
	}
}

// The public endpoint holds at most MaxConnections: one more is closed at once (not queued), a
// freed slot admits the next; Stop closes what is still open once its grace period ends.
func TestPublicConnectionLimitAndShutdown(t *testing.T) {
	ca := newCA(t, "public-ca")
	leaf := ca.issue(t, "localhost")
	backend := startPlainHTTP(t)
	g, _ := startGuard(t, Config{Public: &Public{Listen: "tcp:127.0.0.1:0", Backend: backend,
		Cert: leaf.cert, Key: leaf.key, MaxConnections: 1}})
	cfg := &tls.Config{RootCAs: ca.pool(), ServerName: "localhost"}
	held, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", g.addr(0), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	closedAtOnce := func() bool {
		c, err := net.DialTimeout("tcp", g.addr(0), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1))
		var ne net.Error
		return err != nil && !(errors.As(err, &ne) && ne.Timeout())
	}
	if !closedAtOnce() {
		t.Fatal("a connection over the limit was queued, not closed")
	}
	held.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := httpsClient(ca).Get("https://" + g.addr(0) + "/healthz")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the freed slot admitted no connection: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// A connection held open through Stop is closed when the grace period ends (dialled once the
	// last request's slot is free again).
	var open *tls.Conn
	for open == nil {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", g.addr(0), cfg)
		if err == nil {
			open = c
		} else if time.Now().After(deadline) {
			t.Fatalf("no slot came free for a held connection: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	defer open.Close()
	stopped := make(chan struct{})
	go func() { g.Stop(200 * time.Millisecond); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("Stop did not close a held connection after its grace period")
	}
	open.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := open.Read(make([]byte, 1)); err == nil {
		t.Fatal("the held connection still answers after Stop")
	}
}
