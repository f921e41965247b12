package splice

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A Fanout moves one source's bytes to a changing set of sinks, each at
// its own pace: a slow sink never slows the source or another sink.
//
// The source is read by Copy, on the caller's goroutine, as Pump.Copy
// reads it: into a pipe P, holding nothing while the source is idle, and
// returning on a read deadline so that the caller can park it. Each round
// of bytes then goes to every sink, in order:
//
//   - A sink that is caught up (nothing queued in user space) gets them in
//     its own pipe Q, by tee(2) from P: no copy. P is drained after, or
//     read once into user space when that copy is needed (below).
//   - A sink that is behind, or whose pipe cannot take the whole round,
//     gets them (or the part its pipe did not take) as references to a
//     user-space copy of the round: its backlog, bounded by its limit.
//     When that copy is needed anyway, because some sink is behind or the
//     Fanout has a tap, P is read into it once, for every such sink.
//
// The source is paced by its slowest sink, for a while: Copy reads the
// next round only while every pacing sink is less than half its limit
// behind (or there is no sink at all, when bytes only go to the tap), and
// never more than the one with the least room has. Sinks that keep up
// thus stay together, whatever a network's hiccups, instead of the
// fastest running away from the others. A sink that keeps Copy waiting
// for HoldMax while another pacing sink has room is demoted: it no
// longer paces, and is cut if it falls its limit behind; once it has
// caught up it paces again. The last pacing sink is never demoted: a
// lone collector paces its source as a plain proxy's would. A wait that
// sees no sink write anything for StallAfter cuts the sinks it waits
// for: a collector that stops reading never stops the source, even when
// it is the only one.
//
// Each sink has a writer goroutine while it has something to write:
// first its head (a PROXY header and the bytes read before the Fanout
// started), then its replay reader, then its pipe, then its backlog.
// Bytes enter its pipe only while its replay is done and its backlog
// empty, so this order is the source's order. A sink whose backlog
// passes its limit is cut: it gets no more bytes, and its Done reports
// ErrLagging.
//
// Invariants:
//   - Every byte the source delivers after a sink was added goes to that
//     sink exactly once and in order, unless the sink ends first.
//   - A sink holds a pipe only while bytes are in it (or a round is being
//     given to it); an idle sink holds no pipe, no buffer and no goroutine.
//   - Done is called exactly once per sink, after its writer has stopped
//     touching the sink's Conn. The Conn is the caller's: Fanout never
//     closes it, it only shuts down its write side after the source's EOF.
//   - The tap and a sink's At callback run under the Fanout's lock,
//     between two rounds: the tap has seen exactly the bytes that came
//     before the sink's first live byte.
type Fanout struct {
	pump       *Pump
	tap        func([]byte)
	stallAfter time.Duration
	holdMax    time.Duration

	mu       sync.Mutex
	sinks    []*Sink
	ended    bool          // the source reached EOF: sinks end after their backlog
	frozen   bool          // writers stop after their head and replay (Freeze)
	progress chan struct{} // closed when a sink makes progress, if Copy waits for room
	writers  sync.WaitGroup

	nudge chan struct{} // Nudge's token: a Copy waiting for room returns

	// Owned by Copy.
	waitSince  time.Time // when the wait for room going on began; zero if none
	quietSince time.Time // since when, in that wait, no sink wrote a byte
	holdSpent  bool      // that wait has demoted the sinks it waited for
	src        syscall.RawConn
	room       int    // the most the next round may hold
	p          *pipe  // P; held only while a round is in it
	c          *chunk // instead of P, when no pipe can be had: the round, copied
	n          int    // result of the last fill
	rerr       error
}

// ErrLagging reports a sink cut because its backlog passed its limit.
var ErrLagging = errors.New("fell behind")

// ErrRemoved reports a sink ended by Remove or Close.
var ErrRemoved = errors.New("removed")

// NewFanout returns a Fanout.
func (p *Pump) NewFanout(cfg FanoutConfig) *Fanout {
	if cfg.StallAfter <= 0 {
		cfg.StallAfter = DefaultStallAfter
	}
	if cfg.HoldMax <= 0 {
		cfg.HoldMax = DefaultHoldMax
	}
	return &Fanout{pump: p, tap: cfg.Tap, stallAfter: cfg.StallAfter, holdMax: cfg.HoldMax, nudge: make(chan struct{}, 1)}
}

// FanoutConfig configures a Fanout.
type FanoutConfig struct {
	// Tap, if set, sees every round in user space and in order, before
	// any sink gets it, under the Fanout's lock.
	Tap func([]byte)
	// StallAfter is how long the source may wait for room while no sink
	// writes a byte; then the sinks it waits for are cut. Zero means
	// DefaultStallAfter.
	StallAfter time.Duration
	// HoldMax is how long one wait for room may go on while a sink that
	// paces has room and others keep the source waiting; then those are
	// demoted. Zero means DefaultHoldMax.
	HoldMax time.Duration
}

// DefaultStallAfter is FanoutConfig.StallAfter's default.
const DefaultStallAfter = 5 * time.Second

// DefaultHoldMax is FanoutConfig.HoldMax's default: long enough for a
// collector's hiccup, short enough that a router hardly notices.
const DefaultHoldMax = 200 * time.Millisecond

// Nudge makes a Copy that waits for a sink to make room return, as a read
// deadline makes a Copy that waits for the source return: the caller
// sets both to park or hold the source.
func (f *Fanout) Nudge() {
	select {
	case f.nudge <- struct{}{}:
	default:
	}
}

// errNudged is what a Copy woken by Nudge returns, inside an *Error with
// Op "read", as a read deadline would.
var errNudged = fmt.Errorf("fan-out: nudged while waiting for a sink: %w", os.ErrDeadlineExceeded)

// roomLocked returns how many bytes the next round may hold: what the
// pacing sink with the least room has before its limit, or unbounded (-1)
// with no sink going; 0 when some pacing sink is at least half its limit
// behind, and Copy must wait. A demoted sink that has caught up paces
// again; with no pacing sink left, every sink going does. f.mu is held.
func (f *Fanout) roomLocked() int {
	for pass := 0; pass < 2; pass++ {
		room, going, pacing := -1, 0, 0
		for _, s := range f.sinks {
			if s.err != nil {
				continue
			}
			going++
			behind := s.queued + s.qData
			if s.demoted {
				if behind > 0 {
					continue
				}
				s.demoted = false
			}
			pacing++
			if behind >= s.limit/2 {
				return 0
			}
			if r := s.limit - behind; room < 0 || r < room {
				room = r
			}
		}
		if going == 0 {
			return -1
		}
		if pacing > 0 {
			return room
		}
		for _, s := range f.sinks {
			s.demoted = false
		}
	}
	return 0 // not reached: the second pass has every sink pacing
}

// demoteLocked demotes the pacing sinks that keep Copy waiting, if some
// other pacing sink has room: they stop pacing the source. f.mu is held.
func (f *Fanout) demoteLocked() {
	roomy := false
	for _, s := range f.sinks {
		if s.err == nil && !s.demoted && s.queued+s.qData < s.limit/2 {
			roomy = true
		}
	}
	if !roomy {
		return
	}
	for _, s := range f.sinks {
		if s.err == nil && !s.demoted && s.queued+s.qData >= s.limit/2 {
			s.demoted = true
		}
	}
}

// cutStalledLocked cuts the sinks that keep Copy waiting. f.mu is held.
func (f *Fanout) cutStalledLocked() {
	for _, s := range f.sinks {
		if s.err == nil && s.queued+s.qData >= s.limit/2 {
			s.endLocked(fmt.Errorf("%w: wrote nothing for %s with %d bytes queued", ErrLagging, f.stallAfter, s.queued+s.qData))
		}
	}
}

// progressLocked wakes a Copy that waits for room. f.mu is held.
func (f *Fanout) progressLocked() {
	if f.progress != nil {
		close(f.progress)
		f.progress = nil
	}
}

// waitRoom waits until every pacing sink is less than half its limit
// behind, or Nudge is called (errNudged), and sets f.room. A wait that
// goes on for holdMax demotes the sinks it waits for, if another has
// room; one in which no sink writes anything for stallAfter cuts them.
// A wait is measured across Copy calls: a nudge (to park or hold the
// source) ends the call, not the wait, so the sweeper's nudges never
// keep a stalled sink from being cut.
func (f *Fanout) waitRoom() error {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		f.mu.Lock()
		if r := f.roomLocked(); r != 0 {
			f.room = r
			f.mu.Unlock()
			f.waitSince, f.holdSpent = time.Time{}, false
			return nil
		}
		if f.progress == nil {
			f.progress = make(chan struct{})
		}
		progress := f.progress
		f.mu.Unlock()
		now := time.Now()
		if f.waitSince.IsZero() {
			f.waitSince, f.quietSince = now, now
		}
		next := f.quietSince.Add(f.stallAfter)
		hold := f.waitSince.Add(f.holdMax)
		if !f.holdSpent && hold.Before(next) {
			next = hold
		}
		timer.Reset(max(next.Sub(now), 0))
		select {
		case <-progress:
			f.quietSince = time.Now()
		case <-timer.C:
			now := time.Now()
			f.mu.Lock()
			if !f.holdSpent && !now.Before(hold) {
				f.holdSpent = true // once per wait
				f.demoteLocked()
			}
			if !now.Before(f.quietSince.Add(f.stallAfter)) {
				f.cutStalledLocked()
				f.quietSince = now
			}
			f.mu.Unlock()
		case <-f.nudge:
			return errNudged
		}
	}
}

// SinkConn is a sink's destination: a Conn whose writes can be woken.
// *net.TCPConn satisfies it.
type SinkConn interface {
	Conn
	// SetWriteDeadline wakes a blocked write (with a time in the past)
	// when the sink is cut or removed.
	SetWriteDeadline(t time.Time) error
}

// SinkConfig describes a sink.
type SinkConfig struct {
	// Conn is the destination. It stays the caller's.
	Conn SinkConn
	// Limit bounds the backlog, in bytes: a sink with more queued in user
	// space is cut. Zero means DefaultSinkLimit.
	Limit int
	// Head is written first.
	Head []byte
	// Count, if set, has every byte written to Conn added to it.
	Count *Counter
	// Done is called once the sink has ended, on a goroutine of the
	// Fanout's: with nil after the source's EOF was passed on, with
	// ErrLagging (wrapped) when cut, ErrRemoved after Remove or Close, or
	// the write error.
	Done func(err error)
}

// DefaultSinkLimit is a sink's backlog bound when SinkConfig.Limit is 0.
const DefaultSinkLimit = 4 << 20

// Sink is one destination of a Fanout.
type Sink struct {
	fo    *Fanout
	nc    SinkConn
	conn  syscall.RawConn
	limit int
	count *Counter
	done  func(error)

	// Guarded by fo.mu.
	head    []byte
	replay  io.Reader
	q       *pipe   // Q, while bytes are in it
	qData   int     // bytes teed or spliced into q, not yet written
	backlog []piece // after q
	queued  int     // bytes in backlog
	writing bool    // a writer goroutine owns the write side now
	demoted bool    // it kept the source waiting too long: it does not pace it
	err     error   // set when the sink has ended or must end
	ended   bool    // Done was called, or is being called
}

// piece is part of a round's user-space copy.
type piece struct {
	c        *chunk
	off, end int
}

// chunk is a user-space copy of (part of) a round, shared by every sink
// that queued it.
type chunk struct {
	buf  *[]byte
	n    int
	refs int // guarded by the Fanout's mu
}

// Add adds a sink. at, if set, is called under the Fanout's lock between
// two rounds, and what it returns is written after Head: a replay reader,
// read to EOF on the sink's writer, and then pending bytes; the sink's
// live bytes follow them. So a caller that taps the source can start the
// sink exactly where its tap stands. If at returns an error, Add returns
// it and adds nothing. After the source's EOF, Add calls Done(ErrRemoved)
// at once.
func (f *Fanout) Add(cfg SinkConfig, at func() (replay io.Reader, pending []byte, err error)) (*Sink, error) {
	rc, err := cfg.Conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	limit := cfg.Limit
	if limit <= 0 {
		limit = DefaultSinkLimit
	}
	count := cfg.Count
	if count == nil {
		count = new(Counter)
	}
	s := &Sink{fo: f, nc: cfg.Conn, conn: rc, limit: limit, count: count, done: cfg.Done,
		head: cfg.Head}
	f.mu.Lock()
	defer f.mu.Unlock()
	if at != nil {
		replay, pending, err := at()
		if err != nil {
			return nil, err
		}
		s.replay = replay
		if len(pending) > 0 {
			s.queueCopy(pending)
		}
	}
	f.sinks = append(f.sinks, s)
	if f.ended {
		s.err = ErrRemoved
	}
	f.startLocked(s)
	return s, nil
}

// queueCopy queues a copy of b in s's backlog. f.mu is held.
func (s *Sink) queueCopy(b []byte) {
	for len(b) > 0 {
		c := s.fo.newChunk()
		c.n = copy(*c.buf, b)
		b = b[c.n:]
		s.queue(c, 0, c.n)
	}
}

// queue adds c[off:end] to s's backlog, taking a reference. f.mu is held.
func (s *Sink) queue(c *chunk, off, end int) {
	c.refs++
	s.backlog = append(s.backlog, piece{c: c, off: off, end: end})
	s.queued += end - off
}

// Remove ends s: what it has not written is dropped, and Done reports
// ErrRemoved.
func (s *Sink) Remove() {
	f := s.fo
	f.mu.Lock()
	defer f.mu.Unlock()
	s.endLocked(ErrRemoved)
}

// endLocked marks s as ended with err, unless it has ended already, drops
// its backlog and, if no writer runs, finishes it. f.mu is held.
func (s *Sink) endLocked(err error) {
	if s.err == nil {
		s.err = err
	}
	f := s.fo
	for _, pc := range s.backlog {
		f.unref(pc.c)
	}
	s.backlog, s.queued = nil, 0
	s.replay = nil
	if s.writing {
		// Its writer may be blocked on a collector that reads nothing:
		// wake it, and it finishes the sink.
		s.nc.SetWriteDeadline(time.Unix(1, 0))
		return
	}
	f.startLocked(s) // a writer finishes it
}

// Locked runs fn under the Fanout's lock, between two rounds: where the
// tap is never running.
func (f *Fanout) Locked(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn()
}

// Queued returns the bytes s has waiting in user space.
func (s *Sink) Queued() int {
	s.fo.mu.Lock()
	defer s.fo.mu.Unlock()
	return s.queued
}

// Idle reports whether no sink has anything left to write: every writer
// has stopped, after the Done of each sink that ended.
func (f *Fanout) Idle() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.sinks {
		if s.writing {
			return false
		}
	}
	return true
}

// Freeze stops every sink's writer at its next step, for a handover:
// one blocked on its collector is woken by a write deadline in the past,
// and keeps what it did not write. A writer that has its head or its
// replay to write goes on to the end of them, so that what a frozen sink
// has left is bytes only (Unwritten). Freeze has no effect on a Fanout
// whose source has ended: its sinks finish. Idle reports when every
// writer has stopped; Thaw undoes Freeze.
func (f *Fanout) Freeze() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.frozen = true
	for _, s := range f.sinks {
		if s.writing && s.err == nil && len(s.head) == 0 && s.replay == nil {
			s.nc.SetWriteDeadline(time.Unix(1, 0))
		}
	}
}

// Thaw undoes Freeze: the writers of sinks with bytes left start again.
func (f *Fanout) Thaw() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.frozen = false
	for _, s := range f.sinks {
		f.startLocked(s)
	}
}

// Unwritten returns a copy of what s has yet to write, in order, on a
// frozen and settled Fanout: its pipe's bytes are moved to the front of
// its backlog first, so a Thaw writes them as before.
func (s *Sink) Unwritten() ([]byte, error) {
	f := s.fo
	f.mu.Lock()
	defer f.mu.Unlock()
	if s.writing {
		return nil, errors.New("fan-out: a sink's writer still runs")
	}
	if len(s.head) > 0 || s.replay != nil {
		return nil, errors.New("fan-out: a sink has its head or replay left")
	}
	if s.qData > 0 {
		var front []piece
		n := 0
		for s.qData > 0 {
			c := f.newChunk()
			m, err := readPipe(s.q, (*c.buf)[:min(len(*c.buf), s.qData)])
			if err != nil || m <= 0 {
				f.unref(c)
				return nil, fmt.Errorf("fan-out: reading a sink's pipe: %w", cmp.Or(err, io.ErrNoProgress))
			}
			c.n = m
			front = append(front, piece{c: c, end: m})
			s.qData -= m
			s.q.data = s.qData
			n += m
		}
		s.backlog = append(front, s.backlog...)
		s.queued += n
	}
	if s.q != nil {
		f.pump.putPipe(s.q)
		s.q = nil
	}
	out := make([]byte, 0, s.queued)
	for _, pc := range s.backlog {
		out = append(out, (*pc.c.buf)[pc.off:pc.end]...)
	}
	return out, nil
}

// readPipe reads what fits in b from q's read end.
func readPipe(q *pipe, b []byte) (int, error) {
	for {
		m, err := unix.Read(q.r, b)
		if err == unix.EINTR {
			continue
		}
		return m, err
	}
}

// Close ends every sink (Done reports ErrRemoved for those still going)
// and waits until every writer has stopped.
func (f *Fanout) Close() {
	f.mu.Lock()
	for _, s := range f.sinks {
		s.endLocked(ErrRemoved)
	}
	f.mu.Unlock()
	f.writers.Wait()
}

// Copy reads src until EOF and gives its bytes to the sinks; then every
// sink shuts down its write side after its backlog (Done(nil)), and Copy
// returns nil. A read error, including a read deadline that the caller
// set to park or hold the source, returns an *Error with Op "read"; the
// sinks keep what they have and go on. Delivered bytes (as read from
// src) are added to c. A sink's failure never ends Copy.
//
// When entering Copy, P is empty and held by nobody.
func (f *Fanout) Copy(src Conn, c *Counter) error {
	rc, err := src.SyscallConn()
	if err != nil {
		return &Error{Op: "read", Err: err}
	}
	f.src = rc
	defer f.releaseP()
	select {
	case <-f.nudge: // a stale token, from a Nudge that found Copy reading
	default:
	}
	for {
		if err := f.waitRoom(); err != nil {
			return &Error{Op: "read", Err: err}
		}
		n, err := f.fill()
		if err != nil {
			return &Error{Op: "read", Err: err}
		}
		if n == 0 {
			f.mu.Lock()
			f.ended = true
			for _, s := range f.sinks {
				f.startLocked(s) // each finishes: backlog, then CloseWrite
			}
			f.mu.Unlock()
			return nil
		}
		if c != nil {
			c.Spliced.Add(int64(n))
		}
		f.distribute(n)
	}
}

// fill splices the next round from the source into P, parking in the
// poller, holding no pipe, while the source is idle. It returns 0 at EOF.
// P is empty on entry and holds the round on return.
func (f *Fanout) fill() (int, error) {
	f.n, f.rerr = 0, nil
	if err := f.src.Read(f.fillFD); err != nil {
		return 0, err
	}
	return f.n, f.rerr
}

func (f *Fanout) fillFD(fd uintptr) bool {
	if f.p == nil && f.c == nil {
		if !f.pump.cfg.Disabled {
			pp, err := f.pump.getPipe()
			if err == nil {
				f.p = pp
			} else {
				f.pump.noteFallback(err)
			}
		}
		if f.p == nil {
			f.c = f.newChunk()
		}
	}
	for {
		var m int
		var err error
		if f.p != nil {
			var m64 int64
			m64, err = unix.Splice(int(fd), nil, f.p.w, nil, f.roundMax(f.p.size), unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			m = int(m64)
		} else {
			m, err = unix.Read(int(fd), (*f.c.buf)[:f.roundMax(len(*f.c.buf))])
		}
		switch err {
		case nil:
			if m < 0 {
				f.rerr = io.ErrNoProgress
				return true
			}
			f.n = m
			if f.p != nil {
				f.p.data = m
			} else {
				f.c.n = m
			}
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			f.releaseP() // idle: hold nothing while parked
			return false
		default:
			f.rerr = err
			return true
		}
	}
}

// roundMax is the most the next round may hold, of a pipe or buffer of
// size: what waitRoom found room for.
func (f *Fanout) roundMax(size int) int {
	if f.room > 0 {
		return min(size, f.room)
	}
	return size
}

// releaseP gives back P, or the chunk used instead.
func (f *Fanout) releaseP() {
	if f.p != nil {
		f.pump.putPipe(f.p)
		f.p = nil
	}
	if f.c != nil {
		f.mu.Lock()
		f.unref(f.c)
		f.mu.Unlock()
		f.c = nil
	}
}

// distribute gives the round of n bytes in P to every sink, then leaves P
// empty. It runs under f.mu, so that a sink added now starts after it.
func (f *Fanout) distribute(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.c != nil {
		f.distributeCopy()
		return
	}
	// Sinks that are caught up take the round in their pipes. The last
	// of them could take P's buffers by splice instead of a tee, but a
	// tee keeps P whole for a user-space copy, which the tap and any
	// sink behind need; P is drained after.
	type short struct {
		s    *Sink
		from int // the sink's pipe took the round's bytes before this
	}
	var needCopy []short
	for _, s := range f.sinks {
		if s.err != nil {
			continue
		}
		from := 0
		if s.replay == nil && s.queued == 0 && len(s.head) == 0 {
			from = s.teeLocked(n)
			if from == n {
				continue
			}
		}
		needCopy = append(needCopy, short{s, from})
	}
	if f.tap == nil && len(needCopy) == 0 {
		f.drainP()
		f.checkLimits(f.sinks)
		return
	}
	// One user-space copy of the round, in chunks, for the tap and every
	// sink that did not take it all in its pipe.
	off := 0
	for off < n {
		c := f.newChunk()
		m := f.readP(*c.buf, n-off)
		if m <= 0 {
			f.unref(c)
			break // not expected: P holds n bytes
		}
		c.n = m
		if f.tap != nil {
			f.tap((*c.buf)[:m])
		}
		for _, sh := range needCopy {
			lo, hi := max(sh.from, off), off+m
			if lo < hi && sh.s.err == nil {
				sh.s.queue(c, lo-off, hi-off)
			}
		}
		f.unref(c) // the references the sinks took keep it
		off += m
	}
	f.checkLimits(f.sinks)
}

// distributeCopy gives the round that fill read into f.c, for want of a
// pipe, to the tap and to every sink's backlog. f.mu is held.
func (f *Fanout) distributeCopy() {
	c := f.c
	f.c = nil
	if f.tap != nil {
		f.tap((*c.buf)[:c.n])
	}
	for _, s := range f.sinks {
		if s.err == nil {
			s.queue(c, 0, c.n)
		}
	}
	f.unref(c)
	f.checkLimits(f.sinks)
}

// checkLimits cuts the sinks of ss that are more than their limit behind,
// counting what their pipes hold (a pipe's slots can hold much more than
// its nominal size, since a tee or splice shares whole pages), and starts
// the writers of the others. f.mu is held.
func (f *Fanout) checkLimits(ss []*Sink) {
	for _, s := range ss {
		if s.err != nil {
			continue
		}
		if behind := s.queued + s.qData; behind > s.limit {
			s.endLocked(fmt.Errorf("%w: %d bytes queued, more than its buffer of %d", ErrLagging, behind, s.limit))
			continue
		}
		f.startLocked(s)
	}
}

// teeLocked duplicates the round's n bytes from P into s's pipe, taking a
// pipe if s has none, and returns how many it took: n, or fewer if the
// pipe is full or none can be had. f.mu is held.
func (s *Sink) teeLocked(n int) int {
	f := s.fo
	if s.q == nil {
		pp, err := f.pump.getPipe()
		if err != nil {
			return 0 // this round goes to the backlog
		}
		s.q = pp
	}
	// tee duplicates from P's head and consumes nothing, so a second
	// call would repeat the same bytes: one call, and what it did not
	// take (Q full, in bytes or in slots) goes to the backlog.
	var m int64
	var err error
	for {
		m, err = unix.Tee(f.p.r, s.q.w, n, unix.SPLICE_F_NONBLOCK)
		if err != unix.EINTR {
			break
		}
	}
	total := 0
	if err == nil && m > 0 {
		total = int(m)
	}
	s.qData += total
	if total > 0 {
		f.pump.trace(OpSpliceOut, f.p.r, s.q.w, total)
	}
	return total
}

// readP reads up to max bytes of P into b. f.mu is held.
func (f *Fanout) readP(b []byte, max int) int {
	if len(b) > max {
		b = b[:max]
	}
	m, err := readPipe(f.p, b)
	if err != nil {
		return 0
	}
	f.p.data -= m
	return m
}

// drainP drops the round from P: every sink has it.
func (f *Fanout) drainP() {
	for f.p.data > 0 {
		m, err := unix.Splice(f.p.r, nil, f.pump.devNull(), nil, f.p.data, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		if err == unix.EINTR {
			continue
		}
		if err != nil || m <= 0 {
			// Not expected: /dev/null takes everything. Read it out.
			buf := f.pump.bufs.Get().(*[]byte)
			for f.p.data > 0 && f.readP(*buf, f.p.data) > 0 {
			}
			f.pump.bufs.Put(buf)
			return
		}
		f.p.data -= int(m)
	}
}

// newChunk returns an empty chunk with one reference, the caller's.
func (f *Fanout) newChunk() *chunk {
	return &chunk{buf: f.pump.bufs.Get().(*[]byte), refs: 1}
}

// unref drops a reference to c, returning its buffer with the last one.
// f.mu is held.
func (f *Fanout) unref(c *chunk) {
	c.refs--
	if c.refs == 0 {
		f.pump.bufs.Put(c.buf)
		c.buf = nil
	}
}

// startLocked starts s's writer if s has something to do and none runs:
// bytes to write, or its end to report. f.mu is held.
func (f *Fanout) startLocked(s *Sink) {
	if s.writing || s.ended {
		return
	}
	if s.err == nil && !f.ended && len(s.head) == 0 && s.replay == nil && s.qData == 0 && s.queued == 0 {
		return // caught up; the next round starts it
	}
	if s.err == nil && f.frozen && !f.ended && len(s.head) == 0 && s.replay == nil {
		return // frozen with bytes only left: Thaw starts it
	}
	s.writing = true
	f.writers.Add(1)
	go s.write()
}

// write is a sink's writer: head, replay, pipe, backlog, in that order,
// until nothing is left; then, if the source ended, the sink's FIN. It
// also finishes a sink that ended: it releases the pipe and calls Done.
// On entry s.writing is set, and only this goroutine writes to s.conn.
//
// Done is called after the writer has left f.writers: a Done that ends
// the caller's connection may Close the Fanout, which waits for the
// writers, and so must not wait for its own. s.writing stays set until
// Done returns, so Idle waits for it.
func (s *Sink) write() {
	f := s.fo
	err, ended := s.writeAll()
	f.writers.Done()
	if !ended {
		return
	}
	if s.done != nil {
		s.done(err)
	}
	f.mu.Lock()
	s.writing = false
	f.progressLocked() // one fewer sink to wait for
	f.mu.Unlock()
}

// writeAll runs write's loop; it returns with f.mu released, and with
// ended set and Done's argument once the sink has ended.
func (s *Sink) writeAll() (doneErr error, ended bool) {
	f := s.fo
	var scratch *[]byte
	defer func() {
		if scratch != nil {
			f.pump.bufs.Put(scratch)
		}
	}()
	for {
		f.mu.Lock()
		if s.err != nil {
			err := s.finishLocked()
			f.mu.Unlock()
			return err, true
		}
		if f.frozen && !f.ended && len(s.head) == 0 && s.replay == nil {
			s.writing = false // Thaw starts it again
			f.progressLocked()
			f.mu.Unlock()
			return nil, false
		}
		var err error
		switch {
		case len(s.head) > 0:
			b := s.head
			f.mu.Unlock()
			var n int
			n, err = s.writeBytes(b)
			f.mu.Lock()
			s.head = s.head[n:]
		case s.replay != nil:
			r := s.replay
			f.mu.Unlock()
			if scratch == nil {
				scratch = f.pump.bufs.Get().(*[]byte)
			}
			n, rerr := r.Read(*scratch)
			if n > 0 {
				var m int
				m, err = s.writeBytes((*scratch)[:n])
				if err != nil && m < n && s.nudged(err) {
					// Not expected: Freeze wakes no writer in its replay.
					// The rest of the read goes first.
					s.head = append([]byte(nil), (*scratch)[m:n]...)
					err = nil
				}
			}
			f.mu.Lock()
			if err == nil && rerr != nil {
				if rerr != io.EOF {
					err = fmt.Errorf("replay: %w", rerr)
				} else if s.replay == r {
					s.replay = nil
				}
			}
		case s.qData > 0:
			q, n := s.q, s.qData
			f.mu.Unlock()
			var wrote int
			wrote, err = s.spliceOut(q, n)
			f.mu.Lock()
			s.qData -= wrote
			q.data = s.qData
			if err != nil && s.nudged(err) {
				err = nil // what is left stays in the pipe
			}
		case s.queued > 0:
			pc := s.backlog[0]
			s.backlog = s.backlog[1:]
			f.mu.Unlock()
			var n int
			n, err = s.writeBytes((*pc.c.buf)[pc.off:pc.end])
			f.mu.Lock()
			s.queued -= pc.end - pc.off
			if err != nil && s.nudged(err) {
				// Woken by Freeze: the rest goes back to the front.
				err = nil
				pc.off += n
				s.backlog = append([]piece{pc}, s.backlog...)
				s.queued += pc.end - pc.off
			} else {
				f.unref(pc.c)
			}
		default:
			// Caught up. Give the pipe back while it is empty.
			if s.q != nil {
				s.q.data = 0
				f.pump.putPipe(s.q)
				s.q = nil
			}
			if f.ended {
				err = s.nc.CloseWrite()
				if err == nil {
					s.err = io.EOF // finished: Done(nil)
					err := s.finishLocked()
					f.mu.Unlock()
					return err, true
				}
				err = fmt.Errorf("close write: %w", err)
			} else {
				s.writing = false
				f.mu.Unlock()
				return nil, false
			}
		}
		if err != nil && s.err == nil {
			s.err = err
		}
		f.progressLocked()
		f.mu.Unlock()
	}
}

// finishLocked releases what s holds, for the ended sink whose writer
// runs this, and returns Done's argument: the writer calls Done once,
// after it has left f.writers. f.mu is held.
func (s *Sink) finishLocked() error {
	f := s.fo
	for _, pc := range s.backlog {
		f.unref(pc.c)
	}
	s.backlog, s.queued = nil, 0
	if s.q != nil {
		s.q.data = s.qData // a pipe with bytes left is closed, and counted dirty
		f.pump.putPipe(s.q)
		s.q, s.qData = nil, 0
	}
	for i, o := range f.sinks {
		if o == s {
			f.sinks = append(f.sinks[:i], f.sinks[i+1:]...)
			break
		}
	}
	s.ended = true
	err := s.err
	if err == io.EOF {
		err = nil
	}
	return err
}

// nudged reports whether err, from a write of s's writer, is the write
// deadline that Freeze sets rather than a failure: s has not ended. It
// clears the deadline, since the writer may go on (after a Thaw, or when
// Freeze's deadline came late). f.mu is held.
func (s *Sink) nudged(err error) bool {
	if s.err != nil || !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	s.nc.SetWriteDeadline(time.Time{})
	return true
}

// writeBytes writes b to the sink's conn, parking in the poller while it
// is not writable, and returns how many bytes it wrote.
func (s *Sink) writeBytes(b []byte) (int, error) {
	total := len(b)
	var werr error
	err := s.conn.Write(func(fd uintptr) bool {
		for len(b) > 0 {
			n, err := unix.Write(int(fd), b)
			switch err {
			case nil:
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				return false
			default:
				werr = err
				return true
			}
			if n <= 0 {
				werr = io.ErrNoProgress
				return true
			}
			b = b[n:]
			s.count.Copied.Add(int64(n))
			s.fo.pump.copied.Add(uint64(n))
		}
		return true
	})
	if err == nil {
		err = werr
	}
	return total - len(b), err
}

// spliceOut writes up to n bytes of q to the sink's conn, parking in the
// poller while it is not writable, and returns how many it wrote.
func (s *Sink) spliceOut(q *pipe, n int) (int, error) {
	wrote := 0
	var werr error
	err := s.conn.Write(func(fd uintptr) bool {
		for wrote < n {
			m, err := unix.Splice(q.r, nil, int(fd), nil, n-wrote, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			switch err {
			case nil:
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				return false
			default:
				werr = err
				return true
			}
			if m <= 0 {
				werr = io.ErrNoProgress
				return true
			}
			wrote += int(m)
			s.count.Spliced.Add(m)
			s.fo.pump.spliced.Add(uint64(m))
			s.fo.pump.trace(OpSpliceOut, q.r, int(fd), int(m))
		}
		return true
	})
	if err == nil {
		err = werr
	}
	return wrote, err
}
