package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// The sink protocol. After the proxy's PROXY header (if any), the client
// sends a preamble: mode, the header kind it expects the proxy to send, and
// its own address as the proxy should report it. The sink checks both, so
// a peer that loses bytes or misreports the client is detected, not
// assumed.
const (
	modeBulk = 'B' // count bytes to EOF, reply with the count (8 bytes) and 'K'
	modeEcho = 'E' // echo everything until EOF

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

// runSink serves the sink protocol on addr until the process is killed. It
// prints its address on stdout once listening.
func runSink(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	fmt.Println(ln.Addr().String())
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
		go sinkConn(c.(*net.TCPConn))
	}
}

func sinkConn(c *net.TCPConn) {
	defer c.Close()
	// Small buffers: the idle workload holds 10,000 connections here.
	br := bufio.NewReaderSize(c, 4<<10)
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	kind, src, err := readProxyHeader(br)
	if err != nil {
		return
	}
	var pre [3]byte
	if _, err := io.ReadFull(br, pre[:]); err != nil {
		return // a readiness probe: connected and closed
	}
	claimed := make([]byte, pre[2])
	if _, err := io.ReadFull(br, claimed); err != nil {
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
