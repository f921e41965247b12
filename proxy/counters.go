package proxy

import (
	"sort"
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
	// Fan-out and resync (fanout.go, resync.go).
	legCuts, legReconnects, legDialFailures, legReplays, resyncStopped atomic.Uint64
	replayNanos                                                        atomic.Int64
	// Totals of ended connections; open ones are added at snapshot time.
	fromClient, toClient, spliced, copied atomic.Int64
}

// saved reads the counters that carry over an upgrade: all but active,
// which the successor counts again as it adopts the connections.
func (ls *listenerState) saved() SnapshotCounts {
	sc := SnapshotCounts{
		Accepted:        ls.accepted.Load(),
		ConnectFailures: ls.connectFailures.Load(),
		Refused:         make(map[string]uint64, numRefusals),
		FromClient:      ls.fromClient.Load(),
		ToClient:        ls.toClient.Load(),
		Spliced:         ls.spliced.Load(),
		Copied:          ls.copied.Load(),
	}
	for r := range refusal(numRefusals) {
		sc.Refused[r.label()] = ls.refused[r].Load()
	}
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
}

// ListenerStats returns the counters of every configured listener, and
// of a listener removed by a reload while it still has open connections,
// sorted by name.
func (s *Server) ListenerStats() []ListenerStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	byName := make(map[string]*ListenerStats, len(s.states))
	s.targets.mu.Lock()
	configured := make(map[string]bool, len(s.targets.byName))
	for name := range s.targets.byName {
		configured[name] = true
	}
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
		}
	}
	for c := range s.conns {
		if ls := byName[c.listener]; ls != nil {
			c.mu.Lock()
			from, to, spliced, copied := c.bytes()
			c.mu.Unlock()
			ls.BytesFromClient += from
			ls.BytesToClient += to
			ls.BytesSpliced += spliced
			ls.BytesCopied += copied
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
