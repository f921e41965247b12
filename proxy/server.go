// Package proxy accepts connections, dials their targets, writes the PROXY
// header and pumps the bytes until both directions have ended.
//
// One connection's path, file by file: the accept loop (server.go), once
// the fd budget has room for it (fdbudget.go), admits it and hands it to
// a setup worker (workers.go); setup (setup.go) is a straight pipeline of
// stages from the accepted socket to the connected target, with one exit
// for every failure; then its two directions
// (direction.go) run, park, are held and end as a state machine; the one
// that ends last writes the connection's closing line (conn.go). Reload
// (reload.go) and upgrade (handover.go, freeze.go, snapshot.go, adopt.go)
// reach the Run goroutine as requests.
//
// Ownership: New builds a Server; Run, called once, owns every goroutine
// it starts: one accept loop per listening socket, the setup workers, a
// goroutine per running direction, the idle watcher and its sweeper. Run
// returns only after all of them have ended.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/bmpproxy/bmpproxy/bmp/rib"
	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/bmpproxy/bmpproxy/fdbudget"
	"github.com/bmpproxy/bmpproxy/internal/socket"
	"github.com/bmpproxy/bmpproxy/splice"
	"github.com/rs/zerolog"
)

// Accept back-off bounds for temporary errors such as EMFILE.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// Options are a Server's hooks and tuning. The zero value serves the real
// network with the defaults; tests and docker mode set hooks.
type Options struct {
	// Logger receives lifecycle and per-connection lines. The zero value
	// logs nothing.
	Logger zerolog.Logger
	// Pump moves the bytes. Nil means a pump built from the
	// configuration's splice settings, owned and closed by Run.
	Pump *splice.Pump
	// Listen opens one listening socket. Nil means socket.Listen.
	Listen func(ctx context.Context, addr netip.AddrPort) (net.Listener, error)
	// Dial connects to a target. Nil means a net.Dialer, or a transparent
	// one for proxy_protocol transparent. The context carries the
	// listener's connect timeout.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// Ready, if set, is called once with the bound addresses after every
	// listener is open and accepting.
	Ready func(addrs []net.Addr)
	// IdleAfter is the sweep interval for idle parking (direction.go): a
	// direction quiet for a whole interval leaves its goroutine. Zero
	// means DefaultIdleAfter; negative disables parking.
	IdleAfter time.Duration
	// LogFor returns the logger for a listener's connection lines, given
	// its log settings (defaults applied). Nil means Logger at that level.
	LogFor func(conf.Log) zerolog.Logger
	// Inherit, if set, is a predecessor's snapshot (see Upgrade): Run
	// adopts its listeners and connections instead of opening anew the
	// addresses it has, then calls Takeover before serving.
	Inherit *Snapshot
	// FreezeTimeout bounds how long Upgrade waits for every direction to
	// be held (freeze.go). Zero means DefaultFreezeTimeout.
	FreezeTimeout time.Duration
	// LookupHost resolves a target name for the checks at start and on
	// reload (targets.go). Nil means net.DefaultResolver.LookupHost.
	LookupHost func(ctx context.Context, host string) ([]string, error)
	// LookupNetIP resolves a pool's target names into its members
	// (pool.go). Nil means net.DefaultResolver.LookupNetIP.
	LookupNetIP func(ctx context.Context, host string) ([]netip.Addr, error)
	// Takeover is called by Run, with Inherit set, once everything is
	// adopted and before any byte moves. It returns when this process may
	// serve, or an error, and then Run releases the inherited sockets
	// without shutting them down and returns it. Nil means go at once.
	Takeover func() error
	// FDBudget is the number of fds connections and pipes may hold (see
	// fdbudget.go). Zero means New sizes it from RLIMIT_NOFILE. Pipes are
	// counted only in a pump New builds.
	FDBudget int
}

// Server serves one configuration. Make it with New; its zero value only
// answers Stats, ListenerStats, Routers and IsReady, with zeros.
type Server struct {
	opts Options // as given to New, Pump set
	// ownPump says Run closes opts.Pump: New built it.
	ownPump bool

	reloads  chan reloadReq  // served by Run
	upgrades chan upgradeReq // served by Run
	stopped  chan struct{}   // closed when Run stops serving reloads and upgrades
	ran      atomic.Bool     // Run was called

	watcher atomic.Pointer[splice.Watcher] // nil while parking is off
	ribMem  *rib.Memory                    // resync_memory, shared by every router
	workers *setupWorkers
	budget  *fdbudget.Budget // set by New; nil, counting nothing, in a zero Server

	frozen  atomic.Bool   // set during a handover; see freeze.go
	settled chan struct{} // a frozen connection settled or ended

	// Owned by the Run goroutine.
	cfg       *conf.Config
	listeners map[netip.AddrPort]*listener // by bound address
	accepting sync.WaitGroup               // accept loops

	ready    atomic.Bool // every listener is open and accepting
	routers  routerTable
	targets  targetTable     // the configured listeners' targets
	checks   sync.WaitGroup  // target checks in flight (targets.go)
	checkCtx context.Context // ends the checks; owned by the Run goroutine

	nextID atomic.Uint64
	stats  counters

	// setups counts connections between their accept and their start
	// (or their closing line); live counts directions that started and
	// have not ended, in any state (direction.go). Both are zero when
	// nothing is served.
	setups sync.WaitGroup
	live   sync.WaitGroup

	mu      sync.Mutex
	conns   map[*conn]struct{}
	states  map[string]*listenerState // per listener name; entries are never removed
	closing bool                      // the drain timeout has passed; new conns are aborted
	pools   map[string]*listenerPool  // per pool listener's name; changed by the Run goroutine (pool.go)

	dialouts map[dialoutKey]*dialout // routers that wait to be dialed; owned by the Run goroutine (dialout.go)

	poolRuns sync.WaitGroup // the pools' loops (runPools)
}

// New builds a Server for cfg, which is complete: from conf.Parse, or
// built in Go and completed (conf's ApplyDefaults or Complete). It checks
// what Run will need: a valid configuration, the privilege that
// transparent listeners need, and an fd limit with room for a connection
// (fdbudget.go). It starts nothing, and takes cfg: the caller must not
// change it.
func New(cfg *conf.Config, opts Options) (*Server, error) {
	if cfg == nil {
		return nil, errors.New("proxy: no configuration")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("proxy: invalid configuration: %w", err)
	}
	if err := checkTransparent(cfg); err != nil {
		return nil, err
	}
	s := &Server{
		opts:      opts,
		cfg:       cfg,
		ribMem:    rib.NewMemory(int64(cfg.ResyncMemory)),
		reloads:   make(chan reloadReq),
		upgrades:  make(chan upgradeReq),
		stopped:   make(chan struct{}),
		settled:   make(chan struct{}, 1),
		listeners: make(map[netip.AddrPort]*listener),
		conns:     make(map[*conn]struct{}),
		states:    make(map[string]*listenerState),
		pools:     make(map[string]*listenerPool),
		dialouts:  make(map[dialoutKey]*dialout),
	}
	if err := s.openBudget(); err != nil {
		return nil, err
	}
	if s.opts.Pump == nil {
		s.opts.Pump = splice.New(splice.Config{
			Disabled: cfg.Splice.Disabled,
			MaxPipes: cfg.Splice.MaxPipes,
			Logger:   opts.Logger,
			FDs:      s.budget,
		})
		s.ownPump = true
	}
	return s, nil
}

// listener is one open listening socket. Its options are swapped by a
// reload; a connection keeps the *listenerOpts it was accepted with.
type listener struct {
	opts atomic.Pointer[listenerOpts]
	addr netip.AddrPort // bound
	ln   net.Listener
	stop chan struct{} // closed to end the accept loop; owned by the Run goroutine
}

// listenerOpts is one listener's configuration as of a reload, with what
// is derived from it. It is never modified once published.
type listenerOpts struct {
	conf.Listener
	log   zerolog.Logger
	state *listenerState // counters of every listener with this name
	pool  *listenerPool  // the listener's pool, if it has one
}

// errRunTwice refuses a second Run.
var errRunTwice = errors.New("proxy: Run was already called on this server")

// Run opens every listener, serves until ctx is done, then stops
// accepting, lets open connections run for the drain timeout, closes the
// rest and returns nil once every goroutine has ended. An error is
// returned only if a listener cannot be opened (or, with Inherit, the
// takeover fails); then nothing is served. After a successful Upgrade it
// returns ErrHandedOver, having let go of every socket. Run applies
// reloads and upgrades on its own goroutine, which alone owns the set of
// listeners. It may be called once.
func (s *Server) Run(ctx context.Context) error {
	if s.stopped == nil {
		return errors.New("proxy: the server was not made by New")
	}
	if !s.ran.CompareAndSwap(false, true) {
		return errRunTwice
	}
	defer close(s.stopped)
	if s.ownPump {
		defer s.opts.Pump.Close()
	}
	s.workers = newSetupWorkers()
	defer s.workers.close()

	stopParking, err := s.startParking()
	if err != nil {
		return err
	}
	defer stopParking()
	if err := s.syncPools(s.cfg); err != nil {
		return err
	}
	defer s.stopPools()
	var inherited inheritedListeners
	if s.opts.Inherit != nil {
		if inherited, err = s.adopt(); err != nil {
			return err
		}
	}
	lns, err := s.openListeners(ctx, s.cfg, inherited)
	if err != nil {
		inherited.close()
		s.release()
		return err
	}
	if s.opts.Inherit != nil {
		for a := range inherited { // addresses the configuration no longer has
			s.opts.Logger.Warn().Stringer("addr", a).Msg("upgrade: closing an inherited listener the configuration does not name")
		}
		inherited.close()
		if err := s.takeOver(lns); err != nil {
			return err
		}
		s.resumeHeld()
	}
	addrs := make([]net.Addr, len(lns))
	for i, l := range lns {
		addrs[i] = l.ln.Addr()
	}

	// Target checks end with Run, whether it stops or hands over.
	checkCtx, stopChecks := context.WithCancel(ctx)
	defer s.checks.Wait()
	defer stopChecks()
	s.checkCtx = checkCtx
	s.checkTargets(s.cfg)

	// Connections outlive ctx: they are stopped by the drain logic below.
	connCtx, abortConns := context.WithCancel(context.WithoutCancel(ctx))
	defer abortConns()
	for _, l := range lns {
		s.serve(ctx, connCtx, l)
	}
	s.runPools()
	s.syncDialouts(ctx, connCtx, s.cfg)
	s.ready.Store(true)
	if s.opts.Ready != nil {
		s.opts.Ready(addrs)
	}

	handedOver := false
	for !handedOver {
		select {
		case req := <-s.reloads:
			req.done <- s.apply(ctx, connCtx, req.cfg)
			continue
		case req := <-s.upgrades:
			err := s.upgrade(ctx, connCtx, req)
			handedOver = err == nil
			req.done <- err
			continue
		case <-ctx.Done():
		}
		break
	}
	s.ready.Store(false)
	if handedOver {
		s.release()
		s.live.Wait() // every direction was held and is released: returns at once
		return ErrHandedOver
	}
	for _, l := range s.listeners {
		l.ln.Close()
	}
	s.accepting.Wait()
	s.drain(abortConns)
	return nil
}

// serve registers l and starts its accept loop.
func (s *Server) serve(ctx, connCtx context.Context, l *listener) {
	s.listeners[l.addr] = l
	o := l.opts.Load()
	s.opts.Logger.Info().
		Str("listener", o.Name).
		Stringer("addr", l.ln.Addr()).
		Str("target", targetsText(&o.Listener)).
		Str("proxy_protocol", string(o.ProxyProtocol)).
		Bool("bmp", o.BMP).
		Msg("listening")
	s.startAccepting(ctx, connCtx, l)
}

// startAccepting starts l's accept loop.
func (s *Server) startAccepting(ctx, connCtx context.Context, l *listener) {
	l.stop = make(chan struct{})
	stop := l.stop
	s.accepting.Add(1)
	go func() {
		defer s.accepting.Done()
		s.acceptLoop(ctx, connCtx, l, stop)
	}()
}

// newOpts derives a listener's runtime options from its configuration.
func (s *Server) newOpts(c *conf.Listener) *listenerOpts {
	o := &listenerOpts{Listener: *c}
	if s.opts.LogFor != nil {
		o.log = s.opts.LogFor(c.Log)
	} else {
		lvl, err := zerolog.ParseLevel(c.Log.Level)
		if err != nil {
			lvl = s.opts.Logger.GetLevel()
		}
		o.log = s.opts.Logger.Level(lvl)
	}
	s.mu.Lock()
	if s.states[c.Name] == nil {
		s.states[c.Name] = new(listenerState)
	}
	o.state = s.states[c.Name]
	if c.Pool != nil {
		o.pool = s.pools[c.Name] // nil only if the pool could not be made, which syncPools reported
	}
	s.mu.Unlock()
	return o
}

// openListeners opens every address of every listener in cfg, or none.
// An address in inherited (a predecessor's socket) is taken from there.
func (s *Server) openListeners(ctx context.Context, cfg *conf.Config, inherited inheritedListeners) ([]*listener, error) {
	var lns []*listener
	for i := range cfg.Listeners {
		c := &cfg.Listeners[i]
		o := s.newOpts(c)
		for _, a := range c.Listen {
			var l *listener
			var err error
			if ln, b, ok := inherited.take(c.Name, a); ok {
				l, err = newListener(ln, b, o)
			} else {
				l, err = s.open(ctx, a, o)
			}
			if err != nil {
				for _, l := range lns {
					l.ln.Close()
				}
				return nil, err
			}
			lns = append(lns, l)
		}
	}
	return lns, nil
}

// open opens one listening socket for o.
func (s *Server) open(ctx context.Context, a netip.AddrPort, o *listenerOpts) (*listener, error) {
	listen := s.opts.Listen
	if listen == nil {
		listen = socket.Listen
	}
	ln, err := listen(ctx, a)
	if err != nil {
		return nil, fmt.Errorf("listener %q: %w", o.Name, err)
	}
	return newListener(ln, boundAddr(ln, a), o)
}

// newListener makes a listener of ln, bound to a, newly opened or a
// predecessor's, applying o's keepalive settings. On error ln is closed.
func newListener(ln net.Listener, a netip.AddrPort, o *listenerOpts) (*listener, error) {
	if err := socket.SetKeepAlive(ln, socket.KeepAlive(o.KeepAlive)); err != nil {
		ln.Close()
		return nil, fmt.Errorf("listener %q: keepalive on %s: %w", o.Name, a, err)
	}
	l := &listener{addr: a, ln: ln}
	l.opts.Store(o)
	return l, nil
}

// boundAddr is the address ln is bound to, which differs from the
// configured a when a asked for port 0.
func boundAddr(ln net.Listener, a netip.AddrPort) netip.AddrPort {
	if b := addrPort(ln.Addr()); b.IsValid() {
		return b
	}
	return a
}

// drain waits up to the drain timeout for open connections to end by
// themselves, then closes the rest and waits for their directions to
// end. The accept loops have ended: no setup starts.
func (s *Server) drain(abort context.CancelFunc) {
	done := make(chan struct{})
	go func() {
		s.setups.Wait() // after this, no direction starts
		s.live.Wait()
		close(done)
	}()
	n := s.stats.active.Load()
	timeout := max(s.cfg.DrainTimeout, 0)
	s.opts.Logger.Info().Int64("connections", n).Stringer("drain_timeout", timeout).Msg("stopped accepting; draining")
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
			s.opts.Logger.Warn().Int("connections", len(open)).Msg("drain timeout; closing open connections")
		}
		abort()
		for _, c := range open {
			c.abort()
		}
		<-done
	}
	s.opts.Logger.Info().Msg("stopped")
}

// acceptLoop accepts until l is closed or ctx is done, or stops at a
// freeze (stop). Before each accept it takes the connection's fds,
// waiting while the fd budget is spent (fdbudget.go). Temporary failures,
// notably EMFILE/ENFILE, back off exponentially up to acceptBackoffMax;
// the loop never spins and never gives up while the listener is open. A
// connection that passes the gate is tracked here, before a setup worker
// has it, so that a freeze always sees it.
func (s *Server) acceptLoop(ctx, connCtx context.Context, l *listener, stop <-chan struct{}) {
	var delay time.Duration
	for {
		if err := s.reserveAccept(ctx, stop); err != nil {
			return // stopping, or frozen for a handover; the socket stays open and queues
		}
		nc, err := l.ln.Accept()
		if err != nil {
			s.budget.Release(acceptFDs)
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			if s.frozen.Load() && errors.Is(err, os.ErrDeadlineExceeded) {
				return // a handover; the socket stays open and queues
			}
			s.stats.acceptErrs.Add(1)
			delay = min(max(2*delay, acceptBackoffMin), acceptBackoffMax)
			s.opts.Logger.Warn().Err(err).Str("listener", l.opts.Load().Name).Stringer("addr", l.ln.Addr()).
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
		o := l.opts.Load()
		o.state.accepted.Add(1)
		client, local := addrPort(nc.RemoteAddr()), addrPort(nc.LocalAddr())
		if st, err := admit(o, client.Addr()); err != nil {
			s.budget.Release(acceptFDs)
			s.refuse(o, nc, client, local, st, err)
			continue
		}
		c := s.newConn(o, nc, client, local)
		s.accepted(c)
		s.track(c)
		s.setups.Add(1)
		s.workers.run(s, setupJob{ctx: connCtx, c: c, nc: nc})
	}
}

// refuse closes a connection that failed the gate at st, counts it and
// writes its closing line. It never had a target side, nor a conn.
func (s *Server) refuse(o *listenerOpts, nc net.Conn, client, local netip.AddrPort, st stage, err error) {
	start := time.Now()
	st.count(s, o) // before the close, which the client may act on at once
	nc.Close()
	if o.log.GetLevel() > zerolog.WarnLevel {
		return
	}
	o.log.Warn().
		Str("listener", o.Name).
		Stringer("client", client).
		Stringer("local", local).
		Str("target", targetsText(&o.Listener)).
		Int64("bytes_from_client", 0).
		Int64("bytes_to_client", 0).
		Stringer("duration", time.Since(start)).
		Str("reason", st.reason()).
		Err(err).
		Msg("connection closed")
}

// IsReady reports whether every listener is open and accepting.
func (s *Server) IsReady() bool { return s.ready.Load() }

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
		c.abort()
	}
}

// tracked returns the tracked connections as of now.
func (s *Server) tracked() []*conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	return conns
}

func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.stats.active.Add(-1)
	s.noteSettled()
}
