package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/bmpproxy/bmpproxy/internal/socket"
	"github.com/bmpproxy/bmpproxy/internal/testtarget"
	"github.com/bmpproxy/bmpproxy/internal/waitfor"
	"golang.org/x/sys/unix"
)

// inProcess is a Handoff to a successor Server in this process, built as
// a successor process would be: the snapshot goes through JSON and the
// successor gets its own duplicates of the descriptors. giveUp makes the
// successor fail at Takeover, after adopting everything.
func inProcess(t *testing.T, cfg *conf.Config, next **testServer, giveUp bool) Handoff {
	return func(ctx context.Context, snap *Snapshot) error {
		b, err := json.Marshal(snap)
		if err != nil {
			return err
		}
		got := new(Snapshot)
		if err := json.Unmarshal(b, got); err != nil {
			return err
		}
		for _, fd := range snap.FDs {
			dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
			if err != nil {
				return err
			}
			got.FDs = append(got.FDs, dup)
		}
		asked, answer := make(chan struct{}), make(chan error)
		rs := runServer(t, cfg, Options{
			IdleAfter: 20 * time.Millisecond,
			Inherit:   got,
			Takeover: func() error {
				close(asked)
				return <-answer
			},
		})
		select {
		case <-asked:
		case err := <-rs.done:
			return fmt.Errorf("successor: %w", err)
		}
		if giveUp {
			answer <- errors.New("told to give up")
			if err := rs.wait(t); err == nil || !strings.Contains(err.Error(), "told to give up") {
				t.Errorf("successor Run = %v, want the takeover error", err)
			}
			return errors.New("the successor gave up")
		}
		answer <- nil
		rs.waitReady(t)
		*next = rs
		return nil
	}
}

// stream is a client that sends size random bytes in chunks, pausing
// between them, half-closes, and checks that the echo is what it sent.
type echoStream struct {
	sent, got [32]byte
	err       error
}

func runEchoStream(c *net.TCPConn, data []byte, chunk int, pause time.Duration, res *echoStream, wg *sync.WaitGroup) {
	defer wg.Done()
	res.sent = sha256.Sum256(data)
	echo := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(c)
		echo <- b
	}()
	for off := 0; off < len(data); off += chunk {
		if _, err := c.Write(data[off:min(off+chunk, len(data))]); err != nil {
			res.err = err
			break
		}
		time.Sleep(pause)
	}
	c.CloseWrite()
	b := <-echo
	res.got = sha256.Sum256(b)
	if res.err == nil && len(b) != len(data) {
		res.err = fmt.Errorf("echo of %d bytes, sent %d", len(b), len(data))
	}
}

// TestHandover streams through three successive in-process handovers,
// with directions running, parked and half-closed at the moments of the
// handovers, and checks that every byte arrives once, in order, with
// counters and router start times carried over.
func TestHandover(t *testing.T) {
	for _, tc := range []struct {
		name   string
		splice bool
	}{{"splice", true}, {"copy", false}} {
		t.Run(tc.name, func(t *testing.T) {
			// Echo, except that the half-closed client's echo waits
			// until after the handovers.
			releaseHalf := make(chan struct{})
			var releaseOnce sync.Once
			release := func() { releaseOnce.Do(func() { close(releaseHalf) }) }
			tg := testtarget.New(t, testtarget.V2, func(c *net.TCPConn, r *bufio.Reader) {
				if b, _ := r.Peek(4); string(b) == "half" {
					<-releaseHalf
				}
				testtarget.Echo(c, r)
			})
			// Cleanups run last first: the held handler is released
			// before the target waits for its handlers.
			t.Cleanup(release)
			cfg := oneListener(tg.Addr(), "127.0.0.1:0")
			cfg.Splice.Disabled = !tc.splice
			cfg.ApplyDefaults()
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			cur := runServer(t, cfg, Options{IdleAfter: 20 * time.Millisecond})
			addr := cur.addrs[0].String()

			const streams = 12
			results := make([]echoStream, streams)
			var wg sync.WaitGroup
			starts := map[uint64]time.Time{}
			for i := range streams {
				c := dial(t, "tcp", addr)
				data := randomBytes(t, 128<<10+i*4099)
				pause := 20 * time.Millisecond
				if i%4 == 0 {
					pause = 150 * time.Millisecond // parks between chunks
				}
				wg.Add(1)
				go runEchoStream(c, data, 4<<10, pause, &results[i], &wg)
			}
			// One client half-closed before the handovers, its echo
			// still owed: the up direction is gone, down is held.
			half := dial(t, "tcp", addr)
			half.Write([]byte("half"))
			half.CloseWrite()

			waitfor.True(t, "every connection set up", func() bool { return cur.Stats().Active == streams+1 })
			cur.mu.Lock()
			for c := range cur.conns {
				starts[c.id] = c.start
			}
			cur.mu.Unlock()

			var lines []map[string]any // closing lines of the predecessors
			for round := 1; round <= 3; round++ {
				// Some bytes move between the handovers, and some streams
				// park: wait for both.
				moved := cur.ListenerStats()[0].BytesFromClient
				parks := cur.Stats().Parks
				waitfor.True(t, "bytes to move and a direction to park", func() bool {
					return cur.ListenerStats()[0].BytesFromClient > moved && cur.Stats().Parks > parks
				})
				var next *testServer
				if err := cur.Upgrade(context.Background(), inProcess(t, cfg, &next, false)); err != nil {
					t.Fatalf("upgrade %d: %v", round, err)
				}
				if err := cur.wait(t); !errors.Is(err, ErrHandedOver) {
					t.Fatalf("upgrade %d: predecessor Run = %v, want ErrHandedOver", round, err)
				}
				lines = append(lines, cur.logs.closed()...)
				cur = next
				cur.mu.Lock()
				for c := range cur.conns {
					if !c.start.Equal(starts[c.id]) {
						t.Errorf("upgrade %d: conn %d starts at %s, was %s", round, c.id, c.start, starts[c.id])
					}
				}
				cur.mu.Unlock()
				if got := cur.Stats().Upgrades; got != uint64(round) {
					t.Fatalf("upgrade %d: Upgrades = %d", round, got)
				}
			}
			release()
			b, _ := io.ReadAll(half)
			if string(b) != "half" {
				t.Errorf("half-closed client got %q back", b)
			}
			wg.Wait()
			for i, r := range results {
				if r.err != nil || r.got != r.sent {
					t.Errorf("stream %d: %v; hash match %v", i, r.err, r.got == r.sent)
				}
			}
			waitfor.True(t, "every closing line", func() bool { return len(lines)+len(cur.logs.closed()) >= streams+1 })
			lines = append(lines, cur.logs.closed()...)
			seen := map[float64]bool{}
			for _, l := range lines {
				if l["reason"] != "closed" || seen[l["conn"].(float64)] {
					t.Errorf("closing line %v: not clean, or a second one", l)
				}
				seen[l["conn"].(float64)] = true
			}
			st := cur.Stats()
			if st.CarriedOver < 3 || st.Upgrades != 3 || st.Accepted != streams+1 {
				t.Errorf("stats after 3 upgrades: %+v", st)
			}
			if got := cur.ListenerStats()[0].BytesFromClient; got < int64(streams*128<<10) {
				t.Errorf("bytes from clients %d: counts from before the handovers were lost", got)
			}
			cur.cancel()
			if err := cur.wait(t); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestHandoverRollback fails a handover before and after the successor
// adopted the sockets: the server resumes every held direction and
// accepts again, and nothing is lost.
func TestHandoverRollback(t *testing.T) {
	for _, tc := range []struct {
		name    string
		handoff func(t *testing.T, cfg *conf.Config) Handoff
		want    string
	}{
		{"successor never starts", func(*testing.T, *conf.Config) Handoff {
			return func(context.Context, *Snapshot) error { return errors.New("exec: no such file") }
		}, "exec: no such file"},
		{"successor gives up after adopting", func(t *testing.T, cfg *conf.Config) Handoff {
			var next *testServer
			return inProcess(t, cfg, &next, true)
		}, "the successor gave up"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tg := testtarget.New(t, testtarget.V2, testtarget.Echo)
			cfg := oneListener(tg.Addr(), "127.0.0.1:0")
			cfg.ApplyDefaults()
			rs := runServer(t, cfg, Options{IdleAfter: 20 * time.Millisecond})
			addr := rs.addrs[0].String()
			const streams = 6
			results := make([]echoStream, streams)
			var wg sync.WaitGroup
			for i := range streams {
				wg.Add(1)
				go runEchoStream(dial(t, "tcp", addr), randomBytes(t, 48<<10), 4<<10, 20*time.Millisecond, &results[i], &wg)
			}
			waitfor.True(t, "every connection set up", func() bool { return rs.Stats().Active == streams })
			err := rs.Upgrade(context.Background(), tc.handoff(t, cfg))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Upgrade = %v, want %q", err, tc.want)
			}
			if got := rs.Stats().UpgradeFailures; got != 1 {
				t.Errorf("UpgradeFailures = %d", got)
			}
			// Accepting again: a new connection is served.
			late := dial(t, "tcp", addr)
			late.Write([]byte("late"))
			late.CloseWrite()
			if b, _ := io.ReadAll(late); string(b) != "late" {
				t.Errorf("after the rollback a new connection got %q", b)
			}
			wg.Wait()
			for i, r := range results {
				if r.err != nil || r.got != r.sent {
					t.Errorf("stream %d: %v; hash match %v", i, r.err, r.got == r.sent)
				}
			}
			rs.logs.waitClosed(t, streams+1)
			rs.cancel()
			if err := rs.wait(t); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestFreezeTimeout: a target that stops reading leaves bytes in flight
// in a pipe, which must not be dropped or handed over; the upgrade fails
// and the bytes are delivered once the target reads again.
func TestFreezeTimeout(t *testing.T) {
	release := make(chan struct{})
	got := make(chan []byte, 1)
	tg := testtarget.New(t, testtarget.V2, func(c *net.TCPConn, r *bufio.Reader) {
		<-release
		b, _ := io.ReadAll(r)
		got <- b
	})
	cfg := oneListener(tg.Addr(), "127.0.0.1:0")
	cfg.ApplyDefaults()
	rs := runServer(t, cfg, Options{FreezeTimeout: 300 * time.Millisecond})
	c := dial(t, "tcp", rs.addrs[0].String())
	data := randomBytes(t, 32<<20)
	wrote := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		c.CloseWrite()
		wrote <- err
	}()
	// Wait until the pump is stuck writing: the target advertises a zero
	// window, which lasts until it reads, and the up direction holds a
	// pipe, which it does only with bytes in it.
	waitfor.True(t, "the proxy to stall on the target with bytes in a pipe", func() bool {
		return zeroWindow(t, rs.Server) && rs.Stats().Splice.PipesInUse > 0
	})
	err := rs.Upgrade(context.Background(), func(context.Context, *Snapshot) error {
		t.Error("handed over with bytes in flight")
		return errors.New("unexpected")
	})
	if err == nil || !strings.Contains(err.Error(), "directions still delivering bytes in flight") {
		t.Fatalf("Upgrade = %v", err)
	}
	close(release)
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if b := testtarget.Recv(t, got); !bytes.Equal(b, data) {
		t.Fatalf("target got %d bytes, want the %d sent, intact", len(b), len(data))
	}
	rs.cancel()
	if err := rs.wait(t); err != nil {
		t.Fatal(err)
	}
}

// zeroWindow reports whether the target of srv's one connection
// advertises a zero receive window.
func zeroWindow(t *testing.T, srv *Server) bool {
	t.Helper()
	var tc stream
	for _, c := range srv.tracked() {
		c.mu.Lock()
		tc = c.tc
		c.mu.Unlock()
	}
	if tc == nil {
		return false
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var info *unix.TCPInfo
	rc.Control(func(fd uintptr) { info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) })
	if err != nil {
		t.Fatal(err)
	}
	return info.Snd_wnd == 0
}

// lateListener hands each accepted connection to the accept loop only
// once a freeze has set its deadline: the connection is accepted just as
// a handover begins, before any setup could have started.
type lateListener struct {
	*net.TCPListener
	accepted chan struct{} // one value per connection held back
	frozen   chan struct{} // closed by the first SetDeadline
	once     sync.Once
}

func (l *lateListener) Accept() (net.Conn, error) {
	c, err := l.TCPListener.Accept()
	if err != nil {
		return nil, err
	}
	l.accepted <- struct{}{}
	<-l.frozen
	return c, nil
}

func (l *lateListener) SetDeadline(t time.Time) error {
	l.once.Do(func() { close(l.frozen) })
	return l.TCPListener.SetDeadline(t)
}

// TestHandoverDuringAccept: a connection accepted as the freeze begins is
// part of the snapshot, and the successor serves it.
func TestHandoverDuringAccept(t *testing.T) {
	tg := testtarget.New(t, testtarget.V2, testtarget.Echo)
	cfg := oneListener(tg.Addr(), "127.0.0.1:0")
	cfg.ApplyDefaults()
	late := &lateListener{accepted: make(chan struct{}, 1), frozen: make(chan struct{})}
	rs := runServer(t, cfg, Options{
		Listen: func(ctx context.Context, a netip.AddrPort) (net.Listener, error) {
			ln, err := socket.Listen(ctx, a)
			if err != nil {
				return nil, err
			}
			late.TCPListener = ln.(*net.TCPListener)
			return late, nil
		},
	})
	c := dial(t, "tcp", rs.addrs[0].String())
	c.Write([]byte("accepted as the freeze began"))
	<-late.accepted

	var next *testServer
	if err := rs.Upgrade(context.Background(), inProcess(t, cfg, &next, false)); err != nil {
		t.Fatal(err)
	}
	if err := rs.wait(t); !errors.Is(err, ErrHandedOver) {
		t.Fatalf("predecessor Run = %v, want ErrHandedOver", err)
	}
	if got := next.Stats().CarriedOver; got != 1 {
		t.Errorf("CarriedOver = %d, want the connection accepted during the freeze", got)
	}
	c.CloseWrite()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := io.ReadAll(c); err != nil || string(b) != "accepted as the freeze began" {
		t.Fatalf("echo through the successor: %q, %v", b, err)
	}
	next.cancel()
	if err := next.wait(t); err != nil {
		t.Fatal(err)
	}
}
