package proxy

import (
	"errors"
	"fmt"

	"github.com/bmpproxy/bmpproxy/conf"
)

// Reloading the targets of open fan-out connections. A reload that
// changes a listener's targets applies the difference to each of its open
// fan-out connections, without touching the router's session:
//   - A leg whose target is gone is closed (its line says why) and not
//     dialed again.
//   - A target that is new is dialed and, with resync, joins with a
//     replay. Without resync a collector cannot join a session halfway,
//     so it gets only the router sessions accepted from then on.
//   - A leg whose target stays keeps its socket and the settings it was
//     connected with; the new ones apply to its next dial.
//
// A connection that was not a fan-out one when accepted (one target, no
// resync) keeps its single target, as any open connection keeps its
// options; so does whether a connection keeps its router's state.

// errRemovedByReload is why a leg whose target a reload removed ended.
var errRemovedByReload = errors.New("its target was removed from the configuration by a reload")

// retarget applies every listener's targets in cfg to its open fan-out
// connections. It runs on the Run goroutine, after the listeners' options
// were swapped.
func (s *Server) retarget(cfg *conf.Config) {
	byName := map[string]*conf.Listener{}
	for i := range cfg.Listeners {
		byName[cfg.Listeners[i].Name] = &cfg.Listeners[i]
	}
	for _, c := range s.tracked() {
		if l := byName[c.listener]; l != nil && c.fan != nil && c.opts.Pool == nil && l.Pool == nil {
			s.retargetConn(c, l.Targets)
		}
	}
}

// retargetConn closes c's legs whose target is not in targets and, with
// resync, adds a leg for each target c has no leg for.
func (s *Server) retargetConn(c *conn, targets []conf.Leg) {
	want := map[string]conf.Leg{}
	for _, t := range targets {
		want[t.Target.String()] = t
	}
	c.mu.Lock()
	if c.aborted || c.finished || c.up().state == dirEnded {
		c.mu.Unlock()
		return
	}
	have := map[string]bool{}
	var gone []*leg
	for _, l := range c.legs {
		if l.state == legRemoved {
			continue
		}
		t := l.cfg.Target.String()
		if nl, ok := want[t]; ok {
			have[t] = true
			l.next = &nl
			continue
		}
		gone = append(gone, l)
	}
	var added []*leg
	skipped := 0
	for _, t := range targets {
		name := t.Target.String()
		if have[name] {
			continue
		}
		have[name] = true
		if c.resync == nil {
			skipped++
			continue
		}
		l := &leg{c: c, index: len(c.legs), cfg: t, ctr: c.opts.state.leg(name), state: legConnecting,
			sinkDone: false, revDone: true}
		c.legs = append(c.legs, l)
		added = append(added, l)
		s.scheduleDial(l, 0)
	}
	c.mu.Unlock()
	for _, l := range gone {
		s.removeLeg(l)
	}
	log := c.logger(&c.opts.log)
	for _, l := range added {
		log.Info().Int("leg", l.index).Str("target", l.cfg.Target.String()).
			Msg("leg added by a reload: its collector is dialed and given the router's state")
	}
	if skipped > 0 {
		log.Info().Int("targets", skipped).
			Msg("targets added by a reload get the router sessions accepted from now on: without resync a collector cannot join a session halfway")
	}
	if c.resync == nil && !c.anyLegLive() {
		c.fail(stageTarget, fmt.Errorf("every target is down: %w", errRemovedByReload))
	}
}

// removeLeg closes leg l for good after a reload removed its target.
func (s *Server) removeLeg(l *leg) { s.endLeg(l, errRemovedByReload) }

// endLeg closes leg l for good, for why: its target was removed, or its
// router moved to another pool member. Its sink and socket direction end
// as a failed leg's do, and it is not dialed again.
func (s *Server) endLeg(l *leg, why error) {
	c := l.c
	c.mu.Lock()
	prev := l.state
	switch prev {
	case legRemoved, legDone, legDown:
		l.state = legRemoved
		c.mu.Unlock()
		return
	}
	l.state, l.err = legRemoved, why
	l.abandonMove()
	if l.retry != nil && l.retry.Stop() {
		s.live.Done() // it never ran
	}
	l.retry = nil
	sock, sink := l.sock, l.sink
	if prev == legConnecting || prev == legWaiting {
		// No sink and no socket direction to wait for.
		l.sinkDone, l.revDone = true, true
	}
	var parked []uint64
	if sock != nil {
		parked = c.parkedKeysOf(sock)
	}
	c.mu.Unlock()
	if sink != nil {
		sink.Remove()
	}
	if sock != nil {
		s.closeLegSocket(sock, parked)
		s.releaseLegFD(l)
	}
	if c.resync != nil {
		s.endReplay(l)
	}
	s.logLeg(l, why)
	s.maybeFinishFanout(c)
}
