package handoff

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

// The test binary is also the successor: with childEnv set to 1, TestMain
// plays a successor instead of running the tests; set to "list", it
// prints the inodes of the sockets it holds, one a line, and exits.
const childEnv = "HANDOFF_TEST_CHILD"

// noRaceExitSleep spares a child built with -race the race detector's
// second of sleep at exit.
const noRaceExitSleep = "GORACE=atexit_sleep_ms=0"

func TestMain(m *testing.M) {
	switch os.Getenv(childEnv) {
	case "1":
		os.Exit(child())
	case "list":
		for _, ino := range socketInodes() {
			fmt.Println(ino)
		}
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

// socketInodes lists the inodes of the sockets this process holds.
func socketInodes() []uint64 {
	var out []uint64
	ents, _ := os.ReadDir("/proc/self/fd")
	for _, e := range ents {
		link, _ := os.Readlink("/proc/self/fd/" + e.Name())
		if n, ok := strings.CutPrefix(link, "socket:["); ok {
			if ino, err := strconv.ParseUint(strings.TrimSuffix(n, "]"), 10, 64); err == nil {
				out = append(out, ino)
			}
		}
	}
	return out
}

// child takes the offer, writes "hi <i>" to each passed socket, and
// reports, in place of a version, the socket descriptors it holds.
func child() int {
	p, err := FromEnv()
	if err != nil || p == nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 3
	}
	var sockets []int
	ents, _ := os.ReadDir("/proc/self/fd")
	for _, e := range ents {
		fd, _ := strconv.Atoi(e.Name())
		if link, _ := os.Readlink("/proc/self/fd/" + e.Name()); strings.HasPrefix(link, "socket:") {
			sockets = append(sockets, fd)
		}
	}
	report, _ := json.Marshal(map[string]any{"sockets": sockets, "fds": p.FDs, "state": string(p.State)})
	for i, fd := range p.FDs {
		unix.Write(fd, []byte("hi "+strconv.Itoa(i)))
	}
	if err := p.Ready(string(report), 5*time.Second); err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 4
	}
	return 0
}

// socketPair returns two connected sockets as files; both are closed at
// cleanup.
func socketPair(t *testing.T) (a, b *os.File) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	a, b = os.NewFile(uintptr(fds[0]), "a"), os.NewFile(uintptr(fds[1]), "b")
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// TestHandoffPassesExactlyTheListedSockets starts a successor with two of
// three sockets listed: it gets those two at the same numbers, and no
// other socket of this process but the control socket.
func TestHandoffPassesExactlyTheListedSockets(t *testing.T) {
	var fds []int
	var peers []*os.File
	for range 2 {
		a, b := socketPair(t)
		fds = append(fds, int(a.Fd()))
		peers = append(peers, b)
	}
	unlisted, _ := socketPair(t)
	exe, _ := os.Executable()
	succ, err := Spawn{
		Path: exe, Args: []string{exe}, Env: append(os.Environ(), childEnv+"=1", "LISTEN_FDS=1"),
		FDs: fds, State: map[string]int{"answer": 42}, ReadyTimeout: 10 * time.Second,
	}.Start()
	if err != nil {
		t.Fatal(err)
	}
	var report struct {
		Sockets, FDs []int
		State        string
	}
	if err := json.Unmarshal([]byte(succ.Version), &report); err != nil {
		t.Fatalf("report %q: %v", succ.Version, err)
	}
	if err := succ.Commit(); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(report.FDs, fds) {
		t.Errorf("successor was offered fds %v, want %v at the same numbers", report.FDs, fds)
	}
	if report.State != `{"answer":42}` {
		t.Errorf("state %q", report.State)
	}
	for _, fd := range report.Sockets {
		if fd == int(unlisted.Fd()) {
			t.Errorf("the unlisted socket %d reached the successor", fd)
		}
	}
	if got := len(report.Sockets); got != len(fds)+1 { // the listed ones and the control socket
		t.Errorf("successor holds %d sockets %v, want the %d listed and the control socket", got, report.Sockets, len(fds))
	}
	for i, peer := range peers {
		buf := make([]byte, 16)
		peer.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := peer.Read(buf)
		if want := "hi " + strconv.Itoa(i); err != nil || string(buf[:n]) != want {
			t.Errorf("socket %d: read %q, %v; want %q from the successor", i, buf[:n], err, want)
		}
	}
	// Close-on-exec is back on the passed sockets here.
	for _, fd := range fds {
		if flags, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); flags&unix.FD_CLOEXEC == 0 {
			t.Errorf("fd %d left without close-on-exec", fd)
		}
	}
	waitExit(t, succ)
}

// TestHandoffConcurrentForkInheritsNothing starts successors again and
// again while another goroutine starts processes of its own: none of
// those gets a socket this process did not already pass on by accident
// before (none, normally), and the passed descriptors keep close-on-exec
// in this process throughout.
func TestHandoffConcurrentForkInheritsNothing(t *testing.T) {
	exe, _ := os.Executable()
	list := func() ([]uint64, error) {
		cmd := exec.Command(exe)
		cmd.Env = append(os.Environ(), childEnv+"=list", noRaceExitSleep)
		out, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("lister: %w", err)
		}
		var inodes []uint64
		for _, f := range strings.Fields(string(out)) {
			ino, err := strconv.ParseUint(f, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("lister printed %q", out)
			}
			inodes = append(inodes, ino)
		}
		return inodes, nil
	}
	// Sockets a child of this process has anyway: inherited by the test
	// binary without close-on-exec, from whatever started it.
	baseline, err := list()
	if err != nil {
		t.Fatal(err)
	}
	var fds []int
	for range 3 {
		a, _ := socketPair(t)
		fds = append(fds, int(a.Fd()))
	}

	stop := make(chan struct{})
	var starting atomic.Bool // a Start is running
	var overlapped, polls, cleared atomic.Int64
	leaked := make(chan string, 1)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // forks of its own, as os/exec from another goroutine
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			during := starting.Load()
			inodes, err := list()
			if err != nil {
				select {
				case leaked <- err.Error():
				default:
				}
				return
			}
			if during || starting.Load() {
				overlapped.Add(1)
			}
			for _, ino := range inodes {
				if !slices.Contains(baseline, ino) {
					select {
					case leaked <- fmt.Sprintf("a concurrently started process holds socket inode %d (it holds %v)", ino, inodes):
					default:
					}
				}
			}
		}
	}()
	go func() { // close-on-exec on the passed descriptors, as often as it can
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			for _, fd := range fds {
				if flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil && flags&unix.FD_CLOEXEC == 0 {
					cleared.Add(1)
				}
			}
			polls.Add(1)
		}
	}()

	const rounds = 40
	for i := range rounds {
		starting.Store(true)
		succ, err := Spawn{
			Path: exe, Args: []string{exe}, Env: append(os.Environ(), childEnv+"=1", noRaceExitSleep),
			FDs: fds, State: i, ReadyTimeout: 10 * time.Second,
		}.Start()
		starting.Store(false)
		if err != nil {
			close(stop)
			wg.Wait()
			t.Fatalf("round %d: %v", i, err)
		}
		if err := succ.Commit(); err != nil {
			close(stop)
			wg.Wait()
			t.Fatalf("round %d: commit: %v", i, err)
		}
		waitExit(t, succ)
	}
	close(stop)
	wg.Wait() // the last concurrent process has reported
	select {
	case msg := <-leaked:
		t.Error(msg)
	default:
	}
	if n := cleared.Load(); n > 0 {
		t.Errorf("close-on-exec was clear on a passed descriptor in %d of %d polls", n, polls.Load())
	}
	if overlapped.Load() == 0 {
		t.Errorf("no concurrent process ran while a Start did, in %d rounds", rounds)
	}
	t.Logf("%d concurrent processes overlapped a Start; %d close-on-exec polls", overlapped.Load(), polls.Load())
}

// TestHandoffFileTableAtTheLimit: the successor's file table has an entry
// for every number up to the highest passed one, and its start takes one
// descriptor above that. A socket at the open-file limit - 3 reaches the
// successor at that number; one at the limit - 2 is refused, and the
// error names the limit.
func TestHandoffFileTableAtTheLimit(t *testing.T) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	const soft = 4096 // a small table, whatever the machine allows
	if lim.Max < soft {
		t.Skipf("hard open-file limit %d", lim.Max)
	}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: soft, Max: lim.Max}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Setrlimit(unix.RLIMIT_NOFILE, &lim) })
	a, peer := socketPair(t)
	exe, _ := os.Executable()
	spawn := func(fd int) (*Successor, error) {
		if err := unix.Dup3(int(a.Fd()), fd, unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		return Spawn{
			Path: exe, Args: []string{exe}, Env: append(os.Environ(), childEnv+"=1", noRaceExitSleep),
			FDs: []int{fd}, State: "s", ReadyTimeout: 10 * time.Second,
		}.Start()
	}

	_, err := spawn(soft - 2)
	if want := fmt.Sprintf("descriptor %d: the successor's start needs descriptor %d, and the open-file limit is %d", soft-2, soft, soft); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("Start with fd %d = %v, want %q", soft-2, err, want)
	}

	succ, err := spawn(soft - 3)
	if err != nil {
		t.Fatalf("Start with fd %d: %v", soft-3, err)
	}
	var report struct{ FDs []int }
	json.Unmarshal([]byte(succ.Version), &report)
	if err := succ.Commit(); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(report.FDs, []int{soft - 3}) {
		t.Errorf("successor was offered fds %v, want [%d]", report.FDs, soft-3)
	}
	buf := make([]byte, 16)
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := peer.Read(buf); err != nil || string(buf[:n]) != "hi 0" {
		t.Errorf("read %q, %v; want \"hi 0\" from the successor", buf[:n], err)
	}
	waitExit(t, succ)
}

// TestChildFiles: the file table maps each passed descriptor and stdio to
// itself and closes every gap; a descriptor that is stdio or not open is
// refused by number.
func TestChildFiles(t *testing.T) {
	a, b := socketPair(t)
	fa, fb := int(a.Fd()), int(b.Fd())
	closed := fb + 100
	for _, tc := range []struct {
		name string
		fds  []int
		want string // error, or "" for success
	}{
		{"two", []int{fb, fa}, ""},
		{"repeated", []int{fa, fa}, ""},
		{"stdio", []int{fa, 2}, "descriptor 2: not passable"},
		{"negative", []int{-1}, "descriptor -1: not passable"},
		{"not open", []int{fa, closed}, fmt.Sprintf("descriptor %d: bad file descriptor", closed)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files, err := childFiles(tc.fds)
			if tc.want != "" {
				if err == nil || err.Error() != tc.want {
					t.Fatalf("childFiles(%v) = %v, want %q", tc.fds, err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if want := slices.Max(tc.fds) + 1; len(files) != want {
				t.Fatalf("%d entries, want %d", len(files), want)
			}
			for i, f := range files {
				want := closedInChild
				if i <= 2 || slices.Contains(tc.fds, i) {
					want = uintptr(i)
				}
				if f != want {
					t.Errorf("entry %d = %d, want %d", i, int(f), int(want))
				}
			}
		})
	}
}

func waitExit(t *testing.T, s *Successor) {
	t.Helper()
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("successor did not exit")
	}
}

// TestHandoffFailures: every way a successor can fail before running
// is an error that says how, with the successor gone.
func TestHandoffFailures(t *testing.T) {
	dir := t.TempDir()
	script := func(name, body string) string {
		p := filepath.Join(dir, name)
		// bash: dash cannot redirect to a descriptor above 9.
		if err := os.WriteFile(p, []byte("#!/bin/bash\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	notExec := filepath.Join(dir, "garbage")
	os.WriteFile(notExec, []byte("\x00\x01garbage"), 0o755)
	for _, tc := range []struct {
		name, path, want string
	}{
		{"missing", filepath.Join(dir, "nope"), "no such file or directory"},
		{"not an executable", notExec, "exec format error"},
		{"exits at once", script("exit3", "exit 3"), "exited before taking over: exit status 3"},
		{"hangs", script("hang", "exec sleep 30"), "successor did not answer within 300ms"},
		{"garbage on the control socket", script("junk", `printf 'junk\n' >&$`+EnvFD+`; exec sleep 30`), "bad control message"},
		{"refuses", script("refuse", `printf '{"kind":"error","error":"state format 9"}\n' >&$`+EnvFD+`; exec sleep 30`), "successor refused the handoff: state format 9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, _ := socketPair(t)
			_, err := Spawn{
				Path: tc.path, Args: []string{tc.path}, Env: os.Environ(),
				FDs: []int{int(a.Fd())}, State: "s", ReadyTimeout: 300 * time.Millisecond,
			}.Start()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Start = %v, want %q", err, tc.want)
			}
		})
	}
}

// TestPredecessorGone: a successor whose predecessor goes away before
// "go" gives up.
func TestPredecessorGone(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	parent := os.NewFile(uintptr(fds[0]), "parent")
	t.Setenv(EnvFD, strconv.Itoa(fds[1]))
	parent.Write([]byte(`{"kind":"offer","state":{}}` + "\n"))
	p, err := FromEnv()
	if err != nil || p == nil {
		t.Fatalf("FromEnv = %v, %v", p, err)
	}
	if _, ok := os.LookupEnv(EnvFD); ok {
		t.Error(EnvFD + " left in the environment")
	}
	parent.Close()
	if err := p.Ready("v", 5*time.Second); err == nil {
		t.Fatal("Ready succeeded with the predecessor gone")
	}
}

// TestFromEnvErrors: a bad EnvFD is an error naming it, not a crash.
func TestFromEnvErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, _ := os.CreateTemp(t.TempDir(), "notasocket")
	defer f.Close()
	for _, tc := range []struct{ value, want string }{
		{"x", `BMPPROXY_HANDOFF_FD="x": not a descriptor`},
		{"-1", `BMPPROXY_HANDOFF_FD="-1": not a descriptor`},
		{strconv.Itoa(int(f.Fd())), "not a socket"},
		{"987", "BMPPROXY_HANDOFF_FD=987: not a socket"},
	} {
		t.Setenv(EnvFD, tc.value)
		if _, err := FromEnv(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s=%s: %v, want %q", EnvFD, tc.value, err, tc.want)
		}
	}
}

// FuzzReadMessage: whatever a successor or predecessor writes on the
// control socket, reading it ends in a message that encodes again, or in
// an error; never in a panic.
func FuzzReadMessage(f *testing.F) {
	f.Add([]byte(`{"kind":"offer","fds":[4,5],"state":{"a":1}}` + "\n"))
	f.Add([]byte(`{"kind":"ready","pid":7,"version":"v"}` + "\n"))
	f.Add([]byte("{\n"))
	f.Add([]byte(`{"kind":"go"}`))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bufio.NewReaderSize(bytes.NewReader(b), 16)
		for range 4 {
			m, err := readMessage(r)
			if err != nil {
				return
			}
			if _, err := json.Marshal(m); err != nil {
				t.Fatalf("decoded %+v cannot be encoded again: %v", m, err)
			}
		}
	})
}
