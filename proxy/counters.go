package proxy

import (
	"maps"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/bmpproxy/bmpproxy/splice"
)

// Refusal reasons, as metric labels. Each refusing setup stage
// (setup.go) counts under one of them.
const (
	ReasonNotAllowed = "not_allowed"
	ReasonLimit      = "max_connections"
	ReasonHeader     = "proxy_header"
	ReasonBMP        = "bmp"
	ReasonOther      = "other"
)

// refusal indexes the refusal reasons.
type refusal int

const (
	refusedNotAllowed refusal = iota
	refusedLimit
	refusedHeader
	refusedBMP
	refusedOther
	numRefusals
)

// label is r's metric label.
func (r refusal) label() string {
	switch r {
	case refusedNotAllowed:
		return ReasonNotAllowed
	case refusedLimit:
		return ReasonLimit
	case refusedHeader:
		return ReasonHeader
	case refusedBMP:
		return ReasonBMP
	}
	return ReasonOther
}

// listenerState is kept per listener name, across reloads.
type listenerState struct {
	active          atomic.Int64
	accepted        atomic.Uint64
	connectFailures atomic.Uint64
	refused         [numRefusals]atomic.Uint64
	// resyncStopped counts router sessions whose state stopped being kept.
	resyncStopped atomic.Uint64
	// routerDials and routerDialFailures count the dials of a dial
	// listener's routers that connected, and that failed (dialout.go).
	routerDials, routerDialFailures atomic.Uint64
	// Totals of ended connections; open ones are added at snapshot time.
	fromClient, toClient, spliced, copied atomic.Int64

	legMu sync.Mutex
	legs  map[string]*legCounters // by target, host:port
}

// legCounters count what the legs to one target did, over every router
// session of a listener. Bytes are those of ended legs; open ones are
// added when read.
type legCounters struct {
	cuts, reconnects, dialFailures, replays atomic.Uint64
	replayNanos, sent, discarded            atomic.Int64
}

// leg returns the counters of the legs to target, making them.
func (ls *listenerState) leg(target string) *legCounters {
	ls.legMu.Lock()
	defer ls.legMu.Unlock()
	if ls.legs == nil {
		ls.legs = map[string]*legCounters{}
	}
	lc := ls.legs[target]
	if lc == nil {
		lc = new(legCounters)
		ls.legs[target] = lc
	}
	return lc
}

// LegStats are the counters of one listener's legs to one target.
type LegStats struct {
	Target           string  `json:"target"`
	Up               int     `json:"up"` // router sessions with this leg live now
	Cuts             uint64  `json:"cuts"`
	Reconnects       uint64  `json:"reconnects"`
	DialFailures     uint64  `json:"dial_failures"`
	Replays          uint64  `json:"replays"`
	ReplaySeconds    float64 `json:"replay_seconds"`
	BytesToCollector int64   `json:"bytes_to_collector"`
	BytesDiscarded   int64   `json:"bytes_discarded"` // read from the collector and dropped: every leg but the primary
}

// saved reads lc as LegStats.
func (lc *legCounters) saved(target string) LegStats {
	return LegStats{Target: target, Cuts: lc.cuts.Load(), Reconnects: lc.reconnects.Load(),
		DialFailures: lc.dialFailures.Load(), Replays: lc.replays.Load(),
		ReplaySeconds:    float64(lc.replayNanos.Load()) / 1e9,
		BytesToCollector: lc.sent.Load(), BytesDiscarded: lc.discarded.Load()}
}

// restore sets lc from a predecessor's LegStats.
func (lc *legCounters) restore(st LegStats) {
	lc.cuts.Store(st.Cuts)
	lc.reconnects.Store(st.Reconnects)
	lc.dialFailures.Store(st.DialFailures)
	lc.replays.Store(st.Replays)
	lc.replayNanos.Store(int64(st.ReplaySeconds * 1e9))
	lc.sent.Store(st.BytesToCollector)
	lc.discarded.Store(st.BytesDiscarded)
}

// saved reads the counters that carry over an upgrade: all but active,
// which the successor counts again as it adopts the connections.
func (ls *listenerState) saved() SnapshotCounts {
	sc := SnapshotCounts{
		Accepted:           ls.accepted.Load(),
		ConnectFailures:    ls.connectFailures.Load(),
		Refused:            make(map[string]uint64, numRefusals),
		FromClient:         ls.fromClient.Load(),
		ToClient:           ls.toClient.Load(),
		Spliced:            ls.spliced.Load(),
		Copied:             ls.copied.Load(),
		ResyncStopped:      ls.resyncStopped.Load(),
		RouterDials:        ls.routerDials.Load(),
		RouterDialFailures: ls.routerDialFailures.Load(),
	}
	for r := range refusal(numRefusals) {
		sc.Refused[r.label()] = ls.refused[r].Load()
	}
	ls.legMu.Lock()
	for target, lc := range ls.legs {
		sc.Legs = append(sc.Legs, lc.saved(target))
	}
	ls.legMu.Unlock()
	sort.Slice(sc.Legs, func(i, j int) bool { return sc.Legs[i].Target < sc.Legs[j].Target })
	return sc
}

// restore sets the counters a predecessor saved.
func (ls *listenerState) restore(sc SnapshotCounts) {
	ls.accepted.Store(sc.Accepted)
	ls.connectFailures.Store(sc.ConnectFailures)
	for r := range refusal(numRefusals) {
		ls.refused[r].Store(sc.Refused[r.label()])
	}
	ls.fromClient.Store(sc.FromClient)
	ls.toClient.Store(sc.ToClient)
	ls.spliced.Store(sc.Spliced)
	ls.copied.Store(sc.Copied)
	ls.resyncStopped.Store(sc.ResyncStopped)
	ls.routerDials.Store(sc.RouterDials)
	ls.routerDialFailures.Store(sc.RouterDialFailures)
	for _, st := range sc.Legs {
		ls.leg(st.Target).restore(st)
	}
}

// ListenerStats is a snapshot of one listener's counters, open connections
// included.
type ListenerStats struct {
	Name            string
	Accepted        uint64
	Active          int64
	Refused         map[string]uint64 // by reason: ReasonNotAllowed, …
	ConnectFailures uint64
	BytesFromClient int64
	BytesToClient   int64
	BytesSpliced    int64
	BytesCopied     int64
	// Fan-out and resync, for listeners that have them.
	Legs          []LegStats // by target, sorted
	RoutesCached  int64      // routes kept for resync, over its router sessions
	ResyncBytes   int64      // bytes that state holds
	ResyncStopped uint64     // router sessions whose state stopped being kept
	// A dial listener's routers (dialout.go): dials that connected, and
	// that failed.
	RouterDials, RouterDialFails uint64
}

// legStatsOf returns ls's LegStats for target, adding it.
func legStatsOf(ls *ListenerStats, target string) *LegStats {
	for i := range ls.Legs {
		if ls.Legs[i].Target == target {
			return &ls.Legs[i]
		}
	}
	ls.Legs = append(ls.Legs, LegStats{Target: target})
	sort.Slice(ls.Legs, func(i, j int) bool { return ls.Legs[i].Target < ls.Legs[j].Target })
	return legStatsOf(ls, target)
}

// ListenerStats returns the counters of every configured listener, and
// of a listener removed by a reload while it still has open connections,
// sorted by name.
func (s *Server) ListenerStats() []ListenerStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	byName := make(map[string]*ListenerStats, len(s.states))
	s.targets.mu.Lock()
	configured := maps.Clone(s.targets.names)
	s.targets.mu.Unlock()
	for name, st := range s.states {
		if !configured[name] && st.active.Load() == 0 {
			continue
		}
		sv := st.saved()
		byName[name] = &ListenerStats{
			Name:            name,
			Accepted:        sv.Accepted,
			Active:          st.active.Load(),
			Refused:         sv.Refused,
			ConnectFailures: sv.ConnectFailures,
			BytesFromClient: sv.FromClient,
			BytesToClient:   sv.ToClient,
			BytesSpliced:    sv.Spliced,
			BytesCopied:     sv.Copied,
			Legs:            sv.Legs,
			ResyncStopped:   sv.ResyncStopped,
			RouterDials:     sv.RouterDials,
			RouterDialFails: sv.RouterDialFailures,
		}
	}
	for c := range s.conns {
		ls := byName[c.listener]
		if ls == nil {
			continue
		}
		c.mu.Lock()
		from, to, spliced, copied := c.bytes()
		for _, l := range c.legs {
			st := legStatsOf(ls, l.name())
			st.BytesToCollector += l.sent.Total()
			st.BytesDiscarded += l.discarded()
			if l.state == legLive {
				st.Up++
			}
		}
		c.mu.Unlock()
		ls.BytesFromClient += from
		ls.BytesToClient += to
		ls.BytesSpliced += spliced
		ls.BytesCopied += copied
		if rs := c.resync; rs != nil {
			c.fan.Locked(func() {
				st := rs.router.Stats()
				ls.RoutesCached += int64(st.Routes)
				ls.ResyncBytes += st.Bytes
			})
		}
	}
	out := make([]ListenerStats, 0, len(byName))
	for _, ls := range byName {
		out = append(out, *ls)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// counters are the server-wide totals.
type counters struct {
	accepted       atomic.Uint64
	active         atomic.Int64
	dialFailed     atomic.Uint64
	acceptErrs     atomic.Uint64
	parks          atomic.Uint64
	reloads        atomic.Uint64
	reloadFailures atomic.Uint64

	upgrades        atomic.Uint64 // handovers that ended in this process
	upgradeFailures atomic.Uint64
	carried         atomic.Uint64 // connections received from predecessors
}

// Counters are the server-wide counters that carry over an upgrade.
type Counters struct {
	Accepted        uint64 `json:"accepted"`         // connections accepted
	DialFailures    uint64 `json:"dial_failures"`    // connections closed because the target could not be reached
	AcceptErrors    uint64 `json:"accept_errors"`    // failed accept calls (EMFILE and the like)
	Parks           uint64 `json:"parks"`            // times a direction was parked
	Reloads         uint64 `json:"reloads"`          // reloads applied in full
	ReloadFailures  uint64 `json:"reload_failures"`  // reloads rejected or applied in part
	Upgrades        uint64 `json:"upgrades"`         // upgrades that handed the server over, counted by the successor
	UpgradeFailures uint64 `json:"upgrade_failures"` // upgrades that failed; the predecessor kept serving
	CarriedOver     uint64 `json:"carried_over"`     // connections received from predecessors, over all upgrades
}

// saved reads the counters that carry over an upgrade.
func (c *counters) saved() Counters {
	return Counters{
		Accepted:        c.accepted.Load(),
		DialFailures:    c.dialFailed.Load(),
		AcceptErrors:    c.acceptErrs.Load(),
		Parks:           c.parks.Load(),
		Reloads:         c.reloads.Load(),
		ReloadFailures:  c.reloadFailures.Load(),
		Upgrades:        c.upgrades.Load(),
		UpgradeFailures: c.upgradeFailures.Load(),
		CarriedOver:     c.carried.Load(),
	}
}

// restore sets the counters a predecessor saved.
func (c *counters) restore(v Counters) {
	c.accepted.Store(v.Accepted)
	c.dialFailed.Store(v.DialFailures)
	c.acceptErrs.Store(v.AcceptErrors)
	c.parks.Store(v.Parks)
	c.reloads.Store(v.Reloads)
	c.reloadFailures.Store(v.ReloadFailures)
	c.upgrades.Store(v.Upgrades)
	c.upgradeFailures.Store(v.UpgradeFailures)
	c.carried.Store(v.CarriedOver)
}

// Stats is a snapshot of the server's counters.
type Stats struct {
	Counters
	Active            int64  // connections open now
	Refused           uint64 // connections closed before dialing, for any reason below
	RefusedNotAllowed uint64 // client outside allow
	RefusedLimit      uint64 // listener at max_connections
	RefusedHeader     uint64 // spoofed, missing or unreadable inbound PROXY header
	RefusedBMP        uint64 // failed the BMP pre-check
	Parked            int    // directions parked in the idle watcher, without a goroutine
	ResyncMemory      int64  // bytes the resync state of every router holds
	ResyncMemoryLimit int64  // resync_memory
	Splice            splice.Stats
	FDBudget          int  // fds connections and pipes may hold
	FDBudgetInUse     int  // fds they hold, and accept loops hold for their next connection
	FDBudgetReached   bool // the budget is spent: accepting waits, new connections queue
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	st := Stats{Counters: s.stats.saved(), Active: s.stats.active.Load()}
	// Refusals are counted per listener name; the totals are their sums.
	var refused [numRefusals]uint64
	s.mu.Lock()
	for _, ls := range s.states {
		for i := range refused {
			refused[i] += ls.refused[i].Load()
		}
	}
	s.mu.Unlock()
	for _, n := range refused {
		st.Refused += n
	}
	st.RefusedNotAllowed, st.RefusedLimit = refused[refusedNotAllowed], refused[refusedLimit]
	st.RefusedHeader, st.RefusedBMP = refused[refusedHeader], refused[refusedBMP]
	if s.opts.Pump != nil {
		st.Splice = s.opts.Pump.Stats()
	}
	if w := s.watcher.Load(); w != nil {
		st.Parked = w.Parked()
	}
	if s.ribMem != nil {
		st.ResyncMemory, st.ResyncMemoryLimit = s.ribMem.Used(), s.ribMem.Limit()
	}
	b := s.budget.Stats()
	st.FDBudget, st.FDBudgetInUse, st.FDBudgetReached = b.Size, b.InUse, b.Reached
	return st
}

// pruneStates forgets the counters of listeners that cfg no longer has
// and that have no open connection; one that still has them is pruned at
// a later reload. Their series leave /metrics: ListenerStats lists only
// configured listeners and those with open connections.
func (s *Server) pruneStates(cfg *conf.Config) {
	keep := make(map[string]bool, len(cfg.Listeners))
	for _, l := range cfg.Listeners {
		keep[l.Name] = true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, st := range s.states {
		if !keep[name] && st.active.Load() == 0 {
			delete(s.states, name)
		}
	}
}
