package dockerproxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/bmpproxy/bmpproxy/internal/testtarget"
	"github.com/bmpproxy/bmpproxy/internal/waitfor"
	proxyproto "github.com/pires/go-proxyproto"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type lines struct {
	mu  sync.Mutex
	got []map[string]any
}

func (l *lines) Write(p []byte) (int, error) {
	var m map[string]any
	json.Unmarshal(p, &m)
	l.mu.Lock()
	l.got = append(l.got, m)
	l.mu.Unlock()
	return len(p), nil
}

// with returns the lines whose message is msg.
func (l *lines) with(msg string) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, m := range l.got {
		if m["message"] == msg {
			out = append(out, m)
		}
	}
	return out
}

func (l *lines) closed() []map[string]any { return l.with("udp flow closed") }

const dropped = "udp datagrams dropped: no PROXY header can carry their addresses"

// TestUDPFlows runs the UDP forwarder in process: two clients get their
// own flows and their own replies, a quiet flow is closed after the idle
// time, and stopping closes the rest and leaves no goroutine.
func TestUDPFlows(t *testing.T) {
	echo := testtarget.UDPEcho(t, "echo ")
	ln, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	if err := recvPktInfo(ln); err != nil {
		t.Fatal(err)
	}
	logs := &lines{}
	p := newUDPProxy(ln, echo.AddrPort(), conf.ProxyNone, zerolog.New(logs))
	p.idle = 300 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.serve(ctx) }()

	roundTrip := func(c *net.UDPConn, msg string) {
		t.Helper()
		c.Write([]byte(msg))
		buf := make([]byte, 2048)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(buf)
		if err != nil || !bytes.Equal(buf[:n], []byte("echo "+msg)) {
			t.Fatalf("reply %q, %v", buf[:n], err)
		}
	}
	a, _ := net.DialUDP("udp", nil, ln.LocalAddr().(*net.UDPAddr))
	b, _ := net.DialUDP("udp", nil, ln.LocalAddr().(*net.UDPAddr))
	defer a.Close()
	defer b.Close()
	roundTrip(a, "from a")
	roundTrip(b, "from b")
	// Keep b busy while a goes quiet.
	deadline := time.Now().Add(5 * time.Second)
	for len(logs.closed()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the quiet flow was not closed")
		}
		roundTrip(b, "still b")
		time.Sleep(50 * time.Millisecond)
	}
	first := logs.closed()[0]
	if first["reason"] != "idle" || first["client"] != a.LocalAddr().String() || first["bytes_from_client"] != float64(len("from a")) {
		t.Fatalf("first closed flow %v; want a's, idle", first)
	}
	roundTrip(a, "a again") // a new flow
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	reasons := map[string]int{}
	for _, l := range logs.closed() {
		reasons[l["reason"].(string)]++
	}
	if reasons["idle"] != 1 || reasons["shutdown"] != 2 {
		t.Fatalf("closed flows %v; want 1 idle and 2 at shutdown", reasons)
	}
}

// TestUDPHeaderDrops sends datagrams whose addresses no PROXY header can
// carry: from an IPv4 client to a dual-stack socket that gives no PKTINFO,
// so that the destination is the socket's own [::]. Each is dropped and
// counted, at most one line per interval says so with the count since the
// last, and the flow's closing line and the line at shutdown carry the
// rest. A datagram from an IPv6 client, sent after them, is the marker
// that serve has dealt with them all.
func TestUDPHeaderDrops(t *testing.T) {
	for _, tt := range []struct {
		name      string
		every     time.Duration
		wantLines []float64 // "dropped" of each line while serving
		wantFlush float64   // "dropped" of the line at shutdown; 0: none
	}{
		{"one line per interval", time.Hour, []float64{1}, 2},
		{"no interval", 0, []float64{1, 1, 1}, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			echo := testtarget.UDPEcho(t, "")
			ln, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv6unspecified})
			if err != nil {
				t.Fatal(err)
			}
			logs := &lines{}
			p := newUDPProxy(ln, echo.AddrPort(), conf.ProxyV2, zerolog.New(logs))
			p.dropLogEvery = tt.every
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- p.serve(ctx) }()
			port := ln.LocalAddr().(*net.UDPAddr).Port

			v4, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
			if err != nil {
				t.Fatal(err)
			}
			defer v4.Close()
			v4.Write([]byte("one"))
			waitfor.True(t, "the first drop's line", func() bool { return len(logs.with(dropped)) == 1 })
			first := logs.with(dropped)[0]
			if first["client"] != v4.LocalAddr().String() || first["dropped"] != 1.0 || first["dropped_total"] != 1.0 ||
				!strings.Contains(first["error"].(string), "mixed families") {
				t.Fatalf("drop line %v", first)
			}
			v4.Write([]byte("two"))
			v4.Write([]byte("three"))

			v6, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: net.IPv6loopback, Port: port})
			if err != nil {
				t.Fatal(err)
			}
			defer v6.Close()
			v6.Write([]byte("marker"))
			buf := make([]byte, 2048)
			v6.SetReadDeadline(time.Now().Add(10 * time.Second))
			n, err := v6.Read(buf)
			if err != nil || !bytes.HasSuffix(buf[:n], []byte("marker")) {
				t.Fatalf("marker: %q, %v", buf[:n], err)
			}
			if got := p.unsent.Load(); got != 3 {
				t.Fatalf("%d datagrams counted as dropped, want 3", got)
			}
			var got []float64
			for _, l := range logs.with(dropped) {
				got = append(got, l["dropped"].(float64))
			}
			if !slices.Equal(got, tt.wantLines) {
				t.Fatalf("drop lines count %v, want %v", got, tt.wantLines)
			}

			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			byClient := map[string]float64{}
			for _, l := range logs.closed() {
				byClient[l["client"].(string)] = l["datagrams_dropped"].(float64)
			}
			if byClient[v4.LocalAddr().String()] != 3 || byClient[v6.LocalAddr().String()] != 0 || len(byClient) != 2 {
				t.Fatalf("datagrams_dropped by flow %v; want 3 for %v, 0 for %v", byClient, v4.LocalAddr(), v6.LocalAddr())
			}
			all := logs.with(dropped)
			last := all[len(all)-1]
			switch {
			case tt.wantFlush == 0 && len(all) != len(tt.wantLines):
				t.Fatalf("a line at shutdown with nothing left to count: %v", last)
			case tt.wantFlush != 0 && (len(all) != len(tt.wantLines)+1 || last["dropped"] != tt.wantFlush || last["dropped_total"] != 3.0):
				t.Fatalf("line at shutdown %v; want dropped %v of 3", last, tt.wantFlush)
			}
		})
	}
}

func TestUDPHeader(t *testing.T) {
	ap := netip.MustParseAddrPort
	for _, tt := range []struct {
		name          string
		client, local netip.AddrPort
		family        byte // 0: an error
		wantSrc       string
	}{
		{"IPv4", ap("198.51.100.7:4000"), ap("203.0.113.1:53"), 0x12, "198.51.100.7:4000"},
		{"IPv4-mapped", ap("[::ffff:198.51.100.7]:4000"), ap("[::ffff:203.0.113.1]:53"), 0x12, "198.51.100.7:4000"},
		{"IPv6", ap("[2001:db8::7]:4000"), ap("[2001:db8::1]:53"), 0x22, "[2001:db8::7]:4000"},
		{"IPv6 with a zone", ap("[fe80::7%eth0]:4000"), ap("[fe80::1%eth0]:53"), 0x22, "[fe80::7]:4000"},
		{"mixed families", ap("198.51.100.7:4000"), ap("[::]:53"), 0, ""},
		{"invalid", netip.AddrPort{}, ap("203.0.113.1:53"), 0, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b, err := udpHeader(tt.client, tt.local)
			if tt.family == 0 {
				if err == nil || !strings.HasPrefix(err.Error(), "cannot build PROXY header: ") {
					t.Fatalf("header %x, err %v; want an error", b, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(b) > maxV2Header || b[13] != tt.family {
				t.Fatalf("header %x: family %#x, want %#x, in at most %d bytes", b, b[13], tt.family, maxV2Header)
			}
			h, err := proxyproto.Read(bufio.NewReader(bytes.NewReader(b)))
			if err != nil {
				t.Fatal(err)
			}
			if src := h.SourceAddr.String(); src != tt.wantSrc {
				t.Fatalf("source %s, want %s", src, tt.wantSrc)
			}
		})
	}
}

// TestRunUDPRefusesV1 checks that no path sends UDP without the header a
// rule asked for: PROXY v1 has no UDP form.
func TestRunUDPRefusesV1(t *testing.T) {
	err := runUDP(context.Background(), Env{}, Invocation{}, conf.ProxyV1, zerolog.Nop(), &status{})
	if err == nil || err.Error() != "proxy_protocol v1 has no UDP form (want v2 or none)" {
		t.Fatalf("err %v", err)
	}
}
