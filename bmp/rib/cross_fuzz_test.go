package rib_test

import (
	"encoding/binary"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"

	"github.com/bmpproxy/bmpproxy/bmp/rib"
	"github.com/bmpproxy/bmpproxy/internal/bmpcheck"
)

// FuzzReplayMatchesIndependentParser: arbitrary bytes fed to a Router.
// Whatever it keeps, its replay parses (bmpcheck.ParseAll) to the state of
// the input; what bmpcheck refuses, it does not keep, but for the cases
// crossCheck lists; what bmpcheck cannot key (EVPN...) makes it Unkeyable.
func FuzzReplayMatchesIndependentParser(f *testing.F) {
	// Small seeds: the fuzzer minimizes each input it finds interesting.
	// The Initiation and the Peer Ups of a generated stream, then a few of
	// its messages of each kind, whole and mutated: a view flag (L, A, O)
	// flipped in a per-peer header, a byte of an UPDATE or OPEN changed.
	for _, cfg := range []bmpcheck.GenConfig{
		{Seed: 1, Prefixes: 1, AttrSets: 1, Churn: 1},
		{Seed: 2, Prefixes: 2, AttrSets: 2, Churn: 1, EVPN: true, Malformed: true, Terminate: true},
	} {
		msgs := bmpcheck.Generate(cfg)
		ups := 0
		for ups < len(msgs) && (msgs[ups].Type == bmpcheck.MsgInitiation || msgs[ups].Type == bmpcheck.MsgPeerUp) {
			ups++
		}
		f.Add(bmpcheck.Encode(msgs[:ups+6]))
		seen := map[string]bool{}
		for i, m := range msgs[ups:] {
			kind, _, _ := strings.Cut(m.Note, " ")
			if seen[kind] {
				continue
			}
			seen[kind] = true
			one := cat(bmpcheck.Encode(msgs[:ups]), m.Bytes)
			f.Add(one)
			for n, at := range []int{len(one) - len(m.Bytes) + 7, len(one) - len(m.Bytes)/2, len(one) - 1} {
				mut := append([]byte(nil), one...)
				mut[at] ^= []byte{0x40, 0x20, 0x10, 0x01}[(i+n)%4]
				f.Add(mut)
			}
		}
	}
	for _, c := range crossCases() {
		f.Add(c.stream)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		crossCheck(t, data)
	})
}

// crossCheck feeds data to a Router and checks it against bmpcheck.
func crossCheck(t *testing.T, data []byte) {
	t.Helper()
	r := rib.NewRouter(rib.NewMemory(64<<20), "fuzz")
	cut := len(data) / 3
	r.Feed(data[:cut])
	r.Feed(data[cut:])
	want, err := bmpcheck.ParseAll(data)
	if err == nil {
		agree(t, r, want, data)
		return
	}
	var pe *bmpcheck.ParseError
	if !errors.As(err, &pe) {
		t.Fatalf("ParseAll: %v", err)
	}
	// The messages before the one bmpcheck refuses: both read them.
	head := data[:pe.MessageOffset]
	r2 := rib.NewRouter(rib.NewMemory(64<<20), "fuzz head")
	r2.Feed(head)
	agree(t, r2, want, head)

	st := r.Status()
	if st.State != rib.Keeping {
		return
	}
	why := keepsRefused(r, want, data, pe)
	if why == "" {
		t.Fatalf("bmpcheck refuses what the Router keeps: %v", err)
	}
	if why == skipped {
		// The Router skips the message: without it the rest is checked,
		// and the Router holds the same state.
		n := int(binary.BigEndian.Uint32(data[pe.MessageOffset+1:]))
		rest := cat(head, data[pe.MessageOffset+n:])
		crossCheck(t, rest)
		r3 := rib.NewRouter(rib.NewMemory(64<<20), "fuzz without")
		r3.Feed(rest)
		if a, b := replayOf(t, r), replayOf(t, r3); string(a) != string(b) {
			t.Fatalf("a %s changed the state", pe.Type)
		}
	}
}

// skipped is keepsRefused's reason for a whole message that carries no
// state and that the Router does not read.
const skipped = "Statistics Reports and Route Mirroring carry no state: the Router does not read them"

// replayOf is r's replay, or nil if it is not Keeping.
func replayOf(t *testing.T, r *rib.Router) []byte {
	t.Helper()
	s, err := r.Snapshot()
	if err != nil {
		if r.Status().State == rib.Keeping {
			t.Fatalf("Snapshot: %v", err)
		}
		return nil
	}
	b, err := io.ReadAll(s)
	s.Close()
	if err != nil {
		t.Fatalf("replay: %v", err)
	}
	return b
}

// keepsRefused says why the Router may keep a stream that bmpcheck refuses
// with pe (want being the state before the refused message), or "".
func keepsRefused(r *rib.Router, want *bmpcheck.State, data []byte, pe *bmpcheck.ParseError) string {
	st := r.Status()
	msg := data[pe.MessageOffset:]
	switch {
	case st.Terminated && (want.Terminated || pe.Type == bmpcheck.MsgTermination):
		return "the Router reads nothing after a Termination, nor the Termination itself"
	case len(bmpcheck.Whole(data)) == pe.MessageOffset && len(r.Pending()) == len(msg) && !pe.NoHeader &&
		int(binary.BigEndian.Uint32(msg[1:])) > len(msg):
		return "the last message is incomplete: the Router waits for the rest of it"
	case pe.NoHeader && len(r.Pending()) == len(msg):
		return "the last message's common header is incomplete"
	case !pe.NoHeader && (pe.Type == bmpcheck.MsgStatisticsReport || pe.Type == bmpcheck.MsgRouteMirroring) &&
		int(binary.BigEndian.Uint32(msg[1:])) <= len(msg):
		return skipped
	case !pe.NoHeader && pe.Type == bmpcheck.MsgRouteMonitoring && strings.Contains(pe.Reason, "which is not up") &&
		maskedPeerUp(want, msg):
		return "a Route Monitoring of a view of a peer that is up under other view flags (rib/doc.go)"
	}
	return ""
}

// viewFlags are the per-peer header flags that name a view of a peer, not
// the peer (rib/doc.go).
const viewFlags = bmpcheck.FlagL | bmpcheck.FlagA | bmpcheck.FlagO

// maskedPeerUp reports whether the per-peer header of the BMP message msg
// names, but for the view flags, a peer that is up in s.
func maskedPeerUp(s *bmpcheck.State, msg []byte) bool {
	if len(msg) < 6+42 {
		return false
	}
	k := peerKeyOf(msg[6 : 6+42])
	if k.Type == bmpcheck.PeerLocRIB {
		return false
	}
	for p := range s.Peers {
		q := p
		q.Flags &^= viewFlags
		k.Flags &^= viewFlags
		if q == k {
			return true
		}
	}
	return false
}

// peerKeyOf reads a per-peer header as bmpcheck's doc says it keys peers.
func peerKeyOf(h []byte) bmpcheck.PeerKey {
	k := bmpcheck.PeerKey{
		Type: h[0], Flags: h[1], Distinguisher: bmpcheck.RD(h[2:10]),
		AS: binary.BigEndian.Uint32(h[26:30]), BGPID: netip.AddrFrom4([4]byte(h[30:34])),
	}
	v6 := k.Type != bmpcheck.PeerLocRIB && k.Flags&bmpcheck.FlagV != 0
	if !v6 && [12]byte(h[10:22]) == [12]byte{} {
		k.Address = netip.AddrFrom4([4]byte(h[22:26]))
	} else {
		k.Address = netip.AddrFrom16([16]byte(h[10:26]))
	}
	return k
}

// agree checks a Router fed stream, which bmpcheck.ParseAll reads to want.
func agree(t *testing.T, r *rib.Router, want *bmpcheck.State, stream []byte) {
	t.Helper()
	st := r.Status()
	if len(want.Unkeyed) > 0 && st.State != rib.Unkeyable {
		t.Fatalf("bmpcheck cannot key %d tables, the Router is %v (%v)", len(want.Unkeyed), st.State, st.Err)
	}
	switch st.State {
	case rib.Failed:
		t.Fatalf("the Router refuses what bmpcheck reads: %v", st.Err)
	case rib.Unkeyable:
		if why := unkeyable(st, want, stream); why == "" {
			t.Fatalf("the Router cannot key what bmpcheck keys: %v", st.Err)
		}
		return
	case rib.OverMemory:
		return
	}
	if p := r.Pending(); len(p) != 0 {
		t.Fatalf("%d bytes pending after whole messages", len(p))
	}
	R := replayOf(t, r)
	got, err := bmpcheck.ParseAll(R)
	if err != nil {
		t.Fatalf("ParseAll of the replay: %v", err)
	}
	if maskedPeerDown(stream) {
		return // the Router took down a peer that bmpcheck keeps up
	}
	if w := untermed(want); !w.Equal(got) {
		t.Fatalf("the replay's state differs from the input's:\n%s", w.Diff(got))
	}
	if want.Initiation != nil {
		// A replay is one well-formed session: strict Parse reads it.
		if _, err := bmpcheck.Parse(R); err != nil {
			t.Fatalf("Parse of the replay: %v", err)
		}
	}
}

// unkeyable says why the Router may not key a stream bmpcheck reads, or "".
func unkeyable(st rib.Status, want *bmpcheck.State, stream []byte) string {
	switch r := st.Reason; {
	case len(want.Unkeyed) > 0 && strings.HasSuffix(r, " routes"):
		return "a family neither keys"
	case strings.HasPrefix(r, "BMP message type "):
		return "a message type past 6, which bmpcheck skips"
	case strings.HasPrefix(r, "peer type "):
		return "a peer type past 3, whose routes bmpcheck could not read either"
	case strings.HasPrefix(r, "Peer Up for ") && strings.Contains(r, " after its routes were kept under peer "):
		return "a Peer Up for a view kept under another peer (rib/doc.go)"
	case strings.HasPrefix(r, "routes for ") && maskedPeerDown(stream):
		return "routes for a peer the Router took down by a Peer Down naming another view of it"
	}
	return ""
}

// maskedPeerDown reports whether stream has a Peer Down whose per-peer
// header equals a Peer Up's but for the view flags, and not that Peer Up's.
// The Router takes that peer down (rib/doc.go: a Peer Down names the
// peer), bmpcheck keys peers by the whole header and does not.
func maskedPeerDown(stream []byte) bool {
	ups := map[bmpcheck.PeerKey]bool{}
	var downs []bmpcheck.PeerKey
	for b := bmpcheck.Whole(stream); len(b) >= 6+42; {
		n := int(binary.BigEndian.Uint32(b[1:]))
		if n >= 6+42 {
			switch k := peerKeyOf(b[6:48]); bmpcheck.MsgType(b[5]) {
			case bmpcheck.MsgPeerUp:
				ups[k] = true
			case bmpcheck.MsgPeerDown:
				downs = append(downs, k)
			}
		}
		b = b[n:]
	}
	for _, d := range downs {
		if d.Type == bmpcheck.PeerLocRIB {
			continue
		}
		for u := range ups {
			m, dm := u, d
			m.Flags &^= viewFlags
			dm.Flags &^= viewFlags
			if m == dm && u != d {
				return true
			}
		}
	}
	return false
}
