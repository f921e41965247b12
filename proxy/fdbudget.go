package proxy

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/bmpproxy/bmpproxy/fdbudget"
)

// File descriptor budget. The fds that connections and pipes hold are
// counted against a budget (package fdbudget), sized by New from
// RLIMIT_NOFILE, less the fds open then and a reserve for what the budget
// does not count:
//
//   - An accept loop takes acceptFDs before it calls Accept. While the
//     budget is spent it waits instead, and new connections queue in the
//     listen backlog rather than being accepted and then failing their
//     dial for want of an fd. A connection that was accepted always has
//     the fds for its dial: it keeps setupFDs of them.
//   - Once the target is connected, the connection gives back what only
//     its setup needed and keeps connFDs until it finishes, or until a
//     handover lets it go.
//   - A predecessor's connections are charged as they are adopted.
//   - A pipe takes its two fds when it is created, or is not created and
//     the direction copies (splice.Config.FDs). Pipes leave acceptFDs free,
//     so that they never make an accept loop wait, and before an accept
//     loop waits, the pump's idle pipes are closed.

const (
	// connFDs are a connected connection's: client and target sockets.
	connFDs = 2
	// acceptFDs are what an accept loop takes for its next connection:
	// the most a setup may need (setupFDs).
	acceptFDs = connFDs + 1
)

// setupFDs are the fds a connection of o's listener holds while it is set
// up: the client socket and the target's and, if the target is a name,
// one more: resolving it asks for A and AAAA at once, and a dial to a
// name with both races two sockets.
func setupFDs(o *listenerOpts) int {
	if _, err := netip.ParseAddr(o.Target.Host); err == nil {
		return connFDs
	}
	return connFDs + 1
}

// The reserve: fds kept out of the budget for what opens them without it.
const (
	// Go's netpoller and the idle watcher (an epoll and an eventfd each),
	// and a file the resolver reads.
	reserveRuntime = 5
	// A log destination reopened (a syslog reconnect) and a message to
	// the service manager.
	reserveLogs = 2
	// An upgrade, in the predecessor: the control socketpair, the exec's
	// error pipe and the successor's pidfd.
	reserveHandover = 5
	// With an admin listener: its socket and its HTTP connections
	// (scrapes, probes, POST /upgrade).
	reserveAdmin = 1 + 8
)

// fdReserve is the reserve for s.cfg: the constants above and one fd per
// listening address.
func (s *Server) fdReserve() int {
	n := reserveRuntime + reserveLogs + reserveHandover
	if s.cfg.Admin.IsValid() {
		n += reserveAdmin
	}
	for _, l := range s.cfg.Listeners {
		n += len(l.Listen)
	}
	return n
}

// openBudget makes the server's fd budget: of Options.FDBudget fds if
// set, or sized from RLIMIT_NOFILE. A predecessor's connections, whose
// fds are open already, are left out of the count: restoreConn charges
// them. It fails if the budget cannot cover one connection's setup.
func (s *Server) openBudget() error {
	size := s.opts.FDBudget
	if size <= 0 {
		exclude := 0
		if s.opts.Inherit != nil {
			exclude = connFDs * len(s.opts.Inherit.Conns)
		}
		sz, err := fdbudget.FromLimit(s.fdReserve(), exclude)
		if err != nil {
			return fmt.Errorf("fd budget: %w", err)
		}
		if sz.Size < acceptFDs {
			return fmt.Errorf("fd budget: RLIMIT_NOFILE %d leaves %d fds for connections, fewer than the %d one needs: %d are open and %d are kept for the runtime, listeners, logs, the admin listener and upgrades; raise the limit (ulimit -n, systemd's LimitNOFILE=)",
				sz.Limit, sz.Size, acceptFDs, sz.Open, sz.Reserve)
		}
		size = sz.Size
		s.opts.Logger.Info().Int("fd_budget", sz.Size).Int("fd_limit", sz.Limit).Int("fds_open", sz.Open).
			Int("fds_reserved", sz.Reserve).Msg("fd budget")
	} else if size < acceptFDs {
		return fmt.Errorf("fd budget: %d fds, fewer than the %d one connection needs", size, acceptFDs)
	}
	s.budget = fdbudget.New(fdbudget.Config{
		Size:  size,
		Spare: acceptFDs,
		Reached: func(st fdbudget.Stats) {
			s.opts.Logger.Warn().Int("fd_budget", st.Size).Int("fds_in_use", st.InUse).
				Msg("fd budget reached; accepting paused, new connections wait in the listen backlog")
		},
		Cleared: func(st fdbudget.Stats) {
			s.opts.Logger.Info().Int("fd_budget", st.Size).Int("fds_in_use", st.InUse).
				Msg("fd budget cleared; accepting again")
		},
		// New sets the pump before Run starts any accept loop.
		Reclaim: func() { s.opts.Pump.CloseIdle() },
	})
	return nil
}

// reserveAccept takes acceptFDs for the next connection before its accept
// loop accepts it. If they are not free, the pump's idle pipes give
// theirs back first (Reclaim); then it waits. It returns an error once
// ctx is done or stop is closed, having taken nothing.
func (s *Server) reserveAccept(ctx context.Context, stop <-chan struct{}) error {
	return s.budget.Acquire(ctx, stop, acceptFDs)
}

// accepted gives back what the accept loop took for c beyond its setup's
// fds.
func (s *Server) accepted(c *conn) {
	s.budget.Release(acceptFDs - c.fds)
}

// dialed gives back the fds c's setup needed beyond its two sockets, now
// that its target is connected. It runs on c's setup, before the pumps.
func (s *Server) dialed(c *conn) {
	s.budget.Release(c.fds - connFDs)
	c.fds = connFDs
}

// stopAccepting ends l's accept loop if it waits for fds; one in Accept
// is woken by the caller (a closed socket, a deadline). It runs on the
// Run goroutine, which owns l.stop.
func (l *listener) stopAccepting() {
	if l.stop != nil {
		close(l.stop)
		l.stop = nil
	}
}
