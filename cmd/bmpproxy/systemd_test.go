package main

import (
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

	"github.com/bmpproxy/bmpproxy/internal/procfs"
	"github.com/bmpproxy/bmpproxy/internal/testtarget"
	"github.com/bmpproxy/bmpproxy/internal/waitfor"
	"golang.org/x/sys/unix"
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

// fakeManager is the service manager's end of NOTIFY_SOCKET. It passes
// on each datagram with the descriptors that came with it; closing the
// one sent with BARRIER=1 acknowledges the barrier, as systemd does once
// it has read that far.
type fakeManager struct {
	conn *net.UnixConn
	msgs chan notification
}

type notification struct {
	text string
	fds  []int
}

func newFakeManager(t *testing.T) (*fakeManager, string) {
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	m := &fakeManager{conn: conn, msgs: make(chan notification, 64)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf, oob := make([]byte, 4096), make([]byte, 256)
		for {
			n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
			if err != nil {
				return
			}
			var fds []int
			msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
			for _, cm := range msgs {
				f, _ := unix.ParseUnixRights(&cm)
				fds = append(fds, f...)
			}
			m.msgs <- notification{string(buf[:n]), fds}
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		<-done
		for {
			select {
			case n := <-m.msgs:
				for _, fd := range n.fds {
					unix.Close(fd)
				}
			default:
				return
			}
		}
	})
	return m, sock
}

func (m *fakeManager) next(t *testing.T) notification {
	t.Helper()
	select {
	case n := <-m.msgs:
		return n
	case <-time.After(15 * time.Second):
		t.Fatal("no notification")
		return notification{}
	}
}

// TestSystemdNotifyUpgrade checks the notify protocol through an
// upgrade: the predecessor names its successor with MAINPID and waits,
// with BARRIER=1, until the manager has read it before it exits; the
// successor reports READY=1 itself; STOPPING=1 comes only from the
// process that really stops.
func TestSystemdNotifyUpgrade(t *testing.T) {
	mgr, sock := newFakeManager(t)
	tg := testtarget.New(t, testtarget.V2, testtarget.Echo)
	cmd := exec.Command(binPath(), "--listen", "127.0.0.1:0", "--target", tg.Addr())
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock, "GORACE=atexit_sleep_ms=0")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p := startCmd(t, 1, cmd)
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	pid0 := cmd.Process.Pid
	if got := mgr.next(t).text; got != "READY=1\nMAINPID="+strconv.Itoa(pid0) {
		t.Fatalf("first notification %q", got)
	}
	c := dialT(t, "tcp", p.addr(0))
	c.Write([]byte("before "))

	cmd.Process.Signal(syscall.SIGUSR2)
	var succ int
	var sawBarrier, sawReady bool
	for !(sawBarrier && sawReady) {
		n := mgr.next(t)
		got := n.text
		switch {
		case strings.HasPrefix(got, "MAINPID="):
			succ, _ = strconv.Atoi(strings.TrimPrefix(got, "MAINPID="))
			if succ == pid0 || succ == 0 {
				t.Fatalf("MAINPID=%d after the upgrade", succ)
			}
		case got == "BARRIER=1":
			if succ == 0 {
				t.Fatal("BARRIER=1 before MAINPID")
			}
			sawBarrier = true
			if len(n.fds) != 1 {
				t.Fatalf("BARRIER=1 came with %d descriptors, want 1", len(n.fds))
			}
			// Unacknowledged, the predecessor must wait: in ppoll(2), on
			// the read end of the pipe whose write end came with
			// BARRIER=1. That it stopped waiting because of the close,
			// not a timeout, is checked below.
			waitfor.Within(t, binaryWait, "the predecessor to wait on the barrier", func() bool {
				return holdsPipe(t, pid0, n.fds[0]) && inPoll(pid0)
			})
			unix.Close(n.fds[0])
		case strings.HasPrefix(got, "READY=1\nMAINPID="):
			sawReady = true
		case got == "STOPPING=1":
			t.Fatal("STOPPING=1 from the process that handed over")
		default:
			t.Fatalf("unexpected notification %q", got)
		}
	}
	lines := p.waitLog(t, "handed over; exiting", 1)
	if lines[0]["successor_pid"].(float64) != float64(succ) {
		t.Fatalf("handed over to %v, MAINPID said %d", lines[0]["successor_pid"], succ)
	}
	// The predecessor logs a barrier that timed out before that line.
	if l := p.logs.match("upgrade: could not tell the service manager the new main pid"); len(l) != 0 {
		t.Fatalf("the barrier was not answered by the close: %v", l[0])
	}
	waitfor.Within(t, binaryWait, "the predecessor to exit", func() bool { return !procfs.Alive(pid0) })

	c.Write([]byte("after"))
	c.CloseWrite()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := io.ReadAll(c); err != nil || string(b) != "before after" {
		t.Fatalf("echo across the upgrade: %q, %v", b, err)
	}
	syscall.Kill(succ, syscall.SIGTERM)
	if got := mgr.next(t).text; got != "STOPPING=1" {
		t.Fatalf("on SIGTERM to the successor: %q", got)
	}
	waitfor.Within(t, binaryWait, "the successor to exit", func() bool { return !procfs.Alive(succ) })
}

// inPoll reports whether a thread of pid is in ppoll(2), which
// unix.Poll calls and the Go runtime itself never does.
func inPoll(pid int) bool {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/syscall", pid))
	for _, task := range tasks {
		b, err := os.ReadFile(task)
		if err != nil {
			continue
		}
		nr, _, _ := strings.Cut(string(b), " ")
		if n, err := strconv.Atoi(nr); err == nil && n == unix.SYS_PPOLL {
			return true
		}
	}
	return false
}

// holdsPipe reports whether process pid has open the other end of the
// pipe whose end this process holds as fd.
func holdsPipe(t *testing.T, pid, fd int) bool {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("pipe:[%d]", st.Ino)
	links, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pid))
	for _, l := range links {
		if dst, err := os.Readlink(l); err == nil && dst == want {
			return true
		}
	}
	return false
}
