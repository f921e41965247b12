package main

import (
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
)

// TestSystemdNotify runs the binary with a NOTIFY_SOCKET the test reads,
// as systemd's Type=notify does: READY=1 with MAINPID once listening,
// RELOADING=1 then READY=1 around a SIGHUP, and STOPPING=1 on SIGTERM.
func TestSystemdNotify(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	next := func() string {
		t.Helper()
		buf := make([]byte, 4096)
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no notification: %v", err)
		}
		return string(buf[:n])
	}
	tg := testtarget.New(t, testtarget.V2, testtarget.Echo)
	path := writeConfig(t, dir, "listeners:\n  - listen: \"127.0.0.1:0\"\n    target: \""+tg.Addr()+"\"\n")
	cmd := exec.Command(binPath(), "--config", path)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock)
	p := startCmd(t, 1, cmd)
	pid := strconv.Itoa(cmd.Process.Pid)
	if got := next(); got != "READY=1\nMAINPID="+pid {
		t.Fatalf("first notification %q, want READY=1 and MAINPID=%s", got, pid)
	}
	cmd.Process.Signal(syscall.SIGHUP)
	if got := next(); !strings.HasPrefix(got, "RELOADING=1\nMONOTONIC_USEC=") {
		t.Fatalf("on SIGHUP: %q", got)
	}
	if got := next(); got != "READY=1\nMAINPID="+pid {
		t.Fatalf("after the reload: %q", got)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if got := next(); got != "STOPPING=1" {
		t.Fatalf("on SIGTERM: %q", got)
	}
	p.stop(t, syscall.SIGTERM, 10*time.Second)
}

// TestSocketActivation passes a listening socket as systemd does (fd 3,
// LISTEN_FDS, LISTEN_PID) and checks that bmpproxy serves on it instead
// of binding the address itself.
func TestSocketActivation(t *testing.T) {
	tg := testtarget.New(t, testtarget.V2, testtarget.Echo)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	// Our copy stays open: if bmpproxy tried to bind the address itself,
	// it would fail with "address already in use".
	defer ln.Close()
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=bmp exec "$0" "$@"`,
		binPath(), "--listen", addr, "--target", tg.Addr())
	cmd.ExtraFiles = []*os.File{f}
	p := startCmd(t, 1, cmd)
	f.Close()
	if got := p.addr(0); got != addr {
		t.Fatalf("listening on %s, want the passed socket's %s", got, addr)
	}
	if len(p.logs.match("using the socket passed by systemd")) != 1 {
		t.Fatalf("no line about the passed socket:\n%s", p.logs)
	}
	ln.Close() // only bmpproxy's copy is left
	c := dialT(t, "tcp", addr)
	c.Write([]byte("hello"))
	c.CloseWrite()
	buf := make([]byte, 5)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("echo %q, %v", buf, err)
	}
	p.stop(t, syscall.SIGTERM, 10*time.Second)
}
