package proxy

import (
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/bmpproxy/bmpproxy/conf"
)

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

func (in inheritedListeners) close() {
	for a, il := range in {
		il.ln.Close()
		delete(in, a)
	}
}

// adopt rebuilds the predecessor's listeners and connections from
// s.opts.Inherit. Connections are held until takeOver; listeners are returned
// for openListeners. On error everything adopted so far is released
// without shutdown(2): the predecessor still owns the sockets.
func (s *Server) adopt() (inheritedListeners, error) {
	snap := s.opts.Inherit
	lns := inheritedListeners{}
	fail := func(err error) (inheritedListeners, error) {
		lns.close()
		s.release()
		return nil, fmt.Errorf("take over: %w", err)
	}
	// Format 1 is format 2 without fan-out connections.
	if snap.Format != SnapshotFormat && snap.Format != 1 {
		return fail(fmt.Errorf("the predecessor's state is format %d; this binary reads formats 1 and %d", snap.Format, SnapshotFormat))
	}
	s.adoptDrains(snap.Drained)
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
	for i := range s.cfg.Listeners {
		c := &s.cfg.Listeners[i]
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
			l := conf.DefaultListener()
			l.Name, l.Log = sc.Listener, s.cfg.Log
			o = s.newOpts(&l)
			opts[sc.Listener] = o
		}
		var err error
		if sc.Fanout != nil {
			_, err = s.restoreFanout(snap, sc, o, streams[i][0])
		} else {
			_, err = s.restoreConn(sc, o, streams[i][0], streams[i][1])
		}
		if err != nil {
			// Not in a snapshot of a settled server: such a connection
			// has finished and is untracked.
			for _, st := range streams[i:] {
				for _, c := range st {
					if c != nil {
						c.Close()
					}
				}
			}
			return fail(err)
		}
		streams[i] = [2]stream{} // owned by c from here; release closes it
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
				if sc.Fanout != nil {
					out[i] = [2]stream{cc, nil} // its legs: restoreFanout
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
			for _, c := range st {
				if c != nil {
					c.Close()
				}
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
