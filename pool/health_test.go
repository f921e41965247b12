package pool

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// status returns addr's status in p.
func status(t *testing.T, p *Pool, addr netip.AddrPort) MemberStatus {
	t.Helper()
	for _, s := range p.Members() {
		if s.Addr == addr {
			return s
		}
	}
	t.Fatalf("%v is not a member", addr)
	return MemberStatus{}
}

// probeResult applies a probe's result to addr, as Run does when a probe
// ends.
func probeResult(t *testing.T, p *Pool, addr netip.AddrPort, err error) {
	t.Helper()
	p.mu.RLock()
	m := p.byAddr[addr]
	p.mu.RUnlock()
	if m == nil {
		t.Fatalf("%v is not a member", addr)
	}
	p.probed(t.Context(), m, err)
}

// drainChanged empties Changed and reports whether it had anything.
func drainChanged(p *Pool) bool {
	select {
	case <-p.Changed():
		return true
	default:
		return false
	}
}

func TestDialFailed(t *testing.T) {
	a, b := ap("203.0.113.1:5000"), ap("203.0.113.2:5000")
	p, clock, logs := newPool(t, Config{Name: "l1", Targets: []string{a.String(), b.String()}})
	drainChanged(p)
	clock.Add(time.Second)
	p.DialFailed(a, errors.New("connection refused"))
	if p.Eligible(a) || !p.Eligible(b) {
		t.Fatalf("eligible: %v %v, want false true", p.Eligible(a), p.Eligible(b))
	}
	if !drainChanged(p) {
		t.Error("no Changed after a dial failure")
	}
	s := status(t, p, a)
	if s.Healthy || s.DialFailures != 1 || s.HealthChanges != 1 || s.LastError != "dial: connection refused" || !s.Since.Equal(clock.Now()) {
		t.Errorf("status %+v", s)
	}
	lines := logs.lines(t, "pool member down")
	if len(lines) != 1 {
		t.Fatalf("%d down lines, want 1", len(lines))
	}
	for k, v := range map[string]any{"level": "warn", "listener": "l1", "member": a.String(), "from": a.String(), "old": "up", "new": "down", "reason": "dial: connection refused"} {
		if lines[0][k] != v {
			t.Errorf("down line %v: %s = %v, want %v", lines[0], k, lines[0][k], v)
		}
	}

	// Down already: counted, no change.
	p.DialFailed(a, errors.New("timed out"))
	if s := status(t, p, a); s.DialFailures != 2 || s.HealthChanges != 1 || s.LastError != "dial: timed out" {
		t.Errorf("status %+v", s)
	}
	if drainChanged(p) {
		t.Error("Changed after a dial failure of a member down already")
	}
	// Not a member, and a mapped member address.
	p.DialFailed(ap("203.0.113.9:5000"), errors.New("x"))
	p.DialFailed(ap("[::ffff:203.0.113.2]:5000"), errors.New("refused"))
	if p.Eligible(b) {
		t.Error("a dial failure of b's mapped address left it eligible")
	}

	// Up only by a probe.
	probeResult(t, p, a, nil)
	if s := status(t, p, a); !s.Healthy || s.LastError != "" || s.HealthChanges != 2 || s.Probes != 1 {
		t.Errorf("after a good probe: %+v", s)
	}
	if up := logs.lines(t, "pool member up"); len(up) != 1 || up[0]["reason"] != "probe succeeded" || up[0]["old"] != "down" {
		t.Errorf("up lines %v", up)
	}
}

func TestProbeResults(t *testing.T) {
	a := ap("203.0.113.1:5000")
	for _, tt := range []struct {
		name     string
		results  []error
		healthy  bool
		changes  uint64
		failures uint64
	}{
		{"good", []error{nil, nil}, true, 0, 0},
		{"bad", []error{errors.New("refused")}, false, 1, 1},
		{"bad twice", []error{errors.New("refused"), errors.New("refused")}, false, 1, 2},
		{"bad then good", []error{errors.New("refused"), nil}, true, 2, 1},
		{"flapping", []error{errors.New("refused"), nil, errors.New("refused")}, false, 3, 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, _, _ := newPool(t, Config{Targets: []string{a.String()}})
			for _, err := range tt.results {
				probeResult(t, p, a, err)
			}
			s := status(t, p, a)
			if s.Healthy != tt.healthy || s.HealthChanges != tt.changes || s.ProbeFailures != tt.failures || s.Probes != uint64(len(tt.results)) {
				t.Errorf("status %+v", s)
			}
			if !tt.healthy && s.LastError != "probe: refused" {
				t.Errorf("LastError %q", s.LastError)
			}
		})
	}
}

func TestLegFailed(t *testing.T) {
	a := ap("203.0.113.1:5000")
	for _, tt := range []struct {
		name      string
		threshold int
		gaps      []time.Duration // before each failure
		healthy   bool
	}{
		{"two of three", 0, []time.Duration{0, time.Second}, true},
		{"three within the window", 0, []time.Duration{0, 20 * time.Second, 30 * time.Second}, false},
		{"three over more than the window", 0, []time.Duration{0, 30 * time.Second, 30 * time.Second}, true},
		{"the window slides", 0, []time.Duration{0, 50 * time.Second, 20 * time.Second, 20 * time.Second}, false},
		{"threshold one", 1, []time.Duration{0}, false},
		{"threshold five", 5, []time.Duration{0, 0, 0, 0}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, clock, _ := newPool(t, Config{Targets: []string{a.String()}, FailThreshold: tt.threshold})
			for _, g := range tt.gaps {
				clock.Add(g)
				p.LegFailed(a, errors.New("reset by peer"))
			}
			s := status(t, p, a)
			if s.Healthy != tt.healthy || s.LegFailures != uint64(len(tt.gaps)) {
				t.Errorf("status %+v", s)
			}
			if !tt.healthy && !strings.Contains(s.LastError, "leg failures within 1m0s, the last: reset by peer; held down for 30s") {
				t.Errorf("LastError %q", s.LastError)
			}
		})
	}
}

// TestDownForBackoff: a member held down by leg failures comes back on a
// good probe only once its hold is over; the hold doubles on each repeat
// up to DownForMax, and is DownFor again once the member has stayed up
// for DownForMax.
func TestDownForBackoff(t *testing.T) {
	a := ap("203.0.113.1:5000")
	p, clock, _ := newPool(t, Config{Targets: []string{a.String()}, DownFor: 30 * time.Second, DownForMax: 200 * time.Second})
	fail := func() {
		t.Helper()
		for range 3 {
			p.LegFailed(a, errors.New("reset"))
		}
		if p.Eligible(a) {
			t.Fatal("three leg failures left the member eligible")
		}
	}
	// comesBackAfter checks that a's hold is d: a good probe just before
	// its end leaves it down, one at its end brings it up.
	comesBackAfter := func(d time.Duration) {
		t.Helper()
		clock.Add(d - time.Millisecond)
		probeResult(t, p, a, nil)
		if p.Eligible(a) {
			t.Fatalf("up %v into a hold of %v", d-time.Millisecond, d)
		}
		clock.Add(time.Millisecond)
		probeResult(t, p, a, nil)
		if !p.Eligible(a) {
			t.Fatalf("still down at the end of a hold of %v: %+v", d, status(t, p, a))
		}
	}
	for _, hold := range []time.Duration{30 * time.Second, time.Minute, 2 * time.Minute, 200 * time.Second, 200 * time.Second} {
		fail()
		if s := status(t, p, a); !strings.HasSuffix(s.LastError, "held down for "+hold.String()) {
			t.Errorf("LastError %q, want a hold of %v", s.LastError, hold)
		}
		comesBackAfter(hold)
	}
	// A failed probe during a hold does not end it early.
	fail()
	probeResult(t, p, a, errors.New("refused"))
	comesBackAfter(200 * time.Second)

	// Up for DownForMax: the next hold is DownFor again.
	clock.Add(200 * time.Second)
	fail()
	comesBackAfter(30 * time.Second)
	// A dial failure is not held down: the next good probe brings it up.
	p.DialFailed(a, errors.New("refused"))
	probeResult(t, p, a, nil)
	if !p.Eligible(a) {
		t.Error("a dial failure held the member down")
	}
}

func TestDrain(t *testing.T) {
	a, b := ap("203.0.113.1:5000"), ap("[2001:db8:c::1]:5000")
	p, _, logs := newPool(t, Config{Targets: []string{a.String(), b.String()}})
	drainChanged(p)
	for _, tt := range []struct {
		name    string
		op      func(netip.AddrPort) error
		addr    netip.AddrPort
		changed bool
		drained bool
	}{
		{"drain", p.Drain, a, true, true},
		{"drain again", p.Drain, a, false, true},
		{"drain mapped", p.Drain, ap("[::ffff:203.0.113.1]:5000"), false, true},
		{"undrain", p.Undrain, a, true, false},
		{"undrain again", p.Undrain, a, false, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.op(tt.addr); err != nil {
				t.Fatal(err)
			}
			if got := drainChanged(p); got != tt.changed {
				t.Errorf("Changed: %v, want %v", got, tt.changed)
			}
			s := status(t, p, a)
			if s.Drained != tt.drained || p.Eligible(a) == tt.drained || !s.Healthy {
				t.Errorf("status %+v, eligible %v", s, p.Eligible(a))
			}
		})
	}
	if n, m := len(logs.lines(t, "pool member drained")), len(logs.lines(t, "pool member undrained")); n != 1 || m != 1 {
		t.Errorf("%d drained and %d undrained lines, want 1 each", n, m)
	}
	// Drained and down are two things: a down member drained and then
	// undrained is still down.
	p.DialFailed(b, errors.New("refused"))
	if err := p.Drain(b); err != nil {
		t.Fatal(err)
	}
	if err := p.Undrain(b); err != nil {
		t.Fatal(err)
	}
	if p.Eligible(b) {
		t.Error("undrain brought a down member up")
	}
	for _, op := range []func(netip.AddrPort) error{p.Drain, p.Undrain} {
		err := op(ap("203.0.113.9:5000"))
		if !errors.Is(err, ErrUnknownMember) || !strings.Contains(err.Error(), "203.0.113.9:5000") {
			t.Errorf("an unknown member: %v", err)
		}
	}
}

// TestChangedNeverBlocks: changes with nobody receiving do not block, and
// leave one receive.
func TestChangedNeverBlocks(t *testing.T) {
	a := ap("203.0.113.1:5000")
	p, _, _ := newPool(t, Config{Targets: []string{a.String()}})
	for range 10 {
		if err := p.Drain(a); err != nil {
			t.Fatal(err)
		}
		if err := p.Undrain(a); err != nil {
			t.Fatal(err)
		}
	}
	if !drainChanged(p) || drainChanged(p) {
		t.Error("want exactly one pending Changed")
	}
}

func TestUpdateKeepsState(t *testing.T) {
	a, b, c, d := ap("203.0.113.1:5000"), ap("203.0.113.2:5000"), ap("203.0.113.3:5000"), ap("203.0.113.4:5000")
	p, _, logs := newPool(t, Config{Targets: []string{a.String(), b.String(), c.String()}})
	log := zerolog.New(logs)
	if err := p.Drain(a); err != nil {
		t.Fatal(err)
	}
	p.DialFailed(b, errors.New("refused"))
	p.LegFailed(c, errors.New("reset"))
	p.LegFailed(c, errors.New("reset"))
	drainChanged(p)

	if err := p.Update(Config{Targets: []string{"203.0.113.4:5000", "[::ffff:203.0.113.3]:5000", b.String(), a.String()}, Logger: log}); err != nil {
		t.Fatal(err)
	}
	if !drainChanged(p) {
		t.Error("no Changed after a member was added")
	}
	if s := status(t, p, a); !s.Drained || !s.Healthy {
		t.Errorf("a: %+v", s)
	}
	if s := status(t, p, b); s.Healthy || s.DialFailures != 1 || s.LastError != "dial: refused" {
		t.Errorf("b: %+v", s)
	}
	if s := status(t, p, d); !s.Healthy || s.Drained || s.From != "203.0.113.4:5000" {
		t.Errorf("d: %+v", s)
	}
	// c kept its two leg failures within the window: a third takes it down.
	p.LegFailed(c, errors.New("reset"))
	if s := status(t, p, c); s.Healthy || s.LegFailures != 3 {
		t.Errorf("c: %+v", s)
	}
	if n := len(logs.lines(t, "pool member added")); n != 4 {
		t.Errorf("%d added lines, want 4", n)
	}

	// A bad config changes nothing.
	if err := p.Update(Config{Targets: []string{"203.0.113.1"}, Logger: log}); err == nil {
		t.Error("Update took a target without a port")
	}
	if n := len(p.Members()); n != 4 {
		t.Errorf("%d members after a bad Update", n)
	}
	// A member removed and given again is new.
	if err := p.Update(Config{Targets: []string{b.String()}, Logger: log}); err != nil {
		t.Fatal(err)
	}
	if got := p.Members(); len(got) != 1 || got[0].Addr != b {
		t.Errorf("members %+v", got)
	}
	removed := logs.lines(t, "pool member removed")
	if len(removed) != 3 || removed[0]["reason"] != "its target was removed" {
		t.Errorf("removed lines %v", removed)
	}
	if err := p.Update(Config{Targets: []string{a.String(), b.String()}, Logger: log}); err != nil {
		t.Fatal(err)
	}
	if s := status(t, p, a); s.Drained || !s.Healthy {
		t.Errorf("a given again: %+v", s)
	}
}
