package proxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/bmpproxy/bmpproxy/internal/bmpcheck"
	"github.com/bmpproxy/bmpproxy/internal/testtarget"
	"github.com/bmpproxy/bmpproxy/internal/waitfor"
	"github.com/bmpproxy/bmpproxy/pool"
)

// poolWait bounds the waits of the pool tests.
const poolWait = 15 * time.Second

// testResolver answers a pool's lookups of one name with addresses the
// test changes.
type testResolver struct {
	mu    sync.Mutex
	name  string
	addrs []netip.Addr
}

func (r *testResolver) set(addrs ...netip.Addr) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.addrs = addrs
}

func (r *testResolver) lookup(ctx context.Context, host string) ([]netip.Addr, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if host != r.name {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return append([]netip.Addr(nil), r.addrs...), nil
}

// newMembers starts a pool member on each address, and returns them with
// their addresses, in order, and by address.
func newMembers(t *testing.T, at ...string) ([]*testtarget.Member, []netip.AddrPort, map[netip.AddrPort]*testtarget.Member) {
	var members []*testtarget.Member
	var addrs []netip.AddrPort
	byAddr := map[netip.AddrPort]*testtarget.Member{}
	for _, a := range at {
		m := testtarget.NewMember(t, a)
		ap := netip.MustParseAddrPort(m.Addr())
		members, addrs = append(members, m), append(addrs, ap)
		byAddr[ap] = m
	}
	return members, addrs, byAddr
}

// picks is package pool's pick over members for each router.
func picks(t *testing.T, members []netip.AddrPort, routers []*testtarget.Router) map[netip.Addr]netip.AddrPort {
	t.Helper()
	var targets []string
	for _, m := range members {
		targets = append(targets, m.String())
	}
	p, err := pool.New(pool.Config{Targets: targets})
	if err != nil {
		t.Fatal(err)
	}
	out := map[netip.Addr]netip.AddrPort{}
	for _, r := range routers {
		m, _ := p.Pick(r.Addr)
		out[r.Addr] = m.Addr
	}
	return out
}

// poolListener is a listener on loopback with a pool of targets.
func poolListener(resync bool, targets ...string) *conf.Config {
	pl := &conf.Pool{HealthInterval: 100 * time.Millisecond, ResolveInterval: 100 * time.Millisecond, HoldDown: time.Second}
	for _, s := range targets {
		tg, err := conf.ParseTarget(s)
		if err != nil {
			panic(err)
		}
		pl.Targets = append(pl.Targets, tg)
	}
	return &conf.Config{Listeners: []conf.Listener{{
		Name: "routers", Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")},
		BMP: resync, Resync: resync, Pool: pl,
	}}}
}

// TestPoolFollowsName: a pool target that is a name is every address it
// resolves to, resolved again every resolve_interval. When the answer
// changes, the members follow: a member that left gives its routers to
// their next pick, replayed; the routers of a member that stays stay,
// even those that would now pick the member that joined (no rebalance).
func TestPoolFollowsName(t *testing.T) {
	// Three members on one port, at 127.0.0.2, .3 and .4.
	first := testtarget.NewMember(t, "127.0.0.2:0")
	port := netip.MustParseAddrPort(first.Addr()).Port()
	more, addrs, byAddr := newMembers(t, fmt.Sprintf("127.0.0.3:%d", port), fmt.Sprintf("127.0.0.4:%d", port))
	members := append([]*testtarget.Member{first}, more...)
	first0 := netip.MustParseAddrPort(first.Addr())
	addrs = append([]netip.AddrPort{first0}, addrs...)
	byAddr[first0] = first
	res := &testResolver{name: "collectors.test"}
	res.set(addrs[0].Addr(), addrs[1].Addr())
	ts := startServer(t, poolListener(true, fmt.Sprintf("collectors.test:%d", port)), func(o *Options) { o.LookupNetIP = res.lookup })

	routers := testtarget.NewRouters(t, 12, netip.MustParseAddr("127.0.1.10"), 2, bmpcheck.GenConfig{Seed: 100, Prefixes: 100, AttrSets: 4})
	before := picks(t, addrs[:2], routers)
	for _, r := range routers {
		r.Connect(t, ts.addrs[0].String())
		r.Send(t, 0)
	}
	waitfor.Within(t, poolWait, "each router on its pick of .2 and .3", func() bool {
		for _, r := range routers {
			if !byAddr[before[r.Addr]].Holds(r.Addr, r.States[0]) {
				return false
			}
		}
		return true
	})

	res.set(addrs[1].Addr(), addrs[2].Addr())
	waitfor.Within(t, poolWait, "the pool's members to be .3 and .4", func() bool {
		ps := ts.Pools()
		return len(ps) == 1 && len(ps[0].Members) == 2 && ps[0].Members[0].Addr == addrs[1] && ps[0].Members[1].Addr == addrs[2]
	})
	after := picks(t, addrs[1:], routers)
	for _, r := range routers {
		r.Send(t, 1)
	}
	moved := 0
	waitfor.Within(t, poolWait, "the routers of .2 on their pick of .3 and .4, replayed; the others where they were", func() bool {
		moved = 0
		for _, r := range routers {
			want := before[r.Addr]
			if want == addrs[0] {
				want = after[r.Addr]
				moved++
			}
			if !byAddr[want].Holds(r.Addr, r.States[1]) {
				return false
			}
		}
		return true
	})
	if moved == 0 {
		t.Fatal("no router was on the member that left")
	}
	for _, r := range routers {
		if before[r.Addr] != addrs[0] && byAddr[before[r.Addr]].Count(r.Addr) != 1 {
			t.Errorf("router %s, on a member that stayed: %d sessions there, want 1", r.Addr, byAddr[before[r.Addr]].Count(r.Addr))
		}
	}
	if n := len(ts.logs.closed()); n != 0 {
		t.Errorf("%d router sessions closed, want none", n)
	}
	if got := members[0].Open(); len(got) != 0 {
		t.Errorf("the member that left still has routers %v", got)
	}
}

// TestPoolWithoutResync: without resync a collector cannot join a
// session halfway, so draining a member closes its routers' sessions
// (reason "moved"), and only theirs; each router, reconnecting, lands on
// another member. A member gets health checks as PROXY v2 LOCAL headers.
func TestPoolWithoutResync(t *testing.T) {
	members, addrs, byAddr := newMembers(t, "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0")
	var targets []string
	for _, a := range addrs {
		targets = append(targets, a.String())
	}
	ts := startServer(t, poolListener(false, targets...), nil)
	routers := testtarget.NewRouters(t, 12, netip.MustParseAddr("127.0.1.10"), 2, bmpcheck.GenConfig{Seed: 100, Prefixes: 100, AttrSets: 4})
	want := picks(t, addrs, routers)
	for _, r := range routers {
		r.Connect(t, ts.addrs[0].String())
		r.Send(t, 0)
	}
	waitfor.Within(t, poolWait, "each router on its pick", func() bool {
		for _, r := range routers {
			if !byAddr[want[r.Addr]].Holds(r.Addr, r.States[0]) {
				return false
			}
		}
		return true
	})
	waitfor.Within(t, poolWait, "a health check at each member", func() bool {
		for _, m := range members {
			if m.Probes() == 0 {
				return false
			}
		}
		return true
	})

	drained := want[routers[0].Addr]
	var on []*testtarget.Router
	for _, r := range routers {
		if want[r.Addr] == drained {
			on = append(on, r)
		}
	}
	if err := ts.Drain("routers", drained.String()); err != nil {
		t.Fatal(err)
	}
	closed := ts.logs.waitClosed(t, len(on))
	for _, l := range closed {
		if l["reason"] != "moved" {
			t.Errorf("closing line %v: want reason moved", l)
		}
	}
	for _, r := range on {
		r.Conn.SetReadDeadline(time.Now().Add(poolWait))
		if _, err := r.Conn.Read(make([]byte, 1)); err == nil {
			t.Errorf("router %s on the drained member: read a byte, want its session closed", r.Addr)
		}
	}
	rest := addrs[:0:0]
	for _, a := range addrs {
		if a != drained {
			rest = append(rest, a)
		}
	}
	again := picks(t, rest, routers)
	for _, r := range on {
		r.Connect(t, ts.addrs[0].String())
		r.Send(t, 0)
	}
	waitfor.Within(t, poolWait, "the drained member's routers, reconnected, on their next pick", func() bool {
		for _, r := range on {
			if !byAddr[again[r.Addr]].Holds(r.Addr, r.States[0]) {
				return false
			}
		}
		return true
	})
	for _, r := range routers {
		if want[r.Addr] != drained && byAddr[want[r.Addr]].Count(r.Addr) != 1 {
			t.Errorf("router %s: %d sessions on its member, want its first only", r.Addr, byAddr[want[r.Addr]].Count(r.Addr))
		}
	}
	if err := ts.Drain("routers", "198.51.100.1:5000"); err == nil {
		t.Error("Drain of a member the pool does not have: no error")
	}
	if err := ts.Drain("nosuch", drained.String()); err == nil {
		t.Error("Drain of a listener that has no pool: no error")
	}
}

// TestPoolHandover: an upgrade hands a pool's router sessions over with
// their members, and its drains: no leg reconnects, and the drained
// member stays drained in the successor.
func TestPoolHandover(t *testing.T) {
	_, addrs, byAddr := newMembers(t, "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0")
	var targets []string
	for _, a := range addrs {
		targets = append(targets, a.String())
	}
	cfg := poolListener(true, targets...)
	cfg.ApplyDefaults()
	cur := runServer(t, cfg, Options{IdleAfter: 20 * time.Millisecond})
	routers := testtarget.NewRouters(t, 9, netip.MustParseAddr("127.0.1.10"), 2, bmpcheck.GenConfig{Seed: 100, Prefixes: 100, AttrSets: 4})
	for _, r := range routers {
		r.Connect(t, cur.addrs[0].String())
		r.Send(t, 0)
	}
	drained := picks(t, addrs, routers)[routers[0].Addr]
	if err := cur.Drain("", drained.String()); err != nil {
		t.Fatal(err)
	}
	var rest []netip.AddrPort
	for _, a := range addrs {
		if a != drained {
			rest = append(rest, a)
		}
	}
	want := picks(t, rest, routers)
	waitfor.Within(t, poolWait, "every router on its pick of the members not drained", func() bool {
		for _, r := range routers {
			if !byAddr[want[r.Addr]].Holds(r.Addr, r.States[0]) {
				return false
			}
		}
		return true
	})
	sessions := map[netip.Addr]int{}
	for _, r := range routers {
		sessions[r.Addr] = byAddr[want[r.Addr]].Count(r.Addr)
	}

	var next *testServer
	if err := cur.Upgrade(context.Background(), inProcess(t, cfg, &next, false)); err != nil {
		t.Fatal(err)
	}
	if err := cur.wait(t); err != ErrHandedOver {
		t.Fatalf("predecessor Run = %v, want ErrHandedOver", err)
	}
	defer next.stop(t)
	for _, ps := range next.Pools() {
		for _, m := range ps.Members {
			if m.Drained != (m.Addr == drained) {
				t.Errorf("successor's member %s drained %t; want only %s drained", m.Addr, m.Drained, drained)
			}
		}
	}
	for _, r := range routers {
		r.Send(t, 1)
	}
	waitfor.Within(t, poolWait, "every router's whole stream on the same member, through the successor", func() bool {
		for _, r := range routers {
			if !byAddr[want[r.Addr]].Holds(r.Addr, r.States[1]) {
				return false
			}
		}
		return true
	})
	for _, r := range routers {
		if n := byAddr[want[r.Addr]].Count(r.Addr); n != sessions[r.Addr] {
			t.Errorf("router %s: %d sessions on its member after the upgrade, want %d: no leg reconnects", r.Addr, n, sessions[r.Addr])
		}
	}
}
