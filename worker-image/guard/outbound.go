package main

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"time"
)

// outbound carries each plain loopback connection over mTLS to a peer's guard. Nothing is
// parsed: TF's gRPC client speaks h2c through it, HTTP clients HTTP/1.1.
type outbound struct {
	cfg    *Loaded
	out    Outbound
	name   string
	dial   Addr
	tlsCfg *tls.Config
	conns  connServer
}

func newOutbound(cfg *Loaded, o Outbound) *outbound {
	d, _ := parseAddr(o.Dial)
	return &outbound{cfg: cfg, out: o, name: "outbound " + o.Listen + " -> " + o.Dial, dial: d,
		tlsCfg: clientTLS(cfg, o.Expect)}
}

func (o *outbound) Serve(l net.Listener) error { return o.conns.serve(l, o.handle) }

// Shutdown stops accepting, waits for open connections until ctx ends, then closes them.
func (o *outbound) Shutdown(ctx context.Context) { o.conns.shutdown(ctx) }

func (o *outbound) handle(local net.Conn) {
	defer local.Close()
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	defer cancel()
	d := net.Dialer{KeepAlive: 30 * time.Second}
	raw, err := d.DialContext(ctx, o.dial.Network, o.dial.Address)
	if err != nil {
		slog.Warn("outbound dial failed", "listener", o.name, "error", err)
		return
	}
	remote := tls.Client(raw, o.tlsCfg)
	defer remote.Close()
	if err := remote.HandshakeContext(ctx); err != nil {
		identity, reason := describeHandshakeError(err)
		if identity == "" {
			identity = "-"
		}
		slog.Warn("refused handshake", "listener", o.name, "expect", o.out.Expect, "identity", identity, "reason", reason)
		refusals.record("outbound to "+o.out.Expect, identity, "handshake: "+reason)
		return
	}
	cancel()
	pipe(local, remote)
}

type closeWriter interface{ CloseWrite() error }

// pipe copies both ways. A clean EOF on one side half-closes the other (TLS close_notify,
// TCP FIN) so that the reverse direction can finish; an error ends both.
func pipe(a, b net.Conn) {
	errc := make(chan error, 2)
	cp := func(dst, src net.Conn) {
		_, err := io.Copy(dst, src)
		if err == nil {
			if cw, ok := dst.(closeWriter); ok {
				if cw.CloseWrite() == nil {
					errc <- nil
					return
				}
			}
			err = io.EOF // cannot half-close: treat as the end of the whole connection
		}
		errc <- err
	}
	go cp(b, a)
	go cp(a, b)
	for i := 0; i < 2; i++ {
		if err := <-errc; err != nil {
			a.Close()
			b.Close()
		}
	}
}
