package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net"
	"sync"
	"testing"

	"github.com/bmpproxy/bmpproxy/internal/bmpcheck"
	"github.com/bmpproxy/bmpproxy/internal/testtarget"
	"github.com/bmpproxy/bmpproxy/internal/waitfor"
)

// bmpCollector is a collector on a fixed loopback address that keeps what
// each session carried after its PROXY v2 header, and can be stopped and
// started again on the same address: a collector that restarts.
type bmpCollector struct {
	t    *testing.T
	addr string
	mu   sync.Mutex
	ln   net.Listener // nil while stopped
	tg   *testtarget.Target
	// sessions are the bytes of each accepted connection, in order.
	sessions [][]byte
}

func newBMPCollector(t *testing.T) *bmpCollector {
	c := &bmpCollector{t: t, addr: "127.0.0.1:0"}
	c.start()
	return c
}

// start listens on c's address, the same after the first start.
func (c *bmpCollector) start() {
	c.t.Helper()
	ln, err := net.Listen("tcp", c.addr)
	if err != nil {
		c.t.Fatal(err)
	}
	c.mu.Lock()
	c.ln, c.addr = ln, ln.Addr().String()
	c.mu.Unlock()
	c.tg = testtarget.NewOn(c.t, ln, testtarget.V2, func(conn *net.TCPConn, r *bufio.Reader) {
		c.mu.Lock()
		i := len(c.sessions)
		c.sessions = append(c.sessions, nil)
		c.mu.Unlock()
		buf := make([]byte, 64<<10)
		for {
			n, err := r.Read(buf)
			c.mu.Lock()
			c.sessions[i] = append(c.sessions[i], buf[:n]...)
			c.mu.Unlock()
			if err != nil {
				return
			}
		}
	})
}

// stop closes the listener and every connection: dials are refused until
// start.
func (c *bmpCollector) stop() {
	c.mu.Lock()
	ln := c.ln
	c.ln = nil
	c.mu.Unlock()
	ln.Close()
	c.tg.CloseConns()
}

// session returns the bytes of the i-th session so far.
func (c *bmpCollector) session(i int) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	if i >= len(c.sessions) {
		return nil
	}
	return append([]byte(nil), c.sessions[i]...)
}

func (c *bmpCollector) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.sessions)
}

// holds reports whether the i-th session parses, as far as it has come,
// to want.
func (c *bmpCollector) holds(i int, want *bmpcheck.State) bool {
	got, err := bmpcheck.Parse(bmpcheck.Whole(c.session(i)))
	return err == nil && got.Equal(want)
}

// resyncRouters is the part of GET /routers a fan-out session with resync
// shows.
type resyncRouters struct {
	Routers []struct {
		Router string `json:"router"`
		State  string `json:"state"`
		Since  string `json:"connected_since"`
		Legs   []struct {
			Target  string `json:"target"`
			State   string `json:"state"`
			Replays *int   `json:"replays"`
		} `json:"legs"`
		Resync *struct {
			State  string `json:"state"`
			Peers  int    `json:"peers"`
			Routes int    `json:"routes"`
		} `json:"resync"`
	} `json:"routers"`
}

func getRouters(t *testing.T, admin string) resyncRouters {
	t.Helper()
	_, body := httpGet(t, admin+"/routers")
	var rr resyncRouters
	if err := json.Unmarshal([]byte(body), &rr); err != nil {
		t.Fatalf("/routers: %v\n%s", err, body)
	}
	return rr
}

// resyncConfig is a config with an admin listener and one BMP listener,
// "routers", with resync and a leg to each of a and b, a the primary.
func resyncConfig(t *testing.T, a, b *bmpCollector) string {
	t.Helper()
	return writeConfig(t, t.TempDir(), fmt.Sprintf(`
admin: "127.0.0.1:0"
listeners:
  - name: routers
    listen: "127.0.0.1:0"
    bmp: true
    resync: true
    targets:
      - target: %q
      - target: %q
`, a.addr, b.addr))
}

// TestResyncCollectorRestart runs the binary with two collectors and
// resync: one collector restarts mid-session, and is down while the
// router sends on. Once back it holds exactly the state of the whole
// stream, per the independent parser, while the router's session is the
// one TCP connection throughout; /routers and /metrics say so.
func TestResyncCollectorRestart(t *testing.T) {
	msgs := bmpcheck.Generate(bmpcheck.GenConfig{})
	third := len(msgs) / 3
	parts := [][]byte{bmpcheck.Encode(msgs[:third]), bmpcheck.Encode(msgs[third : 2*third]), bmpcheck.Encode(msgs[2*third:])}
	states := make([]*bmpcheck.State, len(parts))
	var stream []byte
	for i, p := range parts {
		stream = append(stream, p...)
		var err error
		if states[i], err = bmpcheck.Parse(stream); err != nil {
			t.Fatal(err)
		}
	}
	want := states[2]

	a, b := newBMPCollector(t), newBMPCollector(t)
	path := resyncConfig(t, a, b)
	p := start(t, 1, "--config", path)
	admin := "http://" + p.waitLog(t, "admin listening", 1)[0]["addr"].(string)
	router := dialT(t, "tcp", listenerAddrs(p)["routers"])
	me := router.LocalAddr().String()

	router.Write(parts[0])
	waitfor.Within(t, binaryWait, "both collectors to hold the first third", func() bool {
		return a.holds(0, states[0]) && b.holds(0, states[0])
	})
	rr := getRouters(t, admin)
	if len(rr.Routers) != 1 || rr.Routers[0].Router != me || rr.Routers[0].State != "connected" {
		t.Fatalf("/routers %+v: want the router %s, connected", rr, me)
	}
	since := rr.Routers[0].Since

	// b goes down; the router sends on; the proxy tries b and is refused.
	b.stop()
	p.waitLog(t, "leg closed", 1)
	router.Write(parts[1])
	p.waitLog(t, "leg not connected; retrying with backoff", 1)
	waitfor.Within(t, binaryWait, "a to hold two thirds", func() bool { return a.holds(0, states[1]) })

	// b comes back: it is replayed what it missed, then the live stream.
	b.start()
	waitfor.Within(t, binaryWait, "b's second session to hold two thirds, replayed", func() bool {
		return b.count() == 2 && b.holds(1, states[1])
	})
	router.Write(parts[2])
	waitfor.Within(t, binaryWait, "both collectors to hold the whole stream", func() bool {
		return len(a.session(0)) == len(stream) && b.holds(1, want)
	})
	if got := a.session(0); sha256.Sum256(got) != sha256.Sum256(stream) || a.count() != 1 {
		t.Errorf("collector a: %d sessions, the first %d bytes; want one, with the %d bytes the router sent", a.count(), len(got), len(stream))
	}
	if got, err := bmpcheck.Parse(b.session(1)); err != nil || !got.Equal(want) {
		t.Errorf("collector b after its restart: %v; differs from the stream: %s", err, want.Diff(got))
	}

	// One router session throughout.
	if n := len(p.logs.match("router connected")); n != 1 {
		t.Errorf("%d router connected lines, want 1", n)
	}
	if n := len(p.logs.match("connection closed")); n != 0 {
		t.Errorf("%d closing lines; want the router's session open", n)
	}
	rr = getRouters(t, admin)
	if len(rr.Routers) != 1 {
		t.Fatalf("/routers %+v: want one session", rr)
	}
	r := rr.Routers[0]
	if r.Router != me || r.State != "connected" || r.Since != since {
		t.Errorf("/routers entry %s, %s, since %s; want %s connected since %s", r.Router, r.State, r.Since, me, since)
	}
	if len(r.Legs) != 2 || r.Legs[0].Target != a.addr || r.Legs[1].Target != b.addr || r.Legs[0].State != "live" || r.Legs[1].State != "live" {
		t.Errorf("/routers legs %+v: want %s and %s, both live", r.Legs, a.addr, b.addr)
	}
	if r.Resync == nil || r.Resync.State != "keeping" || r.Resync.Routes != want.RouteCount() || r.Resync.Peers != want.PeerCount() {
		t.Errorf("/routers resync %+v: want keeping, %d peers, %d routes", r.Resync, want.PeerCount(), want.RouteCount())
	}

	_, m := httpGet(t, admin+"/metrics")
	leg := func(name, target string) float64 {
		return metric(m, fmt.Sprintf(`bmpproxy_%s{listener="routers",target="%s"}`, name, target))
	}
	for _, c := range []struct {
		sample string
		got    float64
		want   float64
	}{
		{"leg_replays_total a", leg("leg_replays_total", a.addr), 0},
		{"leg_replays_total b", leg("leg_replays_total", b.addr), 1},
		{"leg_reconnects_total b", leg("leg_reconnects_total", b.addr), 1},
		{"legs_up a", leg("legs_up", a.addr), 1},
		{"legs_up b", leg("legs_up", b.addr), 1},
		{"resync_routes", metric(m, `bmpproxy_resync_routes{listener="routers"}`), float64(want.RouteCount())},
		{"resync_stopped_total", metric(m, `bmpproxy_resync_stopped_total{listener="routers"}`), 0},
	} {
		if c.got != c.want {
			t.Errorf("/metrics %s = %v, want %v", c.sample, c.got, c.want)
		}
	}
	if v := leg("leg_dial_failures_total", b.addr); v < 1 {
		t.Errorf("/metrics leg_dial_failures_total b = %v; want the refused dials while b was down", v)
	}
	if v := metric(m, "bmpproxy_resync_memory_bytes"); v <= 0 {
		t.Errorf("/metrics resync_memory_bytes = %v; want the kept state's size", v)
	}

	t.Run("routers shows each leg's replays", func(t *testing.T) {
		legs := getRouters(t, admin).Routers[0].Legs
		if len(legs) != 2 || legs[0].Replays == nil || legs[1].Replays == nil {
			t.Fatalf("/routers legs %+v: want two, each with its replays", legs)
		}
		if *legs[0].Replays != 0 || *legs[1].Replays != 1 {
			t.Errorf("/routers legs' replays %d and %d, want 0 and 1", *legs[0].Replays, *legs[1].Replays)
		}
	})
}
