package proxy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/bmpproxy/bmpproxy/conf"
)

// Handover: an upgrade moves every listening socket and every connection
// to a successor process without closing any of them (see docs/upgrade.md
// and package handoff for the process side).
//
// The server is first frozen:
//   - Accept loops stop; the listening sockets stay open and the kernel
//     queues new connections on them.
//   - Every direction is held. A running direction is woken by a read
//     deadline in the past, as for idle parking; it sees the deadline only
//     at its next read, after its pipe has drained, so a held direction
//     has no byte in flight. A parked direction is woken and held at once.
//   - A connection still in setup is waited for; it is held when its
//     pumps would start.
//
// A held direction has no goroutine; it keeps its WaitGroup count. The
// snapshot then names each socket's descriptor, and the successor rebuilds
// the connections from them. If the successor takes over, every held
// direction and listener is released without shutdown(2) and Run returns
// ErrHandedOver. Otherwise the server thaws: held directions resume and
// the accept loops start again. Until then nothing has read or written a
// byte, so either way nothing is lost.

// ErrHandedOver is returned by Run after a successor took over.
var ErrHandedOver = errors.New("proxy: handed over to a successor")

// DefaultFreezeTimeout bounds how long Upgrade waits for the server to
// freeze: for pipes to drain and connections in setup to finish.
const DefaultFreezeTimeout = 10 * time.Second

// SnapshotFormat is the version of Snapshot this binary writes and reads.
// A change that an older binary would misread must increase it.
const SnapshotFormat = 1

// Snapshot describes a frozen server for its successor. Descriptors are
// indexes into FDs. It is plain data, encoded as JSON between processes.
type Snapshot struct {
	Format    int                       `json:"format"` // SnapshotFormat
	Listeners []SnapshotListener        `json:"listeners"`
	Conns     []SnapshotConn            `json:"conns"`
	States    map[string]SnapshotCounts `json:"listener_counters"`
	Server    Counters                  `json:"server_counters"`
	// Closed are the recently closed BMP sessions, oldest first.
	Closed []RouterStatus `json:"closed_routers"`
	// LastEnd is when each router's last session ended.
	LastEnd map[netip.Addr]time.Time `json:"last_session_end"`
	NextID  uint64                   `json:"next_conn_id"`
	// Extra are listening sockets the caller adds, such as the admin
	// listener; Run neither makes nor reads them.
	Extra []SnapshotListener `json:"extra_listeners,omitempty"`
	// FDs are the descriptors: the live ones of the frozen server in the
	// predecessor, the inherited ones in the successor.
	FDs []int `json:"-"`
}

// SnapshotListener is one listening socket.
type SnapshotListener struct {
	Name string         `json:"name"`
	Addr netip.AddrPort `json:"addr"`
	FD   int            `json:"fd"`
}

// SnapshotConn is one connection pair and its state.
type SnapshotConn struct {
	ID       uint64         `json:"id"`
	Listener string         `json:"listener"`
	Via      netip.AddrPort `json:"via"`
	Client   netip.AddrPort `json:"client"`
	Local    netip.AddrPort `json:"local"`
	Target   string         `json:"target"`
	Upstream string         `json:"upstream"`
	Start    time.Time      `json:"start"`
	BMP      bool           `json:"bmp"`
	Session  bool           `json:"session"`
	SysName  string         `json:"sys_name,omitempty"`
	SysDescr string         `json:"sys_descr,omitempty"`
	Term     string         `json:"termination_reason,omitempty"`
	// Up and Down are the bytes delivered each way: spliced, copied.
	Up   [2]int64 `json:"up"`
	Down [2]int64 `json:"down"`
	// Ended says which directions have ended (up, down): their FIN was
	// already passed on.
	Ended    [2]bool `json:"ended"`
	ClientFD int     `json:"client_fd"`
	TargetFD int     `json:"target_fd"`
}

// SnapshotCounts are one listener name's counters of ended connections.
type SnapshotCounts struct {
	Accepted        uint64            `json:"accepted"`
	ConnectFailures uint64            `json:"connect_failures"`
	Refused         map[string]uint64 `json:"refused"`
	FromClient      int64             `json:"bytes_from_client"`
	ToClient        int64             `json:"bytes_to_client"`
	Spliced         int64             `json:"bytes_spliced"`
	Copied          int64             `json:"bytes_copied"`
}

// Handoff gives a frozen server's snapshot to a successor. It returns nil
// only once the successor runs and owns the sockets; then the server lets
// go of them. On error the successor must be gone or never have touched
// the sockets: the server resumes.
type Handoff func(ctx context.Context, snap *Snapshot) error

type upgradeReq struct {
	ctx  context.Context
	h    Handoff
	done chan error
}

// Upgrade freezes the server, hands it to a successor through h and
// returns nil once the successor took over; Run then returns
// ErrHandedOver. On failure the server resumes, the failure is counted
// and logged, and the error is returned.
func (s *Server) Upgrade(ctx context.Context, h Handoff) error {
	s.init()
	req := upgradeReq{ctx: ctx, h: h, done: make(chan error, 1)}
	return submit(ctx, s, s.upgrades, req, req.done)
}

// upgrade runs on the Run goroutine.
func (s *Server) upgrade(ctx, connCtx context.Context, req upgradeReq) error {
	start := time.Now()
	s.Logger.Info().Int64("connections", s.stats.active.Load()).Msg("upgrade: freezing")
	snap, err := s.freeze(req.ctx)
	if err == nil {
		frozen := time.Since(start)
		s.Logger.Info().Int("connections", len(snap.Conns)).Int("listeners", len(snap.Listeners)).
			Stringer("freeze", frozen.Round(time.Microsecond)).Msg("upgrade: frozen; starting the successor")
		if err = req.h(req.ctx, snap); err == nil {
			s.Logger.Info().Int("connections", len(snap.Conns)).
				Stringer("pause", time.Since(start).Round(time.Microsecond)).
				Msg("upgrade: the successor took over; letting go")
			return nil
		}
	}
	s.thaw(ctx, connCtx)
	s.stats.upgradeFailures.Add(1)
	s.Logger.Error().Err(err).Stringer("pause", time.Since(start).Round(time.Microsecond)).
		Msg("upgrade failed; this process keeps serving")
	return err
}

// freeze stops accepting, holds every direction and returns the snapshot,
// or returns an error if the server does not settle within the freeze
// timeout (the caller thaws).
func (s *Server) freeze(ctx context.Context) (*Snapshot, error) {
	s.frozen.Store(true)
	for _, l := range s.listeners {
		l.setDeadline(time.Unix(1, 0)) // wakes Accept now; see acceptLoop
	}
	s.accepting.Wait()

	conns := s.tracked()
	for _, c := range conns {
		c.freeze()
	}

	timeout := s.FreezeTimeout
	if timeout <= 0 {
		timeout = DefaultFreezeTimeout
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		setup, busy := s.unsettled()
		if setup+busy == 0 {
			break
		}
		select {
		case <-s.settled:
		case <-tick.C:
		case <-ctx.Done():
			return nil, fmt.Errorf("freeze: %w", ctx.Err())
		case <-timer.C:
			return nil, fmt.Errorf("freeze: not settled after %s: %d connections still in setup, %d directions still delivering bytes in flight",
				timeout, setup, busy)
		}
	}
	return s.snapshot(), nil
}

// freeze holds c's directions: running ones at their next read, parked
// ones at once.
func (c *conn) freeze() {
	c.mu.Lock()
	if c.aborted || !c.started {
		c.mu.Unlock()
		return // ending, or held when setup starts its pumps
	}
	for d := range c.idle {
		st := &c.idle[d]
		if st.ended || st.held || st.parked != 0 {
			continue
		}
		src, _, _ := c.endsLocked(dir(d))
		src.SetReadDeadline(time.Unix(1, 0))
	}
	wake := c.unparkLocked() // they resume, see the freeze and hold
	c.mu.Unlock()
	for _, w := range wake {
		w()
	}
}

// unsettled counts connections still in setup and directions neither held
// nor ended. A failing connection counts until it is untracked. Once both
// counts are zero, no goroutine touches a tracked connection: each
// direction is held, or ended cleanly with its FIN passed on.
func (s *Server) unsettled() (setup, busy int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.mu.Lock()
		switch {
		case c.aborted:
			busy++
		case !c.started:
			setup++
		default:
			for d := range c.idle {
				if !c.idle[d].ended && !c.idle[d].held {
					busy++
				}
			}
		}
		c.mu.Unlock()
	}
	return setup, busy
}

// noteSettled wakes freeze to look again.
func (s *Server) noteSettled() {
	if s.frozen.Load() {
		select {
		case s.settled <- struct{}{}:
		default:
		}
	}
}

// takeHeldLocked clears c's held directions and returns them: the caller
// owns their WaitGroup counts. c.mu is held.
func (c *conn) takeHeldLocked() []dir {
	var held []dir
	for d := range c.idle {
		if c.idle[d].held {
			c.idle[d].held = false
			held = append(held, dir(d))
		}
	}
	return held
}

// hold keeps direction d of c without a goroutine while the server is
// frozen. It reports false, and the caller goes on, if the server is not
// frozen or c is ending. With clear, it also clears a past nudge when it
// does not hold, atomically with the check.
func (s *Server) hold(c *conn, d dir, clear bool) bool {
	c.mu.Lock()
	if s.frozen.Load() && !c.aborted {
		c.idle[d].held = true
		c.mu.Unlock()
		s.noteSettled()
		return true
	}
	if clear {
		src, _, _ := c.endsLocked(d)
		src.SetReadDeadline(time.Time{}) // clear a nudge from the sweeper
	}
	c.mu.Unlock()
	return false
}

// snapshot describes the frozen server. The descriptors are the live
// sockets' own; they stay valid because nothing runs until thaw or
// release.
func (s *Server) snapshot() *Snapshot {
	snap := &Snapshot{
		Format: SnapshotFormat,
		States: map[string]SnapshotCounts{},
		NextID: s.nextID.Load(),
		Server: s.stats.saved(),
	}
	addrs := make([]netip.AddrPort, 0, len(s.listeners))
	for a := range s.listeners {
		addrs = append(addrs, a)
	}
	sort.Slice(addrs, func(i, j int) bool { return addrs[i].String() < addrs[j].String() })
	for _, a := range addrs {
		l := s.listeners[a]
		sc, ok := l.ln.(syscall.Conn)
		if !ok {
			continue // not a socket of ours; the successor opens its own
		}
		snap.Listeners = append(snap.Listeners, SnapshotListener{Name: l.opts.Load().Name, Addr: a, FD: snap.addFD(sc)})
	}

	s.mu.Lock()
	for name, st := range s.states {
		snap.States[name] = st.saved()
	}
	s.mu.Unlock()
	conns := s.tracked()
	sort.Slice(conns, func(i, j int) bool { return conns[i].id < conns[j].id })
	for _, c := range conns {
		c.mu.Lock()
		sc := SnapshotConn{
			ID: c.id, Listener: c.listener, Via: c.via, Client: c.client, Local: c.local,
			Target: c.target, Upstream: c.upstream, Start: c.start,
			BMP: c.bmp, Session: c.session.Load(),
			SysName: c.router.SysName, SysDescr: c.router.SysDescr, Term: c.router.TermReason,
			Up:    [2]int64{c.up.Spliced.Load(), c.up.Copied.Load()},
			Down:  [2]int64{c.down.Spliced.Load(), c.down.Copied.Load()},
			Ended: [2]bool{c.idle[up].ended, c.idle[down].ended},
		}
		cc, tc := c.cc, c.tc
		c.mu.Unlock()
		sc.ClientFD, sc.TargetFD = snap.addFD(cc), snap.addFD(tc)
		snap.Conns = append(snap.Conns, sc)
	}

	snap.Closed, snap.LastEnd = s.routers.saved()
	return snap
}

// thaw undoes freeze: held directions resume and accept loops start
// again.
func (s *Server) thaw(ctx, connCtx context.Context) {
	s.frozen.Store(false)
	s.resumeHeld()
	for _, l := range s.listeners {
		l.setDeadline(time.Time{})
		s.startAccepting(ctx, connCtx, l)
	}
}

// resumeHeld starts every held direction on a fresh goroutine, which
// inherits the held WaitGroup count.
func (s *Server) resumeHeld() {
	conns := s.tracked()
	for _, c := range conns {
		c.mu.Lock()
		held := c.takeHeldLocked()
		c.mu.Unlock()
		for _, d := range held {
			go s.resume(c, d)
		}
	}
}

// release lets go of everything after a successor took over: listeners
// and connections are closed without shutdown(2), so their peers see
// nothing, and no closing line is written: the successor writes it.
func (s *Server) release() {
	for a, l := range s.listeners {
		l.ln.Close()
		delete(s.listeners, a)
	}
	conns := s.tracked()
	for _, c := range conns {
		c.mu.Lock()
		c.aborted = true
		held := c.takeHeldLocked()
		c.mu.Unlock()
		c.cc.Close()
		if c.tc != nil {
			c.tc.Close()
		}
		s.untrack(c)
		c.opts.state.active.Add(-1)
		for range held { // their WaitGroup counts
			s.wg.Done()
		}
	}
}

// setDeadline sets the deadline of l's Accept, if l's socket has one.
func (l *listener) setDeadline(t time.Time) {
	if dl, ok := l.ln.(interface{ SetDeadline(time.Time) error }); ok {
		dl.SetDeadline(t)
	}
}

// inheritedListeners are a predecessor's listening sockets, by bound
// address, not yet taken by a configured listener.
type inheritedListeners map[netip.AddrPort]inheritedListener

type inheritedListener struct {
	name string
	ln   net.Listener
}

// take returns the inherited socket for listener name's configured
// address a, and removes it. For a port-0 address, the socket of the same
// listener name on the same IP address is taken: the port the
// predecessor was given.
func (in inheritedListeners) take(name string, a netip.AddrPort) (net.Listener, netip.AddrPort, bool) {
	if il, ok := in[a]; ok {
		delete(in, a)
		return il.ln, a, true
	}
	for b, il := range in {
		if il.name == name && serves(a, b) {
			delete(in, b)
			return il.ln, b, true
		}
	}
	return nil, a, false
}

// serves reports whether a socket bound to b serves the configured
// address a: a itself, or for a port-0 address the same IP, with the port
// the predecessor was given.
func serves(a, b netip.AddrPort) bool {
	return a == b || a.Port() == 0 && a.Addr() == b.Addr()
}

// addFD adds sc's descriptor to FDs and returns its index; -1 is added if
// sc has none, and the successor then reports it.
func (snap *Snapshot) addFD(sc syscall.Conn) int {
	fd := -1
	if rc, err := sc.SyscallConn(); err == nil {
		rc.Control(func(f uintptr) { fd = int(f) })
	}
	snap.FDs = append(snap.FDs, fd)
	return len(snap.FDs) - 1
}

// file returns descriptor i of FDs as a file, named for errors.
func (snap *Snapshot) file(i int, name string) (*os.File, error) {
	if i < 0 || i >= len(snap.FDs) || snap.FDs[i] < 0 {
		return nil, fmt.Errorf("%s: no descriptor %d", name, i)
	}
	return os.NewFile(uintptr(snap.FDs[i]), name), nil
}

// listener makes a listener of an inherited listening socket.
func (snap *Snapshot) listener(sl SnapshotListener) (net.Listener, error) {
	f, err := snap.file(sl.FD, "listener "+sl.Addr.String())
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ln, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("listener %s: %w", sl.Addr, err)
	}
	return ln, nil
}

// AddExtra adds ln, a listening socket of the caller's such as the admin
// listener, under name. It reports false, and adds nothing, if ln is not
// a socket.
func (snap *Snapshot) AddExtra(name string, ln net.Listener) bool {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return false
	}
	sl := SnapshotListener{Name: name, Addr: addrPort(ln.Addr()), FD: snap.addFD(sc)}
	if snap.FDs[sl.FD] < 0 {
		snap.FDs = snap.FDs[:sl.FD]
		return false
	}
	snap.Extra = append(snap.Extra, sl)
	return true
}

// TakeExtra returns the extra listening socket added under name that
// serves addr (the same address, or the same IP for port 0), and removes
// it from the snapshot. It returns nil and no error if there is none.
func (snap *Snapshot) TakeExtra(name string, addr netip.AddrPort) (net.Listener, error) {
	for i, sl := range snap.Extra {
		if sl.Name == name && serves(addr, sl.Addr) {
			snap.Extra = append(snap.Extra[:i], snap.Extra[i+1:]...)
			return snap.listener(sl)
		}
	}
	return nil, nil
}

// CloseExtra closes the extra sockets nothing took.
func (snap *Snapshot) CloseExtra() {
	for _, sl := range snap.Extra {
		if f, err := snap.file(sl.FD, sl.Name); err == nil {
			f.Close()
		}
	}
	snap.Extra = nil
}

func (in inheritedListeners) close() {
	for a, il := range in {
		il.ln.Close()
		delete(in, a)
	}
}

// adopt rebuilds the predecessor's listeners and connections from
// s.Inherit. Connections are held until takeOver; listeners are returned
// for openListeners. On error everything adopted so far is released
// without shutdown(2): the predecessor still owns the sockets.
func (s *Server) adopt() (inheritedListeners, error) {
	snap := s.Inherit
	lns := inheritedListeners{}
	fail := func(err error) (inheritedListeners, error) {
		lns.close()
		s.release()
		return nil, fmt.Errorf("take over: %w", err)
	}
	if snap.Format != SnapshotFormat {
		return fail(fmt.Errorf("the predecessor's state is format %d; this binary reads format %d", snap.Format, SnapshotFormat))
	}
	for _, sl := range snap.Listeners {
		ln, err := snap.listener(sl)
		if err != nil {
			return fail(err)
		}
		lns[sl.Addr] = inheritedListener{name: sl.Name, ln: ln}
	}

	s.nextID.Store(snap.NextID)
	s.stats.restore(snap.Server)
	s.mu.Lock()
	for name, sc := range snap.States {
		ls := new(listenerState)
		ls.restore(sc)
		s.states[name] = ls
	}
	s.mu.Unlock()
	s.routers.restore(snap.Closed, snap.LastEnd)

	opts := map[string]*listenerOpts{}
	for i := range s.Config.Listeners {
		c := &s.Config.Listeners[i]
		opts[c.Name] = s.newOpts(c)
	}
	// Making connections of the descriptors is most of a takeover's time
	// (a handful of system calls each); it runs on every CPU.
	streams, err := adoptStreams(snap)
	if err != nil {
		return fail(err)
	}
	for i, sc := range snap.Conns {
		o := opts[sc.Listener]
		if o == nil {
			// The listener is gone from the configuration; its
			// connections run on with the defaults, as after a reload.
			cfg := conf.Config{Listeners: []conf.Listener{{Name: sc.Listener}}, Log: s.Config.Log}
			cfg.ApplyDefaults()
			o = s.newOpts(&cfg.Listeners[0])
			opts[sc.Listener] = o
		}
		c := &conn{
			id: sc.ID, opts: o, listener: sc.Listener, via: sc.Via, client: sc.Client, local: sc.Local,
			target: sc.Target, upstream: sc.Upstream, start: sc.Start, bmp: sc.BMP,
			router: routerInfo{SysName: sc.SysName, SysDescr: sc.SysDescr, TermReason: sc.Term},
			srv:    s, started: true, watcher: s.watcher,
		}
		c.up.Spliced.Store(sc.Up[0])
		c.up.Copied.Store(sc.Up[1])
		c.down.Spliced.Store(sc.Down[0])
		c.down.Copied.Store(sc.Down[1])
		c.cc, c.tc = streams[i][0], streams[i][1]
		streams[i] = [2]stream{} // owned by c from here; release closes it
		o.state.active.Add(1)
		s.track(c)
		if sc.Session {
			c.session.Store(true)
		}
		var pending int32
		for d := range c.idle {
			c.idle[d].ended = sc.Ended[d]
			if !sc.Ended[d] {
				c.idle[d].held = true
				pending++
			}
		}
		if pending == 0 {
			// Not in a snapshot of a settled server: such a connection
			// has finished and is untracked.
			return fail(fmt.Errorf("connection %d from %s: both directions ended", sc.ID, sc.Client))
		}
		c.pending.Store(pending)
		s.wg.Add(int(pending))
	}
	return lns, nil
}

// adoptStreams makes the client and target connections of every
// connection in snap, on GOMAXPROCS workers. On error every connection
// made is closed, without shutdown(2).
func adoptStreams(snap *Snapshot) ([][2]stream, error) {
	out := make([][2]stream, len(snap.Conns))
	errs := make([]error, len(snap.Conns))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(snap.Conns)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(snap.Conns) {
					return
				}
				sc := &snap.Conns[i]
				cc, err := adoptStream(snap.file(sc.ClientFD, "client "+sc.Client.String()))
				if err != nil {
					errs[i] = fmt.Errorf("connection %d from %s: client socket: %w", sc.ID, sc.Client, err)
					continue
				}
				tc, err := adoptStream(snap.file(sc.TargetFD, "target "+sc.Upstream))
				if err != nil {
					cc.Close()
					errs[i] = fmt.Errorf("connection %d from %s: target socket: %w", sc.ID, sc.Client, err)
					continue
				}
				out[i] = [2]stream{cc, tc}
			}
		}()
	}
	wg.Wait()
	var first error
	failed := 0
	for _, err := range errs {
		if err != nil {
			first = cmp.Or(first, err)
			failed++
		}
	}
	if first != nil {
		if failed > 1 {
			first = fmt.Errorf("%w (and %d more connections)", first, failed-1)
		}
		for _, st := range out {
			if st[0] != nil {
				st[0].Close()
				st[1].Close()
			}
		}
		return nil, first
	}
	return out, nil
}

// adoptStream makes a connection of an inherited descriptor; the file is
// closed, the connection holds a duplicate.
func adoptStream(f *os.File, err error) (stream, error) {
	if err != nil {
		return nil, err
	}
	defer f.Close()
	nc, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	st, ok := nc.(stream)
	if !ok {
		nc.Close()
		return nil, errNotStream
	}
	return st, nil
}

// takeOver runs in the successor's Run once everything is adopted and
// lns are open: it asks s.Takeover for the go-ahead, then counts the
// upgrade. On error the adopted sockets are released and the predecessor
// keeps serving.
func (s *Server) takeOver(lns []*listener) error {
	if s.Takeover != nil {
		if err := s.Takeover(); err != nil {
			for _, l := range lns {
				l.ln.Close()
			}
			s.release()
			return fmt.Errorf("take over: %w", err)
		}
	}
	s.stats.upgrades.Add(1)
	s.stats.carried.Add(uint64(len(s.Inherit.Conns)))
	names := make([]string, len(lns))
	for i, l := range lns {
		names[i] = l.addr.String()
	}
	s.Logger.Info().Int("connections", len(s.Inherit.Conns)).Str("listeners", strings.Join(names, " ")).
		Uint64("upgrades", s.stats.upgrades.Load()).Msg("upgrade: took over from the predecessor")
	return nil
}
