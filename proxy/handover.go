package proxy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Handover: an upgrade moves every listening socket and every connection
// to a successor process without closing any of them (see docs/upgrade.md
// and package handoff for the process side).
//
// The server is first frozen:
//   - Accept loops stop; the listening sockets stay open and the kernel
//     queues new connections on them.
//   - Every direction is held (direction.go). A running direction is
//     nudged, as for idle parking; it sees the nudge only at its next
//     read, after its pipe has drained, so a held direction has no byte in
//     flight. A parked direction is woken and holds as it starts.
//   - A connection still in setup is waited for; it is held when its
//     directions would start.
//
// A held direction has no goroutine; it keeps its count in live. The
// snapshot (snapshot.go) then names each socket's descriptor, and the
// successor rebuilds the connections from them (adopt.go). If the successor takes over, every held
// direction and listener is released without shutdown(2) and Run returns
// ErrHandedOver. Otherwise the server thaws: held directions resume and
// the accept loops start again. Until then nothing has read or written a
// byte, so either way nothing is lost.

// ErrHandedOver is returned by Run after a successor took over.
var ErrHandedOver = errors.New("proxy: handed over to a successor")

// Handoff gives a frozen server's snapshot to a successor. It returns nil
// only once the successor runs and owns the sockets; then the server lets
// go of them. On error the successor must be gone or never have touched
// the sockets: the server resumes.
type Handoff func(ctx context.Context, snap *Snapshot) error

type upgradeReq struct {
	ctx  context.Context
	h    Handoff
	done chan error
}

// Upgrade freezes the server, hands it to a successor through h and
// returns nil once the successor took over; Run then returns
// ErrHandedOver. On failure the server resumes, the failure is counted
// and logged, and the error is returned.
func (s *Server) Upgrade(ctx context.Context, h Handoff) error {
	req := upgradeReq{ctx: ctx, h: h, done: make(chan error, 1)}
	return submit(ctx, s, s.upgrades, req, req.done)
}

// upgrade runs on the Run goroutine.
func (s *Server) upgrade(ctx, connCtx context.Context, req upgradeReq) error {
	start := time.Now()
	s.opts.Logger.Info().Int64("connections", s.stats.active.Load()).Msg("upgrade: freezing")
	snap, err := s.freeze(req.ctx)
	if err == nil {
		frozen := time.Since(start)
		s.opts.Logger.Info().Int("connections", len(snap.Conns)).Int("listeners", len(snap.Listeners)).
			Stringer("freeze", frozen.Round(time.Microsecond)).Msg("upgrade: frozen; starting the successor")
		err = req.h(req.ctx, snap)
		snap.CloseOwned()
		if err == nil {
			s.opts.Logger.Info().Int("connections", len(snap.Conns)).
				Stringer("pause", time.Since(start).Round(time.Microsecond)).
				Msg("upgrade: the successor took over; letting go")
			return nil
		}
	}
	s.thaw(ctx, connCtx)
	s.stats.upgradeFailures.Add(1)
	s.opts.Logger.Error().Err(err).Stringer("pause", time.Since(start).Round(time.Microsecond)).
		Msg("upgrade failed; this process keeps serving")
	return err
}

// thaw undoes freeze: held directions resume and accept loops start
// again.
func (s *Server) thaw(ctx, connCtx context.Context) {
	s.frozen.Store(false)
	s.resumeHeld()
	for _, l := range s.listeners {
		l.setDeadline(time.Time{})
		s.startAccepting(ctx, connCtx, l)
	}
	s.thawDialouts(ctx, connCtx)
}

// resumeHeld resumes every held direction, each on a fresh goroutine
// that inherits its count in live.
func (s *Server) resumeHeld() {
	for _, c := range s.tracked() {
		c.mu.Lock()
		held := c.takeHeld()
		c.mu.Unlock()
		for _, d := range held {
			s.resume(d)
		}
		if c.fan != nil {
			s.thawFanout(c)
		}
	}
}

// release lets go of everything after a successor took over: listeners
// and connections are closed without shutdown(2), so their peers see
// nothing, and no closing line is written: the successor writes it.
func (s *Server) release() {
	for a, l := range s.listeners {
		l.ln.Close()
		delete(s.listeners, a)
	}
	for _, c := range s.tracked() {
		c.mu.Lock()
		c.aborted = true
		held := c.releaseHeld()
		c.mu.Unlock()
		c.cc.Close()
		if c.tc != nil {
			c.tc.Close()
		}
		if c.fan != nil {
			s.releaseFanout(c)
		}
		s.untrack(c)
		s.budget.Release(c.fds)
		c.opts.state.active.Add(-1)
		for range held {
			s.live.Done()
		}
	}
}

// takeOver runs in the successor's Run once everything is adopted and
// lns are open: it asks s.opts.Takeover for the go-ahead, then counts the
// upgrade. On error the adopted sockets are released and the predecessor
// keeps serving.
func (s *Server) takeOver(lns []*listener) error {
	if s.opts.Takeover != nil {
		if err := s.opts.Takeover(); err != nil {
			for _, l := range lns {
				l.ln.Close()
			}
			s.release()
			return fmt.Errorf("take over: %w", err)
		}
	}
	s.stats.upgrades.Add(1)
	s.stats.carried.Add(uint64(len(s.opts.Inherit.Conns)))
	names := make([]string, len(lns))
	for i, l := range lns {
		names[i] = l.addr.String()
	}
	s.opts.Logger.Info().Int("connections", len(s.opts.Inherit.Conns)).Str("listeners", strings.Join(names, " ")).
		Uint64("upgrades", s.stats.upgrades.Load()).Msg("upgrade: took over from the predecessor")
	return nil
}
