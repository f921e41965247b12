package pool

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeClock is a clock a test moves by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock { return &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// logBuf collects a logger's JSON lines.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// lines returns the lines whose message is msg.
func (l *logBuf) lines(t *testing.T, msg string) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for line := range strings.SplitSeq(strings.TrimSpace(l.b.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if m["message"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// newPool builds a pool of cfg with a fake clock and a logger into a
// buffer.
func newPool(t *testing.T, cfg Config) (*Pool, *fakeClock, *logBuf) {
	t.Helper()
	logs := &logBuf{}
	cfg.Logger = zerolog.New(logs)
	if cfg.Name == "" {
		cfg.Name = "pool-test"
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c := newClock()
	p.now = c.Now
	return p, c, logs
}

// literals returns n member targets: 203.0.113.1:5000 and on, every
// third an IPv6 one.
func literals(n int) []string {
	out := make([]string, n)
	for i := range out {
		if i%3 == 2 {
			out[i] = fmt.Sprintf("[2001:db8:c::%x]:5000", i+1)
		} else {
			out[i] = fmt.Sprintf("203.0.113.%d:5000", i+1)
		}
	}
	return out
}

// routers returns n distinct router addresses, IPv4 from 198.51.100.0/24
// first, then IPv6 from 2001:db8:r::/48.
func routers(n int) []netip.Addr {
	out := make([]netip.Addr, n)
	for i := range out {
		if i < 256 {
			out[i] = netip.AddrFrom4([4]byte{198, 51, 100, byte(i)})
			continue
		}
		a := netip.MustParseAddr("2001:db8:7::").As16()
		binary.BigEndian.PutUint32(a[12:], uint32(i))
		out[i] = netip.AddrFrom16(a)
	}
	return out
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// refScore is the package doc's formula written out with hash/fnv, apart
// from the package's own code.
func refScore(member, router string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(member))
	h.Write([]byte{0})
	r := netip.MustParseAddr(router).As16()
	h.Write(r[:])
	z := h.Sum64()
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// TestScoreGolden pins the placement hash: a change to it moves routers
// between bmpproxy versions, and fails here. The values were checked
// against an independent implementation of the package doc's formula.
func TestScoreGolden(t *testing.T) {
	for _, tt := range []struct {
		member, router string
		key            string // the member's canonical form
		want           uint64
	}{
		{"198.51.100.1:5000", "203.0.113.9", "198.51.100.1:5000", 0xeb698a08ea4a9060},
		{"198.51.100.2:5000", "203.0.113.9", "198.51.100.2:5000", 0x21a5ea9941f607e2},
		{"[2001:db8::1]:5000", "203.0.113.9", "[2001:db8::1]:5000", 0xd1cb0fd1c5524962},
		{"198.51.100.1:5000", "2001:db8:1::2", "198.51.100.1:5000", 0x35da6fffc8bdf98d},
		{"[2001:db8::1]:17900", "2001:db8:1::2", "[2001:db8::1]:17900", 0xdfb65c8b548f3446},
		// An IPv4-mapped router or member is the IPv4 one.
		{"198.51.100.1:5000", "::ffff:203.0.113.9", "198.51.100.1:5000", 0xeb698a08ea4a9060},
		{"[::ffff:198.51.100.1]:5000", "203.0.113.9", "198.51.100.1:5000", 0xeb698a08ea4a9060},
	} {
		t.Run(tt.member+"/"+tt.router, func(t *testing.T) {
			m := ap(tt.member)
			if k := memberKey(m); k != tt.key {
				t.Errorf("memberKey(%v) = %q, want %q", m, k, tt.key)
			}
			got := score(m, netip.MustParseAddr(tt.router))
			if got != tt.want {
				t.Errorf("score = %#016x, want %#016x", got, tt.want)
			}
			if ref := refScore(tt.key, tt.router); got != ref {
				t.Errorf("score = %#016x, the doc's formula gives %#016x", got, ref)
			}
		})
	}
}

// TestPickIsRankingFirst: over 30 routers and 3 members, each router is
// on exactly one member, the first of its ranking, and every member has
// some.
func TestPickIsRankingFirst(t *testing.T) {
	p, _, _ := newPool(t, Config{Targets: literals(3)})
	count := map[netip.AddrPort]int{}
	for _, r := range routers(30) {
		m, ok := p.Pick(r)
		if !ok {
			t.Fatalf("Pick(%v): no member", r)
		}
		rank := p.Ranking(r)
		if len(rank) != 3 || rank[0] != m {
			t.Fatalf("Pick(%v) = %v, Ranking = %v", r, m, rank)
		}
		seen := map[netip.AddrPort]bool{}
		for _, x := range rank {
			seen[x.Addr] = true
		}
		if len(seen) != 3 {
			t.Fatalf("Ranking(%v) = %v: not every member once", r, rank)
		}
		count[m.Addr]++
	}
	if len(count) != 3 {
		t.Errorf("30 routers went to %d members: %v", len(count), count)
	}
}

// TestSpread: 3000 routers over 3 members give each 20-47%.
func TestSpread(t *testing.T) {
	p, _, _ := newPool(t, Config{Targets: literals(3)})
	count := map[netip.AddrPort]int{}
	rs := routers(3000)
	for _, r := range rs {
		m, _ := p.Pick(r)
		count[m.Addr]++
	}
	for _, s := range p.Members() {
		if share := float64(count[s.Addr]) / float64(len(rs)); share < 0.20 || share > 0.47 {
			t.Errorf("%v has %d of %d routers (%.0f%%)", s.Addr, count[s.Addr], len(rs), 100*share)
		}
	}
	t.Logf("spread: %v", count)
}

// TestPlacementIndependentOfOrder: two pools given the same members in
// another order (another bmpproxy, or a restart) place every router alike.
func TestPlacementIndependentOfOrder(t *testing.T) {
	targets := literals(5)
	a, _, _ := newPool(t, Config{Targets: targets})
	rev := slices.Clone(targets)
	slices.Reverse(rev)
	b, _, _ := newPool(t, Config{Targets: rev})
	for _, r := range routers(500) {
		ma, _ := a.Pick(r)
		mb, _ := b.Pick(r)
		if ma.Addr != mb.Addr {
			t.Fatalf("router %v: %v in one pool, %v in the other", r, ma.Addr, mb.Addr)
		}
	}
	// A mapped router is its IPv4 address.
	m4, _ := a.Pick(netip.MustParseAddr("198.51.100.9"))
	m6, _ := a.Pick(netip.MustParseAddr("::ffff:198.51.100.9"))
	if m4 != m6 {
		t.Errorf("198.51.100.9 on %v, ::ffff:198.51.100.9 on %v", m4, m6)
	}
}

// TestTieGoesToLowerKey: of two members with the same score, the one
// whose key sorts first wins, in Pick and Ranking.
func TestTieGoesToLowerKey(t *testing.T) {
	p, _, _ := newPool(t, Config{Targets: []string{"203.0.113.2:5000", "203.0.113.10:5000"}})
	p.mu.Lock()
	for _, m := range p.members {
		m.prefix = 42 // every score ties
	}
	p.mu.Unlock()
	want := ap("203.0.113.10:5000") // "203.0.113.10:5000" < "203.0.113.2:5000"
	for _, r := range routers(20) {
		if m, _ := p.Pick(r); m.Addr != want {
			t.Fatalf("Pick(%v) = %v on a tie, want %v", r, m.Addr, want)
		}
		if rank := p.Ranking(r); rank[0].Addr != want {
			t.Fatalf("Ranking(%v) = %v on a tie, want %v first", r, rank, want)
		}
	}
}

// TestOnlyChangedRoutersMove is the rendezvous property: a member that
// leaves (removed, drained, failed) gives up only its own routers, and
// one that joins takes routers only for itself.
func TestOnlyChangedRoutersMove(t *testing.T) {
	targets := literals(4)
	gone := ap(targets[1])
	for _, tt := range []struct {
		name  string
		leave func(*Pool) error
		join  func(*Pool) error
	}{
		{
			"update",
			func(p *Pool) error { return p.Update(Config{Targets: slices.Delete(slices.Clone(targets), 1, 2)}) },
			func(p *Pool) error { return p.Update(Config{Targets: targets}) },
		},
		{
			"drain",
			func(p *Pool) error { return p.Drain(gone) },
			func(p *Pool) error { return p.Undrain(gone) },
		},
		{
			"dial failed",
			func(p *Pool) error { p.DialFailed(gone, errors.New("refused")); return nil },
			func(p *Pool) error { p.probed(t.Context(), p.byAddr[gone], nil); return nil },
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, _, _ := newPool(t, Config{Targets: targets})
			rs := routers(1000)
			pick := func() map[netip.Addr]netip.AddrPort {
				out := make(map[netip.Addr]netip.AddrPort, len(rs))
				for _, r := range rs {
					m, ok := p.Pick(r)
					if !ok {
						t.Fatalf("Pick(%v): no member", r)
					}
					out[r] = m.Addr
				}
				return out
			}
			before := pick()
			if err := tt.leave(p); err != nil {
				t.Fatal(err)
			}
			during := pick()
			moved := 0
			for _, r := range rs {
				if (before[r] == gone) != (during[r] != before[r]) {
					t.Fatalf("router %v: on %v, then %v, with %v gone", r, before[r], during[r], gone)
				}
				if during[r] != before[r] {
					moved++
				}
			}
			if moved == 0 {
				t.Fatalf("no router was on %v", gone)
			}
			if err := tt.join(p); err != nil {
				t.Fatal(err)
			}
			after := pick()
			for _, r := range rs {
				if after[r] != during[r] && after[r] != gone {
					t.Fatalf("router %v: moved from %v to %v when %v joined", r, during[r], after[r], gone)
				}
				if after[r] != before[r] {
					t.Fatalf("router %v: on %v before, %v after", r, before[r], after[r])
				}
			}
			t.Logf("%d of %d routers moved", moved, len(rs))
		})
	}
}

// TestJoinTakesOnlyItsOwn: a fifth member joining takes about a fifth of
// the routers, each of which now scores highest for it.
func TestJoinTakesOnlyItsOwn(t *testing.T) {
	targets := literals(5)
	p, _, _ := newPool(t, Config{Targets: targets[:4]})
	rs := routers(1000)
	before := map[netip.Addr]netip.AddrPort{}
	for _, r := range rs {
		m, _ := p.Pick(r)
		before[r] = m.Addr
	}
	if err := p.Update(Config{Targets: targets}); err != nil {
		t.Fatal(err)
	}
	joined, moved := ap(targets[4]), 0
	for _, r := range rs {
		m, _ := p.Pick(r)
		if m.Addr != before[r] {
			moved++
			if m.Addr != joined {
				t.Fatalf("router %v moved from %v to %v, not to the new %v", r, before[r], m.Addr, joined)
			}
		}
	}
	if moved < 100 || moved > 300 {
		t.Errorf("%d of %d routers moved to the fifth member", moved, len(rs))
	}
}

func TestPickNoneEligible(t *testing.T) {
	p, _, _ := newPool(t, Config{Targets: literals(2)})
	for _, s := range p.Members() {
		if err := p.Drain(s.Addr); err != nil {
			t.Fatal(err)
		}
	}
	if m, ok := p.Pick(netip.MustParseAddr("198.51.100.1")); ok {
		t.Errorf("Pick = %v with every member drained", m)
	}
	if rank := p.Ranking(netip.MustParseAddr("198.51.100.1")); len(rank) != 2 {
		t.Errorf("Ranking = %v, want both drained members", rank)
	}
}

func TestPickAllocs(t *testing.T) {
	p, _, _ := newPool(t, Config{Targets: literals(12)})
	rs := routers(64)
	i := 0
	if n := testing.AllocsPerRun(1000, func() {
		p.Pick(rs[i%len(rs)])
		i++
	}); n != 0 {
		t.Errorf("Pick allocates %v times", n)
	}
}

func BenchmarkPick(b *testing.B) {
	for _, n := range []int{3, 12} {
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			p, err := New(Config{Targets: literals(n), Logger: zerolog.Nop()})
			if err != nil {
				b.Fatal(err)
			}
			rs := routers(1024)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				p.Pick(rs[i&1023])
				i++
			}
		})
	}
}

func TestValidate(t *testing.T) {
	for _, tt := range []struct {
		name string
		cfg  Config
		want string // in the error
	}{
		{"no targets", Config{}, "no targets"},
		{"no port", Config{Targets: []string{"198.51.100.1"}}, `"198.51.100.1": not host:port`},
		{"port 0", Config{Targets: []string{"collector.example:0"}}, `"collector.example:0": port 0`},
		{"port too big", Config{Targets: []string{"collector.example:65536"}}, `"collector.example:65536": invalid port`},
		{"bad host", Config{Targets: []string{"coll ector:5000"}}, `"coll ector:5000": invalid host`},
		{"empty host", Config{Targets: []string{":5000"}}, `":5000": invalid host`},
		{"twice", Config{Targets: []string{"198.51.100.1:5000", "[::ffff:198.51.100.1]:5000"}}, `"[::ffff:198.51.100.1]:5000": given twice`},
		{"name twice", Config{Targets: []string{"c.example:5000", "C.example:5000"}}, `"C.example:5000": given twice`},
		{"negative interval", Config{Targets: literals(1), HealthInterval: -time.Second}, "health interval -1s is negative"},
		{"negative threshold", Config{Targets: literals(1), FailThreshold: -1}, "fail threshold -1 is negative"},
		{"max below", Config{Targets: literals(1), DownFor: time.Minute, DownForMax: time.Second}, "down for max 1s is below down for 1m0s"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Name = "l1"
			_, err := New(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), `pool "l1"`) {
				t.Errorf("New: %v, want an error with %q", err, tt.want)
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	s, err := validate(Config{Targets: []string{"c.example:05000", "[::ffff:198.51.100.1]:5000"}, DownFor: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if s.healthInterval != DefaultHealthInterval || s.resolveInterval != DefaultResolveInterval ||
		s.connectTimeout != DefaultConnectTimeout || s.failThreshold != DefaultFailThreshold ||
		s.failWindow != DefaultFailWindow || s.downFor != 10*time.Minute || s.downForMax != 10*time.Minute {
		t.Errorf("settings %+v", s)
	}
	if s.targets[0].str != "c.example:5000" || s.targets[1].str != "198.51.100.1:5000" {
		t.Errorf("targets %+v", s.targets)
	}
	s, err = validate(Config{Targets: literals(1)})
	if err != nil || s.downFor != DefaultDownFor || s.downForMax != DefaultDownForMax {
		t.Errorf("settings %+v, %v", s, err)
	}
}
