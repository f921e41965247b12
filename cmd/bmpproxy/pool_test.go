package main

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/bmpproxy/bmpproxy/internal/bmpcheck"
	"github.com/bmpproxy/bmpproxy/internal/testtarget"
	"github.com/bmpproxy/bmpproxy/internal/waitfor"
	"github.com/bmpproxy/bmpproxy/pool"
)

// poolCollector is a pool member (testtarget.Member) that checks a
// router's state.
type poolCollector struct {
	*testtarget.Member
	addr string
}

func newPoolCollector(t *testing.T) *poolCollector {
	m := testtarget.NewMember(t, "127.0.0.1:0")
	return &poolCollector{Member: m, addr: m.Addr()}
}

func (c *poolCollector) stop()                       { c.Stop() }
func (c *poolCollector) start()                      { c.Start() }
func (c *poolCollector) open() []netip.Addr          { return c.Open() }
func (c *poolCollector) count(router netip.Addr) int { return c.Count(router) }

// placement is, for each router, the member holding its open session.
func placement(members []*poolCollector) map[netip.Addr]int {
	out := map[netip.Addr]int{}
	for i, m := range members {
		for _, r := range m.open() {
			if _, dup := out[r]; dup {
				out[r] = -1 // on two members
				continue
			}
			out[r] = i
		}
	}
	return out
}

// expectedPlacement is package pool's pick for each router over members.
func expectedPlacement(t *testing.T, members []*poolCollector, routers []*testtarget.Router, skip ...int) map[netip.Addr]int {
	t.Helper()
	var targets []string
	index := map[netip.AddrPort]int{}
	for i, m := range members {
		if slices.Contains(skip, i) {
			continue
		}
		targets = append(targets, m.addr)
		index[netip.MustParseAddrPort(m.addr)] = i
	}
	p, err := pool.New(pool.Config{Targets: targets})
	if err != nil {
		t.Fatal(err)
	}
	out := map[netip.Addr]int{}
	for _, r := range routers {
		m, ok := p.Pick(r.Addr)
		if !ok {
			t.Fatalf("no pick for %s", r.Addr)
		}
		out[r.Addr] = index[m.Addr]
	}
	return out
}

// poolConfig is a config with one pool listener over members.
func poolConfig(t *testing.T, members []*poolCollector, resync, rebalance bool) string {
	t.Helper()
	var addrs []string
	for _, m := range members {
		addrs = append(addrs, fmt.Sprintf("%q", m.addr))
	}
	return writeConfig(t, t.TempDir(), fmt.Sprintf(`
admin: "127.0.0.1:0"
listeners:
  - name: routers
    listen: "127.0.0.1:0"
    bmp: true
    resync: %t
    pool:
      targets: [%s]
      proxy_protocol: v2
      health_interval: 200ms
      hold_down: 1s
      rebalance: %t
`, resync, strings.Join(addrs, ", "), rebalance))
}

// poolStatus is GET /pool.
type poolStatus struct {
	Pools []struct {
		Listener string            `json:"listener"`
		Moves    map[string]uint64 `json:"moves"`
		Members  []struct {
			Addr    string `json:"member"`
			Healthy bool   `json:"healthy"`
			Drained bool   `json:"drained"`
			Routers int    `json:"routers"`
		} `json:"members"`
	} `json:"pools"`
}

func getPool(t *testing.T, admin string) poolStatus {
	t.Helper()
	_, body := httpGet(t, admin+"/pool")
	var ps poolStatus
	if err := json.Unmarshal([]byte(body), &ps); err != nil || len(ps.Pools) != 1 {
		t.Fatalf("/pool: %v\n%s", err, body)
	}
	return ps
}

// memberHealthy reports whether /pool shows member addr healthy.
func memberHealthy(t *testing.T, admin, addr string) bool {
	for _, m := range getPool(t, admin).Pools[0].Members {
		if m.Addr == addr {
			return m.Healthy
		}
	}
	return false
}

// waitPlaced waits until every router's open session is on exactly the
// member want says, holding state i of its stream.
func waitPlaced(t *testing.T, what string, members []*poolCollector, routers []*testtarget.Router, want map[netip.Addr]int, i int) {
	t.Helper()
	waitfor.Within(t, binaryWait, what, func() bool {
		got := placement(members)
		for _, r := range routers {
			m, ok := got[r.Addr]
			if !ok || m != want[r.Addr] || !members[m].Holds(r.Addr, r.States[i]) {
				return false
			}
		}
		return len(got) == len(routers)
	})
}

// TestPoolPlacement: 30 routers from distinct addresses over a pool of
// 3. Each router is on exactly one member, package pool's pick for its
// address, and every member is used; the placement is the same after a
// restart of bmpproxy and on a second bmpproxy with the same pool.
func TestPoolPlacement(t *testing.T) {
	members := []*poolCollector{newPoolCollector(t), newPoolCollector(t), newPoolCollector(t)}
	routers := testtarget.NewRouters(t, 30, netip.MustParseAddr("127.0.0.10"), 3, bmpcheck.GenConfig{Seed: 1, Prefixes: 200, AttrSets: 8})
	want := expectedPlacement(t, members, routers)
	used := map[int]int{}
	for _, m := range want {
		used[m]++
	}
	if len(used) != 3 {
		t.Fatalf("the pool's placement uses %d of 3 members (%v): pick other addresses", len(used), used)
	}
	path := poolConfig(t, members, false, false)
	run := func(what string) {
		p := start(t, 1, "--config", path)
		addr := listenerAddrs(p)["routers"]
		for _, r := range routers {
			r.Connect(t, addr)
			r.Send(t, 0)
		}
		waitPlaced(t, what+": each router on its pick", members, routers, want, 0)
		for _, r := range routers {
			r.Conn.Close()
		}
		waitfor.Within(t, binaryWait, what+": every session closed", func() bool { return len(placement(members)) == 0 })
		p.stop(t, syscall.SIGTERM, binaryWait)
	}
	run("first bmpproxy")
	run("after a restart")
	// A second instance, at once beside another one.
	other := start(t, 1, "--config", poolConfig(t, members, false, false))
	defer other.stop(t, syscall.SIGTERM, binaryWait)
	run("beside a second instance")
	addr := listenerAddrs(other)["routers"]
	for _, r := range routers {
		r.Connect(t, addr)
		r.Send(t, 0)
	}
	waitPlaced(t, "the second instance: each router on the same pick", members, routers, want, 0)
}

// TestPoolFailover: with resync, one member dies mid-session. Only its
// routers move, each replayed on its next pick with its exact state, and
// no router session is reset; the others are not touched. The member
// comes back: nothing moves. With rebalance, exactly the routers that
// hash to it move back, replayed.
func TestPoolFailover(t *testing.T) {
	for _, rebalance := range []bool{false, true} {
		t.Run(fmt.Sprintf("rebalance=%t", rebalance), func(t *testing.T) {
			members := []*poolCollector{newPoolCollector(t), newPoolCollector(t), newPoolCollector(t)}
			routers := testtarget.NewRouters(t, 30, netip.MustParseAddr("127.0.0.10"), 3, bmpcheck.GenConfig{Seed: 1, Prefixes: 200, AttrSets: 8})
			want := expectedPlacement(t, members, routers)
			p := start(t, 1, "--config", poolConfig(t, members, true, rebalance))
			admin := "http://" + p.waitLog(t, "admin listening", 1)[0]["addr"].(string)
			addr := listenerAddrs(p)["routers"]
			for _, r := range routers {
				r.Connect(t, addr)
				r.Send(t, 0)
			}
			waitPlaced(t, "each router on its pick", members, routers, want, 0)

			dead := want[routers[0].Addr]
			members[dead].stop()
			after := expectedPlacement(t, members, routers, dead)
			for _, r := range routers {
				if want[r.Addr] != dead && after[r.Addr] != want[r.Addr] {
					t.Fatalf("the pool's placement moves %s off a live member", r.Addr)
				}
			}
			for _, r := range routers {
				r.Send(t, 1)
			}
			waitPlaced(t, "the dead member's routers on their next pick, replayed", members, routers, after, 1)
			moved := 0
			for _, r := range routers {
				if !r.Alive() {
					t.Errorf("router %s: its session was closed", r.Addr)
				}
				switch {
				case want[r.Addr] == dead:
					moved++
					if n := members[after[r.Addr]].count(r.Addr); n != 1 {
						t.Errorf("router %s: %d sessions on its new member, want 1", r.Addr, n)
					}
				case members[want[r.Addr]].count(r.Addr) != 1:
					t.Errorf("router %s on a live member: %d sessions there, want the first one only", r.Addr, members[want[r.Addr]].count(r.Addr))
				}
			}
			if moved == 0 {
				t.Fatal("no router was on the dead member")
			}
			if n := len(p.logs.match("connection closed")); n != 0 {
				t.Errorf("%d closing lines; want every router session open", n)
			}

			members[dead].start()
			waitfor.Within(t, binaryWait, "the member back up in /pool", func() bool { return memberHealthy(t, admin, members[dead].addr) })
			final := after
			if rebalance {
				final = want
			}
			for _, r := range routers {
				r.Send(t, 2)
			}
			waitPlaced(t, "the routers where they belong once it is back", members, routers, final, 2)
			for _, r := range routers {
				if !r.Alive() {
					t.Errorf("router %s: its session was closed", r.Addr)
				}
				back := rebalance && want[r.Addr] == dead
				if n := members[dead].count(r.Addr); back && n != 2 || !back && want[r.Addr] == dead && n != 1 {
					t.Errorf("router %s: %d sessions on the member that came back (rebalance %t)", r.Addr, n, rebalance)
				}
			}
			ps := getPool(t, admin).Pools[0]
			if got := ps.Moves["failover"]; got != uint64(moved) {
				t.Errorf("/pool moves failover = %d, want %d", got, moved)
			}
			if got, wantBack := ps.Moves["rebalance"], map[bool]int{true: moved}[rebalance]; got != uint64(wantBack) {
				t.Errorf("/pool moves rebalance = %d, want %d", got, wantBack)
			}
		})
	}
}

// TestPoolDrain drains a member under load with `bmpproxy pool drain`:
// it ends with no routers, none reset, every moved router's state exact;
// undrain lets it take new routers again.
func TestPoolDrain(t *testing.T) {
	members := []*poolCollector{newPoolCollector(t), newPoolCollector(t), newPoolCollector(t)}
	routers := testtarget.NewRouters(t, 30, netip.MustParseAddr("127.0.0.10"), 3, bmpcheck.GenConfig{Seed: 1, Prefixes: 200, AttrSets: 8})
	want := expectedPlacement(t, members, routers)
	p := start(t, 1, "--config", poolConfig(t, members, true, false))
	adminAddr := p.waitLog(t, "admin listening", 1)[0]["addr"].(string)
	addr := listenerAddrs(p)["routers"]
	for _, r := range routers {
		r.Connect(t, addr)
		r.Send(t, 0)
	}
	waitPlaced(t, "each router on its pick", members, routers, want, 0)

	drained := want[routers[0].Addr]
	// Under load: every router sends while the drain runs.
	var wg sync.WaitGroup
	for _, r := range routers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.Conn.Write(r.Parts[1])
		}()
	}
	out, err := exec.Command(binPath(), "pool", "drain", "--admin", adminAddr, members[drained].addr).CombinedOutput()
	if err != nil {
		t.Fatalf("bmpproxy pool drain: %v\n%s", err, out)
	}
	wg.Wait()
	after := expectedPlacement(t, members, routers, drained)
	waitPlaced(t, "the drained member's routers moved, replayed", members, routers, after, 1)
	if got := members[drained].open(); len(got) != 0 {
		t.Errorf("the drained member still has routers %v", got)
	}
	for _, r := range routers {
		if !r.Alive() {
			t.Errorf("router %s: its session was closed", r.Addr)
		}
	}
	for _, m := range getPool(t, "http://"+adminAddr).Pools[0].Members {
		if m.Addr == members[drained].addr && (!m.Drained || m.Routers != 0) {
			t.Errorf("/pool: drained member %+v, want drained with no routers", m)
		}
	}
	out, err = exec.Command(binPath(), "pool", "undrain", members[drained].addr, "--admin", adminAddr).CombinedOutput()
	if err != nil {
		t.Fatalf("bmpproxy pool undrain: %v\n%s", err, out)
	}
	// Undrained, it takes new routers again: a reconnecting router that
	// hashes to it lands there.
	r := routers[0]
	r.Conn.Close()
	r.Connect(t, addr)
	r.Send(t, 0)
	waitfor.Within(t, binaryWait, "a new session of a router that hashes to it on the undrained member", func() bool {
		return members[drained].Holds(r.Addr, r.States[0])
	})
}
