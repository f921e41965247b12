package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/bmpproxy/bmpproxy/internal/socket"
	"github.com/bmpproxy/bmpproxy/internal/testtarget"
	"github.com/bmpproxy/bmpproxy/internal/waitfor"
	"github.com/bmpproxy/bmpproxy/splice"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// logSink collects JSON log lines.
type logSink struct {
	mu    sync.Mutex
	lines []map[string]any
}

func (l *logSink) Write(p []byte) (int, error) {
	var m map[string]any
	if err := json.Unmarshal(p, &m); err != nil {
		return 0, err
	}
	l.mu.Lock()
	l.lines = append(l.lines, m)
	l.mu.Unlock()
	return len(p), nil
}

// closed returns the "connection closed" lines.
func (l *logSink) closed() []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, m := range l.lines {
		if m["message"] == "connection closed" {
			out = append(out, m)
		}
	}
	return out
}

// all returns every line logged so far.
func (l *logSink) all() []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]map[string]any(nil), l.lines...)
}

// count returns how many lines have message msg.
func (l *logSink) count(msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.lines {
		if m["message"] == msg {
			n++
		}
	}
	return n
}

func (l *logSink) waitClosed(t *testing.T, n int) []map[string]any {
	t.Helper()
	waitfor.True(t, fmt.Sprintf("%d closing log lines", n), func() bool { return len(l.closed()) >= n })
	return l.closed()
}

// testServer runs a Server on loopback and returns its listening
// addresses. It is stopped, and checked to stop cleanly, at cleanup.
type testServer struct {
	*Server
	addrs  []net.Addr
	logs   *logSink
	cancel context.CancelFunc
	done   chan error
	ready  chan []net.Addr
}

func startServer(t testing.TB, cfg *conf.Config, mutate func(*Options)) *testServer {
	t.Helper()
	cfg.ApplyDefaults()
	var opts Options
	if mutate != nil {
		mutate(&opts)
	}
	ts := runServer(t, cfg, opts)
	t.Cleanup(func() { ts.stop(t) })
	return ts
}

// runServer builds a Server of cfg and opts, logging to a fresh sink,
// runs it and waits until it is ready; with opts.Inherit set it does not
// wait, since the caller answers Takeover. The caller stops it, or reads
// Run's result with wait.
func runServer(t testing.TB, cfg *conf.Config, opts Options) *testServer {
	t.Helper()
	logs := &logSink{}
	opts.Logger = zerolog.New(logs).Level(zerolog.DebugLevel)
	ready := make(chan []net.Addr, 1)
	opts.Ready = func(a []net.Addr) { ready <- a }
	srv, err := New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts := &testServer{Server: srv, logs: logs, cancel: cancel, done: make(chan error, 1), ready: ready}
	go func() { ts.done <- srv.Run(ctx) }()
	if opts.Inherit != nil {
		return ts
	}
	ts.waitReady(t)
	return ts
}

// waitReady waits until the server serves: every listener accepts and,
// for a successor, the takeover is done and counted.
func (ts *testServer) waitReady(t testing.TB) {
	t.Helper()
	select {
	case ts.addrs = <-ts.ready:
	case err := <-ts.done:
		ts.cancel()
		t.Fatalf("Run: %v", err)
	}
}

// wait returns Run's result, such as ErrHandedOver, without stopping it.
func (ts *testServer) wait(t testing.TB) error {
	t.Helper()
	select {
	case err := <-ts.done:
		return err
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return")
		return nil
	}
}

// stop cancels the server and waits for Run to return.
func (ts *testServer) stop(t testing.TB) {
	t.Helper()
	ts.cancel()
	select {
	case err, ok := <-ts.done:
		if ok && err != nil {
			t.Errorf("Run = %v", err)
		}
		if ok {
			close(ts.done)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func oneListener(target string, listen ...string) *conf.Config {
	tg, err := conf.ParseTarget(target)
	if err != nil {
		panic(err)
	}
	l := conf.Listener{Target: tg}
	for _, a := range listen {
		l.Listen = append(l.Listen, netip.MustParseAddrPort(a))
	}
	return &conf.Config{Listeners: []conf.Listener{l}}
}

func port(a net.Addr) int { return a.(*net.TCPAddr).Port }

func dial(t *testing.T, network, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestDualStackHeaders connects over IPv4 and IPv6 to one [::] socket and
// checks the header the target receives for each.
func TestDualStackHeaders(t *testing.T) {
	sk := testtarget.New(t, testtarget.V2, testtarget.Echo)
	ts := startServer(t, oneListener(sk.Addr(), "[::]:0"), nil)
	p := port(ts.addrs[0])

	for i, tc := range []struct{ network, host string }{{"tcp4", "127.0.0.1"}, {"tcp6", "::1"}} {
		c := dial(t, tc.network, net.JoinHostPort(tc.host, fmt.Sprint(p)))
		msg := []byte("hello " + tc.host)
		c.Write(msg)
		c.CloseWrite()
		got, err := io.ReadAll(c)
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("%s echo = %q, %v", tc.host, got, err)
		}
		ts.logs.waitClosed(t, i+1)
		h := sk.Headers()[i]
		client := c.LocalAddr().(*net.TCPAddr)
		want, err := proxyHeader(conf.ProxyV2, client.AddrPort(), c.RemoteAddr().(*net.TCPAddr).AddrPort())
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(h, want) {
			t.Errorf("%s: header % x, want % x", tc.host, h, want)
		}
		wantFam := byte(0x11)
		if tc.network == "tcp6" {
			wantFam = 0x21
		}
		if h[13] != wantFam {
			t.Errorf("%s: family 0x%02x, want 0x%02x", tc.host, h[13], wantFam)
		}
	}
	lines := ts.logs.closed()
	for _, l := range lines {
		if l["reason"] != "closed" || l["bytes_from_client"] == 0.0 || l["bytes_to_client"] != l["bytes_from_client"] {
			t.Errorf("closing line %v", l)
		}
	}
	if got := lines[0]["client"].(string); !strings.HasPrefix(got, "127.0.0.1:") {
		t.Errorf("IPv4 client logged as %q, want it unmapped", got)
	}
}

// TestHalfClose moves data both ways and checks that each side's
// half-close reaches the other while the opposite direction keeps flowing.
func TestHalfClose(t *testing.T) {
	payload := randomBytes(t, 4<<20)
	reply := randomBytes(t, 3<<20)
	tests := []struct {
		name  string
		first string // who half-closes first
	}{{"client first", "client"}, {"server first", "server"}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sinkErr := make(chan error, 1)
			sk := testtarget.New(t, testtarget.V2, func(c *net.TCPConn, r *bufio.Reader) {
				var err error
				if tt.first == "server" {
					c.Write(reply)
					c.CloseWrite()
					got, _ := io.ReadAll(r)
					if !bytes.Equal(got, payload) {
						err = fmt.Errorf("target got %d bytes, want %d", len(got), len(payload))
					}
				} else {
					got, _ := io.ReadAll(r) // EOF means the client's FIN arrived
					if !bytes.Equal(got, payload) {
						err = fmt.Errorf("target got %d bytes, want %d", len(got), len(payload))
					}
					c.Write(reply)
					c.CloseWrite()
				}
				sinkErr <- err
			})
			ts := startServer(t, oneListener(sk.Addr(), "127.0.0.1:0"), nil)
			c := dial(t, "tcp", ts.addrs[0].String())
			if tt.first == "server" {
				got, _ := io.ReadAll(c) // the target's FIN arrives while we have not sent
				if !bytes.Equal(got, reply) {
					t.Fatalf("client got %d bytes, want %d", len(got), len(reply))
				}
				c.Write(payload)
				c.CloseWrite()
			} else {
				c.Write(payload)
				c.CloseWrite()
				got, _ := io.ReadAll(c)
				if !bytes.Equal(got, reply) {
					t.Fatalf("client got %d bytes, want %d", len(got), len(reply))
				}
			}
			if err := <-sinkErr; err != nil {
				t.Fatal(err)
			}
			l := ts.logs.waitClosed(t, 1)[0]
			if l["reason"] != "closed" || l["bytes_from_client"] != float64(len(payload)) || l["bytes_to_client"] != float64(len(reply)) {
				t.Errorf("closing line %v", l)
			}
		})
	}
}

// TestIdleConnectionsHoldNoPipe pushes data through many connections, lets
// them go idle, and checks that none holds a pipe.
func TestIdleConnectionsHoldNoPipe(t *testing.T) {
	sk := testtarget.New(t, testtarget.V2, func(c *net.TCPConn, r *bufio.Reader) {
		buf := make([]byte, 1024)
		for {
			n, err := r.Read(buf)
			if err != nil {
				return
			}
			c.Write(buf[:n])
		}
	})
	ts := startServer(t, oneListener(sk.Addr(), "127.0.0.1:0"), nil)
	const n = 20
	buf := make([]byte, 512)
	for i := 0; i < n; i++ {
		c := dial(t, "tcp", ts.addrs[0].String())
		msg := randomBytes(t, 512)
		c.Write(msg)
		if _, err := io.ReadFull(c, buf); err != nil || !bytes.Equal(buf, msg) {
			t.Fatalf("conn %d: echo mismatch: %v", i, err)
		}
	}
	waitfor.True(t, "pipes to return", func() bool { return ts.Stats().Splice.PipesInUse == 0 })
	st := ts.Stats()
	if st.Active != n || st.Splice.BytesSpliced != 2*n*512 || st.Splice.PipesIdle > splice.DefaultMaxIdle {
		t.Fatalf("stats %+v", st)
	}
}

// TestUnreachableTarget checks that a refused or silent target closes the
// client within the connect timeout, is logged and counted, and that the
// server keeps serving.
func TestUnreachableTarget(t *testing.T) {
	tests := []struct {
		name    string
		target  func(testing.TB) string
		wantErr string
	}{
		{"refused", testtarget.Refusing, "connection refused"},
		{"silent", testtarget.Silent, "no answer within 300ms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := oneListener(tt.target(t), "127.0.0.1:0")
			cfg.Listeners[0].ConnectTimeout = 300 * time.Millisecond
			ts := startServer(t, cfg, nil)
			c := dial(t, "tcp", ts.addrs[0].String())
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			start := time.Now()
			if n, err := c.Read(make([]byte, 1)); n != 0 || (err != io.EOF && !errors.Is(err, syscall.ECONNRESET)) {
				t.Fatalf("client read = %d, %v; want the connection closed", n, err)
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Fatalf("client closed after %s", d)
			}
			l := ts.logs.waitClosed(t, 1)[0]
			if l["reason"] != "dial failed" || !strings.Contains(l["error"].(string), tt.wantErr) || l["level"] != "warn" {
				t.Errorf("closing line %v", l)
			}
			if st := ts.Stats(); st.DialFailures != 1 || st.Active != 0 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

// TestShutdownDrains stops the server with connections open: one that
// finishes during the drain period ends normally, one that stays idle is
// closed at the drain timeout, and Run returns with no goroutine left.
func TestShutdownDrains(t *testing.T) {
	sk := testtarget.New(t, testtarget.V2, testtarget.Echo)
	cfg := oneListener(sk.Addr(), "127.0.0.1:0")
	cfg.DrainTimeout = 500 * time.Millisecond
	ts := startServer(t, cfg, nil)
	finishing := dial(t, "tcp", ts.addrs[0].String())
	idle := dial(t, "tcp", ts.addrs[0].String())
	waitfor.True(t, "two connections", func() bool { return ts.Stats().Active == 2 })

	ts.cancel()
	// The listener closes at once.
	waitfor.True(t, "draining to start", func() bool {
		ts.logs.mu.Lock()
		defer ts.logs.mu.Unlock()
		for _, l := range ts.logs.lines {
			if l["message"] == "stopped accepting; draining" {
				return true
			}
		}
		return false
	})
	if c, err := net.Dial("tcp", ts.addrs[0].String()); err == nil {
		c.Close()
		t.Fatal("listener still accepting while draining")
	}
	// A connection may still finish its work while draining.
	finishing.Write([]byte("last words"))
	finishing.CloseWrite()
	if got, _ := io.ReadAll(finishing); string(got) != "last words" {
		t.Fatalf("draining connection got %q", got)
	}
	start := time.Now()
	if _, err := io.ReadAll(idle); err != nil {
		t.Fatalf("idle read: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("idle connection closed after %s", d)
	}
	ts.stop(t)
	reasons := map[string]int{}
	for _, l := range ts.logs.closed() {
		reasons[l["reason"].(string)]++
	}
	if reasons["closed"] != 1 || reasons["shutdown"] != 1 {
		t.Fatalf("reasons %v, want one closed and one shutdown", reasons)
	}
}

// flakyListener fails Accept with EMFILE a number of times before passing
// calls through.
type flakyListener struct {
	net.Listener
	mu    sync.Mutex
	fails int
	calls []time.Time
}

func (f *flakyListener) Accept() (net.Conn, error) {
	f.mu.Lock()
	f.calls = append(f.calls, time.Now())
	fail := f.fails > 0
	f.fails--
	f.mu.Unlock()
	if fail {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
	}
	return f.Listener.Accept()
}

// TestAcceptBackoff checks that EMFILE from accept backs off instead of
// spinning or ending the loop.
func TestAcceptBackoff(t *testing.T) {
	sk := testtarget.New(t, testtarget.V2, testtarget.Echo)
	fl := &flakyListener{fails: 6}
	ts := startServer(t, oneListener(sk.Addr(), "127.0.0.1:0"), func(s *Options) {
		s.Listen = func(ctx context.Context, a netip.AddrPort) (net.Listener, error) {
			ln, err := socket.Listen(ctx, a)
			fl.Listener = ln
			return fl, err
		}
	})
	c := dial(t, "tcp", ts.addrs[0].String())
	c.Write([]byte("x"))
	c.CloseWrite()
	if got, _ := io.ReadAll(c); string(got) != "x" {
		t.Fatalf("echo %q after accept errors", got)
	}
	fl.mu.Lock()
	calls := append([]time.Time(nil), fl.calls...)
	fl.mu.Unlock()
	// 6 failures, then the successful accept: 7 calls, separated by 5, 10,
	// 20, 40, 80 and 160 ms.
	if len(calls) < 7 {
		t.Fatalf("%d accept calls", len(calls))
	}
	if gap := calls[6].Sub(calls[0]); gap < 315*time.Millisecond {
		t.Fatalf("6 failed accepts retried within %s; want exponential back-off", gap)
	}
	if st := ts.Stats(); st.AcceptErrors != 6 {
		t.Fatalf("stats %+v", st)
	}
}

// TestListenErrors checks that a listener that cannot be opened fails
// Run with the listener's name and the address.
func TestListenErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	busy := ln.Addr().(*net.TCPAddr).AddrPort()
	want := fmt.Sprintf("listen on %s: bind: address already in use", busy)
	cfg := oneListener("127.0.0.1:1", busy.String())
	cfg.ApplyDefaults()
	srv, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	err = srv.Run(context.Background())
	if want := `listener "default": ` + want; err == nil || err.Error() != want {
		t.Fatalf("Run = %v, want %q", err, want)
	}
}

// TestIdleParking checks that quiet directions leave their goroutines for
// the watcher, that data, half-close and shutdown each bring them back, and
// that no byte is lost on the way.
func TestIdleParking(t *testing.T) {
	sk := testtarget.New(t, testtarget.V2, func(c *net.TCPConn, r *bufio.Reader) {
		buf := make([]byte, 1024)
		for {
			n, err := r.Read(buf)
			if n > 0 {
				c.Write(buf[:n])
			}
			if err != nil {
				c.CloseWrite()
				return
			}
		}
	})
	cfg := oneListener(sk.Addr(), "127.0.0.1:0")
	cfg.DrainTimeout = 200 * time.Millisecond
	ts := startServer(t, cfg, func(s *Options) { s.IdleAfter = 20 * time.Millisecond })
	const n = 10
	conns := make([]*net.TCPConn, n)
	buf := make([]byte, 64)
	roundTrip := func(i int, msg string) {
		t.Helper()
		conns[i].Write([]byte(msg))
		if _, err := io.ReadFull(conns[i], buf[:len(msg)]); err != nil || string(buf[:len(msg)]) != msg {
			t.Fatalf("conn %d: echo %q, %v", i, buf[:len(msg)], err)
		}
	}
	for i := range conns {
		conns[i] = dial(t, "tcp", ts.addrs[0].String())
		roundTrip(i, "hello")
	}
	waitfor.True(t, "every direction parked", func() bool { return ts.Stats().Parked == 2*n })
	// Data wakes a parked direction; the reply wakes the other.
	for i := range conns {
		roundTrip(i, fmt.Sprintf("again %d", i))
	}
	waitfor.True(t, "parked again", func() bool { return ts.Stats().Parked == 2*n })
	// A half-close wakes the client's direction, which passes it on.
	conns[0].CloseWrite()
	if rest, err := io.ReadAll(conns[0]); err != nil || len(rest) != 0 {
		t.Fatalf("after half-close: %q, %v", rest, err)
	}
	l := ts.logs.waitClosed(t, 1)[0]
	if l["reason"] != "closed" || l["bytes_from_client"] != float64(len("hello")+len("again 0")) {
		t.Fatalf("closing line %v", l)
	}
	// Shutdown wakes and closes the rest.
	ts.stop(t)
	if got := len(ts.logs.closed()); got != n {
		t.Fatalf("%d closing lines, want %d", got, n)
	}
	for _, l := range ts.logs.closed()[1:] {
		if l["reason"] != "shutdown" {
			t.Errorf("closing line %v", l)
		}
	}
}

// TestKeepAlive checks that accepted sockets inherit the listener's
// keepalive settings and that the target socket gets them once the
// connection has lived through a sweep.
func TestKeepAlive(t *testing.T) {
	tests := []struct {
		name string
		ka   conf.KeepAlive
		want [3]int // TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT; all 0: off
	}{
		{"default", conf.KeepAlive{}, [3]int{15, 15, 9}},
		{"custom", conf.KeepAlive{Idle: 30 * time.Second, Interval: 5 * time.Second, Count: 3}, [3]int{30, 5, 3}},
		{"off", conf.KeepAlive{Disabled: true}, [3]int{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sk := testtarget.New(t, testtarget.V2, testtarget.Echo)
			cfg := oneListener(sk.Addr(), "127.0.0.1:0")
			cfg.Listeners[0].KeepAlive = tt.ka
			ts := startServer(t, cfg, func(s *Options) { s.IdleAfter = 20 * time.Millisecond })
			c := dial(t, "tcp", ts.addrs[0].String())
			c.Write([]byte("x"))
			io.ReadFull(c, make([]byte, 1))
			waitfor.True(t, "both directions parked", func() bool { return ts.Stats().Parked == 2 })
			ts.mu.Lock()
			var pc *conn
			for k := range ts.conns {
				pc = k
			}
			ts.mu.Unlock()
			for name, s := range map[string]stream{"client": pc.cc, "target": pc.tc} {
				rc, _ := s.SyscallConn()
				var on int
				var got [3]int
				var err error
				rc.Control(func(fd uintptr) {
					on, err = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE)
					for i, opt := range []int{unix.TCP_KEEPIDLE, unix.TCP_KEEPINTVL, unix.TCP_KEEPCNT} {
						if err == nil && on == 1 {
							got[i], err = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, opt)
						}
					}
				})
				wantOn := 1
				if tt.ka.Disabled {
					wantOn = 0
				}
				if err != nil || on != wantOn || got != tt.want {
					t.Errorf("%s socket: SO_KEEPALIVE=%d idle/intvl/cnt=%v (%v); want %d %v", name, on, got, err, wantOn, tt.want)
				}
			}
		})
	}
}

// TestParkingUnderBursts moves bursts separated by pauses longer than the
// sweep interval, so directions park and resume all the time, and checks
// every byte comes back in order.
func TestParkingUnderBursts(t *testing.T) {
	sk := testtarget.New(t, testtarget.V2, testtarget.Echo)
	ts := startServer(t, oneListener(sk.Addr(), "127.0.0.1:0"), func(s *Options) { s.IdleAfter = 2 * time.Millisecond })
	const conns, bursts = 16, 12
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", ts.addrs[0].String())
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(30 * time.Second))
			for b := 0; b < bursts; b++ {
				msg := randomBytes(t, 1+(i*7919+b*104729)%(256<<10))
				done := make(chan error, 1)
				go func() {
					_, err := c.Write(msg)
					done <- err
				}()
				got := make([]byte, len(msg))
				if _, err := io.ReadFull(c, got); err != nil {
					errs <- fmt.Errorf("conn %d burst %d: %w", i, b, err)
					return
				}
				if err := <-done; err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, msg) {
					errs <- fmt.Errorf("conn %d burst %d: %d bytes differ", i, b, len(msg))
					return
				}
				time.Sleep(time.Duration(5+(i+b)%4*5) * time.Millisecond) // 2-4 sweeps of quiet
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Each connection paused 11 times for at least two sweeps; most of
	// those pauses must have parked both directions.
	st := ts.Stats()
	t.Logf("%d parks", st.Parks)
	if st.Splice.PipesDirty != 0 || st.Parks < conns*bursts {
		t.Errorf("stats %+v", st)
	}
}

// TestNewThenRun checks the construct-then-run contract: New refuses what
// Run could not serve, counters can be read before Run, and a second Run
// is an error, not a panic.
func TestNewThenRun(t *testing.T) {
	if _, err := New(nil, Options{}); err == nil {
		t.Error("New(nil) succeeded")
	}
	bad := oneListener("127.0.0.1:1", "127.0.0.1:0")
	bad.Listeners[0].Target = conf.Target{} // none
	if _, err := New(bad, Options{}); err == nil || !strings.Contains(err.Error(), "target") {
		t.Errorf("New with no target = %v, want an error naming the target", err)
	}
	if err := new(Server).Run(context.Background()); err == nil {
		t.Error("Run on a Server not made by New succeeded")
	}

	tg := testtarget.New(t, testtarget.V2, testtarget.Echo)
	cfg := oneListener(tg.Addr(), "127.0.0.1:0")
	cfg.ApplyDefaults()
	srv, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if st := srv.Stats(); st.Accepted != 0 || st.Active != 0 || srv.IsReady() {
		t.Errorf("before Run: %+v, ready %v", st, srv.IsReady())
	}
	if ls := srv.ListenerStats(); len(ls) != 0 {
		t.Errorf("before Run: listener stats %+v", ls)
	}
	if rs := srv.Routers(); len(rs) != 0 {
		t.Errorf("before Run: routers %+v", rs)
	}

	ts := startServer(t, cfg, nil)
	if err := ts.Run(context.Background()); !errors.Is(err, errRunTwice) {
		t.Fatalf("second Run = %v, want %v", err, errRunTwice)
	}
	// The first Run serves on.
	c := dial(t, "tcp", ts.addrs[0].String())
	c.Write([]byte("still"))
	c.CloseWrite()
	if b, _ := io.ReadAll(c); string(b) != "still" {
		t.Fatalf("echo after a second Run: %q", b)
	}
}
