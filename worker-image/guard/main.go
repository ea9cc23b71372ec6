// tfe-guard: the party-to-party mTLS proxy with per-identity authorization (docs/mesh.md).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"
)

var version = "dev"

type server interface {
	Serve(net.Listener) error
	Shutdown(context.Context)
}

// listen opens a listen address; a stale Unix socket file is removed first.
func listen(a Addr) (net.Listener, error) {
	if a.Network == "unix" {
		if fi, err := os.Lstat(a.Address); err == nil {
			if fi.Mode()&os.ModeSocket == 0 {
				return nil, fmt.Errorf("%s exists and is not a socket", a.Address)
			}
			if err := os.Remove(a.Address); err != nil {
				return nil, err
			}
		}
		l, err := net.Listen("unix", a.Address)
		if err != nil {
			return nil, err
		}
		// Unlink on close only while the path is still ours: a successor guard may have replaced it.
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		// Anyone may connect: TLS authenticates.
		if err := os.Chmod(a.Address, 0o666); err != nil {
			l.Close()
			return nil, err
		}
		fi, err := os.Stat(a.Address)
		if err != nil {
			l.Close()
			return nil, err
		}
		return &ownedUnixListener{Listener: l, path: a.Address, file: fi}, nil
	}
	return net.Listen("tcp", a.Address)
}

// ownedUnixListener removes its socket file on Close unless another process has put its own there.
type ownedUnixListener struct {
	net.Listener
	path string
	file os.FileInfo
}

func (o *ownedUnixListener) Close() error {
	err := o.Listener.Close()
	if fi, serr := os.Stat(o.path); serr == nil && os.SameFile(fi, o.file) {
		_ = os.Remove(o.path)
	}
	return err
}

// Guard is a running set of listeners.
type Guard struct {
	servers   []server
	listeners []net.Listener
	names     []string
}

// Start opens every listener of the config and serves them; errc receives a fatal serve error.
func Start(cfg *Loaded, errc chan<- error) (*Guard, error) {
	g := &Guard{}
	add := func(name, addr string, s server) error {
		a, _ := parseAddr(addr)
		l, err := listen(a)
		if err != nil {
			return fmt.Errorf("%s: listen %s: %v", name, addr, err)
		}
		g.servers = append(g.servers, s)
		g.listeners = append(g.listeners, l)
		g.names = append(g.names, name)
		return nil
	}
	for i, in := range cfg.Inbound {
		name := fmt.Sprintf("inbound[%d] %s %s -> %s", i, in.Kind, in.Listen, in.Backend)
		var s server
		if in.Kind == "grpc" {
			gi, err := newGRPCInbound(cfg, in)
			if err != nil {
				g.close()
				return nil, err
			}
			s = gi
		} else {
			s = newHTTPInbound(cfg, in)
		}
		if err := add(name, in.Listen, s); err != nil {
			g.close()
			return nil, err
		}
	}
	for i, o := range cfg.Outbound {
		name := fmt.Sprintf("outbound[%d] %s -> %s (expect %s)", i, o.Listen, o.Dial, o.Expect)
		if err := add(name, o.Listen, newOutbound(cfg, o)); err != nil {
			g.close()
			return nil, err
		}
	}
	if h := cfg.Health; h != nil {
		if err := add("health "+h.Listen+" -> "+h.Backend, h.Listen, newHealth(h, cfg.Identity)); err != nil {
			g.close()
			return nil, err
		}
	}
	if p := cfg.Public; p != nil {
		ps, err := newPublic(p)
		if err == nil {
			err = add("public "+p.Listen+" -> "+p.Backend, p.Listen, ps)
		}
		if err != nil {
			g.close()
			return nil, err
		}
	}
	for i := range g.servers {
		s, l, name := g.servers[i], g.listeners[i], g.names[i]
		go func() {
			if err := s.Serve(l); err != nil && !errors.Is(err, net.ErrClosed) {
				errc <- fmt.Errorf("%s: %v", name, err)
			}
		}()
		slog.Info("listening", "what", name)
	}
	return g, nil
}

func (g *Guard) close() {
	for _, l := range g.listeners {
		l.Close()
	}
}

// Stop stops all listeners and lets open calls finish for up to grace.
func (g *Guard) Stop(grace time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	done := make(chan struct{}, len(g.servers))
	for _, s := range g.servers {
		go func() { s.Shutdown(ctx); done <- struct{}{} }()
	}
	for range g.servers {
		<-done
	}
	g.close()
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet("tfe-guard", flag.ContinueOnError)
	configPath := fs.String("config", "", "guard config (JSON, see docs/mesh.md)")
	checkOnly := fs.Bool("check-config", false, "validate the config (and load its certificates), then exit")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *showVersion {
		fmt.Println("tfe-guard", version)
		return 0
	}
	level := slog.LevelInfo
	if os.Getenv("TFE_GUARD_LOG_LEVEL") == "debug" { // every admitted call: the method inventory of docs/mesh.md
		level = slog.LevelDebug
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))
	if *configPath == "" || fs.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: tfe-guard --config guard.json [--check-config]")
		return 2
	}
	cfg, err := LoadConfig(*configPath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "tfe-guard: invalid config %s:\n%v\n", *configPath, err)
		return 2
	}
	if *checkOnly {
		fmt.Printf("tfe-guard: config %s is valid (identity %s, %d inbound, %d outbound, public %t)\n",
			*configPath, cfg.Identity, len(cfg.Inbound), len(cfg.Outbound), cfg.Public != nil)
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	errc := make(chan error, len(cfg.Inbound)+len(cfg.Outbound)+2)
	g, err := Start(cfg, errc)
	if err != nil {
		slog.Error("start failed", "error", err)
		return 1
	}
	slog.Info("tfe-guard running", "identity", cfg.Identity, "version", version)
	select {
	case <-ctx.Done():
		slog.Info("signal received, stopping")
		g.Stop(5 * time.Second)
		return 0
	case err := <-errc:
		slog.Error("listener failed", "error", err)
		g.Stop(time.Second)
		return 1
	}
}
