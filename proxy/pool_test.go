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

// poolRouter is a router's BMP session from its own loopback address,
// its stream in two parts with the state after each.
type poolRouter struct {
	addr   netip.Addr
	conn   *net.TCPConn
	parts  [][]byte
	states []*bmpcheck.State
}

func newPoolRouters(t *testing.T, n int) []*poolRouter {
	t.Helper()
	var rs []*poolRouter
	for i := range n {
		msgs := bmpcheck.Generate(bmpcheck.GenConfig{Seed: uint64(100 + i), Prefixes: 100, AttrSets: 4})
		half := len(msgs) / 2
		r := &poolRouter{addr: netip.AddrFrom4([4]byte{127, 0, 1, byte(10 + i)})}
		var stream []byte
		for _, p := range [][]bmpcheck.Message{msgs[:half], msgs[half:]} {
			b := bmpcheck.Encode(p)
			stream = append(stream, b...)
			st, err := bmpcheck.Parse(stream)
			if err != nil {
				t.Fatal(err)
			}
			r.parts, r.states = append(r.parts, b), append(r.states, st)
		}
		rs = append(rs, r)
	}
	return rs
}

func (r *poolRouter) connect(t *testing.T, addr string) {
	t.Helper()
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(r.addr, 0))}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	r.conn = nc.(*net.TCPConn)
	t.Cleanup(func() { r.conn.Close() })
}

func (r *poolRouter) send(t *testing.T, i int) {
	t.Helper()
	if _, err := r.conn.Write(r.parts[i]); err != nil {
		t.Fatalf("router %s: %v", r.addr, err)
	}
}

// holds reports whether m has r's session open, holding state i.
func holds(m *testtarget.Member, r *poolRouter, i int) bool {
	b, open := m.Latest(r.addr)
	if !open {
		return false
	}
	got, err := bmpcheck.Parse(bmpcheck.Whole(b))
	return err == nil && got.Equal(r.states[i])
}

// picks is package pool's pick over members for each router.
func picks(t *testing.T, members []netip.AddrPort, routers []*poolRouter) map[netip.Addr]netip.AddrPort {
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
		m, _ := p.Pick(r.addr)
		out[r.addr] = m.Addr
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
	members := []*testtarget.Member{first,
		testtarget.NewMember(t, fmt.Sprintf("127.0.0.3:%d", port)),
		testtarget.NewMember(t, fmt.Sprintf("127.0.0.4:%d", port))}
	addrs := make([]netip.AddrPort, len(members))
	byAddr := map[netip.AddrPort]*testtarget.Member{}
	for i, m := range members {
		addrs[i] = netip.MustParseAddrPort(m.Addr())
		byAddr[addrs[i]] = m
	}
	res := &testResolver{name: "collectors.test"}
	res.set(addrs[0].Addr(), addrs[1].Addr())
	ts := startServer(t, poolListener(true, fmt.Sprintf("collectors.test:%d", port)), func(o *Options) { o.LookupNetIP = res.lookup })

	routers := newPoolRouters(t, 12)
	before := picks(t, addrs[:2], routers)
	for _, r := range routers {
		r.connect(t, ts.addrs[0].String())
		r.send(t, 0)
	}
	waitfor.Within(t, poolWait, "each router on its pick of .2 and .3", func() bool {
		for _, r := range routers {
			if !holds(byAddr[before[r.addr]], r, 0) {
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
		r.send(t, 1)
	}
	moved := 0
	waitfor.Within(t, poolWait, "the routers of .2 on their pick of .3 and .4, replayed; the others where they were", func() bool {
		moved = 0
		for _, r := range routers {
			want := before[r.addr]
			if want == addrs[0] {
				want = after[r.addr]
				moved++
			}
			if !holds(byAddr[want], r, 1) {
				return false
			}
		}
		return true
	})
	if moved == 0 {
		t.Fatal("no router was on the member that left")
	}
	for _, r := range routers {
		if before[r.addr] != addrs[0] && byAddr[before[r.addr]].Count(r.addr) != 1 {
			t.Errorf("router %s, on a member that stayed: %d sessions there, want 1", r.addr, byAddr[before[r.addr]].Count(r.addr))
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
	members := []*testtarget.Member{testtarget.NewMember(t, "127.0.0.1:0"), testtarget.NewMember(t, "127.0.0.1:0"), testtarget.NewMember(t, "127.0.0.1:0")}
	var targets []string
	addrs := make([]netip.AddrPort, len(members))
	byAddr := map[netip.AddrPort]*testtarget.Member{}
	for i, m := range members {
		targets = append(targets, m.Addr())
		addrs[i] = netip.MustParseAddrPort(m.Addr())
		byAddr[addrs[i]] = m
	}
	ts := startServer(t, poolListener(false, targets...), nil)
	routers := newPoolRouters(t, 12)
	want := picks(t, addrs, routers)
	for _, r := range routers {
		r.connect(t, ts.addrs[0].String())
		r.send(t, 0)
	}
	waitfor.Within(t, poolWait, "each router on its pick", func() bool {
		for _, r := range routers {
			if !holds(byAddr[want[r.addr]], r, 0) {
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

	drained := want[routers[0].addr]
	var on []*poolRouter
	for _, r := range routers {
		if want[r.addr] == drained {
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
		r.conn.SetReadDeadline(time.Now().Add(poolWait))
		if _, err := r.conn.Read(make([]byte, 1)); err == nil {
			t.Errorf("router %s on the drained member: read a byte, want its session closed", r.addr)
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
		r.connect(t, ts.addrs[0].String())
		r.send(t, 0)
	}
	waitfor.Within(t, poolWait, "the drained member's routers, reconnected, on their next pick", func() bool {
		for _, r := range on {
			if !holds(byAddr[again[r.addr]], r, 0) {
				return false
			}
		}
		return true
	})
	for _, r := range routers {
		if want[r.addr] != drained && byAddr[want[r.addr]].Count(r.addr) != 1 {
			t.Errorf("router %s: %d sessions on its member, want its first only", r.addr, byAddr[want[r.addr]].Count(r.addr))
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
	members := []*testtarget.Member{testtarget.NewMember(t, "127.0.0.1:0"), testtarget.NewMember(t, "127.0.0.1:0"), testtarget.NewMember(t, "127.0.0.1:0")}
	var targets []string
	addrs := make([]netip.AddrPort, len(members))
	byAddr := map[netip.AddrPort]*testtarget.Member{}
	for i, m := range members {
		targets = append(targets, m.Addr())
		addrs[i] = netip.MustParseAddrPort(m.Addr())
		byAddr[addrs[i]] = m
	}
	cfg := poolListener(true, targets...)
	cfg.ApplyDefaults()
	cur := runServer(t, cfg, Options{IdleAfter: 20 * time.Millisecond})
	routers := newPoolRouters(t, 9)
	for _, r := range routers {
		r.connect(t, cur.addrs[0].String())
		r.send(t, 0)
	}
	drained := picks(t, addrs, routers)[routers[0].addr]
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
			if !holds(byAddr[want[r.addr]], r, 0) {
				return false
			}
		}
		return true
	})
	sessions := map[netip.Addr]int{}
	for _, r := range routers {
		sessions[r.addr] = byAddr[want[r.addr]].Count(r.addr)
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
		r.send(t, 1)
	}
	waitfor.Within(t, poolWait, "every router's whole stream on the same member, through the successor", func() bool {
		for _, r := range routers {
			if !holds(byAddr[want[r.addr]], r, 1) {
				return false
			}
		}
		return true
	})
	for _, r := range routers {
		if n := byAddr[want[r.addr]].Count(r.addr); n != sessions[r.addr] {
			t.Errorf("router %s: %d sessions on its member after the upgrade, want %d: no leg reconnects", r.addr, n, sessions[r.addr])
		}
	}
}
