package bmpcheck

import (
	"testing"
)

// FuzzParse: no panic; a state bounded by its input (routes at most one per
// byte, bytes held at most three per byte: attributes are interned, and a
// route's canonical form is at most 4/3 of its wire form, twice if an
// UPDATE has both MP_REACH_NLRI and NLRI); what Parse accepts ParseAll
// accepts, with the same state; Equal, Diff and Summary work on any state.
func FuzzParse(f *testing.F) {
	msgs := Generate(GenConfig{Prefixes: 2, AttrSets: 2, Churn: 1, EVPN: true, Terminate: true})
	f.Add(Encode(msgs[:40])) // a small seed: the fuzzer minimizes what it finds
	f.Add(Encode(msgs[len(msgs)-40:]))
	labeled := cat(capMP(1, 4), capMP(1, 128), capMP(2, 128), capAP(1, 128, 3), capab(8, be16(1), []byte{4, 2}), capab(6))
	f.Add(cat(initiation(), upA(labeled, labeled), upB,
		rmA(updateMsg(nil, cat(originIGP, asPath, nextHopA, med10), hx("18 cb0071 17 0a0103"))),
		rmA(updateMsg(nil, cat(attrX(0x80, 14, be16(1), []byte{4, 4}, ip("198.51.100.1").AsSlice(), []byte{0}, hx("48 03e800 03e811 cb0071")), originIGP), nil)),
		rmA(updateMsg(nil, cat(attrX(0x80, 14, be16(1), []byte{128, 12}, make([]byte, 12), []byte{0}, hx("00000001 70 03e801 0000fbf40000000a cb0071")), originIGP), nil)),
		rmA(updateMsg(hx("18 cb0071"), attr(0x80, 15, be16(1), []byte{4}, hx("30 800000 cb0071")), nil)),
		rmA(updateMsg(nil, nil, nil)),
		bmpMsg(MsgStatisticsReport, hdrA, be32(1), be16(7), be16(8), hx("0000000000000003")),
		bmpMsg(MsgPeerDown, hdrA, []byte{4}),
		bmpMsg(MsgTermination, tlv(0, "bye"))))
	f.Add(cat(initiation(), peerUpMsg(hdrA, "198.51.100.254", 179, 1, routerOpen(capAP(1, 1, 1)), extOpen()),
		rmA(updateMsg(nil, cat(originIGP, nextHopA), hx("00000003 18 cb0071")))))
	f.Add(cat(initiation(), upA(nil, nil), upA(nil, nil)))
	f.Add([]byte{3, 0, 0, 0, 6, 4})

	f.Fuzz(func(t *testing.T, data []byte) {
		strict, serr := Parse(data)
		lenient, lerr := ParseAll(data)
		for _, s := range []*State{strict, lenient} {
			if s == nil {
				t.Fatal("no state")
			}
			if s.RouteCount() > len(data) || s.retained > 3*len(data) {
				t.Fatalf("%d bytes of input hold %d routes and %d bytes", len(data), s.RouteCount(), s.retained)
			}
			if !s.Equal(s) {
				t.Fatalf("a state differs from itself:\n%s", s.Diff(s))
			}
			_ = NewState().Diff(s) + s.Diff(NewState()) + s.Summary()
		}
		if serr == nil {
			if lerr != nil {
				t.Fatalf("Parse accepts what ParseAll refuses: %v", lerr)
			}
			if !strict.Equal(lenient) {
				t.Fatalf("Parse and ParseAll differ:\n%s", strict.Diff(lenient))
			}
		}
	})
}
