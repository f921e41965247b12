package proxy

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bmpproxy/bmpproxy/bmp/rib"
	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/bmpproxy/bmpproxy/internal/bmpcheck"
	"github.com/bmpproxy/bmpproxy/internal/testtarget"
	"github.com/bmpproxy/bmpproxy/internal/waitfor"
)

// stoppedMsg begins the line logged once per router whose state stops
// being kept.
const stoppedMsg = "resync stopped for this router"

// session returns the bytes of r's i-th session so far, nil if there is
// none yet.
func (r *recorder) session(i int) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	if i >= len(r.sessions) {
		return nil
	}
	return append([]byte(nil), r.sessions[i]...)
}

// sessionLen is the length of r's i-th session so far.
func (r *recorder) sessionLen(i int) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if i >= len(r.sessions) {
		return 0
	}
	return len(r.sessions[i])
}

// stoppedLines returns the lines that say a router's state stopped being
// kept.
func stoppedLines(l *logSink) []map[string]any {
	var out []map[string]any
	for _, m := range l.all() {
		if msg, _ := m["message"].(string); strings.HasPrefix(msg, stoppedMsg) {
			out = append(out, m)
		}
	}
	return out
}

// waitStopped waits for the first line saying a router's state stopped
// being kept, and returns it.
func waitStopped(t *testing.T, l *logSink) map[string]any {
	t.Helper()
	waitfor.True(t, "the resync stopped line", func() bool { return len(stoppedLines(l)) > 0 })
	return stoppedLines(l)[0]
}

// readToEnd reads c until it ends, and reports how: nil at EOF.
func readToEnd(c net.Conn) <-chan error {
	ch := make(chan error, 1)
	go func() { // ends when c is closed: by the proxy, or at cleanup
		_, err := io.Copy(io.Discard, c)
		ch <- err
	}()
	return ch
}

// closedByProxy reports whether a router's read ended because the proxy
// closed its session: EOF, or a reset.
func closedByProxy(err error) bool {
	return err == nil || errors.Is(err, syscall.ECONNRESET)
}

// legsByTarget indexes a listener's LegStats.
func legsByTarget(ls ListenerStats) map[string]LegStats {
	m := map[string]LegStats{}
	for _, l := range ls.Legs {
		m[l.Target] = l
	}
	return m
}

// routerStatus returns the /routers entry of the session from addr.
func routerStatus(t *testing.T, ts *testServer, addr string) RouterStatus {
	t.Helper()
	for _, r := range ts.Routers() {
		if r.Router == addr {
			return r
		}
	}
	t.Fatalf("no /routers entry for %s in %+v", addr, ts.Routers())
	return RouterStatus{}
}

// sum is a short form of what a collector got, for messages.
func sum(b []byte) string { return fmt.Sprintf("%d bytes, sha256 %x", len(b), sha256.Sum256(b)) }

// TestResyncUnkeyable: a router that announces EVPN routes, which cannot
// be keyed, is logged and counted once; its session runs on and both
// collectors get every byte. Once a collector restarts and needs a
// replay, the router session is closed instead (the router resends, as
// without resync), and the other collector got every byte until then.
func TestResyncUnkeyable(t *testing.T) {
	msgs := bmpcheck.Generate(bmpcheck.GenConfig{EVPN: true})
	evpn := -1
	for i, m := range msgs {
		if strings.HasPrefix(m.Note, "evpn") {
			evpn = i
			break
		}
	}
	if evpn < 0 {
		t.Fatal("the generated stream has no EVPN route")
	}
	first, rest := bmpcheck.Encode(msgs[:evpn+1]), bmpcheck.Encode(msgs[evpn+1:])
	stream := append(append([]byte(nil), first...), rest...)

	a, b := newRecorder(t), newRecorder(t)
	ts := startServer(t, resyncListener(t, conf.DefaultBuffer, a, b), nil)
	router := dial(t, "tcp", ts.addrs[0].String())
	me := router.LocalAddr().String()
	router.Write(first)
	line := waitStopped(t, ts.logs)
	if reason, _ := line["reason"].(string); line["level"] != "warn" || !strings.Contains(reason, "evpn") {
		t.Errorf("resync stopped line %v: want a warning whose reason names EVPN", line)
	}
	if e, _ := line["error"].(string); !strings.Contains(e, "router "+me) || !strings.Contains(e, rib.ErrUnkeyable.Error()) ||
		!strings.Contains(e, fmt.Sprintf("offset %d", len(bmpcheck.Encode(msgs[:evpn])))) {
		t.Errorf("resync stopped line's error %q: want it to name router %s, say the state cannot be kept, and give the EVPN message's offset", e, me)
	}

	// The session runs on: what the router sends after the EVPN routes
	// reaches both collectors, and nothing closed meanwhile.
	router.Write(rest)
	waitfor.True(t, "both collectors to get every byte", func() bool {
		return len(a.last()) == len(stream) && len(b.last()) == len(stream)
	})
	for name, r := range map[string]*recorder{"a": a, "b": b} {
		if got := r.last(); sha256.Sum256(got) != sha256.Sum256(stream) {
			t.Errorf("collector %s got %s; the router sent %s", name, sum(got), sum(stream))
		}
	}
	if n := len(ts.logs.closed()); n != 0 {
		t.Fatalf("%d closing lines while no collector needed a replay; want the session open", n)
	}
	if n := len(stoppedLines(ts.logs)); n != 1 {
		t.Errorf("%d resync stopped lines, want 1 for the router", n)
	}
	ls := ts.ListenerStats()[0]
	if ls.ResyncStopped != 1 || ls.Active != 1 || ls.RoutesCached != 0 {
		t.Errorf("listener stats: %d stopped, %d active, %d routes cached; want 1, 1 and 0", ls.ResyncStopped, ls.Active, ls.RoutesCached)
	}
	if st := routerStatus(t, ts, me); st.Resync == nil || st.Resync.State != rib.Unkeyable.String() || st.Resync.Routes != 0 {
		t.Errorf("/routers resync %+v: want unkeyable, no routes", st.Resync)
	}

	// b restarts: it needs a replay, which cannot be given.
	eof := readToEnd(router)
	b.tg.CloseConns()
	if err := testtarget.Recv(t, eof); !closedByProxy(err) {
		t.Errorf("the router's read ended with %v; want the proxy's close", err)
	}
	lines := ts.logs.waitClosed(t, 1)
	l := lines[0]
	if e, _ := l["error"].(string); l["reason"] != "resync impossible" || l["level"] != "warn" ||
		!strings.Contains(e, b.tg.Addr()) || !strings.Contains(e, rib.ErrNotKeeping.Error()) || !strings.Contains(e, rib.ErrUnkeyable.Error()) {
		t.Errorf("closing line %v: want resync impossible, naming the collector %s and why the state is not kept", l, b.tg.Addr())
	}
	if l["bytes_from_client"] != float64(len(stream)) {
		t.Errorf("closing line: %v bytes from the router, want %d", l["bytes_from_client"], len(stream))
	}
	if got := a.last(); sha256.Sum256(got) != sha256.Sum256(stream) {
		t.Errorf("collector a got %s; the router sent %s", sum(got), sum(stream))
	}
	// No replay was begun: b's second connection got not even a header.
	if h := b.tg.Headers(); len(h) != 1 || b.count() != 1 {
		t.Errorf("collector b: %d headers, %d sessions; want only its first", len(h), b.count())
	}
	if st := routerStatus(t, ts, me); st.State != "closed" || st.CloseReason != "resync impossible" {
		t.Errorf("/routers entry %+v: want closed, resync impossible", st)
	}
	legs := legsByTarget(ts.ListenerStats()[0])
	if lb := legs[b.tg.Addr()]; lb.Reconnects != 1 || lb.Replays != 0 {
		t.Errorf("b's leg stats %+v: want 1 reconnect and no replay", lb)
	}
	if n := len(ts.logs.closed()); n != 1 {
		t.Errorf("%d closing lines, want 1", n)
	}
}

// TestResyncMemoryBound: with resync_memory at its minimum, a second
// router that pushes the process over it stops being kept (logged,
// counted, its memory given back) while the first stays kept; when a
// collector restarts, the first router's leg is replayed and the second
// router's session is closed.
func TestResyncMemoryBound(t *testing.T) {
	// About 320,000 routes, which resync keeps in about 10 MiB: one
	// router fits in 16 MiB, two do not.
	msgs := bmpcheck.Generate(bmpcheck.GenConfig{Prefixes: 35000})
	stream := bmpcheck.Encode(msgs)
	want, err := bmpcheck.Parse(stream)
	if err != nil {
		t.Fatal(err)
	}
	a, b := newRecorder(t), newRecorder(t)
	// Buffers that hold a whole stream: no collector, slow under the
	// race detector, is cut for lag.
	cfg := resyncListener(t, 64*conf.MiB, a, b)
	cfg.ResyncMemory = conf.MinResyncMemory
	ts := startServer(t, cfg, nil)
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, l := range ts.logs.all() {
			t.Logf("log: %v", l)
		}
		for _, c := range ts.tracked() {
			c.mu.Lock()
			t.Logf("conn %d legs: %+v", c.id, c.legStatuses())
			for _, d := range c.dirs {
				t.Logf("conn %d dir %s: %s, %d bytes", c.id, d, d.state, d.n.Total())
			}
			c.mu.Unlock()
		}
		for name, r := range map[string]*recorder{"a": a, "b": b} {
			r.mu.Lock()
			for i, ses := range r.sessions {
				t.Logf("%s session %d: %d bytes", name, i, len(ses))
			}
			r.mu.Unlock()
		}
	})
	limit := int64(conf.MinResyncMemory)
	withinLimit := func(when string) {
		t.Helper()
		if st := ts.Stats(); st.ResyncMemory > limit || st.ResyncMemoryLimit != limit {
			t.Errorf("%s: resync memory %d, limit %d; want at most %d", when, st.ResyncMemory, st.ResyncMemoryLimit, limit)
		}
	}

	r1 := dial(t, "tcp", ts.addrs[0].String())
	r1.Write(stream)
	waitfor.Within(t, 30*time.Second, "both collectors to get the first router's stream", func() bool {
		return a.sessionLen(0) == len(stream) && b.sessionLen(0) == len(stream)
	})
	var held1 int64
	waitfor.True(t, "the first router's routes to be kept", func() bool {
		st := routerStatus(t, ts, r1.LocalAddr().String())
		held1 = st.Resync.Bytes
		return st.Resync.Routes == want.RouteCount()
	})
	if held1 > limit || 2*held1 <= limit {
		t.Fatalf("test sizing: one router holds %d bytes; want it under %d and two over", held1, limit)
	}
	withinLimit("one router")

	r2 := dial(t, "tcp", ts.addrs[0].String())
	r2.Write(stream)
	line := waitStopped(t, ts.logs)
	if e, _ := line["error"].(string); !strings.Contains(e, "router "+r2.LocalAddr().String()) || !strings.Contains(e, rib.ErrOverMemory.Error()) {
		t.Errorf("resync stopped line %v: want the second router %s, over the memory limit", line, r2.LocalAddr())
	}
	waitfor.Within(t, 30*time.Second, "both collectors to get the second router's stream", func() bool {
		return a.sessionLen(1) == len(stream) && b.sessionLen(1) == len(stream)
	})
	for name, r := range map[string]*recorder{"a": a, "b": b} {
		for i := range 2 {
			if got := r.session(i); sha256.Sum256(got) != sha256.Sum256(stream) {
				t.Errorf("collector %s, router %d: got %s, want %s", name, i+1, sum(got), sum(stream))
			}
		}
	}
	withinLimit("two routers")
	s1, s2 := routerStatus(t, ts, r1.LocalAddr().String()), routerStatus(t, ts, r2.LocalAddr().String())
	if s1.Resync.State != rib.Keeping.String() || s1.Resync.Routes != want.RouteCount() || s1.Resync.Bytes != held1 {
		t.Errorf("first router's resync %+v: want still keeping its %d routes in %d bytes", s1.Resync, want.RouteCount(), held1)
	}
	if s2.Resync.State != rib.OverMemory.String() || s2.Resync.Routes != 0 || s2.Resync.Bytes != 0 {
		t.Errorf("second router's resync %+v: want over-memory, holding nothing", s2.Resync)
	}
	if st := ts.Stats(); st.ResyncMemory != held1 {
		t.Errorf("resync memory %d: want the first router's %d alone, the second's given back", st.ResyncMemory, held1)
	}
	ls := ts.ListenerStats()[0]
	if ls.ResyncStopped != 1 || ls.Active != 2 || ls.RoutesCached != int64(want.RouteCount()) || ls.ResyncBytes != held1 {
		t.Errorf("listener stats: %d stopped, %d active, %d routes in %d bytes; want 1, 2, %d in %d",
			ls.ResyncStopped, ls.Active, ls.RoutesCached, ls.ResyncBytes, want.RouteCount(), held1)
	}

	// b restarts: the first router is replayed to it, the second's
	// session is closed.
	eof := readToEnd(r2)
	b.tg.CloseConns()
	if err := testtarget.Recv(t, eof); !closedByProxy(err) {
		t.Errorf("the second router's read ended with %v; want the proxy's close", err)
	}
	l := ts.logs.waitClosed(t, 1)[0]
	if e, _ := l["error"].(string); l["reason"] != "resync impossible" || l["client"] != r2.LocalAddr().String() || !strings.Contains(e, rib.ErrOverMemory.Error()) {
		t.Errorf("closing line %v: want the second router's session, resync impossible, over the memory limit", l)
	}
	waitfor.Within(t, 30*time.Second, "b's new session to hold the first router's state, replayed", func() bool {
		return b.count() == 3 && b.holds(want)
	})
	withinLimit("after the replay")
	if n := len(ts.logs.closed()); n != 1 {
		t.Errorf("%d closing lines, want only the second router's", n)
	}
	if a.count() != 2 {
		t.Errorf("collector a has %d sessions, want the two routers' first", a.count())
	}
	if st := routerStatus(t, ts, r1.LocalAddr().String()); st.State != "connected" || st.Resync.State != rib.Keeping.String() {
		t.Errorf("first router %+v: want connected, still keeping", st)
	}
	legs := legsByTarget(ts.ListenerStats()[0])
	if lb := legs[b.tg.Addr()]; lb.Replays != 1 || lb.Reconnects != 2 {
		t.Errorf("b's leg stats %+v: want both routers' legs reconnected, one replayed", lb)
	}
}

// corrupt returns msgs' stream with message i replaced by bad, and the
// offset of bad in it.
func corrupt(msgs []bmpcheck.Message, i int, bad []byte) (stream []byte, off int) {
	stream = bmpcheck.Encode(msgs[:i])
	off = len(stream)
	stream = append(stream, bad...)
	return append(stream, bmpcheck.Encode(msgs[i+1:])...), off
}

// TestResyncMalformed: a malformed message in the middle of a router's
// stream ends its resync with an error that names the router and the
// message's offset, while every collector still gets every byte as sent
// and the session runs on.
func TestResyncMalformed(t *testing.T) {
	// midRM is the index of a Route Monitoring halfway through msgs.
	midRM := func(msgs []bmpcheck.Message) int {
		for i := len(msgs) / 2; i < len(msgs); i++ {
			if msgs[i].Type == bmpcheck.MsgRouteMonitoring {
				return i
			}
		}
		t.Fatal("no Route Monitoring in the second half of the stream")
		return 0
	}
	tests := []struct {
		name   string
		stream func() (stream []byte, off int)
		reason string // in the line's reason
	}{
		{"bad BMP length", func() ([]byte, int) {
			msgs := bmpcheck.Generate(bmpcheck.GenConfig{})
			i := midRM(msgs)
			bad := append([]byte(nil), msgs[i].Bytes...)
			bad[1], bad[2], bad[3], bad[4] = 0, 0, 0, 3 // shorter than the common header
			return corrupt(msgs, i, bad)
		}, "bad length"},
		{"bad BGP marker", func() ([]byte, int) {
			msgs := bmpcheck.Generate(bmpcheck.GenConfig{})
			i := midRM(msgs)
			bad := append([]byte(nil), msgs[i].Bytes...)
			bad[6+42+5] = 0 // a marker byte, after the common and per-peer headers
			return corrupt(msgs, i, bad)
		}, "bad BGP marker"},
		{"truncated attribute", func() ([]byte, int) {
			msgs := bmpcheck.Generate(bmpcheck.GenConfig{Malformed: true})
			for i, m := range msgs {
				if strings.HasPrefix(m.Note, "malformed") {
					return corrupt(msgs, i, m.Bytes)
				}
			}
			t.Fatal("the generated stream has no malformed message")
			return nil, 0
		}, "truncated attribute"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stream, off := tt.stream()
			// The referee agrees on where the stream goes wrong.
			var pe *bmpcheck.ParseError
			if _, err := bmpcheck.Parse(stream); !errors.As(err, &pe) || pe.MessageOffset != off {
				t.Fatalf("bmpcheck.Parse: %v; want a parse error in the message at offset %d", err, off)
			}
			a, b := newRecorder(t), newRecorder(t)
			ts := startServer(t, resyncListener(t, conf.DefaultBuffer, a, b), nil)
			router := dial(t, "tcp", ts.addrs[0].String())
			me := router.LocalAddr().String()
			router.Write(stream)
			waitfor.True(t, "both collectors to get every byte", func() bool {
				return len(a.last()) == len(stream) && len(b.last()) == len(stream)
			})
			for name, r := range map[string]*recorder{"a": a, "b": b} {
				if got := r.last(); sha256.Sum256(got) != sha256.Sum256(stream) {
					t.Errorf("collector %s got %s; the router sent %s", name, sum(got), sum(stream))
				}
			}
			line := waitStopped(t, ts.logs)
			e, _ := line["error"].(string)
			if reason, _ := line["reason"].(string); !strings.Contains(reason, tt.reason) || line["client"] != me {
				t.Errorf("resync stopped line %v: want router %s, reason %q", line, me, tt.reason)
			}
			if !strings.Contains(e, "router "+me+": "+rib.ErrMalformed.Error()) || !strings.Contains(e, fmt.Sprintf("at offset %d", off)) {
				t.Errorf("error %q: want it to name router %s and the offset %d", e, me, off)
			}
			if n := len(ts.logs.closed()); n != 0 {
				t.Errorf("%d closing lines; want the session open", n)
			}
			ls := ts.ListenerStats()[0]
			if ls.ResyncStopped != 1 || ls.Active != 1 {
				t.Errorf("listener stats: %d stopped, %d active; want 1 and 1", ls.ResyncStopped, ls.Active)
			}
			if st := routerStatus(t, ts, me); st.Resync == nil || st.Resync.State != rib.Failed.String() {
				t.Errorf("/routers resync %+v: want %s", st.Resync, rib.Failed)
			}
			router.Close()
			ts.logs.waitClosed(t, 1)
		})
	}
}
