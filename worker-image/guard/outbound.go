package main

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
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

	mu     sync.Mutex
	l      net.Listener
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

func newOutbound(cfg *Loaded, o Outbound) *outbound {
	d, _ := parseAddr(o.Dial)
	return &outbound{cfg: cfg, out: o, name: "outbound " + o.Listen + " -> " + o.Dial, dial: d,
		tlsCfg: clientTLS(cfg, o.Expect), conns: map[net.Conn]struct{}{}}
}

func (o *outbound) Serve(l net.Listener) error {
	o.mu.Lock()
	o.l = l
	o.mu.Unlock()
	for {
		c, err := l.Accept()
		if err != nil {
			o.mu.Lock()
			closed := o.closed
			o.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return err
		}
		if !o.track(c) {
			c.Close()
			return nil
		}
		o.wg.Add(1)
		go func() {
			defer o.wg.Done()
			defer o.untrack(c)
			o.handle(c)
		}()
	}
}

func (o *outbound) track(c net.Conn) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return false
	}
	o.conns[c] = struct{}{}
	return true
}

func (o *outbound) untrack(c net.Conn) {
	o.mu.Lock()
	delete(o.conns, c)
	o.mu.Unlock()
}

// Shutdown stops accepting, waits for open connections until ctx ends, then closes them.
func (o *outbound) Shutdown(ctx context.Context) {
	o.mu.Lock()
	o.closed = true
	if o.l != nil {
		o.l.Close()
	}
	o.mu.Unlock()
	done := make(chan struct{})
	go func() { o.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		o.mu.Lock()
		for c := range o.conns {
			c.Close()
		}
		o.mu.Unlock()
		<-done
	}
}

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
