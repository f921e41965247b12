package main

import (
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"runtime"

	proxyproto "github.com/pires/go-proxyproto"
	"golang.org/x/sys/unix"
)

// teeRound is the most one round moves: the size of every pipe.
const teeRound = 1 << 20

// teeFloor fans c out to every target with the least work Linux allows,
// and none of bmpproxy's: one thread, blocking fds, for each round one
// splice from c into pipe P, a tee from P into each leg's pipe but the
// last, which takes P itself, and one blocking splice per leg to its
// socket. Legs move in lockstep, so a slow collector stalls the router:
// it is a floor to measure against, not a proxy to run. The first
// target's replies go back to c; the others' are never read.
func teeFloor(c *net.TCPConn, to []string) {
	defer c.Close()
	legs := make([]*net.TCPConn, 0, len(to))
	defer func() {
		for _, t := range legs {
			t.Close()
		}
	}()
	for _, a := range to {
		t, err := net.Dial("tcp", a)
		if err != nil {
			log.Printf("dial %s: %v", a, err)
			return
		}
		legs = append(legs, t.(*net.TCPConn))
		if _, err := proxyproto.HeaderProxyFromAddrs(2, c.RemoteAddr(), c.LocalAddr()).WriteTo(t); err != nil {
			return
		}
	}
	replied := make(chan struct{})
	go func() {
		io.Copy(c, legs[0])
		c.CloseWrite()
		close(replied)
	}()
	if err := teeRounds(c, legs); err != nil {
		log.Printf("fan-out: %v", err)
	}
	for _, t := range legs {
		t.CloseWrite()
	}
	<-replied
}

// teeRounds moves c's bytes to every leg until c's EOF. The files it
// takes (dups, in blocking mode) are its own and closed on return.
func teeRounds(c *net.TCPConn, legs []*net.TCPConn) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	src, err := c.File()
	if err != nil {
		return err
	}
	defer src.Close()
	outs := make([]*os.File, len(legs))
	pipes := make([][2]int, len(legs))
	for i, t := range legs {
		if outs[i], err = t.File(); err != nil {
			return err
		}
		defer outs[i].Close()
		if err := unix.Pipe2(pipes[i][:], unix.O_CLOEXEC); err != nil {
			return err
		}
		defer unix.Close(pipes[i][0])
		defer unix.Close(pipes[i][1])
		if _, err := unix.FcntlInt(uintptr(pipes[i][1]), unix.F_SETPIPE_SZ, teeRound); err != nil {
			return err
		}
	}
	last := len(legs) - 1
	p := pipes[last] // P is the last leg's pipe
	for {
		n, err := unix.Splice(int(src.Fd()), nil, p[1], nil, teeRound, unix.SPLICE_F_MOVE)
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		for i := range last {
			got, err := unix.Tee(p[0], pipes[i][1], int(n), 0)
			if err != nil {
				return err
			}
			if got != n { // the leg's pipe is empty and holds a round
				return fmt.Errorf("tee moved %d of %d bytes", got, n)
			}
		}
		for i, o := range outs {
			for left := n; left > 0; {
				m, err := unix.Splice(pipes[i][0], nil, int(o.Fd()), nil, int(left), unix.SPLICE_F_MOVE)
				if err != nil {
					return err
				}
				left -= m
			}
		}
	}
}
