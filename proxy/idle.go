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

// Idle parking. A BMP session is open for weeks and quiet most of the
// time, and its collector never speaks. A direction parked in the Go
// poller costs a goroutine (a 2 KiB stack and its g). So a sweeper looks
// at every connection once per IdleAfter. A direction that moved no byte
// during a whole interval is nudged: a read deadline in the past wakes its
// parked read with a timeout. The pump then hands the source socket to the
// splice.Watcher and its goroutine ends. When the socket becomes readable,
// the watcher starts the pump again on a fresh goroutine. A fully idle
// connection holds no goroutine at all.
//
// The nudge is the only read deadline ever set on a pumped socket, so a
// timeout from Copy always means "park". After a mass park the sweeper
// returns the freed stacks to the OS (debug.FreeOSMemory, rate limited).

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

// dir names a direction of a connection.
type dir int

const (
	up   dir = iota // client → target
	down            // target → client
)

// idleState is the sweeper's view of one direction, guarded by conn.mu.
type idleState struct {
	seen   int64  // bytes moved at the last sweep
	quiet  bool   // no byte moved since the sweep before that
	parked uint64 // watcher key while parked, 0 otherwise
	ended  bool   // the direction has ended and its goroutine is done with it
	held   bool   // held without a goroutine while frozen (handover.go)
}

// startParking starts the idle watcher and its sweeper, unless IdleAfter
// is negative. The returned function stops both; call it only once every
// connection has ended.
func (s *Server) startParking() (stop func(), err error) {
	if s.IdleAfter < 0 {
		return func() {}, nil
	}
	w, err := splice.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("idle watcher: %w", err)
	}
	s.watcher = w
	every := s.IdleAfter
	if every == 0 {
		every = DefaultIdleAfter
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.sweepIdle(ctx, every)
	}()
	return func() {
		cancel()
		wg.Wait()
		w.Close()
	}, nil
}

// ends returns direction d's source, destination and counter.
func (c *conn) ends(d dir) (src, dst stream, count *splice.Counter) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.endsLocked(d)
}

// endsLocked is ends with c.mu held.
func (c *conn) endsLocked(d dir) (src, dst stream, count *splice.Counter) {
	if d == up {
		return c.cc, c.tc, &c.up
	}
	return c.tc, c.cc, &c.down
}

func isNudge(err error) bool {
	var pe *splice.Error
	return errors.As(err, &pe) && pe.Op == "read" && errors.Is(err, os.ErrDeadlineExceeded)
}

// park hands direction d to the watcher. It reports false, and the caller
// keeps pumping, when there is no watcher or the connection is ending.
func (s *Server) park(c *conn, d dir) bool {
	if s.watcher == nil {
		return false
	}
	src, _, _ := c.ends(d)
	rc, err := src.SyscallConn()
	if err != nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.aborted || s.frozen.Load() {
		return false // the pump goes on, or holds (see pump)
	}
	key, err := s.watcher.Watch(rc, func() { go s.resume(c, d) })
	if err != nil {
		return false
	}
	c.idle[d].parked = key
	s.stats.parks.Add(1)
	return true
}

// resume continues a parked direction. It inherits the WaitGroup count
// the parked direction held.
func (s *Server) resume(c *conn, d dir) {
	c.mu.Lock()
	c.idle[d].parked = 0
	c.idle[d].quiet = false
	c.mu.Unlock()
	if d == up {
		s.pumpClientToTarget(c)
	} else {
		s.pumpTargetToClient(c)
	}
}

// unparkLocked returns functions that wake c's parked directions, to be
// called without c.mu held. c.mu is held.
func (c *conn) unparkLocked() []func() {
	var out []func()
	for d := range c.idle {
		if key := c.idle[d].parked; key != 0 && c.watcher != nil {
			w := c.watcher
			out = append(out, func() { w.Wake(key) })
		}
	}
	return out
}

// sweepIdle nudges the directions that have been quiet for a whole
// interval, until ctx is done.
func (s *Server) sweepIdle(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	lastParked, lastRelease := 0, time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		conns := s.tracked()
		for _, c := range conns {
			c.sweep()
		}
		// Parked goroutines leave their stacks in the runtime's free
		// lists, which the scavenger returns to the OS only slowly. After
		// a mass park (a reconnect storm settling), give them back now.
		n := s.watcher.Parked()
		if n >= lastParked+releaseAfterParking && time.Since(lastRelease) >= releaseEvery {
			debug.FreeOSMemory()
			lastParked, lastRelease = n, time.Now()
		} else if n < lastParked {
			lastParked = n
		}
	}
}

// sweep nudges c's directions that moved nothing since the last two
// sweeps.
func (c *conn) sweep() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.aborted || c.tc == nil || c.watcher == nil {
		return
	}
	if !c.keepAlive {
		// The target socket was dialed without keepalive; a connection
		// that outlives a sweep gets it now.
		c.keepAlive = true
		if ka := c.opts.KeepAlive; !ka.Disabled {
			if rc, err := c.tc.SyscallConn(); err == nil {
				rc.Control(func(fd uintptr) { socket.SetKeepAliveFD(int(fd), socket.KeepAlive(ka)) })
			}
		}
	}
	for d := range c.idle {
		st := &c.idle[d]
		if st.ended || st.parked != 0 {
			continue
		}
		src, _, count := c.endsLocked(dir(d))
		total := count.Total()
		if total != st.seen {
			st.seen, st.quiet = total, false
			continue
		}
		if st.quiet {
			src.SetReadDeadline(time.Unix(1, 0)) // in the past: wakes the read now
			continue
		}
		st.quiet = true
	}
}
