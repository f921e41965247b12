package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"

	"github.com/bmpproxy/bmpproxy/internal/bmpcheck"
	"github.com/bmpproxy/bmpproxy/internal/testtarget"
	"github.com/bmpproxy/bmpproxy/internal/waitfor"
	proxyproto "github.com/pires/go-proxyproto"
)

// passiveRouter is a router that waits to be dialed: it listens on addr
// and, on each connection, sends stream and reads until EOF.
type passiveRouter struct {
	addr  netip.AddrPort
	mu    sync.Mutex
	peers []netip.AddrPort // bmpproxy's end of each connection
}

func newPassiveRouter(t *testing.T, listen string, stream []byte) *passiveRouter {
	t.Helper()
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	r := &passiveRouter{addr: ln.Addr().(*net.TCPAddr).AddrPort()}
	var wg sync.WaitGroup
	var conns sync.Map
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r.mu.Lock()
			r.peers = append(r.peers, c.RemoteAddr().(*net.TCPAddr).AddrPort())
			r.mu.Unlock()
			conns.Store(c, true)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.Write(stream)
				io.Copy(io.Discard, c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		conns.Range(func(c, _ any) bool { c.(net.Conn).Close(); return true })
		wg.Wait()
	})
	return r
}

func (r *passiveRouter) connections() []netip.AddrPort {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]netip.AddrPort(nil), r.peers...)
}

// headerCollector reads each session's PROXY v2 header itself and keeps
// what followed it by the source the header names.
type headerCollector struct {
	tg   *testtarget.Target
	mu   sync.Mutex
	dsts map[netip.AddrPort]netip.AddrPort // by source
	data map[netip.AddrPort][]byte         // by source
	n    int                               // sessions
}

func newHeaderCollector(t *testing.T) *headerCollector {
	c := &headerCollector{dsts: map[netip.AddrPort]netip.AddrPort{}, data: map[netip.AddrPort][]byte{}}
	c.tg = testtarget.New(t, testtarget.None, func(_ *net.TCPConn, br *bufio.Reader) {
		h, err := proxyproto.Read(br)
		if err != nil {
			t.Errorf("collector: %v", err)
			return
		}
		src, dst, ok := h.TCPAddrs()
		if !ok || h.Version != 2 {
			t.Errorf("collector: header %+v, want v2 over TCP", h)
			return
		}
		from := src.AddrPort()
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		c.mu.Lock()
		c.n++
		c.dsts[from] = dst.AddrPort()
		c.mu.Unlock()
		buf := make([]byte, 64<<10)
		for {
			n, err := br.Read(buf)
			c.mu.Lock()
			c.data[from] = append(c.data[from], buf[:n]...)
			c.mu.Unlock()
			if err != nil {
				return
			}
		}
	})
	return c
}

func (c *headerCollector) from(src netip.AddrPort) (dst netip.AddrPort, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dsts[src], bytes.Clone(c.data[src])
}

// TestDialRouter runs the binary with a listener that dials two routers,
// on 127.0.0.1 and [::1], and a third that is not up: both sessions reach
// the collector with the router's address and port as the header's
// source, bmpproxy's end of the socket as its destination, and the exact
// bytes; the unreachable router is logged and counted; /metrics and
// /routers say so.
func TestDialRouter(t *testing.T) {
	stream := bmpcheck.Encode(bmpcheck.Generate(bmpcheck.GenConfig{Prefixes: 200}))
	v4 := newPassiveRouter(t, "127.0.0.1:0", stream)
	v6 := newPassiveRouter(t, "[::1]:0", stream)
	down := testtarget.Refusing(t)
	col := newHeaderCollector(t)
	path := writeConfig(t, t.TempDir(), fmt.Sprintf(`
admin: "127.0.0.1:0"
listeners:
  - name: routers
    dial: [%q, %q, %q]
    bmp: true
    target: %q
`, v4.addr, v6.addr, down, col.tg.Addr()))
	p := start(t, 0, "--config", path)
	admin := "http://" + p.waitLog(t, "admin listening", 1)[0]["addr"].(string)
	if n := len(p.waitLog(t, "dialing a router that waits to be dialed", 3)); n != 3 {
		t.Errorf("%d dialing lines, want 3", n)
	}

	for _, r := range []*passiveRouter{v4, v6} {
		var dst netip.AddrPort
		waitfor.Within(t, binaryWait, fmt.Sprintf("the session from %s with its %d bytes", r.addr, len(stream)), func() bool {
			var data []byte
			dst, data = col.from(r.addr)
			return bytes.Equal(data, stream)
		})
		if peers := r.connections(); len(peers) != 1 || dst != peers[0] {
			t.Errorf("router %s: connections from %v, header destination %s; want one, from the header's destination", r.addr, peers, dst)
		}
	}
	l := p.waitLog(t, "router not reached; dialing again with backoff", 1)[0]
	if l["router"] != down || l["listener"] != "routers" || l["level"] != "warn" {
		t.Errorf("not reached line %v: want a warning for %s", l, down)
	}

	_, m := httpGet(t, admin+"/metrics")
	if v := metric(m, `bmpproxy_router_dials_total{listener="routers"}`); v != 2 {
		t.Errorf("bmpproxy_router_dials_total = %v, want 2\n%s", v, m)
	}
	if v := metric(m, `bmpproxy_router_dial_failures_total{listener="routers"}`); v < 1 {
		t.Errorf("bmpproxy_router_dial_failures_total = %v, want the failed dials of %s", v, down)
	}
	rr := getRouters(t, admin)
	seen := map[string]string{}
	for _, r := range rr.Routers {
		seen[r.Router] = r.State
	}
	if len(rr.Routers) != 2 || seen[v4.addr.String()] != "connected" || seen[v6.addr.String()] != "connected" {
		t.Errorf("/routers %+v: want %s and %s connected", rr, v4.addr, v6.addr)
	}

	if st := p.stop(t, syscall.SIGTERM, binaryWait); !st.Success() {
		t.Fatalf("bmpproxy exited %v", st)
	}
	closed := map[any]bool{}
	for _, l := range p.logs.match("connection closed") {
		closed[l["client"]] = true
	}
	if len(closed) != 2 || !closed[v4.addr.String()] || !closed[v6.addr.String()] {
		t.Errorf("closing lines for %v, want one for each router", closed)
	}
}
