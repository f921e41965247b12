package proxy

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/bmpproxy/bmpproxy/internal/testtarget"
	"github.com/bmpproxy/bmpproxy/internal/waitfor"
)

// fanListener is a listener on loopback that sends every session to each
// of targets, with a PROXY v2 header each.
func fanListener(t *testing.T, buffer conf.ByteSize, targets ...string) *conf.Config {
	t.Helper()
	l := conf.DefaultListener()
	l.Listen = []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}
	for _, a := range targets {
		tg, err := conf.ParseTarget(a)
		if err != nil {
			t.Fatal(err)
		}
		l.Targets = append(l.Targets, conf.Leg{Target: tg, Buffer: buffer})
	}
	l.Target = l.Targets[0].Target
	return &conf.Config{Listeners: []conf.Listener{l}}
}

// collected is what one collector read after its header.
type collected struct {
	sum [32]byte
	n   int64
}

// legCollector reads the PROXY header, then everything until EOF, and
// reports it on the returned channel; with echo it also writes back
// what it reads.
func legCollector(t *testing.T, echo bool) (*testtarget.Target, <-chan collected) {
	out := make(chan collected, 4)
	tg := testtarget.New(t, testtarget.V2, func(c *net.TCPConn, r *bufio.Reader) {
		h := sha256.New()
		var w io.Writer = h
		if echo {
			w = io.MultiWriter(h, c)
		}
		n, _ := io.Copy(w, r)
		c.CloseWrite()
		var res collected
		copy(res.sum[:], h.Sum(nil))
		res.n = n
		out <- res
	})
	return tg, out
}

// TestFanoutTwoTargets: every byte of a session reaches both collectors,
// each after its own PROXY header that names the router; the primary's
// bytes come back to the router, the other's are dropped; one closing
// line for the session and one per leg.
func TestFanoutTwoTargets(t *testing.T) {
	primary, pgot := legCollector(t, true)
	second, sgot := legCollector(t, true)
	cfg := fanListener(t, conf.DefaultBuffer, primary.Addr(), second.Addr())
	ts := startServer(t, cfg, nil)
	c := dial(t, "tcp", ts.addrs[0].String())
	payload := randomBytes(t, 4<<20)
	want := sha256.Sum256(payload)
	echoed := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(c)
		echoed <- b
	}()
	c.Write(payload)
	c.CloseWrite()
	for name, ch := range map[string]<-chan collected{"primary": pgot, "second": sgot} {
		got := testtarget.Recv(t, ch)
		if got.sum != want || got.n != int64(len(payload)) {
			t.Errorf("%s collector: %d bytes, hash match %v", name, got.n, got.sum == want)
		}
	}
	for name, tg := range map[string]*testtarget.Target{"primary": primary, "second": second} {
		hs := tg.Headers()
		if len(hs) != 1 || !bytes.Contains(hs[0], []byte{127, 0, 0, 1}) {
			t.Errorf("%s collector's headers %x: want one, naming the router 127.0.0.1", name, hs)
		}
	}
	if b := testtarget.Recv(t, echoed); !bytes.Equal(b, payload) {
		t.Errorf("router got %d bytes back, want the primary's echo of %d", len(b), len(payload))
	}
	lines := ts.logs.waitClosed(t, 1)
	if l := lines[0]; l["reason"] != "closed" || l["bytes_from_client"] != float64(len(payload)) || l["bytes_to_client"] != float64(len(payload)) {
		t.Errorf("closing line %v", l)
	}
	waitfor.True(t, "a closing line per leg", func() bool { return ts.logs.count("leg closed") == 2 })
	for _, l := range ts.logs.all() {
		if l["message"] == "leg closed" && (l["reason"] != "closed" || l["bytes_to_collector"] != float64(len(payload)+28)) {
			t.Errorf("leg line %v: want closed, with the header's 28 bytes and the payload", l)
		}
	}
}

// TestFanoutIsolation: a collector that accepts and never reads is cut
// after its buffer, and says so, while the router and the other
// collector run on; without resync it stays down.
func TestFanoutIsolation(t *testing.T) {
	healthy, hgot := legCollector(t, false)
	done := make(chan struct{})
	stuck := testtarget.New(t, testtarget.None, func(c *net.TCPConn, r *bufio.Reader) {
		c.SetReadBuffer(64 << 10)
		<-done // accepts, and never reads
	})
	t.Cleanup(func() { close(done) }) // before the target waits for its handler
	cfg := fanListener(t, conf.DefaultBuffer, healthy.Addr(), stuck.Addr())
	cfg.Listeners[0].Targets[1].Buffer = conf.MinBuffer
	ts := startServer(t, cfg, nil)
	c := dial(t, "tcp", ts.addrs[0].String())
	payload := randomBytes(t, 64<<20)
	wrote := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		c.CloseWrite()
		wrote <- err
	}()
	if err := testtarget.Recv(t, wrote); err != nil {
		t.Fatalf("the router's write: %v", err)
	}
	got := testtarget.Recv(t, hgot)
	if got.n != int64(len(payload)) || got.sum != sha256.Sum256(payload) {
		t.Errorf("healthy collector: %d bytes", got.n)
	}
	var cut map[string]any
	waitfor.True(t, "the stuck leg's closing line", func() bool {
		for _, l := range ts.logs.all() {
			if l["message"] == "leg closed" && l["leg"] == float64(1) {
				cut = l
				return true
			}
		}
		return false
	})
	if cut["reason"] != "lagging" || cut["level"] != "warn" || cut["until"] == nil {
		t.Errorf("stuck leg's line %v: want lagging, at warn, saying it stays down", cut)
	}
}

// TestFanoutPrimaryCutWhileParked: the primary leg's reply direction
// parks (its collector never speaks), then the primary is cut for
// falling behind: the session must still end when the router closes,
// with its closing line. The parked direction of a cut leg is woken
// before its socket is closed, or nothing ever ends it.
func TestFanoutPrimaryCutWhileParked(t *testing.T) {
	done := make(chan struct{})
	stuck := testtarget.New(t, testtarget.None, func(c *net.TCPConn, r *bufio.Reader) {
		c.SetReadBuffer(64 << 10)
		<-done // accepts, and never reads
	})
	t.Cleanup(func() { close(done) })
	healthy, hgot := legCollector(t, false)
	cfg := fanListener(t, conf.DefaultBuffer, stuck.Addr(), healthy.Addr())
	cfg.Listeners[0].Targets[0].Buffer = conf.MinBuffer
	ts := startServer(t, cfg, func(o *Options) { o.IdleAfter = 20 * time.Millisecond })
	c := dial(t, "tcp", ts.addrs[0].String())
	c.Write([]byte("hello"))
	parks := ts.Stats().Parks
	waitfor.True(t, "the quiet directions to park", func() bool { return ts.Stats().Parks >= parks+2 })
	payload := randomBytes(t, 16<<20)
	if _, err := c.Write(payload); err != nil {
		t.Fatal(err)
	}
	waitfor.True(t, "the primary's closing line", func() bool {
		for _, l := range ts.logs.all() {
			if l["message"] == "leg closed" && l["leg"] == float64(0) {
				return true
			}
		}
		return false
	})
	c.CloseWrite()
	got := testtarget.Recv(t, hgot)
	if got.n != int64(len(payload))+5 {
		t.Errorf("healthy collector: %d bytes, want %d", got.n, len(payload)+5)
	}
	ts.logs.waitClosed(t, 1)
}
