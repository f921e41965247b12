package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bmpproxy/bmpproxy/internal/socket"
	"github.com/bmpproxy/bmpproxy/splice"
	"github.com/rs/zerolog"
)

// Reasons a connection ends that are not a socket's error. They appear in
// the closing log line's "error" field.
var (
	errShutdown    = errors.New("closed at drain timeout")
	errNotStream   = errors.New("connection does not expose its socket")
	errShortHeader = errors.New("short write of PROXY header")
)

// stream is a connected TCP socket that the pump can splice.
type stream interface {
	net.Conn
	splice.Conn
}

// conn is one proxied connection, from its accept to its closing line.
// Its fields are plain data so that it can be described to a successor
// (snapshot) and rebuilt there (restoreConn); the two sockets are the
// only resources it owns.
//
// The accept loop makes it; the setup worker owns it until start; then
// its directions (direction.go) share it, and the one that ends last
// finishes it. Fields above mu are written only before start.
type conn struct {
	id       uint64
	srv      *Server
	opts     *listenerOpts // as accepted; holds one slot of opts.state.active
	listener string
	via      netip.AddrPort // the trusted proxy the client came through, if any
	client   netip.AddrPort // unmapped
	local    netip.AddrPort // unmapped; the address the client connected to
	target   string         // configured target, host:port
	upstream string         // the address dialed, as resolved; empty until connected
	start    time.Time
	bmp      bool          // the BMP pre-check passed
	router   routerInfo    // from the Initiation message, if it came first
	session  atomic.Bool   // a BMP session reached its target: Routers lists it
	cc       stream        // client socket; nil if the accepted one is not a stream
	ended    chan struct{} // closed by finish, after the closing line
	pool     *listenerPool // the listener's pool, if it has one (pool.go)
	// fds are charged to the fd budget: setupFDs until the dial, then
	// connFDs. Set by newConn or restoreConn, changed by setup, given
	// back by finish or release.
	fds int

	mu        sync.Mutex
	tc        stream         // target socket; nil until dialed
	cause     error          // first reason to end, nil for a clean close
	stage     stage          // where cause happened
	aborted   bool           // failing or released: no direction may park or hold
	dirs      []*direction   // up first, then down; set when the target is connected
	keepAlive bool           // keepalive is set on tc (by the sweep)
	member    netip.AddrPort // a pool connection's member, without resync; set with tc

	// A fan-out connection (fanout.go) has legs instead of tc, and its
	// up direction feeds fan. They are set in setup.
	fan      *splice.Fanout
	legs     []*leg
	resync   *resync // with resync: the router's state (resync.go)
	finished bool    // its closing line is being written
}

// up and down are c's two directions. They exist once setTarget made
// them: in setup, or a successor's restoreConn.
func (c *conn) up() *direction   { return c.dirs[0] }
func (c *conn) down() *direction { return c.dirs[1] }

// bytes returns what c has delivered each way, and by which path: zero
// for a connection whose target was never connected. c.mu is held.
func (c *conn) bytes() (fromClient, toClient, spliced, copied int64) {
	for _, d := range c.dirs {
		switch d.kind {
		case kindUp, kindFanout:
			fromClient += d.n.Total()
		case kindDown, kindReply:
			toClient += d.n.Total()
		default:
			continue // dropped, not delivered
		}
		spliced += d.n.Spliced.Load()
		copied += d.n.Copied.Load()
	}
	return
}

// newDirs makes c's up and down directions over its two sockets. c.mu is
// held, or c is not shared yet.
func (c *conn) newDirs() {
	c.dirs = []*direction{
		{c: c, kind: kindUp, src: c.cc, dst: c.tc},
		{c: c, kind: kindDown, src: c.tc, dst: c.cc},
	}
}

// newConn describes nc, just accepted on o's listener.
func (s *Server) newConn(o *listenerOpts, nc net.Conn, client, local netip.AddrPort) *conn {
	cc, _ := nc.(stream)
	target := o.Target.String()
	if o.Pool != nil {
		target = targetsText(&o.Listener) // until setup has a member
	}
	return &conn{
		id:       s.nextID.Add(1),
		srv:      s,
		opts:     o,
		listener: o.Name,
		client:   client,
		local:    local,
		target:   target,
		start:    time.Now(),
		cc:       cc,
		pool:     o.pool,
		ended:    make(chan struct{}),
		fds:      setupFDs(o),
	}
}

// fail records err, at st, as the connection's reason to end unless one
// is already recorded, and closes both sockets so that every direction
// ends. Parked directions are woken before the close, while their fds
// are still theirs in the watcher; held ones get a goroutine to see it.
func (c *conn) fail(st stage, err error) {
	c.mu.Lock()
	if c.cause == nil {
		c.cause, c.stage = err, st
	}
	c.aborted = true
	tc := c.tc
	parked := c.parkedKeys()
	held := c.takeHeld()
	legSocks, sinks := c.legsToClose()
	c.stopRetries()
	c.mu.Unlock()
	if w := c.srv.watcher.Load(); w != nil {
		for _, k := range parked {
			w.Wake(k)
		}
	}
	if c.cc != nil {
		c.cc.Close()
	}
	if tc != nil {
		tc.Close()
	}
	for _, ls := range legSocks {
		ls.Close()
	}
	for _, sink := range sinks {
		sink.Remove()
	}
	for _, d := range held {
		c.srv.resume(d)
	}
}

// abort ends the connection from outside, at the drain timeout.
func (c *conn) abort() { c.fail(stageShutdown, errShutdown) }

// setTarget attaches the dialed socket; it returns false, and the caller
// closes tc, if the connection was aborted meanwhile.
func (c *conn) setTarget(tc stream) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.aborted {
		return false
	}
	c.tc = tc
	c.newDirs()
	return true
}

// finish untracks c, gives back its fds, adds its counts to its
// listener's and writes its single closing log line.
func (s *Server) finish(c *conn) {
	s.untrack(c)
	s.budget.Release(c.fds)
	st := c.opts.state
	st.active.Add(-1)
	c.mu.Lock()
	from, to, spliced, copied := c.bytes()
	cause, at := c.cause, c.stage
	member := c.member
	c.mu.Unlock()
	if at == stageTarget && c.pool != nil && member.IsValid() {
		c.pool.pool.LegFailed(member, cause) // without resync its one leg is the session
	}
	st.fromClient.Add(from)
	st.toClient.Add(to)
	st.spliced.Add(spliced)
	st.copied.Add(copied)

	reason := at.reason()
	if errors.Is(cause, net.ErrClosed) {
		// A pump saw its socket closed by the other direction's failure,
		// which recorded the real cause first; only reachable if that
		// ordering is ever broken.
		reason = "closed"
	}
	if c.session.Load() {
		now := time.Now()
		r := c.routerStatus()
		r.State, r.Closed, r.CloseReason = "closed", &now, reason
		if cause != nil && at != stageShutdown {
			r.Error = cause.Error()
		}
		s.routers.ended(r, c.client.Addr(), now)
	}
	c.logClosed(reason, cause, at != stageShutdown)
	close(c.ended)
}

// logClosed writes c's closing line: at warn for a failure, at info for a
// clean close or a shutdown. cause is logged if showCause.
func (c *conn) logClosed(reason string, cause error, showCause bool) {
	level := zerolog.InfoLevel
	if cause != nil && reason != "closed" && reason != "shutdown" {
		level = zerolog.WarnLevel
	}
	log := &c.opts.log
	if log.GetLevel() > level {
		return
	}
	c.mu.Lock()
	from, to, spliced, _ := c.bytes()
	c.mu.Unlock()
	ev := c.logger(log).WithLevel(level)
	if c.via.IsValid() {
		ev = ev.Stringer("via", c.via)
	}
	if c.router.SysName != "" {
		ev = ev.Str("sys_name", c.router.SysName)
	}
	ev = ev.
		Str("target", c.target).
		Str("upstream", c.upstream).
		Int64("bytes_from_client", from).
		Int64("bytes_to_client", to).
		Int64("bytes_spliced", spliced).
		Stringer("duration", time.Since(c.start)).
		Str("reason", reason)
	if cause != nil && showCause {
		ev = ev.Err(cause)
	}
	ev.Msg("connection closed")
}

// logger returns the connection's child logger. It is built when a line is
// about to be written, not kept: an idle connection holds no log buffer.
func (c *conn) logger(base *zerolog.Logger) *zerolog.Logger {
	l := base.With().
		Uint64("conn", c.id).
		Str("listener", c.listener).
		Stringer("client", c.client).
		Stringer("local", c.local).
		Logger()
	return &l
}

// sessionStarted logs a BMP session that reached its target, with how
// long ago the previous session from the same router address ended, so
// that a router that reconnects often stands out.
func (s *Server) sessionStarted(c *conn) {
	c.session.Store(true)
	log := &c.opts.log
	if log.GetLevel() > zerolog.InfoLevel {
		return
	}
	ev := c.logger(log).Info().Str("target", c.target).Str("upstream", c.upstream)
	if c.router.SysName != "" {
		ev = ev.Str("sys_name", c.router.SysName)
	}
	if since, ok := s.routers.sinceLastSession(c.client.Addr(), time.Now()); ok {
		ev = ev.Float64("since_last_session_s", since.Round(time.Millisecond).Seconds())
	}
	ev.Msg("router connected")
}

// routerStatus describes c as an open BMP session. c.mu is taken, then
// the Fanout's lock for the resync state.
func (c *conn) routerStatus() RouterStatus {
	c.mu.Lock()
	from, to, _, _ := c.bytes()
	legs := c.legStatuses()
	rs := c.resync
	member := c.currentMember()
	c.mu.Unlock()
	var resync *ResyncStatus
	if rs != nil {
		c.fan.Locked(func() { resync = rs.status() })
	}
	r := RouterStatus{
		Router:          c.client.String(),
		Listener:        c.listener,
		SysName:         c.router.SysName,
		SysDescr:        c.router.SysDescr,
		TermReason:      c.router.TermReason,
		State:           "connected",
		Since:           c.start,
		BytesFromRouter: from,
		BytesToRouter:   to,
		Legs:            legs,
		Resync:          resync,
	}
	if member.IsValid() {
		r.Member = member.String()
	}
	if c.via.IsValid() {
		r.Via = c.via.String()
	}
	return r
}

// snapshot describes c, frozen, for a successor; its sockets' descriptors
// are added to snap's table. c.mu is taken.
func (c *conn) snapshot(snap *Snapshot) (SnapshotConn, error) {
	c.mu.Lock()
	sc := SnapshotConn{
		ID: c.id, Listener: c.listener, Via: c.via, Client: c.client, Local: c.local,
		Target: c.target, Upstream: c.upstream, Start: c.start,
		BMP: c.bmp, Session: c.session.Load(),
		SysName: c.router.SysName, SysDescr: c.router.SysDescr, Term: c.router.TermReason,
		Up:    [2]int64{c.up().n.Spliced.Load(), c.up().n.Copied.Load()},
		Ended: [2]bool{c.up().state == dirEnded, false},
	}
	if c.fan != nil {
		_, to, _, _ := c.bytes()
		sc.Down = [2]int64{0, to}
		c.mu.Unlock()
		sc.ClientFD = snap.addFD(c.cc)
		err := c.snapshotFanout(snap, &sc)
		return sc, err
	}
	sc.Down = [2]int64{c.down().n.Spliced.Load(), c.down().n.Copied.Load()}
	sc.Ended[1] = c.down().state == dirEnded
	cc, tc := c.cc, c.tc
	c.mu.Unlock()
	sc.ClientFD, sc.TargetFD = snap.addFD(cc), snap.addFD(tc)
	return sc, nil
}

// restoreConn rebuilds a predecessor's connection from sc and its two
// sockets, for listener options o, and charges them to the fd budget. Its
// directions that had not ended are held, with their counts in live,
// until the takeover resumes them; it returns an error, and takes
// nothing, if both had ended, which a settled predecessor never
// snapshots.
func (s *Server) restoreConn(sc SnapshotConn, o *listenerOpts, cc, tc stream) (*conn, error) {
	if sc.Ended[0] && sc.Ended[1] {
		return nil, fmt.Errorf("connection %d from %s: both directions ended", sc.ID, sc.Client)
	}
	c := s.adoptedConn(sc, o, cc)
	c.tc = tc
	c.newDirs()
	for i, d := range c.dirs {
		counts := sc.Up
		if d.kind == kindDown {
			counts = sc.Down
		}
		d.n.Spliced.Store(counts[0])
		d.n.Copied.Store(counts[1])
		if sc.Ended[i] {
			d.move(dirEnded)
			continue
		}
		d.move(dirHeld)
		s.live.Add(1)
	}
	o.state.active.Add(1)
	s.budget.Charge(c.fds) // open already, whether or not they fit
	s.track(c)
	return c, nil
}

// adoptedConn is the conn that sc describes, with client socket cc and
// connFDs charged for when it is tracked, before its directions (and
// target or legs) are rebuilt.
func (s *Server) adoptedConn(sc SnapshotConn, o *listenerOpts, cc stream) *conn {
	c := &conn{
		id: sc.ID, srv: s, opts: o, listener: sc.Listener, via: sc.Via, client: sc.Client, local: sc.Local,
		target: sc.Target, upstream: sc.Upstream, start: sc.Start, bmp: sc.BMP,
		router: routerInfo{SysName: sc.SysName, SysDescr: sc.SysDescr, TermReason: sc.Term},
		cc:     cc, fds: connFDs, pool: o.pool, ended: make(chan struct{}),
	}
	if c.pool != nil {
		c.member, _ = netip.ParseAddrPort(sc.Target) // a pool connection's target is its member
	}
	c.session.Store(sc.Session)
	return c
}

func addrPort(a net.Addr) netip.AddrPort { return socket.AddrPort(a) }
