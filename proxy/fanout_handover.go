package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/bmpproxy/bmpproxy/bmp/rib"
	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/bmpproxy/bmpproxy/splice"
	"golang.org/x/sys/unix"
)

// Handover of a fan-out connection. Besides its directions, which hold
// as any connection's do, a freeze stops its Fanout's writers
// (splice.Fanout.Freeze): each sink then has only bytes left, which a
// collector not reading may make megabytes. A replay going on is waited
// for, within the freeze timeout; a leg waiting for the replay slot
// waits for the thaw or the successor; a redial during the freeze is put
// off. The snapshot then describes every leg (its socket, state and
// counters) and writes, in a memfd of the connection's, every sink's
// unwritten bytes and, with resync, the router's state (rib.Router.Save).
// The successor makes a frozen Fanout with a sink per live leg, given its
// unwritten bytes, and resumes the router's state from its replay; at
// the takeover the Fanout thaws and the rest goes on as it would have in
// the predecessor. So no leg reconnects, no collector gets a byte twice
// or misses one, and no replay is needed.

// SnapshotFanout describes a fan-out connection's legs and, with resync,
// its router's state. Ranges are [offset, length] in DataFD.
type SnapshotFanout struct {
	DataFD int             `json:"data_fd"`
	Legs   []SnapshotLeg   `json:"legs"`
	Resync *SnapshotRouter `json:"resync,omitempty"`
}

// SnapshotLeg is one leg of a fan-out connection.
type SnapshotLeg struct {
	Target          string    `json:"target"`
	ProxyProtocol   string    `json:"proxy_protocol"`
	Buffer          int64     `json:"buffer"`
	TransparentMark uint32    `json:"transparent_mark,omitempty"`
	State           uint8     `json:"state"` // legState
	Upstream        string    `json:"upstream,omitempty"`
	Since           time.Time `json:"since"`
	Sent            [2]int64  `json:"sent"`     // spliced, copied
	Received        [2]int64  `json:"received"` // its socket direction's: spliced, copied
	RevEnded        bool      `json:"rev_ended,omitempty"`
	SinkDone        bool      `json:"sink_done,omitempty"`
	RevDone         bool      `json:"rev_done,omitempty"`
	Closed          bool      `json:"closed,omitempty"`
	Err             string    `json:"error,omitempty"`
	Attempts        int       `json:"attempts,omitempty"`
	Replays         int       `json:"replays,omitempty"`
	FD              int       `json:"fd"`        // -1 without a socket
	Unwritten       [2]int64  `json:"unwritten"` // in DataFD
}

// SnapshotRouter is a fan-out connection's router state for resync.
type SnapshotRouter struct {
	Saved   rib.Saved `json:"saved"`
	Replay  [2]int64  `json:"replay"` // in DataFD
	Noted   bool      `json:"noted,omitempty"`
	Waiting []int     `json:"waiting,omitempty"` // legs waiting for the replay slot, in order
}

// fanoutSettled reports whether c's Fanout may be described: no writer
// runs and no replay goes on. c.mu is held.
func (c *conn) fanoutSettled() bool {
	if c.resync != nil && c.resync.replay != nil {
		return false
	}
	return c.fan.Idle()
}

// snapshotFanout fills sc with fan-out connection c's legs and writes
// their unwritten bytes and its router's state into a memfd, which it
// adds to snap's table and to what snap closes. c is frozen and settled:
// nothing touches its legs, sinks or router but this. c.mu is taken.
func (c *conn) snapshotFanout(snap *Snapshot, sc *SnapshotConn) error {
	fd, err := unix.MemfdCreate(fmt.Sprintf("bmpproxy-conn-%d", c.id), unix.MFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("connection %d: memfd for its legs' bytes: %w", c.id, err)
	}
	data := os.NewFile(uintptr(fd), "memfd")
	snap.owned = append(snap.owned, data)
	w := &offsetWriter{f: data}

	c.mu.Lock()
	defer c.mu.Unlock()
	sf := &SnapshotFanout{DataFD: len(snap.FDs)}
	snap.FDs = append(snap.FDs, fd)
	sc.TargetFD = -1
	for _, l := range c.legs {
		sl := SnapshotLeg{
			Target: legTargetText(l.cfg.Target), ProxyProtocol: string(l.cfg.ProxyProtocol), Buffer: int64(l.cfg.Buffer),
			TransparentMark: l.cfg.TransparentMark,
			State:           uint8(l.state), Upstream: l.upstream, Since: l.since,
			Sent:     [2]int64{l.sent.Spliced.Load(), l.sent.Copied.Load()},
			SinkDone: l.sinkDone, RevDone: l.revDone, Closed: l.closed, Attempts: l.attempts, Replays: l.replays, FD: -1,
		}
		if l.err != nil {
			sl.Err = l.err.Error()
		}
		for _, d := range c.dirs { // every socket the leg had
			if d.leg == l {
				sl.Received[0] += d.n.Spliced.Load()
				sl.Received[1] += d.n.Copied.Load()
			}
		}
		if l.rev != nil && l.rev.src == l.sock {
			sl.RevEnded = l.rev.state == dirEnded
		}
		switch l.state {
		case legLive, legWaiting, legReplaying:
			if l.sock == nil {
				return fmt.Errorf("connection %d: leg %d is %s without a socket", c.id, l.index, l.state)
			}
			sl.FD = snap.addFD(l.sock)
			if l.sink != nil && !l.sinkDone {
				b, err := l.sink.Unwritten()
				if err != nil {
					return fmt.Errorf("connection %d: leg %d: %w", c.id, l.index, err)
				}
				if sl.Unwritten, err = w.write(b); err != nil {
					return fmt.Errorf("connection %d: leg %d: %w", c.id, l.index, err)
				}
			}
		}
		sf.Legs = append(sf.Legs, sl)
	}
	if rs := c.resync; rs != nil {
		sr := &SnapshotRouter{Noted: rs.noted}
		for _, l := range rs.waiting {
			if l.state == legWaiting {
				sr.Waiting = append(sr.Waiting, l.index)
			}
		}
		var err error
		start := w.off
		c.fan.Locked(func() { sr.Saved, err = rs.router.Save(w) })
		if err != nil {
			return fmt.Errorf("connection %d: %w", c.id, err)
		}
		sr.Replay = [2]int64{start, w.off - start}
		sf.Resync = sr
	}
	sc.Fanout = sf
	return nil
}

// offsetWriter appends to a file and knows where it stands.
type offsetWriter struct {
	f   *os.File
	off int64
}

func (w *offsetWriter) Write(b []byte) (int, error) {
	n, err := w.f.Write(b)
	w.off += int64(n)
	if err != nil {
		return n, fmt.Errorf("memfd: %w", err)
	}
	return n, nil
}

// write appends b and returns its range.
func (w *offsetWriter) write(b []byte) ([2]int64, error) {
	at := w.off
	_, err := w.Write(b)
	return [2]int64{at, int64(len(b))}, err
}

// thawFanout lets fan-out connection c go on after a freeze that did not
// hand it over, or after a successor's takeover: its sinks write again,
// a waiting leg gets the replay slot, and a leg to be dialed is.
func (s *Server) thawFanout(c *conn) {
	c.fan.Thaw()
	c.mu.Lock()
	if c.aborted || c.finished {
		c.mu.Unlock()
		return
	}
	for _, l := range c.legs {
		if l.state == legConnecting && l.retry == nil && c.resync != nil {
			s.scheduleRetry(l)
		}
	}
	var next *leg
	if rs := c.resync; rs != nil && rs.replay == nil {
		next = rs.takeWaiting()
	}
	c.mu.Unlock()
	if next != nil {
		s.startReplay(next)
	}
}

// releaseFanout lets go of fan-out connection c's legs after a successor
// took it over: their sockets are closed without shutdown(2), and
// nothing of c runs again. Its Fanout is left as it is, frozen: its
// sinks' Conns are closed, and the process ends.
func (s *Server) releaseFanout(c *conn) {
	c.mu.Lock()
	c.finished = true
	c.stopRetries()
	var socks []stream
	for _, l := range c.legs {
		if l.sock != nil {
			socks = append(socks, l.sock)
		}
	}
	c.mu.Unlock()
	for _, sock := range socks {
		sock.Close()
	}
	for _, l := range c.legs {
		s.releaseLegFD(l)
	}
	if c.resync != nil {
		c.fan.Locked(c.resync.router.Release)
	}
}

// restoreFanout rebuilds a predecessor's fan-out connection from sc, its
// client socket cc and the legs' sockets and bytes in snap, for listener
// options o. Everything is held: its directions until the takeover
// resumes them, its Fanout frozen until thawFanout. Each leg keeps the
// settings it was connected with. On error nothing is kept open but cc,
// which the caller closes.
func (s *Server) restoreFanout(snap *Snapshot, sc SnapshotConn, o *listenerOpts, cc stream) (*conn, error) {
	sf := sc.Fanout
	name := fmt.Sprintf("connection %d from %s", sc.ID, sc.Client)
	data, err := snap.file(sf.DataFD, name+": legs' bytes")
	if err != nil {
		return nil, err
	}
	defer data.Close()
	section := func(r [2]int64) ([]byte, error) {
		b := make([]byte, r[1])
		if _, err := data.ReadAt(b, r[0]); err != nil && !(errors.Is(err, io.EOF) && r[1] == 0) {
			return nil, fmt.Errorf("%s: reading %d bytes at %d of its memfd: %w", name, r[1], r[0], err)
		}
		return b, nil
	}

	c := s.adoptedConn(sc, o, cc)
	var socks []stream
	closeAll := func() {
		for _, sock := range socks {
			if sock != nil {
				sock.Close()
			}
		}
	}
	legs := make([]*leg, len(sf.Legs))
	for i, sl := range sf.Legs {
		var t conf.Target // "": a pool leg with no member yet
		if sl.Target != "" {
			var err error
			if t, err = conf.ParseTarget(sl.Target); err != nil {
				closeAll()
				return nil, fmt.Errorf("%s: leg %d: %w", name, i, err)
			}
		}
		l := &leg{c: c, index: i, primary: i == 0,
			cfg:   conf.Leg{Target: t, ProxyProtocol: conf.ProxyProtocol(sl.ProxyProtocol), Buffer: conf.ByteSize(sl.Buffer), TransparentMark: sl.TransparentMark},
			state: legState(sl.State), upstream: sl.Upstream, since: sl.Since,
			sinkDone: sl.SinkDone, revDone: sl.RevDone, closed: sl.Closed, attempts: sl.Attempts, replays: sl.Replays}
		l.ctr = o.state.leg(l.name())
		if sl.Err != "" {
			l.err = errors.New(sl.Err)
		}
		l.sent.Spliced.Store(sl.Sent[0])
		l.sent.Copied.Store(sl.Sent[1])
		if sl.FD >= 0 {
			sock, err := adoptStream(snap.file(sl.FD, fmt.Sprintf("%s: leg %d to %s", name, i, sl.Upstream)))
			if err != nil {
				closeAll()
				return nil, fmt.Errorf("%s: leg %d: %w", name, i, err)
			}
			socks = append(socks, sock)
			l.sock = sock
			l.fd = i > 0
		}
		legs[i] = l
	}
	c.legs = legs

	var tap func([]byte)
	if sr := sf.Resync; sr != nil {
		replay, err := section(sr.Replay)
		if err != nil {
			closeAll()
			return nil, err
		}
		r, err := rib.Resume(s.ribMem, "router "+sc.Client.String(), sr.Saved, bytes.NewReader(replay))
		if err != nil {
			// Not expected: the state is the predecessor's own replay.
			// The router's session goes on; a leg that needs a replay
			// closes it, as for any state not kept.
			s.opts.Logger.Warn().Uint64("conn", sc.ID).Stringer("client", sc.Client).Err(err).
				Msg("upgrade: the router's resync state could not be resumed; it is no longer kept")
			r.Release()
		}
		c.resync = &resync{router: r, noted: sr.Noted || err != nil}
		for _, i := range sr.Waiting {
			if i >= 0 && i < len(legs) && legs[i].state == legWaiting {
				c.resync.waiting = append(c.resync.waiting, legs[i])
			}
		}
		tap = s.tap(c)
	}
	c.fan = s.opts.Pump.NewFanout(splice.FanoutConfig{Tap: tap})
	c.fan.Freeze() // until thawFanout: no byte written before the takeover

	up := &direction{c: c, kind: kindFanout, src: cc}
	up.n.Spliced.Store(sc.Up[0])
	up.n.Copied.Store(sc.Up[1])
	c.dirs = []*direction{up}
	for i, sl := range sf.Legs {
		l := legs[i]
		kind := kindDiscard
		if l.primary {
			kind = kindReply
		}
		if l.sock == nil || l.state == legWaiting {
			if sl.Received != [2]int64{} {
				// What its earlier sockets sent, for the counts.
				d := &direction{c: c, kind: kind, leg: l}
				d.n.Spliced.Store(sl.Received[0])
				d.n.Copied.Store(sl.Received[1])
				d.move(dirEnded)
				c.dirs = append(c.dirs, d)
			}
			continue
		}
		if !l.sinkDone && !sc.Ended[0] {
			pending, err := section(sl.Unwritten)
			if err != nil {
				closeAll()
				return nil, err
			}
			err = s.addLegSink(c, l, nil, func() (io.Reader, []byte, error) { return nil, pending, nil })
			if err != nil {
				closeAll()
				return nil, fmt.Errorf("%s: leg %d: %w", name, i, err)
			}
		} else {
			l.sinkDone = true // ended in the predecessor, after the router's EOF
		}
		l.rev = &direction{c: c, kind: kind, src: l.sock, dst: cc, leg: l}
		l.rev.n.Spliced.Store(sl.Received[0])
		l.rev.n.Copied.Store(sl.Received[1])
		if sl.RevEnded {
			l.revDone = true
		}
		c.dirs = append(c.dirs, l.rev)
	}
	for i, d := range c.dirs {
		if d.state == dirEnded {
			continue
		}
		if i == 0 && sc.Ended[0] || d.leg != nil && d.leg.revDone {
			d.move(dirEnded)
			continue
		}
		d.move(dirHeld)
		s.live.Add(1)
	}
	if c.allEnded() {
		closeAll()
		return nil, fmt.Errorf("%s: every direction ended", name)
	}
	c.upstream = legs[0].upstream
	o.state.active.Add(1)
	s.budget.Charge(c.fds)
	for _, l := range legs {
		if l.fd {
			s.budget.Charge(1)
		}
	}
	s.track(c)
	return c, nil
}

// legTargetText is a leg's target in a snapshot: "" for none (a pool leg
// with no member yet).
func legTargetText(t conf.Target) string {
	if t.IsZero() {
		return ""
	}
	return t.String()
}
