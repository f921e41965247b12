package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bmpproxy/bmpproxy/internal/testtarget"
	proxyproto "github.com/pires/go-proxyproto"
)

// dockerProc is bmpproxy started the way dockerd starts its userland
// proxy: single-dash arguments, the status pipe on fd 3, optionally a
// listening socket on fd 4, and stdout and stderr on /dev/null.
type dockerProc struct {
	cmd    *exec.Cmd
	status *os.File // read end of fd 3
	done   chan error
}

// startDocker runs the binary with args. listener, if not nil, becomes
// fd 4. rules, if not empty, is written to a file named by
// BMPPROXY_CONFIG.
func startDocker(t *testing.T, rules string, listener *os.File, args ...string) *dockerProc {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binPath(), args...)
	cmd.ExtraFiles = []*os.File{w}
	if listener != nil {
		cmd.ExtraFiles = append(cmd.ExtraFiles, listener)
	}
	cmd.Env = append(os.Environ(), "BMPPROXY_CONFIG=/nonexistent-unless-set")
	if rules != "" {
		path := filepath.Join(t.TempDir(), "docker.yaml")
		if err := os.WriteFile(path, []byte(rules), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd.Env[len(cmd.Env)-1] = "BMPPROXY_CONFIG=" + path
	} else {
		cmd.Env = cmd.Env[:len(cmd.Env)-1]
		cmd.Env = append(cmd.Env, "BMPPROXY_CONFIG=") // the default path: absent here
	}
	// A -race binary sleeps 1 s at exit by default; the exit-time check
	// is about bmpproxy, not the race runtime.
	cmd.Env = append(cmd.Env, strings.TrimSpace("GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if listener != nil {
		listener.Close()
	}
	p := &dockerProc{cmd: cmd, status: r, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.done
		r.Close()
	})
	return p
}

// readStatus reads what the proxy reported on fd 3, as dockerd does: two
// bytes, then the rest on failure, within 16 s.
func (p *dockerProc) readStatus(t *testing.T) string {
	t.Helper()
	p.status.SetReadDeadline(time.Now().Add(16 * time.Second))
	b, err := io.ReadAll(p.status)
	if err != nil {
		t.Fatalf("status pipe: %v", err)
	}
	return string(b)
}

// interrupt sends SIGINT and checks that the process exits 0 within 1 s.
func (p *dockerProc) interrupt(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-p.done:
		p.done <- err
		if err != nil {
			t.Fatalf("exit after SIGINT: %v", err)
		}
	case <-time.After(time.Second):
		t.Fatal("still running 1 s after SIGINT")
	}
}

func freePort(t *testing.T, network, ip string) int {
	t.Helper()
	ln, err := net.Listen(network, net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestDockerModeTCP starts the binary as both generations of dockerd do
// and checks the handshake, the header the rules ask for, and SIGINT.
func TestDockerModeTCP(t *testing.T) {
	const v2Rule = "rules:\n  - container_port: %d\n    proxy_protocol: v2\n"
	for _, tt := range []struct {
		name      string
		listenFD  bool
		hostIP    string
		header    bool
		wantSrcIP string
	}{
		{name: "binds itself, no rules", hostIP: "127.0.0.1"},
		{name: "binds itself, v2 rule", hostIP: "127.0.0.1", header: true, wantSrcIP: "127.0.0.1"},
		{name: "listen fd, v2 rule", listenFD: true, hostIP: "127.0.0.1", header: true, wantSrcIP: "127.0.0.1"},
		{name: "listen fd, no rules", listenFD: true, hostIP: "127.0.0.1"},
		{name: "IPv6 client to an IPv4 container", hostIP: "::1", header: true, wantSrcIP: "::1"},
		{name: "IPv6 client to an IPv4 container, listen fd", listenFD: true, hostIP: "::1", header: true, wantSrcIP: "::1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			mode := testtarget.None
			if tt.header {
				mode = testtarget.V2
			}
			tg := testtarget.New(t, mode, testtarget.Echo)
			_, cport, _ := net.SplitHostPort(tg.Addr())
			rules := ""
			if tt.header {
				n, _ := strconv.Atoi(cport)
				rules = fmt.Sprintf(v2Rule, n)
			}
			var lnFile *os.File
			var hostPort int
			if tt.listenFD {
				ln, err := net.Listen("tcp", net.JoinHostPort(tt.hostIP, "0"))
				if err != nil {
					t.Fatal(err)
				}
				hostPort = ln.Addr().(*net.TCPAddr).Port
				lnFile, _ = ln.(*net.TCPListener).File()
				ln.Close()
			} else {
				hostPort = freePort(t, "tcp", tt.hostIP)
			}
			args := []string{"-proto", "tcp", "-host-ip", tt.hostIP, "-host-port", strconv.Itoa(hostPort),
				"-container-ip", "127.0.0.1", "-container-port", cport}
			if tt.listenFD {
				args = append(args, "-use-listen-fd")
			}
			p := startDocker(t, rules, lnFile, args...)
			if st := p.readStatus(t); st != "0\n" {
				t.Fatalf("status %q, want \"0\\n\"", st)
			}
			c := dialT(t, "tcp", net.JoinHostPort(tt.hostIP, strconv.Itoa(hostPort)))
			payload := randomPayload(256<<10, 3)
			go func() { c.Write(payload); c.CloseWrite() }()
			got, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(got, payload) {
				t.Fatalf("echo: %d bytes back (%v), want %d", len(got), err, len(payload))
			}
			h := tg.Headers()
			if len(h) != 1 {
				t.Fatalf("%d connections at the container", len(h))
			}
			if !tt.header {
				if len(h[0]) != 0 {
					t.Fatalf("header %q sent without a rule", h[0])
				}
			} else {
				hdr, err := proxyproto.Read(bufio.NewReader(bytes.NewReader(h[0])))
				if err != nil {
					t.Fatal(err)
				}
				if src := hdr.SourceAddr.(*net.TCPAddr).IP.String(); src != tt.wantSrcIP {
					t.Fatalf("header source %s, want %s", src, tt.wantSrcIP)
				}
			}
			p.interrupt(t)
		})
	}
}

// TestDockerModeFailures checks that every failure is reported on fd 3 as
// "1\n" and the reason, with a non-zero exit.
func TestDockerModeFailures(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	heldPort := strconv.Itoa(held.Addr().(*net.TCPAddr).Port)
	base := func(extra ...string) []string {
		return append([]string{"-proto", "tcp", "-host-ip", "127.0.0.1", "-host-port", heldPort,
			"-container-ip", "127.0.0.1", "-container-port", "9"}, extra...)
	}
	for _, tt := range []struct {
		name  string
		args  []string
		rules string
		want  string
	}{
		{"port in use", base(), "", "1\nlisten on 127.0.0.1:" + heldPort + ": bind: address already in use"},
		{"bad flag", base("-bogus"), "", "1\nflag provided but not defined: -bogus"},
		{"bad -proto", []string{"-proto", "icmp", "-host-ip", "127.0.0.1", "-host-port", "1", "-container-ip", "127.0.0.1", "-container-port", "2"}, "", "1\n-proto: unknown protocol \"icmp\" (want tcp, udp or sctp)"},
		{"sctp", []string{"-proto", "sctp", "-host-ip", "127.0.0.1", "-host-port", "1", "-container-ip", "127.0.0.1", "-container-port", "2"}, "", "1\nsctp is not supported"},
		{"bad rules file", base(), "rules:\n  - container_port: 5000\n    proxy_protocl: v2\n", "line 3: rules[0]: unknown field \"proxy_protocl\""},
		{"v1 rule for udp", base(), "rules:\n  - proto: udp\n    proxy_protocol: v1\n", "line 3: rules[0].proxy_protocol: v1 has no UDP form (want v2 or none)"},
		{"missing -container-ip", []string{"-proto", "tcp", "-host-ip", "127.0.0.1", "-host-port", "1", "-container-port", "2"}, "", "1\n-container-ip is required"},
		{"listen fd missing", base("-use-listen-fd"), "", "1\n-use-listen-fd: fd 4 is not open"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := startDocker(t, tt.rules, nil, tt.args...)
			st := p.readStatus(t)
			if !strings.HasPrefix(st, "1\n") || !strings.Contains(st, strings.TrimPrefix(tt.want, "1\n")) {
				t.Fatalf("status %q, want %q", st, tt.want)
			}
			select {
			case err := <-p.done:
				p.done <- err
				var ee *exec.ExitError
				if err == nil || !errorsAs(err, &ee) || ee.ExitCode() == 0 {
					t.Fatalf("exit %v, want non-zero", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("still running after reporting failure")
			}
		})
	}
	t.Run("unreadable rules file", func(t *testing.T) {
		r, w, _ := os.Pipe()
		defer r.Close()
		cmd := exec.Command(binPath(), base()...)
		cmd.ExtraFiles = []*os.File{w}
		cmd.Env = append(os.Environ(), "BMPPROXY_CONFIG="+filepath.Join(t.TempDir(), "absent.yaml"))
		err := cmd.Run()
		w.Close()
		b, _ := io.ReadAll(r)
		if !strings.HasPrefix(string(b), "1\nrules: open ") || !strings.Contains(string(b), "no such file or directory") || err == nil {
			t.Fatalf("status %q, exit %v", b, err)
		}
	})
}

func errorsAs(err error, target **exec.ExitError) bool {
	ee, ok := err.(*exec.ExitError)
	*target = ee
	return ok
}

// TestDockerModeUDP sends datagrams through the proxy to a UDP echo
// server, with no header and with a v2 header on each datagram.
func TestDockerModeUDP(t *testing.T) {
	cport := strconv.Itoa(testtarget.UDPEcho(t, "").Port)
	for _, header := range []bool{false, true} {
		t.Run(fmt.Sprintf("header=%v", header), func(t *testing.T) {
			ln, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			hostPort := strconv.Itoa(ln.LocalAddr().(*net.UDPAddr).Port)
			f, _ := ln.File()
			ln.Close()
			rules := ""
			if header {
				rules = "rules:\n  - proto: udp\n    proxy_protocol: v2\n"
			}
			p := startDocker(t, rules, f, "-proto", "udp", "-host-ip", "127.0.0.1", "-host-port", hostPort,
				"-container-ip", "127.0.0.1", "-container-port", cport, "-use-listen-fd")
			if st := p.readStatus(t); st != "0\n" {
				t.Fatalf("status %q", st)
			}
			c, err := net.Dial("udp", "127.0.0.1:"+hostPort)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			buf := make([]byte, 65536)
			for i := 0; i < 3; i++ {
				msg := []byte(fmt.Sprintf("datagram %d", i))
				c.Write(msg)
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				n, err := c.Read(buf)
				if err != nil {
					t.Fatalf("datagram %d: %v", i, err)
				}
				got := buf[:n]
				if header {
					h, err := proxyproto.Read(bufio.NewReader(bytes.NewReader(got)))
					if err != nil {
						t.Fatalf("datagram %d: header: %v", i, err)
					}
					if src := h.SourceAddr.(*net.UDPAddr); src.String() != c.LocalAddr().String() {
						t.Fatalf("header source %v, want %v", src, c.LocalAddr())
					}
					got = got[len(got)-len(msg):]
				}
				if !bytes.Equal(got, msg) {
					t.Fatalf("datagram %d: got %q", i, got)
				}
			}
			p.interrupt(t)
		})
	}
}

// TestDockerProxyDifferential runs Debian's docker-proxy and bmpproxy with
// the same invocation and no rules: the handshake and the bytes delivered
// must be the same.
func TestDockerProxyDifferential(t *testing.T) {
	const real = "/usr/sbin/docker-proxy"
	if _, err := os.Stat(real); err != nil {
		t.Skip("docker-proxy is not installed (apt-get install docker.io)")
	}
	tg := testtarget.New(t, testtarget.None, testtarget.Echo)
	_, cport, _ := net.SplitHostPort(tg.Addr())
	payload := randomPayload(1<<20, 11)
	want := sha256.Sum256(payload)
	type result struct {
		status string
		sum    [32]byte
	}
	run := func(bin string) result {
		hostPort := strconv.Itoa(freePort(t, "tcp", "127.0.0.1"))
		r, w, _ := os.Pipe()
		cmd := exec.Command(bin, "-proto", "tcp", "-host-ip", "127.0.0.1", "-host-port", hostPort,
			"-container-ip", "127.0.0.1", "-container-port", cport)
		cmd.ExtraFiles = []*os.File{w}
		cmd.Env = append(os.Environ(), "BMPPROXY_CONFIG=")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		w.Close()
		defer func() { cmd.Process.Signal(syscall.SIGINT); cmd.Wait(); r.Close() }()
		hdr := make([]byte, 2)
		r.SetReadDeadline(time.Now().Add(16 * time.Second))
		if _, err := io.ReadFull(r, hdr); err != nil {
			t.Fatalf("%s: status: %v", bin, err)
		}
		c := dialT(t, "tcp", "127.0.0.1:"+hostPort)
		go func() { c.Write(payload); c.CloseWrite() }()
		h := sha256.New()
		io.Copy(h, c)
		var res result
		res.status = string(hdr)
		copy(res.sum[:], h.Sum(nil))
		return res
	}
	docker, ours := run(real), run(binPath())
	t.Logf("status: docker-proxy %q, bmpproxy %q", docker.status, ours.status)
	if docker != ours || ours.sum != want {
		t.Fatalf("docker-proxy %+v, bmpproxy %+v, sent sum %x", docker, ours, want)
	}
}
