package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/bmpproxy/bmpproxy/internal/socket"
	"github.com/rs/zerolog"
)

// stage is where a connection ended: a setup stage that refused it or
// failed, or the side whose failure ended it later. It knows the reason
// its closing line gives and what it counts.
type stage uint8

const (
	stageNone     stage = iota // no failure: both directions ended cleanly
	stageAccept                // the accepted socket cannot be spliced
	stageAllow                 // the client is outside allow
	stageLimit                 // the listener is at max_connections
	stageInbound               // a trusted proxy's header: missing or unreadable; or a spoofed one
	stageBMP                   // the BMP pre-check
	stageHeader                // this proxy's header cannot carry the addresses
	stageDial                  // the target cannot be reached
	stageTarget                // the target socket failed: the first write, or later
	stageClient                // the client socket failed
	stageShutdown              // closed at the drain timeout
	stageResync                // a collector needs a replay of a state that is not kept
	stageMoved                 // its pool member went down or was drained, and there is no resync
)

// reason is the closing line's "reason".
func (st stage) reason() string {
	switch st {
	case stageNone:
		return "closed"
	case stageAccept, stageAllow, stageLimit, stageInbound, stageBMP, stageHeader:
		return "refused"
	case stageDial:
		return "dial failed"
	case stageTarget:
		return "target error"
	case stageClient:
		return "client error"
	case stageShutdown:
		return "shutdown"
	case stageResync:
		return "resync impossible"
	case stageMoved:
		return "moved"
	}
	return "closed"
}

// refusal returns the refusal counter a stage before the dial bumps, and
// false for the others.
func (st stage) refusal() (refusal, bool) {
	switch st {
	case stageAccept, stageHeader:
		return refusedOther, true
	case stageAllow:
		return refusedNotAllowed, true
	case stageLimit:
		return refusedLimit, true
	case stageInbound:
		return refusedHeader, true
	case stageBMP:
		return refusedBMP, true
	}
	return 0, false
}

// other is the opposite socket's stage: a pump that fails to write fails
// its destination, not its source.
func (st stage) other() stage {
	switch st {
	case stageClient:
		return stageTarget
	case stageTarget:
		return stageClient
	}
	return st
}

// count bumps what a connection that ended at st counts, beyond the
// totals every connection adds.
func (st stage) count(s *Server, o *listenerOpts) {
	if r, ok := st.refusal(); ok {
		o.state.refused[r].Add(1)
		return
	}
	if st == stageDial {
		s.stats.dialFailed.Add(1)
		o.state.connectFailures.Add(1)
	}
}

// setupError is a setup stage's failure.
type setupError struct {
	stage stage
	err   error
}

func (e *setupError) Error() string { return e.err.Error() }
func (e *setupError) Unwrap() error { return e.err }

// fail wraps err as st's failure.
func (st stage) fail(err error) error { return &setupError{stage: st, err: err} }

// setup runs on a setup worker and owns c until its pumps start. It takes
// c from the accepted socket to running pumps, or to its closing line:
// every failure leaves through the one exit below, which counts it under
// its stage, closes both sockets and finishes c.
func (s *Server) setup(job setupJob) {
	defer s.setups.Done()
	c := job.c
	if c.opts.log.GetLevel() <= zerolog.DebugLevel {
		c.logger(&c.opts.log).Debug().Msg("accepted")
	}
	err := s.connect(job.ctx, c, job.nc)
	if err != nil {
		var se *setupError
		if !errors.As(err, &se) { // not expected: every stage wraps its error
			se = &setupError{stage: stageTarget, err: err}
		}
		se.stage.count(s, c.opts)
		if c.cc == nil {
			job.nc.Close()
		}
		c.fail(se.stage, se.err)
		s.finish(c)
		return
	}
	if c.bmp {
		s.sessionStarted(c)
	}
	s.start(c)
	if c.pool != nil {
		// The pool may have changed since setup's pick, while the
		// placement loop left c alone: look again.
		s.checkPlacement(c)
	}
}

// connect is the setup pipeline, a flat list of stages: read what the
// client side must say first, check it, build the header, dial, and write
// the header and any payload already read to the target in one write.
// Every failure is a *setupError naming its stage. connect closes and
// logs nothing; on success c holds the connected target socket.
func (s *Server) connect(ctx context.Context, c *conn, nc net.Conn) error {
	o := c.opts
	if c.cc == nil {
		return stageAccept.fail(errNotStream)
	}
	in, err := readInbound(nc, o, c.client, c.local)
	if err != nil {
		return stageInbound.fail(err)
	}
	if in.trusted && len(o.Allow) > 0 && !o.Allow.Contains(in.client.Addr()) {
		return stageAllow.fail(errNotAllowed)
	}
	if in.client != c.client {
		// The connection came through a trusted proxy: from here on it
		// is the original client's.
		c.via, c.client, c.local = c.client, in.client, in.local
	}
	if o.BMP {
		pre, info, err := bmpPrecheck(nc, in.pre, o.BMPTimeout)
		if err != nil {
			return stageBMP.fail(err)
		}
		in.pre, c.bmp, c.router = pre, true, info
	}
	if o.fanout() {
		if err := s.connectLegs(ctx, c, in.pre); err != nil {
			return stageDial.fail(err)
		}
		c.up().n.Copied.Add(int64(len(in.pre)))
		s.dialed(c)
		return nil
	}
	// The header, before any dial: a pool's pick has the pool's mode.
	primary := c.primaryCfg()
	hdr, err := proxyHeader(primary.ProxyProtocol, c.client, c.local)
	if err != nil {
		return stageHeader.fail(err)
	}
	tc, primary, err := s.dialLeg(ctx, c, primary, netip.AddrPort{})
	if err != nil {
		return stageDial.fail(err)
	}
	if c.pool != nil {
		c.target = primary.Target.String()
		c.mu.Lock()
		c.member = legMember(primary)
		c.mu.Unlock()
	}
	c.upstream = socket.AddrPort(tc.RemoteAddr()).String()
	s.dialed(c)
	if s.watcher.Load() == nil && !o.KeepAlive.Disabled {
		// No sweeper to set it once the connection has lived a sweep.
		socket.SetKeepAlive(tc, socket.KeepAlive(o.KeepAlive))
	}
	if !c.setTarget(tc) {
		tc.Close()
		return stageShutdown.fail(errShutdown)
	}
	first := append(hdr, in.pre...)
	if len(first) == 0 {
		return nil
	}
	// One write: the header must reach the target whole and before any
	// payload; payload already read follows it.
	n, err := tc.Write(first)
	if err == nil && n != len(first) {
		err = errShortHeader
	}
	if err != nil {
		return stageTarget.fail(fmt.Errorf("write PROXY header: %w", err))
	}
	c.up().n.Copied.Add(int64(len(in.pre)))
	return nil
}

// dial connects to leg's target within o's connect timeout, resolving a
// name on every dial. With proxy_protocol transparent it dials from
// client's own address (transparent.go), unless the Dial hook is set.
func (s *Server) dial(ctx context.Context, o *listenerOpts, leg conf.Leg, client netip.AddrPort) (stream, error) {
	timeout := o.ConnectTimeout
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	target, network := leg.Target.String(), "tcp"
	dial := s.opts.Dial
	transparent := dial == nil && leg.ProxyProtocol == conf.ProxyTransparent
	switch {
	case transparent:
		var d *net.Dialer
		d, network = socket.TransparentDialer(client, leg.TransparentMark)
		target = loopbackFor(target, client)
		dial = d.DialContext
	case dial == nil:
		// Keepalive on the target side is set as the listener says: by
		// the idle sweeper once the connection has lived a sweep, so
		// short connections skip the calls, or in connect if there is
		// no sweeper.
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
