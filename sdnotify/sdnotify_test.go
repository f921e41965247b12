package sdnotify

import (
	"net"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/bmpproxy/bmpproxy/internal/waitfor"
	"golang.org/x/sys/unix"
)

// manager listens where NOTIFY_SOCKET points and returns each datagram
// with the descriptors passed along it.
func manager(t *testing.T, abstract bool) (Notifier, func() (string, []int)) {
	t.Helper()
	name := filepath.Join(t.TempDir(), "notify")
	addr := name
	if abstract {
		name = "\x00bmpproxy-test-" + strings.ReplaceAll(t.Name(), "/", "-")
		addr = "@" + name[1:]
	}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return FromEnv(func(string) string { return addr }), func() (string, []int) {
		t.Helper()
		buf, oob := make([]byte, 4096), make([]byte, 128)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
		if err != nil {
			t.Fatal(err)
		}
		var fds []int
		msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
		for _, m := range msgs {
			f, _ := unix.ParseUnixRights(&m)
			fds = append(fds, f...)
		}
		return string(buf[:n]), fds
	}
}

func TestNotify(t *testing.T) {
	for _, abstract := range []bool{false, true} {
		n, next := manager(t, abstract)
		n.Stopping()
		if got, _ := next(); got != "STOPPING=1" {
			t.Errorf("abstract=%v: got %q", abstract, got)
		}
	}
	if err := (Notifier{}).Ready(); err != nil {
		t.Errorf("without a manager: %v", err)
	}
}

// TestMainPIDBarrier: MainPID returns only once the manager closed the
// descriptor that came with BARRIER=1, and fails after its timeout if it
// never does.
func TestMainPIDBarrier(t *testing.T) {
	n, next := manager(t, true)
	done := make(chan error, 1)
	go func() { done <- n.MainPID(4242, 5*time.Second) }()
	if got, _ := next(); got != "MAINPID=4242" {
		t.Fatalf("got %q", got)
	}
	got, fds := next()
	if got != "BARRIER=1" || len(fds) != 1 {
		t.Fatalf("got %q with %d fds, want BARRIER=1 and one fd", got, len(fds))
	}
	// Unacknowledged, MainPID waits in the barrier's poll; it has not
	// returned while it is there.
	waitfor.True(t, "MainPID to wait in the barrier's poll", func() bool {
		select {
		case err := <-done:
			t.Fatalf("MainPID returned (%v) before the barrier was acknowledged", err)
		default:
		}
		return inBarrierPoll()
	})
	unix.Close(fds[0])
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("MainPID still waiting after the acknowledgement")
	}

	go func() { done <- n.MainPID(4243, 300*time.Millisecond) }()
	next()
	_, fds = next()
	defer unix.Close(fds[0])
	if err := <-done; err == nil || !strings.Contains(err.Error(), "did not answer within 300ms") {
		t.Fatalf("unacknowledged barrier: %v", err)
	}
}

// inBarrierPoll reports whether a goroutine is in the poll(2) of
// Notifier.Barrier.
func inBarrierPoll() bool {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, " [syscall") && strings.Contains(g, "unix.Ppoll(") && strings.Contains(g, "sdnotify.Notifier.Barrier(") {
			return true
		}
	}
	return false
}
