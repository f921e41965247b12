// Package proxy accepts connections, dials their targets, writes the PROXY
// header and runs the splice pump until both directions have ended.
//
// Ownership: Run owns every goroutine it starts. Each listener has one
// accept loop. Each connection is set up (header, dial) on a setup worker,
// a goroutine kept for a while to serve later setups (workers.go), and
// then runs two pump goroutines, pumpClientToTarget and pumpTargetToClient.
// A quiet pump may leave its goroutine for the idle watcher and come back
// on a new one (idle.go). The last pump to end writes the connection's
// single closing log line. Run returns only after all of them, the
// workers, the watcher and the sweeper have ended.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/bmpproxy/bmpproxy/splice"
	"github.com/rs/zerolog"
)

// Accept back-off bounds for temporary errors such as EMFILE.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// Server serves one configuration. Its zero-value hooks select the real
// network; tests and the docker integration replace them.
type Server struct {
	// Config must have had ApplyDefaults and Validate.
	Config *conf.Config
	// Logger receives lifecycle and per-connection lines. The zero value
	// logs nothing.
	Logger zerolog.Logger
	// Pump moves the bytes. Nil means a pump built from Config.Splice,
	// owned and closed by Run.
	Pump *splice.Pump
	// Listen opens one listening socket. Nil means Listen.
	Listen func(ctx context.Context, addr netip.AddrPort) (net.Listener, error)
	// Dial connects to a target. Nil means a net.Dialer. The context
	// carries the listener's connect timeout.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// Ready, if set, is called once with the bound addresses after every
	// listener is open and before the first Accept.
	Ready func(addrs []net.Addr)
	// IdleAfter is the sweep interval for idle parking (see idle.go): a
	// direction quiet for a whole interval leaves its goroutine. Zero
	// means DefaultIdleAfter; negative disables parking.
	IdleAfter time.Duration

	watcher *splice.Watcher // nil when parking is disabled
	workers *setupWorkers

	nextID atomic.Uint64
	stats  counters

	mu      sync.Mutex
	conns   map[*conn]struct{}
	closing bool           // the drain timeout has passed; new conns are aborted
	wg      sync.WaitGroup // setup and pump goroutines
}

// counters are the server-wide totals.
type counters struct {
	accepted   atomic.Uint64
	active     atomic.Int64
	refused    atomic.Uint64 // no usable header, or not a stream socket
	dialFailed atomic.Uint64
	acceptErrs atomic.Uint64
	parks      atomic.Uint64
}

// Stats is a snapshot of the server's counters.
type Stats struct {
	Accepted     uint64 // connections accepted
	Active       int64  // connections open now
	Refused      uint64 // connections closed before dialing
	DialFailures uint64 // connections closed because the target could not be reached
	AcceptErrors uint64 // failed accept calls (EMFILE and the like)
	Parked       int    // directions parked in the idle watcher, without a goroutine
	Parks        uint64 // times a direction was parked
	Splice       splice.Stats
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	st := Stats{
		Accepted:     s.stats.accepted.Load(),
		Active:       s.stats.active.Load(),
		Refused:      s.stats.refused.Load(),
		DialFailures: s.stats.dialFailed.Load(),
		AcceptErrors: s.stats.acceptErrs.Load(),
		Parks:        s.stats.parks.Load(),
	}
	if s.Pump != nil {
		st.Splice = s.Pump.Stats()
	}
	if s.watcher != nil {
		st.Parked = s.watcher.Parked()
	}
	return st
}

// listener is one open listening socket and the options its connections
// start with. A connection keeps its own pointer to opts.
type listener struct {
	opts *conf.Listener
	addr netip.AddrPort // as configured
	ln   net.Listener
}

// Run opens every listener, serves until ctx is done, then stops
// accepting, lets open connections run for Config.DrainTimeout, closes
// the rest and returns nil once every goroutine has ended. An error is
// returned only if a listener cannot be opened; then nothing is served.
func (s *Server) Run(ctx context.Context) error {
	if s.Config == nil {
		return errors.New("proxy: no configuration")
	}
	if s.Pump == nil {
		s.Pump = splice.New(splice.Config{
			Disabled: s.Config.Splice.Disabled,
			MaxPipes: s.Config.Splice.MaxPipes,
			Logger:   s.Logger,
		})
		defer s.Pump.Close()
	}
	s.mu.Lock()
	s.conns = make(map[*conn]struct{})
	s.mu.Unlock()
	s.workers = newSetupWorkers()
	defer s.workers.close()

	lns, err := s.openListeners(ctx)
	if err != nil {
		return err
	}
	stopParking, err := s.startParking()
	if err != nil {
		for _, l := range lns {
			l.ln.Close()
		}
		return err
	}
	defer stopParking()
	addrs := make([]net.Addr, len(lns))
	for i, l := range lns {
		addrs[i] = l.ln.Addr()
		s.Logger.Info().
			Str("listener", l.opts.Name).
			Stringer("addr", l.ln.Addr()).
			Stringer("target", l.opts.Target).
			Str("proxy_protocol", string(l.opts.ProxyProtocol)).
			Msg("listening")
	}
	if s.Ready != nil {
		s.Ready(addrs)
	}

	// Connections outlive ctx: they are stopped by the drain logic below.
	connCtx, abortConns := context.WithCancel(context.WithoutCancel(ctx))
	defer abortConns()
	var accepting sync.WaitGroup
	for _, l := range lns {
		accepting.Add(1)
		go func() {
			defer accepting.Done()
			s.acceptLoop(ctx, connCtx, l)
		}()
	}

	<-ctx.Done()
	for _, l := range lns {
		l.ln.Close()
	}
	accepting.Wait()
	s.drain(abortConns)
	return nil
}

func (s *Server) openListeners(ctx context.Context) ([]*listener, error) {
	listen := s.Listen
	if listen == nil {
		listen = Listen
	}
	var lns []*listener
	for i := range s.Config.Listeners {
		opts := &s.Config.Listeners[i]
		for _, a := range opts.Listen {
			ln, err := listen(ctx, a)
			if err != nil {
				for _, l := range lns {
					l.ln.Close()
				}
				return nil, fmt.Errorf("listener %q: %w", opts.Name, err)
			}
			lns = append(lns, &listener{opts: opts, addr: a, ln: ln})
		}
	}
	return lns, nil
}

// drain waits up to DrainTimeout for open connections to end by
// themselves, then closes the rest and waits for their goroutines.
func (s *Server) drain(abort context.CancelFunc) {
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	n := s.stats.active.Load()
	timeout := s.Config.DrainTimeout
	if timeout < 0 {
		timeout = 0
	}
	s.Logger.Info().Int64("connections", n).Stringer("drain_timeout", timeout).Msg("stopped accepting; draining")
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		s.mu.Lock()
		s.closing = true // connections still in setup are aborted by track
		open := make([]*conn, 0, len(s.conns))
		for c := range s.conns {
			open = append(open, c)
		}
		s.mu.Unlock()
		if len(open) > 0 {
			s.Logger.Warn().Int("connections", len(open)).Msg("drain timeout; closing open connections")
		}
		abort()
		for _, c := range open {
			c.abort(errShutdown)
		}
		<-done
	}
	s.Logger.Info().Msg("stopped")
}

// acceptLoop accepts until l is closed. Temporary failures, notably
// EMFILE/ENFILE, back off exponentially up to acceptBackoffMax; the loop
// never spins and never gives up while the listener is open.
func (s *Server) acceptLoop(ctx, connCtx context.Context, l *listener) {
	var delay time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			s.stats.acceptErrs.Add(1)
			delay = min(max(2*delay, acceptBackoffMin), acceptBackoffMax)
			s.Logger.Warn().Err(err).Str("listener", l.opts.Name).Stringer("addr", l.ln.Addr()).
				Bool("fd_exhausted", isFDExhaustion(err)).Dur("retry_in", delay).Msg("accept failed")
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return
			}
			continue
		}
		delay = 0
		s.stats.accepted.Add(1)
		s.wg.Add(1)
		s.workers.run(s, setupJob{ctx: connCtx, l: l, c: c})
	}
}

func isFDExhaustion(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}

// track registers c; after the drain timeout it aborts c at once.
func (s *Server) track(c *conn) {
	s.stats.active.Add(1)
	s.mu.Lock()
	s.conns[c] = struct{}{}
	closing := s.closing
	s.mu.Unlock()
	if closing {
		c.abort(errShutdown)
	}
}

func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.stats.active.Add(-1)
}
