package main

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"
)

// connServer is the accept loop of a listener whose connections are each handled by one
// goroutine (the outbound pipes and the public TLS endpoint): it tracks the open connections so
// that Shutdown can wait for them, then close what is still open when its context ends.
type connServer struct {
	// admit, when set, is asked before a connection is handled; false closes it at once. The
	// returned release runs when the connection's handler is done.
	admit func() (release func(), ok bool)

	mu     sync.Mutex
	l      net.Listener
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

func (s *connServer) serve(l net.Listener, handle func(net.Conn)) error {
	s.mu.Lock()
	s.l = l
	if s.conns == nil {
		s.conns = map[net.Conn]struct{}{}
	}
	s.mu.Unlock()
	for {
		c, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
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
		release := func() {}
		if s.admit != nil {
			r, ok := s.admit()
			if !ok {
				c.Close()
				continue
			}
			release = r
		}
		if !s.track(c) {
			release()
			c.Close()
			return nil
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer release()
			defer s.untrack(c)
			handle(c)
		}()
	}
}

func (s *connServer) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *connServer) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// shutdown stops accepting, waits for open connections until ctx ends, then closes them.
func (s *connServer) shutdown(ctx context.Context) {
	s.mu.Lock()
	s.closed = true
	if s.l != nil {
		s.l.Close()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		<-done
	}
}
