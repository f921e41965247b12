package proxy

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/bmpproxy/bmpproxy/internal/bmpcheck"
	"github.com/bmpproxy/bmpproxy/internal/waitfor"
)

// TestReloadTargets: a reload that replaces one target of a listener
// closes that leg of an open router session and, with resync, dials the
// new target and replays the router's state to it; without resync the
// new target gets only the sessions accepted after the reload. The
// router's session is never touched.
func TestReloadTargets(t *testing.T) {
	msgs := bmpcheck.Generate(bmpcheck.GenConfig{Seed: 11, Prefixes: 3000})
	stream := bmpcheck.Encode(msgs)
	want, err := bmpcheck.Parse(stream)
	if err != nil {
		t.Fatal(err)
	}
	half := len(msgs) / 2
	first, rest := bmpcheck.Encode(msgs[:half]), bmpcheck.Encode(msgs[half:])
	for _, resync := range []bool{true, false} {
		name := "resync"
		if !resync {
			name = "no resync"
		}
		t.Run(name, func(t *testing.T) {
			a, b, c := newRecorder(t), newRecorder(t), newRecorder(t)
			cfg := fanListener(t, conf.DefaultBuffer, a.tg.Addr(), b.tg.Addr())
			cfg.Listeners[0].BMP, cfg.Listeners[0].Resync = true, resync
			ts := startServer(t, cfg, nil)
			router := dial(t, "tcp", ts.addrs[0].String())
			router.Write(first)
			waitfor.True(t, "a and b to have the first half", func() bool {
				return len(a.last()) == len(first) && len(b.last()) == len(first)
			})

			next := fanListener(t, conf.DefaultBuffer, a.tg.Addr(), c.tg.Addr())
			next.Listeners[0].Listen = []netip.AddrPort{netip.MustParseAddrPort(ts.addrs[0].String())}
			next.Listeners[0].BMP, next.Listeners[0].Resync = true, resync
			next.ApplyDefaults()
			if err := ts.Reload(context.Background(), next); err != nil {
				t.Fatal(err)
			}
			waitfor.True(t, "b's leg to be closed as removed", func() bool {
				for _, l := range ts.logs.all() {
					if l["message"] == "leg closed" && l["target"] == b.tg.Addr() && l["reason"] == "removed" {
						return true
					}
				}
				return false
			})
			router.Write(rest)
			waitfor.True(t, "a to have the whole stream", func() bool { return len(a.last()) == len(stream) })
			if resync {
				waitfor.Within(t, 20*time.Second, "c, added, to hold the whole state", func() bool { return c.holds(want) })
			} else {
				// A second router, accepted after the reload, goes to c.
				late := dial(t, "tcp", ts.addrs[0].String())
				late.Write(first)
				waitfor.True(t, "c to get the later session", func() bool { return len(c.last()) == len(first) })
				if c.count() != 1 {
					t.Errorf("c has %d sessions, want only the later router's", c.count())
				}
				defer late.Close()
			}
			if got := b.last(); len(got) != len(first) {
				t.Errorf("b got %d bytes after it was removed, want the first half's %d", len(got), len(first))
			}
			if n := len(ts.logs.closed()); n != 0 {
				t.Errorf("%d closing lines: the router's session must not be touched", n)
			}
			rs := ts.Routers()
			var r *RouterStatus
			for i := range rs {
				if rs[i].BytesFromRouter == int64(len(stream)) {
					r = &rs[i]
				}
			}
			if r == nil {
				t.Fatalf("routers %+v: the first router's session is gone", rs)
			}
			states := map[string]string{}
			for _, l := range r.Legs {
				states[l.Target] = l.State
			}
			wantC := "live"
			if !resync {
				wantC = ""
			}
			if states[a.tg.Addr()] != "live" || states[b.tg.Addr()] != "removed" || states[c.tg.Addr()] != wantC {
				t.Errorf("legs %+v: want a live, b removed, c %q", r.Legs, wantC)
			}
			router.Close()
			ts.logs.waitClosed(t, 1)
		})
	}
}
