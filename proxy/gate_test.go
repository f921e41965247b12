package proxy

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/bmpproxy/bmpproxy/internal/testtarget"
	"github.com/bmpproxy/bmpproxy/internal/waitfor"
	proxyproto "github.com/pires/go-proxyproto"
)

// collector is a target that records each connection's header and
// payload up to EOF.
type collector struct {
	*testtarget.Target
	got chan []byte // payload of each connection
}

func newCollector(t *testing.T) *collector {
	c := &collector{got: make(chan []byte, 16)}
	c.Target = testtarget.New(t, testtarget.V2, func(conn *net.TCPConn, r *bufio.Reader) {
		b, _ := io.ReadAll(r)
		c.got <- b
	})
	return c
}

// dialFrom connects to addr from the loopback address src.
func dialFrom(t *testing.T, src, addr string) *net.TCPConn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// expectClosed checks that the proxy closes c without sending anything.
func expectClosed(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if len(b) > 0 || err != nil && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("read %q, %v; want the connection closed", b, err)
	}
}

func v2Header(t *testing.T, src, dst string) []byte {
	t.Helper()
	h := proxyproto.HeaderProxyFromAddrs(2, net.TCPAddrFromAddrPort(netip.MustParseAddrPort(src)), net.TCPAddrFromAddrPort(netip.MustParseAddrPort(dst)))
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func prefixes(ss ...string) []netip.Prefix {
	var ps []netip.Prefix
	for _, s := range ss {
		ps = append(ps, netip.MustParsePrefix(s))
	}
	return ps
}

// TestInboundPolicy covers allow and accept_proxy_from: who gets through,
// with which client address in the header the collector reads, and who is
// refused before the collector sees a connection.
func TestInboundPolicy(t *testing.T) {
	const trusted, untrusted = "127.0.0.1", "127.0.0.2"
	tests := []struct {
		name   string
		allow  []netip.Prefix
		apf    []netip.Prefix
		from   string
		send   []byte
		refuse string // substring of the closing line's error; empty: proxied
		client string // the client the collector must see
		via    bool   // the closing line names the trusted proxy
		rest   string // payload the collector must see
	}{
		{name: "allowed", allow: prefixes("127.0.0.0/8"), from: untrusted, send: []byte("\x03bmp"), client: untrusted, rest: "\x03bmp"},
		{name: "not allowed", allow: prefixes("203.0.113.0/24"), from: untrusted, send: []byte("\x03bmp"), refuse: "allow list"},
		{
			name: "trusted v2", apf: prefixes(trusted + "/32"), from: trusted,
			send:   append(v2Header(t, "[2001:db8::7]:1234", "[2001:db8::53]:5000"), "\x03bmp"...),
			client: "2001:db8::7", via: true, rest: "\x03bmp",
		},
		{
			name: "trusted v1", apf: prefixes(trusted + "/32"), from: trusted,
			send:   []byte("PROXY TCP4 198.51.100.7 198.51.100.53 1234 5000\r\n\x03bmp"),
			client: "198.51.100.7", via: true, rest: "\x03bmp",
		},
		{
			name: "trusted, original client not allowed", apf: prefixes(trusted + "/32"), allow: prefixes("2001:db8:1::/48"), from: trusted,
			send: append(v2Header(t, "[2001:db8::7]:1234", "[2001:db8::53]:5000"), "\x03bmp"...), refuse: "allow list",
		},
		{name: "trusted, garbage header", apf: prefixes(trusted + "/32"), from: trusted, send: []byte("PROXY TCP9 x y 1 2\r\n"), refuse: "cannot read trusted proxy's PROXY header"},
		{name: "trusted, truncated v2", apf: prefixes(trusted + "/32"), from: trusted, send: v2Header(t, "198.51.100.7:1", "198.51.100.8:2")[:20], refuse: "cannot read trusted proxy's PROXY header"},
		{name: "trusted, no header", apf: prefixes(trusted + "/32"), from: trusted, send: []byte("\x03bmp"), refuse: "trusted proxy sent no PROXY header"},
		{
			name: "untrusted sends a v2 header", apf: prefixes(trusted + "/32"), from: untrusted,
			send: v2Header(t, "[2001:db8::7]:1234", "[2001:db8::53]:5000"), refuse: "PROXY header from a source not in accept_proxy_from",
		},
		{name: "untrusted sends a v1 header", apf: prefixes(trusted + "/32"), from: untrusted, send: []byte("PROXY TCP4 198.51.100.7 198.51.100.53 1 2\r\n"), refuse: "not in accept_proxy_from"},
		{name: "untrusted sends BMP", apf: prefixes(trusted + "/32"), from: untrusted, send: []byte("\x03bmp"), client: untrusted, rest: "\x03bmp"},
		{name: "untrusted sends a P", apf: prefixes(trusted + "/32"), from: untrusted, send: []byte("PROXZ"), client: untrusted, rest: "PROXZ"},
		{
			name: "no accept_proxy_from: a header is payload", from: untrusted,
			send:   v2Header(t, "[2001:db8::7]:1234", "[2001:db8::53]:5000"),
			client: untrusted, rest: string(v2Header(t, "[2001:db8::7]:1234", "[2001:db8::53]:5000")),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			col := newCollector(t)
			cfg := oneListener(col.Addr(), "127.0.0.1:0")
			cfg.Listeners[0].Allow = tt.allow
			cfg.Listeners[0].AcceptProxyFrom = tt.apf
			ts := startServer(t, cfg, nil)
			c := dialFrom(t, tt.from, ts.addrs[0].String())
			if _, err := c.Write(tt.send); err != nil {
				t.Fatal(err)
			}
			c.CloseWrite()
			line := ts.logs.waitClosed(t, 1)[0]
			if tt.refuse != "" {
				expectClosed(t, c)
				if line["reason"] != "refused" || !strings.Contains(line["error"].(string), tt.refuse) {
					t.Fatalf("closing line %v; want refused with %q", line, tt.refuse)
				}
				if n := len(col.Headers()); n != 0 {
					t.Fatalf("the collector saw %d connections; want none", n)
				}
				if st := ts.Stats(); st.Refused != 1 {
					t.Fatalf("stats %+v", st)
				}
				return
			}
			var got []byte
			select {
			case got = <-col.got:
			case <-time.After(10 * time.Second):
				t.Fatal("the collector got nothing")
			}
			if string(got) != tt.rest {
				t.Fatalf("collector payload %q, want %q", got, tt.rest)
			}
			h, err := proxyproto.Read(bufio.NewReader(bytes.NewReader(col.Headers()[0])))
			if err != nil {
				t.Fatal(err)
			}
			src, _, _ := h.TCPAddrs()
			if src.AddrPort().Addr().Unmap().String() != tt.client {
				t.Fatalf("header source %v, want %s", src, tt.client)
			}
			if ap, err := netip.ParseAddrPort(line["client"].(string)); err != nil || ap.Addr().String() != tt.client {
				t.Errorf("closing line client %v, want %s", line["client"], tt.client)
			}
			if _, ok := line["via"]; ok != tt.via {
				t.Errorf("closing line via %v, want present: %v", line["via"], tt.via)
			}
			if line["bytes_from_client"] != float64(len(tt.rest)) {
				t.Errorf("bytes_from_client %v, want %d", line["bytes_from_client"], len(tt.rest))
			}
		})
	}
}

// TestSilentUntrustedClient checks that on a listener expecting headers
// from trusted proxies, a client that waits for the server to speak first
// is proxied once the header timeout has passed.
func TestSilentUntrustedClient(t *testing.T) {
	tg := testtarget.New(t, testtarget.V2, func(c *net.TCPConn, r *bufio.Reader) {
		c.Write([]byte("greeting"))
		io.Copy(io.Discard, r)
	})
	cfg := oneListener(tg.Addr(), "127.0.0.1:0")
	cfg.Listeners[0].AcceptProxyFrom = prefixes("203.0.113.0/24")
	cfg.Listeners[0].ProxyHeaderTimeout = conf.MinProxyHeaderTimeout
	ts := startServer(t, cfg, nil)
	c := dial(t, "tcp", ts.addrs[0].String())
	start := time.Now()
	buf := make([]byte, 8)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "greeting" {
		t.Fatalf("read %q, %v", buf, err)
	}
	if d := time.Since(start); d < conf.MinProxyHeaderTimeout-100*time.Millisecond {
		t.Fatalf("greeting after %s; the header timeout is %s", d, conf.MinProxyHeaderTimeout)
	}
}

// TestMaxConnections checks that a listener at its bound refuses at once,
// and accepts again when a connection ends.
func TestMaxConnections(t *testing.T) {
	tg := testtarget.New(t, testtarget.V2, testtarget.Echo)
	cfg := oneListener(tg.Addr(), "127.0.0.1:0")
	cfg.Listeners[0].MaxConnections = 2
	ts := startServer(t, cfg, nil)
	echo := func(c *net.TCPConn) {
		t.Helper()
		c.Write([]byte("ping"))
		b := make([]byte, 4)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatalf("echo: %v", err)
		}
	}
	a, b := dial(t, "tcp", ts.addrs[0].String()), dial(t, "tcp", ts.addrs[0].String())
	echo(a)
	echo(b)
	third := dial(t, "tcp", ts.addrs[0].String())
	expectClosed(t, third)
	if st := ts.Stats(); st.RefusedLimit != 1 || st.Active != 2 {
		t.Fatalf("stats %+v", st)
	}
	a.Close()
	waitfor.True(t, "a slot to free", func() bool { return ts.Stats().Active == 1 })
	echo(dial(t, "tcp", ts.addrs[0].String()))
}

// TestReload applies a new configuration while connections stream: they
// keep their target and every byte, a new listener serves, a removed one
// refuses, a changed target applies to new connections, and a reload that
// cannot bind keeps the old listener.
func TestReload(t *testing.T) {
	col1, col2 := newCollector(t), newCollector(t)
	t1, _ := conf.ParseTarget(col1.Addr())
	t2, _ := conf.ParseTarget(col2.Addr())
	ap := netip.MustParseAddrPort
	cfg := &conf.Config{Listeners: []conf.Listener{
		{Name: "a", Listen: []netip.AddrPort{ap("127.0.0.1:0")}, Target: t1},
		{Name: "b", Listen: []netip.AddrPort{ap("127.0.0.1:0")}, Target: t1},
	}}
	ts := startServer(t, cfg, nil)
	addrA, addrB := ts.addrs[0].String(), ts.addrs[1].String()

	const streams = 5
	payload := randomBytes(t, 1<<20)
	var conns []*net.TCPConn
	for i := 0; i < streams; i++ {
		c := dial(t, "tcp", addrA)
		c.Write(payload[:len(payload)/2])
		conns = append(conns, c)
	}
	waitfor.True(t, "streams to be set up", func() bool { return ts.Stats().Active == streams })

	next := &conf.Config{Listeners: []conf.Listener{
		{Name: "a", Listen: []netip.AddrPort{ap(addrA)}, Target: t2},
		{Name: "c", Listen: []netip.AddrPort{ap("127.0.0.1:0")}, Target: t2, ProxyProtocol: conf.ProxyV2},
	}}
	next.ApplyDefaults()
	if err := next.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := ts.Reload(context.Background(), next); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	for _, c := range conns {
		c.Write(payload[len(payload)/2:])
		c.CloseWrite()
	}
	for i := 0; i < streams; i++ {
		select {
		case got := <-col1.got:
			if !bytes.Equal(got, payload) {
				t.Fatalf("stream %d: %d bytes that differ", i, len(got))
			}
		case <-time.After(10 * time.Second):
			t.Fatal("streams did not finish on their old target")
		}
	}
	// a now forwards to the new target.
	c := dial(t, "tcp", addrA)
	c.Write([]byte("new"))
	c.CloseWrite()
	if got := testtarget.Recv(t, col2.got); string(got) != "new" {
		t.Fatalf("new connection on a delivered %q", got)
	}
	// b is gone.
	if c, err := net.DialTimeout("tcp", addrB, 2*time.Second); err == nil {
		c.Close()
		t.Fatal("removed listener b still accepts")
	}
	// c serves: find its address in the log.
	var addrC string
	for _, l := range ts.logs.all() {
		if l["message"] == "listening" && l["listener"] == "c" {
			addrC = l["addr"].(string)
		}
	}
	c2 := dial(t, "tcp", addrC)
	c2.Write([]byte("via c"))
	c2.CloseWrite()
	if got := testtarget.Recv(t, col2.got); string(got) != "via c" {
		t.Fatalf("listener c delivered %q", got)
	}

	// A reload whose new address is taken keeps the old listener.
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	bad := &conf.Config{Listeners: []conf.Listener{
		{Name: "a", Listen: []netip.AddrPort{ap(taken.Addr().String())}, Target: t1},
	}}
	bad.ApplyDefaults()
	if err := ts.Reload(context.Background(), bad); err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("Reload onto a taken address = %v", err)
	}
	c3 := dial(t, "tcp", addrA)
	c3.Write([]byte("still a"))
	c3.CloseWrite()
	if got := testtarget.Recv(t, col2.got); string(got) != "still a" {
		t.Fatalf("old listener a after a failed reload delivered %q", got)
	}
	if st := ts.Stats(); st.Reloads != 1 || st.ReloadFailures != 1 {
		t.Fatalf("stats %+v", st)
	}
}
