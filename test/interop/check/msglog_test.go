package main

import (
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"
)

// Lines in pmbmpd 1.7.7's msglog format, as run.sh's collectors write
// them (trimmed of fields that do not matter here).
const (
	logInit  = `{"seq": 0, "timestamp": "t0", "bmp_router": "198.51.100.2", "bmp_router_port": 4000, "event_type": "log_init"}`
	initMsg  = `{"event_type": "log", "seq": 1, "timestamp": "t", "timestamp_arrival": "t1", "bmp_router": "198.51.100.2", "bmp_router_port": 4000, "bmp_msg_type": "init", "bmp_init_info_sysname": "edge-r1"}`
	peerUp   = `{"event_type": "log", "seq": 2, "timestamp": "t", "bmp_router": "198.51.100.2", "bmp_msg_type": "peer_up", "peer_ip": "203.0.113.2", "peer_asn": 65002, "is_post": 0, "is_in": 1}`
	peerUp6  = `{"event_type": "log", "seq": 3, "timestamp": "t", "bmp_router": "198.51.100.2", "bmp_msg_type": "peer_up", "peer_ip": "2001:db8:12::2", "peer_asn": 65002, "is_post": 0, "is_in": 1}`
	update1  = `{"seq": 4, "log_type": "update", "timestamp": "t", "is_post": 0, "is_in": 1, "event_type": "log", "afi": 1, "safi": 1, "ip_prefix": "198.19.0.0/27", "bgp_nexthop": "203.0.113.2", "as_path": "65002", "med": 5, "bmp_router": "198.51.100.2", "peer_ip": "203.0.113.2", "bmp_msg_type": "route_monitor"}`
	update2  = `{"seq": 5, "log_type": "update", "timestamp": "t", "is_post": 0, "is_in": 1, "event_type": "log", "afi": 1, "safi": 1, "ip_prefix": "198.19.0.32/27", "bgp_nexthop": "203.0.113.2", "as_path": "65002", "bmp_router": "198.51.100.2", "peer_ip": "203.0.113.2", "bmp_msg_type": "route_monitor"}`
	update1b = `{"seq": 6, "log_type": "update", "timestamp": "t", "is_post": 0, "is_in": 1, "event_type": "log", "afi": 1, "safi": 1, "ip_prefix": "198.19.0.0/27", "bgp_nexthop": "203.0.113.2", "as_path": "65002", "med": 50, "bmp_router": "198.51.100.2", "peer_ip": "203.0.113.2", "bmp_msg_type": "route_monitor"}`
	update6  = `{"seq": 7, "log_type": "update", "timestamp": "t", "is_post": 0, "is_in": 1, "event_type": "log", "afi": 2, "safi": 1, "ip_prefix": "2001:db8:b000::/48", "bgp_nexthop": "2001:db8:12::2", "bmp_router": "198.51.100.2", "peer_ip": "2001:db8:12::2", "bmp_msg_type": "route_monitor"}`
	withdraw = `{"seq": 8, "log_type": "withdraw", "timestamp": "t", "is_post": 0, "is_in": 1, "event_type": "log", "afi": 1, "safi": 1, "ip_prefix": "198.19.0.32/27", "bmp_router": "198.51.100.2", "peer_ip": "203.0.113.2", "bmp_msg_type": "route_monitor"}`
	peerDown = `{"event_type": "log", "seq": 9, "timestamp": "t", "bmp_router": "198.51.100.2", "bmp_msg_type": "peer_down", "peer_ip": "2001:db8:12::2", "is_post": 0, "is_in": 1, "reason_type": 1}`
	stats    = `{"event_type": "log", "seq": 10, "timestamp": "t", "bmp_router": "198.51.100.2", "bmp_msg_type": "stats", "peer_ip": "203.0.113.2", "counter_value": 1}`
)

func TestParseMsglog(t *testing.T) {
	p := netip.MustParsePrefix
	for _, tc := range []struct {
		name   string
		lines  []string
		tail   string // written without a newline
		inits  int
		peers  int
		meds   map[netip.Prefix]int
		counts int // Initiations counted
	}{
		{name: "empty"},
		{name: "session", lines: []string{logInit, initMsg, peerUp, peerUp6, update1, update2, update6, stats},
			inits: 1, peers: 2, counts: 1, meds: map[netip.Prefix]int{p("198.19.0.0/27"): 5, p("198.19.0.32/27"): 0, p("2001:db8:b000::/48"): 0}},
		{name: "implicit withdraw replaces the attributes", lines: []string{initMsg, peerUp, update1, update1b},
			inits: 1, peers: 1, counts: 1, meds: map[netip.Prefix]int{p("198.19.0.0/27"): 50}},
		{name: "withdraw", lines: []string{initMsg, peerUp, update1, update2, withdraw},
			inits: 1, peers: 1, counts: 1, meds: map[netip.Prefix]int{p("198.19.0.0/27"): 5}},
		{name: "peer down ends its routes only", lines: []string{initMsg, peerUp, peerUp6, update1, update6, peerDown},
			inits: 1, peers: 1, counts: 1, meds: map[netip.Prefix]int{p("198.19.0.0/27"): 5}},
		{name: "a new session starts afresh", lines: []string{initMsg, peerUp, update1, logInit, initMsg, peerUp6, update6},
			inits: 1, peers: 1, counts: 2, meds: map[netip.Prefix]int{p("2001:db8:b000::/48"): 0}},
		{name: "a line being written waits", lines: []string{initMsg, peerUp, update1}, tail: update2[:40],
			inits: 1, peers: 1, counts: 1, meds: map[netip.Prefix]int{p("198.19.0.0/27"): 5}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := strings.Join(tc.lines, "\n")
			if len(tc.lines) > 0 {
				in += "\n"
			}
			s, err := parseMsglog(strings.NewReader(in+tc.tail), "test")
			if err != nil {
				t.Fatal(err)
			}
			if len(s.inits) != tc.inits || len(s.peers) != tc.peers || s.initCount["198.51.100.2"] != tc.counts {
				t.Errorf("inits %d, peers %d, Initiations counted %d; want %d, %d, %d", len(s.inits), len(s.peers), s.initCount["198.51.100.2"], tc.inits, tc.peers, tc.counts)
			}
			got := s.meds("198.51.100.2")
			if len(got) != len(tc.meds) {
				t.Errorf("routes %v, want %v", got, tc.meds)
			}
			for pfx, med := range tc.meds {
				if g, ok := got[pfx]; !ok || g != med {
					t.Errorf("%s: MED %d (present %v), want %d", pfx, g, ok, med)
				}
			}
		})
	}
}

func TestParseMsglogBadLine(t *testing.T) {
	if _, err := parseMsglog(strings.NewReader(initMsg+"\n{not json\n"), "pmbmpd-a.json"); err == nil || !strings.Contains(err.Error(), "pmbmpd-a.json:2") {
		t.Errorf("err = %v, want one naming pmbmpd-a.json:2", err)
	}
	bad := strings.Replace(update1, `"update"`, `"refresh"`, 1)
	if _, err := parseMsglog(strings.NewReader(bad+"\n"), "x"); err == nil || !strings.Contains(err.Error(), "refresh") {
		t.Errorf("err = %v, want one naming the log_type", err)
	}
}

// Two collectors that logged the same messages in other orders, at other
// times, hold equal states; one attribute apart, they differ by one
// route.
func TestDiffStates(t *testing.T) {
	a, _ := parseMsglog(strings.NewReader(strings.Join([]string{initMsg, peerUp, update1, update2}, "\n")+"\n"), "a")
	reseq := func(l, seq string) string {
		return strings.Replace(strings.Replace(l, `"seq": `, `"seq": 9`, 1), `"timestamp": "t"`, `"timestamp": "`+seq+`"`, 1)
	}
	b, _ := parseMsglog(strings.NewReader(strings.Join([]string{logInit, reseq(initMsg, "x"), reseq(peerUp, "y"), reseq(update2, "z"), reseq(update1, "w")}, "\n")+"\n"), "b")
	if eq, d := diffStates(a, b, 10); !eq {
		t.Errorf("not equal: %v", d)
	}
	c, _ := parseMsglog(strings.NewReader(strings.Join([]string{initMsg, peerUp, update1b, update2}, "\n")+"\n"), "c")
	eq, d := diffStates(a, c, 10)
	if eq || len(d) != 1 || !strings.Contains(d[0], "198.19.0.0/27") {
		t.Errorf("diff = %v, want one line for 198.19.0.0/27", d)
	}
}

func TestMeets(t *testing.T) {
	s, _ := parseMsglog(strings.NewReader(strings.Join([]string{initMsg, peerUp, update1, update2}, "\n")+"\n"), "s")
	p := netip.MustParsePrefix
	for _, tc := range []struct {
		want  map[netip.Prefix]int
		diffs int
	}{
		{map[netip.Prefix]int{p("198.19.0.0/27"): 5, p("198.19.0.32/27"): 0}, 0},
		{map[netip.Prefix]int{p("198.19.0.0/27"): 50}, 1},  // wrong MED
		{map[netip.Prefix]int{p("198.19.0.32/27"): -1}, 1}, // must be gone
		{map[netip.Prefix]int{p("198.19.0.64/27"): 0}, 1},  // missing
		{map[netip.Prefix]int{p("198.19.0.64/27"): -1}, 0}, // gone, as it must be
	} {
		ok, d := s.meets(map[string]map[netip.Prefix]int{"198.51.100.2": tc.want})
		if ok != (tc.diffs == 0) || len(d) != tc.diffs {
			t.Errorf("meets(%v) = %v %v, want %d differences", tc.want, ok, d, tc.diffs)
		}
	}
}

// The plan: churn touches only prefixes the routers can hold, and the
// MRT dump has one record per MRT route after its peer index table.
func TestPlan(t *testing.T) {
	orig := map[netip.Prefix]change{}
	for _, c := range initial() {
		if _, dup := orig[c.prefix]; dup {
			t.Fatalf("%s originated twice", c.prefix)
		}
		orig[c.prefix] = c
	}
	for _, step := range []string{"outage", "live"} {
		if len(churn(step)) == 0 {
			t.Errorf("%s: no changes", step)
		}
		for _, c := range churn(step) {
			if c.withdraw {
				if o, ok := orig[c.prefix]; !ok || o.router != c.router {
					t.Errorf("%s: withdraws %s, which %s never originated", step, c.prefix, c.router)
				}
			}
			if o, ok := orig[c.prefix]; ok && o.router == "gobgp" && o.med != 0 {
				t.Errorf("%s: changes %s, an MRT route GoBGP cannot withdraw", step, c.prefix)
			}
		}
	}
	var mrt int
	for _, c := range initial() {
		if c.router == "gobgp" && c.med != 0 {
			mrt++
		}
	}
	b := mrtDump(initial())
	records := 0
	for len(b) >= 12 {
		n := binary.BigEndian.Uint32(b[8:12])
		if binary.BigEndian.Uint16(b[4:6]) != 13 || int(n)+12 > len(b) {
			t.Fatalf("record %d: bad header % x", records, b[:12])
		}
		b = b[12+n:]
		records++
	}
	if len(b) != 0 || records != mrt+1 {
		t.Errorf("%d records and %d bytes left, want %d records", records, len(b), mrt+1)
	}
	if want := expected("outage", "live"); len(want[frrBMP]) == 0 || len(want[gobgpBMP]) == 0 {
		t.Errorf("expected: %d and %d prefixes", len(want[frrBMP]), len(want[gobgpBMP]))
	}
}
