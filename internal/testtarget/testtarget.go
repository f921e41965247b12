// Package testtarget provides collectors for tests: on loopback, one that
// reads the PROXY header and hands the connection on, one that refuses
// connections, one that never answers, and a UDP echo; and, on listeners
// the test opens (in namespaces of its own), stand-ins for each kind of
// BMP collector that say which router address it would record.
package testtarget

import (
	"bufio"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Header says which PROXY header a Target expects.
type Header int

// The header modes.
const (
	V2 Header = iota
	V1
	None
)

// ReadHeader reads one header from r, framed by the spec: a v2 header is
// 16 bytes plus the length in bytes 14-15, a v1 header is one CRLF line.
// None reads nothing.
func ReadHeader(r *bufio.Reader, mode Header) ([]byte, error) {
	switch mode {
	case None:
		return nil, nil
	case V1:
		return r.ReadBytes('\n')
	}
	fixed := make([]byte, 16)
	if _, err := io.ReadFull(r, fixed); err != nil {
		return nil, err
	}
	rest := make([]byte, binary.BigEndian.Uint16(fixed[14:]))
	if _, err := io.ReadFull(r, rest); err != nil {
		return nil, err
	}
	return append(fixed, rest...), nil
}

// Target is a collector on 127.0.0.1. Each connection's header is read and
// recorded, then handle gets the connection and a reader holding whatever
// followed the header. Cleanup closes the listener and waits for every
// handler.
type Target struct {
	ln      net.Listener
	wg      sync.WaitGroup
	mu      sync.Mutex
	headers [][]byte
	conns   map[net.Conn]bool // open now
}

// New starts a Target.
func New(t testing.TB, mode Header, handle func(c *net.TCPConn, r *bufio.Reader)) *Target {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return NewOn(t, ln, mode, handle)
}

// NewOn starts a Target on ln, which it closes at cleanup.
func NewOn(t testing.TB, ln net.Listener, mode Header, handle func(c *net.TCPConn, r *bufio.Reader)) *Target {
	t.Helper()
	tg := &Target{ln: ln, conns: map[net.Conn]bool{}}
	tg.wg.Add(1)
	go func() {
		defer tg.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tg.mu.Lock()
			tg.conns[c] = true
			tg.mu.Unlock()
			tg.wg.Add(1)
			go func() {
				defer tg.wg.Done()
				defer func() {
					tg.mu.Lock()
					delete(tg.conns, c)
					tg.mu.Unlock()
					c.Close()
				}()
				r := bufio.NewReaderSize(c, 64<<10)
				h, err := ReadHeader(r, mode)
				if err != nil {
					return
				}
				tg.mu.Lock()
				tg.headers = append(tg.headers, h)
				tg.mu.Unlock()
				handle(c.(*net.TCPConn), r)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); tg.CloseConns(); tg.wg.Wait() })
	return tg
}

// CloseConns closes every connection open now, as a collector that
// restarts would: their handlers see the close and return.
func (tg *Target) CloseConns() {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	for c := range tg.conns {
		c.Close()
	}
}

// Later returns a loopback address that refuses connections until listen
// is called, and then accepts on it: a collector that comes up late.
func Later(t testing.TB) (addr string, listen func() net.Listener) {
	t.Helper()
	return LaterOn(t, netip.AddrFrom4([4]byte{127, 0, 0, 1}))
}

// LaterOn is Later on ip, such as ::1: a free port of ip that refuses
// connections until listen is called.
func LaterOn(t testing.TB, ip netip.Addr) (addr string, listen func() net.Listener) {
	t.Helper()
	fd, addr := boundOn(t, ip)
	return addr, func() net.Listener {
		t.Helper()
		if err := unix.Listen(fd, 128); err != nil {
			t.Fatal(err)
		}
		dup, err := unix.Dup(fd)
		if err != nil {
			t.Fatal(err)
		}
		f := os.NewFile(uintptr(dup), addr)
		defer f.Close()
		ln, err := net.FileListener(f)
		if err != nil {
			t.Fatal(err)
		}
		return ln
	}
}

// Addr returns the address to dial.
func (tg *Target) Addr() string { return tg.ln.Addr().String() }

// Headers returns the headers received so far, in arrival order.
func (tg *Target) Headers() [][]byte {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	return append([][]byte(nil), tg.headers...)
}

// Echo sends everything back and half-closes once the client has.
func Echo(c *net.TCPConn, r *bufio.Reader) {
	io.Copy(c, r)
	c.CloseWrite()
}

// Refusing returns a loopback address nobody listens on: a connect is
// refused at once. The port stays bound, without listening, until
// cleanup, so that no listener the test opens later can be given it.
func Refusing(t testing.TB) string {
	t.Helper()
	_, addr := bound(t)
	return addr
}

// Silent returns a loopback address whose accept queue is full, so SYNs to
// it are dropped and a connect hangs until its timeout.
func Silent(t testing.TB) string {
	t.Helper()
	fd, addr := bound(t)
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	// A backlog of 0 still queues one connection: fill it.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return addr
}

// bound returns a TCP socket bound to a free port on 127.0.0.1, closed at
// cleanup, and its address.
func bound(t testing.TB) (fd int, addr string) {
	t.Helper()
	return boundOn(t, netip.AddrFrom4([4]byte{127, 0, 0, 1}))
}

// boundOn is bound on ip, of either family.
func boundOn(t testing.TB, ip netip.Addr) (fd int, addr string) {
	t.Helper()
	var family int
	var sa unix.Sockaddr
	if ip.Is4() {
		family, sa = unix.AF_INET, &unix.SockaddrInet4{Addr: ip.As4()}
	} else {
		family, sa = unix.AF_INET6, &unix.SockaddrInet6{Addr: ip.As16()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, sa); err != nil {
		t.Fatal(err)
	}
	got, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	var port int
	switch got := got.(type) {
	case *unix.SockaddrInet4:
		port = got.Port
	case *unix.SockaddrInet6:
		port = got.Port
	}
	return fd, netip.AddrPortFrom(ip, uint16(port)).String()
}

// Recv waits up to 10 s for a value from ch, such as a collector's
// payload, and fails the test without one.
func Recv[T any](t testing.TB, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatal("nothing arrived within 10s")
		var zero T
		return zero
	}
}

// UDPEcho is a UDP server on 127.0.0.1 that answers each datagram with
// prefix and the datagram. Cleanup closes it and waits for its goroutine.
func UDPEcho(t testing.TB, prefix string) *net.UDPAddr {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			c.WriteToUDPAddrPort(append([]byte(prefix), buf[:n]...), from)
		}
	}()
	t.Cleanup(func() {
		c.Close()
		<-done
	})
	return c.LocalAddr().(*net.UDPAddr)
}
