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

// A connection has directions: up (client → target) and down (target →
// client). Each is a small state machine, guarded by its connection's mu,
// and every change of state goes through move:
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
//     Every direction ended finishes the connection.
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

// dirKind is what a direction moves, and so which pump runs it.
type dirKind uint8

const (
	kindUp      dirKind = iota // client → target, the client's FIN passed on
	kindDown                   // target → client, the target's FIN passed on
	kindFanout                 // client → every leg (fanout.go)
	kindReply                  // the primary leg → client, no FIN passed on
	kindDiscard                // another leg's bytes, read and dropped
)

func (k dirKind) String() string {
	switch k {
	case kindUp:
		return "up"
	case kindDown:
		return "down"
	case kindFanout:
		return "up to every leg"
	case kindReply:
		return "down from the primary leg"
	case kindDiscard:
		return "down from a leg, dropped"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
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

// direction is one way bytes move on a connection. Its sockets are set
// before it starts; its state is guarded by c.mu, except n, which the pump
// adds to as it delivers.
type direction struct {
	c    *conn
	kind dirKind
	src  stream // read; the socket a park watches and a nudge wakes
	dst  stream // written; nil for kindFanout and kindDiscard
	leg  *leg   // the leg whose socket src is: kindReply and kindDiscard

	state dirState
	key   uint64 // the watcher's key while parked, 0 otherwise
	seen  int64  // bytes delivered at the last sweep
	quiet bool   // nothing delivered since the sweep before that
	n     splice.Counter
}

func (d *direction) String() string { return d.kind.String() }

// move changes d's state to to. A transition the machine does not have is
// a bug in this file, not a runtime condition: it panics rather than let
// a direction run twice or never end. c.mu is held.
func (d *direction) move(to dirState) {
	if !d.state.canMove(to) {
		panic(fmt.Sprintf("proxy: connection %d, direction %s: no transition %s → %s", d.c.id, d, d.state, to))
	}
	d.state = to
	if to != dirParked {
		d.key = 0
	}
}

// start moves every direction of c out of setup, once its sockets are
// connected and the first bytes written: to running, each on a fresh
// goroutine so that the stack grown by setup is not kept for the
// connection's life, or to held if the server is frozen.
func (s *Server) start(c *conn) {
	c.mu.Lock()
	to := dirRunning
	if s.frozen.Load() {
		to = dirHeld
	}
	dirs := c.dirs
	for _, d := range dirs {
		d.move(to)
	}
	s.live.Add(len(dirs))
	if to == dirHeld && c.fan != nil {
		c.fan.Freeze()
	}
	c.mu.Unlock()
	if to == dirHeld {
		s.noteSettled()
		return
	}
	for _, d := range dirs {
		s.resume(d)
	}
}

// resume runs d, which the caller moved to running, on a fresh goroutine
// named for what it moves.
func (s *Server) resume(d *direction) {
	switch d.kind {
	case kindUp:
		go s.pumpClientToTarget(d)
	case kindDown:
		go s.pumpTargetToClient(d)
	case kindFanout:
		go s.pumpClientToLegs(d)
	case kindReply:
		go s.pumpLegToClient(d)
	case kindDiscard:
		go s.discardFromLeg(d)
	}
}

// pumpClientToTarget runs an up direction: the client's bytes to the
// target, and the client's FIN as the target's.
func (s *Server) pumpClientToTarget(d *direction) { s.pump(d) }

// pumpTargetToClient runs a down direction: the target's bytes to the
// client, and the target's FIN as the client's.
func (s *Server) pumpTargetToClient(d *direction) { s.pump(d) }

// pumpClientToLegs runs a fan-out connection's up direction: the client's
// bytes to every leg.
func (s *Server) pumpClientToLegs(d *direction) { s.pump(d) }

// pumpLegToClient runs the primary leg's direction: its collector's bytes
// to the client.
func (s *Server) pumpLegToClient(d *direction) { s.pump(d) }

// discardFromLeg runs another leg's direction: its collector's bytes are
// read and dropped.
func (s *Server) discardFromLeg(d *direction) { s.pump(d) }

// pump runs d. On entry d is running and this goroutine owns it; pump
// returns once d has left running: parked, held or ended. At its start
// and after every nudge it first checks for a freeze, so a held direction
// never has a byte in a pipe: a copy returns a nudge only at a read,
// after its pipe drained.
func (s *Server) pump(d *direction) {
	for {
		if s.hold(d) {
			return
		}
		err := s.copy(d)
		if isNudge(err) {
			if s.park(d) {
				return
			}
			continue
		}
		s.end(d, err)
		return
	}
}

// copy moves d's bytes until its source ends, fails or is nudged.
func (s *Server) copy(d *direction) error {
	if d.kind == kindUp || d.kind == kindDown {
		return s.opts.Pump.Copy(d.dst, d.src, &d.n)
	}
	return s.copyFanout(d)
}

func isNudge(err error) bool {
	var pe *splice.Error
	return errors.As(err, &pe) && pe.Op == "read" && errors.Is(err, os.ErrDeadlineExceeded)
}

// nudge wakes d's read now, to park or hold it, and a fan-out's wait for
// a leg to make room. c.mu is held.
func (d *direction) nudge() {
	d.src.SetReadDeadline(time.Unix(1, 0))
	if d.kind == kindFanout {
		d.c.fan.Nudge()
	}
}

// hold moves running direction d to held if the server is frozen and its
// connection is not failing, and reports whether it did; the goroutine
// then ends, leaving its count in live. Otherwise it clears a nudge,
// under c.mu so that a freeze's nudge is never lost: a freeze sets frozen
// before it takes c.mu to nudge.
func (s *Server) hold(d *direction) bool {
	c := d.c
	c.mu.Lock()
	if s.frozen.Load() && !c.aborted {
		d.move(dirHeld)
		c.mu.Unlock()
		s.noteSettled()
		return true
	}
	d.src.SetReadDeadline(time.Time{})
	c.mu.Unlock()
	return false
}

// park moves running direction d to parked: the watcher takes its source
// socket and wakes it on a fresh goroutine. It reports false, and the
// caller keeps pumping (and so holds, if frozen), when there is no
// watcher, the connection is failing or the server is frozen.
func (s *Server) park(d *direction) bool {
	w := s.watcher.Load()
	if w == nil {
		return false
	}
	rc, err := d.src.SyscallConn()
	if err != nil {
		return false
	}
	c := d.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.aborted || s.frozen.Load() {
		return false
	}
	// c.mu is held across Watch, so a wake that fires at once waits for
	// the state to say parked.
	key, err := w.Watch(rc, func() { go s.wake(d) })
	if err != nil {
		return false
	}
	d.move(dirParked)
	d.key = key
	s.stats.parks.Add(1)
	return true
}

// wake moves parked direction d back to running, on the fresh goroutine
// the watcher started for it, and pumps. The watcher fires each watch
// exactly once, so d is parked on entry.
func (s *Server) wake(d *direction) {
	c := d.c
	c.mu.Lock()
	d.move(dirRunning)
	d.quiet = false
	c.mu.Unlock()
	s.pump(d)
}

// takeHeld moves c's held directions to running and returns them, for
// the caller to resume once c.mu is released. c.mu is held.
func (c *conn) takeHeld() []*direction {
	var held []*direction
	for _, d := range c.dirs {
		if d.state == dirHeld {
			d.move(dirRunning)
			held = append(held, d)
		}
	}
	return held
}

// releaseHeld moves c's held directions to ended without a goroutine,
// after a successor took them over, and returns how many there were:
// the caller owes live that many Done calls. c.mu is held.
func (c *conn) releaseHeld() int {
	n := 0
	for _, d := range c.dirs {
		if d.state == dirHeld {
			d.move(dirEnded)
			n++
		}
	}
	return n
}

// parkedKeys returns the watcher keys of c's parked directions, for the
// caller to Wake once c.mu is released. c.mu is held.
func (c *conn) parkedKeys() []uint64 {
	var keys []uint64
	for _, d := range c.dirs {
		if d.state == dirParked {
			keys = append(keys, d.key)
		}
	}
	return keys
}

// allEnded reports whether every direction of c has ended. c.mu is held.
func (c *conn) allEnded() bool {
	for _, d := range c.dirs {
		if d.state != dirEnded {
			return false
		}
	}
	return true
}

// end moves running direction d to ended. An error from either side
// fails the whole connection; a clean EOF leaves the other directions
// running. The direction that ends last finishes the connection: its
// closing line is written before live lets Run return.
func (s *Server) end(d *direction, err error) {
	c := d.c
	if c.fan != nil {
		s.endFanout(d, err)
		return
	}
	if err != nil {
		st := stageClient
		if d.kind == kindDown {
			st = stageTarget
		}
		var pe *splice.Error
		if errors.As(err, &pe) && pe.Op == "write" {
			st = st.other()
		}
		c.fail(st, err)
	}
	c.mu.Lock()
	d.move(dirEnded)
	last := c.allEnded()
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
	for _, d := range c.dirs {
		if d.state == dirRunning {
			d.nudge()
		}
	}
	if c.fan != nil {
		c.fan.Freeze() // its sinks' writers stop; see freezeFanout
	}
	keys := c.parkedKeys()
	c.mu.Unlock()
	for _, k := range keys {
		w.Wake(k)
	}
}

// settledState counts c for a freeze: in setup, or how many directions
// are neither held nor ended. A failing connection, and one whose
// directions have all ended, count as busy until they are untracked: a
// snapshot never holds a connection that is finishing. c.mu is held.
func (c *conn) settledState() (setup bool, busy int) {
	if c.aborted {
		return false, 1
	}
	if len(c.dirs) == 0 {
		return true, 0 // not dialed yet
	}
	if c.allEnded() {
		return false, 1
	}
	if c.fan != nil && !c.fanoutSettled() {
		busy++
	}
	for _, d := range c.dirs {
		switch d.state {
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
	if c.aborted || len(c.dirs) == 0 || c.dirs[0].state == dirSetup {
		return
	}
	if !c.keepAlive {
		c.keepAlive = true
		if ka := c.opts.KeepAlive; !ka.Disabled {
			socket.SetKeepAlive(c.tc, socket.KeepAlive(ka))
		}
	}
	for _, d := range c.dirs {
		if d.state != dirRunning {
			continue
		}
		total := d.n.Total()
		if total != d.seen {
			d.seen, d.quiet = total, false
			continue
		}
		if d.quiet {
			d.nudge()
			continue
		}
		d.quiet = true
	}
}
