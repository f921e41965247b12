// Package transparent tests proxy_protocol: transparent in network
// namespaces the test creates: a router, a proxy host ("hub") and a
// collector, so that nothing in the machine's own namespace changes. It
// needs root and skips without it.
package transparent

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bmpproxy/bmpproxy/bmp"
	"github.com/bmpproxy/bmpproxy/internal/netns"
	"github.com/bmpproxy/bmpproxy/internal/waitfor"
)

// The topology's addresses (package netns).
const (
	hubR6, rtr6 = netns.HubR6, netns.Rtr6
	hubR4, rtr4 = netns.HubR4, netns.Rtr4
	hubC6, col6 = netns.HubC6, netns.Col6
	hubC4, col4 = netns.HubC4, netns.Col4
)

type topo struct {
	t             *testing.T
	hub, rtr, col string
	bin           string
}

func sh(t *testing.T, args ...string) string {
	t.Helper()
	return netns.Sh(t, args...)
}

func setup(t *testing.T) *topo {
	if os.Geteuid() != 0 {
		t.Skip("needs root: it creates network namespaces")
	}
	for _, bin := range []string{"ip", "nft", "setpriv"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s is missing", bin)
		}
	}
	n := netns.New(t, "bxt")
	tp := &topo{t: t, hub: n.Hub, rtr: n.Rtr, col: n.Col}
	tp.bin = filepath.Join(t.TempDir(), "bmpproxy")
	build := exec.Command("go", "build", "-o", tp.bin, "./cmd/bmpproxy")
	build.Dir = "../.."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return tp
}

// inNS runs f on a thread in network namespace ns (netns.Do).
func inNS(t *testing.T, ns string, f func()) {
	t.Helper()
	netns.Do(t, ns, f)
}

// echoServer listens in ns on addr, echoes each connection and records
// the peer address the kernel reports (getpeername).
type echoServer struct {
	ln    net.Listener
	mu    sync.Mutex
	peers []string
	wg    sync.WaitGroup
}

func newEcho(t *testing.T, ns, addr string) *echoServer {
	e := &echoServer{}
	inNS(t, ns, func() {
		var err error
		if e.ln, err = net.Listen("tcp", addr); err != nil {
			t.Error(err)
		}
	})
	if e.ln == nil {
		t.FailNow()
	}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		for {
			c, err := e.ln.Accept()
			if err != nil {
				return
			}
			e.mu.Lock()
			e.peers = append(e.peers, c.RemoteAddr().String())
			e.mu.Unlock()
			e.wg.Add(1)
			go func() {
				defer e.wg.Done()
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	t.Cleanup(func() { e.ln.Close(); e.wg.Wait() })
	return e
}

func (e *echoServer) lastPeer() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.peers) == 0 {
		return ""
	}
	return e.peers[len(e.peers)-1]
}

// proxyProc is bmpproxy running in the hub.
type proxyProc struct {
	out    *bytes.Buffer // stdout and stderr; read it only after exited is closed, or via lines
	mu     sync.Mutex
	exited chan struct{}
	err    error // valid once exited is closed
}

func (p *proxyProc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

func (p *proxyProc) String() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// startProxy runs bmpproxy in the hub with cfg, through prefix (such as
// setpriv). Cleanup kills it and waits.
func (tp *topo) startProxy(cfg string, prefix ...string) *proxyProc {
	path := filepath.Join(tp.t.TempDir(), "bmpproxy.yaml")
	os.WriteFile(path, []byte(cfg), 0o644)
	args := append([]string{"netns", "exec", tp.hub}, prefix...)
	args = append(args, tp.bin, "--config", path)
	cmd := exec.Command("ip", args...)
	p := &proxyProc{out: new(bytes.Buffer), exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p, p
	if err := cmd.Start(); err != nil {
		tp.t.Fatal(err)
	}
	go func() { p.err = cmd.Wait(); close(p.exited) }()
	tp.t.Cleanup(func() { cmd.Process.Kill(); <-p.exited })
	return p
}

const proxyConfig = `
listeners:
  - name: v6
    listen: "[%[1]s]:5000"
    target: "[%[2]s]:7000"
    proxy_protocol: transparent
  - name: v4
    listen: "%[3]s:5000"
    target: "%[4]s:7000"
    proxy_protocol: transparent
  - name: pmbmpd-v6
    listen: "[%[1]s]:5001"
    target: "[%[2]s]:7001"
    proxy_protocol: transparent
    bmp: true
  - name: pmbmpd-v4
    listen: "%[3]s:5001"
    target: "%[4]s:7001"
    proxy_protocol: transparent
    bmp: true
`

// TestTransparentNamespace: a router reaches the hub's bmpproxy over IPv6
// and IPv4; the collector, in its own namespace, sees the router's own
// address and port, and bytes come back intact.
func TestTransparentNamespace(t *testing.T) {
	tp := setup(t)
	sh(t, "ip", "netns", "exec", tp.hub, tp.bin, "transparent-setup", "--case", "namespace", "--apply")
	// Idempotent: a second --apply adds nothing.
	sh(t, "ip", "netns", "exec", tp.hub, tp.bin, "transparent-setup", "--case", "namespace", "--apply")
	if n := strings.Count(sh(t, "ip", "-n", tp.hub, "rule", "show"), "fwmark 0x2 lookup 100"); n != 1 {
		t.Fatalf("%d fwmark rules after two --apply, want 1", n)
	}
	echo6 := newEcho(t, tp.col, "["+col6+"]:7000")
	echo4 := newEcho(t, tp.col, col4+":7000")
	out := tp.startProxy(fmt.Sprintf(proxyConfig, hubR6, col6, hubR4, col4))
	waitListening(t, out, 4)

	for _, tc := range []struct {
		proxy, src string
		echo       *echoServer
	}{{"[" + hubR6 + "]:5000", rtr6, echo6}, {hubR4 + ":5000", rtr4, echo4}} {
		local := tp.roundTrip(tc.proxy, 1<<20, out)
		if peer, want := tc.echo.lastPeer(), local; peer != want {
			t.Fatalf("collector saw %s, want the router's own %s", peer, want)
		}
	}

	t.Run("pmbmpd without PROXY parsing", func(t *testing.T) { pmbmpdSees(t, tp) })

	// Unrelated traffic from the collector still flows: it reaches the
	// router directly, not through bmpproxy.
	direct := newEcho(t, tp.rtr, "["+rtr6+"]:7100")
	inNS(t, tp.col, func() {
		c, err := net.DialTimeout("tcp", "["+rtr6+"]:7100", 5*time.Second)
		if err != nil {
			t.Errorf("collector → router, unrelated: %v", err)
			return
		}
		c.Write([]byte("hi"))
		c.(*net.TCPConn).CloseWrite()
		b, _ := io.ReadAll(c)
		c.Close()
		if string(b) != "hi" {
			t.Errorf("unrelated echo %q", b)
		}
	})
	if p := direct.lastPeer(); !strings.HasPrefix(p, "["+col6+"]:") {
		t.Errorf("unrelated connection arrived from %s, want the collector's own address", p)
	}

	sh(t, "ip", "netns", "exec", tp.hub, tp.bin, "transparent-setup", "--case", "namespace", "--remove")
	for _, args := range [][]string{{"ip", "-n", tp.hub, "rule", "show"}, {"ip", "-n", tp.hub, "-6", "rule", "show"}, {"ip", "netns", "exec", tp.hub, "nft", "list", "ruleset"}} {
		if got := sh(t, args...); strings.Contains(got, "fwmark 0x2") || strings.Contains(got, "bmpproxy") {
			t.Errorf("%s after --remove:\n%s", strings.Join(args, " "), got)
		}
	}
}

// TestTransparentNeedsNetAdmin: without CAP_NET_ADMIN, startup fails with
// an error that names the capability and the listener.
func TestTransparentNeedsNetAdmin(t *testing.T) {
	tp := setup(t)
	p := tp.startProxy(fmt.Sprintf(proxyConfig, hubR6, col6, hubR4, col4),
		"setpriv", "--bounding-set", "-net_admin", "--inh-caps", "-net_admin")
	select {
	case <-p.exited:
		// Reported once, as the "cannot start" log line (JSON, so its
		// quotes are escaped).
		out := p.String()
		if p.err == nil || !strings.Contains(out, `"error":"listener \"v6\": proxy_protocol transparent needs CAP_NET_ADMIN`) ||
			!strings.Contains(out, `"message":"cannot start"`) {
			t.Fatalf("exit %v, output:\n%s", p.err, p)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("still running without CAP_NET_ADMIN:\n%s", p)
	}
}

func waitListening(t *testing.T, p *proxyProc, n int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for strings.Count(p.String(), `"message":"listening"`) < n {
		select {
		case <-p.exited:
			t.Fatalf("bmpproxy exited: %v\n%s", p.err, p)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("bmpproxy did not start:\n%s", p)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestTwoHop: the hub's bmpproxy sends PROXY v2 to a second bmpproxy in
// the collector's namespace, which trusts only the hub, and dials the
// collector on its own loopback from the router's address. Nothing is
// changed in the hub's routing. A spoofed header from anyone else never
// becomes a transparent dial.
func TestTwoHop(t *testing.T) {
	tp := setup(t)
	echo6 := newEcho(t, tp.col, "[::1]:7000")
	echo4 := newEcho(t, tp.col, "127.0.0.1:7000")

	// The inner bmpproxy sets up its own namespace's loopback routing.
	inner := tp.startIn(tp.col, `
transparent_setup: loopback
transparent_table: 123
listeners:
  - name: inner
    listen: "[::]:6000"
    target: "127.0.0.1:7000" # IPv6 routers are dialed to [::1]:7000
    accept_proxy_from: [`+hubC6+`, `+hubC4+`]
    proxy_protocol: transparent
`)
	waitListening(t, inner, 1)
	outer := tp.startProxy(`
listeners:
  - name: v6
    listen: "[` + hubR6 + `]:5000"
    target: "[` + col6 + `]:6000"
  - name: v4
    listen: "` + hubR4 + `:5000"
    target: "` + col4 + `:6000"
`)
	waitListening(t, outer, 2)

	for _, tc := range []struct {
		proxy string
		echo  *echoServer
	}{{"[" + hubR6 + "]:5000", echo6}, {hubR4 + ":5000", echo4}} {
		local := tp.roundTrip(tc.proxy, 256<<10, outer, inner)
		if peer, want := tc.echo.lastPeer(), local; peer != want {
			t.Fatalf("collector saw %s, want the router's own %s", peer, want)
		}
	}
	if rules := sh(t, "ip", "-n", tp.hub, "rule", "show"); strings.Contains(rules, "lookup 1") {
		t.Fatalf("the hub's routing changed:\n%s", rules)
	}

	// A header from the collector's own namespace, which is not trusted.
	before := len(echo6.peers) + len(echo4.peers)
	inNS(t, tp.col, func() {
		c, err := net.DialTimeout("tcp", "["+col6+"]:6000", 5*time.Second)
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		c.Write([]byte("PROXY TCP6 2001:db8:41::66 2001:db8:41::1 1234 5000\r\nspoof"))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if b, _ := io.ReadAll(c); len(b) != 0 {
			t.Errorf("spoofed connection got %q", b)
		}
	})
	waitfor.True(t, "the refusal line", func() bool { return strings.Contains(inner.String(), "not in accept_proxy_from") })
	echo6.mu.Lock()
	after := len(echo6.peers)
	echo6.mu.Unlock()
	echo4.mu.Lock()
	after += len(echo4.peers)
	echo4.mu.Unlock()
	if after != before {
		t.Fatalf("a spoofed header reached the collector")
	}
	sh(t, "ip", "netns", "exec", tp.col, tp.bin, "transparent-setup", "--case", "loopback", "--table", "123", "--remove")
	if rules := sh(t, "ip", "-n", tp.col, "rule", "show") + sh(t, "ip", "-n", tp.col, "-6", "rule", "show"); strings.Contains(rules, "lookup 123") {
		t.Fatalf("rules left after --remove:\n%s", rules)
	}
}

// startIn runs bmpproxy in namespace ns with cfg.
func (tp *topo) startIn(ns, cfg string) *proxyProc {
	hub := tp.hub
	tp.hub = ns
	defer func() { tp.hub = hub }()
	return tp.startProxy(cfg)
}

// pmbmpdSees runs pmacct's pmbmpd in the collector namespace, with no
// PROXY parsing, and checks that it records each router under its own
// address.
func pmbmpdSees(t *testing.T, tp *topo) {
	if _, err := exec.LookPath("pmbmpd"); err != nil {
		t.Skip("pmbmpd is missing (apt-get install pmacct)")
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "pmbmpd.conf")
	log := filepath.Join(dir, "pmbmpd.json")
	os.WriteFile(conf, []byte("daemonize: false\nbmp_daemon_ip: ::\nbmp_daemon_port: 7001\n"+
		"bmp_daemon_msglog_file: "+log+"\nbmp_daemon_msglog_output: json\n"), 0o644)
	cmd := exec.Command("ip", "netns", "exec", tp.col, "pmbmpd", "-f", conf)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitfor.True(t, "pmbmpd to listen", func() bool {
		out, _ := exec.Command("ip", "netns", "exec", tp.col, "ss", "-Hltn", "sport = :7001").Output()
		return len(bytes.TrimSpace(out)) > 0
	})
	for _, tc := range []struct{ proxy, name, want string }{
		{"[" + hubR6 + "]:5001", "edge-v6", rtr6},
		{hubR4 + ":5001", "edge-v4", rtr4},
	} {
		// Dialed in the router's namespace; the socket stays there. It
		// is open until pmbmpd has logged the router.
		var c net.Conn
		var err error
		inNS(t, tp.rtr, func() { c, err = net.DialTimeout("tcp", tc.proxy, 5*time.Second) })
		if err != nil {
			t.Fatal(err)
		}
		c.Write(bmp.EncodeInitiation("test router", tc.name))
		waitfor.True(t, "pmbmpd to log "+tc.name, func() bool {
			b, _ := os.ReadFile(log)
			for _, line := range strings.Split(string(b), "\n") {
				if strings.Contains(line, `"bmp_init_info_sysname": "`+tc.name+`"`) {
					if !strings.Contains(line, `"bmp_router": "`+tc.want+`"`) {
						t.Fatalf("pmbmpd recorded %s as:\n%s", tc.name, line)
					}
					return true
				}
			}
			return false
		})
		c.Close()
	}
}

// TestTransparentWithoutReturnRoute: with no return routing, the
// collector's SYN-ACK never comes back; the dial times out, and the
// closing line says what is missing.
func TestTransparentWithoutReturnRoute(t *testing.T) {
	tp := setup(t)
	newEcho(t, tp.col, "["+col6+"]:7000")
	p := tp.startProxy(`
listeners:
  - name: v6
    listen: "[` + hubR6 + `]:5000"
    target: "[` + col6 + `]:7000"
    proxy_protocol: transparent
    connect_timeout: 1s
`)
	waitListening(t, p, 1)
	inNS(t, tp.rtr, func() {
		c, err := net.DialTimeout("tcp", "["+hubR6+"]:5000", 5*time.Second)
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		io.ReadAll(c)
	})
	waitfor.True(t, "the dial failure", func() bool { return strings.Contains(p.String(), `"reason":"dial failed"`) })
	if !strings.Contains(p.String(), "set up the return routing with 'bmpproxy transparent-setup'") {
		t.Fatalf("no hint in:\n%s", p)
	}
}

// roundTrip connects from the router namespace to proxy, sends size
// random bytes, half-closes, and checks that the same bytes come back. It
// returns the router-side address of the connection. logs are printed on
// failure.
func (tp *topo) roundTrip(proxy string, size int, logs ...*proxyProc) string {
	t := tp.t
	t.Helper()
	var c net.Conn
	inNS(t, tp.rtr, func() {
		var err error
		if c, err = net.DialTimeout("tcp", proxy, 5*time.Second); err != nil {
			t.Error(err)
		}
	})
	if c == nil {
		t.FailNow()
	}
	defer c.Close()
	payload := make([]byte, size)
	rand.Read(payload)
	go func() { c.Write(payload); c.(*net.TCPConn).CloseWrite() }()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("%s: %d bytes back (%v), want the %d sent\nlogs: %v", proxy, len(got), err, size, logs)
	}
	return c.LocalAddr().String()
}
