package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/bmpproxy/bmpproxy/conf"
)

// Target checks. A target name is resolved on every dial, so a name that
// does not resolve would otherwise show only when a router connects. At
// start and on every reload each listener's target name is resolved once,
// in the background: one that does not resolve is logged as a warning
// and shown (Targets), and nothing else changes, since the collector may
// come later. Every dial then updates what is shown: a name that resolved
// for a dial resolves; a dial that failed for want of an address does
// not.

// TargetStatus is what is known of one listener's target.
type TargetStatus struct {
	Listener string
	Target   string    // host:port, as configured
	Resolves bool      // an IP literal, or a name that resolved when last tried
	Error    string    // why it did not resolve
	Checked  time.Time // when it was last tried; zero for an IP literal
}

// targetTable holds the status of every configured listener's target, by
// listener name.
type targetTable struct {
	mu     sync.Mutex
	byName map[string]TargetStatus
}

// set records st, unless the listener's target has changed meanwhile (a
// reload): a late check of an old target says nothing of the new one.
func (t *targetTable) set(st TargetStatus) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if cur, ok := t.byName[st.Listener]; ok && cur.Target == st.Target {
		t.byName[st.Listener] = st
	}
}

// reset makes the table the listeners of cfg, each as not yet checked (a
// name) or resolving (an IP literal), keeping what is known of a target
// that stays.
func (t *targetTable) reset(cfg *conf.Config) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.byName
	t.byName = make(map[string]TargetStatus, len(cfg.Listeners))
	for _, l := range cfg.Listeners {
		st := TargetStatus{Listener: l.Name, Target: l.Target.String(), Resolves: true}
		if prev, ok := old[l.Name]; ok && prev.Target == st.Target {
			st = prev
		}
		t.byName[l.Name] = st
	}
}

// Targets returns the status of every configured listener's target,
// sorted by listener name.
func (s *Server) Targets() []TargetStatus {
	s.targets.mu.Lock()
	out := make([]TargetStatus, 0, len(s.targets.byName))
	for _, st := range s.targets.byName {
		out = append(out, st)
	}
	s.targets.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Listener < out[j].Listener })
	return out
}

// checkTargets resolves, in the background, the target name of each
// listener of cfg, within its connect timeout or until Run ends. It runs
// on the Run goroutine; s.checks counts the lookups, and Run waits for
// them.
func (s *Server) checkTargets(cfg *conf.Config) {
	s.targets.reset(cfg)
	for _, l := range cfg.Listeners {
		if _, err := netip.ParseAddr(l.Target.Host); err == nil {
			continue
		}
		s.checks.Add(1)
		go func(name string, target conf.Target, timeout time.Duration) { // owned by Run, through s.checks
			defer s.checks.Done()
			ctx, cancel := context.WithTimeout(s.checkCtx, timeout)
			defer cancel()
			lookup := s.opts.LookupHost
			if lookup == nil {
				lookup = net.DefaultResolver.LookupHost
			}
			_, err := lookup(ctx, target.Host)
			if err != nil && errors.Is(ctx.Err(), context.Canceled) {
				return // stopping; not the target's fault
			}
			s.noteResolved(name, target.String(), err)
		}(l.Name, l.Target, l.ConnectTimeout)
	}
}

// noteResolved records whether listener's target resolved, and logs a
// change to "does not resolve", or back.
func (s *Server) noteResolved(listener, target string, err error) {
	st := TargetStatus{Listener: listener, Target: target, Resolves: err == nil, Checked: time.Now()}
	if err != nil {
		st.Error = err.Error()
	}
	s.targets.mu.Lock()
	prev, ok := s.targets.byName[listener]
	s.targets.mu.Unlock()
	if !ok || prev.Target != target {
		return // reloaded meanwhile
	}
	s.targets.set(st)
	switch {
	case err != nil && (prev.Resolves || prev.Checked.IsZero()):
		s.opts.Logger.Warn().Str("listener", listener).Str("target", target).Err(err).
			Msg("target does not resolve; its connections fail until it does")
	case err == nil && !prev.Resolves:
		s.opts.Logger.Info().Str("listener", listener).Str("target", target).Msg("target resolves again")
	}
}

// noteDial updates listener's target status from a dial's outcome: a
// connected name resolved, and one that found no address did not. Other
// failures (refused, timed out) say nothing of the name.
func (s *Server) noteDial(o *listenerOpts, err error) {
	if _, perr := netip.ParseAddr(o.Target.Host); perr == nil {
		return
	}
	var dnsErr *net.DNSError
	switch {
	case err == nil:
		s.noteResolved(o.Name, o.Target.String(), nil)
	case errors.As(err, &dnsErr):
		s.noteResolved(o.Name, o.Target.String(), dnsErr)
	}
}
