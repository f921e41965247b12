package proxy

import (
	"bufio"
	"context"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/bmpproxy/bmpproxy/internal/bmpcheck"
	"github.com/bmpproxy/bmpproxy/internal/testtarget"
	"github.com/bmpproxy/bmpproxy/internal/waitfor"
	"golang.org/x/sys/unix"
)

// recorder is a collector that keeps what each of its sessions carried
// after the PROXY header; a session it is told to stall reads nothing
// until released.
type recorder struct {
	tg *testtarget.Target
	mu sync.Mutex
	// sessions are the bytes of each accepted connection, in order.
	sessions [][]byte
	stall    chan struct{} // while open (not nil), a new session reads nothing
	// What holds saw last: the latest session's length, and how many
	// sessions there were.
	seen, seenSessions int
}

func newRecorder(t *testing.T) *recorder {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return newRecorderOn(t, ln)
}

// newRecorderOn is a recorder on ln.
func newRecorderOn(t *testing.T, ln net.Listener) *recorder {
	r := &recorder{}
	done := make(chan struct{})
	r.tg = testtarget.NewOn(t, ln, testtarget.V2, func(c *net.TCPConn, br *bufio.Reader) {
		r.mu.Lock()
		i := len(r.sessions)
		r.sessions = append(r.sessions, nil)
		stall := r.stall
		r.mu.Unlock()
		if stall != nil {
			c.SetReadBuffer(32 << 10)
			select {
			case <-stall:
			case <-done:
				return
			}
		}
		buf := make([]byte, 64<<10)
		for {
			n, err := br.Read(buf)
			r.mu.Lock()
			r.sessions[i] = append(r.sessions[i], buf[:n]...)
			r.mu.Unlock()
			if err != nil {
				return
			}
		}
	})
	t.Cleanup(func() { close(done) })
	return r
}

// last returns the bytes of the collector's latest session.
func (r *recorder) last() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.sessions) == 0 {
		return nil
	}
	return append([]byte(nil), r.sessions[len(r.sessions)-1]...)
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.sessions)
}

// holds reports whether the collector's latest session parses, as far as
// it has come, to want. It parses only once the session has stopped
// growing since the last call: parsing megabytes on every poll would
// take longer than the wait.
func (r *recorder) holds(want *bmpcheck.State) bool {
	b := r.last()
	r.mu.Lock()
	grew := len(b) != r.seen || r.count0() != r.seenSessions
	r.seen, r.seenSessions = len(b), r.count0()
	r.mu.Unlock()
	if grew {
		return false
	}
	got, err := bmpcheck.Parse(bmpcheck.Whole(b))
	return err == nil && got.Equal(want)
}

// count0 is count with r.mu held.
func (r *recorder) count0() int { return len(r.sessions) }

// resyncListener is a BMP listener with resync to each recorder.
func resyncListener(t *testing.T, buffer conf.ByteSize, rs ...*recorder) *conf.Config {
	t.Helper()
	var addrs []string
	for _, r := range rs {
		addrs = append(addrs, r.tg.Addr())
	}
	cfg := fanListener(t, buffer, addrs...)
	cfg.Listeners[0].BMP = true
	cfg.Listeners[0].Resync = true
	return cfg
}

// TestResyncRestart: a collector that restarts mid-session (its
// connection closed) is dialed again and replayed, and ends up holding
// exactly the state of the whole stream; the router's session and the
// other collector are not touched.
func TestResyncRestart(t *testing.T) {
	msgs := bmpcheck.Generate(bmpcheck.GenConfig{})
	stream := bmpcheck.Encode(msgs)
	want, err := bmpcheck.Parse(stream)
	if err != nil {
		t.Fatal(err)
	}
	a, b := newRecorder(t), newRecorder(t)
	ts := startServer(t, resyncListener(t, conf.DefaultBuffer, a, b), nil)
	router := dial(t, "tcp", ts.addrs[0].String())
	half := len(msgs) / 2
	first := bmpcheck.Encode(msgs[:half])
	router.Write(first)
	partial, _ := bmpcheck.Parse(first)
	waitfor.True(t, "both collectors to hold the first half", func() bool { return a.holds(partial) && b.holds(partial) })

	// b restarts: its connection goes away, the proxy dials again and
	// replays.
	b.tg.CloseConns()
	waitfor.True(t, "b's second session to hold the first half, replayed", func() bool { return b.count() == 2 && b.holds(partial) })
	router.Write(bmpcheck.Encode(msgs[half:]))
	waitfor.True(t, "both collectors to hold the whole stream", func() bool { return a.holds(want) && b.holds(want) })
	if n := ts.logs.count("leg closed"); n != 1 {
		t.Errorf("%d leg lines, want 1 for b's first session", n)
	}
	// What /routers and /metrics read: both legs live, b's reconnect and
	// replay counted, and the routes kept.
	waitfor.True(t, "both legs live again", func() bool {
		rs := ts.Routers()
		return len(rs) == 1 && len(rs[0].Legs) == 2 && rs[0].Legs[0].State == "live" && rs[0].Legs[1].State == "live"
	})
	r := ts.Routers()[0]
	if r.Resync == nil || r.Resync.State != "keeping" || r.Resync.Routes != want.RouteCount() || r.Resync.Peers != want.PeerCount() {
		t.Errorf("resync status %+v: want keeping, %d peers and %d routes", r.Resync, want.PeerCount(), want.RouteCount())
	}
	ls := ts.ListenerStats()[0]
	legs := map[string]LegStats{}
	for _, l := range ls.Legs {
		legs[l.Target] = l
	}
	if lb, la := legs[b.tg.Addr()], legs[a.tg.Addr()]; len(ls.Legs) != 2 || lb.Reconnects != 1 || lb.Replays != 1 || lb.Up != 1 || la.Up != 1 || la.Reconnects != 0 {
		t.Errorf("leg stats %+v: want b reconnected and replayed once, both up", ls.Legs)
	}
	if ls.RoutesCached != int64(want.RouteCount()) || ls.ResyncBytes <= 0 {
		t.Errorf("listener stats: %d routes cached, %d bytes; want %d routes", ls.RoutesCached, ls.ResyncBytes, want.RouteCount())
	}
	if st := ts.ListenerStats(); len(st) != 1 || st[0].Active != 1 {
		t.Errorf("listener stats %+v: want the router's session still open", st)
	}
	router.Close()
	ts.logs.waitClosed(t, 1)
}

// TestResyncLateAndOutage: a collector that is down when the router
// connects joins later with a replay; then both collectors go down while
// the router goes on, and both are replayed when they come back.
func TestResyncLateAndOutage(t *testing.T) {
	msgs := bmpcheck.Generate(bmpcheck.GenConfig{})
	want, err := bmpcheck.Parse(bmpcheck.Encode(msgs))
	if err != nil {
		t.Fatal(err)
	}
	a := newRecorder(t)
	late, listen := testtarget.Later(t) // refuses until listen
	cfg := fanListener(t, conf.DefaultBuffer, a.tg.Addr(), late)
	cfg.Listeners[0].BMP, cfg.Listeners[0].Resync = true, true
	ts := startServer(t, cfg, nil)
	router := dial(t, "tcp", ts.addrs[0].String())
	third := len(msgs) / 3
	router.Write(bmpcheck.Encode(msgs[:third]))
	sofar, _ := bmpcheck.Parse(bmpcheck.Encode(msgs[:third]))
	waitfor.True(t, "a to hold the first third", func() bool { return a.holds(sofar) })

	b := newRecorderOn(t, listen())
	waitfor.Within(t, 20*time.Second, "the late collector to be replayed", func() bool { return b.holds(sofar) })

	// Every collector goes down; the router sends on.
	a.tg.CloseConns()
	b.tg.CloseConns()
	router.Write(bmpcheck.Encode(msgs[third:]))
	waitfor.Within(t, 30*time.Second, "both collectors, back, to hold the whole stream", func() bool {
		return a.count() >= 2 && b.count() >= 2 && a.holds(want) && b.holds(want)
	})
	router.Close()
	ts.logs.waitClosed(t, 1)
}

// TestResyncCutForLag: a collector that stops reading is cut after its
// buffer, dialed again and replayed, while the router runs on.
func TestResyncCutForLag(t *testing.T) {
	// A stream well past what the buffers of a stalled connection hold:
	// about 5 MB.
	msgs := bmpcheck.Generate(bmpcheck.GenConfig{Prefixes: 30000})
	want, err := bmpcheck.Parse(bmpcheck.Encode(msgs))
	if err != nil {
		t.Fatal(err)
	}
	a, b := newRecorder(t), newRecorder(t)
	release := make(chan struct{})
	b.stall = release // b's first session reads nothing
	// Small socket buffers on the legs, so that a collector that stops
	// reading stops taking bytes after a few hundred KiB, not megabytes.
	small := func(ctx context.Context, network, addr string) (net.Conn, error) {
		d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
			rc.Control(func(fd uintptr) {
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, 64<<10)
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 64<<10)
			})
			return nil
		}}
		return d.DialContext(ctx, network, addr)
	}
	cfg := resyncListener(t, conf.DefaultBuffer, a, b)
	cfg.Listeners[0].Targets[1].Buffer = conf.MinBuffer // only b is cut
	ts := startServer(t, cfg, func(o *Options) { o.Dial = small })
	t.Cleanup(func() {
		if t.Failed() {
			for _, l := range ts.logs.all() {
				t.Logf("log: %v", l)
			}
			for _, c := range ts.tracked() {
				c.mu.Lock()
				t.Logf("legs: %+v", c.legStatuses())
				for _, d := range c.dirs {
					t.Logf("dir %s: %s, %d bytes", d, d.state, d.n.Total())
				}
				c.mu.Unlock()
			}
			b.mu.Lock()
			for i, ses := range b.sessions {
				t.Logf("b session %d: %d bytes", i, len(ses))
			}
			b.mu.Unlock()
			if got, err := bmpcheck.Parse(bmpcheck.Whole(b.last())); err != nil {
				t.Logf("b's last session: %v", err)
			} else {
				t.Logf("b's last session differs: %s", want.Diff(got))
			}
		}
	})
	router := dial(t, "tcp", ts.addrs[0].String())
	router.Write(bmpcheck.Encode(msgs))
	waitfor.Within(t, 30*time.Second, "a to hold the whole stream", func() bool { return a.holds(want) })
	waitfor.True(t, "b's first leg to be cut for lag", func() bool {
		for _, l := range ts.logs.all() {
			if l["message"] == "leg closed" && l["reason"] == "lagging" {
				return true
			}
		}
		return false
	})
	b.mu.Lock()
	b.stall = nil
	b.mu.Unlock()
	close(release)
	waitfor.Within(t, 30*time.Second, "b, dialed again, to hold the whole stream", func() bool { return b.count() >= 2 && b.holds(want) })
	router.Close()
	ts.logs.waitClosed(t, 1)
}
