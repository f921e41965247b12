package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/bmpproxy/bmpproxy/internal/socket"
)

// Routers that wait to be dialed. A listener with dial instead of listen
// names routers that are passive BMP stations: they listen, and the
// collector connects. bmpproxy keeps one session to each: a dial loop per
// router connects to it, reconnecting with backoff while it cannot be
// reached, and hands each connection to the same path an accepted one
// takes (gate, setup, targets or pool, resync), as from the router's own
// address; when the session ends it dials again. The collector cannot
// tell the difference.
//
// A dial loop counts in s.accepting, like an accept loop: a freeze stops
// it (its session is handed over like any), and the successor's loop,
// finding that session among the adopted ones, waits for it to end
// before it dials the router again. A reload that removes a router stops
// its loop; its open session runs on until it ends.

// Redial backoff bounds. A session that lasted less than dialoutMin
// counts as a failure, so a router that accepts and closes at once is
// not dialed in a tight loop.
const (
	dialoutMin = time.Second
	dialoutMax = 30 * time.Second
)

// dialout is the dial loop of one router of a dial listener.
type dialout struct {
	addr netip.AddrPort
	opts atomic.Pointer[listenerOpts] // swapped by a reload
	stop chan struct{}                // closed to end the loop; owned by the Run goroutine
}

// dialoutKey names one router of one dial listener.
type dialoutKey struct {
	listener string
	addr     netip.AddrPort
}

// syncDialouts starts a dial loop for every router of cfg's dial
// listeners that has none, gives the ones that stay their listener's new
// options, and stops the others. It runs on the Run goroutine.
func (s *Server) syncDialouts(ctx, connCtx context.Context, cfg *conf.Config) {
	want := map[dialoutKey]*conf.Listener{}
	for i := range cfg.Listeners {
		l := &cfg.Listeners[i]
		for _, a := range l.Dial {
			want[dialoutKey{l.Name, a}] = l
		}
	}
	for k, d := range s.dialouts {
		if want[k] == nil {
			close(d.stop)
			delete(s.dialouts, k)
			s.opts.Logger.Info().Str("listener", k.listener).Stringer("router", k.addr).
				Msg("router no longer dialed; its open session runs on")
		}
	}
	opts := map[string]*listenerOpts{}
	for k, l := range want {
		o := opts[l.Name]
		if o == nil {
			o = s.newOpts(l)
			opts[l.Name] = o
		}
		if d := s.dialouts[k]; d != nil {
			d.opts.Store(o)
			continue
		}
		d := &dialout{addr: k.addr}
		d.opts.Store(o)
		s.dialouts[k] = d
		s.opts.Logger.Info().Str("listener", k.listener).Stringer("router", k.addr).
			Str("target", targetsText(l)).Bool("bmp", l.BMP).Msg("dialing a router that waits to be dialed")
		s.startDialout(ctx, connCtx, d)
	}
}

// startDialout starts d's loop. It runs on the Run goroutine.
func (s *Server) startDialout(ctx, connCtx context.Context, d *dialout) {
	d.stop = make(chan struct{})
	stop := d.stop
	s.accepting.Add(1)
	go func() {
		defer s.accepting.Done()
		s.dialLoop(ctx, connCtx, d, stop)
	}()
}

// stopDialouts ends every dial loop, for a freeze; thaw starts them
// again. It runs on the Run goroutine.
func (s *Server) stopDialouts() {
	for _, d := range s.dialouts {
		if d.stop != nil {
			close(d.stop)
			d.stop = nil
		}
	}
}

// thawDialouts starts the loops stopDialouts ended.
func (s *Server) thawDialouts(ctx, connCtx context.Context) {
	for _, d := range s.dialouts {
		if d.stop == nil {
			s.startDialout(ctx, connCtx, d)
		}
	}
}

// dialLoop keeps one session to d's router until stop is closed or ctx
// is done: it waits for the session it has (one adopted from a
// predecessor included) to end, takes the fds of the next, dials the
// router within the connect timeout, and hands the connection to setup.
// A failed dial, or a session shorter than dialoutMin, waits a backoff
// that doubles from dialoutMin up to dialoutMax.
//
// The session it dialed is waited for as itself; one it did not (at its
// start, or after a dial that made none) is looked up by the router's
// address.
func (s *Server) dialLoop(ctx, connCtx context.Context, d *dialout, stop <-chan struct{}) {
	var delay time.Duration
	failures := 0
	peer := peerOf(d.addr)
	var own *conn // the session this loop dialed last, until it is waited for
	stopping := func() bool { return isClosed(stop) || ctx.Err() != nil }
	for {
		o := d.opts.Load()
		c := own
		own = nil
		if c == nil {
			if c = s.sessionOf(o.Name, peer); c != nil {
				// Handed over by a predecessor, or left open when a
				// reload removed the router and this one adds it back.
				s.opts.Logger.Info().Str("listener", o.Name).Stringer("router", d.addr).Uint64("conn", c.id).
					Msg("router's session is open; dialing it again when it ends")
			}
		}
		if c != nil {
			started := c.start
			if !waitSession(ctx, stop, c) {
				return
			}
			if time.Since(started) >= dialoutMin {
				delay = 0
			}
		}
		if delay > 0 {
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-stop:
				t.Stop()
				return
			case <-ctx.Done():
				t.Stop()
				return
			}
		}
		if err := s.reserveAccept(ctx, stop); err != nil {
			return
		}
		if stopping() {
			// A select that had the session's end and stop both ready
			// may have picked the end; and the fds may have been free.
			s.budget.Release(acceptFDs)
			return
		}
		o = d.opts.Load()
		nc, err := s.dialRouter(ctx, stop, o, d.addr)
		if err == nil && stopping() {
			// Connected as the loop was stopped: a reload that removed
			// the router must not leave a new session to it.
			nc.Close()
			err = errStopped
		}
		if err != nil {
			s.budget.Release(acceptFDs)
			if stopping() {
				return
			}
			failures++
			o.state.routerDialFailures.Add(1)
			delay = min(max(2*delay, dialoutMin), dialoutMax)
			if failures == 1 || failures%10 == 0 {
				s.opts.Logger.Warn().Str("listener", o.Name).Stringer("router", d.addr).Err(err).
					Int("attempts", failures).Stringer("retry_in", delay).Msg("router not reached; dialing again with backoff")
			}
			continue
		}
		if failures > 0 {
			s.opts.Logger.Info().Str("listener", o.Name).Stringer("router", d.addr).Int("attempts", failures+1).
				Msg("router reached")
		}
		failures = 0
		delay = min(max(2*delay, dialoutMin), dialoutMax) // the next dial's, unless the session lasts
		o.state.accepted.Add(1)
		o.state.routerDials.Add(1)
		s.stats.accepted.Add(1)
		client, local := addrPort(nc.RemoteAddr()), addrPort(nc.LocalAddr())
		if st, err := admit(o, client.Addr()); err != nil {
			s.budget.Release(acceptFDs)
			s.refuse(o, nc, client, local, st, err)
			continue
		}
		c = s.newConn(o, nc, client, local)
		own = c
		s.accepted(c)
		s.track(c)
		s.setups.Add(1)
		s.workers.run(s, setupJob{ctx: connCtx, c: c, nc: nc})
	}
}

// waitSession waits for c to end and reports true, or false once stop is
// closed or ctx is done.
func waitSession(ctx context.Context, stop <-chan struct{}, c *conn) bool {
	select {
	case <-c.ended:
		return true
	case <-stop:
	case <-ctx.Done():
	}
	return false
}

// errStopped is a router's dial that connected after its loop was told
// to stop.
var errStopped = errors.New("dial loop stopped")

// dialRouter connects to router a within o's connect timeout, or until
// stop is closed or ctx is done.
func (s *Server) dialRouter(ctx context.Context, stop <-chan struct{}, o *listenerOpts, a netip.AddrPort) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, o.ConnectTimeout)
	defer cancel()
	go func() { // ends with the dial: cancel closes ctx.Done
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	dial := s.opts.Dial
	if dial == nil {
		d := net.Dialer{KeepAlive: -1}
		dial = d.DialContext
	}
	nc, err := dial(ctx, "tcp", a.String())
	if err != nil {
		return nil, err
	}
	if !o.KeepAlive.Disabled {
		socket.SetKeepAlive(nc, socket.KeepAlive(o.KeepAlive))
	}
	if _, ok := nc.(stream); !ok {
		nc.Close()
		return nil, errNotStream
	}
	return nc, nil
}

// sessionOf returns the open connection of listener whose peer is peer,
// or nil: a dialed session, or one a predecessor handed over.
func (s *Server) sessionOf(listener string, peer netip.AddrPort) *conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		if c.listener == listener && c.client == peer {
			return c
		}
	}
	return nil
}

// peerOf is the peer address that a socket connected to router a shows:
// the kernel keeps a zone only for a link-local address, and Go names it
// by its interface, where the configuration may give its index.
func peerOf(a netip.AddrPort) netip.AddrPort {
	ip := a.Addr()
	z := ip.Zone()
	switch {
	case z == "":
	case !ip.IsLinkLocalUnicast() && !ip.IsLinkLocalMulticast() && !ip.IsInterfaceLocalMulticast():
		ip = ip.WithZone("")
	default:
		if n, err := strconv.Atoi(z); err == nil {
			if ifi, err := net.InterfaceByIndex(n); err == nil {
				ip = ip.WithZone(ifi.Name)
			}
		}
	}
	return netip.AddrPortFrom(ip, a.Port())
}

// isClosed reports whether ch is closed.
func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
