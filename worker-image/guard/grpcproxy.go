package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	_ "google.golang.org/grpc/encoding/gzip" // accept gzip-compressed requests too
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// frame is one gRPC message, never decoded: its buffers pass from one stream to the other.
type frame struct{ data mem.BufferSlice }

// rawCodec moves messages as opaque bytes (CodecV2: no copies of large tensors).
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" } // content-type stays application/grpc(+proto)

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	f, ok := v.(*frame)
	if !ok {
		return nil, fmt.Errorf("rawCodec: cannot marshal %T", v)
	}
	out := f.data // ownership passes to gRPC, which frees it once written
	f.data = nil
	return out, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	f, ok := v.(*frame)
	if !ok {
		return fmt.Errorf("rawCodec: cannot unmarshal into %T", v)
	}
	data.Ref() // gRPC frees data after Unmarshal returns; keep our own reference
	f.data = data
	return nil
}

func (f *frame) free() {
	if f.data != nil {
		f.data.Free()
		f.data = nil
	}
}

// Fixed HTTP/2 flow-control windows on both sides of the grpc inbound. A window set by hand
// turns off grpc-go's bandwidth-delay probing, which otherwise answers nearly every DATA frame
// of TF's small request/answer calls with a PING: one more frame, write and wake-up for TF's gRPC
// on each side of every call (README, Performance).
const (
	flowWindow     = 16 << 20
	flowConnWindow = 64 << 20
)

// grpcInbound terminates mTLS, authorizes each call and forwards it to the backend.
type grpcInbound struct {
	cfg     *Loaded
	in      Inbound
	name    string
	backend *grpc.ClientConn
	server  *grpc.Server
}

func newGRPCInbound(cfg *Loaded, in Inbound) (*grpcInbound, error) {
	baddr, _ := parseAddr(in.Backend)
	target := "passthrough:///" + baddr.Address
	if baddr.Network == "unix" {
		target = "unix://" + baddr.Address
	}
	cc, err := grpc.NewClient(target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawCodec{}),
			grpc.MaxCallRecvMsgSize(math.MaxInt32), grpc.MaxCallSendMsgSize(math.MaxInt32)),
		// The backend (a TF server) may start after us: retry it quickly.
		grpc.WithInitialWindowSize(flowWindow), grpc.WithInitialConnWindowSize(flowConnWindow),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("backend %s: %v", in.Backend, err)
	}
	g := &grpcInbound{cfg: cfg, in: in, name: "grpc " + in.Listen, backend: cc}
	creds := loggingCreds{credentials.NewTLS(serverTLS(cfg, []string{"h2"})), g.name}
	g.server = grpc.NewServer(
		grpc.Creds(creds),
		grpc.ConnectionTimeout(handshakeTimeout), // TLS handshake deadline
		grpc.UnknownServiceHandler(g.handle),
		grpc.ForceServerCodecV2(rawCodec{}),
		grpc.MaxRecvMsgSize(math.MaxInt32),
		grpc.MaxSendMsgSize(math.MaxInt32),
		grpc.InitialWindowSize(flowWindow), grpc.InitialConnWindowSize(flowConnWindow),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	return g, nil
}

func (g *grpcInbound) Serve(l net.Listener) error { return g.server.Serve(l) }

func (g *grpcInbound) Shutdown(ctx context.Context) {
	done := make(chan struct{})
	go func() { g.server.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		g.server.Stop()
	}
	g.backend.Close()
}

// allowed reports whether a rule admits identity to method.
func (g *grpcInbound) allowed(identity, method string) bool {
	for _, r := range g.in.Rules {
		if !matchAny(r.Identities, identity) {
			continue
		}
		for _, m := range r.Methods {
			if m == "*" || m == method {
				return true
			}
		}
	}
	return false
}

func (g *grpcInbound) deny(identity, method, reason string) error {
	slog.Warn("refused call", "listener", g.name, "identity", identity, "method", method, "reason", reason)
	refusals.record("grpc", identity, fmt.Sprintf("call %s: %s", method, reason))
	return status.Errorf(codes.PermissionDenied, "tfe-guard %s: identity %s may not call %s: %s", g.cfg.Identity, identity, method, reason)
}

func callerIdentity(ctx context.Context) (string, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "", false
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return "", false
	}
	return identityOf(&ti.State)
}

// forwardedMetadata drops pseudo headers and what gRPC sets itself.
func forwardedMetadata(md metadata.MD) metadata.MD {
	out := metadata.MD{}
	for k, v := range md {
		if strings.HasPrefix(k, ":") {
			continue
		}
		switch k {
		case "host", "content-type", "user-agent", "te", "grpc-timeout", "grpc-encoding",
			"grpc-accept-encoding", "grpc-message-type", "grpc-status", "grpc-message":
			continue
		}
		out[k] = v
	}
	return out
}

// sendErr: io.EOF from SendMsg means the backend already ended the call; its status
// comes from RecvMsg on the other goroutine, so this direction is simply done.
func sendErr(err error) error {
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

var bidiDesc = &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}

func (g *grpcInbound) handle(_ any, ss grpc.ServerStream) error {
	method, ok := grpc.MethodFromServerStream(ss)
	if !ok {
		return status.Error(codes.Internal, "tfe-guard: no method on stream")
	}
	identity, ok := callerIdentity(ss.Context())
	if !ok {
		return g.deny("-", method, "no verified client certificate")
	}
	if !g.allowed(identity, method) {
		return g.deny(identity, method, "no rule admits it")
	}
	slog.Debug("admitted call", "listener", g.name, "identity", identity, "method", method)
	recvTensor := method == recvTensorMethod

	// For RecvTensor, the request is checked before the backend sees anything.
	var first *frame
	if recvTensor {
		first = &frame{}
		if err := ss.RecvMsg(first); err != nil {
			if errors.Is(err, io.EOF) {
				return status.Error(codes.InvalidArgument, "tfe-guard: RecvTensor without a request")
			}
			return err
		}
		if reason := g.cfg.checkRecvTensor(identity, first.data.Materialize()); reason != "" {
			first.free()
			return g.deny(identity, method, reason)
		}
	}

	// Message bytes each way, counted by the two copying goroutines and recorded when the call ends.
	var reqBytes, respBytes int64
	defer func() {
		callStatsAll.add(g.name, identity, method, atomic.LoadInt64(&reqBytes), atomic.LoadInt64(&respBytes))
	}()

	ctx, cancel := context.WithCancel(ss.Context())
	defer cancel()
	if md, ok := metadata.FromIncomingContext(ss.Context()); ok {
		ctx = metadata.NewOutgoingContext(ctx, forwardedMetadata(md))
	}
	cs, err := g.backend.NewStream(ctx, bidiDesc, method)
	if err != nil {
		if first != nil {
			first.free()
		}
		return err
	}

	// caller -> backend
	upErr := make(chan error, 1)
	go func() {
		if first != nil {
			atomic.AddInt64(&reqBytes, int64(first.data.Len()))
			if err := cs.SendMsg(first); err != nil {
				first.free()
				upErr <- sendErr(err)
				return
			}
		}
		for {
			f := &frame{}
			if err := ss.RecvMsg(f); err != nil {
				if errors.Is(err, io.EOF) {
					upErr <- cs.CloseSend()
					return
				}
				upErr <- err
				return
			}
			if recvTensor {
				// Every RecvTensor request is checked, not only the first.
				if reason := g.cfg.checkRecvTensor(identity, f.data.Materialize()); reason != "" {
					f.free()
					upErr <- g.deny(identity, method, reason)
					return
				}
			}
			atomic.AddInt64(&reqBytes, int64(f.data.Len()))
			if err := cs.SendMsg(f); err != nil {
				f.free()
				upErr <- sendErr(err)
				return
			}
		}
	}()

	// backend -> caller
	downErr := make(chan error, 1)
	go func() {
		if md, err := cs.Header(); err == nil {
			if err := ss.SendHeader(forwardedMetadata(md)); err != nil {
				downErr <- err
				return
			}
		}
		for {
			f := &frame{}
			if err := cs.RecvMsg(f); err != nil {
				downErr <- err
				return
			}
			atomic.AddInt64(&respBytes, int64(f.data.Len()))
			if err := ss.SendMsg(f); err != nil {
				f.free()
				downErr <- err
				return
			}
		}
	}()

	for {
		select {
		case err := <-upErr:
			if err == nil {
				upErr = nil // caller done sending; wait for the backend's answer
				continue
			}
			// The caller went away or was refused mid-stream: abandon the backend call.
			cancel()
			if _, isStatus := status.FromError(err); isStatus {
				return err
			}
			return status.Errorf(codes.Canceled, "tfe-guard: caller stream: %v", err)
		case err := <-downErr:
			ss.SetTrailer(forwardedMetadata(cs.Trailer()))
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err // the backend's status, passed through
		}
	}
}
