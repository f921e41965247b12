package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/bmpproxy/bmpproxy/internal/testtarget"
	"github.com/bmpproxy/bmpproxy/internal/waitfor"
	proxyproto "github.com/pires/go-proxyproto"
)

// sink is a collector that records, per connection, its PROXY header and
// the SHA-256 of its payload up to EOF.
type sink struct {
	*testtarget.Target
	mu   sync.Mutex
	sums map[[32]byte]int
	got  chan []byte // first bytes of each payload, up to 64
}

func newSink(t *testing.T, mode testtarget.Header) *sink {
	s := &sink{sums: map[[32]byte]int{}, got: make(chan []byte, 64)}
	s.Target = testtarget.New(t, mode, func(c *net.TCPConn, r *bufio.Reader) {
		h := sha256.New()
		var head bytes.Buffer
		io.Copy(io.MultiWriter(h, &limitWriter{&head, 64}), r)
		var sum [32]byte
		copy(sum[:], h.Sum(nil))
		s.mu.Lock()
		s.sums[sum]++
		s.mu.Unlock()
		s.got <- head.Bytes()
	})
	return s
}

func (s *sink) count(sum [32]byte) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sums[sum]
}

type limitWriter struct {
	w *bytes.Buffer
	n int
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if room := l.n - l.w.Len(); room > 0 {
		l.w.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

// writeConfig writes a config file and returns its path.
func writeConfig(t *testing.T, dir, body string) string {
	t.Helper()
	path := filepath.Join(dir, "bmpproxy.yaml")
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// listenerAddrs maps listener names to the addresses they logged.
func listenerAddrs(p *proc) map[string]string {
	m := map[string]string{}
	for _, l := range p.logs.match("listening") {
		m[l["listener"].(string)] = l["addr"].(string)
	}
	return m
}

// TestConfigExample runs the shipped OpenBMP example, moved to loopback
// ports and test collectors, and pushes traffic through two mappings: only
// the BMP one carries a header (for bmp-inner, the second hop;
// TestShippedCollectors runs both hops).
func TestConfigExample(t *testing.T) {
	example, err := os.ReadFile("../../examples/openbmp-aio.yaml")
	if err != nil {
		t.Fatal(err)
	}
	bmp, plain := newSink(t, testtarget.V2), newSink(t, testtarget.None)
	body := regexp.MustCompile(`"\[::\]:\d+"`).ReplaceAllString(string(example), `"127.0.0.1:0"`)
	body = strings.ReplaceAll(body, "openbmp-aio:5001", bmp.Addr()) // bmp-inner, which reads v2
	body = regexp.MustCompile(`openbmp-aio:\d+`).ReplaceAllString(body, plain.Addr())
	body = regexp.MustCompile(`(?m)^admin:.*$`).ReplaceAllString(body, "")
	// The example only allows documentation prefixes; the test dials from loopback.
	body = strings.Replace(body, "- 2001:db8::/32", "- 127.0.0.0/8", 1)
	path := writeConfig(t, t.TempDir(), body)

	p := start(t, 5, "--config", path)
	addrs := listenerAddrs(p)
	if len(addrs) != 5 {
		t.Fatalf("listeners %v, want the example's five", addrs)
	}
	// The BMP listener checks that a router speaks BMP: send it FRR's
	// captured Initiation.
	frr, err := os.ReadFile("../../bmp/testdata/frr-8.4-bmp-initiation.bin")
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]struct {
		sink    *sink
		payload []byte
	}{"bmp": {bmp, frr}, "rest": {plain, []byte("GET / HTTP/1.0\r\n\r\n")}} {
		c := dialT(t, "tcp", addrs[name])
		c.Write(want.payload)
		c.CloseWrite()
		got := testtarget.Recv(t, want.sink.got)
		if !bytes.HasPrefix(want.payload, got) || len(got) == 0 {
			t.Fatalf("%s: collector got %q", name, got)
		}
	}
	if h := bmp.Headers(); len(h) != 1 {
		t.Fatalf("bmp collector saw %d headers", len(h))
	} else if hdr, err := proxyproto.Read(bufio.NewReader(bytes.NewReader(h[0]))); err != nil || !strings.HasPrefix(hdr.SourceAddr.String(), "127.0.0.1:") {
		t.Fatalf("bmp header %v, %v", hdr, err)
	}
	if h := plain.Headers(); len(h) != 1 || len(h[0]) != 0 {
		t.Fatalf("rest collector saw headers %q; want none", h)
	}
	p.stop(t, syscall.SIGTERM, 10*time.Second)
}

// TestReloadSIGHUP reloads while 20 connections stream: every stream
// finishes intact on its old target, an added listener serves, a removed
// one refuses, a changed target applies to new connections, and an invalid
// file changes nothing.
func TestReloadSIGHUP(t *testing.T) {
	dir := t.TempDir()
	col1, col2 := newSink(t, testtarget.V2), newSink(t, testtarget.V2)
	path := writeConfig(t, dir, `
log:
  level: debug
listeners:
  - name: bmp
    bmp: false # the streams are random bytes
    listen: "127.0.0.1:0"
    target: "`+col1.Addr()+`"
  - name: old
    listen: "127.0.0.1:0"
    target: "`+col1.Addr()+`"
`)
	p := start(t, 2, "--config", path)
	addrs := listenerAddrs(p)

	const streams = 20
	payload := randomPayload(512<<10, 7)
	sum := sha256.Sum256(payload)
	var conns []*net.TCPConn
	for i := 0; i < streams; i++ {
		c := dialT(t, "tcp", addrs["bmp"])
		if _, err := c.Write(payload[:len(payload)/2]); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	// A connection the proxy has not accepted yet is new to it: wait
	// until all of them are in, so that all keep the old target.
	p.waitLog(t, "accepted", streams)

	writeConfig(t, dir, `
listeners:
  - name: bmp
    bmp: false
    listen: "`+addrs["bmp"]+`"
    target: "`+col2.Addr()+`"
  - name: new
    listen: "127.0.0.1:0"
    target: "`+col2.Addr()+`"
`)
	p.cmd.Process.Signal(syscall.SIGHUP)
	p.waitLog(t, "reload applied", 1)

	for _, c := range conns {
		if _, err := c.Write(payload[len(payload)/2:]); err != nil {
			t.Fatal(err)
		}
		c.CloseWrite()
	}
	waitfor.Within(t, binaryWait, "every stream to finish on the old target", func() bool { return col1.count(sum) == streams })
	for _, l := range p.waitLog(t, "connection closed", streams) {
		if l["reason"] != "closed" || l["bytes_from_client"] != float64(len(payload)) {
			t.Fatalf("closing line %v", l)
		}
	}

	// The changed target applies to new connections.
	c := dialT(t, "tcp", addrs["bmp"])
	c.Write([]byte("after reload"))
	c.CloseWrite()
	if got := testtarget.Recv(t, col2.got); string(got) != "after reload" {
		t.Fatalf("bmp after reload delivered %q", got)
	}
	// The added listener serves.
	var addrNew string
	for _, l := range p.logs.match("listening") {
		if l["listener"] == "new" {
			addrNew = l["addr"].(string)
		}
	}
	c = dialT(t, "tcp", addrNew)
	c.Write([]byte("to new"))
	c.CloseWrite()
	if got := testtarget.Recv(t, col2.got); string(got) != "to new" {
		t.Fatalf("new listener delivered %q", got)
	}
	// The removed one refuses.
	if c, err := net.DialTimeout("tcp", addrs["old"], 2*time.Second); err == nil {
		c.Close()
		t.Fatal("removed listener still accepts")
	}

	// An invalid file changes nothing, and says why.
	writeConfig(t, dir, "listeners:\n  - name: bmp\n    listen: \"127.0.0.1:1\"\n    proxy_protocl: v2\n")
	p.cmd.Process.Signal(syscall.SIGHUP)
	fail := p.waitLog(t, "reload failed; the running configuration stays in force", 1)[0]
	if !strings.Contains(fail["error"].(string), `line 4: listeners[0]: unknown field "proxy_protocl"`) {
		t.Fatalf("reload failure line %v", fail)
	}
	c = dialT(t, "tcp", addrs["bmp"])
	c.Write([]byte("still serving"))
	c.CloseWrite()
	if got := testtarget.Recv(t, col2.got); string(got) != "still serving" {
		t.Fatalf("after a failed reload bmp delivered %q", got)
	}
	if st := p.stop(t, syscall.SIGTERM, 10*time.Second); st.ExitCode() != 0 {
		t.Fatalf("exit %v", st)
	}
}

// TestReloadKeepsOverrides runs a file with its log settings overridden
// from the environment: the listener that inherits the top-level ones
// takes the override, the one with its own keeps them, before a SIGHUP
// reload and after it.
func TestReloadKeepsOverrides(t *testing.T) {
	dir := t.TempDir()
	col := newSink(t, testtarget.V2)
	body := func(inherits, own string) string {
		return `
log: {level: info, format: console}
listeners:
  - name: inherits
    listen: "` + inherits + `"
    target: "` + col.Addr() + `"
  - name: own
    listen: "` + own + `"
    target: "` + col.Addr() + `"
    log: {level: info, format: console}
`
	}
	path := writeConfig(t, dir, body("127.0.0.1:0", "127.0.0.1:0"))
	cmd := exec.Command(binPath(), "--config", path)
	cmd.Env = append(os.Environ(), "BMPPROXY_LOG_LEVEL=debug", "BMPPROXY_LOG_FORMAT=json")
	p := startCmd(t, 2, cmd)
	start := p.logs.match("starting")[0]
	if o, _ := start["overrides"].(map[string]any); o["log.level"] != "BMPPROXY_LOG_LEVEL=debug" || o["log.format"] != "BMPPROXY_LOG_FORMAT=json" || len(o) != 2 {
		t.Fatalf("start line %v, want the overrides and their variables", start)
	}
	addrs := listenerAddrs(p)

	// round sends one connection through each listener, the n-th time:
	// inherits logs it in JSON at debug, own in console at info only.
	round := func(n int) {
		t.Helper()
		for _, name := range []string{"inherits", "own"} {
			c := dialT(t, "tcp", addrs[name])
			c.Write([]byte(name))
			c.CloseWrite()
			if got := testtarget.Recv(t, col.got); string(got) != name {
				t.Fatalf("%s delivered %q", name, got)
			}
		}
		// Each closing line comes after the connection's accepted line.
		p.waitRaw(t, n, " INF connection closed ", "listener=own")
		p.waitLog(t, "connection closed", n)
		for _, l := range p.logs.all() {
			if _, isConn := l["conn"]; isConn && l["listener"] == "own" {
				t.Fatalf("a JSON connection line from own, whose format is console: %v", l)
			}
		}
		if accepted := p.logs.match("accepted"); len(accepted) != n {
			t.Fatalf("%d accepted lines after %d rounds, want one a round from inherits: %v", len(accepted), n, accepted)
		}
		if dbg := p.waitRaw(t, 0, " DBG ", "listener=own"); len(dbg) > 0 {
			t.Fatalf("debug lines from own, whose level is info: %q", dbg)
		}
	}
	round(1)

	// The reloaded file says the same: the override stays in force.
	writeConfig(t, dir, body(addrs["inherits"], addrs["own"])+"# reloaded\n")
	p.cmd.Process.Signal(syscall.SIGHUP)
	p.waitLog(t, "reload applied", 1)
	round(2)
	p.stop(t, syscall.SIGTERM, 10*time.Second)
}

// TestReloadErrorConsole checks that a reload of a file with several
// problems, in the console format, shows each problem on a line of its
// own, not a literal \n.
func TestReloadErrorConsole(t *testing.T) {
	dir := t.TempDir()
	col := newSink(t, testtarget.V2)
	path := writeConfig(t, dir, "listeners:\n  - listen: \"127.0.0.1:0\"\n    target: \""+col.Addr()+"\"\n")
	cmd := exec.Command(binPath(), "--config", path, "--log-format", "console")
	p := startCmd(t, 0, cmd)
	p.waitRaw(t, 1, " INF listening ", "listener=default")

	writeConfig(t, dir, "listeners:\n  - listen: [::]:5000\n    target: collector\n    proxy_protocl: v2\n")
	p.cmd.Process.Signal(syscall.SIGHUP)
	last := `    line 4: listeners[0]: unknown field "proxy_protocl"`
	p.waitRaw(t, 1, last)
	out := p.logs.String()
	i := strings.Index(out, " ERR reload failed; the running configuration stays in force ")
	if i < 0 {
		t.Fatalf("no reload failure line:\n%s", out)
	}
	got := strings.SplitN(out[i:], "\n", 5)[:4]
	want := []string{
		` ERR reload failed; the running configuration stays in force error="config ` + path + `:"`,
		`    line 2: quote IPv6 addresses: "[::]:5000", not [::]:5000 (YAML reads [ ] as a list)`,
		`    line 3: listeners[0].target: missing port in "collector"`,
		last + ` (known: accept_proxy_from, allow, bmp, bmp_timeout, connect_timeout, dial, listen, log, max_connections, name, pool, proxy_header_timeout, proxy_protocol, resync, target, targets, tcp_keepalive, transparent_mark)`,
	}
	if !slices.Equal(got, want) {
		t.Fatalf("reload failure:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if strings.Contains(out, `\n`) {
		t.Fatalf("a literal \\n in the console log:\n%s", out)
	}

	// The next reload, of a good file, is logged in the same format.
	writeConfig(t, dir, "listeners:\n  - listen: \"127.0.0.1:0\"\n    target: \""+col.Addr()+"\"\n")
	p.cmd.Process.Signal(syscall.SIGHUP)
	p.waitRaw(t, 1, " INF reload applied")
	p.stop(t, syscall.SIGTERM, 10*time.Second)
}

// TestInboundPolicyBinary runs allow and accept_proxy_from in the real
// binary: a source outside allow is refused without the collector seeing a
// connection, a trusted proxy's header is passed on with the original
// client, and a spoofed header reaches no collector as a header.
func TestInboundPolicyBinary(t *testing.T) {
	col := newSink(t, testtarget.V2)
	path := writeConfig(t, t.TempDir(), `
listeners:
  - name: routers-only
    listen: "127.0.0.1:0"
    target: "`+col.Addr()+`"
    allow: [203.0.113.0/24]
  - name: behind-lb
    listen: "127.0.0.1:0"
    target: "`+col.Addr()+`"
    accept_proxy_from: [127.0.0.1]
  - name: plain
    listen: "127.0.0.1:0"
    target: "`+col.Addr()+`"
`)
	p := start(t, 3, "--config", path)
	addrs := listenerAddrs(p)
	spoof := proxyproto.HeaderProxyFromAddrs(2,
		&net.TCPAddr{IP: net.ParseIP("2001:db8::7"), Port: 1234},
		&net.TCPAddr{IP: net.ParseIP("2001:db8::53"), Port: 5000})
	spoofed, err := spoof.Format()
	if err != nil {
		t.Fatal(err)
	}
	closedWithNothing := func(c net.Conn) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if b, err := io.ReadAll(c); len(b) > 0 || err != nil && !strings.Contains(err.Error(), "reset") {
			t.Fatalf("read %q, %v; want the connection closed", b, err)
		}
	}
	headerSource := func(i int) string {
		t.Helper()
		h, err := proxyproto.Read(bufio.NewReader(bytes.NewReader(col.Headers()[i])))
		if err != nil {
			t.Fatal(err)
		}
		return h.SourceAddr.(*net.TCPAddr).IP.String()
	}

	// Outside allow: refused, the collector sees nothing.
	c := dialT(t, "tcp", addrs["routers-only"])
	c.Write([]byte("\x03bmp"))
	closedWithNothing(c)
	refused := p.waitLog(t, "connection closed", 1)[0]
	if refused["reason"] != "refused" || !strings.Contains(refused["error"].(string), "allow list") {
		t.Fatalf("closing line %v", refused)
	}

	// A trusted proxy's header: the collector sees the original client.
	c = dialT(t, "tcp", addrs["behind-lb"])
	c.Write(append(append([]byte(nil), spoofed...), "\x03from the lb"...))
	c.CloseWrite()
	if got := testtarget.Recv(t, col.got); string(got) != "\x03from the lb" {
		t.Fatalf("payload through the lb %q", got)
	}
	if src := headerSource(0); src != "2001:db8::7" {
		t.Fatalf("collector saw client %s, want 2001:db8::7", src)
	}

	// The same header from an untrusted source is refused.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	nc, err := d.Dial("tcp", addrs["behind-lb"])
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.Write(spoofed)
	closedWithNothing(nc)

	// Where no header is expected, a header is payload after our own.
	c = dialT(t, "tcp", addrs["plain"])
	c.Write(spoofed)
	c.CloseWrite()
	if got := testtarget.Recv(t, col.got); !bytes.HasPrefix(spoofed, got) {
		t.Fatalf("plain listener delivered %q, want the client's bytes as payload", got)
	}
	if n := len(col.Headers()); n != 2 {
		t.Fatalf("collector saw %d connections, want 2", n)
	}
	if src := headerSource(1); src != "127.0.0.1" {
		t.Fatalf("plain listener's header names %s, want the real client 127.0.0.1", src)
	}
	p.stop(t, syscall.SIGTERM, 10*time.Second)
}

// TestBMPNotFromName: a listener named bmp that does not say bmp: true
// gets no pre-check, so bytes that are not BMP reach the collector.
func TestBMPNotFromName(t *testing.T) {
	col := newSink(t, testtarget.V2)
	path := writeConfig(t, t.TempDir(), `
listeners:
  - name: bmp
    listen: "127.0.0.1:0"
    target: "`+col.Addr()+`"
`)
	p := start(t, 1, "--config", path)
	const payload = "GET / HTTP/1.0\r\n\r\n"
	c := dialT(t, "tcp", p.addr(0))
	c.Write([]byte(payload))
	c.CloseWrite()
	if got := testtarget.Recv(t, col.got); string(got) != payload {
		t.Fatalf("collector got %q, want %q", got, payload)
	}
	p.stop(t, syscall.SIGTERM, 10*time.Second)
}

// TestDrainTimeoutZero: drain_timeout: 0s in a file means what
// --drain-timeout 0s means, closing open connections at once on SIGTERM;
// left out, either way, it is 5s.
func TestDrainTimeoutZero(t *testing.T) {
	for _, tc := range []struct {
		name string
		file string // the config file's top level; the flags if empty
		flag []string
		want string
	}{
		{name: "file 0s", file: "drain_timeout: 0s\n", want: "0s"},
		{name: "flag 0s", flag: []string{"--drain-timeout", "0s"}, want: "0s"},
		{name: "file unset", file: "log: {level: info}\n", want: "5s"},
		{name: "flag unset", want: "5s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tg := testtarget.New(t, testtarget.V2, testtarget.Echo)
			args := append([]string{"--listen", "127.0.0.1:0", "--target", tg.Addr()}, tc.flag...)
			if tc.file != "" {
				args = []string{"--config", writeConfig(t, t.TempDir(),
					tc.file+"listeners:\n  - listen: \"127.0.0.1:0\"\n    target: \""+tg.Addr()+"\"\n")}
			}
			p := start(t, 1, args...)
			idle := dialT(t, "tcp", p.addr(0))
			waitfor.Within(t, binaryWait, "the connection proxied", func() bool { return len(tg.Headers()) == 1 })
			if tc.want == "0s" {
				p.cmd.Process.Signal(syscall.SIGTERM)
			} else {
				idle.Close() // nothing to wait for: the drain ends at once
				p.waitLog(t, "connection closed", 1)
				p.cmd.Process.Signal(syscall.SIGTERM)
			}
			if got := p.waitLog(t, "stopped accepting; draining", 1)[0]["drain_timeout"]; got != tc.want {
				t.Fatalf("drain_timeout %v, want %s", got, tc.want)
			}
			if tc.want == "0s" {
				if l := p.waitLog(t, "connection closed", 1)[0]; l["reason"] != "shutdown" {
					t.Fatalf("closing line %v, want reason shutdown", l)
				}
			}
			select {
			case <-p.done:
			case <-time.After(10 * time.Second):
				t.Fatal("bmpproxy did not exit")
			}
			if code := p.state.ExitCode(); code != 0 {
				t.Fatalf("exit status %d", code)
			}
		})
	}
}

// TestTargetFlags: each --target is a leg, in order, with the listener's
// --proxy-protocol wherever it comes; $BMPPROXY_TARGET holds several,
// comma-separated; --resync and --resync-memory set their keys.
func TestTargetFlags(t *testing.T) {
	leg := func(host string, port uint16, pp conf.ProxyProtocol) conf.Leg {
		return conf.Leg{Target: conf.Target{Host: host, Port: port}, ProxyProtocol: pp, Buffer: conf.DefaultBuffer, TransparentMark: 1}
	}
	cfg := loadArgs(t, []string{"--listen", "127.0.0.1:0", "--target", "[2001:db8::20]:5000", "--proxy-protocol", "none",
		"--target", "pmacct:5000", "--bmp", "--resync", "--resync-memory", "64MiB"})
	l := cfg.Listeners[0]
	want := []conf.Leg{leg("2001:db8::20", 5000, conf.ProxyNone), leg("pmacct", 5000, conf.ProxyNone)}
	if !reflect.DeepEqual(l.Targets, want) || l.Target != want[0].Target || !l.Resync || cfg.ResyncMemory != 64*conf.MiB {
		t.Fatalf("flags gave target %v, targets %+v, resync %v, resync memory %s; want targets %+v", l.Target, l.Targets, l.Resync, cfg.ResyncMemory, want)
	}

	t.Setenv("BMPPROXY_TARGET", "pmacct:5000, [2001:db8::20]:5000")
	cfg = loadArgs(t, []string{"--listen", "127.0.0.1:0"})
	l = cfg.Listeners[0]
	want = []conf.Leg{leg("pmacct", 5000, conf.ProxyV2), leg("2001:db8::20", 5000, conf.ProxyV2)}
	if !reflect.DeepEqual(l.Targets, want) || l.Resync || cfg.ResyncMemory != conf.DefaultResyncMemory {
		t.Fatalf("$BMPPROXY_TARGET gave targets %+v, resync %v, resync memory %s; want targets %+v", l.Targets, l.Resync, cfg.ResyncMemory, want)
	}
}
