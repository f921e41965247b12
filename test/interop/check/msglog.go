package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sort"
	"strings"
)

// A collector's BMP state, rebuilt from pmbmpd's message log
// (bmp_daemon_msglog_file, JSON: one object per BMP message or event, in
// the order received). It is what pmbmpd would hold: each router's
// Initiation, its peers that are up and their routes with their
// attributes. Route Monitoring updates set a route, withdrawals remove
// it, a Peer Down removes the peer and its routes, and a new session from
// a router (log_init) starts it afresh.
type bmpState struct {
	inits  map[string]string // router → its Initiation's fields
	peers  map[string]string // peerKey → its Peer Up's fields
	routes map[string]route  // routeKey → the route
	// initCount counts the Initiations logged per router, over sessions.
	initCount map[string]int
	lines     int // objects read
}

type route struct {
	router, peer string
	prefix       netip.Prefix
	med          int    // 0 if it has none
	attrs        string // every field but the volatile ones, as canonical JSON
}

// volatile reports whether pmbmpd's field k may differ between two
// collectors that received the same messages: when, in which order, and
// the event's kind, which the state's structure already holds.
func volatile(k string) bool {
	switch k {
	case "seq", "timestamp", "timestamp_arrival", "timestamp_event", "writer_id", "event_type", "log_type", "bmp_msg_type":
		return true
	}
	return false
}

// The fields that name a peer's session, one of its RIB views
// (pre/post-policy, Adj-RIB-In/Out, Loc-RIB), and, after these, a route.
func sessionKeyFields() []string {
	return []string{"bmp_router", "peer_ip", "peer_distinguisher", "rd"}
}
func viewKeyFields() []string  { return []string{"is_post", "is_in", "is_out", "is_loc"} }
func routeKeyFields() []string { return []string{"afi", "safi", "ip_prefix", "path_id"} }

func newBMPState() *bmpState {
	return &bmpState{inits: map[string]string{}, peers: map[string]string{}, routes: map[string]route{}, initCount: map[string]int{}}
}

// readMsglog rebuilds the state from the log at path. A last line without
// its newline is being written and is left for the next read; a missing
// file is an empty state.
func readMsglog(path string) (*bmpState, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return newBMPState(), nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseMsglog(f, path)
}

func parseMsglog(r io.Reader, name string) (*bmpState, error) {
	s := newBMPState()
	br := bufio.NewReaderSize(r, 1<<16)
	for n := 1; ; n++ {
		line, err := br.ReadBytes('\n')
		if err == io.EOF {
			return s, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var m map[string]any
		d := json.NewDecoder(bytes.NewReader(line))
		d.UseNumber()
		if err := d.Decode(&m); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", name, n, err)
		}
		if err := s.apply(m); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", name, n, err)
		}
		s.lines++
	}
}

func str(m map[string]any, k string) string {
	switch v := m[k].(type) {
	case string:
		return v
	case json.Number:
		return v.String()
	case nil:
		return ""
	default:
		return fmt.Sprint(v)
	}
}

// key joins the named fields m has.
func key(m map[string]any, fields ...[]string) string {
	var b strings.Builder
	for _, fs := range fields {
		for _, f := range fs {
			if _, ok := m[f]; ok {
				fmt.Fprintf(&b, "%s=%s ", f, str(m, f))
			}
		}
	}
	return strings.TrimSpace(b.String())
}

// canon is m without its volatile fields, as JSON with sorted keys.
func canon(m map[string]any) string {
	c := make(map[string]any, len(m))
	for k, v := range m {
		if !volatile(k) {
			c[k] = v
		}
	}
	b, _ := json.Marshal(c)
	return string(b)
}

func (s *bmpState) apply(m map[string]any) error {
	router := str(m, "bmp_router")
	if str(m, "event_type") == "log_init" {
		s.reset(router)
		return nil
	}
	switch str(m, "bmp_msg_type") {
	case "init":
		s.reset(router)
		s.inits[router] = canon(m)
		s.initCount[router]++
	case "term":
		s.reset(router)
	case "peer_up":
		s.peers[key(m, sessionKeyFields(), viewKeyFields())] = canon(m)
	case "peer_down":
		// A Peer Down ends every view of the peer's session.
		base := key(m, sessionKeyFields())
		for k := range s.peers {
			if k == base || strings.HasPrefix(k, base+" ") {
				delete(s.peers, k)
			}
		}
		for k := range s.routes {
			if strings.HasPrefix(k, base+" ") {
				delete(s.routes, k)
			}
		}
	case "route_monitor":
		k := key(m, sessionKeyFields(), viewKeyFields(), routeKeyFields())
		switch lt := str(m, "log_type"); lt {
		case "update":
			p, err := netip.ParsePrefix(str(m, "ip_prefix"))
			if err != nil {
				return fmt.Errorf("route_monitor: ip_prefix: %w", err)
			}
			med := 0
			if v, ok := m["med"].(json.Number); ok {
				n, _ := v.Int64()
				med = int(n)
			}
			s.routes[k] = route{router: router, peer: str(m, "peer_ip"), prefix: p, med: med, attrs: canon(m)}
		case "withdraw", "delete":
			delete(s.routes, k)
		default:
			return fmt.Errorf("route_monitor: unknown log_type %q", lt)
		}
	}
	return nil
}

// reset forgets router's state: a new session starts from nothing.
func (s *bmpState) reset(router string) {
	delete(s.inits, router)
	prefix := "bmp_router=" + router + " "
	for k := range s.peers {
		if strings.HasPrefix(k, prefix) {
			delete(s.peers, k)
		}
	}
	for k := range s.routes {
		if strings.HasPrefix(k, prefix) {
			delete(s.routes, k)
		}
	}
}

// routeCount counts router's routes.
func (s *bmpState) routeCount(router string) int {
	n := 0
	for _, r := range s.routes {
		if r.router == router {
			n++
		}
	}
	return n
}

// meds maps each prefix router has a route for to that route's MED.
func (s *bmpState) meds(router string) map[netip.Prefix]int {
	out := map[netip.Prefix]int{}
	for _, r := range s.routes {
		if r.router == router {
			out[r.prefix] = r.med
		}
	}
	return out
}

// meets reports whether s holds what want says for each router: every
// prefix with MED ≥ 0 present with that MED, every one with -1 absent.
// The first few differences are returned.
func (s *bmpState) meets(want map[string]map[netip.Prefix]int) (bool, []string) {
	var diffs []string
	for router, ps := range want {
		have := s.meds(router)
		for p, med := range ps {
			got, ok := have[p]
			switch {
			case med < 0 && ok:
				diffs = append(diffs, fmt.Sprintf("%s: %s is still there", router, p))
			case med >= 0 && !ok:
				diffs = append(diffs, fmt.Sprintf("%s: %s is missing", router, p))
			case med >= 0 && got != med:
				diffs = append(diffs, fmt.Sprintf("%s: %s has MED %d, want %d", router, p, got, med))
			}
		}
	}
	sort.Strings(diffs)
	return len(diffs) == 0, diffs
}

// diffStates reports whether a and b hold the same Initiations, peers and
// routes, and lists how they differ, at most max lines.
func diffStates(a, b *bmpState, max int) (bool, []string) {
	var out []string
	add := func(format string, args ...any) {
		out = append(out, fmt.Sprintf(format, args...))
	}
	cmp := func(what string, x, y map[string]string) {
		for k, v := range x {
			if w, ok := y[k]; !ok {
				add("%s %s: only in the first", what, k)
			} else if w != v {
				add("%s %s: %s ≠ %s", what, k, v, w)
			}
		}
		for k := range y {
			if _, ok := x[k]; !ok {
				add("%s %s: only in the second", what, k)
			}
		}
	}
	cmp("initiation", a.inits, b.inits)
	cmp("peer", a.peers, b.peers)
	ra, rb := map[string]string{}, map[string]string{}
	for k, r := range a.routes {
		ra[k] = r.attrs
	}
	for k, r := range b.routes {
		rb[k] = r.attrs
	}
	cmp("route", ra, rb)
	sort.Strings(out)
	equal := len(out) == 0
	if len(out) > max {
		out = append(out[:max], fmt.Sprintf("… and %d more", len(out)-max))
	}
	return equal, out
}
