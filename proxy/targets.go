package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/bmpproxy/bmpproxy/conf"
)

// Target checks. A target name is resolved on every dial, so a name that
// does not resolve would otherwise show only when a router connects. At
// start and on every reload each listener's target names (every leg's)
// are resolved once,
// in the background: one that does not resolve is logged as a warning
// and shown (Targets), and nothing else changes, since the collector may
// come later. Every dial then updates what is shown: a name that resolved
// for a dial resolves; a dial that failed for want of an address does
// not.

// TargetStatus is what is known of one of a listener's targets.
type TargetStatus struct {
	Listener string
	Target   string    // host:port, as configured
	Resolves bool      // an IP literal, or a name that resolved when last tried
	Error    string    // why it did not resolve
	Checked  time.Time // when it was last tried; zero for an IP literal
}

// targetTable holds the status of every configured listener's targets.
type targetTable struct {
	mu     sync.Mutex
	byName map[targetKey]TargetStatus
	names  map[string]bool // every configured listener, with targets or a pool
}

// targetKey names one target of one listener.
type targetKey struct{ listener, target string }

// set records st, unless the listener no longer has that target (a
// reload): a late check of an old target says nothing of the new one.
func (t *targetTable) set(st TargetStatus) {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := targetKey{st.Listener, st.Target}
	if _, ok := t.byName[k]; ok {
		t.byName[k] = st
	}
}

// reset makes the table the listeners of cfg, each as not yet checked (a
// name) or resolving (an IP literal), keeping what is known of a target
// that stays.
func (t *targetTable) reset(cfg *conf.Config) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.byName
	t.byName = make(map[targetKey]TargetStatus, len(cfg.Listeners))
	t.names = make(map[string]bool, len(cfg.Listeners))
	for _, l := range cfg.Listeners {
		t.names[l.Name] = true
		for _, tg := range listenerTargets(&l) {
			k := targetKey{l.Name, tg.String()}
			st := TargetStatus{Listener: l.Name, Target: k.target, Resolves: true}
			if prev, ok := old[k]; ok {
				st = prev
			}
			t.byName[k] = st
		}
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
	sort.Slice(out, func(i, j int) bool {
		if out[i].Listener != out[j].Listener {
			return out[i].Listener < out[j].Listener
		}
		return out[i].Target < out[j].Target
	})
	return out
}

// checkTargets resolves, in the background, the target name of each
// listener of cfg, within its connect timeout or until Run ends. It runs
// on the Run goroutine; s.checks counts the lookups, and Run waits for
// them.
func (s *Server) checkTargets(cfg *conf.Config) {
	s.targets.reset(cfg)
	for _, l := range cfg.Listeners {
		for _, target := range listenerTargets(&l) {
			if _, err := netip.ParseAddr(target.Host); err == nil {
				continue
			}
			s.checkTarget(l.Name, target, l.ConnectTimeout)
		}
	}
}

// listenerTargets returns l's targets: every leg's, or its one. A pool
// resolves its own (pool.go), and shows them as its members.
func listenerTargets(l *conf.Listener) []conf.Target {
	if l.Pool != nil {
		return nil
	}
	if len(l.Targets) == 0 {
		return []conf.Target{l.Target}
	}
	out := make([]conf.Target, len(l.Targets))
	for i, lg := range l.Targets {
		out[i] = lg.Target
	}
	return out
}

// checkTarget resolves target on a goroutine that Run owns through
// s.checks.
func (s *Server) checkTarget(listener string, target conf.Target, timeout time.Duration) {
	s.checks.Add(1)
	go func() {
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
		s.noteResolved(listener, target.String(), err)
	}()
}

// noteResolved records whether listener's target resolved, and logs a
// change to "does not resolve", or back.
func (s *Server) noteResolved(listener, target string, err error) {
	st := TargetStatus{Listener: listener, Target: target, Resolves: err == nil, Checked: time.Now()}
	if err != nil {
		st.Error = err.Error()
	}
	s.targets.mu.Lock()
	prev, ok := s.targets.byName[targetKey{listener, target}]
	s.targets.mu.Unlock()
	if !ok {
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

// targetsText is what log lines say of l's targets: its one, its list,
// or its pool's.
func targetsText(l *conf.Listener) string {
	var ts []conf.Target
	switch {
	case l.Pool != nil:
		ts = l.Pool.Targets
	case len(l.Targets) > 1:
		ts = listenerTargets(l)
	default:
		return l.Target.String()
	}
	var b strings.Builder
	if l.Pool != nil {
		b.WriteString("pool ")
	}
	for i, t := range ts {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(t.String())
	}
	return b.String()
}

// noteDial updates listener's target status from a dial's outcome: a
// connected name resolved, and one that found no address did not. Other
// failures (refused, timed out) say nothing of the name.
func (s *Server) noteDial(o *listenerOpts, target conf.Target, err error) {
	if _, perr := netip.ParseAddr(target.Host); perr == nil {
		return
	}
	var dnsErr *net.DNSError
	switch {
	case err == nil:
		s.noteResolved(o.Name, target.String(), nil)
	case errors.As(err, &dnsErr):
		s.noteResolved(o.Name, target.String(), dnsErr)
	}
}
