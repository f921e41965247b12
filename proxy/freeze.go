package proxy

import (
	"context"
	"fmt"
	"time"
)

// DefaultFreezeTimeout bounds how long Upgrade waits for the server to
// freeze: for pipes to drain and connections in setup to finish.
const DefaultFreezeTimeout = 10 * time.Second

// freeze stops accepting, holds every direction and returns the snapshot,
// or returns an error if the server does not settle within the freeze
// timeout (the caller thaws).
func (s *Server) freeze(ctx context.Context) (*Snapshot, error) {
	s.frozen.Store(true)
	for _, l := range s.listeners {
		l.setDeadline(time.Unix(1, 0)) // wakes Accept now; see acceptLoop
		l.stopAccepting()              // and a loop waiting for fds
	}
	s.stopDialouts()
	s.accepting.Wait()

	w := s.watcher.Load()
	for _, c := range s.tracked() {
		c.freeze(w)
	}

	timeout := s.opts.FreezeTimeout
	if timeout <= 0 {
		timeout = DefaultFreezeTimeout
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		setup, busy := s.unsettled()
		if setup+busy == 0 {
			break
		}
		select {
		case <-s.settled:
		case <-tick.C:
		case <-ctx.Done():
			return nil, fmt.Errorf("freeze: %w", ctx.Err())
		case <-timer.C:
			return nil, fmt.Errorf("freeze: not settled after %s: %d connections still in setup, %d directions still delivering bytes in flight",
				timeout, setup, busy)
		}
	}
	return s.snapshot()
}

// unsettled counts connections still in setup and directions neither held
// nor ended (settledState). Once both counts are zero, no goroutine
// touches a tracked connection: each direction is held, or ended cleanly
// with its FIN passed on.
func (s *Server) unsettled() (setup, busy int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.mu.Lock()
		inSetup, n := c.settledState()
		c.mu.Unlock()
		if inSetup {
			setup++
		}
		busy += n
	}
	return setup, busy
}

// noteSettled wakes freeze to look again.
func (s *Server) noteSettled() {
	if s.frozen.Load() {
		select {
		case s.settled <- struct{}{}:
		default:
		}
	}
}

// setDeadline sets the deadline of l's Accept, if l's socket has one.
func (l *listener) setDeadline(t time.Time) {
	if dl, ok := l.ln.(interface{ SetDeadline(time.Time) error }); ok {
		dl.SetDeadline(t)
	}
}
