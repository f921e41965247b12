package proxy

import (
	"context"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"

	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/bmpproxy/bmpproxy/internal/testtarget"
	"github.com/bmpproxy/bmpproxy/internal/waitfor"
)

// fakeDNS resolves the names it has been told to, and fails the others
// as a resolver that finds no such host does.
type fakeDNS struct {
	mu    sync.Mutex
	known map[string]bool
}

func (f *fakeDNS) set(name string, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.known[name] = ok
}

func (f *fakeDNS) lookup(_ context.Context, host string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.known[host] {
		return []string{"127.0.0.1"}, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

// TestTargetChecks: a target name that does not resolve at start is
// logged and shown, without stopping the server; a dial that finds it
// shows it again; a reload checks its new targets, and a removed
// listener's counters leave ListenerStats once it has no connection.
func TestTargetChecks(t *testing.T) {
	tg := testtarget.New(t, testtarget.V2, testtarget.Echo)
	dns := &fakeDNS{known: map[string]bool{}}
	ap := netip.MustParseAddrPort
	cfg := &conf.Config{Listeners: []conf.Listener{
		{Name: "named", Listen: []netip.AddrPort{ap("127.0.0.1:0")}, Target: conf.Target{Host: "collector.example", Port: 5000}},
		{Name: "literal", Listen: []netip.AddrPort{ap("127.0.0.1:0")}, Target: conf.Target{Host: "127.0.0.1", Port: 1}},
	}}
	ts := startServer(t, cfg, func(o *Options) {
		o.LookupHost = dns.lookup
		// The dial resolves by itself in a real run; here every name
		// reaches the test target once dns knows it.
		o.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, _, _ := net.SplitHostPort(addr)
			if _, err := dns.lookup(ctx, host); err != nil {
				return nil, &net.OpError{Op: "dial", Net: network, Err: err}
			}
			var d net.Dialer
			return d.DialContext(ctx, "tcp", tg.Addr())
		}
	})
	status := func(name string) TargetStatus {
		for _, st := range ts.Targets() {
			if st.Listener == name {
				return st
			}
		}
		t.Fatalf("no target status for listener %q in %+v", name, ts.Targets())
		return TargetStatus{}
	}
	waitfor.True(t, "the failed check to be logged", func() bool {
		return ts.logs.count("target does not resolve; its connections fail until it does") == 1
	})
	if st := status("named"); st.Resolves || st.Target != "collector.example:5000" || st.Error == "" {
		t.Errorf("named: %+v, want a target that does not resolve, with why", st)
	}
	if st := status("literal"); !st.Resolves {
		t.Errorf("literal: %+v, want an address, which needs no lookup", st)
	}
	if !ts.IsReady() {
		t.Error("not ready: a target that does not resolve must not stop the server")
	}
	for _, l := range ts.logs.all() {
		if l["message"] == "target does not resolve; its connections fail until it does" &&
			(l["listener"] != "named" || l["target"] != "collector.example:5000") {
			t.Errorf("warning %v: want the listener and the target named", l)
		}
	}

	// The collector comes: the next dial finds it.
	dns.set("collector.example", true)
	c := dial(t, "tcp", ts.addrs[0].String())
	c.Write([]byte("x"))
	c.CloseWrite()
	if b, _ := io.ReadAll(c); string(b) != "x" {
		t.Fatalf("echo through the named target: %q", b)
	}
	waitfor.True(t, "the target to resolve again", func() bool { return status("named").Resolves })
	if n := ts.logs.count("target resolves again"); n != 1 {
		t.Errorf("%d 'resolves again' lines, want 1", n)
	}
	c.Close()
	ts.logs.waitClosed(t, 1)

	// A reload to a new name checks it; "literal" goes, and with no
	// connection open its counters leave ListenerStats.
	next := &conf.Config{Listeners: []conf.Listener{
		{Name: "named", Listen: []netip.AddrPort{ap(ts.addrs[0].String())}, Target: conf.Target{Host: "other.example", Port: 5000}},
	}}
	next.ApplyDefaults()
	if err := ts.Reload(context.Background(), next); err != nil {
		t.Fatal(err)
	}
	waitfor.True(t, "the new target's check", func() bool {
		st := status("named")
		return st.Target == "other.example:5000" && !st.Resolves && !st.Checked.IsZero()
	})
	if n := len(ts.Targets()); n != 1 {
		t.Errorf("%d target statuses after the reload, want 1: %+v", n, ts.Targets())
	}
	for _, ls := range ts.ListenerStats() {
		if ls.Name == "literal" {
			t.Errorf("removed listener still in ListenerStats: %+v", ls)
		}
	}
}

// TestRemovedListenerStats: a listener removed while a connection is
// open keeps its counters until that connection ends.
func TestRemovedListenerStats(t *testing.T) {
	tg := testtarget.New(t, testtarget.V2, testtarget.Echo)
	target, _ := conf.ParseTarget(tg.Addr())
	ap := netip.MustParseAddrPort
	cfg := &conf.Config{Listeners: []conf.Listener{
		{Name: "stays", Listen: []netip.AddrPort{ap("127.0.0.1:0")}, Target: target},
		{Name: "goes", Listen: []netip.AddrPort{ap("127.0.0.1:0")}, Target: target},
	}}
	ts := startServer(t, cfg, nil)
	c := dial(t, "tcp", ts.addrs[1].String())
	c.Write([]byte("open"))
	waitfor.True(t, "the connection to be set up", func() bool { return ts.Stats().Active == 1 })

	next := &conf.Config{Listeners: []conf.Listener{cfg.Listeners[0]}}
	next.Listeners[0].Listen = []netip.AddrPort{ap(ts.addrs[0].String())}
	next.ApplyDefaults()
	if err := ts.Reload(context.Background(), next); err != nil {
		t.Fatal(err)
	}
	names := func() map[string]bool {
		out := map[string]bool{}
		for _, ls := range ts.ListenerStats() {
			out[ls.Name] = true
		}
		return out
	}
	if n := names(); !n["stays"] || !n["goes"] {
		t.Fatalf("listener stats %v: want both while goes has an open connection", n)
	}
	c.Close()
	waitfor.True(t, "the removed listener's counters to leave once its connection ended", func() bool {
		n := names()
		return n["stays"] && !n["goes"]
	})
}

// TestTargetChecksPerLeg: each target of a fan-out listener is checked
// and shown on its own: one leg's name that does not resolve says
// nothing of the other's.
func TestTargetChecksPerLeg(t *testing.T) {
	tg := testtarget.New(t, testtarget.V2, testtarget.Echo)
	dns := &fakeDNS{known: map[string]bool{"primary.example": true}}
	cfg := fanListener(t, conf.DefaultBuffer, "primary.example:5000", "missing.example:5000")
	ts := startServer(t, cfg, func(o *Options) {
		o.LookupHost = dns.lookup
		o.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, _, _ := net.SplitHostPort(addr)
			if _, err := dns.lookup(ctx, host); err != nil {
				return nil, &net.OpError{Op: "dial", Net: network, Err: err}
			}
			var d net.Dialer
			return d.DialContext(ctx, "tcp", tg.Addr())
		}
	})
	waitfor.True(t, "the missing leg's check to be logged", func() bool {
		return ts.logs.count("target does not resolve; its connections fail until it does") == 1
	})
	got := map[string]bool{}
	for _, st := range ts.Targets() {
		got[st.Target] = st.Resolves
	}
	if len(got) != 2 || !got["primary.example:5000"] || got["missing.example:5000"] {
		t.Errorf("targets %+v: want the primary resolving and the missing one not", ts.Targets())
	}
}
