package inspect_test

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/bmpproxy/bmpproxy/bmp"
	"github.com/bmpproxy/bmpproxy/inspect"
	"github.com/bmpproxy/bmpproxy/internal/waitfor"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// capture reads a BMP capture shared with the bmp package's tests.
func capture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "bmp", "testdata", name))
	if err != nil {
		t.Fatalf("read capture: %v", err)
	}
	return b
}

const (
	frrFile   = "frr-8.4-bmp-initiation.bin"
	gobgpFile = "gobgp-3.10-bmp-initiation.bin"
)

// sigV2 is the PROXY protocol v2 signature, spelled out independently of
// the library under test.
const sigV2 = "\r\n\r\n\x00\r\nQUIT\n"

// v2Header hand-builds a PROXY v2 header: ver_cmd, fam, the address block
// and optional TLV bytes.
func v2Header(verCmd, fam byte, addrs []byte, tlvs []byte) []byte {
	b := append([]byte(sigV2), verCmd, fam, 0, 0)
	binary.BigEndian.PutUint16(b[14:16], uint16(len(addrs)+len(tlvs)))
	b = append(b, addrs...)
	return append(b, tlvs...)
}

// addrBlock encodes source and destination addresses and ports.
func addrBlock(src, dst string, sport, dport uint16) []byte {
	s, d := net.ParseIP(src), net.ParseIP(dst)
	if s4, d4 := s.To4(), d.To4(); s4 != nil && d4 != nil {
		s, d = s4, d4
	}
	b := append(append([]byte{}, s...), d...)
	b = binary.BigEndian.AppendUint16(b, sport)
	return binary.BigEndian.AppendUint16(b, dport)
}

// bmpMessage builds a BMP message of type typ around body.
func bmpMessage(typ bmp.Type, body []byte) []byte {
	b := []byte{bmp.Version, 0, 0, 0, 0, byte(typ)}
	b = append(b, body...)
	binary.BigEndian.PutUint32(b[1:5], uint32(len(b)))
	return b
}

// syncBuffer is a bytes.Buffer safe for the server's writer and the test.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// server is a running inspect.Server on a loopback port.
type server struct {
	addr string
	out  *syncBuffer
	stop func() error // cancels Serve and returns its result
}

// start runs srv on 127.0.0.1:0 until the test ends.
func start(t *testing.T, srv *inspect.Server) *server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	out := &syncBuffer{}
	srv.Out = out
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	var once sync.Once
	var result error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case result = <-done:
			case <-time.After(10 * time.Second):
				result = errors.New("Serve did not return within 10s of cancel")
			}
		})
		return result
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return &server{addr: ln.Addr().String(), out: out, stop: stop}
}

// records parses every JSON line written so far.
func (s *server) records(t *testing.T) []inspect.Record {
	t.Helper()
	var recs []inspect.Record
	sc := bufio.NewScanner(strings.NewReader(s.out.String()))
	for sc.Scan() {
		var r inspect.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("bad JSON line %q: %v", sc.Text(), err)
		}
		recs = append(recs, r)
	}
	return recs
}

// line returns the one output line whose peer is peer.
func (s *server) line(t *testing.T, peer string) string {
	t.Helper()
	var found []string
	for l := range strings.Lines(s.out.String()) {
		if strings.Contains(l, peer) {
			found = append(found, strings.TrimSuffix(l, "\n"))
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d lines for peer %s in output:\n%s", len(found), peer, s.out.String())
	}
	return found[0]
}

// record returns the one JSON record whose peer is peer.
func (s *server) record(t *testing.T, peer string) inspect.Record {
	t.Helper()
	var found []inspect.Record
	for _, r := range s.records(t) {
		if r.Peer == peer {
			found = append(found, r)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d records for peer %s in output:\n%s", len(found), peer, s.out.String())
	}
	return found[0]
}

// send connects, writes each chunk (pausing between chunks), half-closes,
// and waits for the server to close. It returns the client's address, which
// is the record's peer. The server must send nothing back.
func send(t *testing.T, addr string, pause time.Duration, chunks ...[]byte) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i, chunk := range chunks {
		if i > 0 {
			time.Sleep(pause)
		}
		if _, err := c.Write(chunk); err != nil {
			t.Fatalf("write: %v", err)
		}
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatalf("close write: %v", err)
	}
	waitClosed(t, c)
	return c.LocalAddr().String()
}

// waitClosed reads c until the server closes it, failing if it sends data.
func waitClosed(t *testing.T, c net.Conn) {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, c)
	if err != nil {
		t.Fatalf("waiting for the server to close: %v", err)
	}
	if n != 0 {
		t.Fatalf("server wrote %d bytes back", n)
	}
}

func TestHeadersAndPayloads(t *testing.T) {
	frr := capture(t, frrFile)
	gobgp := capture(t, gobgpFile)
	v4 := v2Header(0x21, 0x11, addrBlock("203.0.113.1", "198.51.100.7", 51000, 5000), nil)
	v6 := v2Header(0x21, 0x21, addrBlock("2001:db8::1", "2001:db8::2", 51000, 5000), nil)
	v4TLV := v2Header(0x21, 0x11, addrBlock("203.0.113.1", "198.51.100.7", 51000, 5000), []byte{0x02, 0x00, 0x03, 'a', '.', 'b'})
	local := v2Header(0x20, 0x00, nil, nil)
	if len(v4) != 28 || len(v6) != 52 || len(local) != 16 {
		t.Fatalf("hand-built header sizes %d, %d, %d; want 28, 52, 16", len(v4), len(v6), len(local))
	}
	v1 := []byte("PROXY TCP4 203.0.113.1 198.51.100.7 51000 5000\r\n")
	v1six := []byte("PROXY TCP6 2001:db8::1 2001:db8::2 51000 5000\r\n")
	v1unknown := []byte("PROXY UNKNOWN\r\n")
	garbage := append([]byte(sigV2), 0x99, 0x11, 0, 12, 1, 2, 3, 4)
	badLen := v2Header(0x21, 0x11, []byte{1, 2, 3, 4, 5}, nil)
	badV1 := []byte("PROXY TCP4 not-an-ip 198.51.100.7 51000 5000\r\n")

	termination := bmpMessage(bmp.TypeTermination, []byte{0, 0, 0, 3, 'b', 'y', 'e', 0, 1, 0, 2, 0, 1})
	frrTerm := append(bytes.Clone(frr), termination...)
	badType := append(bytes.Clone(frr[:36]), bmp.Version, 0, 0, 0, 6, 9)
	badInit := bmpMessage(bmp.TypeInitiation, []byte{0, 2, 0, 9, 'x'})

	frrFields := inspect.Record{
		BMPTypes: []inspect.TypeCount{{Type: "initiation", Count: 1}, {Type: "peer-down", Count: 1}},
		SysName:  "edge-r1", SysDescr: "FRRouting 8.4.4",
	}
	v4Fields := inspect.Record{Proxy: "v2", Command: "PROXY", Family: "TCP4", Src: "203.0.113.1:51000", Dst: "198.51.100.7:5000"}
	v6Fields := inspect.Record{Proxy: "v2", Command: "PROXY", Family: "TCP6", Src: "[2001:db8::1]:51000", Dst: "[2001:db8::2]:5000"}
	v1Fields := inspect.Record{Proxy: "v1", Command: "PROXY", Family: "TCP4", Src: "203.0.113.1:51000", Dst: "198.51.100.7:5000"}

	// merge overlays the non-zero fields of parts.
	merge := func(parts ...inspect.Record) inspect.Record {
		var r inspect.Record
		for _, p := range parts {
			if p.Proxy != "" {
				r.Proxy, r.Command, r.Family, r.Src, r.Dst = p.Proxy, p.Command, p.Family, p.Src, p.Dst
			}
			if p.BMPTypes != nil {
				r.BMPTypes = p.BMPTypes
			}
			r.SysName = cmp.Or(p.SysName, r.SysName)
			r.SysDescr = cmp.Or(p.SysDescr, r.SysDescr)
			r.TermReason = cmp.Or(p.TermReason, r.TermReason)
			r.BMPError = cmp.Or(p.BMPError, r.BMPError)
			r.Error = cmp.Or(p.Error, r.Error)
			if p.Bytes != 0 {
				r.Bytes = p.Bytes
			}
		}
		if r.BMPTypes == nil {
			r.BMPTypes = []inspect.TypeCount{}
		}
		return r
	}
	none := inspect.Record{Proxy: "none"}

	tests := []struct {
		name   string
		header []byte
		body   []byte
		want   inspect.Record
	}{
		{"v2 IPv4 + FRR", v4, frr, merge(v4Fields, frrFields, inspect.Record{Bytes: 87})},
		{"v2 IPv4, no payload", v4, nil, merge(v4Fields)},
		{"v2 IPv4 with TLV + GoBGP", v4TLV, gobgp, merge(v4Fields, inspect.Record{
			Bytes: 25, BMPTypes: []inspect.TypeCount{{Type: "initiation", Count: 1}}, SysName: "GoBGP", SysDescr: "3.10.0",
		})},
		{"v2 IPv6 + FRR", v6, frr, merge(v6Fields, frrFields, inspect.Record{Bytes: 87})},
		{"v2 IPv6, no payload", v6, nil, merge(v6Fields)},
		{"v1 TCP4 + FRR", v1, frr, merge(v1Fields, frrFields, inspect.Record{Bytes: 87})},
		{"v1 TCP4, no payload", v1, nil, merge(v1Fields)},
		{"v1 TCP6 + text", v1six, []byte("hello"), merge(inspect.Record{
			Proxy: "v1", Command: "PROXY", Family: "TCP6", Src: "[2001:db8::1]:51000", Dst: "[2001:db8::2]:5000", Bytes: 5,
		})},
		// go-proxyproto reads a v1 UNKNOWN line as a LOCAL command.
		{"v1 UNKNOWN + FRR", v1unknown, frr, merge(inspect.Record{Proxy: "v1", Command: "LOCAL", Family: "UNSPEC"}, frrFields, inspect.Record{Bytes: 87})},
		{"LOCAL + FRR", local, frr, merge(inspect.Record{Proxy: "v2", Command: "LOCAL", Family: "UNSPEC"}, frrFields, inspect.Record{Bytes: 87})},
		{"LOCAL, no payload", local, nil, merge(inspect.Record{Proxy: "v2", Command: "LOCAL", Family: "UNSPEC"})},
		{"no header + FRR", nil, frr, merge(none, frrFields, inspect.Record{Bytes: 87})},
		{"no header + GoBGP", nil, gobgp, merge(none, inspect.Record{
			Bytes: 25, BMPTypes: []inspect.TypeCount{{Type: "initiation", Count: 1}}, SysName: "GoBGP", SysDescr: "3.10.0",
		})},
		{"no header, nothing sent", nil, nil, merge(none)},
		{"no header, short non-BMP", nil, []byte("\r\n"), merge(none, inspect.Record{Bytes: 2})},
		{"no header, text starting like v1", nil, []byte("PROX"), merge(none, inspect.Record{Bytes: 4})},
		{"garbage after v2 signature + FRR", garbage, frr, merge(inspect.Record{
			Proxy: "v2", Bytes: int64(len(garbage) + 87),
			Error: "proxy header: proxyproto: unsupported proxy protocol version and command",
		})},
		{"v2 length too short for IPv4", badLen, frr, merge(inspect.Record{
			Proxy: "v2", Bytes: int64(len(badLen) + 87), Error: "proxy header: proxyproto: invalid length",
		})},
		{"bad v1 address", badV1, frr, merge(inspect.Record{
			Proxy: "v1", Bytes: int64(len(badV1) + 87), Error: `proxy header: proxyproto: invalid address: ParseAddr("not-an-ip"): unable to parse IP`,
		})},
		{"FRR + termination", v4, frrTerm, merge(v4Fields, inspect.Record{
			Bytes: int64(len(frrTerm)),
			BMPTypes: []inspect.TypeCount{
				{Type: "initiation", Count: 1}, {Type: "peer-down", Count: 1}, {Type: "termination", Count: 1},
			},
			SysName: "edge-r1", SysDescr: "FRRouting 8.4.4", TermReason: "unspecified",
		})},
		{"FRR twice", nil, append(bytes.Clone(frr), frr...), merge(none, inspect.Record{
			Bytes:    174,
			BMPTypes: []inspect.TypeCount{{Type: "initiation", Count: 2}, {Type: "peer-down", Count: 2}},
			SysName:  "edge-r1", SysDescr: "FRRouting 8.4.4",
		})},
		{"FRR truncated in peer down", v4, frr[:80], merge(v4Fields, inspect.Record{
			Bytes: 80, BMPTypes: []inspect.TypeCount{{Type: "initiation", Count: 1}},
			SysName: "edge-r1", SysDescr: "FRRouting 8.4.4",
			BMPError: "bmp: stream ended after 44 of 51 bytes of a peer-down message: unexpected EOF",
		})},
		{"FRR truncated in header", v4, frr[:39], merge(v4Fields, inspect.Record{
			Bytes: 39, BMPTypes: []inspect.TypeCount{{Type: "initiation", Count: 1}},
			SysName: "edge-r1", SysDescr: "FRRouting 8.4.4",
			BMPError: "bmp: stream ended after 3 of 6 header bytes: unexpected EOF",
		})},
		{"unknown BMP type after initiation", v4, append(bytes.Clone(badType), "trailing"...), merge(v4Fields, inspect.Record{
			Bytes: int64(len(badType) + 8), BMPTypes: []inspect.TypeCount{{Type: "initiation", Count: 1}},
			SysName: "edge-r1", SysDescr: "FRRouting 8.4.4", BMPError: "bmp: unknown message type 9",
		})},
		{"malformed initiation TLV", nil, append(bytes.Clone(badInit), frr...), merge(none, inspect.Record{
			Bytes: int64(len(badInit) + 87), BMPTypes: []inspect.TypeCount{{Type: "initiation", Count: 1}},
			BMPError: "bmp: malformed TLV at offset 6 in initiation: type 2 length 9 exceeds remaining 1 bytes",
		})},
		{"BMP version 1 is not decoded", nil, []byte{1, 0, 0, 0, 6, 4}, merge(none, inspect.Record{Bytes: 6})},
		{"version 3 with bad length", nil, []byte{3, 0xff, 0xff, 0xff, 0xff, 4, 0}, merge(none, inspect.Record{
			Bytes: 7, BMPError: "bmp: invalid message length 4294967295 (want 6..1048576)",
		})},
	}
	srv := start(t, &inspect.Server{JSON: true})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The header and payload go out in one write: go-proxyproto
			// requires a v1 line to arrive in a single read.
			peer := send(t, srv.addr, 0, append(bytes.Clone(tt.header), tt.body...))
			got := srv.record(t, peer)
			want := tt.want
			want.Peer = peer
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("record\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestTextLines(t *testing.T) {
	frr := capture(t, frrFile)
	srv := start(t, &inspect.Server{})
	v4 := v2Header(0x21, 0x11, addrBlock("127.0.0.1", "127.0.0.1", 51000, 5000), nil)
	tests := []struct {
		name string
		data []byte
		want string // after "peer=ADDR "
	}{
		{"v2 + FRR", append(bytes.Clone(v4), frr...),
			`proxy=v2 cmd=PROXY family=TCP4 src=127.0.0.1:51000 dst=127.0.0.1:5000 bytes=87 bmp=initiation:1,peer-down:1 sysName="edge-r1" sysDescr="FRRouting 8.4.4"`},
		{"none + FRR", frr,
			`proxy=none bytes=87 bmp=initiation:1,peer-down:1 sysName="edge-r1" sysDescr="FRRouting 8.4.4"`},
		{"LOCAL", v2Header(0x20, 0x00, nil, nil), `proxy=v2 cmd=LOCAL family=UNSPEC bytes=0`},
		{"garbage", append([]byte(sigV2), 0x99), `proxy=v2 bytes=13 error="proxy header: proxyproto: unsupported proxy protocol version and command"`},
		{"truncated", frr[:40], `proxy=none bytes=40 bmp=initiation:1 sysName="edge-r1" sysDescr="FRRouting 8.4.4" bmpError="bmp: stream ended after 4 of 6 header bytes: unexpected EOF"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			peer := send(t, srv.addr, 0, tt.data)
			if got, want := srv.line(t, peer), "peer="+peer+" "+tt.want; got != want {
				t.Fatalf("line\n got %s\nwant %s", got, want)
			}
		})
	}
}

func TestHeaderTimeout(t *testing.T) {
	frr := capture(t, frrFile)
	srv := start(t, &inspect.Server{JSON: true, HeaderTimeout: 100 * time.Millisecond})
	t.Run("silent client, then BMP", func(t *testing.T) {
		peer := send(t, srv.addr, 300*time.Millisecond, nil, frr)
		got := srv.record(t, peer)
		if got.Proxy != "none" || got.Bytes != 87 || got.SysName != "edge-r1" || got.Error != "" || got.BMPError != "" {
			t.Fatalf("record %+v", got)
		}
	})
	t.Run("partial signature, then the rest", func(t *testing.T) {
		// Nothing is consumed before the signature is complete, so the
		// bytes stay payload.
		peer := send(t, srv.addr, 300*time.Millisecond, frr[:3], frr[3:])
		got := srv.record(t, peer)
		if got.Proxy != "none" || got.Bytes != 87 || got.SysName != "edge-r1" || got.Error != "" {
			t.Fatalf("record %+v", got)
		}
	})
	t.Run("stall inside a v2 header", func(t *testing.T) {
		hdr := v2Header(0x21, 0x11, addrBlock("203.0.113.1", "198.51.100.7", 51000, 5000), nil)
		peer := send(t, srv.addr, 300*time.Millisecond, hdr[:20], append(hdr[20:], frr...))
		got := srv.record(t, peer)
		if got.Proxy != "v2" || got.Bytes != int64(len(hdr)+87) || !strings.Contains(got.Error, "proxy header: ") ||
			!strings.Contains(got.Error, "i/o timeout") || len(got.BMPTypes) != 0 {
			t.Fatalf("record %+v", got)
		}
	})
}

func TestLargePayloads(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	srv := start(t, &inspect.Server{JSON: true})
	hdr := v2Header(0x21, 0x21, addrBlock("2001:db8::1", "2001:db8::2", 1, 2), nil)

	t.Run("8 MiB random bytes", func(t *testing.T) {
		data := make([]byte, 8<<20)
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		data[0] = 0xff // not BMP
		peer := send(t, srv.addr, 0, hdr, data)
		got := srv.record(t, peer)
		if got.Bytes != int64(len(data)) || len(got.BMPTypes) != 0 || got.BMPError != "" || got.Error != "" {
			t.Fatalf("record %+v", got)
		}
	})

	t.Run("8 MiB of BMP messages", func(t *testing.T) {
		// Random sizes, some larger than a read buffer, so messages
		// straddle reads at every offset.
		var data []byte
		counts := map[bmp.Type]int64{}
		var order []bmp.Type
		for len(data) < 8<<20 {
			typ := bmp.Type(rng.IntN(4)) // route-monitoring .. peer-up
			size := rng.IntN(70000)
			if rng.IntN(4) > 0 {
				size = rng.IntN(300)
			}
			if counts[typ] == 0 {
				order = append(order, typ)
			}
			counts[typ]++
			body := make([]byte, size)
			for i := range body {
				body[i] = byte(rng.Uint32())
			}
			data = append(data, bmpMessage(typ, body)...)
		}
		term := bmpMessage(bmp.TypeTermination, []byte{0, 1, 0, 2, 0, 4})
		data = append(data, term...)
		order = append(order, bmp.TypeTermination)
		counts[bmp.TypeTermination] = 1
		want := make([]inspect.TypeCount, len(order))
		for i, typ := range order {
			want[i] = inspect.TypeCount{Type: typ.String(), Count: counts[typ]}
		}
		peer := send(t, srv.addr, 0, hdr, data)
		got := srv.record(t, peer)
		if got.Bytes != int64(len(data)) || !reflect.DeepEqual(got.BMPTypes, want) ||
			got.TermReason != "permanently-admin-closed" || got.BMPError != "" || got.Error != "" {
			t.Fatalf("record %+v, want %d bytes and types %+v", got, len(data), want)
		}
	})
}

func TestMaxMessage(t *testing.T) {
	frr := capture(t, frrFile)
	srv := start(t, &inspect.Server{JSON: true, MaxMessage: 40})
	peer := send(t, srv.addr, 0, frr)
	got := srv.record(t, peer)
	if got.Bytes != 87 || got.SysName != "edge-r1" || got.BMPError != "bmp: invalid message length 51 (want 6..40)" ||
		!reflect.DeepEqual(got.BMPTypes, []inspect.TypeCount{{Type: "initiation", Count: 1}}) {
		t.Fatalf("record %+v", got)
	}
}

// notifyListener reports each accepted connection on accepted, wrapped
// to count what the server has read from it.
type notifyListener struct {
	net.Listener
	accepted chan *countingConn
}

func (l *notifyListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	cc := &countingConn{Conn: c}
	l.accepted <- cc
	return cc, nil
}

type countingConn struct {
	net.Conn
	read atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

func TestShutdownWithOpenConnections(t *testing.T) {
	frr := capture(t, frrFile)
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &notifyListener{Listener: inner, accepted: make(chan *countingConn, 8)}
	out := &syncBuffer{}
	srv := &inspect.Server{Out: out, JSON: true}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()

	hdr := v2Header(0x21, 0x11, addrBlock("203.0.113.1", "198.51.100.7", 51000, 5000), nil)
	sends := [][]byte{
		nil,                                   // silent: still waiting for a header
		append(bytes.Clone(hdr), frr[:40]...), // inside a message
		append(bytes.Clone(hdr), frr...),      // between messages
	}
	var conns []net.Conn
	var served []*countingConn
	for _, data := range sends {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write(data); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		served = append(served, <-ln.accepted)
	}
	waitfor.True(t, "the handlers to read what was sent", func() bool {
		for i, c := range served {
			if c.read.Load() != int64(len(sends[i])) {
				return false
			}
		}
		return true
	})

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	for _, c := range conns {
		waitClosed(t, c)
	}
	recs := (&server{out: out}).records(t)
	if len(recs) != len(sends) {
		t.Fatalf("%d records, want %d:\n%s", len(recs), len(sends), out.String())
	}
	for _, r := range recs {
		if !strings.HasPrefix(r.Error, "closed by server shutdown: ") {
			t.Errorf("record %+v: want a shutdown error", r)
		}
	}
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Fatal("listener still accepts after Serve returned")
	}
}

// fakeListener returns the queued errors from Accept, then blocks until
// closed.
type fakeListener struct {
	errs   chan error
	closed chan struct{}
	once   sync.Once
}

func (l *fakeListener) Accept() (net.Conn, error) {
	select {
	case err := <-l.errs:
		return nil, err
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *fakeListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *fakeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

func TestAcceptErrors(t *testing.T) {
	ln := &fakeListener{errs: make(chan error, 4), closed: make(chan struct{})}
	ln.errs <- &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	ln.errs <- &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.ENFILE)}
	ln.errs <- errors.New("listener broke")
	err := (&inspect.Server{}).Serve(context.Background(), ln)
	if err == nil || err.Error() != "inspect: accept: listener broke" {
		t.Fatalf("Serve = %v, want the permanent accept error", err)
	}
	select {
	case <-ln.closed:
	default:
		t.Fatal("Serve returned without closing the listener")
	}
	if len(ln.errs) != 0 {
		t.Fatalf("%d errors not consumed: Serve stopped on a resource error", len(ln.errs))
	}
}

func TestNilOutDiscards(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- (&inspect.Server{}).Serve(ctx, ln) }()
	send(t, ln.Addr().String(), 0, capture(t, frrFile))
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
