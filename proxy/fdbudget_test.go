package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/bmpproxy/bmpproxy/internal/testtarget"
	"github.com/bmpproxy/bmpproxy/internal/waitfor"
)

// echoClient is a connection that sent msg and waits for its echo.
type echoClient struct {
	c    *net.TCPConn
	msg  string
	echo chan string // what came back, once
	got  *string     // set once echo has yielded
}

func startEcho(t *testing.T, addr, msg string) *echoClient {
	t.Helper()
	c := dial(t, "tcp", addr)
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	e := &echoClient{c: c, msg: msg, echo: make(chan string, 1)}
	go func() { // ends with the echo, or when the cleanup closes c
		b := make([]byte, len(msg))
		n, _ := io.ReadFull(c, b)
		e.echo <- string(b[:n])
	}()
	return e
}

// served reports whether the echo came back whole. Only the test's
// goroutine calls it.
func (e *echoClient) served() bool {
	if e.got == nil {
		select {
		case s := <-e.echo:
			e.got = &s
		default:
			return false
		}
	}
	return *e.got == e.msg
}

// end half-closes the client and reads to the end: the proxy has
// finished the connection.
func (e *echoClient) end(t *testing.T) {
	t.Helper()
	e.c.CloseWrite()
	if _, err := io.ReadAll(e.c); err != nil {
		t.Fatalf("%s: %v", e.msg, err)
	}
}

func allServed(cs ...*echoClient) bool {
	for _, c := range cs {
		if !c.served() {
			return false
		}
	}
	return true
}

const (
	budgetReached = "fd budget reached; accepting paused, new connections wait in the listen backlog"
	budgetCleared = "fd budget cleared; accepting again"
)

// TestFDBudget runs a server whose budget holds three connections: 2 fds
// each, and 2 free, fewer than the next accept's 3. Of five clients three
// are served and two wait in the backlog; each is served as an earlier
// one ends. Nothing is refused or fails its dial, the budget is reached
// and cleared once, and every fd comes back.
func TestFDBudget(t *testing.T) {
	for _, tc := range []struct {
		name   string
		splice bool
		byName bool // the target is "localhost": its setup holds a third fd until the dial
	}{{"splice", true, false}, {"copy", false, false}, {"target by name", true, true}} {
		t.Run(tc.name, func(t *testing.T) {
			tg := testtarget.New(t, testtarget.V2, testtarget.Echo)
			target := tg.Addr()
			if tc.byName {
				_, p, _ := net.SplitHostPort(target)
				target = net.JoinHostPort("localhost", p)
			}
			cfg := oneListener(target, "127.0.0.1:0")
			cfg.Splice.Disabled = !tc.splice
			ts := startServer(t, cfg, func(o *Options) { o.FDBudget = 3*connFDs + 2 })
			addr := ts.addrs[0].String()

			var cl []*echoClient
			for i := range 5 {
				cl = append(cl, startEcho(t, addr, fmt.Sprintf("client %d", i)))
			}
			// Pipes the echoes used are closed once the accept waits: the
			// fds in use are the three connections'.
			waitfor.True(t, "three clients served and the budget spent", func() bool {
				st := ts.Stats()
				return allServed(cl[:3]...) && st.Accepted == 3 && st.FDBudgetReached && st.FDBudgetInUse == 3*connFDs
			})
			cl[0].end(t)
			waitfor.True(t, "the fourth client served", func() bool { return cl[3].served() && ts.Stats().Accepted == 4 })
			if st := ts.Stats(); !st.FDBudgetReached {
				t.Fatalf("budget cleared with a client still waiting: %+v", st)
			}
			cl[1].end(t)
			cl[2].end(t)
			waitfor.True(t, "the fifth client served", func() bool { return cl[4].served() && ts.Stats().Accepted == 5 })
			cl[3].end(t)
			cl[4].end(t)

			for _, l := range ts.logs.waitClosed(t, 5) {
				if l["reason"] != "closed" {
					t.Errorf("closing line %v", l)
				}
			}
			waitfor.True(t, "the budget to clear", func() bool { return ts.logs.count(budgetCleared) == 1 })
			if n := ts.logs.count(budgetReached); n != 1 {
				t.Errorf("budget reached %d times, want once", n)
			}
			// The accept loop, woken by the last releases, takes its fds
			// again for the next connection.
			var st Stats
			waitfor.True(t, "every fd back but the next accept's and the idle pipes'", func() bool {
				st = ts.Stats()
				return st.FDBudgetInUse == acceptFDs+2*st.Splice.PipesIdle
			})
			if st.FDBudget != 8 || st.FDBudgetReached || st.AcceptErrors != 0 || st.DialFailures != 0 || st.Refused != 0 {
				t.Errorf("stats at the end: %+v", st)
			}
			if !tc.splice && st.Splice.Fallbacks != 0 {
				t.Errorf("copy mode counted fallbacks: %+v", st.Splice)
			}
			ts.stop(t)
			if st := ts.Stats(); st.FDBudgetInUse != 0 {
				t.Errorf("after Run: %d fds still in use", st.FDBudgetInUse)
			}
		})
	}
}

func TestSetupFDs(t *testing.T) {
	for _, tt := range []struct {
		target string
		want   int
	}{
		{"198.51.100.1:1790", 2},
		{"[2001:db8::1]:1790", 2},
		{"collector.example:1790", 3},
		{"localhost:1790", 3},
	} {
		o := &listenerOpts{Listener: oneListener(tt.target).Listeners[0]}
		if got := setupFDs(o); got != tt.want {
			t.Errorf("setupFDs(%s) = %d, want %d", tt.target, got, tt.want)
		}
	}
}

// TestFDBudgetHandover spends the budget, with clients waiting in the
// backlog: a handover's freeze still stops the waiting accept loop. A
// failed handover resumes waiting; a successful one charges the adopted
// connections to the successor's budget, which then serves the backlog.
func TestFDBudgetHandover(t *testing.T) {
	tg := testtarget.New(t, testtarget.V2, testtarget.Echo)
	cfg := oneListener(tg.Addr(), "127.0.0.1:0")
	cfg.ApplyDefaults()
	// Handed over, it is not stopped; on failure, cancelled.
	ts := runServer(t, cfg, Options{FDBudget: 3*connFDs + 2})
	t.Cleanup(ts.cancel)
	addr := ts.addrs[0].String()
	var cl []*echoClient
	for i := range 5 {
		cl = append(cl, startEcho(t, addr, fmt.Sprintf("client %d", i)))
	}
	waitfor.True(t, "three clients served and the budget spent", func() bool {
		st := ts.Stats()
		return allServed(cl[:3]...) && st.Accepted == 3 && st.FDBudgetReached
	})

	fail := errors.New("exec: no such file")
	upgraded := make(chan error, 1)
	go func() {
		upgraded <- ts.Upgrade(context.Background(), func(context.Context, *Snapshot) error { return fail })
	}()
	select {
	case err := <-upgraded:
		if !errors.Is(err, fail) {
			t.Fatalf("Upgrade = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Upgrade did not return: the freeze did not stop the accept loop waiting for fds")
	}
	cl[0].end(t)
	waitfor.True(t, "the fourth client served after the rollback", func() bool { return cl[3].served() && ts.Stats().Accepted == 4 })

	var next *testServer
	if err := ts.Upgrade(context.Background(), inProcess(t, cfg, &next, false)); err != nil {
		t.Fatalf("Upgrade: %v", err)
	}
	if err := ts.wait(t); !errors.Is(err, ErrHandedOver) {
		t.Fatalf("predecessor Run = %v", err)
	}
	t.Cleanup(func() { next.stop(t) })
	waitfor.True(t, "the successor to serve the client in the backlog", cl[4].served)
	waitfor.True(t, "the successor to charge four connections, its next accept and its idle pipes", func() bool {
		st := next.Stats()
		return st.Accepted == 5 && st.FDBudgetInUse == 4*connFDs+acceptFDs+2*st.Splice.PipesIdle
	})
	late := startEcho(t, addr, "late")
	waitfor.True(t, "a new client served by the successor", late.served)
	for _, c := range append(cl[1:], late) {
		c.end(t)
	}
	next.logs.waitClosed(t, 5)
	waitfor.True(t, "the successor's fds back", func() bool {
		st := next.Stats()
		return st.FDBudgetInUse == acceptFDs+2*st.Splice.PipesIdle
	})
	if st := next.Stats(); st.FDBudgetReached || st.AcceptErrors != 0 || st.DialFailures != 0 {
		t.Errorf("successor stats %+v", st)
	}
}
