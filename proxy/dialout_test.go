package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/bmpproxy/bmpproxy/internal/bmpcheck"
	"github.com/bmpproxy/bmpproxy/internal/testtarget"
	"github.com/bmpproxy/bmpproxy/internal/waitfor"
	proxyproto "github.com/pires/go-proxyproto"
	"go.uber.org/goleak"
)

// testRouter is a passive BMP station on loopback: it listens, and on
// each connection bmpproxy opens it sends greet (a BMP stream that starts
// with an Initiation), then reads until EOF and closes. The test ends a
// session with CloseWrite on its conn. Cleanup closes everything and
// waits for its goroutines.
type testRouter struct {
	addr   netip.AddrPort
	greet  []byte
	hangUp bool // close each connection at once, sending nothing; set before up
	wg     sync.WaitGroup
	mu     sync.Mutex
	ln     net.Listener // nil until up
	conns  []*net.TCPConn
	times  []time.Time // of each accept
}

// newTestRouter is a testRouter listening on a free port of ip.
func newTestRouter(t *testing.T, ip netip.Addr, greet []byte) *testRouter {
	t.Helper()
	r, up := laterRouter(t, ip, greet)
	up()
	return r
}

// laterRouter is a testRouter on a free port of ip that refuses
// connections until up is called: a router that is not reachable yet.
func laterRouter(t *testing.T, ip netip.Addr, greet []byte) (*testRouter, func()) {
	t.Helper()
	addr, listen := testtarget.LaterOn(t, ip)
	r := &testRouter{addr: netip.MustParseAddrPort(addr), greet: greet}
	t.Cleanup(r.close)
	return r, func() { r.serve(listen()) }
}

func (r *testRouter) serve(ln net.Listener) {
	r.mu.Lock()
	r.ln = ln
	r.mu.Unlock()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			c := nc.(*net.TCPConn)
			r.mu.Lock()
			r.conns = append(r.conns, c)
			r.times = append(r.times, time.Now())
			r.mu.Unlock()
			if r.hangUp {
				c.Close()
				continue
			}
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				defer c.Close()
				if _, err := c.Write(r.greet); err != nil {
					return
				}
				io.Copy(io.Discard, c)
			}()
		}
	}()
}

func (r *testRouter) close() {
	r.mu.Lock()
	if r.ln != nil {
		r.ln.Close()
	}
	for _, c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}

// sessions is how many connections the router has accepted.
func (r *testRouter) sessions() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.conns)
}

// accepts returns the times of the router's accepts.
func (r *testRouter) accepts() []time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]time.Time(nil), r.times...)
}

// conn is the router's i-th connection.
func (r *testRouter) conn(i int) *net.TCPConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.conns[i]
}

// peer is bmpproxy's end of the router's i-th connection: the address the
// PROXY header must name as destination.
func (r *testRouter) peer(i int) netip.AddrPort {
	return unmapped(r.conn(i).RemoteAddr().(*net.TCPAddr).AddrPort())
}

// dialSession is one session a dialCollector received.
type dialSession struct {
	src, dst netip.AddrPort // as the PROXY v2 header names them
	data     []byte         // what followed the header
}

// dialCollector is a collector that reads each session's PROXY v2 header
// itself, so that it knows, per session, which router it is from.
type dialCollector struct {
	tg       *testtarget.Target
	mu       sync.Mutex
	sessions []*dialSession // in arrival order
}

func newDialCollector(t *testing.T) *dialCollector {
	c := &dialCollector{}
	c.tg = testtarget.New(t, testtarget.None, func(conn *net.TCPConn, br *bufio.Reader) {
		h, err := proxyproto.Read(br)
		if err != nil {
			t.Errorf("collector: reading the PROXY header: %v", err)
			return
		}
		src, dst, ok := h.TCPAddrs()
		if !ok || h.Version != 2 {
			t.Errorf("collector: PROXY header %+v: want v2 over TCP", h)
			return
		}
		s := &dialSession{src: unmapped(src.AddrPort()), dst: unmapped(dst.AddrPort())}
		c.mu.Lock()
		c.sessions = append(c.sessions, s)
		c.mu.Unlock()
		buf := make([]byte, 64<<10)
		for {
			n, err := br.Read(buf)
			c.mu.Lock()
			s.data = append(s.data, buf[:n]...)
			c.mu.Unlock()
			if err != nil {
				return
			}
		}
	})
	return c
}

// from returns copies of the sessions whose header names src, in arrival
// order.
func (c *dialCollector) from(src netip.AddrPort) []dialSession {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []dialSession
	for _, s := range c.sessions {
		if s.src == src {
			out = append(out, dialSession{src: s.src, dst: s.dst, data: bytes.Clone(s.data)})
		}
	}
	return out
}

// wait waits until the collector has n sessions from src, the last of
// which carried exactly want, and returns that one.
func (c *dialCollector) wait(t *testing.T, src netip.AddrPort, n int, want []byte) dialSession {
	t.Helper()
	var got []dialSession
	waitfor.True(t, fmt.Sprintf("session %d from %s with its %d bytes", n, src, len(want)), func() bool {
		got = c.from(src)
		return len(got) == n && bytes.Equal(got[n-1].data, want)
	})
	return got[n-1]
}

func unmapped(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

// dialConfig is one BMP listener, "routers", that dials routers and
// sends their sessions to target with a PROXY v2 header.
func dialConfig(t *testing.T, target string, routers ...netip.AddrPort) *conf.Config {
	t.Helper()
	tg, err := conf.ParseTarget(target)
	if err != nil {
		t.Fatal(err)
	}
	l := conf.DefaultListener()
	l.Name, l.Dial, l.Target, l.BMP = "routers", routers, tg, true
	cfg := &conf.Config{Listeners: []conf.Listener{l}}
	cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// goroutinesIn counts the goroutines with a frame of fn, such as
// "proxy.(*Server).dialLoop(": a way to wait for a loop to end.
func goroutinesIn(fn string) int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	n := 0
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if bytes.Contains(g, []byte(fn)) {
			n++
		}
	}
	return n
}

func dialLoops() int { return goroutinesIn("proxy.(*Server).dialLoop(") }

// logged returns the lines with message msg whose field key is val.
func (l *logSink) logged(msg, key, val string) []map[string]any {
	var out []map[string]any
	for _, m := range l.all() {
		if m["message"] == msg && m[key] == val {
			out = append(out, m)
		}
	}
	return out
}

// waitLogged waits for a line with message msg whose field key is val.
func (l *logSink) waitLogged(t *testing.T, msg, key, val string) map[string]any {
	t.Helper()
	var got []map[string]any
	waitfor.True(t, fmt.Sprintf("a %q line with %s %s", msg, key, val), func() bool {
		got = l.logged(msg, key, val)
		return len(got) > 0
	})
	return got[0]
}

// dialStream is a small BMP stream: an Initiation, Peer Ups, routes.
func dialStream() []byte {
	return bmpcheck.Encode(bmpcheck.Generate(bmpcheck.GenConfig{Prefixes: 100}))
}

// dialStats is the listener's stats, which must be the only ones.
func dialStats(t *testing.T, ts *testServer) ListenerStats {
	t.Helper()
	st := ts.ListenerStats()
	if len(st) != 1 || st[0].Name != "routers" {
		t.Fatalf("listener stats %+v: want the one listener, routers", st)
	}
	return st[0]
}

// TestDialRouter: bmpproxy dials routers that wait to be dialed, over
// IPv6 and IPv4, and each session reaches the collector as an accepted
// one would, with the router's address in the PROXY header.
func TestDialRouter(t *testing.T) {
	stream := dialStream()
	cases := []struct {
		name string
		run  func(t *testing.T, ip netip.Addr)
	}{
		{"reachable from the start", func(t *testing.T, ip netip.Addr) {
			r := newTestRouter(t, ip, stream)
			col := newDialCollector(t)
			ts := startServer(t, dialConfig(t, col.tg.Addr(), r.addr), nil)
			s := col.wait(t, r.addr, 1, stream)
			if s.dst != r.peer(0) {
				t.Errorf("header destination %s, want bmpproxy's end of the router's socket, %s", s.dst, r.peer(0))
			}
			if l := ts.logs.waitLogged(t, "dialing a router that waits to be dialed", "router", r.addr.String()); l["listener"] != "routers" {
				t.Errorf("dialing line %v", l)
			}
			ts.logs.waitLogged(t, "router connected", "client", r.addr.String())
			if st := dialStats(t, ts); st.RouterDials != 1 || st.RouterDialFails != 0 || st.Accepted != 1 || st.Active != 1 {
				t.Errorf("stats %+v: want one dial, no failure, one session open", st)
			}
			if rs := ts.Routers(); len(rs) != 1 || rs[0].Router != r.addr.String() || rs[0].State != "connected" || rs[0].Listener != "routers" {
				t.Errorf("Routers() %+v: want %s connected", rs, r.addr)
			}
			if n := r.sessions(); n != 1 {
				t.Errorf("the router saw %d connections, want 1", n)
			}
		}},
		{"unreachable at first", func(t *testing.T, ip netip.Addr) {
			r, up := laterRouter(t, ip, stream)
			col := newDialCollector(t)
			ts := startServer(t, dialConfig(t, col.tg.Addr(), r.addr), nil)
			l := ts.logs.waitLogged(t, "router not reached; dialing again with backoff", "router", r.addr.String())
			if l["level"] != "warn" || l["listener"] != "routers" || l["attempts"] != 1.0 || l["error"] == nil {
				t.Errorf("not reached line %v: want a warning with the listener, attempts 1 and the error", l)
			}
			if st := dialStats(t, ts); st.RouterDialFails < 1 || st.RouterDials != 0 {
				t.Errorf("stats %+v: want a failed dial and none connected", st)
			}
			up()
			s := col.wait(t, r.addr, 1, stream)
			if s.dst != r.peer(0) {
				t.Errorf("header destination %s, want %s", s.dst, r.peer(0))
			}
			ts.logs.waitLogged(t, "router reached", "router", r.addr.String())
			if st := dialStats(t, ts); st.RouterDialFails < 1 || st.RouterDials != 1 || st.Active != 1 {
				t.Errorf("stats %+v: want the failures counted and one dial connected", st)
			}
		}},
		{"router closes the session", func(t *testing.T, ip netip.Addr) {
			r := newTestRouter(t, ip, stream)
			col := newDialCollector(t)
			ts := startServer(t, dialConfig(t, col.tg.Addr(), r.addr), nil)
			col.wait(t, r.addr, 1, stream)
			r.conn(0).CloseWrite()
			if l := ts.logs.waitClosed(t, 1)[0]; l["client"] != r.addr.String() || l["reason"] != "closed" {
				t.Errorf("closing line %v: want the router's, closed", l)
			}
			s := col.wait(t, r.addr, 2, stream)
			if n := r.sessions(); n != 2 {
				t.Fatalf("the router saw %d connections, want 2", n)
			}
			if s.dst != r.peer(1) {
				t.Errorf("second header destination %s, want %s", s.dst, r.peer(1))
			}
			waitfor.True(t, "two dials counted, one session open", func() bool {
				st := dialStats(t, ts)
				return st.RouterDials == 2 && st.Active == 1
			})
		}},
		{"router hangs up at once", func(t *testing.T, ip netip.Addr) {
			// Each session ends in the BMP pre-check, well within
			// dialoutMin: the dials back off.
			r, up := laterRouter(t, ip, nil)
			r.hangUp = true
			up()
			col := newDialCollector(t)
			ts := startServer(t, dialConfig(t, col.tg.Addr(), r.addr), nil)
			waitfor.Within(t, 20*time.Second, "three connections", func() bool { return r.sessions() >= 3 })
			at := r.accepts()
			for i, want := range []time.Duration{dialoutMin, 2 * dialoutMin} {
				if gap := at[i+1].Sub(at[i]); gap < want {
					t.Errorf("dial %d came %s after dial %d, want a backoff of at least %s", i+2, gap, i+1, want)
				}
			}
			for _, l := range ts.logs.waitClosed(t, 2)[:2] {
				if l["client"] != r.addr.String() || l["reason"] != "refused" {
					t.Errorf("closing line %v: want the router's session refused by the pre-check", l)
				}
			}
			if st := dialStats(t, ts); st.RouterDials < 3 || st.Refused["bmp"] < 2 || st.RouterDialFails != 0 {
				t.Errorf("stats %+v: want the dials counted as connected, the sessions refused", st)
			}
			if n := len(col.from(r.addr)); n != 0 {
				t.Errorf("the collector got %d sessions, want none", n)
			}
		}},
		{"reload", func(t *testing.T, ip netip.Addr) {
			a, b := newTestRouter(t, ip, stream), newTestRouter(t, ip, stream)
			col := newDialCollector(t)
			ts := startServer(t, dialConfig(t, col.tg.Addr(), a.addr), nil)
			col.wait(t, a.addr, 1, stream)

			// a is removed, b added.
			if err := ts.Reload(context.Background(), dialConfig(t, col.tg.Addr(), b.addr)); err != nil {
				t.Fatal(err)
			}
			ts.logs.waitLogged(t, "router no longer dialed; its open session runs on", "router", a.addr.String())
			col.wait(t, b.addr, 1, stream)
			waitfor.True(t, "a's dial loop to end, b's to run", func() bool { return dialLoops() == 1 })

			// a's session runs on, then ends; nothing dials a again.
			more := []byte("more bytes after the reload")
			if _, err := a.conn(0).Write(more); err != nil {
				t.Fatal(err)
			}
			col.wait(t, a.addr, 1, append(bytes.Clone(stream), more...))
			a.conn(0).CloseWrite()
			ts.logs.waitLogged(t, "connection closed", "client", a.addr.String())
			if n := a.sessions(); n != 1 {
				t.Fatalf("a saw %d connections after its removal, want 1", n)
			}

			// a is added back: dialed again.
			if err := ts.Reload(context.Background(), dialConfig(t, col.tg.Addr(), a.addr, b.addr)); err != nil {
				t.Fatal(err)
			}
			col.wait(t, a.addr, 2, stream)
			if na, nb := a.sessions(), b.sessions(); na != 2 || nb != 1 {
				t.Errorf("a saw %d connections, b %d; want 2 and 1", na, nb)
			}
			if n := dialLoops(); n != 2 {
				t.Errorf("%d dial loops, want 2", n)
			}
			if st := dialStats(t, ts); st.RouterDials != 3 || st.Active != 2 {
				t.Errorf("stats %+v: want 3 dials and 2 sessions open", st)
			}
		}},
		{"shutdown", func(t *testing.T, ip netip.Addr) {
			up := newTestRouter(t, ip, stream)
			down, _ := laterRouter(t, ip, stream) // never comes up
			col := newDialCollector(t)
			ignore := goleak.IgnoreCurrent()
			ts := startServer(t, dialConfig(t, col.tg.Addr(), up.addr, down.addr), nil)
			col.wait(t, up.addr, 1, stream)
			ts.logs.waitLogged(t, "router not reached; dialing again with backoff", "router", down.addr.String())
			if n := dialLoops(); n != 2 {
				t.Fatalf("%d dial loops, want 2", n)
			}
			ts.stop(t)
			if n := dialLoops(); n != 0 {
				t.Errorf("%d dial loops after Run returned", n)
			}
			if l := ts.logs.waitClosed(t, 1)[0]; l["client"] != up.addr.String() || l["reason"] != "shutdown" {
				t.Errorf("closing line %v: want the router's session closed at shutdown", l)
			}
			goleak.VerifyNone(t, ignore)
		}},
	}
	for _, fam := range []struct {
		name string
		ip   netip.Addr
	}{
		{"IPv6", netip.IPv6Loopback()},
		{"IPv4", netip.AddrFrom4([4]byte{127, 0, 0, 1})},
	} {
		t.Run(fam.name, func(t *testing.T) {
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) { tc.run(t, fam.ip) })
			}
		})
	}
}

// TestDialRouterResync: a dialed session to two collectors with resync
// behaves as an accepted one: a collector that restarts is dialed again
// and replayed, with the router's address in its header, while the
// router's session runs on untouched.
func TestDialRouterResync(t *testing.T) {
	msgs := bmpcheck.Generate(bmpcheck.GenConfig{Prefixes: 500})
	half := len(msgs) / 2
	first := bmpcheck.Encode(msgs[:half])
	partial, err := bmpcheck.Parse(first)
	if err != nil {
		t.Fatal(err)
	}
	want, err := bmpcheck.Parse(bmpcheck.Encode(msgs))
	if err != nil {
		t.Fatal(err)
	}
	r := newTestRouter(t, netip.IPv6Loopback(), first)
	a, b := newRecorder(t), newRecorder(t)
	cfg := resyncListener(t, conf.DefaultBuffer, a, b)
	l := &cfg.Listeners[0]
	l.Name, l.Listen, l.Dial = "routers", nil, []netip.AddrPort{r.addr}
	ts := startServer(t, cfg, nil)
	waitfor.True(t, "both collectors to hold the first half", func() bool { return a.holds(partial) && b.holds(partial) })

	b.tg.CloseConns()
	waitfor.True(t, "b's second session to hold the first half, replayed", func() bool { return b.count() == 2 && b.holds(partial) })
	if _, err := r.conn(0).Write(bmpcheck.Encode(msgs[half:])); err != nil {
		t.Fatal(err)
	}
	waitfor.True(t, "both collectors to hold the whole stream", func() bool { return a.holds(want) && b.holds(want) })

	hs := b.tg.Headers()
	if len(hs) != 2 {
		t.Fatalf("b got %d headers, want 2", len(hs))
	}
	for i, raw := range hs {
		h, err := proxyproto.Read(bufio.NewReader(bytes.NewReader(raw)))
		if err != nil {
			t.Fatal(err)
		}
		src, dst, _ := h.TCPAddrs()
		if got := unmapped(src.AddrPort()); got != r.addr {
			t.Errorf("b's header %d: source %s, want the router's %s", i, got, r.addr)
		}
		if got := unmapped(dst.AddrPort()); got != r.peer(0) {
			t.Errorf("b's header %d: destination %s, want %s", i, got, r.peer(0))
		}
	}
	if n := ts.logs.count("leg closed"); n != 1 {
		t.Errorf("%d leg lines, want 1 for b's first session", n)
	}
	if n := r.sessions(); n != 1 {
		t.Errorf("the router saw %d connections, want its one session throughout", n)
	}
	if st := dialStats(t, ts); st.RouterDials != 1 || st.Active != 1 {
		t.Errorf("stats %+v: want one dial, its session open", st)
	}
	if rs := ts.Routers(); len(rs) != 1 || rs[0].Router != r.addr.String() || rs[0].Resync == nil || rs[0].Resync.Routes != want.RouteCount() {
		t.Errorf("Routers() %+v: want %s with resync keeping %d routes", rs, r.addr, want.RouteCount())
	}
}

// TestDialRouterHandover: a dialed session is handed over to a successor,
// which does not dial the router while that session is open, and dials
// it again once it ends; also when the router is given with a zone its
// peer address lacks.
func TestDialRouterHandover(t *testing.T) {
	stream := dialStream()
	for _, tc := range []struct {
		name string
		zone string
	}{{"plain", ""}, {"zone", "lo"}} {
		t.Run(tc.name, func(t *testing.T) {
			r := newTestRouter(t, netip.IPv6Loopback(), stream)
			col := newDialCollector(t)
			cfg := dialConfig(t, col.tg.Addr(), netip.AddrPortFrom(r.addr.Addr().WithZone(tc.zone), r.addr.Port()))
			cur := runServer(t, cfg, Options{IdleAfter: 20 * time.Millisecond})
			col.wait(t, r.addr, 1, stream)

			var next *testServer
			if err := cur.Upgrade(context.Background(), inProcess(t, cfg, &next, false)); err != nil {
				t.Fatal(err)
			}
			if err := cur.wait(t); !errors.Is(err, ErrHandedOver) {
				t.Fatalf("predecessor Run = %v, want ErrHandedOver", err)
			}
			t.Cleanup(func() { next.stop(t) })

			// The successor's loop finds the session and waits for it: no
			// dial.
			next.logs.waitLogged(t, "router's session is open; dialing it again when it ends", "listener", "routers")
			waitfor.True(t, "the dial loop to wait for the session", func() bool { return dialLoopsWaiting() == 1 })
			if n := r.sessions(); n != 1 {
				t.Fatalf("the router saw %d connections after the handover, want 1", n)
			}
			if st := dialStats(t, next); st.RouterDials != 1 || st.Active != 1 {
				t.Errorf("successor stats %+v: want the one dial carried over, its session open", st)
			}
			more := []byte("more bytes after the handover")
			if _, err := r.conn(0).Write(more); err != nil {
				t.Fatal(err)
			}
			col.wait(t, r.addr, 1, append(bytes.Clone(stream), more...))

			r.conn(0).CloseWrite()
			next.logs.waitLogged(t, "connection closed", "client", r.addr.String())
			s := col.wait(t, r.addr, 2, stream)
			if n := r.sessions(); n != 2 {
				t.Errorf("the router saw %d connections, want 2", n)
			}
			if s.dst != r.peer(1) {
				t.Errorf("second header destination %s, want %s", s.dst, r.peer(1))
			}
			waitfor.True(t, "the successor to count its dial", func() bool { return dialStats(t, next).RouterDials == 2 })
		})
	}
}

// TestDialRouterUpgradeFails: after an upgrade that fails, the thawed
// dial loop finds its session and waits for it, and dials again once it
// ends.
func TestDialRouterUpgradeFails(t *testing.T) {
	stream := dialStream()
	r := newTestRouter(t, netip.IPv6Loopback(), stream)
	col := newDialCollector(t)
	cfg := dialConfig(t, col.tg.Addr(), r.addr)
	ts := startServer(t, cfg, func(o *Options) { o.IdleAfter = 20 * time.Millisecond })
	col.wait(t, r.addr, 1, stream)

	var next *testServer
	if err := ts.Upgrade(context.Background(), inProcess(t, cfg, &next, true)); err == nil {
		t.Fatal("Upgrade succeeded; want the successor to give up")
	}
	ts.logs.waitLogged(t, "router's session is open; dialing it again when it ends", "router", r.addr.String())
	waitfor.True(t, "the dial loop to wait for the session", func() bool { return dialLoopsWaiting() == 1 })
	if n := r.sessions(); n != 1 {
		t.Fatalf("the router saw %d connections after the failed upgrade, want 1", n)
	}
	more := []byte("more bytes after the failed upgrade")
	if _, err := r.conn(0).Write(more); err != nil {
		t.Fatal(err)
	}
	col.wait(t, r.addr, 1, append(bytes.Clone(stream), more...))
	r.conn(0).CloseWrite()
	col.wait(t, r.addr, 2, stream)
	if st := dialStats(t, ts); st.RouterDials != 2 {
		t.Errorf("stats %+v: want 2 dials", st)
	}
}

// TestPeerOf: the peer address a router's socket shows, which finds its
// session after a handover.
func TestPeerOf(t *testing.T) {
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Skip(err)
	}
	idx := fmt.Sprint(lo.Index)
	for _, tc := range []struct{ in, want string }{
		{"198.51.100.9:5000", "198.51.100.9:5000"},
		{"[2001:db8::1]:5000", "[2001:db8::1]:5000"},
		{"[2001:db8::1%lo]:5000", "[2001:db8::1]:5000"},
		{"[::1%" + idx + "]:5000", "[::1]:5000"},
		{"[fe80::1%lo]:5000", "[fe80::1%lo]:5000"},
		{"[fe80::1%" + idx + "]:5000", "[fe80::1%lo]:5000"},
		{"[fe80::1%999999]:5000", "[fe80::1%999999]:5000"}, // no such interface: as Go would show it
	} {
		if got := peerOf(netip.MustParseAddrPort(tc.in)); got.String() != tc.want {
			t.Errorf("peerOf(%s) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

// dialLoopsWaiting counts the dial loops that wait for their router's
// session to end.
func dialLoopsWaiting() int { return goroutinesIn("proxy.waitSession(") }

// TestDialRouterZone: a router given with a zone that the socket's peer
// address does not carry (the kernel keeps a scope only for link-local
// addresses) is still known by its session: the loop waits for it and
// does not dial a second one.
func TestDialRouterZone(t *testing.T) {
	stream := dialStream()
	r := newTestRouter(t, netip.IPv6Loopback(), stream)
	col := newDialCollector(t)
	zoned := netip.AddrPortFrom(r.addr.Addr().WithZone("lo"), r.addr.Port())
	ts := startServer(t, dialConfig(t, col.tg.Addr(), zoned), nil)
	col.wait(t, r.addr, 1, stream)
	waitfor.True(t, "the dial loop to wait for the session", func() bool { return dialLoopsWaiting() == 1 })
	if n := r.sessions(); n != 1 {
		t.Errorf("the router saw %d connections, want 1", n)
	}
	if st := dialStats(t, ts); st.RouterDials != 1 || st.Active != 1 {
		t.Errorf("stats %+v: want one dial, its session open", st)
	}
}
