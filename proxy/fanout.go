package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sync"
	"time"

	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/bmpproxy/bmpproxy/internal/socket"
	"github.com/bmpproxy/bmpproxy/splice"
	"github.com/rs/zerolog"
)

// Fan-out. A listener with more than one target, or with resync, sends
// each router session to every target: its legs. The client's bytes go
// to a splice.Fanout, which gives every leg every byte at the leg's own
// pace and cuts a leg that falls its buffer behind; each leg's socket is
// read by a direction of its own: the primary's (the first target's)
// bytes go back to the client, the others' are read and dropped. A leg
// whose collector fails, or that is cut, is down: without resync it
// stays down until the router reconnects, since a collector cannot join
// a BMP session halfway.
//
// A fan-out connection ends when the client's side has ended and every
// leg is done: its sink has ended and its socket's direction too.

// legState is where a leg is, as /routers shows it.
type legState uint8

const (
	legConnecting legState = iota // being dialed, or waiting to be dialed again
	legWaiting                    // connected, waiting for another leg's replay to end
	legReplaying                  // connected, getting the router's state
	legLive                       // connected, caught up or catching up
	legDown                       // failed, cut or never connected; not retried
	legDone                       // ended with its router session
	legRemoved                    // its target was removed by a reload; not retried
)

func (s legState) String() string {
	switch s {
	case legConnecting:
		return "connecting"
	case legWaiting:
		return "waiting"
	case legReplaying:
		return "replaying"
	case legLive:
		return "live"
	case legDown:
		return "down"
	case legDone:
		return "done"
	case legRemoved:
		return "removed"
	}
	return fmt.Sprintf("legState(%d)", uint8(s))
}

// leg is one target of a fan-out connection. Its fields below mu are
// guarded by its connection's mu.
type leg struct {
	c       *conn
	index   int // in the listener's targets: 0 is the primary
	cfg     conf.Leg
	primary bool

	state    legState
	sock     stream // nil while not connected
	upstream string
	sink     *splice.Sink
	rev      *direction // reads sock
	since    time.Time  // connected at
	sent     splice.Counter
	err      error        // why it went down
	sinkDone bool         // its sink has ended (or it never had one)
	revDone  bool         // its socket's direction has ended (or it never had one)
	closed   bool         // its closing line was written
	fd       bool         // its socket holds an fd of the budget (every leg but the primary, whose fds the connection holds)
	ctr      *legCounters // its listener's counters of the legs to its target
	attempts int          // dials since it was last live
	replays  int          // replays started to it
	next     *conf.Leg    // its settings after a reload, for its next dial
	retry    *time.Timer  // the next dial, with resync
	watch    *time.Timer  // the next look at a replay's progress

	// A pool router's move (pool.go): the new leg replaces the old one,
	// which replacedBy points back from, until the new one is live.
	replaces   *leg
	replacedBy *leg
	move       moveReason
	moving     bool // made by a move that has not yet counted: it counts once live
}

// fanout reports whether o's connections fan out: more than one target,
// or resync (whose replays go through the same path).
func (o *listenerOpts) fanout() bool { return len(o.Targets) > 1 || o.Resync }

// connectLegs dials every target of c's listener at once, each within the
// connect timeout, and returns once all have answered. It fails only if
// none connected; then nothing is left open. On success c has its legs
// and its Fanout, with a sink for each connected leg that writes head
// (the leg's own PROXY header) and pre first.
func (s *Server) connectLegs(ctx context.Context, c *conn, pre []byte) error {
	o := c.opts
	targets := c.legCfgs()
	c.legs = make([]*leg, len(targets))
	var wg sync.WaitGroup
	socks := make([]stream, len(targets))
	errs := make([]error, len(targets))
	cfgs := make([]conf.Leg, len(targets))
	for i, lc := range targets {
		c.legs[i] = &leg{c: c, index: i, cfg: lc, primary: i == 0}
		cfgs[i] = lc
		if i > 0 && !s.budget.TryAcquire(1) {
			errs[i] = errLegNoFD
			continue
		}
		c.legs[i].fd = i > 0
		wg.Add(1)
		go func() { // a dial: ended before connectLegs returns
			defer wg.Done()
			socks[i], cfgs[i], errs[i] = s.dialLeg(ctx, c, lc, netip.AddrPort{})
		}()
	}
	wg.Wait()
	connected := 0
	for i, l := range c.legs {
		l.cfg = cfgs[i] // a pool's pick
		l.ctr = o.state.leg(l.name())
		if errs[i] != nil {
			l.state, l.err = legDown, errs[i]
			l.sinkDone, l.revDone = true, true
			l.ctr.dialFailures.Add(1)
			s.releaseLegFD(l)
			continue
		}
		l.sock, l.state, l.since = socks[i], legLive, time.Now()
		l.upstream = socket.AddrPort(l.sock.RemoteAddr()).String()
		connected++
	}
	if connected == 0 && !o.Resync {
		return errors.Join(errs...)
	}
	var tap func([]byte)
	if o.Resync {
		s.newResync(c, pre)
		tap = s.tap(c)
	}
	c.fan = s.opts.Pump.NewFanout(splice.FanoutConfig{Tap: tap})
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.aborted {
		for _, l := range c.legs {
			if l.sock != nil {
				l.sock.Close()
			}
		}
		return errShutdown
	}
	c.upstream = c.legs[0].upstream
	c.dirs = []*direction{{c: c, kind: kindFanout, src: c.cc}}
	for _, l := range c.legs {
		if l.sock == nil {
			if o.Resync {
				// It joins with a replay once it answers.
				l.state, l.sinkDone, l.revDone = legConnecting, false, true
				s.scheduleRetry(l)
			}
			continue
		}
		if err := s.addSink(c, l, pre); err != nil {
			l.sock.Close()
			l.sock, l.state, l.err = nil, legDown, err
			l.sinkDone, l.revDone = true, true
			continue
		}
		kind := kindDiscard
		if l.primary {
			kind = kindReply
		}
		l.rev = &direction{c: c, kind: kind, src: l.sock, dst: c.cc, leg: l}
		c.dirs = append(c.dirs, l.rev)
	}
	return nil
}

// errLegNoFD is a leg not dialed for want of an fd in the budget.
var errLegNoFD = errors.New("no file descriptor left in the fd budget for this leg")

// addSink gives leg l a sink on c's Fanout that writes l's PROXY header
// and pre before the live bytes. c.mu is held.
func (s *Server) addSink(c *conn, l *leg, pre []byte) error {
	hdr, err := proxyHeader(l.cfg.ProxyProtocol, c.client, c.local)
	if err != nil {
		return err
	}
	return s.addLegSink(c, l, append(hdr, pre...), nil)
}

// addLegSink gives leg l, connected, its sink on c's Fanout: head first,
// then what at gives (splice.Fanout.Add), then the live bytes.
func (s *Server) addLegSink(c *conn, l *leg, head []byte, at func() (io.Reader, []byte, error)) error {
	if !c.opts.KeepAlive.Disabled {
		socket.SetKeepAlive(l.sock, socket.KeepAlive(c.opts.KeepAlive))
	}
	sock := l.sock
	sink, err := c.fan.Add(splice.SinkConfig{
		Conn:  sock,
		Limit: int(l.cfg.Buffer),
		Head:  head,
		Count: &l.sent,
		Done:  func(err error) { s.sinkDone(l, sock, err) },
	}, at)
	if err != nil {
		return err
	}
	l.sink = sink
	return nil
}

// sinkDone is called by the Fanout once l's sink has ended: nil after
// the client's EOF was passed on, ErrLagging when it fell behind, or the
// write error.
func (s *Server) sinkDone(l *leg, sock stream, err error) {
	c := l.c
	c.mu.Lock()
	if l.sock != sock {
		c.mu.Unlock()
		return // a leg's earlier socket
	}
	l.sinkDone = true
	aborted := c.aborted
	c.mu.Unlock()
	if err != nil && !errors.Is(err, splice.ErrRemoved) && !aborted {
		s.legFailed(l, sock, err)
	}
	s.maybeFinishFanout(c)
}

// legFailed takes leg l down after its collector failed, or it fell
// behind: its socket is closed, which ends its direction, and its sink
// is removed. The router session goes on, unless no leg is left.
func (s *Server) legFailed(l *leg, sock stream, err error) {
	c := l.c
	c.mu.Lock()
	if l.sock != sock || l.state == legDown || l.state == legDone || l.state == legConnecting || l.state == legRemoved {
		c.mu.Unlock()
		return
	}
	l.state, l.err = legDown, err
	sink := l.sink
	if errors.Is(err, splice.ErrLagging) {
		l.ctr.cuts.Add(1)
	}
	parked := c.parkedKeysOf(sock)
	member := l.member()
	// A move's leg that fails: the move is off, and the router stays
	// where it is (or, the old leg failing, the new one takes over).
	takenOver := l.replacedBy != nil
	abandoned := l.replaces != nil
	l.abandonMove()
	if takenOver {
		l.replacedBy.replaces = nil
		l.replacedBy = nil
	}
	c.mu.Unlock()
	if sink != nil {
		sink.Remove()
	}
	s.closeLegSocket(sock, parked)
	s.releaseLegFD(l)
	s.logLeg(l, err)
	if c.pool != nil {
		c.pool.pool.LegFailed(member, err)
	}
	if c.resync != nil {
		s.endReplay(l)
		c.mu.Lock()
		if abandoned || takenOver {
			// Not dialed again: the other leg of the move has the router.
			l.sinkDone, l.revDone = true, true
			c.mu.Unlock()
			s.maybeFinishFanout(c)
			return
		}
		if l.sock == sock && !c.aborted && !c.finished && c.up().state != dirEnded {
			// Dialed again, and replayed, for as long as the session lasts.
			l.state, l.sock, l.sink = legConnecting, nil, nil
			s.scheduleRetry(l)
		}
		c.mu.Unlock()
		return
	}
	if !c.anyLegLive() {
		c.fail(stageTarget, fmt.Errorf("every target is down; the last: %w", err))
	}
}

// parkedKeysOf returns the watcher keys of c's parked directions that
// read sock: a leg's socket direction, quiet since its collector never
// speaks. c.mu is held.
func (c *conn) parkedKeysOf(sock stream) []uint64 {
	var keys []uint64
	for _, d := range c.dirs {
		if d.src == sock && d.state == dirParked {
			keys = append(keys, d.key)
		}
	}
	return keys
}

// closeLegSocket closes a leg's socket, first waking its parked
// direction (parked, the keys of parkedKeysOf) while the watcher still
// owns its fd: parked, nothing else would ever end it, and the session
// would never finish. Woken, it reads the closed socket and ends.
func (s *Server) closeLegSocket(sock stream, parked []uint64) {
	if w := s.watcher.Load(); w != nil {
		for _, k := range parked {
			w.Wake(k)
		}
	}
	sock.Close()
}

// anyLegLive reports whether some leg of c still takes the router's
// bytes.
func (c *conn) anyLegLive() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, l := range c.legs {
		switch l.state {
		case legLive, legConnecting, legWaiting, legReplaying:
			return true
		}
	}
	return false
}

// legEnded is called when leg l's socket direction has ended: at its
// collector's EOF, which after the client's own EOF is the end of the
// session and otherwise a failure, or on an error.
func (s *Server) legEnded(d *direction, err error) {
	l := d.leg
	c := l.c
	c.mu.Lock()
	if l.sock == d.src {
		l.revDone = true
	}
	upEnded := c.up().state == dirEnded
	sock, aborted := d.src, c.aborted
	c.mu.Unlock()
	switch {
	case aborted:
		// The connection fails, and closed this socket: its own line
		// says why.
	case err == nil && upEnded:
		if l.primary {
			c.cc.CloseWrite() // the collector's FIN, after the router's
		}
	case err == nil:
		s.legFailed(l, sock, errors.New("the collector closed the connection"))
	default:
		s.legFailed(l, sock, err)
	}
	s.maybeFinishFanout(c)
}

// maybeFinishFanout finishes c once its client side has ended and every
// leg is done.
func (s *Server) maybeFinishFanout(c *conn) {
	c.mu.Lock()
	if c.finished || c.up().state != dirEnded {
		c.mu.Unlock()
		return
	}
	c.stopRetries()
	var waiting []*leg
	for _, l := range c.legs {
		switch {
		case l.sock == nil:
			// Not connected when the session ended: nothing to finish.
			l.sinkDone, l.revDone = true, true
			if l.state == legConnecting {
				l.state = legDown
			}
		case l.state == legWaiting:
			// Connected, and never given the replay: close it.
			l.sinkDone, l.revDone, l.state = true, true, legDone
			waiting = append(waiting, l)
		}
	}
	if len(waiting) > 0 {
		c.mu.Unlock()
		for _, l := range waiting {
			l.sock.Close()
			s.releaseLegFD(l)
		}
		c.mu.Lock()
		if c.finished {
			c.mu.Unlock()
			return
		}
	}
	for _, l := range c.legs {
		if !l.sinkDone || !l.revDone {
			c.mu.Unlock()
			return
		}
	}
	c.finished = true
	var open []*leg
	var why []error
	for _, l := range c.legs {
		if l.state == legLive {
			l.state = legDone
		}
		if !l.closed {
			open = append(open, l)
			var err error
			if l.state == legDown {
				err = l.err // never connected, or down without resync: say why
			}
			why = append(why, err)
		}
	}
	c.mu.Unlock()
	for i, l := range open {
		s.logLeg(l, why[i])
	}
	c.fan.Close()
	c.mu.Lock()
	for _, l := range c.legs {
		l.ctr.sent.Add(l.sent.Total())
		l.ctr.discarded.Add(l.discarded())
	}
	c.mu.Unlock()
	if c.resync != nil {
		c.fan.Locked(c.resync.router.Release)
	}
	c.fail(stageNone, nil) // close every socket
	for _, l := range c.legs {
		s.releaseLegFD(l)
	}
	s.finish(c)
}

// releaseLegFD gives back the budget fd that leg l's socket held, once.
func (s *Server) releaseLegFD(l *leg) {
	c := l.c
	c.mu.Lock()
	held := l.fd
	l.fd = false
	c.mu.Unlock()
	if held {
		s.budget.Release(1)
	}
}

// discarded returns the bytes l's collector sent that were dropped: every
// leg's but the primary's, over its sockets. c.mu is held.
func (l *leg) discarded() int64 {
	var n int64
	for _, d := range l.c.dirs {
		if d.leg == l && d.kind == kindDiscard {
			n += d.n.Total()
		}
	}
	return n
}

// legsToClose returns the sockets of c's legs and the sinks still going,
// for a connection that fails to close and remove once c.mu is released:
// after its parked directions are woken. c.mu is held.
func (c *conn) legsToClose() ([]stream, []*splice.Sink) {
	var socks []stream
	var sinks []*splice.Sink
	for _, l := range c.legs {
		if l.sock != nil {
			socks = append(socks, l.sock)
		}
		if l.sink != nil && !l.sinkDone {
			sinks = append(sinks, l.sink)
		}
	}
	return socks, sinks
}

// logLeg writes leg l's closing line, once: why it went down, or nil
// when it ended with the session.
func (s *Server) logLeg(l *leg, err error) {
	c := l.c
	c.mu.Lock()
	if l.closed {
		c.mu.Unlock()
		return
	}
	l.closed = true
	since, upstream, state := l.since, l.upstream, l.state
	c.mu.Unlock()
	level := zerolog.InfoLevel
	reason := "closed"
	switch {
	case errors.Is(err, errRemovedByReload):
		reason = "removed"
	case errors.Is(err, errMoved):
		reason = "moved"
	case errors.Is(err, splice.ErrLagging):
		level, reason = zerolog.WarnLevel, "lagging"
	case err != nil:
		level, reason = zerolog.WarnLevel, "collector error"
	}
	log := &c.opts.log
	if log.GetLevel() > level {
		return
	}
	ev := c.logger(log).WithLevel(level).
		Int("leg", l.index).
		Str("target", l.name()).
		Str("upstream", upstream).
		Str("state", state.String()).
		Int64("bytes_to_collector", l.sent.Total()).
		Str("reason", reason)
	if !since.IsZero() {
		ev = ev.Stringer("duration", time.Since(since))
	}
	if err != nil {
		ev = ev.Err(err)
	}
	if state == legDown && !c.opts.Resync {
		ev = ev.Str("until", "the router reconnects: without resync a collector cannot join a session halfway")
	}
	ev.Msg("leg closed")
}

// noFIN is a client socket whose write side a leg's reply direction may
// not shut down: the router's session outlives any one collector.
type noFIN struct{ stream }

func (noFIN) CloseWrite() error { return nil }

// copyFanout runs the fan-out kinds of direction.
func (s *Server) copyFanout(d *direction) error {
	switch d.kind {
	case kindFanout:
		return d.c.fan.Copy(d.src, &d.n)
	case kindReply:
		return s.opts.Pump.Copy(noFIN{d.dst}, d.src, &d.n)
	case kindDiscard:
		return s.opts.Pump.Discard(d.src, &d.n)
	}
	return fmt.Errorf("proxy: direction %s is not a fan-out one", d)
}

// endFanout is end for the directions of a fan-out connection: the
// client's side ending fails the connection on an error, and on its EOF
// lets every leg finish; a leg's direction ending is that leg's business.
func (s *Server) endFanout(d *direction, err error) {
	c := d.c
	if d.kind == kindFanout {
		if err != nil {
			st := stageClient
			var pe *splice.Error
			if errors.As(err, &pe) && pe.Op == "write" {
				st = stageTarget
			}
			c.fail(st, err)
		}
		c.mu.Lock()
		d.move(dirEnded)
		c.mu.Unlock()
		s.maybeFinishFanout(c)
		s.noteSettled()
		s.live.Done()
		return
	}
	c.mu.Lock()
	d.move(dirEnded)
	c.mu.Unlock()
	s.legEnded(d, err)
	s.noteSettled()
	s.live.Done()
}

// LegStatus is one collector leg of a router session.
type LegStatus struct {
	Target   string     `json:"target"`
	Upstream string     `json:"upstream,omitempty"`
	Primary  bool       `json:"primary,omitempty"`
	State    string     `json:"state"` // connecting, waiting, replaying, live, lagging, down, done
	Since    *time.Time `json:"connected_since,omitempty"`
	Bytes    int64      `json:"bytes_to_collector"`
	Replays  int        `json:"replays"`
	Queued   int        `json:"bytes_queued,omitempty"`
	Error    string     `json:"last_error,omitempty"`
}

// legStatuses describes c's legs. c.mu is held.
func (c *conn) legStatuses() []LegStatus {
	var out []LegStatus
	for _, l := range c.legs {
		st := LegStatus{Target: l.name(), Upstream: l.upstream, Primary: l.primary,
			State: l.state.String(), Bytes: l.sent.Total(), Replays: l.replays}
		if !l.since.IsZero() {
			since := l.since
			st.Since = &since
		}
		if l.sink != nil && l.state == legLive {
			if q := l.sink.Queued(); q > 0 {
				st.Queued, st.State = q, "lagging"
			}
		}
		if l.err != nil {
			st.Error = l.err.Error()
		}
		out = append(out, st)
	}
	return out
}
