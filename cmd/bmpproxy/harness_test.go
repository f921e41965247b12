package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
	"go.uber.org/goleak"
)

// binaryWait bounds a wait on the real binary, built with -race and
// sharing the machine with other tests.
const binaryWait = 20 * time.Second

// binPath is the bmpproxy binary built once for the end-to-end tests. It is
// set by TestMain before any test runs and only read afterwards.
func binPath() string { return os.Getenv("BMPPROXY_TEST_BINARY") }

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "bmpproxy-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin := filepath.Join(dir, "bmpproxy")
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, ".")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building bmpproxy:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	os.Setenv("BMPPROXY_TEST_BINARY", bin)
	code := 0
	func() {
		defer func() {
			if r := recover(); r != nil {
				code = 1
				fmt.Fprintln(os.Stderr, r)
			}
		}()
		// goleak.VerifyTestMain calls os.Exit; run it last.
		code = m.Run()
		if code == 0 {
			if err := goleak.Find(); err != nil {
				fmt.Fprintln(os.Stderr, "goleak:", err)
				code = 1
			}
		}
	}()
	os.RemoveAll(dir)
	os.Exit(code)
}

// TestScripts runs the CLI behaviour scripts in testdata/script against
// the real binary.
func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: "testdata/script",
		Setup: func(env *testscript.Env) error {
			env.Setenv("PATH", filepath.Dir(binPath())+string(os.PathListSeparator)+env.Getenv("PATH"))
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			// serve cmd args... runs cmd until it logs a "listening" line
			// (or exits), stops it with SIGTERM, and checks that it
			// exited 0; stderr is what it logged.
			"serve": func(ts *testscript.TestScript, neg bool, args []string) {
				if len(args) < 1 {
					ts.Fatalf("usage: serve command [args...]")
				}
				err := ts.Exec("sh", append([]string{"-c", serveScript, "serve"}, args...)...)
				if (err != nil) != neg {
					ts.Fatalf("serve %v: %v", args, err)
				}
			},
			// busyport NAME binds a free loopback port until the script
			// ends, and sets $NAME to its address.
			"busyport": func(ts *testscript.TestScript, neg bool, args []string) {
				if neg || len(args) != 1 {
					ts.Fatalf("usage: busyport NAME")
				}
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					ts.Fatalf("busyport: %v", err)
				}
				ts.Defer(func() { ln.Close() })
				ts.Setenv(args[0], ln.Addr().String())
			},
			// exitcode N cmd args... runs cmd and checks its exit status.
			"exitcode": func(ts *testscript.TestScript, neg bool, args []string) {
				if neg || len(args) < 2 {
					ts.Fatalf("usage: exitcode N command [args...]")
				}
				var want int
				fmt.Sscan(args[0], &want)
				err := ts.Exec(args[1], args[2:]...)
				got := 0
				if ee, ok := err.(*exec.ExitError); ok {
					got = ee.ExitCode()
				} else if err != nil {
					ts.Fatalf("%v", err)
				}
				if got != want {
					ts.Fatalf("exit status %d, want %d", got, want)
				}
			},
		},
	})
}

// serveScript runs "$@" in the background until it logs a "listening"
// line, in either log format, or exits; then stops it with SIGTERM and
// exits with its status, its stderr on stderr. It gives up after 20s, and
// exits 124.
const serveScript = `log="$WORK/.serve.log"
"$@" 2>"$log" &
pid=$!
i=0
until grep -q -e '"message":"listening"' -e ' INF listening ' "$log"; do
	kill -0 $pid 2>/dev/null || break
	i=$((i+1))
	if [ $i -gt 1000 ]; then timeout=1; break; fi
	sleep 0.02
done
kill -TERM $pid 2>/dev/null
wait $pid
code=$?
cat "$log" >&2
rm -f "$log"
if [ -n "$timeout" ]; then echo "serve: no listening line after 20s" >&2; exit 124; fi
exit $code
`

// proc is a running bmpproxy process.
type proc struct {
	t     *testing.T
	cmd   *exec.Cmd
	logs  *logLines // stderr
	out   *logLines // stdout
	done  chan struct{}
	state *os.ProcessState
}

// logLines collects the JSON log lines a process writes to stderr.
type logLines struct {
	mu    sync.Mutex
	lines []map[string]any
	raw   bytes.Buffer
}

func (l *logLines) add(line []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.raw.Write(line)
	l.raw.WriteByte('\n')
	var m map[string]any
	if json.Unmarshal(line, &m) == nil {
		l.lines = append(l.lines, m)
	}
}

// all returns every JSON line.
func (l *logLines) all() []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]map[string]any(nil), l.lines...)
}

// match returns the lines whose message is msg.
func (l *logLines) match(msg string) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, m := range l.lines {
		if m["message"] == msg {
			out = append(out, m)
		}
	}
	return out
}

func (l *logLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.raw.String()
}

// start runs the binary with args and waits until it has logged n
// "listening" lines. The process is killed at cleanup if still running.
func start(t *testing.T, n int, args ...string) *proc {
	t.Helper()
	return startCmd(t, n, exec.Command(binPath(), args...))
}

func startCmd(t *testing.T, n int, cmd *exec.Cmd) *proc {
	t.Helper()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, cmd: cmd, logs: &logLines{}, out: &logLines{}, done: make(chan struct{})}
	// If the test binary dies (a timeout), the proxy dies with it.
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = new(syscall.SysProcAttr)
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	scan := func(r io.Reader, into *logLines) {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			into.add(sc.Bytes())
		}
	}
	go func() {
		outDone := make(chan struct{})
		go func() {
			scan(stdout, p.out)
			close(outDone)
		}()
		scan(stderr, p.logs)
		<-outDone
		cmd.Wait()
		p.state = cmd.ProcessState
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("bmpproxy stderr:\n%s\nstdout:\n%s", p.logs, p.out)
		}
	})
	p.waitLog(t, "listening", n)
	return p
}

// waitLog waits until at least n lines with message msg have been logged.
func (p *proc) waitLog(t *testing.T, msg string, n int) []map[string]any {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		if got := p.logs.match(msg); len(got) >= n {
			return got
		}
		select {
		case <-p.done:
			if got := p.logs.match(msg); len(got) >= n {
				return got
			}
			t.Fatalf("bmpproxy exited (%v) before logging %d %q lines:\n%s", p.state, n, msg, p.logs)
		case <-deadline:
			t.Fatalf("timed out waiting for %d %q lines:\n%s", n, msg, p.logs)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// waitRaw waits until at least n lines of stderr, in any format, contain
// every one of subs, and returns them.
func (p *proc) waitRaw(t *testing.T, n int, subs ...string) []string {
	t.Helper()
	find := func() []string {
		var out []string
	lines:
		for _, line := range strings.Split(p.logs.String(), "\n") {
			for _, s := range subs {
				if !strings.Contains(line, s) {
					continue lines
				}
			}
			out = append(out, line)
		}
		return out
	}
	deadline := time.After(30 * time.Second)
	for {
		if got := find(); len(got) >= n {
			return got
		}
		select {
		case <-p.done:
			if got := find(); len(got) >= n {
				return got
			}
			t.Fatalf("bmpproxy exited (%v) before logging %d lines with %q:\n%s", p.state, n, subs, p.logs)
		case <-deadline:
			t.Fatalf("timed out waiting for %d lines with %q:\n%s", n, subs, p.logs)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// addr returns the address of the i-th listener as logged.
func (p *proc) addr(i int) string {
	return p.logs.match("listening")[i]["addr"].(string)
}

// port returns the port of the i-th listener.
func (p *proc) port(i int) int {
	_, ps, _ := net.SplitHostPort(p.addr(i))
	var n int
	fmt.Sscan(ps, &n)
	return n
}

// signal sends sig and waits up to timeout for the process to exit.
func (p *proc) stop(t *testing.T, sig syscall.Signal, timeout time.Duration) *os.ProcessState {
	t.Helper()
	p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
		return p.state
	case <-time.After(timeout):
		t.Fatalf("bmpproxy still running %s after %v", timeout, sig)
		return nil
	}
}

// fds counts the process's open sockets and pipe ends.
func (p *proc) fds(t *testing.T) (sockets, pipes int) {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", p.cmd.Process.Pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		link, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		switch {
		case strings.HasPrefix(link, "socket:"):
			sockets++
		case strings.HasPrefix(link, "pipe:"):
			pipes++
		}
	}
	return sockets, pipes
}

func dialT(t *testing.T, network, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}
