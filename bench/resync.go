package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// Resync: a router sends the full-table-like workload (tableSpec) through
// bmpproxy to a collector in this process, which counts the routes and
// End-of-RIBs it receives, so the run knows when the table has arrived
// without a reply from the collector. With resync, the collector then
// restarts (resets its connection); bmpproxy dials it again and replays
// the router's state, and the run times the replay to its last End-of-RIB.
// The router stays connected and silent throughout.

// resyncPeers are the rows of the resync workload, each with the
// collector as its one target.
func resyncPeers() []*peer {
	mk := func(name, file string, resync bool, extra ...string) *peer {
		return &peer{
			name: name, header: headerV2,
			start: func(e *env) (*running, error) {
				if e.collector == nil {
					return nil, errors.New("no collector")
				}
				args := append([]string{"--listen", "127.0.0.1:%PORT%", "--target", e.collector.addr(), "--log-level", "warn"}, extra...)
				r, err := launch(e, file, nil, false, e.bmpproxy, args...)
				if err == nil {
					r.collector, r.resync = e.collector, resync
				}
				return r, err
			},
		}
	}
	return []*peer{
		mk("bmpproxy, no resync", "bmpproxy-bmpstream", false),
		mk("bmpproxy --bmp", "bmpproxy-bmp", false, "--bmp"),
		mk("bmpproxy --bmp --resync", "bmpproxy-resync", true, "--bmp", "--resync"),
	}
}

// tableStream is the workload's stream, built once on first use.
type tableStream struct {
	spec tableSpec
	once sync.Once
	b    []byte
}

func (s *tableStream) bytes() []byte {
	s.once.Do(func() { s.b = s.spec.stream() })
	return s.b
}

// resyncRun sends the table through t and measures its arrival at the
// collector; with t.resync, it restarts the collector and measures the
// replay.
func resyncRun(t target, ts *tableStream) (metrics, error) {
	if t.collector == nil {
		return nil, errors.New("no collector (bench load cannot run this workload)")
	}
	stream, spec := ts.bytes(), ts.spec
	want := tallyWant{routes: spec.routes(), eors: 2 * spec.peers, peerUps: spec.peers}
	t.collector.drain()
	cpu0, err := fineCPUTime(t.pid)
	if err != nil {
		return nil, err
	}
	rss0, err := rssKiB(t.pid)
	if err != nil {
		return nil, err
	}
	c, err := dial(t)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Minute))
	router := c.LocalAddr().String()
	start := time.Now()
	wrote := make(chan error, 1)
	go func() { // ended before resyncRun returns: c is closed at worst
		_, err := c.Write(stream)
		wrote <- err
	}()
	first, br, err := t.collector.accept(router, 30*time.Second)
	if err != nil {
		return nil, err
	}
	defer first.Close()
	live, err := collect(first, br, want)
	if err != nil {
		return nil, fmt.Errorf("live stream: %w", err)
	}
	arrived := time.Since(start)
	if err := <-wrote; err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	if live.bytes != int64(len(stream)) {
		return nil, fmt.Errorf("%w: router sent %d bytes, collector got %d", errMismatch, len(stream), live.bytes)
	}
	cpu1, err := fineCPUTime(t.pid)
	if err != nil {
		return nil, err
	}
	rss1, err := rssKiB(t.pid)
	if err != nil {
		return nil, err
	}
	routes := float64(want.routes)
	m := metrics{
		"gbps":             float64(len(stream)) * 8 / arrived.Seconds() / 1e9,
		"mroutes_per_s":    routes / arrived.Seconds() / 1e6,
		"cpu_ns_per_route": float64(cpu1-cpu0) / routes,
		"rss_b_per_route":  float64(rss1-rss0) * 1024 / routes,
	}
	if t.resync {
		// The collector restarts: bmpproxy sees the reset, dials again
		// after its backoff, and replays.
		first.SetLinger(0)
		first.Close()
		second, br, err := t.collector.accept(router, time.Minute)
		if err != nil {
			return nil, fmt.Errorf("waiting for bmpproxy to dial the restarted collector: %w", err)
		}
		defer second.Close()
		began := time.Now()
		rep, err := collect(second, br, want)
		if err != nil {
			return nil, fmt.Errorf("replay: %w", err)
		}
		took := time.Since(began)
		if rep.initiations != 1 {
			return nil, fmt.Errorf("%w: the replay carried %d Initiations", errMismatch, rep.initiations)
		}
		m["replay_mroutes_per_s"] = routes / took.Seconds() / 1e6
	}
	c.CloseWrite()
	return m, nil
}

// collector is a BMP collector in this process: bmpproxy's target in the
// resync workload. Its accept loop ends when it is closed.
type collector struct {
	ln    net.Listener
	conns chan *net.TCPConn
	done  chan struct{}
}

func startCollector() (*collector, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	col := &collector{ln: ln, conns: make(chan *net.TCPConn, 16), done: make(chan struct{})}
	go func() {
		defer close(col.done)
		for {
			c, err := ln.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				time.Sleep(10 * time.Millisecond)
				continue
			}
			select {
			case col.conns <- c.(*net.TCPConn):
			default:
				c.Close() // nobody is waiting for so many
			}
		}
	}()
	return col, nil
}

func (col *collector) addr() string { return col.ln.Addr().String() }

func (col *collector) close() {
	col.ln.Close()
	<-col.done
	col.drain()
}

// drain closes connections left from an earlier run: readiness probes.
func (col *collector) drain() {
	for {
		select {
		case c := <-col.conns:
			c.Close()
		default:
			return
		}
	}
}

// accept returns the next connection whose PROXY header carries router,
// within d, with a reader past the header. Others are closed: bmpproxy
// dials the collector for each readiness probe too.
func (col *collector) accept(router string, d time.Duration) (*net.TCPConn, *bufio.Reader, error) {
	deadline := time.Now().Add(d)
	for {
		select {
		case c := <-col.conns:
			c.SetReadDeadline(deadline)
			br := bufio.NewReaderSize(c, 1<<20)
			h, err := proxyproto.Read(br)
			if err != nil || h.SourceAddr == nil || h.SourceAddr.String() != router {
				c.Close()
				continue
			}
			return c, br, nil
		case <-time.After(time.Until(deadline)):
			return nil, nil, fmt.Errorf("no connection to the collector for %s within %s", router, d)
		}
	}
}

// tallyWant is when a collector has the whole table.
type tallyWant struct{ routes, eors, peerUps int }

// bmpTally is what a collector counted on one connection.
type bmpTally struct {
	bytes                         int64
	initiations, peerUps, updates int
	routes, eors                  int
}

// collect counts the BMP messages on br until the table of want has
// arrived: its last End-of-RIB. More routes, End-of-RIBs or Peer Ups than
// want are an error.
func collect(c *net.TCPConn, br *bufio.Reader, want tallyWant) (*bmpTally, error) {
	c.SetReadDeadline(time.Now().Add(5 * time.Minute))
	t := &bmpTally{}
	buf := make([]byte, 1<<16)
	for t.eors < want.eors {
		var hdr [bmpCommonLen]byte
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return t, fmt.Errorf("after %d routes and %d End-of-RIBs: %w", t.routes, t.eors, err)
		}
		n := int(binary.BigEndian.Uint32(hdr[1:]))
		if hdr[0] != bmpVersion || n < bmpCommonLen {
			return t, fmt.Errorf("bad BMP header % x at byte %d", hdr, t.bytes)
		}
		if n > len(buf) {
			buf = make([]byte, n)
		}
		body := buf[:n-bmpCommonLen]
		if _, err := io.ReadFull(br, body); err != nil {
			return t, err
		}
		t.bytes += int64(n)
		switch hdr[5] {
		case bmpInitiation:
			t.initiations++
		case bmpPeerUp:
			t.peerUps++
		case bmpRouteMon:
			if err := t.update(body); err != nil {
				return t, fmt.Errorf("a Route Monitoring at byte %d: %w", t.bytes-int64(n), err)
			}
		}
	}
	if t.routes != want.routes || t.eors != want.eors || t.peerUps != want.peerUps {
		return t, fmt.Errorf("%w: %d routes, %d End-of-RIBs and %d Peer Ups, want %d, %d and %d",
			errMismatch, t.routes, t.eors, t.peerUps, want.routes, want.eors, want.peerUps)
	}
	return t, nil
}

// update counts the routes a Route Monitoring announces (no ADD-PATH:
// the workload negotiates none), and whether it is an End-of-RIB.
func (t *bmpTally) update(body []byte) error {
	if len(body) < bmpPerPeerLen+bgpHeaderLen+4 {
		return errors.New("too short")
	}
	u := body[bmpPerPeerLen:]
	if u[18] != bgpUpdateType {
		return nil
	}
	u = u[bgpHeaderLen:]
	wl := int(binary.BigEndian.Uint16(u))
	if 2+wl+2 > len(u) {
		return errors.New("withdrawn routes past the end")
	}
	al := int(binary.BigEndian.Uint16(u[2+wl:]))
	attrs := u[4+wl:]
	if al > len(attrs) {
		return errors.New("path attributes past the end")
	}
	nlri := attrs[al:]
	attrs = attrs[:al]
	t.updates++
	if wl == 0 && al == 0 && len(nlri) == 0 {
		t.eors++ // IPv4 unicast End-of-RIB
		return nil
	}
	t.routes += countPrefixes(nlri)
	for len(attrs) >= 3 {
		flags, typ := attrs[0], attrs[1]
		l, off := int(attrs[2]), 3
		if flags&flagExtLen != 0 {
			if len(attrs) < 4 {
				return errors.New("truncated attribute")
			}
			l, off = int(binary.BigEndian.Uint16(attrs[2:])), 4
		}
		if off+l > len(attrs) {
			return errors.New("attribute past the end")
		}
		v := attrs[off : off+l]
		attrs = attrs[off+l:]
		switch {
		case typ == attrMPReach && len(v) >= 5:
			nh := int(v[3])
			if 4+nh+1 > len(v) {
				return errors.New("MP_REACH_NLRI next hop past the end")
			}
			t.routes += countPrefixes(v[4+nh+1:])
		case typ == attrMPUnreach && len(v) == 3 && wl == 0 && len(nlri) == 0:
			t.eors++ // an empty MP_UNREACH_NLRI: End-of-RIB
		}
	}
	return nil
}

func countPrefixes(b []byte) int {
	n := 0
	for i := 0; i < len(b); i += 1 + (int(b[i])+7)/8 {
		n++
	}
	return n
}
