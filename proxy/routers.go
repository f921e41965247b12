package proxy

import (
	"errors"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Bounds on what the server remembers of ended sessions.
const (
	keepClosedRouters = 256  // closed BMP sessions listed by Routers
	keepLastEnd       = 4096 // router addresses whose last session end is kept
)

// Refusal reasons, as metric labels.
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

// refusalReasons are the labels of the refusals, by index.
var refusalReasons = [numRefusals]string{ReasonNotAllowed, ReasonLimit, ReasonHeader, ReasonBMP, ReasonOther}

func refusalOf(err error) refusal {
	switch {
	case errors.Is(err, errNotAllowed):
		return refusedNotAllowed
	case errors.Is(err, errLimit):
		return refusedLimit
	case errors.Is(err, errSpoofed), errors.Is(err, errNoHeader), errors.Is(err, errHeaderUnread):
		return refusedHeader
	case errors.Is(err, errNotBMP):
		return refusedBMP
	}
	return refusedOther
}

// listenerState is kept per listener name, across reloads.
type listenerState struct {
	active          atomic.Int64
	accepted        atomic.Uint64
	connectFailures atomic.Uint64
	refused         [numRefusals]atomic.Uint64
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
	for i, r := range refusalReasons {
		sc.Refused[r] = ls.refused[i].Load()
	}
	return sc
}

// restore sets the counters a predecessor saved.
func (ls *listenerState) restore(sc SnapshotCounts) {
	ls.accepted.Store(sc.Accepted)
	ls.connectFailures.Store(sc.ConnectFailures)
	for i, r := range refusalReasons {
		ls.refused[i].Store(sc.Refused[r])
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

// ListenerStats returns every listener's counters, sorted by name. A
// listener removed by a reload is still listed.
func (s *Server) ListenerStats() []ListenerStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	byName := make(map[string]*ListenerStats, len(s.states))
	for name, st := range s.states {
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
			ls.BytesFromClient += c.up.Total()
			ls.BytesToClient += c.down.Total()
			ls.BytesSpliced += c.up.Spliced.Load() + c.down.Spliced.Load()
			ls.BytesCopied += c.up.Copied.Load() + c.down.Copied.Load()
		}
	}
	out := make([]ListenerStats, 0, len(byName))
	for _, ls := range byName {
		out = append(out, *ls)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// RouterStatus is one BMP session, open or recently closed.
type RouterStatus struct {
	Router          string     `json:"router"` // the real address and port, as sent in the PROXY header
	Via             string     `json:"via,omitempty"`
	Listener        string     `json:"listener"`
	SysName         string     `json:"sys_name,omitempty"`
	SysDescr        string     `json:"sys_descr,omitempty"`
	State           string     `json:"state"` // "connected" or "closed"
	Since           time.Time  `json:"connected_since"`
	Closed          *time.Time `json:"closed_at,omitempty"`
	BytesFromRouter int64      `json:"bytes_from_router"`
	BytesToRouter   int64      `json:"bytes_to_router"`
	CloseReason     string     `json:"close_reason,omitempty"`
	Error           string     `json:"error,omitempty"`
	// TermReason is the router's Termination reason, when seen; see
	// routerInfo.
	TermReason string `json:"termination_reason,omitempty"`
}

// routerTable remembers ended BMP sessions; open ones are the BMP
// connections in Server.conns.
type routerTable struct {
	mu      sync.Mutex
	closed  []RouterStatus // oldest first, at most keepClosedRouters
	lastEnd map[netip.Addr]time.Time
}

func (c *conn) routerStatus() RouterStatus {
	r := RouterStatus{
		Router:          c.client.String(),
		Listener:        c.listener,
		SysName:         c.router.SysName,
		SysDescr:        c.router.SysDescr,
		TermReason:      c.router.TermReason,
		State:           "connected",
		Since:           c.start,
		BytesFromRouter: c.up.Total(),
		BytesToRouter:   c.down.Total(),
	}
	if c.via.IsValid() {
		r.Via = c.via.String()
	}
	return r
}

// sinceLastSession returns how long ago the previous session from a ended.
func (t *routerTable) sinceLastSession(a netip.Addr, now time.Time) (time.Duration, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	end, ok := t.lastEnd[a]
	return now.Sub(end), ok
}

// ended records a closed BMP session.
func (t *routerTable) ended(r RouterStatus, a netip.Addr, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.closed) == keepClosedRouters {
		copy(t.closed, t.closed[1:])
		t.closed = t.closed[:keepClosedRouters-1]
	}
	t.closed = append(t.closed, r)
	if t.lastEnd == nil {
		t.lastEnd = make(map[netip.Addr]time.Time)
	}
	if _, ok := t.lastEnd[a]; !ok && len(t.lastEnd) >= keepLastEnd {
		for k := range t.lastEnd { // drop one arbitrary entry
			delete(t.lastEnd, k)
			break
		}
	}
	t.lastEnd[a] = at
}

// saved returns copies of what the table remembers, for a successor.
func (t *routerTable) saved() (closed []RouterStatus, lastEnd map[netip.Addr]time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.closed), maps.Clone(t.lastEnd)
}

// restore sets what a predecessor's table remembered.
func (t *routerTable) restore(closed []RouterStatus, lastEnd map[netip.Addr]time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed, t.lastEnd = slices.Clone(closed), maps.Clone(lastEnd)
}

// Routers lists the open BMP sessions, then the recently closed ones,
// newest first.
func (s *Server) Routers() []RouterStatus {
	s.mu.Lock()
	var out []RouterStatus
	for c := range s.conns {
		if c.session.Load() {
			out = append(out, c.routerStatus())
		}
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Since.After(out[j].Since) })
	s.routers.mu.Lock()
	for i := len(s.routers.closed) - 1; i >= 0; i-- {
		out = append(out, s.routers.closed[i])
	}
	s.routers.mu.Unlock()
	return out
}
