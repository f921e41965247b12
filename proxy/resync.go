package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/bmpproxy/bmpproxy/bmp/rib"
	"github.com/bmpproxy/bmpproxy/internal/socket"
	"github.com/bmpproxy/bmpproxy/splice"
)

// Resync. With resync on, a fan-out connection keeps its router's BMP
// state (package bmp/rib): the Fanout's tap feeds it every byte, in
// order, under the Fanout's lock, so the state always stands at a round
// boundary. A leg that (re)connects after the session began gets its own
// header, then a replay of that state, then the bytes of an incomplete
// message already read, then the live bytes: the collector ends up with
// what it would hold had it never been away. One replay at a time per
// router: a leg that connects while another is replayed waits for it.
//
// A leg that fails, or is cut for falling behind, is dialed again with
// backoff, from retryMin doubling to retryMax, for as long as the router
// session lasts; the session itself goes on with every leg down, its
// state kept. When the state cannot be kept (an address family bmpproxy
// cannot key, the memory bound, a malformed message), a leg that needs a
// replay closes the router session instead: the router then resends it
// all, as without bmpproxy. The rib.Router is called only under the
// Fanout's lock (Fanout.Locked), or by the tap, which holds it.

// Backoff bounds for dialing a leg again, and how long a replay may go
// without its collector taking a byte before the leg is cut: it holds the
// router's one replay slot, which other legs may be waiting for.
const (
	retryMin    = time.Second
	retryMax    = 30 * time.Second
	replayStall = splice.DefaultStallAfter
)

// resync is a fan-out connection's state for resync, guarded by its
// connection's mu except router, which the Fanout's lock guards.
type resync struct {
	router  *rib.Router
	noted   bool   // the end of keeping was logged
	replay  *leg   // the leg being replayed now
	waiting []*leg // connected, waiting for the replay slot
}

// status describes what rs keeps. The Fanout's lock is held.
func (rs *resync) status() *ResyncStatus {
	st := rs.router.Status()
	stats := rs.router.Stats()
	out := &ResyncStatus{State: st.State.String(), Reason: st.Reason, Peers: stats.Peers, Routes: stats.Routes, Bytes: stats.Bytes}
	for _, t := range stats.Tables {
		out.Tables = append(out.Tables, ResyncTable{Peer: t.Peer.String(), Family: t.Family.String(), Routes: t.Routes})
	}
	return out
}

// newResync makes c's resync state and feeds it pre, the bytes read in
// setup. It runs in setup, before the Fanout taps.
func (s *Server) newResync(c *conn, pre []byte) {
	r := rib.NewRouter(s.ribMem, "router "+c.client.String())
	r.Feed(pre)
	c.resync = &resync{router: r}
}

// tap is the Fanout's tap of a connection with resync: it feeds the
// router's state, and notes once if it stopped keeping it.
func (s *Server) tap(c *conn) func([]byte) {
	return func(b []byte) {
		rs := c.resync
		rs.router.Feed(b)
		if st := rs.router.Status(); st.State != rib.Keeping && !rs.noted {
			rs.noted = true
			s.noteNotKeeping(c, st)
		}
	}
}

// noteNotKeeping logs that c's router state can no longer be kept, and
// counts it. It runs under the Fanout's lock; it takes no other.
func (s *Server) noteNotKeeping(c *conn, st rib.Status) {
	c.opts.state.resyncStopped.Add(1)
	c.logger(&c.opts.log).Warn().Str("reason", st.Reason).Err(st.Err).
		Msg("resync stopped for this router: its state is no longer kept; a collector that needs a replay closes the router session instead, and the router resends")
}

// scheduleRetry dials leg l again after its backoff. The timer's
// function counts in live from now until it ends, or until a failing
// connection stops it. c.mu is held.
func (s *Server) scheduleRetry(l *leg) {
	delay := retryMin << min(l.attempts, 5)
	s.scheduleDial(l, min(delay, retryMax))
}

// scheduleDial dials leg l after delay, on a timer whose function counts
// in live from now until it ends, or until a failing connection stops it.
// c.mu is held.
func (s *Server) scheduleDial(l *leg, delay time.Duration) {
	c := l.c
	if c.aborted || c.finished || l.state != legConnecting {
		return
	}
	l.attempts++
	s.live.Add(1)
	l.retry = time.AfterFunc(delay, func() {
		defer s.live.Done()
		s.redial(l)
	})
}

// stopRetries stops c's pending redials and replay watches. c.mu is
// held.
func (c *conn) stopRetries() {
	for _, l := range c.legs {
		for _, t := range []**time.Timer{&l.retry, &l.watch} {
			if *t != nil && (*t).Stop() {
				c.srv.live.Done() // it never ran
			}
			*t = nil
		}
	}
}

// redial dials leg l again, on its retry timer's goroutine; on success
// the leg joins with a replay, on failure the next retry is scheduled.
func (s *Server) redial(l *leg) {
	c := l.c
	c.mu.Lock()
	l.retry = nil
	if c.aborted || c.finished || c.up().state == dirEnded {
		c.mu.Unlock()
		return
	}
	if s.frozen.Load() {
		// Not while a handover may describe this leg: later, here or
		// in the successor.
		s.scheduleRetry(l)
		c.mu.Unlock()
		return
	}
	if l.state != legConnecting {
		c.mu.Unlock()
		return // removed by a reload
	}
	if l.next != nil {
		l.cfg, l.next = *l.next, nil
	}
	cfg := l.cfg
	var avoid netip.AddrPort
	if l.replaces != nil {
		avoid = l.replaces.member()
	}
	c.mu.Unlock()
	if l.index > 0 && !s.budget.TryAcquire(1) {
		s.retryLater(l, errLegNoFD)
		return
	}
	ctx := context.Background()
	sock, cfg, err := s.dialLeg(ctx, c, cfg, avoid)
	c.mu.Lock()
	prev := l.cfg.Target
	if cfg.Target != prev {
		l.cfg = cfg // a pool's pick
		l.ctr = c.opts.state.leg(l.name())
	}
	moving := l.replaces != nil
	c.mu.Unlock()
	if err == nil && c.pool != nil && !moving && !prev.IsZero() && cfg.Target != prev {
		// Its member failed, and the router's next pick took the leg.
		c.pool.moves[moveFailover].Add(1)
		c.logger(&c.opts.log).Info().Str("member", prev.String()).Str("to", cfg.Target.String()).Str("move", MoveFailover).
			Msg("moving router to another pool member: its leg there is replayed")
	}
	if err != nil {
		if l.index > 0 {
			s.budget.Release(1)
		}
		if moving {
			s.abandonMove(l, err)
			return
		}
		s.retryLater(l, err)
		return
	}
	l.ctr.reconnects.Add(1)
	s.join(l, sock)
}

// retryLater records a failed dial of l and schedules the next.
func (s *Server) retryLater(l *leg, err error) {
	c := l.c
	c.mu.Lock()
	l.err = err
	attempts := l.attempts
	s.scheduleRetry(l)
	c.mu.Unlock()
	l.ctr.dialFailures.Add(1)
	if attempts <= 1 || attempts%10 == 0 {
		c.logger(&c.opts.log).Warn().Int("leg", l.index).Str("target", l.name()).
			Int("attempts", attempts).Err(err).Msg("leg not connected; retrying with backoff")
	}
}

// join adds the newly connected sock as leg l: it waits for the replay
// slot, then gets its header, the replay, the pending bytes and the live
// stream. If the router's state is not kept, the router session is closed
// instead.
func (s *Server) join(l *leg, sock stream) {
	c := l.c
	c.mu.Lock()
	if l.state != legConnecting {
		// Removed by a reload while it was dialed.
		c.mu.Unlock()
		sock.Close()
		s.releaseLegFDOf(l.index)
		return
	}
	if c.aborted || c.finished || s.frozen.Load() {
		// Failing, or frozen for a handover that may already describe
		// this leg as connecting: its collector sees a connection
		// closed before a byte, and it is dialed again.
		if !c.aborted && !c.finished {
			s.scheduleRetry(l)
		}
		c.mu.Unlock()
		sock.Close()
		s.releaseLegFDOf(l.index)
		return
	}
	l.sock, l.upstream, l.since = sock, socket.AddrPort(sock.RemoteAddr()).String(), time.Now()
	l.fd, l.closed, l.sinkDone, l.revDone = l.index > 0, false, false, false
	l.state = legWaiting
	rs := c.resync
	if rs.replay != nil {
		rs.waiting = append(rs.waiting, l)
		c.mu.Unlock()
		return
	}
	rs.replay = l
	c.mu.Unlock()
	s.startReplay(l)
}

// startReplay starts leg l's replay, l holding the replay slot. If the
// state is not kept, it closes the router session.
func (s *Server) startReplay(l *leg) {
	c := l.c
	hdr, err := proxyHeader(l.cfg.ProxyProtocol, c.client, c.local)
	if err != nil {
		s.endReplay(l)
		s.legFailed(l, l.sock, err)
		return
	}
	if !c.opts.KeepAlive.Disabled {
		socket.SetKeepAlive(l.sock, socket.KeepAlive(c.opts.KeepAlive))
	}
	start := time.Now()
	sock := l.sock
	var snap *rib.Snapshot
	sink, err := c.fan.Add(splice.SinkConfig{
		Conn:  sock,
		Limit: int(l.cfg.Buffer),
		Head:  hdr,
		Count: &l.sent,
		Done: func(err error) {
			snap.Close() // idempotent: the replay may have ended already
			s.endReplay(l)
			s.sinkDone(l, sock, err)
		},
	}, func() (io.Reader, []byte, error) {
		var err error
		snap, err = c.resync.router.Snapshot()
		if err != nil {
			return nil, nil, err
		}
		routes := snap.Routes()
		r := &replayReader{snap: snap, done: func() { s.replayDone(l, sock, start, routes) }}
		return r, c.resync.router.Pending(), nil
	})
	if err != nil {
		s.endReplay(l)
		sock.Close()
		if errors.Is(err, rib.ErrNotKeeping) {
			c.fail(stageResync, fmt.Errorf("%s: a collector needs a replay of this router's state, which is not kept: %w", l.cfg.Target, err))
			return
		}
		s.legFailed(l, sock, err)
		return
	}
	c.mu.Lock()
	l.sink = sink
	l.state = legReplaying
	kind := kindDiscard
	if l.primary {
		kind = kindReply
	}
	l.rev = &direction{c: c, kind: kind, src: sock, dst: c.cc, leg: l}
	c.dirs = append(c.dirs, l.rev)
	l.ctr.replays.Add(1)
	l.replays++
	s.watchReplay(l, sock, -1)
	c.mu.Unlock()
	s.startDir(l.rev)
}

// watchReplay cuts leg l if its replay on sock has delivered nothing
// since the last look, when sent was l.sent's total; it looks every
// replayStall while the replay lasts. The timer's function counts in live
// while it is pending. c.mu is held.
func (s *Server) watchReplay(l *leg, sock stream, sent int64) {
	s.live.Add(1)
	l.watch = time.AfterFunc(replayStall, func() {
		defer s.live.Done()
		c := l.c
		c.mu.Lock()
		if l.sock != sock || l.state != legReplaying || c.aborted || c.finished {
			c.mu.Unlock()
			return
		}
		now := l.sent.Total()
		if now != sent {
			s.watchReplay(l, sock, now)
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
		s.legFailed(l, sock, fmt.Errorf("%w: the replay wrote nothing for %s", splice.ErrLagging, replayStall))
	})
}

// replayReader reads a snapshot and, at its end, closes it and frees the
// replay slot.
type replayReader struct {
	snap *rib.Snapshot
	done func()
}

func (r *replayReader) Read(p []byte) (int, error) {
	n, err := r.snap.Read(p)
	if err == io.EOF {
		r.snap.Close()
		r.done()
	}
	return n, err
}

// replayDone marks leg l's replay as over, once, and gives the replay
// slot to the next waiting leg.
func (s *Server) replayDone(l *leg, sock stream, start time.Time, routes int) {
	c := l.c
	c.mu.Lock()
	done := l.sock == sock && l.state == legReplaying
	if done {
		l.state = legLive
		l.attempts = 0
		l.ctr.replayNanos.Add(int64(time.Since(start)))
	}
	upstream := l.upstream
	c.mu.Unlock()
	if done {
		c.logger(&c.opts.log).Info().Int("leg", l.index).Str("target", l.name()).Str("upstream", upstream).
			Int("routes", routes).Stringer("replay", time.Since(start).Round(time.Microsecond)).
			Msg("leg live: its collector was given the router's state and now gets the live stream")
	}
	s.endReplay(l)
	if done && c.pool != nil {
		s.moveDone(l)
	}
}

// endReplay frees the replay slot if l holds it, and starts the next
// waiting leg's replay.
func (s *Server) endReplay(l *leg) {
	c := l.c
	c.mu.Lock()
	rs := c.resync
	if rs.replay != l {
		c.mu.Unlock()
		return
	}
	rs.replay = nil
	if s.frozen.Load() {
		// The waiting legs wait for the thaw, or the successor.
		c.mu.Unlock()
		s.noteSettled()
		return
	}
	next := rs.takeWaiting()
	c.mu.Unlock()
	if next != nil {
		s.startReplay(next)
	}
}

// takeWaiting gives the free replay slot to the first leg still waiting
// for it, and returns that leg, or nil. c.mu is held.
func (rs *resync) takeWaiting() *leg {
	var next *leg
	for len(rs.waiting) > 0 && next == nil {
		next, rs.waiting = rs.waiting[0], rs.waiting[1:]
		if next.state != legWaiting {
			next = nil
		}
	}
	rs.replay = next
	return next
}

// startDir starts a direction added to a running connection: a leg's
// socket direction after a reconnect.
func (s *Server) startDir(d *direction) {
	c := d.c
	c.mu.Lock()
	to := dirRunning
	if s.frozen.Load() {
		to = dirHeld
	}
	d.move(to)
	s.live.Add(1)
	c.mu.Unlock()
	if to == dirRunning {
		s.resume(d)
	}
}

// releaseLegFDOf gives back the budget fd of a leg socket that was never
// attached: every leg but the primary holds one.
func (s *Server) releaseLegFDOf(index int) {
	if index > 0 {
		s.budget.Release(1)
	}
}
