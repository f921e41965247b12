// Package pool spreads routers over a pool of BMP collectors, its
// members, and keeps each member's health.
//
// # Members
//
// A pool is built from targets, host:port each: a literal IP address is
// one member, a name is every address it resolves to. Names are resolved
// again every ResolveInterval; a name that fails to resolve keeps the
// members it had, and one that resolves to fewer addresses loses the
// others. An address that two targets give is one member, from the first.
//
// # Placement
//
// A router goes to the eligible member (healthy and not drained) with the
// highest score, by rendezvous (highest-random-weight) hashing of the
// router's address. The score of member m for router r is
//
//	score(m, r) = mix(fnv1a64(key(m) ‖ 0x00 ‖ r16))
//
// where
//   - key(m) is the member's address as netip.AddrPort.String() gives
//     it, with an IPv4-mapped IPv6 address unmapped first:
//     "198.51.100.7:5000", "[2001:db8::7]:5000", "[fe80::7%eth0]:5000";
//   - r16 is the router's address as 16 bytes, netip.Addr.As16(): an
//     IPv6 address as it is, an IPv4 address a.b.c.d (or ::ffff:a.b.c.d)
//     as ::ffff:a.b.c.d; a zone is not hashed;
//   - fnv1a64 is FNV-1a 64 over those bytes: h = 0xcbf29ce484222325, then
//     for each byte b, h = (h XOR b) × 0x100000001b3;
//   - mix is splitmix64's finalizer: h ^= h>>30; h *= 0xbf58476d1ce4e5b9;
//     h ^= h>>27; h *= 0x94d049bb133111eb; h ^= h>>31;
//
// all arithmetic modulo 2⁶⁴. Of members with the same score the one whose
// key sorts first, byte by byte, wins. For example
// score(198.51.100.1:5000, 203.0.113.9) is 0xeb698a08ea4a9060.
//
// A placement therefore depends only on the router's address and the set
// of eligible members: it is the same after a restart and on every
// bmpproxy that sees the same members. A member that joins takes only the
// routers it now scores highest for, and one that leaves gives up only
// its own.
//
// # Health
//
// A member newly known counts as healthy, so routers are placed at once.
// Every HealthInterval each member is probed (at most one probe in flight
// per member, each bounded by ConnectTimeout). A failed probe or a failed
// dial (DialFailed) marks it down at once; FailThreshold failed legs
// within FailWindow (LegFailed) mark it down and hold it down for
// DownFor, doubled on each repeat up to DownForMax and back to DownFor
// once it has stayed up for DownForMax. Only a successful probe brings a
// member up, and not while it is held down. Drain takes a member out of
// placement without touching its health; it is still probed and shown.
package pool

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bmpproxy/bmpproxy/internal/dnsname"
	"github.com/rs/zerolog"
)

// ErrUnknownMember is returned for an address that is not a member.
var ErrUnknownMember = errors.New("pool: not a member")

// Defaults for a Config's zero fields.
const (
	DefaultHealthInterval  = 5 * time.Second
	DefaultResolveInterval = 30 * time.Second
	DefaultConnectTimeout  = 5 * time.Second
	DefaultFailThreshold   = 3
	DefaultFailWindow      = time.Minute
	DefaultDownFor         = 30 * time.Second
	DefaultDownForMax      = 5 * time.Minute
)

// Member is one collector address of a pool.
type Member struct {
	Addr netip.AddrPort // what is dialed
	From string         // the configured target it came from: "collectors.bmp.svc:5000" or the literal
}

// Config describes a Pool. A zero duration or threshold is its default.
type Config struct {
	Name            string        // the listener's name, for logs
	Targets         []string      // host:port each; a literal IP is one member, a name is every address it resolves to
	HealthInterval  time.Duration // how often every member is probed
	ResolveInterval time.Duration // how often names are resolved again; it also bounds one lookup
	ConnectTimeout  time.Duration // a probe's bound
	// Probe checks one member: nil if it accepts a TCP connection within
	// ctx. It must return once ctx is done. Nil: dial and close.
	Probe func(ctx context.Context, addr netip.AddrPort) error
	// LookupNetIP resolves a name. It must return once ctx is done. Nil:
	// net.DefaultResolver.LookupNetIP(ctx, "ip", host).
	LookupNetIP func(ctx context.Context, host string) ([]netip.Addr, error)
	// Passive health: FailThreshold leg failures within FailWindow mark a
	// member down for DownFor (doubling on each repeat up to DownForMax,
	// reset once it stays up DownForMax). Zero: defaults 3, 1m, 30s, 5m.
	// DownForMax below DownFor is an error; unset, it is at least DownFor.
	FailThreshold                   int
	FailWindow, DownFor, DownForMax time.Duration
	Logger                          zerolog.Logger
}

// MemberStatus is what is known of one member.
type MemberStatus struct {
	Addr      netip.AddrPort `json:"member"`
	From      string         `json:"from"` // the target it was resolved from
	Healthy   bool           `json:"healthy"`
	Drained   bool           `json:"drained"`
	Since     time.Time      `json:"since"`                // of the current health state
	LastError string         `json:"last_error,omitempty"` // why it is down, if it is

	// Counts since the member became known.
	Probes        uint64 `json:"probes"`
	ProbeFailures uint64 `json:"probe_failures"`
	DialFailures  uint64 `json:"dial_failures"`
	LegFailures   uint64 `json:"leg_failures"`
	HealthChanges uint64 `json:"health_changes"`
}

// Pool is a set of members with their health, made by New. It is safe
// for concurrent use; Run, which keeps it current, runs at most once at a
// time.
type Pool struct {
	changed     chan struct{} // capacity 1: a change since the receiver last looked
	healthKick  chan struct{} // capacity 1: probe the fresh members, re-read the interval
	resolveKick chan struct{} // capacity 1: resolve now, re-read the interval

	// Hooks, set by tests before Run: the clock, and what is told when a
	// probe's result was applied (or ignored) and a resolution round ended.
	now       func() time.Time
	probeDone func(addr netip.AddrPort, applied bool)
	roundDone func()

	mu      sync.RWMutex
	s       settings
	names   map[string]*name // by target key: one for each name target of s
	members []*member        // by key, the placement tie order
	byAddr  map[netip.AddrPort]*member
}

// settings is a validated Config.
type settings struct {
	targets                                         []target
	healthInterval, resolveInterval, connectTimeout time.Duration
	probe                                           func(context.Context, netip.AddrPort) error
	lookup                                          func(context.Context, string) ([]netip.Addr, error)
	failThreshold                                   int
	failWindow, downFor, downForMax                 time.Duration
	log                                             zerolog.Logger
}

// target is one configured target.
type target struct {
	str  string     // as a member's From shows it
	key  string     // what tells targets apart: a name in any case is one
	host string     // a name's host, for the lookup
	port uint16     // every member's port
	addr netip.Addr // a literal's address; invalid for a name
}

// name is what is known of a name target.
type name struct {
	addrs   []netip.Addr // the last good answer, sorted; nil before one
	failing bool         // the last lookup failed: warned once per streak
}

// member is one member's state. Its fields are guarded by Pool.mu; addr,
// key and prefix never change.
type member struct {
	addr   netip.AddrPort
	key    string // memberKey(addr)
	prefix uint64 // memberPrefix(key)
	from   string

	healthy   bool
	drained   bool
	since     time.Time     // of the current health state
	lastErr   string        // why it is down
	holdUntil time.Time     // held down by leg failures: no probe brings it up before
	nextHold  time.Duration // the next hold, if it comes before it has stayed up downForMax
	fails     []time.Time   // leg failures within the window, oldest first; fewer than failThreshold

	probing bool // a probe is in flight
	fresh   bool // not yet probed: a kick probes it

	probes, probeFailures, dialFailures, legFailures, healthChanges uint64
}

// New validates cfg and builds its pool, with the literal targets'
// members; Run resolves the names and starts the probes.
func New(cfg Config) (*Pool, error) {
	s, err := validate(cfg)
	if err != nil {
		return nil, err
	}
	p := &Pool{
		changed:     make(chan struct{}, 1),
		healthKick:  make(chan struct{}, 1),
		resolveKick: make(chan struct{}, 1),
		now:         time.Now,
		probeDone:   func(netip.AddrPort, bool) {},
		roundDone:   func() {},
		names:       map[string]*name{},
		byAddr:      map[netip.AddrPort]*member{},
	}
	p.mu.Lock()
	evs, _, _ := p.applyLocked(s)
	p.mu.Unlock()
	emit(s.log, evs)
	return p, nil
}

// Update applies a reload: new targets and settings. Members that stay
// keep their health, drain and counters; a name that stays keeps its
// addresses until it is resolved again, at once, by Run. On an error
// nothing changes.
func (p *Pool) Update(cfg Config) error {
	s, err := validate(cfg)
	if err != nil {
		return err
	}
	p.mu.Lock()
	evs, _, changed := p.applyLocked(s)
	p.mu.Unlock()
	emit(s.log, evs)
	kick(p.resolveKick)
	kick(p.healthKick)
	if changed {
		kick(p.changed)
	}
	return nil
}

// Changed receives after any change of the member set, a member's health
// or its drain. One receive may stand for several changes.
func (p *Pool) Changed() <-chan struct{} { return p.changed }

// Pick returns the eligible member with the highest score for router;
// false if no member is eligible.
func (p *Pool) Pick(router netip.Addr) (Member, bool) {
	r := router.As16()
	p.mu.RLock()
	defer p.mu.RUnlock()
	var best *member
	var top uint64
	for _, m := range p.members { // by key: on a tie the first stays
		if !m.healthy || m.drained {
			continue
		}
		if sc := scoreFrom(m.prefix, &r); best == nil || sc > top {
			best, top = m, sc
		}
	}
	if best == nil {
		return Member{}, false
	}
	return Member{Addr: best.addr, From: best.from}, true
}

// Ranking returns every member, eligible or not, best first for router.
func (p *Pool) Ranking(router netip.Addr) []Member {
	r := router.As16()
	type scored struct {
		m     Member
		key   string
		score uint64
	}
	p.mu.RLock()
	all := make([]scored, len(p.members))
	for i, m := range p.members {
		all[i] = scored{Member{m.addr, m.from}, m.key, scoreFrom(m.prefix, &r)}
	}
	p.mu.RUnlock()
	slices.SortFunc(all, func(a, b scored) int {
		return cmp.Or(cmp.Compare(b.score, a.score), strings.Compare(a.key, b.key))
	})
	out := make([]Member, len(all))
	for i, s := range all {
		out[i] = s.m
	}
	return out
}

// Eligible reports whether addr is a member, healthy and not drained.
func (p *Pool) Eligible(addr netip.AddrPort) bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	m := p.byAddr[unmap(addr)]
	return m != nil && m.healthy && !m.drained
}

// DialFailed records that a dial to addr failed: it did not accept a TCP
// connection, so it is down at once, until a probe succeeds. An address
// that is not a member is ignored.
func (p *Pool) DialFailed(addr netip.AddrPort, err error) {
	p.mu.Lock()
	m := p.byAddr[unmap(addr)]
	if m == nil {
		p.mu.Unlock()
		return
	}
	m.dialFailures++
	var evs []event
	reason := "dial: " + errText(err)
	if m.healthy {
		evs = append(evs, p.setHealthLocked(m, false, reason))
	} else {
		m.lastErr = reason
	}
	log := p.s.log
	p.mu.Unlock()
	p.emitChanged(log, evs)
}

// LegFailed records that a connected leg to addr failed or was reset. The
// FailThreshold-th failure within FailWindow marks it down and holds it
// down. An address that is not a member is ignored, and a member down
// already only counts it.
func (p *Pool) LegFailed(addr netip.AddrPort, err error) {
	p.mu.Lock()
	m := p.byAddr[unmap(addr)]
	if m == nil {
		p.mu.Unlock()
		return
	}
	m.legFailures++
	var evs []event
	if m.healthy {
		evs = p.legFailedLocked(m, err)
	}
	log := p.s.log
	p.mu.Unlock()
	p.emitChanged(log, evs)
}

// legFailedLocked counts a leg failure of healthy m, and marks it down
// once there are failThreshold within failWindow.
func (p *Pool) legFailedLocked(m *member, err error) []event {
	now := p.now()
	cutoff := now.Add(-p.s.failWindow)
	i := 0
	for i < len(m.fails) && !m.fails[i].After(cutoff) {
		i++
	}
	m.fails = append(m.fails[:0], m.fails[i:]...)
	m.fails = append(m.fails, now)
	if len(m.fails) < p.s.failThreshold {
		return nil
	}
	hold := p.s.downFor
	if m.nextHold > 0 && now.Sub(m.since) < p.s.downForMax {
		hold = min(m.nextHold, p.s.downForMax)
	}
	m.holdUntil = now.Add(hold)
	m.nextHold = min(2*hold, p.s.downForMax)
	reason := fmt.Sprintf("%d leg failures within %v, the last: %s; held down for %v",
		len(m.fails), p.s.failWindow, errText(err), hold)
	return []event{p.setHealthLocked(m, false, reason)}
}

// Drain takes addr out of placement, for new routers and the ones on it.
// It stays probed and shown. Draining a drained member does nothing.
func (p *Pool) Drain(addr netip.AddrPort) error { return p.setDrained(addr, true) }

// Undrain puts a drained addr back into placement.
func (p *Pool) Undrain(addr netip.AddrPort) error { return p.setDrained(addr, false) }

func (p *Pool) setDrained(addr netip.AddrPort, drained bool) error {
	addr = unmap(addr)
	p.mu.Lock()
	m := p.byAddr[addr]
	if m == nil {
		p.mu.Unlock()
		return fmt.Errorf("%w: %v", ErrUnknownMember, addr)
	}
	var evs []event
	if m.drained != drained {
		m.drained = drained
		msg := "pool member drained"
		if !drained {
			msg = "pool member undrained"
		}
		evs = append(evs, event{level: zerolog.InfoLevel, msg: msg, member: m.addr, from: m.from})
	}
	log := p.s.log
	p.mu.Unlock()
	p.emitChanged(log, evs)
	return nil
}

// Members returns every member's status, sorted by address.
func (p *Pool) Members() []MemberStatus {
	p.mu.RLock()
	out := make([]MemberStatus, len(p.members))
	for i, m := range p.members {
		out[i] = MemberStatus{
			Addr: m.addr, From: m.from,
			Healthy: m.healthy, Drained: m.drained,
			Since: m.since, LastError: m.lastErr,
			Probes: m.probes, ProbeFailures: m.probeFailures,
			DialFailures: m.dialFailures, LegFailures: m.legFailures,
			HealthChanges: m.healthChanges,
		}
	}
	p.mu.RUnlock()
	slices.SortFunc(out, func(a, b MemberStatus) int { return a.Addr.Compare(b.Addr) })
	return out
}

// applyLocked makes s the pool's settings: names that stay keep their
// addresses, and the members follow.
func (p *Pool) applyLocked(s settings) (evs []event, added, changed bool) {
	p.s = s
	names := make(map[string]*name, len(p.names))
	for _, t := range s.targets {
		if t.addr.IsValid() {
			continue
		}
		n := p.names[t.key]
		if n == nil {
			n = &name{}
		}
		names[t.key] = n
	}
	p.names = names
	return p.rebuildLocked()
}

// rebuildLocked makes the members those the targets give now: a member
// that stays keeps its state, a new one is healthy. It reports whether a
// member was added, and whether the set changed.
func (p *Pool) rebuildLocked() (evs []event, added, changed bool) {
	from := make(map[netip.AddrPort]string)
	fromName := make(map[string]bool) // target str → a name that still stands
	for _, t := range p.s.targets {
		if t.addr.IsValid() {
			if _, ok := from[netip.AddrPortFrom(t.addr, t.port)]; !ok {
				from[netip.AddrPortFrom(t.addr, t.port)] = t.str
			}
			continue
		}
		fromName[t.str] = true
		for _, a := range p.names[t.key].addrs {
			if _, ok := from[netip.AddrPortFrom(a, t.port)]; !ok {
				from[netip.AddrPortFrom(a, t.port)] = t.str
			}
		}
	}
	for _, m := range p.members {
		if _, ok := from[m.addr]; ok {
			continue
		}
		reason := "its target was removed"
		if fromName[m.from] {
			reason = "its name no longer resolves to it"
		}
		evs = append(evs, event{level: zerolog.InfoLevel, msg: "pool member removed", member: m.addr, from: m.from, reason: reason})
		changed = true
	}
	now := p.now()
	members := make([]*member, 0, len(from))
	byAddr := make(map[netip.AddrPort]*member, len(from))
	for addr, f := range from {
		m := p.byAddr[addr]
		if m == nil {
			key := memberKey(addr)
			m = &member{addr: addr, key: key, prefix: memberPrefix(key), healthy: true, since: now, fresh: true}
			evs = append(evs, event{level: zerolog.InfoLevel, msg: "pool member added", member: addr, from: f})
			added, changed = true, true
		}
		m.from = f
		members = append(members, m)
		byAddr[addr] = m
	}
	slices.SortFunc(members, func(a, b *member) int { return strings.Compare(a.key, b.key) })
	p.members, p.byAddr = members, byAddr
	return evs, added, changed
}

// setHealthLocked moves m to healthy, for reason, and returns the line
// that says so.
func (p *Pool) setHealthLocked(m *member, healthy bool, reason string) event {
	ev := event{level: zerolog.WarnLevel, msg: "pool member down", member: m.addr, from: m.from,
		old: healthWord(m.healthy), new: healthWord(healthy), reason: reason}
	m.healthy = healthy
	m.since = p.now()
	m.healthChanges++
	m.fails = m.fails[:0]
	if healthy {
		m.lastErr = ""
		ev.level, ev.msg = zerolog.InfoLevel, "pool member up"
	} else {
		m.lastErr = reason
	}
	return ev
}

// emitChanged logs evs and, if there are any, tells Changed.
func (p *Pool) emitChanged(log zerolog.Logger, evs []event) {
	emit(log, evs)
	if len(evs) > 0 {
		kick(p.changed)
	}
}

func healthWord(healthy bool) string {
	if healthy {
		return "up"
	}
	return "down"
}

func errText(err error) string {
	if err == nil {
		return "unknown error"
	}
	return err.Error()
}

// kick sends on a capacity-1 channel without waiting.
func kick(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// event is one log line, written once the pool's lock is released.
type event struct {
	level    zerolog.Level
	msg      string
	member   netip.AddrPort // zero for a target's line
	from     string
	target   string
	old, new string
	reason   string
	err      error
	members  int
}

func emit(log zerolog.Logger, evs []event) {
	for _, ev := range evs {
		e := log.WithLevel(ev.level)
		if ev.member.IsValid() {
			e = e.Stringer("member", ev.member).Str("from", ev.from)
		}
		if ev.target != "" {
			e = e.Str("target", ev.target).Int("members", ev.members)
		}
		if ev.old != "" {
			e = e.Str("old", ev.old).Str("new", ev.new)
		}
		if ev.reason != "" {
			e = e.Str("reason", ev.reason)
		}
		if ev.err != nil {
			e = e.Err(ev.err)
		}
		e.Msg(ev.msg)
	}
}

// validate checks cfg and fills in its defaults.
func validate(cfg Config) (settings, error) {
	s := settings{
		healthInterval:  cmp.Or(cfg.HealthInterval, DefaultHealthInterval),
		resolveInterval: cmp.Or(cfg.ResolveInterval, DefaultResolveInterval),
		connectTimeout:  cmp.Or(cfg.ConnectTimeout, DefaultConnectTimeout),
		probe:           cfg.Probe,
		lookup:          cfg.LookupNetIP,
		failThreshold:   cmp.Or(cfg.FailThreshold, DefaultFailThreshold),
		failWindow:      cmp.Or(cfg.FailWindow, DefaultFailWindow),
		downFor:         cmp.Or(cfg.DownFor, DefaultDownFor),
		downForMax:      cmp.Or(cfg.DownForMax, max(DefaultDownForMax, cmp.Or(cfg.DownFor, DefaultDownFor))),
		log:             cfg.Logger.With().Str("listener", cfg.Name).Logger(),
	}
	for _, d := range []struct {
		what string
		v    time.Duration
	}{
		{"health interval", cfg.HealthInterval}, {"resolve interval", cfg.ResolveInterval},
		{"connect timeout", cfg.ConnectTimeout}, {"fail window", cfg.FailWindow},
		{"down for", cfg.DownFor}, {"down for max", cfg.DownForMax},
	} {
		if d.v < 0 {
			return settings{}, fmt.Errorf("pool %q: %s %v is negative", cfg.Name, d.what, d.v)
		}
	}
	if cfg.FailThreshold < 0 {
		return settings{}, fmt.Errorf("pool %q: fail threshold %d is negative", cfg.Name, cfg.FailThreshold)
	}
	if s.downForMax < s.downFor {
		return settings{}, fmt.Errorf("pool %q: down for max %v is below down for %v", cfg.Name, s.downForMax, s.downFor)
	}
	if len(cfg.Targets) == 0 {
		return settings{}, fmt.Errorf("pool %q: no targets", cfg.Name)
	}
	seen := make(map[string]bool, len(cfg.Targets))
	for _, str := range cfg.Targets {
		t, err := parseTarget(str)
		if err != nil {
			return settings{}, fmt.Errorf("pool %q: target %q: %w", cfg.Name, str, err)
		}
		if seen[t.key] {
			return settings{}, fmt.Errorf("pool %q: target %q: given twice", cfg.Name, str)
		}
		seen[t.key] = true
		s.targets = append(s.targets, t)
	}
	if s.probe == nil {
		s.probe = dialProbe
	}
	if s.lookup == nil {
		s.lookup = func(ctx context.Context, host string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		}
	}
	return s, nil
}

// parseTarget parses "host:port" or "[v6]:port", the port 1-65535.
func parseTarget(str string) (target, error) {
	host, port, err := net.SplitHostPort(str)
	if err != nil {
		return target{}, errors.New("not host:port")
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return target{}, fmt.Errorf("invalid port %q", port)
	}
	if n == 0 {
		return target{}, errors.New("port 0: a member needs a real port")
	}
	if a, err := netip.ParseAddr(host); err == nil {
		ap := netip.AddrPortFrom(a.Unmap(), uint16(n))
		return target{str: ap.String(), key: ap.String(), port: ap.Port(), addr: ap.Addr()}, nil
	}
	if !dnsname.Valid(host) {
		return target{}, fmt.Errorf("invalid host %q", host)
	}
	str = net.JoinHostPort(host, strconv.FormatUint(n, 10))
	return target{str: str, key: strings.ToLower(str), host: host, port: uint16(n)}, nil
}

// dialProbe is the default Probe: a TCP connection, closed at once.
func dialProbe(ctx context.Context, addr netip.AddrPort) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		return err
	}
	return c.Close()
}
