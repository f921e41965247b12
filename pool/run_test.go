package pool

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bmpproxy/bmpproxy/internal/waitfor"
)

// run starts p.Run and returns a stop that cancels it and waits for it to
// return.
func run(t *testing.T, p *Pool) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Run(ctx)
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
	t.Cleanup(stop)
	return stop
}

// fakeDNS answers lookups from a table the test changes, and tells when
// a resolution round that it gave a failure (or no address) has ended.
type fakeDNS struct {
	mu      sync.Mutex
	answers map[string][]netip.Addr
	fail    map[string]error
	rounds  int // rounds ended
	failed  int // the rounds count when a failure was last given
	lookups int
}

func (f *fakeDNS) lookup(ctx context.Context, host string) ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lookups++
	if err := f.fail[host]; err != nil || len(f.answers[host]) == 0 {
		f.failed = f.rounds
		return nil, err
	}
	return slices.Clone(f.answers[host]), nil
}

func (f *fakeDNS) roundDone() {
	f.mu.Lock()
	f.rounds++
	f.mu.Unlock()
}

func (f *fakeDNS) set(host string, addrs []netip.Addr, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.answers[host] = addrs
	if err != nil || len(addrs) == 0 {
		f.failed = -1
	}
	if err != nil {
		f.fail[host] = err
	} else {
		delete(f.fail, host)
	}
}

// failedRoundEnded reports whether a round that was given a failure, since
// the last set of one, has ended.
func (f *fakeDNS) failedRoundEnded() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.failed >= 0 && f.rounds > f.failed
}

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

// memberAddrs returns p's members' addresses and Froms as "addr from".
func memberAddrs(p *Pool) []string {
	var out []string
	for _, s := range p.Members() {
		out = append(out, s.Addr.String()+" "+s.From)
	}
	return out
}

// waitMembers waits for p's members to be want.
func waitMembers(t *testing.T, p *Pool, want ...string) {
	t.Helper()
	waitfor.True(t, "members "+strings.Join(want, ", "), func() bool { return slices.Equal(memberAddrs(p), want) })
}

// TestResolve: a name's members follow its answers; a failure keeps them
// and is warned of once per streak; an address two targets give is one
// member.
func TestResolve(t *testing.T) {
	dns := &fakeDNS{answers: map[string][]netip.Addr{}, fail: map[string]error{}}
	dns.set("coll.example", addrs("2001:db8:c::2", "203.0.113.1", "::ffff:203.0.113.2", "203.0.113.1"), nil)
	p, _, logs := newPool(t, Config{
		Targets:         []string{"203.0.113.2:5000", "coll.example:5000"},
		ResolveInterval: 10 * time.Millisecond,
		HealthInterval:  time.Hour,
		Probe:           func(context.Context, netip.AddrPort) error { return nil },
		LookupNetIP:     dns.lookup,
	})
	p.roundDone = dns.roundDone
	if got := memberAddrs(p); !slices.Equal(got, []string{"203.0.113.2:5000 203.0.113.2:5000"}) {
		t.Errorf("before Run: %v, want the literal", got)
	}
	run(t, p)
	waitMembers(t, p,
		"203.0.113.1:5000 coll.example:5000",
		"203.0.113.2:5000 203.0.113.2:5000",
		"[2001:db8:c::2]:5000 coll.example:5000")
	// The new members are probed at once, not an hour later.
	waitfor.True(t, "the resolved members probed", func() bool {
		return status(t, p, ap("203.0.113.1:5000")).Probes == 1 && status(t, p, ap("[2001:db8:c::2]:5000")).Probes == 1
	})

	// Fewer addresses: the others go.
	dns.set("coll.example", addrs("203.0.113.1"), nil)
	waitMembers(t, p,
		"203.0.113.1:5000 coll.example:5000",
		"203.0.113.2:5000 203.0.113.2:5000")
	if r := logs.lines(t, "pool member removed"); len(r) != 1 || r[0]["member"] != "[2001:db8:c::2]:5000" || r[0]["reason"] != "its name no longer resolves to it" {
		t.Errorf("removed lines %v", r)
	}

	// A failure, for several rounds, keeps the members; one warning.
	dns.set("coll.example", nil, errors.New("server misbehaving"))
	for range 3 {
		dns.set("coll.example", nil, errors.New("server misbehaving"))
		waitfor.True(t, "a round with a failed lookup", dns.failedRoundEnded)
	}
	waitMembers(t, p,
		"203.0.113.1:5000 coll.example:5000",
		"203.0.113.2:5000 203.0.113.2:5000")
	warn := logs.lines(t, "pool target does not resolve; its members are kept")
	if len(warn) != 1 || warn[0]["target"] != "coll.example:5000" || warn[0]["members"] != 1.0 || warn[0]["error"] != "server misbehaving" {
		t.Errorf("warnings %v", warn)
	}
	// No addresses is a failure too.
	dns.set("coll.example", nil, nil)
	waitfor.True(t, "a round with an empty answer", dns.failedRoundEnded)
	waitMembers(t, p,
		"203.0.113.1:5000 coll.example:5000",
		"203.0.113.2:5000 203.0.113.2:5000")

	// Back, with a new address.
	dns.set("coll.example", addrs("203.0.113.1", "203.0.113.3"), nil)
	waitMembers(t, p,
		"203.0.113.1:5000 coll.example:5000",
		"203.0.113.2:5000 203.0.113.2:5000",
		"203.0.113.3:5000 coll.example:5000")
	if n := len(logs.lines(t, "pool target resolves again")); n != 1 {
		t.Errorf("%d resolves-again lines, want 1", n)
	}
	if s := status(t, p, ap("203.0.113.3:5000")); !s.Healthy {
		t.Errorf("a new member is not healthy: %+v", s)
	}
}

// TestResolveFirstFailure: a name that has never resolved gives no
// members, and a warning.
func TestResolveFirstFailure(t *testing.T) {
	dns := &fakeDNS{answers: map[string][]netip.Addr{}, fail: map[string]error{}}
	dns.set("coll.example", nil, errors.New("no such host"))
	p, _, logs := newPool(t, Config{Targets: []string{"coll.example:5000"}, LookupNetIP: dns.lookup,
		Probe: func(context.Context, netip.AddrPort) error { return nil }})
	p.roundDone = dns.roundDone
	run(t, p)
	waitfor.True(t, "a round with a failed lookup", dns.failedRoundEnded)
	if m, ok := p.Pick(netip.MustParseAddr("198.51.100.1")); ok || len(p.Members()) != 0 {
		t.Errorf("Pick = %v with an unresolved name", m)
	}
	if w := logs.lines(t, "pool target does not resolve; its members are kept"); len(w) != 1 || w[0]["members"] != 0.0 {
		t.Errorf("warnings %v", w)
	}
}

// TestUpdateRunPicksUp: an Update's new interval and new members reach a
// running pool.
func TestUpdateRunPicksUp(t *testing.T) {
	dns := &fakeDNS{answers: map[string][]netip.Addr{}, fail: map[string]error{}}
	dns.set("coll.example", addrs("203.0.113.5"), nil)
	a := ap("203.0.113.1:5000")
	cfg := Config{
		Targets:         []string{a.String()},
		HealthInterval:  time.Hour,
		ResolveInterval: time.Hour,
		Probe:           func(context.Context, netip.AddrPort) error { return nil },
		LookupNetIP:     dns.lookup,
	}
	p, _, _ := newPool(t, cfg)
	run(t, p)
	waitfor.True(t, "the first probe", func() bool { return status(t, p, a).Probes == 1 })

	cfg.Targets = []string{a.String(), "coll.example:5000"}
	cfg.HealthInterval = 5 * time.Millisecond
	if err := p.Update(cfg); err != nil {
		t.Fatal(err)
	}
	waitMembers(t, p, "203.0.113.1:5000 203.0.113.1:5000", "203.0.113.5:5000 coll.example:5000")
	waitfor.True(t, "probes at the new interval", func() bool { return status(t, p, a).Probes >= 4 })
}

// TestOneProbeInFlight: a member whose probe hangs is not probed again
// until it returns, while the others are probed every round.
func TestOneProbeInFlight(t *testing.T) {
	slow, fast := ap("203.0.113.1:5000"), ap("203.0.113.2:5000")
	release := make(chan struct{})
	var mu sync.Mutex
	calls := 0
	p, _, _ := newPool(t, Config{
		Targets:        []string{slow.String(), fast.String()},
		HealthInterval: 2 * time.Millisecond,
		ConnectTimeout: time.Hour,
		Probe: func(ctx context.Context, addr netip.AddrPort) error {
			if addr != slow {
				return nil
			}
			mu.Lock()
			calls++
			mu.Unlock()
			select {
			case <-release:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		},
	})
	run(t, p)
	waitfor.True(t, "five rounds", func() bool { return status(t, p, fast).Probes >= 5 })
	mu.Lock()
	n := calls
	mu.Unlock()
	if n != 1 {
		t.Errorf("%d probes of the hanging member in flight, want 1", n)
	}
	close(release)
	waitfor.True(t, "the slow member probed again", func() bool { return status(t, p, slow).Probes >= 2 })
}

// TestProbeTimeout: a probe that does not answer within ConnectTimeout
// fails.
func TestProbeTimeout(t *testing.T) {
	a := ap("203.0.113.1:5000")
	p, _, _ := newPool(t, Config{
		Targets:        []string{a.String()},
		HealthInterval: time.Hour,
		ConnectTimeout: 20 * time.Millisecond,
		Probe: func(ctx context.Context, _ netip.AddrPort) error {
			<-ctx.Done()
			return ctx.Err()
		},
	})
	run(t, p)
	waitfor.True(t, "the probe to time out", func() bool { return !p.Eligible(a) })
	if s := status(t, p, a); s.LastError != "probe: context deadline exceeded" || s.ProbeFailures != 1 {
		t.Errorf("status %+v", s)
	}
}

// TestProbeOfRemovedMember: a probe that ends after its member was
// removed says nothing of the member given again meanwhile.
func TestProbeOfRemovedMember(t *testing.T) {
	a, b := ap("203.0.113.1:5000"), ap("203.0.113.2:5000")
	release := make(chan struct{})
	started := make(chan struct{})
	var once sync.Once
	probe := func(ctx context.Context, addr netip.AddrPort) error {
		first := false
		if addr == a {
			once.Do(func() { first = true })
		}
		if !first {
			return nil
		}
		close(started)
		<-release
		return errors.New("refused")
	}
	p, _, _ := newPool(t, Config{Targets: []string{a.String(), b.String()}, HealthInterval: time.Hour, Probe: probe})
	ignored := make(chan netip.AddrPort, 4)
	p.probeDone = func(addr netip.AddrPort, applied bool) {
		if !applied {
			ignored <- addr
		}
	}
	run(t, p)
	<-started
	if err := p.Update(Config{Targets: []string{b.String()}, HealthInterval: time.Hour, Probe: probe}); err != nil {
		t.Fatal(err)
	}
	if err := p.Update(Config{Targets: []string{a.String(), b.String()}, HealthInterval: time.Hour, Probe: probe}); err != nil {
		t.Fatal(err)
	}
	close(release)
	if got := <-ignored; got != a {
		t.Fatalf("ignored a probe of %v", got)
	}
	if s := status(t, p, a); !s.Healthy || s.ProbeFailures != 0 {
		t.Errorf("a, given again: %+v", s)
	}
}

// TestRunStops: Run returns once its context is done, with its probes and
// lookups ended (TestMain checks that no goroutine is left), and a probe
// cut short by the stop says nothing of its member.
func TestRunStops(t *testing.T) {
	probing := make(chan struct{}, 2)
	looking := make(chan struct{}, 1)
	p, _, _ := newPool(t, Config{
		Targets: []string{"203.0.113.1:5000", "[2001:db8:c::1]:5000", "coll.example:5000"},
		Probe: func(ctx context.Context, _ netip.AddrPort) error {
			probing <- struct{}{}
			<-ctx.Done()
			return ctx.Err()
		},
		LookupNetIP: func(ctx context.Context, _ string) ([]netip.Addr, error) {
			looking <- struct{}{}
			<-ctx.Done()
			return nil, ctx.Err()
		},
	})
	stop := run(t, p)
	<-probing
	<-probing
	<-looking
	stop()
	for _, s := range p.Members() {
		if !s.Healthy || s.Probes != 0 {
			t.Errorf("after the stop: %+v", s)
		}
	}
}

// TestRealProbe probes a listening and a closed port on loopback with the
// default Probe.
func TestRealProbe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().(*net.TCPAddr).AddrPort()
	closed.Close()
	up := ln.Addr().(*net.TCPAddr).AddrPort()

	p, _, _ := newPool(t, Config{Targets: []string{up.String(), closedAddr.String()}, HealthInterval: 5 * time.Millisecond})
	run(t, p)
	waitfor.True(t, "the closed port down", func() bool { return !p.Eligible(closedAddr) })
	waitfor.True(t, "the listening port probed thrice", func() bool { return status(t, p, up).Probes >= 3 })
	if s := status(t, p, up); !s.Healthy || s.ProbeFailures != 0 {
		t.Errorf("listening: %+v", s)
	}
	if s := status(t, p, closedAddr); !strings.Contains(s.LastError, "connection refused") {
		t.Errorf("closed: %+v", s)
	}
	if m, ok := p.Pick(netip.MustParseAddr("198.51.100.1")); !ok || m.Addr != up {
		t.Errorf("Pick = %v, %v; want the listening member", m, ok)
	}
}

// TestDrainedStillProbed: a drained member is probed and its health kept.
func TestDrainedStillProbed(t *testing.T) {
	a := ap("203.0.113.1:5000")
	p, _, _ := newPool(t, Config{
		Targets:        []string{a.String()},
		HealthInterval: 2 * time.Millisecond,
		Probe:          func(context.Context, netip.AddrPort) error { return errors.New("refused") },
	})
	if err := p.Drain(a); err != nil {
		t.Fatal(err)
	}
	run(t, p)
	waitfor.True(t, "the drained member probed", func() bool { return status(t, p, a).Probes >= 2 })
	if s := status(t, p, a); s.Healthy || !s.Drained {
		t.Errorf("status %+v", s)
	}
}
