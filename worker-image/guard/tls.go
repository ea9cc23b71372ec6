package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/credentials"
)

const handshakeTimeout = 10 * time.Second

// serverTLS: TLS 1.3 only, client certificate required and verified against the CA only.
func serverTLS(l *Loaded, alpn []string) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		MaxVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{l.Cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    l.CAPool,
		NextProtos:   alpn,
	}
}

// clientTLS: TLS 1.3, own certificate, server certificate verified against the CA only and
// its Subject CN must match the expect pattern (host names play no part: identities do).
func clientTLS(l *Loaded, expect string) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		MaxVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{l.Cert},
		// Offer both: the grpc inbound selects h2, the http inbound http/1.1.
		NextProtos: []string{"h2", "http/1.1"},
		// Standard host name verification is replaced by VerifyConnection below.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyServer(l.CAPool, expect, cs)
		},
	}
}

// peerError is a refused peer certificate: Identity is its CN, if any certificate came.
type peerError struct {
	Identity string
	Reason   string
}

func (e *peerError) Error() string { return e.Reason }

func verifyServer(roots *x509.CertPool, expect string, cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return &peerError{Reason: "server presented no certificate"}
	}
	leaf := cs.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	cn := leaf.Subject.CommonName
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		return &peerError{Identity: cn, Reason: x509Reason(err)}
	}
	if !matchPattern(expect, cn) {
		return &peerError{Identity: cn, Reason: fmt.Sprintf("server identity %s is not the expected %s", cn, expect)}
	}
	return nil
}

// x509Reason turns verification errors into short reasons for the log.
func x509Reason(err error) string {
	var inv x509.CertificateInvalidError
	var ua x509.UnknownAuthorityError
	switch {
	case errors.As(err, &inv) && inv.Reason == x509.Expired:
		if c := inv.Cert; c != nil {
			now := time.Now()
			if now.Before(c.NotBefore) {
				return fmt.Sprintf("certificate is not yet valid (not before %s)", c.NotBefore.UTC().Format(time.RFC3339))
			}
			return fmt.Sprintf("certificate has expired (not after %s)", c.NotAfter.UTC().Format(time.RFC3339))
		}
		return "certificate has expired or is not yet valid"
	case errors.As(err, &ua):
		return "certificate signed by unknown authority"
	case errors.As(err, &inv) && inv.Reason == x509.IncompatibleUsage:
		return "certificate not valid for this use (extended key usage)"
	}
	return strings.TrimPrefix(err.Error(), "x509: ")
}

// describeHandshakeError returns the peer identity (if a certificate was seen) and a reason.
func describeHandshakeError(err error) (identity, reason string) {
	var pe *peerError
	var cve *tls.CertificateVerificationError
	switch {
	case errors.As(err, &pe):
		return pe.Identity, pe.Reason
	case errors.As(err, &cve):
		if len(cve.UnverifiedCertificates) > 0 {
			identity = cve.UnverifiedCertificates[0].Subject.CommonName
		}
		return identity, x509Reason(cve.Err)
	case errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded):
		return "", "handshake timed out"
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "didn't provide a certificate"):
		return "", "client presented no certificate"
	case strings.Contains(msg, "unsupported versions"), strings.Contains(msg, "protocol version not supported"):
		return "", "peer does not offer TLS 1.3 (" + strings.TrimPrefix(msg, "tls: ") + ")"
	}
	return "", strings.TrimPrefix(msg, "tls: ")
}

// quietHandshakeError: connections closed before any TLS byte (TCP health probes).
func quietHandshakeError(err error) bool {
	return errors.Is(err, io.EOF) && !strings.Contains(err.Error(), "tls:")
}

func logRefusedHandshake(listener string, remote net.Addr, err error) {
	if quietHandshakeError(err) {
		return
	}
	identity, reason := describeHandshakeError(err)
	if identity == "" {
		identity = "-"
	}
	slog.Warn("refused handshake", "listener", listener, "remote", addrString(remote), "identity", identity, "reason", reason)
	refusals.record(listenerKind(listener), identity, "handshake: "+reason)
}

// listenerKind is the first word of a listener's name ("grpc", "http"): what the status shows.
func listenerKind(name string) string {
	if f := strings.Fields(name); len(f) > 0 {
		return f[0]
	}
	return name
}

func addrString(a net.Addr) string {
	if a == nil || a.String() == "" {
		return "-"
	}
	return a.String()
}

// identityOf returns the verified client certificate's Subject CN.
func identityOf(cs *tls.ConnectionState) (string, bool) {
	if cs == nil || len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return "", false
	}
	return cs.VerifiedChains[0][0].Subject.CommonName, true
}

// loggingCreds wraps grpc's TLS credentials to log refused handshakes our way.
type loggingCreds struct {
	credentials.TransportCredentials
	listener string
}

func (c loggingCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	remote := conn.RemoteAddr()
	rc, ai, err := c.TransportCredentials.ServerHandshake(conn)
	if err != nil {
		logRefusedHandshake(c.listener, remote, err)
	}
	return rc, ai, err
}

func (c loggingCreds) Clone() credentials.TransportCredentials {
	return loggingCreds{c.TransportCredentials.Clone(), c.listener}
}

// tlsListener completes server handshakes in their own goroutines (with a timeout) and hands
// only authenticated connections to Accept; refused handshakes are logged.
type tlsListener struct {
	net.Listener
	cfg   *tls.Config
	name  string
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
	mu    sync.Mutex
	err   error
}

func newTLSListener(inner net.Listener, cfg *tls.Config, name string) *tlsListener {
	l := &tlsListener{Listener: inner, cfg: cfg, name: name, conns: make(chan net.Conn), done: make(chan struct{})}
	go l.acceptLoop()
	return l
}

func (l *tlsListener) acceptLoop() {
	for {
		raw, err := l.Listener.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			l.mu.Lock()
			if l.err == nil {
				l.err = err
			}
			l.mu.Unlock()
			l.Close()
			return
		}
		go func() {
			tc := tls.Server(raw, l.cfg)
			ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
			defer cancel()
			if err := tc.HandshakeContext(ctx); err != nil {
				logRefusedHandshake(l.name, raw.RemoteAddr(), err)
				raw.Close()
				return
			}
			select {
			case l.conns <- tc:
			case <-l.done:
				tc.Close()
			}
		}()
	}
}

func (l *tlsListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.err != nil && !errors.Is(l.err, net.ErrClosed) {
			return nil, l.err
		}
		return nil, net.ErrClosed
	}
}

func (l *tlsListener) Close() error {
	var err error
	l.once.Do(func() {
		l.mu.Lock()
		if l.err == nil {
			l.err = net.ErrClosed
		}
		l.mu.Unlock()
		close(l.done)
		err = l.Listener.Close()
	})
	return err
}
