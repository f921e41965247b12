// Package reaper keeps a container's PID 1 alive across upgrades.
//
// An upgrade hands every socket to a successor process, which is a child
// of the process it replaces (package handoff), so the serving PID
// changes. Outside a container the service manager follows it
// (MAINPID). When bmpproxy is PID 1, its exit would end the container, so
// after its handover it stays as a small init instead:
//
//   - it listens on a notification socket of its own, named in
//     NOTIFY_SOCKET for its descendants, and follows MAINPID=,
//     acknowledging BARRIER=1 as systemd does, so each handover in the
//     chain names the next serving process;
//   - it forwards SIGTERM, SIGINT, SIGHUP, SIGQUIT and SIGUSR2 to that
//     process;
//   - it reaps every child, and exits with the serving process's status
//     once that one exits without having named a successor.
package reaper

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// Socket is the notification socket descendants report to.
type Socket struct {
	conn *net.UnixConn
	Addr string // for NOTIFY_SOCKET; "@" starts an abstract name
}

// Listen opens a notification socket with an abstract name.
func Listen() (*Socket, error) {
	var b [8]byte
	rand.Read(b[:])
	name := "@bmpproxy-init-" + hex.EncodeToString(b[:])
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: "\x00" + name[1:], Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("init notification socket: %w", err)
	}
	return &Socket{conn: c, Addr: name}, nil
}

// Close closes the socket.
func (s *Socket) Close() error { return s.conn.Close() }

// Serve is the init loop after this process handed over to main. It
// returns the exit code: the serving process's, once it exits without a
// successor.
func (s *Socket) Serve(main int, log zerolog.Logger) int {
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGCHLD, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR2)
	defer signal.Stop(sigs)
	mains := make(chan int, 16)
	go s.follow(mains, log)
	defer s.conn.Close() // ends follow
	log.Info().Int("main_pid", main).Msg("init: serving process handed over; staying as PID 1 to reap and forward signals")
	for {
		// A child may have exited before SIGCHLD was subscribed.
		if code, done := reap(&main, mains, log); done {
			return code
		}
		select {
		case pid := <-mains:
			if pid != main { // READY=1 repeats the serving process's own pid
				main = pid
				log.Info().Int("main_pid", main).Msg("init: following the new serving process")
			}
		case sig := <-sigs:
			if sig == syscall.SIGCHLD {
				continue
			}
			log.Info().Stringer("signal", sig).Int("main_pid", main).Msg("init: forwarding")
			syscall.Kill(main, sig.(syscall.Signal))
		}
	}
}

// reap collects every exited child. It reports done, with the exit code,
// when the serving process exited; MAINPID updates already read are
// applied first, since a process that hands over exits only after its
// successor was named.
func reap(main *int, mains <-chan int, log zerolog.Logger) (code int, done bool) {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			return 0, false
		}
		for drained := false; !drained; {
			select {
			case m := <-mains:
				*main = m
			default:
				drained = true
			}
		}
		if pid != *main {
			continue
		}
		switch {
		case ws.Exited():
			code = ws.ExitStatus()
		case ws.Signaled():
			code = 128 + int(ws.Signal())
		}
		log.Info().Int("pid", pid).Int("exit_code", code).Msg("init: the serving process exited; exiting")
		return code, true
	}
}

// follow reads notifications until the socket is closed, sends each
// MAINPID on mains, and closes descriptors passed with BARRIER=1, which
// is the acknowledgement.
func (s *Socket) follow(mains chan<- int, log zerolog.Logger) {
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4*16))
	for {
		n, oobn, _, _, err := s.conn.ReadMsgUnix(buf, oob)
		if err != nil {
			return
		}
		if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, m := range msgs {
				fds, _ := unix.ParseUnixRights(&m)
				for _, fd := range fds {
					unix.Close(fd)
				}
			}
		}
		for _, line := range strings.Split(string(buf[:n]), "\n") {
			if v, ok := strings.CutPrefix(line, "MAINPID="); ok {
				if pid, err := strconv.Atoi(v); err == nil && pid > 0 {
					mains <- pid
				}
			}
		}
	}
}
