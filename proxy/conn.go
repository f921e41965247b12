package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/bmpproxy/bmpproxy/internal/socket"
	"github.com/bmpproxy/bmpproxy/splice"
	"github.com/rs/zerolog"
)

// Sentinel reasons a connection ends for. They appear in the closing log
// line's "error" field.
var (
	errShutdown    = errors.New("closed at drain timeout")
	errNotStream   = errors.New("connection does not expose its socket")
	errShortHeader = errors.New("short write of PROXY header")
)

// stream is a connected TCP socket that the pump can splice.
type stream interface {
	net.Conn
	splice.Conn
}

// conn is one proxied connection. Its fields are plain data so that its
// state can be described and handed over; the sockets are the only
// resources it owns.
type conn struct {
	id       uint64
	opts     *listenerOpts // as accepted; holds one slot of opts.active
	listener string
	via      netip.AddrPort // the trusted proxy the client came through, if any
	client   netip.AddrPort // unmapped
	local    netip.AddrPort // unmapped; the address the client connected to
	target   string         // configured target, host:port
	upstream string         // the address dialed, as resolved; empty until connected
	start    time.Time
	bmp      bool           // the BMP pre-check passed
	router   routerInfo     // from the Initiation message, if it came first
	session  atomic.Bool    // set once the target is connected: Routers lists it
	up       splice.Counter // client → target payload bytes
	down     splice.Counter // target → client payload bytes

	srv *Server // owner: resumes held directions when the connection fails
	cc  stream  // client socket
	// pending counts pump goroutines still running; the last one to end
	// finishes the connection.
	pending atomic.Int32

	mu        sync.Mutex
	tc        stream // target socket; nil until dialed
	cause     error  // first reason to end, nil for a clean close
	stage     string // where cause happened: "dial", "client", "target", ...
	aborted   bool
	started   bool            // setup is done: the pumps run, or are held
	idle      [2]idleState    // per direction (up, down); see idle.go
	keepAlive bool            // keepalive set on tc (by the sweeper)
	watcher   *splice.Watcher // set when the pumps start; nil: no parking
}

// fail records err as the connection's reason to end unless one is
// already recorded, and closes both sockets so every pump returns.
func (c *conn) fail(stage string, err error) {
	c.mu.Lock()
	if c.cause == nil {
		c.cause, c.stage = err, stage
	}
	c.aborted = true
	tc := c.tc
	parked := c.unparkLocked()
	held := c.takeHeldLocked()
	c.mu.Unlock()
	// Parked directions resume before the sockets close, so their fds are
	// still theirs when they leave the watcher; they then see the close.
	for _, resume := range parked {
		resume()
	}
	if c.cc != nil {
		c.cc.Close()
	}
	if tc != nil {
		tc.Close()
	}
	// Held directions (a frozen server) have no goroutine to see the
	// close; they get one.
	for _, d := range held {
		go c.srv.resume(c, d)
	}
}

// abort ends the connection from outside (shutdown).
func (c *conn) abort(err error) { c.fail("proxy", err) }

// setTarget attaches the dialed socket; it returns false, and the caller
// closes tc, if the connection was aborted meanwhile.
func (c *conn) setTarget(tc stream) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.aborted {
		return false
	}
	c.tc = tc
	return true
}

func addrPort(a net.Addr) netip.AddrPort { return socket.AddrPort(a) }

// logger returns the connection's child logger. It is built when a line is
// about to be written, not kept: an idle connection holds no log buffer.
func (c *conn) logger(base *zerolog.Logger) *zerolog.Logger {
	l := base.With().
		Uint64("conn", c.id).
		Str("listener", c.listener).
		Stringer("client", c.client).
		Stringer("local", c.local).
		Logger()
	return &l
}

// newConn describes nc, just accepted on o's listener. Its cc is nil if
// nc is not a stream socket.
func (s *Server) newConn(o *listenerOpts, nc net.Conn, client, local netip.AddrPort) *conn {
	cc, _ := nc.(stream)
	return &conn{
		cc:       cc,
		id:       s.nextID.Add(1),
		srv:      s,
		opts:     o,
		listener: o.Name,
		client:   client,
		local:    local,
		target:   o.Target.String(),
		start:    time.Now(),
	}
}

// setup runs on a setup worker: it reads what the client side must say
// first (accept_proxy_from), builds the header, dials the target, writes
// the header and starts the pumps. Pumps start on fresh goroutines so the
// stack grown by dialing is not kept for the connection's life.
func (s *Server) setup(job setupJob) {
	defer s.wg.Done()
	c, nc := job.c, job.nc
	o := c.opts
	if c.cc == nil {
		nc.Close()
		s.countRefusal(o, errNotStream)
		c.fail("accept", errNotStream)
		s.finish(c)
		return
	}
	if o.log.GetLevel() <= zerolog.DebugLevel {
		c.logger(&o.log).Debug().Msg("accepted")
	}

	in, err := readInbound(nc, o, c.client, c.local)
	if err != nil {
		s.countRefusal(o, err)
		c.fail("inbound", err)
		s.finish(c)
		return
	}
	if o.BMP {
		pre, info, err := bmpPrecheck(nc, in.pre, o.BMPTimeout)
		if err != nil {
			s.countRefusal(o, err)
			c.fail("bmp", err)
			s.finish(c)
			return
		}
		in.pre, c.bmp, c.router = pre, true, info
	}
	if in.client != c.client {
		// The connection came through a trusted proxy: from here on it is
		// the original client's.
		c.via, c.client, c.local = c.client, in.client, in.local
	}

	hdr, err := proxyHeader(o.ProxyProtocol, c.client, c.local)
	if err != nil {
		s.countRefusal(o, err)
		c.fail("header", err)
		s.finish(c)
		return
	}

	tc, err := s.dial(job.ctx, o, c.client)
	if err != nil {
		s.stats.dialFailed.Add(1)
		o.state.connectFailures.Add(1)
		c.fail("dial", err)
		s.finish(c)
		return
	}
	c.upstream = addrPort(tc.RemoteAddr()).String()
	if s.watcher == nil && !o.KeepAlive.Disabled {
		if rc, err := tc.SyscallConn(); err == nil {
			rc.Control(func(fd uintptr) { socket.SetKeepAliveFD(int(fd), socket.KeepAlive(o.KeepAlive)) })
		}
	}
	if !c.setTarget(tc) {
		tc.Close()
		s.finish(c)
		return
	}
	if first := append(hdr, in.pre...); len(first) > 0 {
		// One write: the header must reach the target whole and before
		// any payload; payload already read follows it.
		n, err := tc.Write(first)
		if err == nil && n != len(first) {
			err = errShortHeader
		}
		if err != nil {
			c.fail("target", fmt.Errorf("write PROXY header: %w", err))
			s.finish(c)
			return
		}
		c.up.Copied.Add(int64(len(in.pre)))
	}
	if c.bmp {
		s.sessionStarted(c)
	}
	c.pending.Store(2)
	s.wg.Add(2)
	c.mu.Lock()
	c.watcher = s.watcher
	c.started = true // a frozen server holds the pumps at their start
	c.mu.Unlock()
	go s.pumpClientToTarget(c)
	go s.pumpTargetToClient(c)
}

// dial connects to o's target within its connect timeout, resolving a
// name on every dial. With proxy_protocol transparent it dials from
// client's own address (transparent.go), unless the Dial hook is set.
func (s *Server) dial(ctx context.Context, o *listenerOpts, client netip.AddrPort) (stream, error) {
	timeout := o.ConnectTimeout
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	target, network := o.Target.String(), "tcp"
	dial := s.Dial
	transparent := dial == nil && o.ProxyProtocol == conf.ProxyTransparent
	switch {
	case transparent:
		var d *net.Dialer
		d, network = socket.TransparentDialer(client, o.TransparentMark)
		target = loopbackFor(target, client)
		dial = d.DialContext
	case dial == nil:
		// Keepalive on the target side is set as the listener says: by
		// the idle sweeper once the connection has lived a sweep, so
		// short connections skip the calls, or in setup if there is no
		// sweeper.
		d := net.Dialer{KeepAlive: -1}
		dial = d.DialContext
	}
	nc, err := dial(ctx, network, target)
	if err != nil {
		var ne net.Error
		timedOut := ctx.Err() == context.DeadlineExceeded || errors.As(err, &ne) && ne.Timeout()
		switch {
		case transparent && timedOut:
			return nil, fmt.Errorf("connect to %s transparently: no answer within %s (%w): %w", target, timeout, errNoReturnRoute, err)
		case transparent:
			return nil, fmt.Errorf("connect to %s transparently from %s: %w", target, client, err)
		case timedOut:
			return nil, fmt.Errorf("connect to %s: no answer within %s: %w", target, timeout, err)
		}
		return nil, fmt.Errorf("connect to %s: %w", target, err)
	}
	tc, ok := nc.(stream)
	if !ok {
		nc.Close()
		return nil, fmt.Errorf("connect to %s: %w", target, errNotStream)
	}
	return tc, nil
}

// pumpClientToTarget moves the client's bytes to the target and half-closes
// the target when the client half-closes.
func (s *Server) pumpClientToTarget(c *conn) { s.pump(c, up) }

// pumpTargetToClient moves the target's bytes to the client and
// half-closes the client when the target half-closes.
func (s *Server) pumpTargetToClient(c *conn) { s.pump(c, down) }

// pump runs direction d until it ends, or until it has been quiet long
// enough to be parked in the watcher, which then holds the goroutine's
// WaitGroup count and resumes it on a fresh goroutine. While the server
// is frozen for a handover, the direction is held instead, at the start
// or at its next read (handover.go).
func (s *Server) pump(c *conn, d dir) {
	src, dst, count := c.ends(d)
	for {
		if s.hold(c, d, true) {
			return
		}
		err := s.Pump.Copy(dst, src, count)
		if isNudge(err) {
			if s.park(c, d) {
				return
			}
			continue
		}
		s.pumpDone(c, err, d)
		c.mu.Lock()
		c.idle[d].ended = true
		c.mu.Unlock()
		s.noteSettled()
		s.wg.Done()
		return
	}
}

// pumpDone records a direction's end. An error from either side ends the
// whole connection; a clean EOF leaves the other direction running. The
// last direction to end finishes the connection.
func (s *Server) pumpDone(c *conn, err error, d dir) {
	if err != nil {
		src, dst := "client", "target"
		if d == down {
			src, dst = dst, src
		}
		stage := src
		var pe *splice.Error
		if errors.As(err, &pe) && pe.Op == "write" {
			stage = dst
		}
		c.fail(stage, err)
	}
	if c.pending.Add(-1) == 0 {
		c.fail("", nil) // close both sockets
		s.finish(c)
	}
}

// finish writes the connection's single closing log line and untracks it.
func (s *Server) finish(c *conn) {
	s.untrack(c)
	st := c.opts.state
	st.active.Add(-1)
	st.fromClient.Add(c.up.Total())
	st.toClient.Add(c.down.Total())
	st.spliced.Add(c.up.Spliced.Load() + c.down.Spliced.Load())
	st.copied.Add(c.up.Copied.Load() + c.down.Copied.Load())
	c.mu.Lock()
	cause, stage := c.cause, c.stage
	c.mu.Unlock()

	reason := "closed"
	level := zerolog.InfoLevel
	switch {
	case cause == nil:
	case errors.Is(cause, errShutdown):
		reason = "shutdown"
	case errors.Is(cause, net.ErrClosed):
		// A pump saw its socket closed by the other direction's failure,
		// which recorded the real cause first; only reachable if that
		// ordering is ever broken.
		reason = "closed"
	default:
		reason = stage + " error"
		level = zerolog.WarnLevel
		switch stage {
		case "dial":
			reason = "dial failed"
		case "header", "inbound", "accept", "bmp":
			reason = "refused"
		}
	}
	if c.session.Load() {
		now := time.Now()
		r := c.routerStatus()
		r.State, r.Closed, r.CloseReason = "closed", &now, reason
		if cause != nil && reason != "shutdown" {
			r.Error = cause.Error()
		}
		s.routers.ended(r, c.client.Addr(), now)
	}
	log := &c.opts.log
	if log.GetLevel() > level {
		return
	}
	ev := c.logger(log).WithLevel(level)
	if c.via.IsValid() {
		ev = ev.Stringer("via", c.via)
	}
	if c.router.SysName != "" {
		ev = ev.Str("sys_name", c.router.SysName)
	}
	ev = ev.
		Str("target", c.target).
		Str("upstream", c.upstream).
		Int64("bytes_from_client", c.up.Total()).
		Int64("bytes_to_client", c.down.Total()).
		Int64("bytes_spliced", c.up.Spliced.Load()+c.down.Spliced.Load()).
		Stringer("duration", time.Since(c.start)).
		Str("reason", reason)
	if cause != nil && reason != "shutdown" {
		ev = ev.Err(cause)
	}
	ev.Msg("connection closed")
}

// sessionStarted logs a BMP session that reached its target, with how
// long ago the previous session from the same router address ended, so
// that a router that reconnects often stands out.
func (s *Server) sessionStarted(c *conn) {
	c.session.Store(true)
	log := &c.opts.log
	if log.GetLevel() > zerolog.InfoLevel {
		return
	}
	ev := c.logger(log).Info().Str("target", c.target).Str("upstream", c.upstream)
	if c.router.SysName != "" {
		ev = ev.Str("sys_name", c.router.SysName)
	}
	if since, ok := s.routers.sinceLastSession(c.client.Addr(), time.Now()); ok {
		ev = ev.Float64("since_last_session_s", since.Round(time.Millisecond).Seconds())
	}
	ev.Msg("router connected")
}
