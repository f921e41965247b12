package pool

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Run keeps the pool current until ctx is done: it resolves the names and
// probes every member at once, then every ResolveInterval and
// HealthInterval, and at once after an Update. It returns once every
// goroutine it started has ended.
func (p *Pool) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { p.resolveLoop(ctx) })
	p.healthLoop(ctx, &wg)
	wg.Wait()
}

// healthLoop starts a round of probes every health interval, and probes
// the members not yet probed when kicked. The probes join wg.
func (p *Pool) healthLoop(ctx context.Context, wg *sync.WaitGroup) {
	iv := p.interval(func(s *settings) time.Duration { return s.healthInterval })
	t := time.NewTicker(iv)
	defer t.Stop()
	p.probeRound(ctx, wg, false)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			p.probeRound(ctx, wg, false)
		case <-p.healthKick:
			if n := p.interval(func(s *settings) time.Duration { return s.healthInterval }); n != iv {
				iv = n
				t.Reset(iv)
			}
			p.probeRound(ctx, wg, true)
		}
	}
}

// resolveLoop resolves the names at once, then every resolve interval and
// when kicked, one round at a time.
func (p *Pool) resolveLoop(ctx context.Context) {
	iv := p.interval(func(s *settings) time.Duration { return s.resolveInterval })
	t := time.NewTicker(iv)
	defer t.Stop()
	for {
		p.resolveRound(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-p.resolveKick:
			if n := p.interval(func(s *settings) time.Duration { return s.resolveInterval }); n != iv {
				iv = n
				t.Reset(iv)
			}
		}
	}
}

func (p *Pool) interval(f func(*settings) time.Duration) time.Duration {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return f(&p.s)
}

// probeRound starts a probe of each member that has none in flight (only
// of those not yet probed, if fresh).
func (p *Pool) probeRound(ctx context.Context, wg *sync.WaitGroup, fresh bool) {
	p.mu.Lock()
	probe, timeout := p.s.probe, p.s.connectTimeout
	var due []*member
	for _, m := range p.members {
		if m.probing || fresh && !m.fresh {
			continue
		}
		m.probing, m.fresh = true, false
		due = append(due, m)
	}
	p.mu.Unlock()
	for _, m := range due {
		wg.Go(func() {
			pctx, cancel := context.WithTimeout(ctx, timeout)
			err := probe(pctx, m.addr)
			cancel()
			p.probed(ctx, m, err)
		})
	}
}

// probed applies a probe's result to m, unless m was removed meanwhile or
// Run is stopping (a cancelled probe says nothing of the member).
func (p *Pool) probed(ctx context.Context, m *member, err error) {
	p.mu.Lock()
	m.probing = false
	if ctx.Err() != nil || p.byAddr[m.addr] != m {
		m.fresh = true
		p.mu.Unlock()
		p.probeDone(m.addr, false)
		return
	}
	m.probes++
	var evs []event
	switch {
	case err != nil:
		m.probeFailures++
		reason := "probe: " + err.Error()
		if m.healthy {
			evs = append(evs, p.setHealthLocked(m, false, reason))
		} else {
			m.lastErr = reason
		}
	case !m.healthy && !p.now().Before(m.holdUntil):
		evs = append(evs, p.setHealthLocked(m, true, "probe succeeded"))
	}
	log := p.s.log
	p.mu.Unlock()
	p.emitChanged(log, evs)
	p.probeDone(m.addr, true)
}

// answer is one lookup's outcome.
type answer struct {
	addrs []netip.Addr
	err   error
}

// resolveRound looks every name up, each bounded by the resolve interval,
// and makes the members follow. A name that fails keeps its addresses.
func (p *Pool) resolveRound(ctx context.Context) {
	defer p.roundDone()
	p.mu.RLock()
	lookup, timeout := p.s.lookup, p.s.resolveInterval
	var names []target
	for _, t := range p.s.targets {
		if !t.addr.IsValid() {
			names = append(names, t)
		}
	}
	p.mu.RUnlock()
	if len(names) == 0 {
		return
	}
	answers := make([]answer, len(names))
	var wg sync.WaitGroup
	for i, t := range names {
		wg.Go(func() {
			lctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			answers[i] = clean(lookup(lctx, t.host))
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		return
	}

	p.mu.Lock()
	var evs []event
	for i, t := range names {
		n := p.names[t.key]
		if n == nil {
			continue // an Update removed it meanwhile
		}
		a := answers[i]
		if a.err != nil {
			if !n.failing {
				n.failing = true
				evs = append(evs, event{level: zerolog.WarnLevel, msg: "pool target does not resolve; its members are kept",
					target: t.str, members: len(n.addrs), err: a.err})
			}
			continue
		}
		if n.failing {
			n.failing = false
			evs = append(evs, event{level: zerolog.InfoLevel, msg: "pool target resolves again", target: t.str, members: len(a.addrs)})
		}
		n.addrs = a.addrs
	}
	mevs, added, changed := p.rebuildLocked()
	evs = append(evs, mevs...)
	log := p.s.log
	p.mu.Unlock()

	emit(log, evs)
	if added {
		kick(p.healthKick)
	}
	if changed {
		kick(p.changed)
	}
}

// clean unmaps, sorts and deduplicates a lookup's addresses; none is an
// error.
func clean(addrs []netip.Addr, err error) answer {
	if err != nil {
		return answer{err: err}
	}
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		if a.IsValid() {
			out = append(out, a.Unmap())
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	out = slices.Compact(out)
	if len(out) == 0 {
		return answer{err: errors.New("no addresses")}
	}
	return answer{addrs: out}
}
