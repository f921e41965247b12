package proxy

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bmpproxy/bmpproxy/internal/bmpcheck"
	"github.com/bmpproxy/bmpproxy/internal/waitfor"
	"golang.org/x/sys/unix"
)

// TestHandoverFanout hands a router session with resync and two legs to
// a successor twice, the first time while one collector reads nothing,
// so that its sink has megabytes left to write, and once fails the
// handover instead. No leg reconnects, no replay is needed, every
// collector ends with exactly the stream's state, and the router state
// carried over is what a later replay comes from: a collector restarted
// after the upgrades is replayed to the whole state. One closing line for
// the session, by the last process.
func TestHandoverFanout(t *testing.T) {
	msgs := bmpcheck.Generate(bmpcheck.GenConfig{Seed: 7, Prefixes: 100000})
	stream := bmpcheck.Encode(msgs)
	want, err := bmpcheck.Parse(stream)
	if err != nil {
		t.Fatal(err)
	}
	half := len(msgs) / 2
	first := bmpcheck.Encode(msgs[:half])
	for _, tc := range []struct {
		name     string
		rollback bool
	}{{"handover", false}, {"rollback", true}} {
		t.Run(tc.name, func(t *testing.T) {
			// b's socket takes little before its collector reads: what
			// it does not take stays in b's sink.
			lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
				return rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 4096) })
			}}
			bl, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			a, b := newRecorder(t), newRecorderOn(t, bl)
			stall := make(chan struct{})
			b.mu.Lock()
			b.stall = stall // b's session reads nothing until released
			b.mu.Unlock()
			cfg := resyncListener(t, 64<<20, a, b)
			cfg.ApplyDefaults()
			cur := runServer(t, cfg, Options{IdleAfter: 20 * time.Millisecond})
			router := dial(t, "tcp", cur.addrs[0].String())
			router.Write(first)
			waitfor.Within(t, 60*time.Second, "a to have the first half", func() bool { return len(a.last()) >= len(first) })
			if !bytes.Equal(a.last(), first) {
				t.Fatalf("a got %d bytes, not the first half's %d", len(a.last()), len(first))
			}
			// What b's sink has left: bytes its collector has not been
			// given, beyond what the kernel's socket buffers took.
			waitfor.Within(t, 60*time.Second, "b's leg to be behind", func() bool {
				rs := cur.Routers()
				return len(rs) == 1 && rs[0].BytesFromRouter == int64(len(first)) && len(rs[0].Legs) == 2 &&
					rs[0].Legs[1].Bytes < int64(len(first))
			})

			var lines []map[string]any
			upgrade := func(round int) {
				t.Helper()
				if tc.rollback && round == 1 {
					var next *testServer
					err := cur.Upgrade(context.Background(), inProcess(t, cfg, &next, true))
					if err == nil || !strings.Contains(err.Error(), "gave up") {
						t.Fatalf("upgrade %d: %v, want the successor to give up", round, err)
					}
					return
				}
				var next *testServer
				if err := cur.Upgrade(context.Background(), inProcess(t, cfg, &next, false)); err != nil {
					t.Fatalf("upgrade %d: %v", round, err)
				}
				if err := cur.wait(t); !errors.Is(err, ErrHandedOver) {
					t.Fatalf("upgrade %d: predecessor Run = %v, want ErrHandedOver", round, err)
				}
				if n := cur.logs.count("leg closed"); n != 0 {
					t.Errorf("upgrade %d: the predecessor closed %d legs", round, n)
				}
				lines = append(lines, cur.logs.closed()...)
				cur = next
			}
			upgrade(1)
			close(stall)
			router.Write(bmpcheck.Encode(msgs[half:]))
			waitfor.Within(t, 60*time.Second, "both collectors to have the whole stream", func() bool {
				return len(a.last()) >= len(stream) && len(b.last()) >= len(stream)
			})
			// Byte for byte: no replay was needed, none lost or doubled.
			for i, r := range []*recorder{a, b} {
				if got := r.last(); !bytes.Equal(got, stream) {
					t.Fatalf("collector %d got %d bytes, not the stream's %d", i, len(got), len(stream))
				}
			}
			upgrade(2)
			if a.count() != 1 || b.count() != 1 {
				t.Fatalf("sessions: a %d, b %d; want one each: no leg reconnected", a.count(), b.count())
			}
			rs := cur.Routers()
			if len(rs) != 1 || rs[0].Resync == nil || rs[0].Resync.State != "keeping" || rs[0].Resync.Routes != want.RouteCount() {
				t.Fatalf("routers after the upgrades: %+v, want one keeping %d routes", rs, want.RouteCount())
			}

			// The state carried over is what a replay now comes from.
			b.tg.CloseConns()
			waitfor.Within(t, 20*time.Second, "b, restarted, to be replayed the whole state", func() bool {
				return b.count() == 2 && b.holds(want)
			})
			router.Close()
			cur.logs.waitClosed(t, 1)
			lines = append(lines, cur.logs.closed()...)
			if len(lines) != 1 || lines[0]["reason"] != "closed" {
				t.Errorf("closing lines %v: want one, clean", lines)
			}
			var legs []LegStats
			for _, ls := range cur.ListenerStats() {
				legs = append(legs, ls.Legs...)
			}
			replays := uint64(0)
			for _, l := range legs {
				replays += l.Replays
			}
			if replays != 1 {
				t.Errorf("legs %+v: want one replay in all, b's after its restart", legs)
			}
			cur.cancel()
			if err := cur.wait(t); err != nil {
				t.Fatal(err)
			}
		})
	}
}
