package dockerproxy

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/bmpproxy/bmpproxy/internal/testtarget"
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

func (l *lines) closed() []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, m := range l.got {
		if m["message"] == "udp flow closed" {
			out = append(out, m)
		}
	}
	return out
}

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
	p := &udpProxy{conn: ln, target: echo.AddrPort(), pp: conf.ProxyNone,
		log: zerolog.New(logs), idle: 300 * time.Millisecond, flows: map[netip.AddrPort]*udpFlow{}}
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
