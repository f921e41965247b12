package bmpcheck

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

// Generate → Encode → Parse is the state the generator says it built.
func TestGenerateParsesToExpect(t *testing.T) {
	for _, cfg := range []GenConfig{
		{},
		{Seed: 1, Prefixes: 300},
		{Seed: 2, Prefixes: 500, AttrSets: 5, Churn: 200, EVPN: true, Terminate: true},
		{Seed: 3, Prefixes: 1, AttrSets: 1, Churn: 1},
	} {
		msgs := Generate(cfg)
		want := Expect(cfg)
		got, err := Parse(Encode(msgs))
		if err != nil {
			t.Fatalf("%+v: %v", cfg, err)
		}
		mustEqual(t, want, got)
		all, err := ParseAll(Encode(msgs))
		if err != nil {
			t.Fatalf("%+v: ParseAll: %v", cfg, err)
		}
		mustEqual(t, want, all)
	}
}

func TestGenerateIsDeterministic(t *testing.T) {
	a := Encode(Generate(GenConfig{Seed: 7, Prefixes: 200}))
	if b := Encode(Generate(GenConfig{Seed: 7, Prefixes: 200})); !bytes.Equal(a, b) {
		t.Fatal("the same seed gave two streams")
	}
	if c := Encode(Generate(GenConfig{Seed: 8, Prefixes: 200})); bytes.Equal(a, c) {
		t.Fatal("two seeds gave one stream")
	}
}

// Every prefix of the stream that ends at a message boundary is a valid
// stream, as a collector cut there would have read it.
func TestGenerateEveryCutParses(t *testing.T) {
	msgs := Generate(GenConfig{Seed: 4, Prefixes: 25, AttrSets: 4, EVPN: true, Terminate: true})
	var stream []byte
	for k, m := range msgs {
		stream = append(stream, m.Bytes...)
		if _, err := Parse(stream); err != nil {
			t.Fatalf("after message %d (%s): %v", k, m.Note, err)
		}
	}
}

// The default stream has what the state check needs.
func TestGenerateFeatures(t *testing.T) {
	msgs := Generate(GenConfig{})
	want := Expect(GenConfig{})

	types := map[MsgType]int{}
	var bigUpdate, v4Withdrawn, mpUnreach, peerUps bool
	for _, m := range msgs {
		types[m.Type]++
		if m.Type != MsgRouteMonitoring {
			continue
		}
		update := m.Bytes[6+peerHeaderSize:]
		if len(update) > bgpMaxSize {
			bigUpdate = true
		}
		body := update[bgpHeaderSize:]
		wlen := int(binary.BigEndian.Uint16(body))
		if wlen > 0 {
			v4Withdrawn = true
		}
		alen := int(binary.BigEndian.Uint16(body[2+wlen:]))
		if strings.HasPrefix(m.Note, "withdraw") && alen > 0 && body[4+wlen+1] == attrMPUnreach {
			mpUnreach = true
		}
	}
	peerUps = types[MsgPeerUp] == 8
	for what, ok := range map[string]bool{
		"an UPDATE past 4096 bytes":         bigUpdate,
		"an IPv4 Withdrawn Routes field":    v4Withdrawn,
		"an MP_UNREACH_NLRI withdrawal":     mpUnreach,
		"eight Peer Ups":                    peerUps,
		"a Peer Down":                       types[MsgPeerDown] == 1,
		"Statistics Reports":                types[MsgStatisticsReport] >= 7,
		"a Route Mirroring":                 types[MsgRouteMirroring] == 1,
		"one Initiation and no Termination": types[MsgInitiation] == 1 && types[MsgTermination] == 0,
	} {
		if !ok {
			t.Errorf("no %s", what)
		}
	}

	// The peers up at the end: seven, one of them down, one up late.
	if want.PeerCount() != 7 {
		t.Errorf("%d peers up, want 7", want.PeerCount())
	}
	kinds := map[string]bool{}
	addPath := map[string]bool{}
	for _, p := range want.Peers {
		k := p.Key
		switch {
		case k.Type == PeerLocRIB:
			kinds["loc-rib"] = true
		case k.Type == PeerRD:
			kinds["rd-instance"] = true
		case k.Flags&FlagO != 0:
			kinds["adj-rib-out"] = true
		case k.Flags&FlagL != 0:
			kinds["post-policy"] = true
		case k.Flags&FlagV != 0:
			kinds["ipv6 peer"] = true
		default:
			kinds["ipv4 pre-policy peer"] = true
		}
		if k.Type != PeerLocRIB && p.RouteCount() < 1000 && k.Type != PeerRD {
			t.Errorf("%s has %d routes, want thousands", k, p.RouteCount())
		}
		for f, tb := range p.Tables {
			kinds[f.String()] = true
			if !tb.EndOfRIB {
				t.Errorf("%s %s: no End-of-RIB", k, f)
			}
			addPath[k.String()+" "+f.String()] = tb.AddPath
		}
	}
	for _, k := range []string{"loc-rib", "rd-instance", "adj-rib-out", "post-policy", "ipv6 peer", "ipv4 pre-policy peer",
		"ipv4-unicast", "ipv6-unicast", "ipv4-multicast", "ipv6-multicast", "ipv4-labeled", "ipv6-labeled", "vpnv4", "vpnv6"} {
		if k == "ipv4-multicast" {
			continue // the legacy peer's, gone with its Peer Down
		}
		if !kinds[k] {
			t.Errorf("no %s in the final state", k)
		}
	}
	// ADD-PATH where both ends agreed in the right direction, and not where
	// they did not.
	for table, on := range map[string]bool{
		"global 198.51.100.1 AS64501 id 198.51.100.1 ipv4-unicast":               true,
		"global 198.51.100.1 AS64501 id 198.51.100.1 ipv6-unicast":               false,
		"global 203.0.113.6 AS64506 id 203.0.113.6 (adj-rib-out) ipv4-unicast":   true,
		"global 203.0.113.6 AS64506 id 203.0.113.6 (adj-rib-out) ipv6-unicast":   false,
		"loc-rib 0.0.0.0 AS64500 id 198.51.100.254 ipv6-unicast":                 true,
		"global 2001:db8::3 AS4200000003 id 198.51.100.3 ipv6-unicast":           true,
		"global 2001:db8::5 AS64500 id 198.51.100.5 vpnv4":                       true,
		"rd-instance 64500:10 198.51.100.8 AS64508 id 198.51.100.8 ipv4-unicast": false,
		"global 198.51.100.1 AS64501 id 198.51.100.1 (post-policy) ipv4-unicast": true,
		"global 2001:db8::5 AS64500 id 198.51.100.5 ipv4-labeled":                false,
		"global 2001:db8::3 AS4200000003 id 198.51.100.3 ipv4-unicast":           false,
		"loc-rib 0.0.0.0 AS64500 id 198.51.100.254 ipv4-unicast":                 false,
		"global 198.51.100.1 AS64501 id 198.51.100.1 (post-policy) ipv6-unicast": false,
		"global 2001:db8::5 AS64500 id 198.51.100.5 vpnv6":                       false,
		"global 2001:db8::3 AS4200000003 id 198.51.100.3 ipv6-multicast":         false,
		"global 2001:db8::5 AS64500 id 198.51.100.5 ipv6-labeled":                false,
	} {
		if addPath[table] != on {
			t.Errorf("%s: add-path %v, want %v", table, addPath[table], on)
		}
	}
	// Shared attributes: far fewer distinct sets than routes.
	distinct := map[Attrs]bool{}
	for _, p := range want.Peers {
		for _, tb := range p.Tables {
			for _, r := range tb.Routes {
				distinct[r.Attrs] = true
			}
		}
	}
	if len(distinct) > want.RouteCount()/20 {
		t.Errorf("%d distinct attribute sets for %d routes", len(distinct), want.RouteCount())
	}
}

// The legacy peer's routes, before its Peer Down, carry 2-byte AS_PATHs
// with AS_TRANS and an AS4_PATH.
func TestGenerateLegacyASPath(t *testing.T) {
	msgs := Generate(GenConfig{Prefixes: 300})
	for k, m := range msgs {
		if m.Type == MsgPeerDown {
			s, err := Parse(Encode(msgs[:k]))
			if err != nil {
				t.Fatal(err)
			}
			p := s.Peers[m.Peer]
			if p == nil || m.Peer.Flags&FlagA == 0 {
				t.Fatalf("the peer going down is %s", m.Peer)
			}
			var as4 int
			for _, r := range p.Tables[IPv4Unicast].Routes {
				for _, a := range r.Attrs.List() {
					if a.Type == attrAS4Path {
						as4++
						if !strings.Contains(r.Attrs.format(true), "23456") {
							t.Fatalf("an AS4_PATH without AS_TRANS: %s", r.Attrs.format(true))
						}
					}
				}
			}
			if as4 == 0 {
				t.Fatal("no AS4_PATH")
			}
			return
		}
	}
	t.Fatal("no Peer Down")
}

func TestGenerateEVPNIsUnkeyed(t *testing.T) {
	cfg := GenConfig{Prefixes: 100, EVPN: true}
	want := Expect(cfg)
	if len(want.Unkeyed) != 1 {
		t.Fatalf("unkeyed: %v", want.Unkeyed)
	}
	for r := range want.Unkeyed {
		if r.Family != EVPN {
			t.Fatalf("unkeyed: %s", r)
		}
	}
	got, err := Parse(Encode(Generate(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	mustEqual(t, want, got)
	without := Expect(GenConfig{Prefixes: 100})
	if without.Equal(got) {
		t.Fatal("the unkeyed table does not count")
	}
}

func TestGenerateMalformed(t *testing.T) {
	cfg := GenConfig{Prefixes: 100, Malformed: true}
	msgs := Generate(cfg)
	bad, offset := -1, 0
	for k, m := range msgs {
		if strings.HasPrefix(m.Note, "malformed") {
			bad = k
			break
		}
		offset += len(m.Bytes)
	}
	if bad < 0 || bad == len(msgs)-1 {
		t.Fatalf("the malformed message is %d of %d", bad, len(msgs))
	}
	for _, parse := range []func([]byte) (*State, error){Parse, ParseAll} {
		_, err := parse(Encode(msgs))
		var pe *ParseError
		if !errors.As(err, &pe) {
			t.Fatalf("want a ParseError, got %v", err)
		}
		// The AS_PATH's length byte is wrong: its value starts after the
		// BMP and BGP headers, the two lengths and ORIGIN.
		if pe.Message != bad || pe.MessageOffset != offset || pe.Offset != offset+6+peerHeaderSize+bgpHeaderSize+4+4+3 {
			t.Fatalf("got %v, want message %d at offset %d", pe, bad, offset)
		}
	}
	without := append(append([]Message(nil), msgs[:bad]...), msgs[bad+1:]...)
	got, err := Parse(Encode(without))
	if err != nil {
		t.Fatal(err)
	}
	mustEqual(t, Expect(cfg), got)
}

func TestGenerateTerminate(t *testing.T) {
	cfg := GenConfig{Prefixes: 50, Terminate: true}
	msgs := Generate(cfg)
	if last := msgs[len(msgs)-1]; last.Type != MsgTermination {
		t.Fatalf("the last message is %s", last.Note)
	}
	got, err := Parse(Encode(msgs))
	if err != nil {
		t.Fatal(err)
	}
	if !got.Terminated {
		t.Fatal("not terminated")
	}
	mustEqual(t, Expect(cfg), got)
}
