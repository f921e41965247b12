// Package handoff passes a running process's sockets and a description of
// their state to a successor process, for upgrades without dropped
// connections.
//
// The predecessor forks and execs the successor with the sockets in exec's
// own file table (syscall.ProcAttr.Files): every passed descriptor, and a
// control socket, is mapped to its own number, 0, 1 and 2 are stdio, and
// every other entry up to the highest passed number is "closed in the
// child". Only the child's copy of the descriptors changes; in the parent
// they keep close-on-exec, so a process that another goroutine starts
// meanwhile inherits none of them.
// The successor has them at the same numbers; nothing is renumbered and
// no extra descriptor is needed however many there are. EnvFD names the
// control socket, and the offer lists the descriptors. The control
// socket carries the state document and a two-phase commit:
//
//	predecessor → successor  offer: the state and the number of fds
//	successor → predecessor  ready (or error): the state is rebuilt, nothing moved yet
//	predecessor → successor  go
//	successor → predecessor  running: the successor owns the sockets now
//
// Invariants:
//   - Until the predecessor has read "running", the successor has moved no
//     byte and accepted no connection, so killing it loses nothing and the
//     predecessor resumes as if no upgrade had been tried.
//   - After "running" the predecessor closes its copies of the sockets
//     without shutdown(2): the kernel sends no FIN while the successor
//     holds them.
//   - The successor gives up, touching nothing, when the control socket
//     ends before "go".
//   - Start changes no descriptor of the predecessor: the passed ones keep
//     close-on-exec throughout, and only the forked child clears it, on
//     its own copies. Nothing needs to hold off other forks meanwhile.
package handoff

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// EnvFD names the environment variable that tells a successor the
// control socket's descriptor.
const EnvFD = "BMPPROXY_HANDOFF_FD"

// maxMessage bounds one control message: a state document of a few
// hundred bytes per connection for 100,000 connections fits easily.
const maxMessage = 256 << 20

// message is one line on the control socket.
type message struct {
	Kind    string          `json:"kind"` // offer, ready, error, go, running
	FDs     []int           `json:"fds,omitempty"`
	State   json.RawMessage `json:"state,omitempty"`
	Pid     int             `json:"pid,omitempty"`
	Version string          `json:"version,omitempty"`
	Error   string          `json:"error,omitempty"`
}

// Spawn describes a successor to start.
type Spawn struct {
	Path string   // the binary
	Args []string // argv, including argv[0]
	// Env is the successor's environment; EnvFD is added, and
	// socket-activation variables (LISTEN_*) are removed, since the
	// sockets they name are passed here instead.
	Env []string
	// FDs are the descriptors to pass, in the order the state refers to
	// them; the successor has them at the same numbers. They must stay
	// open until Start returns, and must not be 0, 1 or 2. The highest
	// of them (or the control socket's) + 2 must be under RLIMIT_NOFILE:
	// see childFiles.
	FDs []int
	// State is encoded as JSON into the offer.
	State any
	// ReadyTimeout bounds the wait for "ready" after the start, and for
	// "running" after "go". Zero means 30 seconds.
	ReadyTimeout time.Duration
}

// closedInChild is a syscall.ProcAttr.Files entry for a descriptor the
// child does not get.
const closedInChild = ^uintptr(0)

// childFiles is the successor's file table for syscall.ProcAttr.Files:
// entry i is i for each of fds and for stdio (0, 1, 2), and closedInChild
// for every other number below the highest of fds.
//
// syscall's forkAndExecInChild (exec_linux.go, Go 1.26) works on the
// child's copy of the descriptors only: it clears FD_CLOEXEC with fcntl
// on an entry equal to its index, without a dup, and closes an entry of
// -1; since no entry is a number below its index, its pass 1 moves
// nothing. The one descriptor it adds is the write end of its exec-error
// pipe, moved to len(table)+1 (the highest of fds + 2) until the exec
// closes it, so that number must be under RLIMIT_NOFILE. childFiles
// checks that, and that each of fds is open, so that an error names the
// descriptor or the limit rather than being a bare EBADF from the child.
// The parent needs two descriptors of its own for that pipe.
func childFiles(fds []int) ([]uintptr, error) {
	top := 2
	for _, fd := range fds {
		if fd <= 2 {
			return nil, fmt.Errorf("descriptor %d: not passable", fd)
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
			return nil, fmt.Errorf("descriptor %d: %w", fd, err)
		}
		top = max(top, fd)
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err == nil && uint64(top)+2 >= lim.Cur {
		return nil, fmt.Errorf("descriptor %d: the successor's start needs descriptor %d, and the open-file limit is %d (RLIMIT_NOFILE)", top, top+2, lim.Cur)
	}
	files := make([]uintptr, top+1)
	for i := range files {
		files[i] = closedInChild
	}
	files[0], files[1], files[2] = 0, 1, 2
	for _, fd := range fds {
		files[fd] = uintptr(fd)
	}
	return files, nil
}

// Successor is a started successor that has reported ready.
type Successor struct {
	Pid     int
	Version string // as the successor reported it

	ctrl    *os.File
	r       *bufio.Reader
	timeout time.Duration
	exited  chan struct{}
	state   *os.ProcessState // set before exited closes
	proc    *os.Process
}

// Start starts the successor, offers it the state and waits until it
// reports ready. On any failure the successor is killed and reaped, and
// the error says what happened, including the successor's exit status
// and message if it gave one.
func (sp Spawn) Start() (*Successor, error) {
	timeout := sp.ReadyTimeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	state, err := json.Marshal(sp.State)
	if err != nil {
		return nil, fmt.Errorf("encode state: %w", err)
	}
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	ctrlChild := pair[1]
	env := make([]string, 0, len(sp.Env)+1)
	for _, kv := range sp.Env {
		if k, _, _ := strings.Cut(kv, "="); k == EnvFD || strings.HasPrefix(k, "LISTEN_") {
			continue
		}
		env = append(env, kv)
	}
	env = append(env, EnvFD+"="+strconv.Itoa(ctrlChild))
	files, err := childFiles(append(append(make([]int, 0, len(sp.FDs)+1), sp.FDs...), ctrlChild))
	var pid int
	if err == nil {
		pid, err = syscall.ForkExec(sp.Path, sp.Args, &syscall.ProcAttr{Env: env, Files: files})
	}
	unix.Close(ctrlChild)
	if err != nil {
		unix.Close(pair[0])
		return nil, fmt.Errorf("start %s: %w", sp.Path, err)
	}
	proc, _ := os.FindProcess(pid) // never fails on Unix
	s := &Successor{
		Pid:     pid,
		ctrl:    os.NewFile(uintptr(pair[0]), "handoff-control"),
		timeout: timeout,
		exited:  make(chan struct{}),
		proc:    proc,
	}
	s.r = bufio.NewReader(s.ctrl)
	go s.reap()

	if err := s.send(message{Kind: "offer", FDs: sp.FDs, State: state}); err != nil {
		select {
		case <-s.exited:
			return nil, s.fail(errExited)
		case <-time.After(time.Second):
		}
		return nil, s.fail(fmt.Errorf("send state: %w", err))
	}
	m, err := s.recv()
	if err != nil {
		return nil, s.fail(err)
	}
	switch m.Kind {
	case "ready":
		s.Version = m.Version
		return s, nil
	case "error":
		return nil, s.fail(fmt.Errorf("successor refused the handoff: %s", m.Error))
	}
	return nil, s.fail(fmt.Errorf("unexpected %q from the successor", m.Kind))
}

// Commit tells the successor to go and waits for it to confirm that it
// runs. On success the caller must close its copies of the passed
// sockets without shutting them down, and stop. On failure the successor
// has been killed and the caller still owns everything.
func (s *Successor) Commit() error {
	if err := s.send(message{Kind: "go"}); err != nil {
		return s.fail(fmt.Errorf("send go: %w", err))
	}
	m, err := s.recv()
	if err != nil {
		return s.fail(err)
	}
	if m.Kind != "running" {
		return s.fail(fmt.Errorf("unexpected %q from the successor", m.Kind))
	}
	s.ctrl.Close()
	return nil
}

// Abort kills the successor and reaps it. The caller keeps everything.
func (s *Successor) Abort() { s.fail(nil) }

// reap waits for the successor to exit, so it never stays a zombie. A
// successor that took over outlives this process and is never reaped
// here.
func (s *Successor) reap() {
	st, _ := s.proc.Wait()
	s.state = st
	close(s.exited)
}

// fail kills and reaps the successor, closes the control socket and
// returns err with the successor's exit status added.
func (s *Successor) fail(err error) error {
	s.proc.Kill()
	s.ctrl.Close()
	select {
	case <-s.exited:
	case <-time.After(5 * time.Second): // SIGKILL cannot be ignored; not expected
	}
	st := s.exitState()
	switch {
	case errors.Is(err, errExited):
		err = fmt.Errorf("successor exited before taking over: %s", st)
	case err != nil && st != nil && !killedBySelf(st):
		err = fmt.Errorf("%w (successor %s)", err, st)
	}
	return err
}

// errExited stands for "the successor exited by itself", which fail
// words with its exit status.
var errExited = errors.New("successor exited")

// exitState is the successor's exit status once it has been reaped, and
// nil before.
func (s *Successor) exitState() *os.ProcessState {
	select {
	case <-s.exited:
		return s.state
	default:
		return nil
	}
}

// killedBySelf reports an exit caused by fail's own SIGKILL.
func killedBySelf(st *os.ProcessState) bool {
	ws, ok := st.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

func (s *Successor) send(m message) error {
	s.ctrl.SetWriteDeadline(time.Now().Add(s.timeout))
	return writeMessage(s.ctrl, m)
}

// recv reads the next message within the timeout. A successor that
// exits first is reported with its exit status.
func (s *Successor) recv() (message, error) {
	s.ctrl.SetReadDeadline(time.Now().Add(s.timeout))
	m, err := readMessage(s.r)
	if err == nil {
		return m, nil
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return m, fmt.Errorf("successor did not answer within %s", s.timeout)
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) {
		// Reset: it exited with the offer unread.
		select {
		case <-s.exited:
			return m, errExited
		case <-time.After(time.Second):
		}
		return m, errors.New("successor closed the control socket")
	}
	return m, err
}

func writeMessage(w io.Writer, m message) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

func readMessage(r *bufio.Reader) (message, error) {
	var m message
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > maxMessage {
			return m, fmt.Errorf("control message over %d bytes", maxMessage)
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			if err == io.EOF && len(line) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return m, err
		}
		break
	}
	if err := json.Unmarshal(line, &m); err != nil {
		return m, fmt.Errorf("bad control message: %w", err)
	}
	return m, nil
}

// Predecessor is the successor's view of the process handing over.
type Predecessor struct {
	ctrl  *os.File
	r     *bufio.Reader
	State json.RawMessage
	// FDs are the passed descriptors, in the order of the offer. They
	// belong to the caller.
	FDs []int
}

// FromEnv returns the predecessor if this process was started as a
// successor, and nil otherwise. It removes EnvFD from the environment so
// that a later successor is not confused by it. The offer is read here.
func FromEnv() (*Predecessor, error) {
	v, ok := os.LookupEnv(EnvFD)
	if !ok {
		return nil, nil
	}
	os.Unsetenv(EnvFD)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 0 {
		return nil, fmt.Errorf("%s=%q: not a descriptor", EnvFD, v)
	}
	if !isSocket(fd) {
		return nil, fmt.Errorf("%s=%d: not a socket", EnvFD, fd)
	}
	unix.CloseOnExec(fd)
	p := &Predecessor{ctrl: os.NewFile(uintptr(fd), "handoff-control")}
	p.r = bufio.NewReader(p.ctrl)
	p.ctrl.SetReadDeadline(time.Now().Add(30 * time.Second))
	m, err := readMessage(p.r)
	if err != nil {
		p.ctrl.Close()
		return nil, fmt.Errorf("read the handoff offer: %w", err)
	}
	if m.Kind != "offer" {
		p.ctrl.Close()
		return nil, fmt.Errorf("read the handoff offer: got %q", m.Kind)
	}
	p.State = m.State
	for _, fd := range m.FDs {
		if !isSocket(fd) && !isMemfd(fd) {
			p.Fail(fmt.Errorf("descriptor %d: not an inherited socket or memfd", fd))
			return nil, fmt.Errorf("read the handoff offer: descriptor %d is not an inherited socket or memfd", fd)
		}
		unix.CloseOnExec(fd)
		p.FDs = append(p.FDs, fd)
	}
	return p, nil
}

// isMemfd reports whether fd is a memfd: the state of a connection that
// a predecessor wrote for its successor. Only a memfd has seals to get.
func isMemfd(fd int) bool {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	return err == nil
}

// isSocket reports whether fd is an open socket.
func isSocket(fd int) bool {
	var st unix.Stat_t
	return unix.Fstat(fd, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFSOCK
}

// Ready reports that the state is rebuilt and waits for "go", then
// confirms. It returns an error, and the caller must give up without
// touching the sockets, if the predecessor does not say go within
// timeout or goes away.
func (p *Predecessor) Ready(version string, timeout time.Duration) error {
	defer p.ctrl.Close()
	p.ctrl.SetWriteDeadline(time.Now().Add(timeout))
	if err := writeMessage(p.ctrl, message{Kind: "ready", Pid: os.Getpid(), Version: version}); err != nil {
		return fmt.Errorf("report ready: %w", err)
	}
	p.ctrl.SetReadDeadline(time.Now().Add(timeout))
	m, err := readMessage(p.r)
	if err != nil {
		return fmt.Errorf("wait for go: %w", err)
	}
	if m.Kind != "go" {
		return fmt.Errorf("wait for go: got %q", m.Kind)
	}
	if err := writeMessage(p.ctrl, message{Kind: "running", Pid: os.Getpid()}); err != nil {
		return fmt.Errorf("confirm running: %w", err)
	}
	return nil
}

// Fail tells the predecessor why this process cannot take over, and
// closes the control socket.
func (p *Predecessor) Fail(err error) {
	p.ctrl.SetWriteDeadline(time.Now().Add(time.Second))
	writeMessage(p.ctrl, message{Kind: "error", Error: err.Error()})
	p.ctrl.Close()
}
