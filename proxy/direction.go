package proxy

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"sync"
	"time"

	"github.com/bmpproxy/bmpproxy/internal/socket"
	"github.com/bmpproxy/bmpproxy/splice"
)

// A connection has two directions, up (client → target) and down
// (target → client). Each is a small state machine, guarded by its
// connection's mu, and every change of state goes through move:
//
//	          start              park                 wake
//	setup ───────────► running ───────► parked ─────────────► running
//	  │                │  ▲  │
//	  │ start (frozen) │  │  └──── end ────► ended
//	  ▼                │  │                    ▲
//	 held ◄──── hold ──┘  └── resume ── held ──┘ release
//
//   - setup: the connection is being set up; nothing pumps yet.
//   - running: one goroutine owns the direction and runs pump.
//   - parked: quiet for a whole sweep; no goroutine. The watcher owns the
//     source socket and starts a pump when it is readable or woken.
//   - held: the server is frozen for a handover; no goroutine, and no byte
//     in flight. A thaw or a failure resumes it; a successful handover
//     releases it.
//   - ended: its EOF was passed on as a FIN, or the connection failed.
//     Both directions ended finishes the connection.
//
// A direction also goes from setup straight to ended when a successor
// adopts a connection one of whose directions had ended in its
// predecessor.
//
// Invariants:
//   - A running direction has exactly one goroutine; parked, held and
//     ended ones have none. So a stack dump shows one pumpClientToTarget
//     or pumpTargetToClient per running direction and nothing else.
//   - Server.live counts the directions that have started and not ended,
//     in any state; a direction that parks or is held keeps its count.
//   - A direction holds a pipe only while it is running with bytes in
//     flight (package splice): parked and held directions hold none.
//   - The only read deadline ever set on a pumped socket is a nudge, a
//     deadline in the past set under mu by the idle sweep or a freeze. A
//     timeout from the pump therefore always means "park or hold now".

// dir names a direction of a connection.
type dir int

const (
	up   dir = iota // client → target
	down            // target → client
)

func (d dir) String() string {
	if d == up {
		return "up"
	}
	return "down"
}

// dirState is where a direction is; see the diagram above.
type dirState uint8

const (
	dirSetup dirState = iota
	dirRunning
	dirParked
	dirHeld
	dirEnded
)

func (s dirState) String() string {
	switch s {
	case dirSetup:
		return "setup"
	case dirRunning:
		return "running"
	case dirParked:
		return "parked"
	case dirHeld:
		return "held"
	case dirEnded:
		return "ended"
	}
	return fmt.Sprintf("dirState(%d)", uint8(s))
}

// canMove reports whether the machine has the transition s → to.
func (s dirState) canMove(to dirState) bool {
	switch s {
	case dirSetup:
		return to == dirRunning || to == dirHeld || to == dirEnded
	case dirRunning:
		return to == dirParked || to == dirHeld || to == dirEnded
	case dirParked:
		return to == dirRunning
	case dirHeld:
		return to == dirRunning || to == dirEnded
	}
	return false
}

// direction is one direction's state, guarded by its connection's mu,
// except n, which the pump adds to as it delivers.
type direction struct {
	state dirState
	key   uint64 // the watcher's key while parked, 0 otherwise
	seen  int64  // bytes delivered at the last sweep
	quiet bool   // nothing delivered since the sweep before that
	n     splice.Counter
}

// move changes direction d's state to to. A transition the machine does
// not have is a bug in this file, not a runtime condition: it panics
// rather than let a direction run twice or never end. c.mu is held.
func (c *conn) move(d dir, to dirState) {
	st := &c.dirs[d]
	if !st.state.canMove(to) {
		panic(fmt.Sprintf("proxy: connection %d, direction %s: no transition %s → %s", c.id, d, st.state, to))
	}
	st.state = to
	if to != dirParked {
		st.key = 0
	}
}

// ends returns direction d's source and destination sockets.
func (c *conn) ends(d dir) (src, dst stream) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.endsLocked(d)
}

// endsLocked is ends with c.mu held.
func (c *conn) endsLocked(d dir) (src, dst stream) {
	if d == up {
		return c.cc, c.tc
	}
	return c.tc, c.cc
}

// start moves both directions out of setup, once the target is connected
// and the first bytes are written: to running, each on a fresh goroutine
// so that the stack grown by setup is not kept for the connection's life,
// or to held if the server is frozen.
func (s *Server) start(c *conn) {
	c.mu.Lock()
	to := dirRunning
	if s.frozen.Load() {
		to = dirHeld
	}
	c.move(up, to)
	c.move(down, to)
	s.live.Add(2)
	c.mu.Unlock()
	if to == dirHeld {
		s.noteSettled()
		return
	}
	go s.pumpClientToTarget(c)
	go s.pumpTargetToClient(c)
}

// pumpClientToTarget runs the up direction: the client's bytes to the
// target, and the client's FIN as the target's.
func (s *Server) pumpClientToTarget(c *conn) { s.pump(c, up) }

// pumpTargetToClient runs the down direction: the target's bytes to the
// client, and the target's FIN as the client's.
func (s *Server) pumpTargetToClient(c *conn) { s.pump(c, down) }

// pump runs direction d. On entry d is running and this goroutine owns
// it; pump returns once d has left running: parked, held or ended. At its
// start and after every nudge it first checks for a freeze, so a held
// direction never has a byte in a pipe: Copy returns a nudge only at a
// read, after its pipe drained.
func (s *Server) pump(c *conn, d dir) {
	src, dst := c.ends(d)
	count := &c.dirs[d].n
	for {
		if s.hold(c, d) {
			return
		}
		err := s.opts.Pump.Copy(dst, src, count)
		if isNudge(err) {
			if s.park(c, d) {
				return
			}
			continue
		}
		s.end(c, d, err)
		return
	}
}

func isNudge(err error) bool {
	var pe *splice.Error
	return errors.As(err, &pe) && pe.Op == "read" && errors.Is(err, os.ErrDeadlineExceeded)
}

// hold moves running direction d to held if the server is frozen and c
// is not failing, and reports whether it did; the goroutine then ends,
// leaving its count in live. Otherwise it clears a nudge, under c.mu so
// that a freeze's nudge is never lost: a freeze sets frozen before it
// takes c.mu to nudge.
func (s *Server) hold(c *conn, d dir) bool {
	c.mu.Lock()
	if s.frozen.Load() && !c.aborted {
		c.move(d, dirHeld)
		c.mu.Unlock()
		s.noteSettled()
		return true
	}
	src, _ := c.endsLocked(d)
	src.SetReadDeadline(time.Time{})
	c.mu.Unlock()
	return false
}

// park moves running direction d to parked: the watcher takes its source
// socket and wakes it on a fresh goroutine. It reports false, and the
// caller keeps pumping (and so holds, if frozen), when there is no
// watcher, c is failing or the server is frozen.
func (s *Server) park(c *conn, d dir) bool {
	w := s.watcher.Load()
	if w == nil {
		return false
	}
	src, _ := c.ends(d)
	rc, err := src.SyscallConn()
	if err != nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.aborted || s.frozen.Load() {
		return false
	}
	// c.mu is held across Watch, so a wake that fires at once waits for
	// the state to say parked.
	key, err := w.Watch(rc, func() { go s.wake(c, d) })
	if err != nil {
		return false
	}
	c.move(d, dirParked)
	c.dirs[d].key = key
	s.stats.parks.Add(1)
	return true
}

// wake moves parked direction d back to running, on the fresh goroutine
// the watcher started for it, and pumps. The watcher fires each watch
// exactly once, so d is parked on entry.
func (s *Server) wake(c *conn, d dir) {
	c.mu.Lock()
	c.move(d, dirRunning)
	c.dirs[d].quiet = false
	c.mu.Unlock()
	s.pump(c, d)
}

// resume moves held direction d back to running on a fresh goroutine.
// The caller took it out of held under c.mu (takeHeld).
func (s *Server) resume(c *conn, d dir) {
	if d == up {
		go s.pumpClientToTarget(c)
	} else {
		go s.pumpTargetToClient(c)
	}
}

// takeHeld moves c's held directions to running and returns them, for
// the caller to resume once c.mu is released. c.mu is held.
func (c *conn) takeHeld() []dir {
	var held []dir
	for d := range c.dirs {
		if c.dirs[d].state == dirHeld {
			c.move(dir(d), dirRunning)
			held = append(held, dir(d))
		}
	}
	return held
}

// releaseHeld moves c's held directions to ended without a goroutine,
// after a successor took them over, and returns how many there were:
// the caller owes live that many Done calls. c.mu is held.
func (c *conn) releaseHeld() int {
	n := 0
	for d := range c.dirs {
		if c.dirs[d].state == dirHeld {
			c.move(dir(d), dirEnded)
			n++
		}
	}
	return n
}

// parkedKeys returns the watcher keys of c's parked directions, for the
// caller to Wake once c.mu is released. c.mu is held.
func (c *conn) parkedKeys() []uint64 {
	var keys []uint64
	for d := range c.dirs {
		if c.dirs[d].state == dirParked {
			keys = append(keys, c.dirs[d].key)
		}
	}
	return keys
}

// end moves running direction d to ended. An error from either side
// fails the whole connection; a clean EOF leaves the other direction
// running. The direction that ends last finishes the connection: its
// closing line is written before live lets Run return.
func (s *Server) end(c *conn, d dir, err error) {
	if err != nil {
		st := stageClient
		if d == down {
			st = stageTarget
		}
		var pe *splice.Error
		if errors.As(err, &pe) && pe.Op == "write" {
			st = st.other()
		}
		c.fail(st, err)
	}
	c.mu.Lock()
	c.move(d, dirEnded)
	last := c.dirs[up].state == dirEnded && c.dirs[down].state == dirEnded
	c.mu.Unlock()
	if last {
		c.fail(stageNone, nil) // close both sockets
		s.finish(c)
	}
	s.noteSettled()
	s.live.Done()
}

// freeze holds c's directions for a handover: running ones at their next
// read, through a nudge; parked ones are woken, and hold as they start.
// Directions still in setup are held by start.
func (c *conn) freeze(w *splice.Watcher) {
	c.mu.Lock()
	if c.aborted {
		c.mu.Unlock()
		return // failing: it ends, and freeze waits for that
	}
	for d := range c.dirs {
		if c.dirs[d].state == dirRunning {
			src, _ := c.endsLocked(dir(d))
			src.SetReadDeadline(time.Unix(1, 0))
		}
	}
	keys := c.parkedKeys()
	c.mu.Unlock()
	for _, k := range keys {
		w.Wake(k)
	}
}

// settledState counts c for a freeze: in setup, or how many directions
// are neither held nor ended. A failing connection, and one whose
// directions have both ended, count as busy until they are untracked:
// a snapshot never holds a connection that is finishing. c.mu is held.
func (c *conn) settledState() (setup bool, busy int) {
	if c.aborted || c.dirs[up].state == dirEnded && c.dirs[down].state == dirEnded {
		return false, 1
	}
	for d := range c.dirs {
		switch c.dirs[d].state {
		case dirSetup:
			return true, 0
		case dirRunning, dirParked:
			busy++
		}
	}
	return false, busy
}

// Idle parking. A BMP session is open for weeks and quiet most of the
// time, and its collector never speaks; a direction blocked in the Go
// poller costs a goroutine and its stack. So a sweeper looks at every
// connection once per IdleAfter. A running direction that delivered no
// byte during a whole interval is nudged; its pump parks it. After a
// mass park the sweeper returns the freed stacks to the OS
// (debug.FreeOSMemory, rate limited).

// DefaultIdleAfter is how long a direction must be quiet, at the least,
// before it is parked.
const DefaultIdleAfter = time.Second

// Memory release after parking: at least releaseAfterParking more
// directions parked since the last release, and at most one release per
// releaseEvery.
const (
	releaseAfterParking = 1000
	releaseEvery        = 10 * time.Second
)

// startParking starts the idle watcher and its sweeper, unless IdleAfter
// is negative. The returned function stops both; call it only once every
// direction has ended or been released.
func (s *Server) startParking() (stop func(), err error) {
	if s.opts.IdleAfter < 0 {
		return func() {}, nil
	}
	w, err := splice.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("idle watcher: %w", err)
	}
	s.watcher.Store(w)
	every := s.opts.IdleAfter
	if every == 0 {
		every = DefaultIdleAfter
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.sweepIdle(ctx, w, every)
	}()
	return func() {
		cancel()
		wg.Wait()
		w.Close()
	}, nil
}

// sweepIdle sweeps every connection once per interval until ctx is done.
func (s *Server) sweepIdle(ctx context.Context, w *splice.Watcher, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	lastParked, lastRelease := 0, time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, c := range s.tracked() {
			c.sweep()
		}
		// Parked goroutines leave their stacks in the runtime's free
		// lists, which the scavenger returns to the OS only slowly. After
		// a mass park (a reconnect storm settling), give them back now.
		n := w.Parked()
		if n >= lastParked+releaseAfterParking && time.Since(lastRelease) >= releaseEvery {
			debug.FreeOSMemory()
			lastParked, lastRelease = n, time.Now()
		} else if n < lastParked {
			lastParked = n
		}
	}
}

// sweep nudges c's running directions that delivered nothing since the
// last two sweeps. A connection that lives through its first sweep also
// gets keepalive on its target socket, dialed without it so that short
// connections skip the calls.
func (c *conn) sweep() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.aborted || c.dirs[up].state == dirSetup {
		return
	}
	if !c.keepAlive {
		c.keepAlive = true
		if ka := c.opts.KeepAlive; !ka.Disabled {
			socket.SetKeepAlive(c.tc, socket.KeepAlive(ka))
		}
	}
	for d := range c.dirs {
		st := &c.dirs[d]
		if st.state != dirRunning {
			continue
		}
		total := st.n.Total()
		if total != st.seen {
			st.seen, st.quiet = total, false
			continue
		}
		if st.quiet {
			src, _ := c.endsLocked(dir(d))
			src.SetReadDeadline(time.Unix(1, 0)) // in the past: wakes the read now
			continue
		}
		st.quiet = true
	}
}
