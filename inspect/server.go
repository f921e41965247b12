// Package inspect is a receiver for operators and tests: it accepts
// connections, decodes an optional PROXY protocol header (v1 or v2) and the
// BMP messages behind it, and writes one line per connection describing what
// arrived. It never writes to a connection.
package inspect

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/pires/go-proxyproto"
	"github.com/rs/zerolog"
)

// DefaultHeaderTimeout bounds the wait for a PROXY header when
// Server.HeaderTimeout is zero.
const DefaultHeaderTimeout = 5 * time.Second

// Accept back-off after a resource error (EMFILE and the like).
const (
	minAcceptBackoff = 5 * time.Millisecond
	maxAcceptBackoff = time.Second
)

// Server inspects connections. Set its fields before calling Serve and do not
// change or copy it afterwards.
type Server struct {
	// Out receives one line per connection: Record.String, or the Record as
	// JSON when JSON is set. Writes are serialised, so lines never
	// interleave. A nil Out discards the records.
	Out  io.Writer
	JSON bool
	// Logger gets accept errors and failures to write to Out. The zero
	// Logger discards.
	Logger zerolog.Logger
	// HeaderTimeout bounds the wait for the PROXY header; zero means
	// DefaultHeaderTimeout. If it passes before a signature is complete,
	// the connection is taken to have no header and what arrived is payload.
	HeaderTimeout time.Duration
	// MaxMessage bounds one BMP message; zero means bmp.MaxMessageLen.
	MaxMessage uint32

	mu sync.Mutex // serialises writes to Out
}

// Serve accepts connections on ln and inspects each in its own goroutine
// until ctx is done or Accept fails with an error other than a resource
// shortage. It always closes ln, and before it returns it closes every
// connection still open and waits for all its goroutines. It returns nil when
// ctx stopped it, and the Accept error otherwise.
//
// A connection's record is written before the connection is closed, so a
// client that sees the close can read the record.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var open connSet
	defer wg.Wait()
	defer cancel()
	wg.Go(func() {
		<-ctx.Done()
		_ = ln.Close()
		open.closeAll()
	})
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if !resourceShortage(err) {
				return fmt.Errorf("inspect: accept: %w", err)
			}
			backoff = min(max(2*backoff, minAcceptBackoff), maxAcceptBackoff)
			s.Logger.Warn().Err(err).Dur("backoff", backoff).Msg("inspect: accept failed, retrying")
			if !sleep(ctx, backoff) {
				return nil
			}
			continue
		}
		backoff = 0
		if !open.add(c) {
			_ = c.Close() // shutting down
			continue
		}
		wg.Go(func() {
			defer open.remove(c)
			s.handle(ctx, c)
		})
	}
}

// resourceShortage reports whether an Accept error is a temporary lack of
// resources after which accepting again can succeed.
func resourceShortage(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM) ||
		errors.Is(err, syscall.ECONNABORTED)
}

// sleep waits for d and reports false if ctx ended first.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// connSet holds the open connections of one Serve call. After closeAll it
// refuses new ones, so no connection escapes the shutdown.
type connSet struct {
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

// add registers c and reports false if the set is already closed.
func (cs *connSet) add(c net.Conn) bool {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.closed {
		return false
	}
	if cs.conns == nil {
		cs.conns = make(map[net.Conn]struct{})
	}
	cs.conns[c] = struct{}{}
	return true
}

func (cs *connSet) remove(c net.Conn) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	delete(cs.conns, c)
}

// closeAll closes every registered connection, which unblocks its reader.
func (cs *connSet) closeAll() {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.closed = true
	for c := range cs.conns {
		_ = c.Close()
	}
}

// handle inspects c, writes its record and closes it.
func (s *Server) handle(ctx context.Context, c net.Conn) {
	defer func() { _ = c.Close() }()
	rec := s.inspect(c)
	if rec.Error != "" && ctx.Err() != nil {
		rec.Error = "closed by server shutdown: " + rec.Error
	}
	s.emit(rec)
}

// inspect reads c to its end and returns its Record. It reads the PROXY
// header under a read deadline of HeaderTimeout, then counts and decodes the
// payload with Scan. It does not close c.
func (s *Server) inspect(c net.Conn) Record {
	timeout := s.HeaderTimeout
	if timeout <= 0 {
		timeout = DefaultHeaderTimeout
	}
	m := &meter{r: c}
	br := bufio.NewReader(m)
	hdr, err := readHeader(c, br, timeout)
	// Read only peeks until a signature matches, so nothing is consumed
	// unless the header parser started.
	consumed := m.n - int64(br.Buffered())
	var rec Record
	switch {
	case err == nil:
		rec = Scan(br, s.MaxMessage)
		describeHeader(&rec, hdr)
	case consumed == 0 && (errors.Is(err, proxyproto.ErrNoProxyProtocol) || isTimeout(err)):
		rec = Scan(br, s.MaxMessage)
		rec.Proxy = "none"
	case consumed == 0:
		rec = Record{Proxy: "none", Bytes: m.n, BMPTypes: []TypeCount{}, Error: fmt.Sprintf("read: %v", err)}
	default:
		// A signature matched but the header is bad. Its end is unknown, so
		// the rest is only counted.
		rec = Record{Proxy: m.signature(), BMPTypes: []TypeCount{}, Error: fmt.Sprintf("proxy header: %v", err)}
		if _, cerr := io.Copy(io.Discard, br); cerr != nil {
			rec.Error += fmt.Sprintf("; read: %v", cerr)
		}
		rec.Bytes = m.n
	}
	rec.Peer = c.RemoteAddr().String()
	return rec
}

// readHeader runs proxyproto.Read under a read deadline and clears the
// deadline afterwards.
func readHeader(c net.Conn, br *bufio.Reader, timeout time.Duration) (*proxyproto.Header, error) {
	if err := c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return nil, fmt.Errorf("set read deadline: %w", err)
	}
	hdr, err := proxyproto.Read(br)
	if derr := c.SetReadDeadline(time.Time{}); derr != nil && err == nil {
		return nil, fmt.Errorf("clear read deadline: %w", derr)
	}
	return hdr, err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// describeHeader copies a parsed PROXY header into rec.
func describeHeader(rec *Record, h *proxyproto.Header) {
	rec.Proxy = fmt.Sprintf("v%d", h.Version)
	rec.Command = "PROXY"
	if h.Command.IsLocal() {
		rec.Command = "LOCAL"
	}
	rec.Family = family(h.TransportProtocol)
	if h.SourceAddr != nil {
		rec.Src = h.SourceAddr.String()
	}
	if h.DestinationAddr != nil {
		rec.Dst = h.DestinationAddr.String()
	}
}

// family names an address family and transport the way PROXY v1 does.
func family(f proxyproto.AddressFamilyAndProtocol) string {
	switch f {
	case proxyproto.UNSPEC:
		return "UNSPEC"
	case proxyproto.TCPv4:
		return "TCP4"
	case proxyproto.TCPv6:
		return "TCP6"
	case proxyproto.UDPv4:
		return "UDP4"
	case proxyproto.UDPv6:
		return "UDP6"
	case proxyproto.UnixStream:
		return "UNIX-STREAM"
	case proxyproto.UnixDatagram:
		return "UNIX-DGRAM"
	}
	return fmt.Sprintf("0x%02x", byte(f))
}

// emit writes one record line to Out.
func (s *Server) emit(rec Record) {
	if s.Out == nil {
		return
	}
	var line []byte
	if s.JSON {
		if rec.BMPTypes == nil {
			rec.BMPTypes = []TypeCount{}
		}
		b, err := json.Marshal(rec)
		if err != nil { // cannot happen: Record holds only strings and numbers
			s.Logger.Error().Err(err).Str("peer", rec.Peer).Msg("inspect: encode record")
			return
		}
		line = append(b, '\n')
	} else {
		line = []byte(rec.String() + "\n")
	}
	s.mu.Lock()
	_, err := s.Out.Write(line)
	s.mu.Unlock()
	if err != nil {
		s.Logger.Error().Err(err).Str("peer", rec.Peer).Msg("inspect: write record")
	}
}

// meter counts the bytes read from a connection and keeps the first few, to
// tell which PROXY signature a malformed header started with.
type meter struct {
	r      io.Reader
	n      int64
	prefix [12]byte // len(proxyproto.SIGV2)
	np     int
}

func (m *meter) Read(p []byte) (int, error) {
	n, err := m.r.Read(p)
	if m.np < len(m.prefix) {
		m.np += copy(m.prefix[m.np:], p[:n])
	}
	m.n += int64(n)
	return n, err
}

// signature returns "v1" or "v2" for the PROXY signature the connection
// started with, or "none".
func (m *meter) signature() string {
	got := m.prefix[:m.np]
	switch {
	case bytes.HasPrefix(got, proxyproto.SIGV2):
		return "v2"
	case bytes.HasPrefix(got, proxyproto.SIGV1):
		return "v1"
	}
	return "none"
}
