package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protowire"
)

// ---- PKI ----

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	path string
	dir  string
}

var serial int64 = 1

func nextSerial() *big.Int { serial++; return big.NewInt(serial) }

func newCA(t testing.TB, name string) *testCA {
	t.Helper()
	dir := t.TempDir()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: nextSerial(), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	p := filepath.Join(dir, name+".crt")
	writePEM(t, p, "CERTIFICATE", der)
	return &testCA{cert: cert, key: key, path: p, dir: dir}
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

type leafFiles struct{ cert, key string }

// issue writes a leaf for cn (CN + DNS SAN, serverAuth+clientAuth), valid [from, to].
func (ca *testCA) issueValid(t testing.TB, cn string, from, to time.Time) leafFiles {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: nextSerial(), Subject: pkix.Name{CommonName: cn}, DNSNames: []string{cn},
		NotBefore: from, NotAfter: to, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	lf := leafFiles{filepath.Join(ca.dir, cn+nextSerial().String()+".crt"), ""}
	lf.key = strings.TrimSuffix(lf.cert, ".crt") + ".key"
	writePEM(t, lf.cert, "CERTIFICATE", der)
	writePEM(t, lf.key, "PRIVATE KEY", kder)
	return lf
}

func (ca *testCA) issue(t testing.TB, cn string) leafFiles {
	return ca.issueValid(t, cn, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
}

func (ca *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

func loadPair(t testing.TB, lf leafFiles) tls.Certificate {
	t.Helper()
	c, err := tls.LoadX509KeyPair(lf.cert, lf.key)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// clientTLSFor: a caller presenting lf (or no certificate when lf is nil) to a guard named server.
func clientTLSFor(t testing.TB, ca *testCA, lf *leafFiles, server string) *tls.Config {
	cfg := &tls.Config{RootCAs: ca.pool(), ServerName: server, MinVersion: tls.VersionTLS13}
	if lf != nil {
		cfg.Certificates = []tls.Certificate{loadPair(t, *lf)}
	}
	return cfg
}

// ---- the guard ----

var testDevices = map[string]string{
	"server0": "/job:tfe/replica:0/task:0", "server1": "/job:tfe/replica:0/task:1",
	"server2": "/job:tfe/replica:0/task:2", "coordinator": "/job:coordinator/replica:0/task:0",
	"share-g*": "/job:share/replica:0/task:0",
}

// startGuard validates cfg through the JSON path (as tfe-guard does) and starts it.
func startGuard(t testing.TB, cfg Config) (*Guard, *Loaded) {
	t.Helper()
	raw, _ := json.Marshal(cfg)
	p := filepath.Join(t.TempDir(), "guard.json")
	os.WriteFile(p, raw, 0o600)
	loaded, err := LoadConfig(p)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	errc := make(chan error, 8)
	g, err := Start(loaded, errc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Stop(2 * time.Second) })
	return g, loaded
}

func (g *Guard) addr(i int) string { return g.listeners[i].Addr().String() }

// ---- logs ----

type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func captureLogs(t testing.TB) *logBuf {
	lb := &logBuf{}
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(io.MultiWriter(lb, os.Stderr), nil)))
	t.Cleanup(func() { slog.SetDefault(prev) })
	return lb
}

// waitLog waits for a log line containing all parts.
func waitLog(t testing.TB, lb *logBuf, parts ...string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		for _, line := range strings.Split(lb.String(), "\n") {
			ok := true
			for _, p := range parts {
				ok = ok && strings.Contains(line, p)
			}
			if ok {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no log line with %q in:\n%s", parts, lb.String())
}

// ---- a backend gRPC server that echoes every message ----

type backendCall struct {
	method string
	md     metadata.MD
}

type echoBackend struct {
	mu    sync.Mutex
	calls []backendCall
	addr  string
}

func (b *echoBackend) seen() []backendCall {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]backendCall(nil), b.calls...)
}

func startBackend(t testing.TB) *echoBackend {
	t.Helper()
	b := &echoBackend{}
	s := grpc.NewServer(grpc.ForceServerCodecV2(rawCodec{}), grpc.MaxRecvMsgSize(1<<30), grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
		m, _ := grpc.MethodFromServerStream(ss)
		md, _ := metadata.FromIncomingContext(ss.Context())
		b.mu.Lock()
		b.calls = append(b.calls, backendCall{m, md})
		b.mu.Unlock()
		ss.SetHeader(metadata.Pairs("x-backend", "echo"))
		ss.SetTrailer(metadata.Pairs("x-backend-trailer", "done"))
		for {
			f := &frame{}
			if err := ss.RecvMsg(f); err != nil {
				if errors.Is(err, io.EOF) {
					return nil
				}
				return err
			}
			if err := ss.SendMsg(f); err != nil {
				return err
			}
		}
	}))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(l)
	t.Cleanup(s.Stop)
	b.addr = l.Addr().String()
	return b
}

// ---- gRPC client helpers ----

func dialGuard(t testing.TB, target string, tc *tls.Config) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(credentials.NewTLS(tc)),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawCodec{}),
			grpc.MaxCallRecvMsgSize(1<<30), grpc.MaxCallSendMsgSize(1<<30)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func bytesFrame(b []byte) *frame { return &frame{data: mem.BufferSlice{mem.SliceBuffer(b)}} }

// unary calls method with req and returns the echoed bytes.
func unary(cc *grpc.ClientConn, method string, req []byte, opts ...grpc.CallOption) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out := &frame{}
	if err := cc.Invoke(ctx, method, bytesFrame(req), out, opts...); err != nil {
		return nil, err
	}
	defer out.free()
	return out.data.Materialize(), nil
}

// recvTensorRequest builds a tensorflow.RecvTensorRequest with the given rendezvous keys.
func recvTensorRequest(keys ...string) []byte {
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, 12345) // step_id
	for _, k := range keys {
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendString(b, k)
	}
	b = protowire.AppendTag(b, 3, protowire.VarintType) // dma_ok
	b = protowire.AppendVarint(b, 1)
	return b
}

func rkey(src, dst, tensor string) string {
	return src + ";0000000000000001;" + dst + ";" + tensor + ";0:0"
}
