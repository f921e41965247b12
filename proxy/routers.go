package proxy

import (
	"maps"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"
)

// Bounds on what the server remembers of ended sessions.
const (
	keepClosedRouters = 256  // closed BMP sessions listed by Routers
	keepLastEnd       = 4096 // router addresses whose last session end is kept
)

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
	// Member is the pool member a pool listener's session is on.
	Member string `json:"member,omitempty"`
	// Legs are the collectors of a fan-out listener's session, the
	// primary first.
	Legs []LegStatus `json:"legs,omitempty"`
	// Resync is the router's kept state, with resync.
	Resync *ResyncStatus `json:"resync,omitempty"`
}

// ResyncStatus is what resync keeps of one router.
type ResyncStatus struct {
	State  string        `json:"state"` // keeping, unkeyable, over-memory, failed (a malformed message)
	Reason string        `json:"reason,omitempty"`
	Peers  int           `json:"peers"`
	Routes int           `json:"routes"`
	Bytes  int64         `json:"bytes"`
	Tables []ResyncTable `json:"tables,omitempty"`
}

// ResyncTable counts the routes of one peer's RIB and AFI/SAFI.
type ResyncTable struct {
	Peer   string `json:"peer"`
	Family string `json:"family"`
	Routes int    `json:"routes"`
}

// routerTable remembers ended BMP sessions; open ones are the BMP
// connections in Server.conns.
type routerTable struct {
	mu      sync.Mutex
	closed  []RouterStatus // oldest first, at most keepClosedRouters
	lastEnd map[netip.Addr]time.Time
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
