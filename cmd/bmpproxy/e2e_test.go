package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bmpproxy/bmpproxy/internal/testtarget"
	"github.com/bmpproxy/bmpproxy/internal/waitfor"
	"github.com/bmpproxy/bmpproxy/splice"
)

// TestHeaderBytes checks the exact header the collector receives from an
// IPv4 and an IPv6 client of one dual-stack [::] socket. The expected bytes
// are spelled out from the PROXY protocol spec (section 2.2).
func TestHeaderBytes(t *testing.T) {
	tg := testtarget.New(t, testtarget.V2, testtarget.Echo)
	p := start(t, 1, "--listen", "[::]:0", "--target", tg.Addr())
	port := p.port(0)
	if !strings.HasPrefix(p.addr(0), "[::]:") {
		t.Fatalf("listening on %s, want [::]", p.addr(0))
	}
	sig := []byte{0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A}
	be16 := func(v int) []byte { return []byte{byte(v >> 8), byte(v)} }

	tests := []struct {
		name, network, host string
		want                func(clientPort int) []byte
	}{
		{
			name: "IPv4 client", network: "tcp4", host: "127.0.0.1",
			want: func(cp int) []byte {
				b := append([]byte{}, sig...)
				b = append(b, 0x21)       // version 2, command PROXY
				b = append(b, 0x11)       // AF_INET, STREAM
				b = append(b, 0x00, 0x0C) // 12 address bytes
				b = append(b, 127, 0, 0, 1)
				b = append(b, 127, 0, 0, 1)
				b = append(b, be16(cp)...)
				return append(b, be16(port)...)
			},
		},
		{
			name: "IPv6 client", network: "tcp6", host: "::1",
			want: func(cp int) []byte {
				loop6 := []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}
				b := append([]byte{}, sig...)
				b = append(b, 0x21)       // version 2, command PROXY
				b = append(b, 0x21)       // AF_INET6, STREAM
				b = append(b, 0x00, 0x24) // 36 address bytes
				b = append(b, loop6...)
				b = append(b, loop6...)
				b = append(b, be16(cp)...)
				return append(b, be16(port)...)
			},
		},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialT(t, tt.network, net.JoinHostPort(tt.host, fmt.Sprint(port)))
			c.Write([]byte("ping"))
			c.CloseWrite()
			if got, _ := io.ReadAll(c); string(got) != "ping" {
				t.Fatalf("echo %q", got)
			}
			want := tt.want(c.LocalAddr().(*net.TCPAddr).Port)
			waitfor.Within(t, binaryWait, "the header", func() bool { return len(tg.Headers()) > i })
			got := tg.Headers()[i]
			if !bytes.Equal(got, want) {
				t.Fatalf("header (%d bytes)\n got % x\nwant % x", len(got), got, want)
			}
			if len(want) != map[string]int{"tcp4": 28, "tcp6": 52}[tt.network] {
				t.Fatalf("expected header is %d bytes", len(want))
			}
		})
	}
}

// randomPayload returns n pseudo-random bytes from a seeded generator.
func randomPayload(n int, seed uint64) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	r.Read(b)
	return b
}

// TestBulkHalfClose sends 64 MiB each way through the binary, with each
// side half-closing first, on the splice path and on the copy fallback.
func TestBulkHalfClose(t *testing.T) {
	const size = 64 << 20
	up := randomPayload(size, 1)
	down := randomPayload(size, 2)
	upSum, downSum := sha256.Sum256(up), sha256.Sum256(down)

	for _, mode := range []struct {
		name   string
		flags  []string
		splice bool
	}{{"splice", nil, true}, {"copy fallback", []string{"--splice=false"}, false}} {
		for _, first := range []string{"client", "server"} {
			t.Run(mode.name+"/"+first+" half-closes first", func(t *testing.T) {
				targetErr := make(chan error, 1)
				tg := testtarget.New(t, testtarget.V2, func(c *net.TCPConn, r *bufio.Reader) {
					readAll := func() error {
						h := sha256.New()
						n, err := io.Copy(h, r)
						if err != nil {
							return err
						}
						if !bytes.Equal(h.Sum(nil), upSum[:]) {
							return fmt.Errorf("target received %d bytes that do not match", n)
						}
						return nil
					}
					var err error
					if first == "server" {
						c.Write(down)
						c.CloseWrite()
						err = readAll()
					} else {
						err = readAll()
						c.Write(down)
						c.CloseWrite()
					}
					targetErr <- err
				})
				p := start(t, 1, append([]string{"--listen", "[::]:0", "--target", tg.Addr()}, mode.flags...)...)
				c := dialT(t, "tcp", fmt.Sprintf("127.0.0.1:%d", p.port(0)))
				readDown := func() {
					h := sha256.New()
					n, err := io.Copy(h, c)
					if err != nil || !bytes.Equal(h.Sum(nil), downSum[:]) {
						t.Fatalf("client received %d bytes (%v) that do not match", n, err)
					}
				}
				if first == "server" {
					readDown() // EOF: the target's FIN came through while we had sent nothing
					c.Write(up)
					c.CloseWrite()
				} else {
					c.Write(up)
					c.CloseWrite()
					readDown()
				}
				if err := <-targetErr; err != nil {
					t.Fatal(err)
				}
				l := p.waitLog(t, "connection closed", 1)[0]
				spliced := float64(0)
				if mode.splice {
					spliced = 2 * size
				}
				if l["reason"] != "closed" || l["bytes_from_client"] != float64(size) ||
					l["bytes_to_client"] != float64(size) || l["bytes_spliced"] != spliced {
					t.Fatalf("closing line %v", l)
				}
			})
		}
	}
}

// TestConcurrentConnections runs 200 connections at once, each echoing a
// random amount, and checks every byte count in the closing log lines.
func TestConcurrentConnections(t *testing.T) {
	const conns = 200
	tg := testtarget.New(t, testtarget.V2, testtarget.Echo)
	p := start(t, 1, "--listen", "127.0.0.1:0", "--target", tg.Addr())
	addr := fmt.Sprintf("127.0.0.1:%d", p.port(0))

	sizes := map[int]int{} // client port → bytes
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	rng := rand.New(rand.NewPCG(7, 7))
	for i := 0; i < conns; i++ {
		size := rng.IntN(1 << 20)
		payload := randomPayload(size, uint64(i))
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", addr, 10*time.Second)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			mu.Lock()
			sizes[c.LocalAddr().(*net.TCPAddr).Port] = size
			mu.Unlock()
			go func() {
				c.Write(payload)
				c.(*net.TCPConn).CloseWrite()
			}()
			got, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(got, payload) {
				errs <- fmt.Errorf("conn of %d bytes: got %d back (%v)", size, len(got), err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	lines := p.waitLog(t, "connection closed", conns)
	if len(lines) != conns {
		t.Fatalf("%d closing lines, want %d", len(lines), conns)
	}
	for _, l := range lines {
		_, ps, _ := net.SplitHostPort(l["client"].(string))
		var port int
		fmt.Sscan(ps, &port)
		want, ok := sizes[port]
		if !ok {
			t.Errorf("closing line for unknown client %v", l["client"])
			continue
		}
		if l["bytes_from_client"] != float64(want) || l["bytes_to_client"] != float64(want) || l["reason"] != "closed" {
			t.Errorf("client sent %d; closing line %v", want, l)
		}
	}
}

// TestIdleConnectionsFDs checks that an idle proxied connection costs two
// sockets and no pipe: the process's pipe fds stay bounded by the pool's
// idle cap however many connections are open.
func TestIdleConnectionsFDs(t *testing.T) {
	const conns = 100
	tg := testtarget.New(t, testtarget.V2, func(c *net.TCPConn, r *bufio.Reader) {
		buf := make([]byte, 4096)
		for {
			n, err := r.Read(buf)
			if err != nil {
				return
			}
			c.Write(buf[:n])
		}
	})
	p := start(t, 1, "--listen", "127.0.0.1:0", "--target", tg.Addr())
	addr := fmt.Sprintf("127.0.0.1:%d", p.port(0))
	baseSockets, basePipes := p.fds(t) // stderr is a pipe to this test

	buf := make([]byte, 4096)
	for i := 0; i < conns; i++ {
		c := dialT(t, "tcp", addr)
		msg := randomPayload(4096, uint64(i))
		c.Write(msg)
		if _, err := io.ReadFull(c, buf); err != nil || !bytes.Equal(buf, msg) {
			t.Fatalf("conn %d: echo failed: %v", i, err)
		}
	}
	// Every connection has moved data both ways and is now idle.
	var sockets, pipes int
	waitfor.Within(t, binaryWait, "2 sockets per connection", func() bool {
		sockets, pipes = p.fds(t)
		pipes -= basePipes
		return sockets-baseSockets == 2*conns
	})
	// Pipes in the pool, never per connection: io.Copy in both
	// directions would hold 4 pipe fds per connection.
	const maxIdlePipeFDs = 2 * splice.DefaultMaxIdle
	if pipes > maxIdlePipeFDs {
		t.Fatalf("%d pipe fds open with %d idle connections; want at most %d", pipes, conns, maxIdlePipeFDs)
	}
	t.Logf("%d idle connections: %d sockets above baseline, %d pipe fds", conns, sockets-baseSockets, pipes)
}

// TestUnreachableTarget checks that a refused or silent target closes the
// client within the connect timeout, and the proxy keeps serving.
func TestUnreachableTarget(t *testing.T) {
	for _, tt := range []struct {
		name    string
		target  func(testing.TB) string
		wantErr string
	}{
		{"refused", testtarget.Refusing, "connection refused"},
		{"silent", testtarget.Silent, "no answer within 500ms"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := start(t, 1, "--listen", "127.0.0.1:0", "--target", tt.target(t), "--connect-timeout", "500ms")
			for i := 1; i <= 2; i++ { // the second connection shows the proxy is still serving
				c := dialT(t, "tcp", fmt.Sprintf("127.0.0.1:%d", p.port(0)))
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				begin := time.Now()
				n, err := c.Read(make([]byte, 1))
				if n != 0 || (err != io.EOF && !errors.Is(err, syscall.ECONNRESET)) {
					t.Fatalf("read = %d, %v; want the client closed", n, err)
				}
				if d := time.Since(begin); d > 2*time.Second {
					t.Fatalf("client closed after %s with a 500ms connect timeout", d)
				}
				l := p.waitLog(t, "connection closed", i)[i-1]
				if l["reason"] != "dial failed" || !strings.Contains(l["error"].(string), tt.wantErr) {
					t.Fatalf("closing line %v", l)
				}
			}
		})
	}
}

// TestPortInUse checks that an address that is taken is reported once:
// by the process logger's line, in either format, and not again as a
// plain line; with the logger's errors hidden, by the plain line alone.
func TestPortInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	taken := ln.Addr().String()
	inUse := fmt.Sprintf(`listen on %s: bind: address already in use`, taken)
	for _, tt := range []struct {
		name string
		args []string
		// want is the one line that names the address, less a console
		// line's time.
		want string
	}{
		{"json", []string{"--listen", taken}, `{"level":"error","error":"listener \"default\": ` + inUse + `","message":"cannot start"}`},
		{"console", []string{"--listen", taken, "--log-format", "console"}, ` ERR cannot start error="listener \"default\": ` + inUse + `"`},
		{"errors hidden", []string{"--listen", taken, "--log-level", "disabled"}, `bmpproxy: listener "default": ` + inUse},
		{"admin listener", []string{"--listen", "127.0.0.1:0", "--admin-listen", taken},
			`{"level":"error","error":"admin: ` + inUse + `","message":"stopped: the admin listener failed"}`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			args := append([]string{"--target", "127.0.0.1:9"}, tt.args...)
			cmd := exec.Command(binPath(), args...)
			cmd.Stderr = &stderr
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 {
				t.Fatalf("exit = %v, want status 1; stderr:\n%s", err, &stderr)
			}
			var named []string
			for _, line := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
				if strings.Contains(line, "address already in use") {
					named = append(named, line)
				}
			}
			if len(named) != 1 {
				t.Fatalf("%d lines name the address, want 1:\n%s", len(named), &stderr)
			}
			got := named[0]
			if strings.HasPrefix(tt.want, "{") {
				got = regexp.MustCompile(`,"time":"[^"]*"`).ReplaceAllString(got, "")
			} else if strings.HasPrefix(tt.want, " ") {
				_, got, _ = strings.Cut(got, " ")
				got = " " + got
			}
			if got != tt.want {
				t.Fatalf("line\n%s\nwant\n%s", named[0], tt.want)
			}
		})
	}
}

// TestSigtermDrains stops the proxy with two connections open: one
// finishes its exchange during the drain period, the other is idle and is
// closed at the drain timeout. The process exits 0.
func TestSigtermDrains(t *testing.T) {
	tg := testtarget.New(t, testtarget.V2, testtarget.Echo)
	p := start(t, 1, "--listen", "127.0.0.1:0", "--target", tg.Addr(), "--drain-timeout", "1s")
	addr := fmt.Sprintf("127.0.0.1:%d", p.port(0))
	busy := dialT(t, "tcp", addr)
	idle := dialT(t, "tcp", addr)
	busy.Write([]byte("before"))
	buf := make([]byte, 6)
	if _, err := io.ReadFull(busy, buf); err != nil {
		t.Fatal(err)
	}
	waitfor.Within(t, binaryWait, "both connections proxied", func() bool {
		return len(tg.Headers()) == 2
	})

	p.cmd.Process.Signal(syscall.SIGTERM)
	p.waitLog(t, "stopped accepting; draining", 1)
	busy.Write([]byte(" and after"))
	busy.CloseWrite()
	if got, _ := io.ReadAll(busy); string(got) != " and after" {
		t.Fatalf("draining connection got %q", got)
	}
	idle.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(idle); err != nil {
		t.Fatalf("idle connection: %v", err)
	}
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatal("bmpproxy did not exit after draining")
	}
	if code := p.state.ExitCode(); code != 0 {
		t.Fatalf("exit status %d, want 0", code)
	}
	reasons := map[string]int{}
	for _, l := range p.logs.match("connection closed") {
		reasons[l["reason"].(string)]++
	}
	if reasons["closed"] != 1 || reasons["shutdown"] != 1 {
		t.Fatalf("reasons %v, want one closed and one shutdown", reasons)
	}
	p.waitLog(t, "stopped", 1)
}

// TestFDExhaustion runs the proxy under a small fd limit and opens more
// connections than its fd budget holds. It accepts only what it can
// serve: every accepted connection is echoed, the rest wait in the listen
// backlog, the accept loop waits instead of spinning on EMFILE, and the
// budget is reached once. As served connections close one by one, those
// waiting are accepted and served; once all have closed the budget
// clears. No connection ends with "too many open files".
func TestFDExhaustion(t *testing.T) {
	const limit, conns = 64, 40
	tg := testtarget.New(t, testtarget.V2, testtarget.Echo)
	cmd := exec.Command("/bin/sh", "-c", fmt.Sprintf(`ulimit -n %d && exec "$0" "$@"`, limit),
		binPath(), "--listen", "127.0.0.1:0", "--target", tg.Addr(), "--admin-listen", "127.0.0.1:0", "--drain-timeout", "0s")
	p := startCmd(t, 1, cmd)
	addr := fmt.Sprintf("127.0.0.1:%d", p.port(0))
	admin := "http://" + p.waitLog(t, "admin listening", 1)[0]["addr"].(string)
	budget := p.waitLog(t, "fd budget", 1)[0]["fd_budget"].(float64)
	if budget < 2*5+3 || budget > conns {
		t.Fatalf("fd budget %v under a limit of %d: want room for a few connections, fewer than %d", budget, limit, conns)
	}
	const (
		reached = "fd budget reached; accepting paused, new connections wait in the listen backlog"
		cleared = "fd budget cleared; accepting again"
	)
	scrape := func() (accepted, inUse float64) {
		_, body := httpGet(t, admin+"/metrics")
		if got := metric(body, "bmpproxy_fd_budget"); got != budget {
			t.Fatalf("bmpproxy_fd_budget %v, logged %v", got, budget)
		}
		return metric(body, `bmpproxy_connections_accepted_total{listener="default"}`), metric(body, "bmpproxy_fd_budget_in_use")
	}

	// Each client sends its name and reads the echo on its own goroutine,
	// which ends with the echo or the client's close at cleanup.
	type client struct {
		c      *net.TCPConn
		msg    string
		echoed chan bool
		served bool // the echo came back whole; read by this goroutine only
		ended  bool
	}
	cl := make([]*client, conns)
	for i := range cl {
		c := &client{c: dialT(t, "tcp", addr), msg: fmt.Sprintf("client %02d", i), echoed: make(chan bool, 1)}
		if _, err := c.c.Write([]byte(c.msg)); err != nil {
			t.Fatal(err)
		}
		go func() {
			b := make([]byte, len(c.msg))
			_, err := io.ReadFull(c.c, b)
			c.echoed <- err == nil && string(b) == c.msg
		}()
		cl[i] = c
	}
	served := func() int {
		n := 0
		for _, c := range cl {
			if !c.served {
				select {
				case c.served = <-c.echoed:
				default:
				}
			}
			if c.served {
				n++
			}
		}
		return n
	}

	// Spent: every accepted connection is served, the rest wait.
	waitfor.Within(t, binaryWait, "the budget spent, with every accepted connection served", func() bool {
		if len(p.logs.match(reached)) == 0 {
			return false
		}
		accepted, inUse := scrape()
		if accepted > 0 && accepted < conns && int(accepted) == served() && inUse > budget-3 {
			t.Logf("fd budget %v spent: %v connections served, %v fds in use, %v waiting", budget, accepted, inUse, conns-accepted)
			return true
		}
		return false
	})
	if code, body := httpGet(t, admin+"/readyz"); code != 200 || !strings.Contains(body, "spent: new connections wait in the listen backlog") {
		t.Fatalf("/readyz with the budget spent: %d %q", code, body)
	}

	// One connection closes, one more from the backlog is served, until
	// none waits. The budget stays spent meanwhile: reached once.
	for n := served(); n < conns; {
		var next *client
		for _, c := range cl {
			if c.served && !c.ended {
				next = c
				break
			}
		}
		if next == nil {
			t.Fatalf("%d of %d served, none open to close", n, conns)
		}
		next.c.CloseWrite()
		if _, err := io.ReadAll(next.c); err != nil {
			t.Fatalf("%s: %v", next.msg, err)
		}
		next.ended = true
		waitfor.Within(t, binaryWait, fmt.Sprintf("more than %d connections served", n), func() bool { return served() > n })
		n = served()
	}
	for _, c := range cl {
		if !c.ended {
			c.c.CloseWrite()
			io.ReadAll(c.c)
		}
	}
	lines := p.waitLog(t, "connection closed", conns)
	p.waitLog(t, cleared, 1)
	for _, l := range lines {
		if e, _ := l["error"].(string); l["reason"] != "closed" || strings.Contains(e, "too many open files") {
			t.Errorf("connection closed: %v", l)
		}
	}
	if n := len(p.logs.match(reached)); n != 1 {
		t.Errorf("%q logged %d times, want once", reached, n)
	}
	if n := len(p.logs.match("accept failed")); n != 0 {
		t.Errorf("%d accept failures", n)
	}
	_, body := httpGet(t, admin+"/metrics")
	if got := metric(body, "bmpproxy_accept_errors_total"); got != 0 {
		t.Errorf("bmpproxy_accept_errors_total %v", got)
	}
	if got := metric(body, `bmpproxy_connections_accepted_total{listener="default"}`); got != conns {
		t.Errorf("%v connections accepted, want %d", got, conns)
	}
	if code, body := httpGet(t, admin+"/readyz"); code != 200 || strings.Contains(body, "spent") {
		t.Errorf("/readyz after the budget cleared: %d %q", code, body)
	}
	if st := p.stop(t, syscall.SIGTERM, 10*time.Second); st.ExitCode() != 0 {
		t.Fatalf("exit status %d", st.ExitCode())
	}
}

// TestVersion checks that --version prints the version line.
func TestVersion(t *testing.T) {
	out, err := exec.Command(binPath(), "--version").Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(out), "bmpproxy ") || !strings.Contains(string(out), "go1.") {
		t.Fatalf("--version printed %q", out)
	}
}
