package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"golang.org/x/sys/unix"
)

// The sink protocol. After the proxy's PROXY header (if any), the client
// sends a preamble: mode, the header kind it expects the proxy to send, and
// its own address as the proxy should report it. The sink checks both, so
// a peer that loses bytes or misreports the client is detected, not
// assumed.
//
// A fan-out leg's replies never reach the client, so in modeFanout the
// sink also records each stream's count under the source address of its
// PROXY header, for the client to fetch with a modeQuery connection made
// to the sink directly. A stream whose first byte after the header is a
// BMP version (3) has no preamble: the sink counts it to EOF and replies
// with the count, 'K', and the source address of the header (a length
// byte, then the address), for the client to check.
const (
	modeBulk   = 'B' // count bytes to EOF, reply with the count (8 bytes) and 'K'
	modeEcho   = 'E' // echo everything until EOF
	modeFanout = 'F' // as modeBulk, discarding without copying (MSG_TRUNC) in turns with the process's other such streams, and record the count
	modeQuery  = 'Q' // the preamble's address names a modeFanout stream: reply with its count and status

	headerNone byte = 0
	headerV1   byte = 1
	headerV2   byte = 2

	statusOK  = 'K'
	statusBad = 'X'
)

// preamble encodes what the client tells the sink.
func preamble(mode byte, expect byte, client string) []byte {
	b := []byte{mode, expect, byte(len(client))}
	return append(b, client...)
}

// runSink serves the sink protocol on n listeners at addr until the
// process is killed. It prints their addresses on stdout, on one line
// separated by spaces, once listening. A modeQuery on a listener finds
// the stream that came in on that listener.
func runSink(addr string, n, rcvbuf int) error {
	tl := &tally{m: map[string]chan tallied{}}
	dr, err := newDrainer()
	if err != nil {
		return err
	}
	var lns []net.Listener
	var addrs []string
	var lc net.ListenConfig
	if rcvbuf > 0 {
		// Set on the listener, so that accepted sockets have it from
		// the handshake on, and the kernel does not tune it.
		lc.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf)
			})
			if err == nil {
				err = serr
			}
			return err
		}
	}
	for range max(n, 1) {
		ln, err := lc.Listen(context.Background(), "tcp", addr)
		if err != nil {
			return err
		}
		lns = append(lns, ln)
		addrs = append(addrs, ln.Addr().String())
	}
	fmt.Println(strings.Join(addrs, " "))
	errs := make(chan error, len(lns))
	for _, ln := range lns {
		go func() { errs <- serveSink(ln, tl, dr) }() // runs until the process ends
	}
	return <-errs
}

func serveSink(ln net.Listener, tl *tally, dr *drainer) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			time.Sleep(10 * time.Millisecond) // EMFILE and the like: back off
			continue
		}
		go sinkConn(c.(*net.TCPConn), tl, dr)
	}
}

// tally holds the counts of modeFanout streams until they are queried.
type tally struct {
	mu sync.Mutex
	// By the stream's source address and the listener it came in on: a
	// fan-out's legs to one sink process carry the same source. Capacity 1.
	m map[string]chan tallied
}

type tallied struct {
	n  int64
	ok bool
}

func (t *tally) slot(key string) chan tallied {
	t.mu.Lock()
	defer t.mu.Unlock()
	ch := t.m[key]
	if ch == nil {
		ch = make(chan tallied, 1)
		t.m[key] = ch
	}
	return ch
}

// record keeps the count of the stream from key, replacing one never
// queried (its address was reused).
func (t *tally) record(key string, v tallied) {
	ch := t.slot(key)
	for {
		select {
		case ch <- v:
			return
		default:
			select {
			case <-ch:
			default:
			}
		}
	}
}

// wait returns the count of the stream from key once it has ended.
func (t *tally) wait(key string, d time.Duration) (tallied, bool) {
	ch := t.slot(key)
	select {
	case v := <-ch:
		t.mu.Lock()
		delete(t.m, key)
		t.mu.Unlock()
		return v, true
	case <-time.After(d):
		return tallied{}, false
	}
}

func sinkConn(c *net.TCPConn, tl *tally, dr *drainer) {
	defer c.Close()
	// Small buffers: the idle workload holds 10,000 connections here.
	br := bufio.NewReaderSize(c, 4<<10)
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	kind, src, err := readProxyHeader(br)
	if err != nil {
		return
	}
	if b, err := br.Peek(1); err == nil && b[0] == bmpVersion {
		c.SetReadDeadline(time.Time{})
		sinkBMP(c, br, src)
		return
	}
	var pre [3]byte
	if _, err := io.ReadFull(br, pre[:]); err != nil {
		// A readiness probe, connected and closed, or a fan-out leg cut
		// before its preamble: a query for it finds it got nothing.
		if kind != headerNone {
			tl.record(src+" "+c.LocalAddr().String(), tallied{ok: true})
		}
		return
	}
	claimed := make([]byte, pre[2])
	if _, err := io.ReadFull(br, claimed); err != nil {
		if kind != headerNone {
			tl.record(src+" "+c.LocalAddr().String(), tallied{ok: true})
		}
		return
	}
	c.SetReadDeadline(time.Time{})
	ok := kind == pre[1] && (kind == headerNone || src == string(claimed))
	if !ok {
		fmt.Fprintf(os.Stderr, "sink: header kind %d src %q, client expected kind %d src %q\n", kind, src, pre[1], claimed)
	}
	switch pre[0] {
	case modeBulk:
		buf := make([]byte, 1<<20)
		n := int64(br.Buffered())
		br.Discard(br.Buffered())
		for {
			m, err := c.Read(buf)
			n += int64(m)
			if err != nil {
				break
			}
		}
		var reply [9]byte
		binary.BigEndian.PutUint64(reply[:8], uint64(n))
		reply[8] = statusOK
		if !ok {
			reply[8] = statusBad
		}
		c.Write(reply[:])
	case modeFanout:
		n := int64(br.Buffered())
		br.Discard(br.Buffered())
		// A leg cut by the proxy ends in EOF or a reset: either way
		// its count is what it got.
		m, err := dr.drain(c)
		n += m
		tl.record(src+" "+c.LocalAddr().String(), tallied{n: n, ok: ok})
		var reply [9]byte
		binary.BigEndian.PutUint64(reply[:8], uint64(n))
		reply[8] = statusOK
		if !ok || err != nil {
			reply[8] = statusBad
		}
		c.Write(reply[:])
	case modeQuery:
		v, found := tl.wait(string(claimed)+" "+c.LocalAddr().String(), time.Minute)
		var reply [9]byte
		binary.BigEndian.PutUint64(reply[:8], uint64(v.n))
		reply[8] = statusOK
		if !found || !v.ok || !ok {
			reply[8] = statusBad
		}
		c.Write(reply[:])
	case modeEcho:
		if !ok {
			c.SetLinger(0)
			return
		}
		buf := make([]byte, 16<<10)
		for {
			n, err := br.Read(buf)
			if n > 0 {
				if _, werr := c.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				c.CloseWrite()
				return
			}
		}
	}
}

// sinkBMP counts a BMP stream to EOF and replies with the count, 'K' and
// src, the source address its PROXY header carried.
func sinkBMP(c *net.TCPConn, br *bufio.Reader, src string) {
	buf := make([]byte, 1<<20)
	n := int64(br.Buffered())
	br.Discard(br.Buffered())
	for {
		m, err := c.Read(buf)
		n += int64(m)
		if err != nil {
			break
		}
	}
	reply := binary.BigEndian.AppendUint64(nil, uint64(n))
	reply = append(reply, statusOK, byte(len(src)))
	c.Write(append(reply, src...))
}

// drainer reads the process's modeFanout streams to EOF without copying
// their bytes (MSG_TRUNC on a TCP socket drops them in the kernel), in
// turns: each round of one level-triggered epoll_wait takes at most
// drainTurn bytes from each ready socket. So the sinks of one process
// behave as equally fast collectors, and the load core, which runs the
// client and every sink, pays for one copy however many legs a fan-out
// has. Sinks that read to EAGAIN each (or one process per sink) take
// turns of a time slice instead: at loopback speed one runs milliseconds,
// several MiB, ahead, more than a leg's default buffer.
type drainer struct {
	epfd  int
	mu    sync.Mutex
	conns map[int32]*drained
}

const drainTurn = 256 << 10

// drained is one stream being drained; done gets its count at EOF.
type drained struct {
	fd   int
	n    int64
	done chan error
}

// newDrainer starts its loop, which runs until the process ends.
func newDrainer() (*drainer, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	d := &drainer{epfd: epfd, conns: map[int32]*drained{}}
	go d.loop()
	return d, nil
}

// drain reads c to EOF in turns and returns how many bytes it had.
func (d *drainer) drain(c *net.TCPConn) (int64, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	dc := &drained{done: make(chan error, 1)}
	rc.Control(func(fd uintptr) { dc.fd = int(fd) }) // c stays open until drain returns
	d.mu.Lock()
	d.conns[int32(dc.fd)] = dc
	d.mu.Unlock()
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(dc.fd)}
	if err := unix.EpollCtl(d.epfd, unix.EPOLL_CTL_ADD, dc.fd, &ev); err != nil {
		d.mu.Lock()
		delete(d.conns, int32(dc.fd))
		d.mu.Unlock()
		return 0, fmt.Errorf("epoll_ctl: %w", err)
	}
	err = <-dc.done
	return dc.n, err
}

func (d *drainer) loop() {
	buf := make([]byte, drainTurn) // never written: MSG_TRUNC only needs the length
	evs := make([]unix.EpollEvent, 64)
	for {
		n, err := unix.EpollWait(d.epfd, evs, -1)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			fmt.Fprintln(os.Stderr, "sink: epoll_wait:", err)
			return
		}
		for _, ev := range evs[:n] {
			d.mu.Lock()
			dc := d.conns[ev.Fd]
			d.mu.Unlock()
			if dc == nil {
				continue
			}
			m, _, err := unix.Recvfrom(dc.fd, buf, unix.MSG_TRUNC|unix.MSG_DONTWAIT)
			switch {
			case err == unix.EAGAIN || err == unix.EINTR:
				continue
			case err == nil && m > 0:
				dc.n += int64(m)
				continue
			}
			unix.EpollCtl(d.epfd, unix.EPOLL_CTL_DEL, dc.fd, nil)
			d.mu.Lock()
			delete(d.conns, ev.Fd)
			d.mu.Unlock()
			dc.done <- err // nil at EOF
		}
	}
}

// readProxyHeader reads an optional PROXY header.
func readProxyHeader(br *bufio.Reader) (kind byte, src string, err error) {
	h, err := proxyproto.Read(br)
	if errors.Is(err, proxyproto.ErrNoProxyProtocol) {
		return headerNone, "", nil
	}
	if err != nil {
		return 0, "", err
	}
	kind = headerV2
	if h.Version == 1 {
		kind = headerV1
	}
	if h.SourceAddr != nil {
		src = h.SourceAddr.String()
	}
	return kind, src, nil
}
