package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/bmpproxy/bmpproxy/bmp"
	"github.com/bmpproxy/bmpproxy/internal/procfs"
	"github.com/bmpproxy/bmpproxy/internal/testtarget"
	"github.com/bmpproxy/bmpproxy/internal/waitfor"
)

// buildVersion builds the binary with version stamped, as make release
// does, into dir.
func buildVersion(t *testing.T, dir, version string) string {
	t.Helper()
	out := filepath.Join(dir, "bmpproxy-"+version)
	args := []string{"build", "-o", out, "-ldflags", "-X main.version=" + version}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, ".")...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", version, err, b)
	}
	return out
}

// install puts src at dst the way a package manager does: a new file
// renamed over the old one, which the running process keeps executing.
func install(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	tmp := dst + ".new"
	if err := os.WriteFile(tmp, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		t.Fatal(err)
	}
}

// hashCollector stands in for a BMP collector: it reads the PROXY v2
// header, hashes everything after it, and once the router half-closes,
// answers with the SHA-256 and closes.
func hashCollector(t *testing.T) *testtarget.Target {
	return testtarget.New(t, testtarget.V2, func(c *net.TCPConn, r *bufio.Reader) {
		h := sha256.New()
		if _, err := io.Copy(h, r); err != nil {
			return
		}
		c.Write(h.Sum(nil))
		c.CloseWrite()
	})
}

// router plays one BMP session: an Initiation, then random bytes at a
// steady rate until stop, then a half-close; the collector's hash of
// what it received must match.
type router struct {
	name string
	addr string // local address, as /routers shows it
	err  error
}

func (r *router) run(proxyAddr string, stop <-chan struct{}, wg *sync.WaitGroup, started chan<- struct{}) {
	defer wg.Done()
	c, err := net.DialTimeout("tcp", proxyAddr, 5*time.Second)
	if err != nil {
		r.err = err
		started <- struct{}{}
		return
	}
	defer c.Close()
	r.addr = c.LocalAddr().String()
	h := sha256.New()
	w := io.MultiWriter(c, h)
	_, r.err = w.Write(bmp.EncodeInitiation("upgrade test", r.name))
	started <- struct{}{}
	chunk := make([]byte, 2048)
	tick := time.NewTicker(20 * time.Millisecond) // 100 KiB/s per router
	defer tick.Stop()
	for i := 0; r.err == nil && i < 3000; i++ { // at most 60 s
		select {
		case <-stop:
			i = 3000
			continue
		case <-tick.C:
		}
		rand.Read(chunk)
		_, r.err = w.Write(chunk)
	}
	if r.err != nil {
		return
	}
	if r.err = c.(*net.TCPConn).CloseWrite(); r.err != nil {
		return
	}
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	got, err := io.ReadAll(c)
	switch {
	case err != nil:
		r.err = fmt.Errorf("reading the collector's hash: %w", err)
	case !bytes.Equal(got, h.Sum(nil)):
		r.err = fmt.Errorf("the collector's hash %x is not that of the %s bytes sent", got, r.name)
	}
}

// connectLoop opens a short BMP session every few milliseconds until stop
// and counts those that did not complete; a refused connect is one.
func connectLoop(proxyAddr string, stop <-chan struct{}, ok, failed *atomic.Int64, firstErr *atomic.Value, done chan<- struct{}) {
	defer close(done)
	msg := bmp.EncodeInitiation("connect loop", "probe")
	want := sha256.Sum256(msg)
	for i := 0; i < 20000; i++ { // bounded: at most 20,000 sessions
		select {
		case <-stop:
			return
		case <-time.After(10 * time.Millisecond):
		}
		err := func() error {
			c, err := net.DialTimeout("tcp", proxyAddr, 5*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Write(msg); err != nil {
				return err
			}
			c.(*net.TCPConn).CloseWrite()
			got, err := io.ReadAll(c)
			if err != nil {
				return err
			}
			if !bytes.Equal(got, want[:]) {
				return fmt.Errorf("short session answered %x", got)
			}
			return nil
		}()
		if err != nil {
			failed.Add(1)
			firstErr.CompareAndSwap(nil, err)
			continue
		}
		ok.Add(1)
	}
}

// adminVersion is GET /version.
func adminVersion(t *testing.T, admin string) (pid int, version string) {
	t.Helper()
	code, body := httpGet(t, "http://"+admin+"/version")
	var v struct {
		Pid     int    `json:"pid"`
		Version string `json:"version"`
	}
	if code != 200 || json.Unmarshal([]byte(body), &v) != nil {
		t.Fatalf("/version: %d %s", code, body)
	}
	return v.Pid, v.Version
}

// session is a connected router's entry in GET /routers.
type session struct {
	since string // connected_since
	bytes int64  // bytes_from_router
}

// connected is GET /routers: each connected router's session, the
// connect loop's probes left out.
func connected(t *testing.T, admin string) map[string]session {
	t.Helper()
	_, body := httpGet(t, "http://"+admin+"/routers")
	var r struct {
		Routers []struct {
			Router  string `json:"router"`
			State   string `json:"state"`
			SysName string `json:"sys_name"`
			Since   string `json:"connected_since"`
			Bytes   int64  `json:"bytes_from_router"`
		} `json:"routers"`
	}
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatalf("/routers: %v\n%s", err, body)
	}
	out := map[string]session{}
	for _, x := range r.Routers {
		if x.State == "connected" && x.SysName != "probe" {
			out[x.Router] = session{since: x.Since, bytes: x.Bytes}
		}
	}
	return out
}

// sessionStarts is each connected router's start time.
func sessionStarts(t *testing.T, admin string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for r, s := range connected(t, admin) {
		out[r] = s.since
	}
	return out
}

// streams waits until n sessions are connected and each has moved bytes
// since: they stream under the process serving now.
func streams(t *testing.T, admin string, n int) {
	t.Helper()
	var before map[string]session
	waitfor.Within(t, binaryWait, fmt.Sprintf("%d sessions in /routers", n), func() bool {
		before = connected(t, admin)
		return len(before) == n
	})
	waitfor.Within(t, binaryWait, fmt.Sprintf("%d sessions to stream", n), func() bool {
		moved := 0
		for r, s := range connected(t, admin) {
			if b, ok := before[r]; ok && s.bytes > b.bytes {
				moved++
			}
		}
		return moved == n
	})
}

// waitExit waits for pid to be gone or a zombie.
func waitExit(t *testing.T, pid int) {
	t.Helper()
	waitfor.Within(t, binaryWait, fmt.Sprintf("pid %d to exit", pid), func() bool { return !procfs.Alive(pid) })
}

// TestUpgradeUnderLoad is the zero-drop upgrade: 50 BMP sessions stream
// through the real binary while it is upgraded three times (by SIGUSR2,
// POST /upgrade and "bmpproxy upgrade --pid"), once to a binary with
// another version, and then fails to upgrade to a binary that exits at
// once. Every session must end with the collector's hash matching, a
// connect loop running throughout must never fail, and /routers must
// keep every session's start time.
func TestUpgradeUnderLoad(t *testing.T) {
	dir := t.TempDir()
	binA := buildVersion(t, dir, "v0.0.1-upgrade-a")
	binB := buildVersion(t, dir, "v0.0.2-upgrade-b")
	exe := filepath.Join(dir, "bin", "bmpproxy")
	os.MkdirAll(filepath.Dir(exe), 0o755)
	install(t, binA, exe)

	coll := hashCollector(t)
	cmd := exec.Command(exe, "--listen", "127.0.0.1:0", "--target", coll.Addr(), "--bmp",
		"--admin-listen", "127.0.0.1:0", "--log-level", "info")
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
	// Successors stay in the process group: cleanup kills them all,
	// whichever serves when a test fails.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p := startCmd(t, 1, cmd)
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	proxyAddr := p.addr(0)
	admin := p.waitLog(t, "admin listening", 1)[0]["addr"].(string)

	const sessions = 50
	stop := make(chan struct{})
	routers := make([]router, sessions)
	var wg sync.WaitGroup
	started := make(chan struct{}, sessions)
	for i := range routers {
		routers[i].name = fmt.Sprintf("r%02d", i)
		wg.Add(1)
		go routers[i].run(proxyAddr, stop, &wg, started)
	}
	for range sessions {
		<-started
	}
	var loopOK, loopFailed atomic.Int64
	var loopErr atomic.Value
	loopDone := make(chan struct{})
	go connectLoop(proxyAddr, stop, &loopOK, &loopFailed, &loopErr, loopDone)
	stopped := false
	stopAll := func() {
		if !stopped {
			stopped = true
			close(stop)
			wg.Wait()
			<-loopDone
		}
	}
	t.Cleanup(stopAll)

	waitfor.Within(t, binaryWait, "50 sessions in /routers", func() bool { return len(sessionStarts(t, admin)) == sessions })
	before := sessionStarts(t, admin)
	streams(t, admin, sessions)

	// upgraded waits until the admin listener answers from a new process
	// with version, and the old one has exited.
	upgraded := func(how string, old int, version string) int {
		t.Helper()
		var pid int
		waitfor.Within(t, binaryWait, how+": a new pid on /version", func() bool {
			pid, _ = adminVersion(t, admin)
			return pid != old
		})
		if _, v := adminVersion(t, admin); !strings.Contains(v, version) {
			t.Fatalf("%s: /version says %q, want %s", how, v, version)
		}
		waitExit(t, old)
		streams(t, admin, sessions)
		return pid
	}

	// 1: SIGUSR2, same binary.
	pid0 := cmd.Process.Pid
	syscall.Kill(pid0, syscall.SIGUSR2)
	pid1 := upgraded("SIGUSR2", pid0, "upgrade-a")

	// 2: POST /upgrade through "bmpproxy upgrade --admin", to another build.
	install(t, binB, exe)
	out, err := exec.Command(binA, "upgrade", "--admin", admin).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "upgrade-b") {
		t.Fatalf("bmpproxy upgrade --admin: %v\n%s", err, out)
	}
	pid2 := upgraded("POST /upgrade", pid1, "upgrade-b")
	if out, err := exec.Command(exe, "--version").Output(); err != nil || !strings.Contains(string(out), "v0.0.2-upgrade-b") {
		t.Fatalf("--version after the upgrade: %q, %v", out, err)
	}

	// 3: "bmpproxy upgrade --pid".
	out, err = exec.Command(binA, "upgrade", "--pid", strconv.Itoa(pid2)).CombinedOutput()
	if err != nil || !strings.Contains(string(out), fmt.Sprintf("pid %d handed over to pid", pid2)) {
		t.Fatalf("bmpproxy upgrade --pid: %v\n%s", err, out)
	}
	pid3 := upgraded("upgrade --pid", pid2, "upgrade-b")

	after := sessionStarts(t, admin)
	for r, since := range before {
		if after[r] != since {
			t.Errorf("router %s: connected_since %q after the upgrades, was %q", r, after[r], since)
		}
	}
	if len(after) != sessions {
		t.Errorf("/routers lists %d connected sessions after the upgrades, want %d", len(after), sessions)
	}
	_, body := httpGet(t, "http://"+admin+"/metrics")
	if n := metric(body, "bmpproxy_upgrades_total"); n != 3 {
		t.Errorf("bmpproxy_upgrades_total = %v, want 3", n)
	}
	if n := metric(body, "bmpproxy_sessions_carried_over_total"); n < 3*sessions {
		t.Errorf("bmpproxy_sessions_carried_over_total = %v, want at least %d", n, 3*sessions)
	}

	// 4: a binary that exits at once: the upgrade fails, the sessions
	// stream on under pid3, and the failure is logged and counted.
	os.WriteFile(exe+".new", []byte("#!/bin/sh\necho broken build >&2\nexit 1\n"), 0o755)
	os.Rename(exe+".new", exe)
	syscall.Kill(pid3, syscall.SIGUSR2)
	failed := p.waitLog(t, "upgrade failed; this process keeps serving", 1)[0]
	if e, _ := failed["error"].(string); !strings.Contains(e, "exit status 1") {
		t.Errorf("the failure line says %q; want the successor's exit status", e)
	}
	streams(t, admin, sessions)
	if pid, _ := adminVersion(t, admin); pid != pid3 {
		t.Fatalf("after the failed upgrade pid %d serves, want %d", pid, pid3)
	}
	_, body = httpGet(t, "http://"+admin+"/metrics")
	if n := metric(body, "bmpproxy_upgrade_failures_total"); n != 1 {
		t.Errorf("bmpproxy_upgrade_failures_total = %v, want 1", n)
	}

	stopAll()
	for _, r := range routers {
		if r.err != nil {
			t.Errorf("session %s (%s): %v", r.name, r.addr, r.err)
		}
	}
	if n := loopFailed.Load(); n > 0 {
		t.Errorf("connect loop: %d of %d sessions failed; first: %v", n, n+loopOK.Load(), loopErr.Load())
	}
	t.Logf("connect loop: %d sessions, none failed", loopOK.Load())
	if loopOK.Load() < 50 {
		t.Errorf("connect loop completed only %d sessions", loopOK.Load())
	}
	// Each session ends with one closing line, written by the process
	// that served it last.
	closedBMP := func() (lines []map[string]any) {
		for _, l := range p.logs.match("connection closed") {
			if l["sys_name"] != "probe" {
				lines = append(lines, l)
			}
		}
		return lines
	}
	waitfor.Within(t, binaryWait, "a closing line per session", func() bool { return len(closedBMP()) >= sessions })
	// A second line for a session would be in by the end of the log: when
	// the last process has exited and its stderr is closed.
	syscall.Kill(pid3, syscall.SIGTERM)
	waitExit(t, pid3)
	select {
	case <-p.done:
	case <-time.After(binaryWait):
		t.Fatal("stderr still open after the last process exited")
	}
	if lines := closedBMP(); len(lines) != sessions {
		t.Errorf("%d closing lines for the %d sessions", len(lines), sessions)
	}
	for _, l := range closedBMP() {
		if l["reason"] != "closed" {
			t.Errorf("closing line %v", l)
		}
	}
}

// TestUpgradeRefusedBySuccessor: a successor that cannot load the
// configuration file, edited since the start, refuses the handover and
// says why; the running process keeps its session and serves on.
func TestUpgradeRefusedBySuccessor(t *testing.T) {
	dir := t.TempDir()
	tg := testtarget.New(t, testtarget.V2, testtarget.Echo)
	path := writeConfig(t, dir, "listeners:\n  - listen: \"127.0.0.1:0\"\n    target: \""+tg.Addr()+"\"\n")
	cmd := exec.Command(binPath(), "--config", path)
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p := startCmd(t, 1, cmd)
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	c := dialT(t, "tcp", p.addr(0))
	c.Write([]byte("one "))

	os.WriteFile(path, []byte("listeners:\n  - listen: \"127.0.0.1:0\"\n    taget: x\n"), 0o644)
	cmd.Process.Signal(syscall.SIGUSR2)
	failed := p.waitLog(t, "upgrade failed; this process keeps serving", 1)[0]
	if e, _ := failed["error"].(string); !strings.Contains(e, "successor refused the handoff") || !strings.Contains(e, `unknown field "taget"`) {
		t.Fatalf("the failure says %q; want the successor's reason", e)
	}
	c.Write([]byte("two"))
	c.CloseWrite()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := io.ReadAll(c); err != nil || string(b) != "one two" {
		t.Fatalf("echo across the failed upgrade: %q, %v", b, err)
	}
	if !procfs.Alive(cmd.Process.Pid) {
		t.Fatal("the process exited after a failed upgrade")
	}
	p.stop(t, syscall.SIGTERM, 10*time.Second)
}

// TestUpgradeByPidNamesTheSuccessor runs "bmpproxy upgrade --pid" 50 times
// in a row, each time against the successor the previous run named. The
// first target is a child of this test, a zombie until the test reaps it
// at the end; the later ones are children of their predecessors,
// reparented when those exit. Each time the named pid must be the process
// that now holds the listening socket (read from /proc here, not through
// the code under test) and answers /version, and a session opened before
// the first upgrade must echo across every one.
func TestUpgradeByPidNamesTheSuccessor(t *testing.T) {
	tg := testtarget.New(t, testtarget.V2, testtarget.Echo)
	env := append(os.Environ(), "GORACE=atexit_sleep_ms=0")
	cmd := exec.Command(binPath(), "--listen", "127.0.0.1:0", "--target", tg.Addr(), "--admin-listen", "127.0.0.1:0")
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p := startCmd(t, 1, cmd)
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	admin := p.waitLog(t, "admin listening", 1)[0]["addr"].(string)
	listener := listeningInode(t, p.addr(0))

	c := dialT(t, "tcp", p.addr(0))
	echo := func(round int) {
		t.Helper()
		msg := fmt.Sprintf("round %d\n", round)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatalf("round %d: write: %v", round, err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
			t.Fatalf("round %d: echo %q, %v; want %q", round, got, err, msg)
		}
	}
	echo(0)

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	pid := cmd.Process.Pid
	const rounds = 50
	for round := 1; round <= rounds; round++ {
		up := exec.CommandContext(ctx, binPath(), "upgrade", "--pid", strconv.Itoa(pid), "--timeout", "30s")
		up.Env = env
		out, err := up.CombinedOutput()
		if err != nil {
			t.Fatalf("round %d: bmpproxy upgrade --pid %d: %v\n%s", round, pid, err, out)
		}
		var from, to int
		if _, err := fmt.Sscanf(string(out), "pid %d handed over to pid %d\n", &from, &to); err != nil || from != pid || to == pid {
			t.Fatalf("round %d: bmpproxy upgrade --pid %d printed %q", round, pid, out)
		}
		if !holdsSocket(to, listener) {
			t.Fatalf("round %d: pid %d, named as the successor, does not hold the listening socket %d", round, to, listener)
		}
		if serving, _ := adminVersion(t, admin); serving != to {
			t.Fatalf("round %d: /version answers from pid %d, the successor named is %d", round, serving, to)
		}
		echo(round)
		pid = to
	}
	c.CloseWrite()
	if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
		t.Errorf("after the half-close: %q, %v; want the end of the echo", rest, err)
	}
	syscall.Kill(pid, syscall.SIGTERM)
	select {
	case <-p.done: // the last successor closed the log pipes; the first target is reaped
	case <-time.After(20 * time.Second):
		t.Fatalf("pid %d did not exit after SIGTERM", pid)
	}
	if code := p.state.ExitCode(); code != 0 {
		t.Errorf("the first process exited with %d after handing over, want 0", code)
	}
}

// listeningInode is the inode of the TCP socket listening on addr, an
// IPv4 address, from /proc/net/tcp.
func listeningInode(t *testing.T, addr string) uint64 {
	t.Helper()
	ap := netip.MustParseAddrPort(addr)
	ip := ap.Addr().As4()
	local := fmt.Sprintf("%08X:%04X", binary.NativeEndian.Uint32(ip[:]), ap.Port())
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		// sl local_address rem_address st ... uid timeout inode
		if f := strings.Fields(line); len(f) > 9 && f[1] == local && f[3] == "0A" {
			ino, err := strconv.ParseUint(f[9], 10, 64)
			if err != nil {
				t.Fatalf("/proc/net/tcp: %q", line)
			}
			return ino
		}
	}
	t.Fatalf("no socket listens on %s (%s) in /proc/net/tcp", addr, local)
	return 0
}

// holdsSocket reports whether pid has a descriptor for the socket with
// inode ino; a process that has exited has none.
func holdsSocket(pid int, ino uint64) bool {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, _ := os.ReadDir(dir)
	want := fmt.Sprintf("socket:[%d]", ino)
	for _, e := range ents {
		if link, _ := os.Readlink(filepath.Join(dir, e.Name())); link == want {
			return true
		}
	}
	return false
}
