// Command bmpproxy is a dual-stack TCP proxy for BMP collectors: it
// forwards each connection with a PROXY protocol header carrying the real
// router address, and moves the bytes with splice(2).
package main

import (
	"os"

	"golang.org/x/sys/unix"
)

func main() {
	openStdio()
	os.Exit(run(os.Args, os.Stdout, os.Stderr))
}

// openStdio opens /dev/null on any of fds 0, 1 and 2 that is closed, so
// that no socket is ever given one of them: an upgrade passes sockets at
// their own numbers and stdio as it is (package handoff).
func openStdio() {
	for fd := 0; fd <= 2; fd++ {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != unix.EBADF {
			continue
		}
		if nfd, err := unix.Open("/dev/null", unix.O_RDWR, 0); err == nil && nfd != fd {
			unix.Close(nfd) // fd was taken meanwhile; not expected this early
		}
	}
}
