package bmpcheck

import (
	"fmt"
	"strings"
	"testing"
)

func TestDiff(t *testing.T) {
	cfg := GenConfig{Seed: 5, Prefixes: 120}
	stream := Encode(Generate(cfg))
	fresh := func() *State {
		s, err := Parse(stream)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	want := Expect(cfg)
	first := sortedPeers(want.Peers)[0]
	firstTable := first.Tables[sortedFamilies(first.Tables)[0]]
	firstKey := sortedKeys(firstTable.Routes)[0]

	tests := []struct {
		name   string
		change func(s *State)
		diff   []string // each in the Diff, in order; none: Equal
	}{
		{name: "equal", change: func(*State) {}},
		{
			name:   "end-of-rib is not compared",
			change: func(s *State) { s.Peers[first.Key].Tables[IPv4Unicast].EndOfRIB = false },
		},
		{
			name:   "an empty table is no table",
			change: func(s *State) { s.Peers[first.Key].Tables[IPv4Multicast] = &Table{Routes: map[RouteKey]Route{}} },
		},
		{
			name:   "a missing peer",
			change: func(s *State) { delete(s.Peers, first.Key) },
			diff:   []string{"missing peer " + first.Key.String() + " (" + fmt.Sprint(first.RouteCount()) + " routes)"},
		},
		{
			name: "an extra peer",
			change: func(s *State) {
				k := first.Key
				k.AS++
				s.Peers[k] = &Peer{Key: k, Tables: map[Family]*Table{}}
			},
			diff: []string{"extra peer global 198.51.100.1 AS64502"},
		},
		{
			name:   "a missing route",
			change: func(s *State) { delete(s.Peers[first.Key].Tables[IPv4Unicast].Routes, firstKey) },
			diff:   []string{"ipv4-unicast: missing " + firstKey.String() + " origin="},
		},
		{
			name: "an extra route",
			change: func(s *State) {
				s.Peers[first.Key].Tables[IPv4Unicast].Routes[RouteKey{Prefix: pfx("198.51.100.0/24"), PathID: 9}] = Route{Attrs: canon(cOrigin, cMED10)}
			},
			diff: []string{"ipv4-unicast: extra 198.51.100.0/24 path 9 origin=igp med=10"},
		},
		{
			name: "other attributes",
			change: func(s *State) {
				s.Peers[first.Key].Tables[IPv4Unicast].Routes[firstKey] = Route{Attrs: canon(cOrigin)}
			},
			diff: []string{firstKey.String() + " differs: -as-path=[64501,", " -next-hop=198.51.100."},
		},
		{
			name: "an added attribute and other labels",
			change: func(s *State) {
				r := s.Peers[first.Key].Tables[IPv4Unicast].Routes[firstKey]
				r.Attrs = MakeAttrs(append(r.Attrs.List(), Attr{Flags: 0xc0, Type: attrCommunities, Value: "\x00\x00\x00\x01"}))
				r.Labels = "\x00\x10\x01"
				s.Peers[first.Key].Tables[IPv4Unicast].Routes[firstKey] = r
			},
			diff: []string{firstKey.String() + " differs: -no label +label 256 ", "+communities=0:1"},
		},
		{
			name:   "the Peer Up",
			change: func(s *State) { s.Peers[first.Key].Up.SentOpen += "x" },
			diff:   []string{"Peer Up differs: sent OPEN"},
		},
		{
			name:   "add-path",
			change: func(s *State) { s.Peers[first.Key].Tables[IPv4Unicast].AddPath = false },
			diff:   []string{"ipv4-unicast: add-path want true, got false"},
		},
		{
			name:   "the initiation",
			change: func(s *State) { s.Initiation = s.Initiation[1:] },
			diff:   []string{"initiation: want [1=\"bmpcheck generated router\""},
		},
		{
			name:   "termination",
			change: func(s *State) { s.Terminated = true },
			diff:   []string{"termination: want false none, got true none"},
		},
		{
			name:   "unkeyed",
			change: func(s *State) { s.Unkeyed[TableRef{Peer: first.Key, Family: EVPN}] = true },
			diff:   []string{"extra unkeyed " + first.Key.String() + " evpn"},
		},
		{
			name: "many differences are counted, not listed",
			change: func(s *State) {
				for _, k := range sortedKeys(s.Peers[first.Key].Tables[IPv4Unicast].Routes)[:100] {
					delete(s.Peers[first.Key].Tables[IPv4Unicast].Routes, k)
				}
			},
			diff: []string{"missing", "\n... and 80 more differences"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := fresh()
			tc.change(got)
			diff := want.Diff(got)
			if want.Equal(got) != (len(tc.diff) == 0) {
				t.Fatalf("Equal is %v; Diff:\n%s", want.Equal(got), diff)
			}
			if len(tc.diff) == 0 {
				if diff != "" {
					t.Fatalf("Diff of equal states:\n%s", diff)
				}
				return
			}
			if n := strings.Count(diff, "\n") + 1; n > diffLimit+1 {
				t.Errorf("%d lines", n)
			}
			rest := diff
			for _, w := range tc.diff {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("Diff lacks %q:\n%s", w, diff)
				}
				rest = rest[i+len(w):]
			}
			if again := want.Diff(got); again != diff {
				t.Errorf("two Diffs differ:\n%s\n%s", diff, again)
			}
		})
	}
}

func TestCounts(t *testing.T) {
	s, err := Parse(cat(initiation(), upA(nil, nil), upB,
		rmA(updateMsg(nil, cat(originIGP, nextHopA), hx("18 cb0071 18 cb0072")))))
	if err != nil {
		t.Fatal(err)
	}
	if s.PeerCount() != 2 || s.RouteCount() != 2 || s.Peers[keyA].RouteCount() != 2 || s.Peers[keyB].RouteCount() != 0 {
		t.Fatalf("counts:\n%s", s.Summary())
	}
	want := "2 peers, 2 routes\n  global 198.51.100.1 AS64501 id 198.51.100.1\n    ipv4-unicast: 2 routes\n  global 2001:db8::2 AS4200000002 id 198.51.100.2\n"
	if s.Summary() != want {
		t.Fatalf("Summary:\n%s\nwant:\n%s", s.Summary(), want)
	}
}
