// Package sdnotify speaks systemd's service protocols: readiness
// notification over NOTIFY_SOCKET (sd_notify(3)) and socket activation
// through LISTEN_FDS (sd_listen_fds(3)). Both are plain: a unix datagram
// and inherited file descriptors.
package sdnotify

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Notifier sends state changes to the service manager. The zero value,
// and a Notifier from an environment without NOTIFY_SOCKET, sends nothing.
type Notifier struct {
	addr string // NOTIFY_SOCKET; "@" starts an abstract name
}

// FromEnv returns a Notifier for the NOTIFY_SOCKET in getenv.
func FromEnv(getenv func(string) string) Notifier {
	return Notifier{addr: getenv("NOTIFY_SOCKET")}
}

// Notify sends state, such as "READY=1", in one datagram. Without a
// service manager it does nothing and returns nil.
func (n Notifier) Notify(state ...string) error {
	if n.addr == "" {
		return nil
	}
	return n.send([]byte(strings.Join(state, "\n")), nil)
}

// send sends one datagram, with ancillary data oob, from an unconnected
// socket: Go's net package cannot pass ancillary data on a connected
// datagram socket. An address starting with "@" is abstract.
func (n Notifier) send(msg, oob []byte) error {
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer unix.Close(s)
	if err := unix.Sendmsg(s, msg, oob, &unix.SockaddrUnix{Name: n.addr}, 0); err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	return nil
}

// Ready tells the manager that start-up (or a reload) is done.
func (n Notifier) Ready() error {
	return n.Notify("READY=1", "MAINPID="+strconv.Itoa(os.Getpid()))
}

// Reloading tells the manager a reload has begun, with the monotonic
// timestamp systemd 253 and later require.
func (n Notifier) Reloading() error {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	usec := ts.Sec*1e6 + ts.Nsec/1e3
	return n.Notify("RELOADING=1", "MONOTONIC_USEC="+strconv.FormatInt(usec, 10))
}

// MainPID tells the manager that pid is the service's main process now,
// and waits until the manager has read it (Barrier), so that this process
// may exit without the manager taking the service for dead.
func (n Notifier) MainPID(pid int, timeout time.Duration) error {
	if err := n.Notify("MAINPID=" + strconv.Itoa(pid)); err != nil {
		return err
	}
	return n.Barrier(timeout)
}

// Barrier waits until the manager has processed every notification sent
// before it (sd_notify_barrier(3)): it passes the write end of a pipe
// with BARRIER=1, and the manager closes it once it has read that far.
func (n Notifier) Barrier(timeout time.Duration) error {
	if n.addr == "" {
		return nil
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return fmt.Errorf("sd_notify barrier: %w", err)
	}
	defer unix.Close(p[0])
	err := n.send([]byte("BARRIER=1"), unix.UnixRights(p[1]))
	unix.Close(p[1]) // the manager holds the only other copy
	if err != nil {
		return fmt.Errorf("barrier: %w", err)
	}
	fds := []unix.PollFd{{Fd: int32(p[0]), Events: unix.POLLIN}}
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("sd_notify barrier: the service manager did not answer within %s", timeout)
		}
		k, err := unix.Poll(fds, int(left.Milliseconds())+1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("sd_notify barrier: %w", err)
		}
		if k > 0 && fds[0].Revents&(unix.POLLHUP|unix.POLLERR) != 0 {
			return nil
		}
	}
}

// Stopping tells the manager the service is shutting down.
func (n Notifier) Stopping() error { return n.Notify("STOPPING=1") }

// listenFDsStart is the first inherited fd (SD_LISTEN_FDS_START).
const listenFDsStart = 3

// Listeners returns the listening sockets passed by socket activation,
// by their address, or nil when there are none for this process. The
// variables are cleared so that children do not inherit them, and the fds
// get CLOEXEC.
func Listeners(getenv func(string) string, unsetenv func(string) error) (map[string]net.Listener, error) {
	pid, err := strconv.Atoi(getenv("LISTEN_PID"))
	if err != nil || pid != os.Getpid() {
		return nil, nil
	}
	n, err := strconv.Atoi(getenv("LISTEN_FDS"))
	if err != nil || n <= 0 {
		return nil, nil
	}
	names := strings.Split(getenv("LISTEN_FDNAMES"), ":")
	for _, v := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		unsetenv(v)
	}
	out := make(map[string]net.Listener, n)
	for i := 0; i < n; i++ {
		fd := listenFDsStart + i
		syscall.CloseOnExec(fd)
		name := strconv.Itoa(fd)
		if i < len(names) && names[i] != "" {
			name = names[i]
		}
		f := os.NewFile(uintptr(fd), name)
		ln, err := net.FileListener(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("socket activation: fd %d (%s): %w", fd, name, err)
		}
		out[ln.Addr().String()] = ln
	}
	return out, nil
}
