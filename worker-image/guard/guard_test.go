package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

const runGraph = "/tensorflow.WorkerService/RunGraph"

// shortDir: Unix socket paths must stay under ~100 bytes.
func shortDir(t testing.TB) string {
	d, err := os.MkdirTemp("", "guard")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

type grpcFixture struct {
	ca      *testCA
	backend *echoBackend
	sock    string
	guard   *Guard
}

// server0's guard: grpc inbound on a Unix socket with the rules of docs/mesh.md.
func newGRPCFixture(t *testing.T) *grpcFixture {
	ca := newCA(t, "model-ca")
	own := ca.issue(t, "server0")
	b := startBackend(t)
	sock := filepath.Join(shortDir(t), "server0.grpc.sock")
	g, _ := startGuard(t, Config{
		Identity: "server0", CA: ca.path, Cert: own.cert, Key: own.key, Devices: testDevices,
		Inbound: []Inbound{{Kind: "grpc", Listen: "unix:" + sock, Backend: b.addr, Rules: []Rule{
			{Identities: []string{"server1", "server2", "coordinator", "share-g*"}, Methods: []string{recvTensorMethod}},
			{Identities: []string{"coordinator", "share-g*"}, Methods: []string{"*"}},
		}}},
	})
	return &grpcFixture{ca: ca, backend: b, sock: sock, guard: g}
}

func (f *grpcFixture) client(t *testing.T, identity string) *grpc.ClientConn {
	lf := f.ca.issue(t, identity)
	return dialGuard(t, "unix://"+f.sock, clientTLSFor(t, f.ca, &lf, "server0"))
}

func wantCode(t *testing.T, err error, code codes.Code, msgParts ...string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("want %v, got %v", code, err)
	}
	for _, p := range msgParts {
		if !strings.Contains(status.Convert(err).Message(), p) {
			t.Fatalf("status message %q lacks %q", status.Convert(err).Message(), p)
		}
	}
}

func TestGRPCMethodRules(t *testing.T) {
	logs := captureLogs(t)
	f := newGRPCFixture(t)

	coord := f.client(t, "coordinator")
	got, err := unary(coord, runGraph, []byte("graph"))
	if err != nil || string(got) != "graph" {
		t.Fatalf("coordinator RunGraph: %q %v", got, err)
	}
	share := f.client(t, "share-g7")
	if _, err := unary(share, "/tensorflow.EagerService/CreateContext", []byte("x")); err != nil {
		t.Fatalf("share-g7 (pattern share-g*) CreateContext: %v", err)
	}

	s1 := f.client(t, "server1")
	_, err = unary(s1, "/tensorflow.EagerService/CreateContext", []byte("x"))
	wantCode(t, err, codes.PermissionDenied, "server1", "/tensorflow.EagerService/CreateContext")
	waitLog(t, logs, "refused call", "identity=server1", "CreateContext")

	// "share-gx" matches share-g*, "share" does not; "coordinator2" is not "coordinator".
	for _, id := range []string{"share", "coordinator2", "endpoint"} {
		_, err = unary(f.client(t, id), runGraph, []byte("x"))
		wantCode(t, err, codes.PermissionDenied, id, runGraph)
	}
	if n := len(f.backend.seen()); n != 2 {
		t.Fatalf("backend saw %d calls, want only the 2 admitted: %+v", n, f.backend.seen())
	}
}

func TestRecvTensorDestination(t *testing.T) {
	logs := captureLogs(t)
	f := newGRPCFixture(t)
	s1 := f.client(t, "server1")
	src := "/job:tfe/replica:0/task:0/device:CPU:0"

	req := recvTensorRequest(rkey(src, "/job:tfe/replica:0/task:1/device:CPU:0", "share0"))
	got, err := unary(s1, recvTensorMethod, req)
	if err != nil || !bytes.Equal(got, req) {
		t.Fatalf("server1 RecvTensor for itself: %v", err)
	}

	cases := map[string][]byte{
		"asked for a tensor addressed to /job:tfe/replica:0/task:0": recvTensorRequest(rkey(src, "/job:tfe/replica:0/task:0/device:CPU:0", "x")),
		"addressed to /job:tfe/replica:0/task:10":                   recvTensorRequest(rkey(src, "/job:tfe/replica:0/task:10/device:CPU:0", "x")),
		"more than once": recvTensorRequest(rkey(src, "/job:tfe/replica:0/task:1/device:CPU:0", "x"),
			rkey(src, "/job:tfe/replica:0/task:0/device:CPU:0", "x")),
		"no rendezvous_key": recvTensorRequest(),
		"parts":             recvTensorRequest("garbage"),
		"malformed":         {0x12, 0x50, 'a'}, // field 2, length 80, 1 byte
		"not a device name": recvTensorRequest("a;b;c;d;e"),
	}
	for reason, r := range cases {
		_, err := unary(s1, recvTensorMethod, r)
		wantCode(t, err, codes.PermissionDenied, "server1", recvTensorMethod, reason)
	}
	waitLog(t, logs, "refused call", "identity=server1", "addressed to /job:tfe/replica:0/task:0")

	// The coordinator may call everything, yet a RecvTensor is still checked.
	coord := f.client(t, "coordinator")
	_, err = unary(coord, recvTensorMethod, recvTensorRequest(rkey(src, "/job:tfe/replica:0/task:2/device:CPU:0", "x")))
	wantCode(t, err, codes.PermissionDenied, "coordinator", "addressed to /job:tfe/replica:0/task:2")
	if _, err := unary(coord, recvTensorMethod, recvTensorRequest(rkey(src, "/job:coordinator/replica:0/task:0/device:CPU:0", "y"))); err != nil {
		t.Fatalf("coordinator RecvTensor for itself: %v", err)
	}
	// A pattern key of devices: share-g3 -> /job:share/...
	if _, err := unary(f.client(t, "share-g3"), recvTensorMethod, recvTensorRequest(rkey(src, "/job:share/replica:0/task:0/device:CPU:0", "z"))); err != nil {
		t.Fatalf("share-g3 RecvTensor for itself: %v", err)
	}
	if n := len(f.backend.seen()); n != 3 {
		t.Fatalf("backend saw %d calls, want the 3 admitted", n)
	}
}

// A stream to RecvTensor cannot slip a second, unchecked request after a good one.
func TestRecvTensorEveryMessageChecked(t *testing.T) {
	f := newGRPCFixture(t)
	s1 := f.client(t, "server1")
	src := "/job:tfe/replica:0/task:0/device:CPU:0"
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := s1.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}, recvTensorMethod)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.SendMsg(bytesFrame(recvTensorRequest(rkey(src, "/job:tfe/replica:0/task:1/device:CPU:0", "ok")))); err != nil {
		t.Fatal(err)
	}
	first := &frame{}
	if err := st.RecvMsg(first); err != nil {
		t.Fatalf("first (allowed) request: %v", err)
	}
	st.SendMsg(bytesFrame(recvTensorRequest(rkey(src, "/job:tfe/replica:0/task:0/device:CPU:0", "steal"))))
	for {
		err = st.RecvMsg(&frame{})
		if err != nil {
			break
		}
		t.Fatal("second (refused) request was answered")
	}
	wantCode(t, err, codes.PermissionDenied, "addressed to /job:tfe/replica:0/task:0")
}

func TestBidiStreamAndMetadata(t *testing.T) {
	f := newGRPCFixture(t)
	coord := f.client(t, "coordinator")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "x-tfe-test", "hello")
	const method = "/tensorflow.eager.EagerService/StreamingEnqueue"
	st, err := coord.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}, method)
	if err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("t"), 9<<20) // over grpc's 4 MiB default limit
	msgs := [][]byte{[]byte("one"), big, []byte("three")}
	for i, m := range msgs {
		if err := st.SendMsg(bytesFrame(m)); err != nil {
			t.Fatal(err)
		}
		r := &frame{}
		if err := st.RecvMsg(r); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if !bytes.Equal(r.data.Materialize(), m) {
			t.Fatalf("message %d: echo differs", i)
		}
		r.free()
	}
	hdr, err := st.Header()
	if err != nil || len(hdr.Get("x-backend")) != 1 || hdr.Get("x-backend")[0] != "echo" {
		t.Fatalf("backend header not forwarded: %v %v", hdr, err)
	}
	st.CloseSend()
	if err := st.RecvMsg(&frame{}); !errors.Is(err, io.EOF) {
		t.Fatalf("end of stream: %v", err)
	}
	if tr := st.Trailer().Get("x-backend-trailer"); len(tr) != 1 || tr[0] != "done" {
		t.Fatalf("backend trailer not forwarded: %v", st.Trailer())
	}
	calls := f.backend.seen()
	if len(calls) != 1 || calls[0].method != method || len(calls[0].md.Get("x-tfe-test")) != 1 {
		t.Fatalf("backend call: %+v", calls)
	}
}

func TestBackendStatusPassesThrough(t *testing.T) {
	f := newGRPCFixture(t)
	coord := f.client(t, "coordinator")
	// The backend is stopped: the caller gets UNAVAILABLE, not a hang.
	ca := f.ca
	own := ca.issue(t, "server0")
	sock := filepath.Join(shortDir(t), "g.sock")
	startGuard(t, Config{Identity: "server0", CA: ca.path, Cert: own.cert, Key: own.key,
		Inbound: []Inbound{{Kind: "grpc", Listen: "unix:" + sock, Backend: "127.0.0.1:1",
			Rules: []Rule{{Identities: []string{"coordinator"}, Methods: []string{"*"}}}}}})
	lf := ca.issue(t, "coordinator")
	_, err := unary(dialGuard(t, "unix://"+sock, clientTLSFor(t, ca, &lf, "server0")), runGraph, []byte("x"))
	wantCode(t, err, codes.Unavailable)
	if _, err := unary(coord, runGraph, []byte("x")); err != nil {
		t.Fatal(err)
	}
}

func TestRefusedHandshakes(t *testing.T) {
	logs := captureLogs(t)
	f := newGRPCFixture(t)
	target := "unix://" + f.sock

	check := func(name string, tc *tls.Config, logParts ...string) {
		t.Helper()
		before := len(f.backend.seen())
		_, err := unary(dialGuard(t, target, tc), runGraph, []byte("x"))
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("%s: want UNAVAILABLE (handshake refused), got %v", name, err)
		}
		waitLog(t, logs, append([]string{"refused handshake"}, logParts...)...)
		if len(f.backend.seen()) != before {
			t.Fatalf("%s: call reached the backend", name)
		}
	}
	check("no client certificate", clientTLSFor(t, f.ca, nil, "server0"), "client presented no certificate")

	expired := f.ca.issueValid(t, "coordinator", time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour))
	check("expired", clientTLSFor(t, f.ca, &expired, "server0"), "identity=coordinator", "certificate has expired")

	other := newCA(t, "other-ca")
	foreign := other.issue(t, "coordinator")
	tc := clientTLSFor(t, f.ca, &foreign, "server0")
	// Go's client would not send a certificate the server's CA list does not name: force it.
	fc := loadPair(t, foreign)
	tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &fc, nil }
	check("other CA", tc, "identity=coordinator", "unknown authority")

	// The same caller with a good certificate gets through (so the checks above can fail).
	good := f.ca.issue(t, "coordinator")
	if _, err := unary(dialGuard(t, target, clientTLSFor(t, f.ca, &good, "server0")), runGraph, []byte("x")); err != nil {
		t.Fatal(err)
	}
	// TLS 1.2 is refused.
	tc12 := clientTLSFor(t, f.ca, &good, "server0")
	tc12.MinVersion, tc12.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	check("TLS 1.2", tc12, "does not offer TLS 1.3")
}

// A plain client -> server0's outbound listener -> mTLS -> server1's grpc inbound -> backend.
func TestOutbound(t *testing.T) {
	logs := captureLogs(t)
	ca := newCA(t, "model-ca")
	b := startBackend(t)
	c1 := ca.issue(t, "server1")
	sock := filepath.Join(shortDir(t), "server1.grpc.sock")
	startGuard(t, Config{Identity: "server1", CA: ca.path, Cert: c1.cert, Key: c1.key, Devices: testDevices,
		Inbound: []Inbound{{Kind: "grpc", Listen: "unix:" + sock, Backend: b.addr, Rules: []Rule{
			{Identities: []string{"server0"}, Methods: []string{recvTensorMethod}}}}}})

	c0 := ca.issue(t, "server0")
	g0, _ := startGuard(t, Config{Identity: "server0", CA: ca.path, Cert: c0.cert, Key: c0.key,
		Outbound: []Outbound{
			{Listen: "127.0.0.1:0", Dial: "unix:" + sock, Expect: "server1"},
			{Listen: "tcp:127.0.0.1:0", Dial: "unix:" + sock, Expect: "server2"},
			{Listen: "127.0.0.1:0", Dial: "unix:" + sock, Expect: "server*"},
		}})

	plain := func(addr string) *grpc.ClientConn {
		cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawCodec{})))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return cc
	}
	req := recvTensorRequest(rkey("/job:tfe/replica:0/task:1/device:CPU:0", "/job:tfe/replica:0/task:0/device:CPU:0", "s"))
	for _, i := range []int{0, 2} {
		if got, err := unary(plain(g0.addr(i)), recvTensorMethod, req); err != nil || !bytes.Equal(got, req) {
			t.Fatalf("outbound %d: %v", i, err)
		}
	}
	// server1 refuses server0's tensor requests for someone else (identity carried by the outbound cert).
	bad := recvTensorRequest(rkey("/job:tfe/replica:0/task:1/device:CPU:0", "/job:tfe/replica:0/task:2/device:CPU:0", "s"))
	_, err := unary(plain(g0.addr(0)), recvTensorMethod, bad)
	wantCode(t, err, codes.PermissionDenied, "server0", "addressed to /job:tfe/replica:0/task:2")

	before := len(b.seen())
	_, err = unary(plain(g0.addr(1)), recvTensorMethod, req)
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("outbound expecting server2 reached server1: %v", err)
	}
	waitLog(t, logs, "refused handshake", "expect=server2", "identity=server1", "not the expected server2")
	if len(b.seen()) != before {
		t.Fatal("expect mismatch: call reached the backend")
	}
}

// Raw bytes both ways through the outbound, with a half-close from the client.
func TestOutboundHalfClose(t *testing.T) {
	ca := newCA(t, "model-ca")
	c1 := ca.issue(t, "server1")
	// A TLS "peer guard" that reads everything until EOF, then answers and closes.
	peerL, err := tls.Listen("tcp", "127.0.0.1:0", serverTLS(&Loaded{CAPool: ca.pool(), Cert: loadPair(t, c1)}, []string{"h2"}))
	if err != nil {
		t.Fatal(err)
	}
	defer peerL.Close()
	go func() {
		c, err := peerL.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		data, _ := io.ReadAll(c)
		fmt.Fprintf(c, "got %d bytes", len(data))
	}()
	c0 := ca.issue(t, "server0")
	g0, _ := startGuard(t, Config{Identity: "server0", CA: ca.path, Cert: c0.cert, Key: c0.key,
		Outbound: []Outbound{{Listen: "127.0.0.1:0", Dial: "tcp:" + peerL.Addr().String(), Expect: "server1"}}})
	conn, err := net.Dial("tcp", g0.addr(0))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	conn.Write(bytes.Repeat([]byte("x"), 100000))
	conn.(*net.TCPConn).CloseWrite()
	reply, err := io.ReadAll(conn)
	if err != nil || string(reply) != "got 100000 bytes" {
		t.Fatalf("reply %q %v", reply, err)
	}
}

func TestHTTPInbound(t *testing.T) {
	logs := captureLogs(t)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s id=%s body=%d", r.Method, r.URL.RequestURI(), r.Header.Get(IdentityHeader), len(body))
	}))
	defer backend.Close()
	ca := newCA(t, "model-ca")
	own := ca.issue(t, "server0")
	g, _ := startGuard(t, Config{Identity: "server0", CA: ca.path, Cert: own.cert, Key: own.key,
		Inbound: []Inbound{{Kind: "http", Listen: "tcp:127.0.0.1:0", Backend: strings.TrimPrefix(backend.URL, "http://"),
			Rules: []Rule{
				{Identities: []string{"coordinator"}, Methods: []string{"*"}, Paths: []string{"/v1/"}},
				{Identities: []string{"operator"}, Methods: []string{"GET"}, Paths: []string{"/v1/public-key", "/v1/models/"}},
			}}}})
	base := "https://" + g.addr(0)
	client := func(id string) *http.Client {
		lf := ca.issue(t, id)
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: clientTLSFor(t, ca, &lf, "server0")}}
	}
	do := func(c *http.Client, method, path, body string, hdr ...string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	coord, op := client("coordinator"), client("operator")

	if code, body := do(coord, "POST", "/v1/predict?x=1", "abcdef", IdentityHeader, "operator"); code != 200 || body != "POST /v1/predict?x=1 id=coordinator body=6" {
		t.Fatalf("coordinator POST: %d %q", code, body)
	}
	if code, body := do(op, "GET", "/v1/public-key", ""); code != 200 || !strings.Contains(body, "id=operator") {
		t.Fatalf("operator GET public-key: %d %q", code, body)
	}
	for _, c := range []struct{ method, path string }{
		{"POST", "/v1/public-key"}, {"GET", "/v1/predict"}, {"GET", "/v1/models/../predict"}, {"GET", "/metrics"},
	} {
		code, body := do(op, c.method, c.path, "")
		var e struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		if code != 403 || json.Unmarshal([]byte(body), &e) != nil || e.Error.Code != "forbidden" || !strings.Contains(e.Error.Message, "operator") {
			t.Fatalf("operator %s %s: want 403 forbidden JSON, got %d %q", c.method, c.path, code, body)
		}
	}
	waitLog(t, logs, "refused request", "identity=operator", "method=POST", "path=/v1/public-key")

	// A backend that is gone: 502 bad_gateway, and the kept-alive connection is closed with it.
	gone, _ := net.Listen("tcp", "127.0.0.1:0")
	goneAddr := gone.Addr().String()
	gone.Close()
	g2, _ := startGuard(t, Config{Identity: "server0", CA: ca.path, Cert: own.cert, Key: own.key,
		Inbound: []Inbound{{Kind: "http", Listen: "tcp:127.0.0.1:0", Backend: goneAddr,
			Rules: []Rule{{Identities: []string{"coordinator"}, Methods: []string{"*"}, Paths: []string{"/v1/"}}}}}})
	resp, err := coord.Post("https://"+g2.addr(0)+"/v1/predict", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 502 || !strings.Contains(string(b), "bad_gateway") || !resp.Close {
		t.Fatalf("backend gone: want 502 bad_gateway and Connection: close, got %d close=%v %q", resp.StatusCode, resp.Close, b)
	}

	// Without a client certificate, nothing is served.
	noCert := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: clientTLSFor(t, ca, nil, "server0")}}
	if resp, err := noCert.Get(base + "/v1/public-key"); err == nil {
		resp.Body.Close()
		t.Fatalf("no client certificate: got HTTP %d", resp.StatusCode)
	}
	waitLog(t, logs, "refused handshake", "http tcp:127.0.0.1:0", "client presented no certificate")

	// HTTP/1.1 is what a plain client behind a peer's outbound gets, even when offering h2.
	lf := ca.issue(t, "coordinator")
	tc := clientTLSFor(t, ca, &lf, "server0")
	tc.NextProtos = []string{"h2", "http/1.1"}
	conn, err := tls.Dial("tcp", g.addr(0), tc)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if p := conn.ConnectionState().NegotiatedProtocol; p != "http/1.1" {
		t.Fatalf("http inbound negotiated %q", p)
	}
}

func TestSIGTERM(t *testing.T) {
	ca := newCA(t, "model-ca")
	own := ca.issue(t, "server0")
	sock := filepath.Join(shortDir(t), "s.sock")
	os.WriteFile(sock, nil, 0o600) // not a socket: refused, never deleted
	cfg := Config{Identity: "server0", CA: ca.path, Cert: own.cert, Key: own.key,
		Inbound: []Inbound{{Kind: "grpc", Listen: "unix:" + sock, Backend: "127.0.0.1:1",
			Rules: []Rule{{Identities: []string{"coordinator"}, Methods: []string{"*"}}}}}}
	raw, _ := json.Marshal(cfg)
	p := filepath.Join(t.TempDir(), "g.json")
	os.WriteFile(p, raw, 0o600)
	if rc := run([]string{"--config", p}); rc != 1 {
		t.Fatalf("listen on a regular file: rc %d", rc)
	}
	os.Remove(sock)
	// A stale socket is replaced.
	stale, _ := net.Listen("unix", sock)
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()

	done := make(chan int)
	go func() { done <- run([]string{"--config", p}) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("guard did not listen")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if fi, _ := os.Stat(sock); fi.Mode().Perm() != 0o666 {
		t.Fatalf("socket mode %v", fi.Mode())
	}
	syscall.Kill(os.Getpid(), syscall.SIGTERM)
	select {
	case rc := <-done:
		if rc != 0 {
			t.Fatalf("rc %d after SIGTERM", rc)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("guard did not stop on SIGTERM")
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("socket left behind: %v", err)
	}
}
