package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/bmpproxy/bmpproxy/pool"
	proxyproto "github.com/pires/go-proxyproto"
)

// Pools. A listener with a pool sends each router session to one member,
// the pool's pick for the router's address (package pool), instead of to
// fixed targets. The pick is made at every dial: at setup, where a member
// that does not answer is marked down and the next one is tried, and,
// with resync, at every redial of the session's leg, so a leg whose
// member died is dialed to the router's next choice and replayed there.
//
// A placement loop per pool re-checks every router session of its
// listener whenever the pool changes (a member's health, drain, the
// member set), and moves the sessions whose member may no longer have
// them:
//   - With resync, a move is make-before-break: a new leg is dialed to the
//     router's pick and replayed, and only once it is live is the old leg
//     closed. The router never notices. A member that went down moves its
//     routers (failover); a drained one moves them (drain); with
//     rebalance, a router whose pick is now another member moves to it.
//   - Without resync a collector cannot join a session halfway: a session
//     whose member went down or was drained is closed, and the router,
//     reconnecting, is placed on an eligible member.
//
// Routers on members that stay eligible are never touched.

// Move reasons, as metric labels and in log lines.
const (
	MoveFailover  = "failover"
	MoveDrain     = "drain"
	MoveRebalance = "rebalance"
)

// maxPoolTries bounds the members one dial tries in turn, each within
// the connect timeout.
const maxPoolTries = 3

// errMoved ends a leg, or without resync a router session, that left its
// member.
var errMoved = errors.New("moved to another pool member")

// errNoMember is a dial with no eligible member in the pool.
var errNoMember = errors.New("no eligible member in the pool")

// listenerPool is one pool listener's pool at run time. It outlives
// reloads that keep the listener's pool (pool.Update), so connections
// accepted before still find it.
type listenerPool struct {
	name      string
	pool      *pool.Pool
	rebalance atomic.Bool
	moves     [numMoveReasons]atomic.Uint64
	stop      context.CancelFunc // nil until run

	pendingMu sync.Mutex
	pending   []netip.AddrPort // drains a predecessor handed over, for members not known yet
}

// moveReason indexes the move reasons.
type moveReason int

const (
	moveFailover moveReason = iota
	moveDrain
	moveRebalance
	numMoveReasons
)

func (r moveReason) String() string {
	switch r {
	case moveFailover:
		return MoveFailover
	case moveDrain:
		return MoveDrain
	}
	return MoveRebalance
}

// poolConfig is what package pool is built from, for listener l.
func (s *Server) poolConfig(l *conf.Listener) pool.Config {
	targets := make([]string, len(l.Pool.Targets))
	for i, t := range l.Pool.Targets {
		targets[i] = t.String()
	}
	pp := l.Pool.ProxyProtocol
	return pool.Config{
		Name:            l.Name,
		Targets:         targets,
		HealthInterval:  l.Pool.HealthInterval,
		ResolveInterval: l.Pool.ResolveInterval,
		ConnectTimeout:  l.ConnectTimeout,
		DownFor:         l.Pool.HoldDown,
		DownForMax:      10 * l.Pool.HoldDown,
		Probe:           func(ctx context.Context, a netip.AddrPort) error { return s.probe(ctx, pp, a) },
		LookupNetIP:     s.opts.LookupNetIP,
		Logger:          s.opts.Logger,
	}
}

// probe checks a member: it connects within ctx and, to a member that
// reads PROXY v2 headers, sends a LOCAL one, the form the protocol has
// for health checks, so that the collector sees no router.
func (s *Server) probe(ctx context.Context, pp conf.ProxyProtocol, a netip.AddrPort) error {
	dial := s.opts.Dial
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	nc, err := dial(ctx, "tcp", a.String())
	if err != nil {
		return err
	}
	defer nc.Close()
	if pp != conf.ProxyV2 {
		return nil
	}
	// LOCAL, with no addresses: the receiver must accept it and treat the
	// connection as the sender's own.
	local, err := (&proxyproto.Header{Version: 2, Command: proxyproto.LOCAL}).Format()
	if err != nil {
		return fmt.Errorf("PROXY v2 LOCAL header: %w", err)
	}
	if dl, ok := ctx.Deadline(); ok {
		nc.SetWriteDeadline(dl)
	}
	if _, err := nc.Write(local); err != nil {
		return fmt.Errorf("write the PROXY v2 LOCAL header: %w", err)
	}
	return nil
}

// syncPools makes the pools of cfg's pool listeners, or updates the ones
// that exist, before the listeners' options are built; it stops the
// pools of listeners that no longer have one. Their connections keep
// their member; nothing moves them. It runs on the Run goroutine.
func (s *Server) syncPools(cfg *conf.Config) error {
	want := map[string]*conf.Listener{}
	for i := range cfg.Listeners {
		if l := &cfg.Listeners[i]; l.Pool != nil {
			want[l.Name] = l
		}
	}
	var errs []error
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, lp := range s.pools {
		if want[name] == nil {
			if lp.stop != nil {
				lp.stop()
			}
			delete(s.pools, name)
		}
	}
	for name, l := range want {
		pc := s.poolConfig(l)
		if lp := s.pools[name]; lp != nil {
			if err := lp.pool.Update(pc); err != nil {
				errs = append(errs, fmt.Errorf("listener %q: pool: %w", name, err))
			}
			lp.rebalance.Store(l.Pool.Rebalance)
			continue
		}
		p, err := pool.New(pc)
		if err != nil {
			errs = append(errs, fmt.Errorf("listener %q: pool: %w", name, err))
			continue
		}
		lp := &listenerPool{name: name, pool: p}
		lp.rebalance.Store(l.Pool.Rebalance)
		s.pools[name] = lp
	}
	return errors.Join(errs...)
}

// adoptDrains drains again the members a predecessor had drained, in
// the pools that still have them. A member from a name is not known until
// the name is resolved: its drain waits in the pool's pending drains,
// which the placement loop applies before it places anything.
func (s *Server) adoptDrains(drained map[string][]netip.AddrPort) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, members := range drained {
		if lp := s.pools[name]; lp != nil {
			lp.pendingMu.Lock()
			lp.pending = append(lp.pending, members...)
			lp.pendingMu.Unlock()
			s.applyPendingDrains(lp)
		}
	}
}

// applyPendingDrains drains the pending members lp now knows.
func (s *Server) applyPendingDrains(lp *listenerPool) {
	lp.pendingMu.Lock()
	defer lp.pendingMu.Unlock()
	kept := lp.pending[:0]
	for _, m := range lp.pending {
		if err := lp.pool.Drain(m); err != nil {
			kept = append(kept, m) // not known yet
			continue
		}
		s.opts.Logger.Info().Str("listener", lp.name).Stringer("member", m).Msg("pool member drained, as the predecessor had it")
	}
	lp.pending = kept
}

// runPools starts, for every pool not yet running, its health and
// resolution loop (pool.Run) and its placement loop, on goroutines that
// s.poolRuns counts and stopPools ends.
func (s *Server) runPools() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, lp := range s.pools {
		if lp.stop != nil {
			continue
		}
		ctx, stop := context.WithCancel(context.Background())
		lp.stop = stop
		s.poolRuns.Add(2)
		go func() {
			defer s.poolRuns.Done()
			lp.pool.Run(ctx)
		}()
		go func() {
			defer s.poolRuns.Done()
			s.placementLoop(ctx, lp)
		}()
	}
}

// stopPools ends every pool's loops and waits for them.
func (s *Server) stopPools() {
	s.mu.Lock()
	for _, lp := range s.pools {
		if lp.stop != nil {
			lp.stop()
		}
	}
	s.mu.Unlock()
	s.poolRuns.Wait()
}

// placementLoop re-checks lp's router sessions at once (sessions a
// predecessor handed over included) and at every change of its pool,
// until ctx is done.
func (s *Server) placementLoop(ctx context.Context, lp *listenerPool) {
	for {
		s.applyPendingDrains(lp)
		for _, c := range s.tracked() {
			if c.pool == lp {
				s.checkPlacement(c)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-lp.pool.Changed():
		}
	}
}

// checkPlacement moves c if its member may no longer have it.
func (s *Server) checkPlacement(c *conn) {
	lp := c.pool
	c.mu.Lock()
	if c.dirs == nil {
		// In setup, which picks afresh; c.fan is setup's until then.
		c.mu.Unlock()
		return
	}
	if c.fan == nil {
		// Without resync: one target socket, whose member is fixed at
		// setup.
		m := c.member
		c.mu.Unlock()
		if lp.pool.Eligible(m) {
			return
		}
		st, known := memberStatus(lp, m)
		lp.moves[moveReasonOf(st)].Add(1)
		c.fail(stageMoved, fmt.Errorf("%w: member %s is %s; without resync a collector cannot join a session halfway, so the router reconnects and is placed again",
			errMoved, m, stateText(st, known)))
		return
	}
	if c.aborted || c.finished || c.up().state == dirEnded {
		c.mu.Unlock()
		return
	}
	cur := c.memberLeg()
	if cur == nil || cur.replacedBy != nil {
		c.mu.Unlock()
		return // no leg to move, or a move under way
	}
	if stale := c.staleLegs(cur); len(stale) > 0 {
		c.mu.Unlock()
		for _, l := range stale {
			s.endLeg(l, fmt.Errorf("%w: a move an upgrade cut short is finished: %s has the router", errMoved, cur.cfg.Target))
		}
		return // the next change looks again
	}
	m := cur.member()
	want, ok := lp.pool.Pick(c.client.Addr())
	var why moveReason
	switch {
	case !lp.pool.Eligible(m):
		st, _ := memberStatus(lp, m)
		why = moveReasonOf(st)
	case lp.rebalance.Load() && ok && want.Addr != m:
		why = moveRebalance
	default:
		c.mu.Unlock()
		return
	}
	if cur.state == legConnecting {
		// Waiting to be dialed again: dial now, which picks afresh.
		if cur.retry != nil && cur.retry.Stop() {
			s.live.Done() // it never ran
			cur.retry = nil
			cur.attempts = max(cur.attempts-1, 0)
			s.scheduleDial(cur, 0)
		}
		c.mu.Unlock()
		return
	}
	if !ok {
		c.mu.Unlock()
		c.logger(&c.opts.log).Warn().Str("member", m.String()).Str("move", why.String()).
			Msg("router not moved: no other pool member is eligible; it stays where it is")
		return
	}
	c.pruneLegs()
	nl := &leg{c: c, index: c.nextLeg(), cfg: s.memberCfg(c.opts, want.Addr), ctr: c.opts.state.leg(want.Addr.String()),
		state: legConnecting, revDone: true, replaces: cur, move: why, moving: true}
	cur.replacedBy = nl
	c.legs = append(c.legs, nl)
	s.scheduleDial(nl, 0)
	c.mu.Unlock()
	c.logger(&c.opts.log).Info().Str("member", m.String()).Str("to", want.Addr.String()).Str("move", why.String()).
		Msg("moving router to another pool member: its new leg is replayed, then the old one closed")
}

// staleLegs returns the legs of c, other than cur, its live member leg,
// that are connected with no move linking them to cur: a move that an
// upgrade cut short, whose links the successor does not know. The newest
// leg, cur, has the router; the others are ended. c.mu is held.
func (c *conn) staleLegs(cur *leg) []*leg {
	if cur.state != legLive {
		return nil
	}
	var out []*leg
	for _, l := range c.legs {
		switch l.state {
		case legWaiting, legReplaying, legLive:
			if l != cur && l.replaces == nil && l.replacedBy == nil {
				out = append(out, l)
			}
		}
	}
	return out
}

// memberStatus is what lp's pool shows of member m: zero, with known
// false, if the pool no longer has it.
func memberStatus(lp *listenerPool, m netip.AddrPort) (st pool.MemberStatus, known bool) {
	for _, st := range lp.pool.Members() {
		if st.Addr == m {
			return st, true
		}
	}
	return pool.MemberStatus{}, false
}

// moveReasonOf is why a router leaves a member that is not eligible, as
// st, its status, says.
func moveReasonOf(st pool.MemberStatus) moveReason {
	if st.Drained {
		return moveDrain
	}
	return moveFailover
}

// stateText describes a member, from its status, in a few words.
func stateText(st pool.MemberStatus, known bool) string {
	switch {
	case !known:
		return "no longer in the pool"
	case st.Drained:
		return "drained"
	case !st.Healthy:
		return "down"
	}
	return "up"
}

// memberLeg is the leg of c's router session that its member has: the
// newest one that is neither down nor closed. c.mu is held.
func (c *conn) memberLeg() *leg {
	for i := len(c.legs) - 1; i >= 0; i-- {
		switch l := c.legs[i]; l.state {
		case legConnecting, legWaiting, legReplaying, legLive:
			if l.replaces == nil {
				return l
			}
			// A move's new leg: the old one is the member's until the
			// new one is live.
		}
	}
	return nil
}

// nextLeg is the index of a leg added to c. c.mu is held.
func (c *conn) nextLeg() int {
	n := 0
	for _, l := range c.legs {
		n = max(n, l.index+1)
	}
	return n
}

// pruneLegs drops from c.legs the legs that are over for good and fully
// finished, so a router moved many times keeps a bounded list. c.mu is
// held.
func (c *conn) pruneLegs() {
	kept := c.legs[:0]
	for _, l := range c.legs {
		over := (l.state == legRemoved || l.state == legDown) && l.closed && l.sinkDone && l.revDone && l.sock == nil
		if !over {
			kept = append(kept, l)
		}
	}
	clear(c.legs[len(kept):])
	c.legs = kept
}

// noMember names the target of a pool leg not yet on a member, in logs,
// /routers and metrics.
const noMember = "none"

// name is how logs, /routers and metrics name l's target: its target, or
// noMember for a pool leg that has no member yet.
func (l *leg) name() string {
	if l.cfg.Target.IsZero() {
		return noMember
	}
	return l.cfg.Target.String()
}

// member is the pool member l is dialed to.
func (l *leg) member() netip.AddrPort { return legMember(l.cfg) }

// legMember is the pool member that cfg, a pool leg's settings, dials:
// its target is an address. Zero before the first pick.
func legMember(cfg conf.Leg) netip.AddrPort {
	a, err := netip.ParseAddr(cfg.Target.Host)
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(a, cfg.Target.Port)
}

// memberCfg is the leg settings for pool member a of o's pool; a zero a
// gives them with no target yet.
func (s *Server) memberCfg(o *listenerOpts, a netip.AddrPort) conf.Leg {
	p := o.Pool
	cfg := conf.Leg{ProxyProtocol: p.ProxyProtocol, Buffer: p.Buffer, TransparentMark: p.TransparentMark}
	if a.IsValid() {
		cfg.Target = conf.Target{Host: a.Addr().String(), Port: a.Port()}
	}
	return cfg
}

// primaryCfg is the settings c's first leg is dialed with: its
// listener's first target's, or for a pool the pool's, whose member
// dialLeg picks.
func (c *conn) primaryCfg() conf.Leg {
	if c.opts.Pool != nil {
		return c.srv.memberCfg(c.opts, netip.AddrPort{})
	}
	return c.opts.Targets[0]
}

// legCfgs is the settings of c's legs, in order: its listener's targets,
// or for a pool the one leg to its pick.
func (c *conn) legCfgs() []conf.Leg {
	if c.opts.Pool != nil {
		return []conf.Leg{c.primaryCfg()}
	}
	return c.opts.Targets
}

// dialLeg connects cfg's target for c, and notes the outcome. For a pool
// connection it dials the router's pick instead, trying the next pick
// after a member that does not answer (which the pool then holds down),
// up to maxPoolTries members; avoid, if valid, is a member it must not
// use (a move's old one). It returns the settings it connected with.
func (s *Server) dialLeg(ctx context.Context, c *conn, cfg conf.Leg, avoid netip.AddrPort) (stream, conf.Leg, error) {
	o := c.opts
	if o.Pool != nil && c.pool == nil {
		return nil, cfg, fmt.Errorf("listener %q: its pool could not be made (see the reload's error)", o.Name)
	}
	if c.pool == nil {
		sock, err := s.dial(ctx, o, cfg, c.client)
		s.noteDial(o, cfg.Target, err)
		return sock, cfg, err
	}
	p := c.pool.pool
	var errs []error
	for range maxPoolTries {
		m, ok := p.Pick(c.client.Addr())
		if !ok {
			errs = append(errs, fmt.Errorf("listener %q: %w (%s)", o.Name, errNoMember, poolSummary(p)))
			break
		}
		if m.Addr == avoid {
			errs = append(errs, fmt.Errorf("%w: the router's pick is %s, the member it leaves", errNoMember, m.Addr))
			break
		}
		cfg = s.memberCfg(o, m.Addr)
		sock, err := s.dial(ctx, o, cfg, c.client)
		if err == nil {
			return sock, cfg, nil
		}
		p.DialFailed(m.Addr, err)
		errs = append(errs, fmt.Errorf("member %s: %w", m.Addr, err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, cfg, errors.Join(errs...)
}

// poolSummary counts p's members by state, for an error.
func poolSummary(p *pool.Pool) string {
	var up, down, drained int
	for _, m := range p.Members() {
		switch {
		case m.Drained:
			drained++
		case m.Healthy:
			up++
		default:
			down++
		}
	}
	return fmt.Sprintf("%d members: %d up, %d down, %d drained", up+down+drained, up, down, drained)
}

// moveDone closes the leg that l, now live, replaces: the move is over.
func (s *Server) moveDone(l *leg) {
	c := l.c
	c.mu.Lock()
	old, why, counts := l.replaces, l.move, l.moving
	// l now has the router. old keeps replacedBy until it is ended, so
	// that no placement check takes it for a stale leg meanwhile.
	l.replaces, l.moving = nil, false
	c.mu.Unlock()
	if counts {
		c.pool.moves[why].Add(1)
	}
	if old == nil {
		return // it failed meanwhile: this leg took over already
	}
	s.endLeg(old, fmt.Errorf("%w (%s): %s took over", errMoved, why, l.cfg.Target))
}

// abandonMove ends l, a move's new leg that could not be dialed: the
// router stays on its member, and the next change of the pool looks
// again.
func (s *Server) abandonMove(l *leg, err error) {
	c := l.c
	c.mu.Lock()
	if l.state != legConnecting {
		c.mu.Unlock()
		return
	}
	l.state, l.err = legDown, err
	l.sinkDone, l.revDone, l.closed = true, true, true
	l.abandonMove()
	c.mu.Unlock()
	c.logger(&c.opts.log).Warn().Err(err).Msg("router not moved: no other pool member took it; it stays where it is")
	s.maybeFinishFanout(c)
}

// abandonMove forgets that l was to replace another leg: l failed before
// it was live, or had no member to go to. c.mu is held.
func (l *leg) abandonMove() {
	if l.replaces != nil {
		l.replaces.replacedBy = nil
		l.replaces = nil
	}
}

// PoolStatus is one pool listener's pool.
type PoolStatus struct {
	Listener string            `json:"listener"`
	Members  []MemberStatus    `json:"members"`
	Moves    map[string]uint64 `json:"moves"`
}

// MemberStatus is one member of a pool, with the router sessions it has.
type MemberStatus struct {
	pool.MemberStatus
	Routers int `json:"routers"`
}

// Pools describes every pool listener's pool, by listener name.
func (s *Server) Pools() []PoolStatus {
	s.mu.Lock()
	pools := make([]*listenerPool, 0, len(s.pools))
	for _, lp := range s.pools {
		pools = append(pools, lp)
	}
	s.mu.Unlock()
	sort.Slice(pools, func(i, j int) bool { return pools[i].name < pools[j].name })
	routers := s.routersByMember()
	var out []PoolStatus
	for _, lp := range pools {
		ps := PoolStatus{Listener: lp.name, Moves: map[string]uint64{}}
		for r := range moveReason(numMoveReasons) {
			ps.Moves[r.String()] = lp.moves[r].Load()
		}
		for _, m := range lp.pool.Members() {
			ps.Members = append(ps.Members, MemberStatus{MemberStatus: m, Routers: routers[memberKey{lp, m.Addr}]})
		}
		out = append(out, ps)
	}
	return out
}

// memberKey names one member of one pool.
type memberKey struct {
	lp *listenerPool
	m  netip.AddrPort
}

// currentMember is the pool member c's router is on, or zero: not a pool
// connection, or not connected to one now. c.mu is held.
func (c *conn) currentMember() netip.AddrPort {
	if c.pool == nil || c.dirs == nil { // in setup: c.fan is setup's
		return netip.AddrPort{}
	}
	if c.fan == nil {
		return c.member
	}
	if l := c.memberLeg(); l != nil && l.state != legConnecting {
		return l.member()
	}
	return netip.AddrPort{}
}

// routersByMember counts the open router sessions on each pool member.
func (s *Server) routersByMember() map[memberKey]int {
	out := map[memberKey]int{}
	for _, c := range s.tracked() {
		if c.pool == nil {
			continue
		}
		c.mu.Lock()
		m := c.currentMember()
		c.mu.Unlock()
		if m.IsValid() {
			out[memberKey{c.pool, m}]++
		}
	}
	return out
}

// Drain stops member (host:port) of listener's pool from taking router
// sessions, and moves the ones it has elsewhere (with resync, replayed;
// without, closed so that they reconnect). An empty listener means every
// pool that has the member. It errors if no such pool has it.
func (s *Server) Drain(listener, member string) error {
	return s.setDrained(listener, member, true)
}

// Undrain reverses Drain. Routers moved away stay where they are, unless
// the pool rebalances.
func (s *Server) Undrain(listener, member string) error {
	return s.setDrained(listener, member, false)
}

// ErrNoPool reports a drain for a listener that has no pool.
var ErrNoPool = errors.New("no pool listener by that name")

func (s *Server) setDrained(listener, member string, drain bool) error {
	a, err := netip.ParseAddrPort(member)
	if err != nil {
		return fmt.Errorf("member %q: want the member's address and port, as /pool lists it: %w", member, err)
	}
	a = netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
	s.mu.Lock()
	var pools []*listenerPool
	for name, lp := range s.pools {
		if listener == "" || listener == name {
			pools = append(pools, lp)
		}
	}
	s.mu.Unlock()
	if len(pools) == 0 {
		if listener == "" {
			return fmt.Errorf("%w: no listener has a pool", ErrNoPool)
		}
		return fmt.Errorf("%w: %q", ErrNoPool, listener)
	}
	found := 0
	for _, lp := range pools {
		f := lp.pool.Undrain
		if drain {
			f = lp.pool.Drain
		}
		switch err := f(a); {
		case err == nil:
			found++
		case errors.Is(err, pool.ErrUnknownMember):
		default:
			return fmt.Errorf("listener %q: %w", lp.name, err)
		}
	}
	if found == 0 {
		return fmt.Errorf("member %s: %w", a, pool.ErrUnknownMember)
	}
	verb := "drained"
	if !drain {
		verb = "undrained"
	}
	s.opts.Logger.Info().Str("listener", listener).Stringer("member", a).Msg("pool member " + verb)
	return nil
}
