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
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/bmpproxy/bmpproxy/internal/socket"
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
	// listener is open and accepting.
	Ready func(addrs []net.Addr)
	// IdleAfter is the sweep interval for idle parking (see idle.go): a
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
	// be held (see handover.go). Zero means DefaultFreezeTimeout.
	FreezeTimeout time.Duration
	// Takeover is called by Run, with Inherit set, once everything is
	// adopted and before any byte moves. It returns when this process may
	// serve, or an error, and then Run releases the inherited sockets
	// without shutting them down and returns it. Nil means go at once.
	Takeover func() error

	watcher *splice.Watcher // nil when parking is disabled
	workers *setupWorkers

	initOnce sync.Once
	reloads  chan reloadReq  // served by Run
	upgrades chan upgradeReq // served by Run
	stopped  chan struct{}   // closed when Run stops serving reloads and upgrades

	frozen  atomic.Bool   // set during a handover; see handover.go
	settled chan struct{} // a frozen connection settled or ended

	// Owned by the Run goroutine.
	listeners map[netip.AddrPort]*listener // by bound address
	accepting sync.WaitGroup               // accept loops

	ready   atomic.Bool // every listener is open and accepting
	routers routerTable

	nextID atomic.Uint64
	stats  counters

	mu      sync.Mutex
	conns   map[*conn]struct{}
	states  map[string]*listenerState // per listener name; entries are never removed
	closing bool                      // the drain timeout has passed; new conns are aborted
	wg      sync.WaitGroup            // setup and pump goroutines
}

// counters are the server-wide totals.
type counters struct {
	accepted       atomic.Uint64
	active         atomic.Int64
	dialFailed     atomic.Uint64
	acceptErrs     atomic.Uint64
	parks          atomic.Uint64
	reloads        atomic.Uint64
	reloadFailures atomic.Uint64

	upgrades        atomic.Uint64 // handovers that ended in this process
	upgradeFailures atomic.Uint64
	carried         atomic.Uint64 // connections received from predecessors
}

// Counters are the server-wide counters that carry over an upgrade.
type Counters struct {
	Accepted        uint64 `json:"accepted"`         // connections accepted
	DialFailures    uint64 `json:"dial_failures"`    // connections closed because the target could not be reached
	AcceptErrors    uint64 `json:"accept_errors"`    // failed accept calls (EMFILE and the like)
	Parks           uint64 `json:"parks"`            // times a direction was parked
	Reloads         uint64 `json:"reloads"`          // reloads applied in full
	ReloadFailures  uint64 `json:"reload_failures"`  // reloads rejected or applied in part
	Upgrades        uint64 `json:"upgrades"`         // upgrades that handed the server over, counted by the successor
	UpgradeFailures uint64 `json:"upgrade_failures"` // upgrades that failed; the predecessor kept serving
	CarriedOver     uint64 `json:"carried_over"`     // connections received from predecessors, over all upgrades
}

// saved reads the counters that carry over an upgrade.
func (c *counters) saved() Counters {
	return Counters{
		Accepted:        c.accepted.Load(),
		DialFailures:    c.dialFailed.Load(),
		AcceptErrors:    c.acceptErrs.Load(),
		Parks:           c.parks.Load(),
		Reloads:         c.reloads.Load(),
		ReloadFailures:  c.reloadFailures.Load(),
		Upgrades:        c.upgrades.Load(),
		UpgradeFailures: c.upgradeFailures.Load(),
		CarriedOver:     c.carried.Load(),
	}
}

// restore sets the counters a predecessor saved.
func (c *counters) restore(v Counters) {
	c.accepted.Store(v.Accepted)
	c.dialFailed.Store(v.DialFailures)
	c.acceptErrs.Store(v.AcceptErrors)
	c.parks.Store(v.Parks)
	c.reloads.Store(v.Reloads)
	c.reloadFailures.Store(v.ReloadFailures)
	c.upgrades.Store(v.Upgrades)
	c.upgradeFailures.Store(v.UpgradeFailures)
	c.carried.Store(v.CarriedOver)
}

// Stats is a snapshot of the server's counters.
type Stats struct {
	Counters
	Active            int64  // connections open now
	Refused           uint64 // connections closed before dialing, for any reason below
	RefusedNotAllowed uint64 // client outside allow
	RefusedLimit      uint64 // listener at max_connections
	RefusedHeader     uint64 // spoofed, missing or unreadable inbound PROXY header
	RefusedBMP        uint64 // failed the BMP pre-check
	Parked            int    // directions parked in the idle watcher, without a goroutine
	Splice            splice.Stats
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	st := Stats{Counters: s.stats.saved(), Active: s.stats.active.Load()}
	// Refusals are counted per listener name; the totals are their sums.
	var refused [numRefusals]uint64
	s.mu.Lock()
	for _, ls := range s.states {
		for i := range refused {
			refused[i] += ls.refused[i].Load()
		}
	}
	s.mu.Unlock()
	for _, n := range refused {
		st.Refused += n
	}
	st.RefusedNotAllowed, st.RefusedLimit = refused[refusedNotAllowed], refused[refusedLimit]
	st.RefusedHeader, st.RefusedBMP = refused[refusedHeader], refused[refusedBMP]
	if s.Pump != nil {
		st.Splice = s.Pump.Stats()
	}
	if s.watcher != nil {
		st.Parked = s.watcher.Parked()
	}
	return st
}

// listener is one open listening socket. Its options are swapped by a
// reload; a connection keeps the *listenerOpts it was accepted with.
type listener struct {
	opts atomic.Pointer[listenerOpts]
	addr netip.AddrPort // bound
	ln   net.Listener
}

// listenerOpts is one listener's configuration as of a reload, with what
// is derived from it. It is never modified once published.
type listenerOpts struct {
	conf.Listener
	log   zerolog.Logger
	state *listenerState // counters of every listener with this name
}

// Run opens every listener, serves until ctx is done, then stops
// accepting, lets open connections run for Config.DrainTimeout, closes
// the rest and returns nil once every goroutine has ended. An error is
// returned only if a listener cannot be opened (or, with Inherit, the
// takeover fails); then nothing is served. After a successful Upgrade it
// returns ErrHandedOver, having let go of every socket. Run applies
// reloads and upgrades on its own goroutine, which alone owns the set of
// listeners.
func (s *Server) Run(ctx context.Context) error {
	s.init()
	defer close(s.stopped)
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
	s.states = make(map[string]*listenerState)
	s.mu.Unlock()
	s.workers = newSetupWorkers()
	defer s.workers.close()
	s.listeners = make(map[netip.AddrPort]*listener)

	if err := checkTransparent(s.Config); err != nil {
		return err
	}
	stopParking, err := s.startParking()
	if err != nil {
		return err
	}
	defer stopParking()
	var inherited inheritedListeners
	if s.Inherit != nil {
		if inherited, err = s.adopt(); err != nil {
			return err
		}
	}
	lns, err := s.openListeners(ctx, s.Config, inherited)
	if err != nil {
		inherited.close()
		s.release()
		return err
	}
	if s.Inherit != nil {
		for a := range inherited { // addresses the configuration no longer has
			s.Logger.Warn().Stringer("addr", a).Msg("upgrade: closing an inherited listener the configuration does not name")
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

	// Connections outlive ctx: they are stopped by the drain logic below.
	connCtx, abortConns := context.WithCancel(context.WithoutCancel(ctx))
	defer abortConns()
	for _, l := range lns {
		s.serve(ctx, connCtx, l)
	}
	s.ready.Store(true)
	if s.Ready != nil {
		s.Ready(addrs)
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
		s.wg.Wait() // every direction was held: returns at once
		return ErrHandedOver
	}
	for _, l := range s.listeners {
		l.ln.Close()
	}
	s.accepting.Wait()
	s.drain(abortConns)
	return nil
}

func (s *Server) init() {
	s.initOnce.Do(func() {
		s.reloads = make(chan reloadReq)
		s.upgrades = make(chan upgradeReq)
		s.stopped = make(chan struct{})
		s.settled = make(chan struct{}, 1)
	})
}

// serve registers l and starts its accept loop.
func (s *Server) serve(ctx, connCtx context.Context, l *listener) {
	s.listeners[l.addr] = l
	o := l.opts.Load()
	s.Logger.Info().
		Str("listener", o.Name).
		Stringer("addr", l.ln.Addr()).
		Stringer("target", o.Target).
		Str("proxy_protocol", string(o.ProxyProtocol)).
		Msg("listening")
	s.startAccepting(ctx, connCtx, l)
}

// startAccepting starts l's accept loop.
func (s *Server) startAccepting(ctx, connCtx context.Context, l *listener) {
	s.accepting.Add(1)
	go func() {
		defer s.accepting.Done()
		s.acceptLoop(ctx, connCtx, l)
	}()
}

// newOpts derives a listener's runtime options from its configuration.
func (s *Server) newOpts(c *conf.Listener) *listenerOpts {
	o := &listenerOpts{Listener: *c}
	if s.LogFor != nil {
		o.log = s.LogFor(c.Log)
	} else {
		lvl, err := zerolog.ParseLevel(c.Log.Level)
		if err != nil {
			lvl = s.Logger.GetLevel()
		}
		o.log = s.Logger.Level(lvl)
	}
	s.mu.Lock()
	if s.states[c.Name] == nil {
		s.states[c.Name] = new(listenerState)
	}
	o.state = s.states[c.Name]
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
	listen := s.Listen
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
			if s.frozen.Load() && errors.Is(err, os.ErrDeadlineExceeded) {
				return // a handover; the socket stays open and queues
			}
			s.stats.acceptErrs.Add(1)
			delay = min(max(2*delay, acceptBackoffMin), acceptBackoffMax)
			s.Logger.Warn().Err(err).Str("listener", l.opts.Load().Name).Stringer("addr", l.ln.Addr()).
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
		client, local := addrPort(c.RemoteAddr()), addrPort(c.LocalAddr())
		if err := admit(o, client.Addr()); err != nil {
			s.refuse(o, c, client, local, err)
			continue
		}
		conn := s.newConn(o, c, client, local)
		s.track(conn)
		s.wg.Add(1)
		s.workers.run(s, setupJob{ctx: connCtx, c: conn, nc: c})
	}
}

// refuse closes a connection that failed the gate, counts it and writes
// its closing line. It has no target side.
func (s *Server) refuse(o *listenerOpts, c net.Conn, client, local netip.AddrPort, err error) {
	start := time.Now()
	c.Close()
	s.countRefusal(o, err)
	if o.log.GetLevel() > zerolog.WarnLevel {
		return
	}
	o.log.Warn().
		Str("listener", o.Name).
		Stringer("client", client).
		Stringer("local", local).
		Str("target", o.Target.String()).
		Int64("bytes_from_client", 0).
		Int64("bytes_to_client", 0).
		Stringer("duration", time.Since(start)).
		Str("reason", "refused").
		Err(err).
		Msg("connection closed")
}

// countRefusal counts a connection refused before dialing, under its
// listener and reason.
func (s *Server) countRefusal(o *listenerOpts, err error) {
	o.state.refused[refusalOf(err)].Add(1)
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
		c.abort(errShutdown)
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
