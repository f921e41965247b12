package bmpcheck

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
)

// Fixtures: a router (AS 64500, 198.51.100.254) and its peers.
var (
	hdrA = hdr(PeerGlobal, 0, rd0, "198.51.100.1", 64501, "198.51.100.1")
	keyA = PeerKey{Address: ip("198.51.100.1"), AS: 64501, BGPID: ip("198.51.100.1")}

	hdrB = hdr(PeerGlobal, FlagV, rd0, "2001:db8::2", 4200000002, "198.51.100.2")
	keyB = PeerKey{Flags: FlagV, Address: ip("2001:db8::2"), AS: 4200000002, BGPID: ip("198.51.100.2")}

	originIGP = attr(0x40, 1, []byte{0})
	asPath    = attr(0x40, 2, hx("02 02 0000fbf5 0000fde8")) // AS_SEQUENCE 64501 65000
	nextHopA  = attr(0x40, 3, ip("198.51.100.1").AsSlice())
	med10     = attr(0x80, 4, be32(10))

	cOrigin  = ca(0x40, 1, []byte{0})
	cASPath  = ca(0x40, 2, hx("02 02 0000fbf5 0000fde8"))
	cNextHop = ca(0x40, 3, ip("198.51.100.1").AsSlice())
	cMED10   = ca(0x80, 4, be32(10))
)

func routerOpen(caps ...[]byte) []byte {
	return openMsg(64500, "198.51.100.254", cat(capMP(1, 1), capMP(2, 1), capAS4(64500), cat(caps...)))
}

func peerAOpen(caps ...[]byte) []byte {
	return openMsg(64501, "198.51.100.1", cat(capMP(1, 1), capMP(2, 1), capAS4(64501), cat(caps...)))
}

// upA is peer A's Peer Up with the router's and A's OPENs carrying extra
// capabilities; wantUpA what the state keeps of it.
func upA(routerCaps, peerCaps []byte) []byte {
	return peerUpMsg(hdrA, "198.51.100.254", 179, 40001, routerOpen(routerCaps), peerAOpen(peerCaps))
}

func wantUpA(routerCaps, peerCaps []byte) PeerUp {
	return PeerUp{LocalAddress: ip("198.51.100.254"), LocalPort: 179, RemotePort: 40001,
		SentOpen: string(routerOpen(routerCaps)), ReceivedOpen: string(peerAOpen(peerCaps))}
}

// upB is peer B's Peer Up: an IPv6 peer with a 4-byte AS.
var (
	b6Sent  = openMsg(64500, "198.51.100.254", capMP(2, 1), capAS4(64500))
	b6Recv  = openMsg(23456, "198.51.100.2", capMP(2, 1), capAS4(4200000002))
	upB     = peerUpMsg(hdrB, "2001:db8::fe", 179, 40002, b6Sent, b6Recv)
	wantUpB = PeerUp{LocalAddress: ip("2001:db8::fe"), LocalPort: 179, RemotePort: 40002,
		SentOpen: string(b6Sent), ReceivedOpen: string(b6Recv)}
)

func rmA(update []byte) []byte { return bmpMsg(MsgRouteMonitoring, hdrA, update) }

type kv struct {
	k RouteKey
	r Route
}

func table(addPath bool, kvs ...kv) *Table {
	t := &Table{AddPath: addPath, Routes: map[RouteKey]Route{}}
	for _, e := range kvs {
		t.Routes[e.k] = e.r
	}
	return t
}

func route(prefix string, a Attrs) kv { return kv{RouteKey{Prefix: pfx(prefix)}, Route{Attrs: a}} }

func state(peers ...*Peer) *State {
	s := NewState()
	s.Initiation = initiationTLVs()
	for _, p := range peers {
		s.Peers[p.Key] = p
	}
	return s
}

func peer(key PeerKey, up PeerUp, tables map[Family]*Table) *Peer {
	if tables == nil {
		tables = map[Family]*Table{}
	}
	return &Peer{Key: key, Up: up, Tables: tables}
}

func TestParse(t *testing.T) {
	baseAttrs := cat(originIGP, asPath, nextHopA, med10)
	cBase := canon(cOrigin, cASPath, cNextHop, cMED10)

	// IPv6 with MP_REACH_NLRI: a global and a link-local next hop, and a
	// NEXT_HOP that RFC 4760 says such routes ignore.
	nh6 := cat(ip("2001:db8::2").AsSlice(), ip("fe80::2").AsSlice())
	reach6 := attrX(0x80, 14, be16(2), []byte{1, 32}, nh6, []byte{0}, hx("30 20010db80001"), hx("40 20010db800020000"))
	c6 := canon(cOrigin, cASPath, ca(0x80, 14, nh6))

	// Loc-RIB: a fabricated OPEN, received = sent, whose ADD-PATH says only
	// "receive": its presence is enough (RFC 9069 5.3).
	hdrL := hdr(PeerLocRIB, 0, rd0, "0.0.0.0", 64500, "198.51.100.254")
	keyL := PeerKey{Type: PeerLocRIB, Address: ip("0.0.0.0"), AS: 64500, BGPID: ip("198.51.100.254")}
	locOpen := openMsg(64500, "198.51.100.254", capMP(2, 1), capAS4(64500), capAP(2, 1, 1))
	nh16 := ip("2001:db8::9").AsSlice()

	// Adj-RIB-Out of peer A: the router sends, so its OPEN must say Send.
	hdrO := hdr(PeerGlobal, FlagO, rd0, "198.51.100.1", 64501, "198.51.100.1")
	keyO := keyA
	keyO.Flags = FlagO

	// Labeled unicast and VPN.
	labeledCaps := cat(capMP(1, 4), capMP(1, 128), capMP(2, 128))
	reachLabeled := attrX(0x80, 14, be16(1), []byte{4, 4}, ip("198.51.100.1").AsSlice(), []byte{0},
		hx("30 03e800 cb0071"), hx("30 03e810 cb0072"))
	nhVPN4 := cat(make([]byte, 8), ip("198.51.100.1").AsSlice())
	rdA := RD(hx("0000 fbf4 0000000a")) // 64500:10
	rdB := RD(hx("0001 c6336401 0007")) // 198.51.100.1:7
	reachVPN4 := attrX(0x80, 14, be16(1), []byte{128, 12}, nhVPN4, []byte{0},
		hx("70 03e801 0000fbf40000000a cb0071"), hx("70 03e811 0001c63364010007 cb0071"))
	nhVPN6 := cat(make([]byte, 8), ip("2001:db8::1").AsSlice())
	reachVPN6 := attrX(0x80, 14, be16(2), []byte{128, 24}, nhVPN6, []byte{0},
		hx("88 03e821 0000fbf40000000a 20010db80001"))

	// An UPDATE longer than 4096 bytes: 1500 IPv4 /24s.
	var many []byte
	var manyRoutes []kv
	for i := range 1500 {
		many = append(many, 24, 10, byte(i>>8), byte(i))
		manyRoutes = append(manyRoutes, route(fmt.Sprintf("10.%d.%d.0/24", i>>8, i&0xff), cBase))
	}

	tests := []struct {
		name   string
		stream []byte
		want   *State
		check  func(t *testing.T, s *State)
	}{
		{
			name:   "initiation",
			stream: initiation(),
			want:   state(),
		},
		{
			name:   "peer up",
			stream: cat(initiation(), upA(nil, nil)),
			want:   state(peer(keyA, wantUpA(nil, nil), nil)),
		},
		{
			name: "peer up information TLVs",
			stream: cat(initiation(), peerUpMsg(hdrA, "198.51.100.254", 179, 40001, routerOpen(), peerAOpen(),
				tlv(0, "uplink"), tlv(4, "admin"))),
			want: state(peer(keyA, func() PeerUp {
				u := wantUpA(nil, nil)
				u.Info = []TLV{{0, "uplink"}, {4, "admin"}}
				return u
			}(), nil)),
		},
		{
			// Attributes sent out of type order come out sorted; a /23 with
			// a bit set past its length is the masked prefix.
			name: "ipv4 nlri",
			stream: cat(initiation(), upA(nil, nil),
				rmA(updateMsg(nil, cat(med10, nextHopA, originIGP, asPath), hx("18 cb0071 17 0a0103")))),
			want: state(peer(keyA, wantUpA(nil, nil), map[Family]*Table{IPv4Unicast: table(false,
				route("203.0.113.0/24", cBase), route("10.1.2.0/23", cBase))})),
		},
		{
			name: "canonical attrs written out",
			stream: cat(initiation(), upA(nil, nil),
				rmA(updateMsg(nil, cat(originIGP, med10), hx("18 cb0071")))),
			want: state(peer(keyA, wantUpA(nil, nil), map[Family]*Table{IPv4Unicast: table(false,
				route("203.0.113.0/24", Attrs(hx("40 01 0001 00  80 04 0004 0000000a"))))})),
		},
		{
			name:   "ipv6 mp_reach",
			stream: cat(initiation(), upB, bmpMsg(MsgRouteMonitoring, hdrB, updateMsg(nil, cat(reach6, originIGP, asPath, nextHopA), nil))),
			want: state(peer(keyB, wantUpB, map[Family]*Table{IPv6Unicast: table(false,
				route("2001:db8:1::/48", c6), route("2001:db8:2::/64", c6))})),
		},
		{
			name: "withdrawals",
			stream: cat(initiation(), upA(nil, nil),
				rmA(updateMsg(nil, baseAttrs, hx("18 cb0071 18 cb0072 18 cb0073"))),
				rmA(updateMsg(hx("18 cb0072"), nil, nil)),
				rmA(updateMsg(nil, cat(attrX(0x80, 14, be16(2), []byte{1, 16}, ip("2001:db8::1").AsSlice(), []byte{0}, hx("30 20010db80001 30 20010db80002")), originIGP), nil)),
				rmA(updateMsg(nil, attr(0x80, 15, be16(2), []byte{1}, hx("30 20010db80001")), nil))),
			want: state(peer(keyA, wantUpA(nil, nil), map[Family]*Table{
				IPv4Unicast: table(false, route("203.0.113.0/24", cBase), route("203.0.115.0/24", cBase)),
				IPv6Unicast: table(false, route("2001:db8:2::/48", canon(cOrigin, ca(0x80, 14, ip("2001:db8::1").AsSlice())))),
			})),
		},
		{
			name: "re-announcement replaces",
			stream: cat(initiation(), upA(nil, nil),
				rmA(updateMsg(nil, baseAttrs, hx("18 cb0071 18 cb0072"))),
				rmA(updateMsg(nil, cat(originIGP, asPath, nextHopA, attr(0x80, 4, be32(20))), hx("18 cb0072")))),
			want: state(peer(keyA, wantUpA(nil, nil), map[Family]*Table{IPv4Unicast: table(false,
				route("203.0.113.0/24", cBase),
				route("203.0.114.0/24", canon(cOrigin, cASPath, cNextHop, ca(0x80, 4, be32(20)))))})),
		},
		{
			name: "add-path: the peer sends, the router receives",
			stream: cat(initiation(), upA(capAP(1, 1, 1), capAP(1, 1, 2)),
				rmA(updateMsg(nil, baseAttrs, hx("00000001 18 cb0071 00000002 18 cb0071"))),
				rmA(updateMsg(hx("00000001 18 cb0071"), nil, nil))),
			want: state(peer(keyA, wantUpA(capAP(1, 1, 1), capAP(1, 1, 2)), map[Family]*Table{IPv4Unicast: table(true,
				kv{RouteKey{Prefix: pfx("203.0.113.0/24"), PathID: 2}, Route{Attrs: cBase}})})),
		},
		{
			name: "add-path: the wrong way round is not in use",
			stream: cat(initiation(), upA(capAP(1, 1, 2), capAP(1, 1, 1)),
				rmA(updateMsg(nil, baseAttrs, hx("18 cb0071")))),
			want: state(peer(keyA, wantUpA(capAP(1, 1, 2), capAP(1, 1, 1)), map[Family]*Table{IPv4Unicast: table(false,
				route("203.0.113.0/24", cBase))})),
		},
		{
			// RFC 7911 4: a Send/Receive value other than 1, 2, 3 makes the
			// capability not understood: ignored, with its other tuples.
			name: "add-path: a capability with a value past 3 is ignored",
			stream: cat(initiation(), upA(capab(69, be16(1), []byte{1, 1}, be16(2), []byte{1, 7}), capAP(1, 1, 2)),
				rmA(updateMsg(nil, baseAttrs, hx("18 cb0071")))),
			want: state(peer(keyA, wantUpA(capab(69, be16(1), []byte{1, 1}, be16(2), []byte{1, 7}), capAP(1, 1, 2)),
				map[Family]*Table{IPv4Unicast: table(false, route("203.0.113.0/24", cBase))})),
		},
		{
			name: "add-path: of two tuples for a family the later counts",
			stream: cat(initiation(), upA(capab(69, be16(1), []byte{1, 2}, be16(1), []byte{1, 1}), capAP(1, 1, 2)),
				rmA(updateMsg(nil, baseAttrs, hx("00000003 18 cb0071")))),
			want: state(peer(keyA, wantUpA(capab(69, be16(1), []byte{1, 2}, be16(1), []byte{1, 1}), capAP(1, 1, 2)),
				map[Family]*Table{IPv4Unicast: table(true, kv{RouteKey{Prefix: pfx("203.0.113.0/24"), PathID: 3}, Route{Attrs: cBase}})})),
		},
		{
			name: "add-path on adj-rib-out: the router sends",
			stream: cat(initiation(),
				peerUpMsg(hdrO, "198.51.100.254", 179, 40001, routerOpen(capAP(1, 1, 2)), peerAOpen(capAP(1, 1, 1))),
				bmpMsg(MsgRouteMonitoring, hdrO, updateMsg(nil, baseAttrs, hx("00000005 18 cb0071")))),
			want: state(peer(keyO, PeerUp{LocalAddress: ip("198.51.100.254"), LocalPort: 179, RemotePort: 40001,
				SentOpen: string(routerOpen(capAP(1, 1, 2))), ReceivedOpen: string(peerAOpen(capAP(1, 1, 1)))},
				map[Family]*Table{IPv4Unicast: table(true, kv{RouteKey{Prefix: pfx("203.0.113.0/24"), PathID: 5}, Route{Attrs: cBase}})})),
		},
		{
			name: "loc-rib with add-path by presence",
			stream: cat(initiation(),
				peerUpMsg(hdrL, "0.0.0.0", 0, 0, locOpen, locOpen, tlv(3, "global")),
				bmpMsg(MsgRouteMonitoring, hdrL, updateMsg(nil, cat(attrX(0x80, 14, be16(2), []byte{1, 16}, nh16, []byte{0}, hx("00000007 30 20010db80001")), originIGP), nil))),
			want: state(peer(keyL, PeerUp{LocalAddress: ip("0.0.0.0"), SentOpen: string(locOpen), ReceivedOpen: string(locOpen), Info: []TLV{{3, "global"}}},
				map[Family]*Table{IPv6Unicast: table(true, kv{RouteKey{Prefix: pfx("2001:db8:1::/48"), PathID: 7},
					Route{Attrs: canon(cOrigin, ca(0x80, 14, nh16))}})})),
		},
		{
			// Single-label mode: the S bit is set in the canonical form; the
			// withdrawal's compatibility field is 0x800000.
			name: "labeled unicast",
			stream: cat(initiation(), upA(labeledCaps, labeledCaps),
				rmA(updateMsg(nil, cat(reachLabeled, originIGP), nil)),
				rmA(updateMsg(nil, attr(0x80, 15, be16(1), []byte{4}, hx("30 800000 cb0072")), nil))),
			want: state(peer(keyA, wantUpA(labeledCaps, labeledCaps), map[Family]*Table{IPv4Labeled: table(false,
				kv{RouteKey{Prefix: pfx("203.0.113.0/24")}, Route{Labels: Labels(hx("03e801")),
					Attrs: canon(cOrigin, ca(0x80, 14, ip("198.51.100.1").AsSlice()))}})})),
		},
		{
			name: "multiple labels",
			stream: cat(initiation(), upA(capab(8, be16(1), []byte{4, 2}), cat(capMP(1, 4), capab(8, be16(1), []byte{4, 3}))),
				rmA(updateMsg(nil, cat(originIGP, attrX(0x80, 14, be16(1), []byte{4, 4}, ip("198.51.100.1").AsSlice(), []byte{0}, hx("48 03e800 03e811 cb0071"))), nil))),
			want: state(peer(keyA, wantUpA(capab(8, be16(1), []byte{4, 2}), cat(capMP(1, 4), capab(8, be16(1), []byte{4, 3}))), map[Family]*Table{IPv4Labeled: table(false,
				kv{RouteKey{Prefix: pfx("203.0.113.0/24")}, Route{Labels: Labels(hx("03e800 03e811")),
					Attrs: canon(cOrigin, ca(0x80, 14, ip("198.51.100.1").AsSlice()))}})})),
		},
		{
			name: "vpnv4 and vpnv6",
			stream: cat(initiation(), upA(labeledCaps, labeledCaps),
				rmA(updateMsg(nil, cat(reachVPN4, originIGP), nil)),
				rmA(updateMsg(nil, cat(reachVPN6, originIGP), nil)),
				rmA(updateMsg(nil, attr(0x80, 15, be16(2), []byte{128}, hx("88 800000 0000fbf40000000a 20010db80001")), nil))),
			want: state(peer(keyA, wantUpA(labeledCaps, labeledCaps), map[Family]*Table{VPNv4: table(false,
				kv{RouteKey{RD: rdA, Prefix: pfx("203.0.113.0/24")}, Route{Labels: Labels(hx("03e801")), Attrs: canon(cOrigin, ca(0x80, 14, nhVPN4))}},
				kv{RouteKey{RD: rdB, Prefix: pfx("203.0.113.0/24")}, Route{Labels: Labels(hx("03e811")), Attrs: canon(cOrigin, ca(0x80, 14, nhVPN4))}},
			)})),
		},
		{
			name: "end-of-rib",
			stream: cat(initiation(), upA(nil, nil),
				rmA(updateMsg(nil, nil, nil)),
				rmA(updateMsg(nil, attr(0x80, 15, be16(2), []byte{1}), nil))),
			want: state(peer(keyA, wantUpA(nil, nil), nil)),
			check: func(t *testing.T, s *State) {
				p := s.Peers[keyA]
				for _, f := range []Family{IPv4Unicast, IPv6Unicast} {
					if tb := p.Tables[f]; tb == nil || !tb.EndOfRIB || len(tb.Routes) != 0 {
						t.Errorf("%s: want an empty table with End-of-RIB, got %+v", f, tb)
					}
				}
			},
		},
		{
			name: "peer down",
			stream: cat(initiation(), upA(nil, nil), upB,
				rmA(updateMsg(nil, baseAttrs, hx("18 cb0071"))),
				bmpMsg(MsgPeerDown, hdrA, []byte{2}, be16(0))),
			want: state(peer(keyB, wantUpB, nil)),
		},
		{
			name: "peer up again after peer down starts empty",
			stream: cat(initiation(), upA(nil, nil),
				rmA(updateMsg(nil, baseAttrs, hx("18 cb0071"))),
				bmpMsg(MsgPeerDown, hdrA, []byte{4}),
				upA(nil, capAP(1, 1, 3))),
			want: state(peer(keyA, wantUpA(nil, capAP(1, 1, 3)), nil)),
		},
		{
			name: "pre- and post-policy are two peers",
			stream: cat(initiation(), upA(nil, nil),
				peerUpMsg(hdr(PeerGlobal, FlagL, rd0, "198.51.100.1", 64501, "198.51.100.1"), "198.51.100.254", 179, 40001, routerOpen(), peerAOpen()),
				bmpMsg(MsgRouteMonitoring, hdr(PeerGlobal, FlagL, rd0, "198.51.100.1", 64501, "198.51.100.1"), updateMsg(nil, baseAttrs, hx("18 cb0071")))),
			want: state(peer(keyA, wantUpA(nil, nil), nil),
				peer(PeerKey{Flags: FlagL, Address: keyA.Address, AS: keyA.AS, BGPID: keyA.BGPID}, wantUpA(nil, nil),
					map[Family]*Table{IPv4Unicast: table(false, route("203.0.113.0/24", cBase))})),
		},
		{
			name: "rd instance peer",
			stream: cat(initiation(),
				peerUpMsg(hdr(PeerRD, 0, "0000fbf40000000a", "198.51.100.8", 64508, "198.51.100.8"), "198.51.100.254", 179, 40008, routerOpen(), peerAOpen())),
			want: state(peer(PeerKey{Type: PeerRD, Distinguisher: rdA, Address: ip("198.51.100.8"), AS: 64508, BGPID: ip("198.51.100.8")},
				PeerUp{LocalAddress: ip("198.51.100.254"), LocalPort: 179, RemotePort: 40008, SentOpen: string(routerOpen()), ReceivedOpen: string(peerAOpen())}, nil)),
		},
		{
			name: "evpn is unkeyed",
			stream: cat(initiation(), upA(capMP(25, 70), capMP(25, 70)),
				rmA(updateMsg(nil, cat(attrX(0x80, 14, be16(25), []byte{70, 4}, ip("198.51.100.1").AsSlice(), []byte{0}, hx("02 21 0000fbf40000000a 00000000000000000000 00000000 30 aabbccddeeff 00 000000")), originIGP), nil)),
				rmA(updateMsg(nil, attr(0x80, 15, be16(25), []byte{70}), nil))),
			want: func() *State {
				s := state(peer(keyA, wantUpA(capMP(25, 70), capMP(25, 70)), nil))
				s.Unkeyed[TableRef{Peer: keyA, Family: EVPN}] = true
				return s
			}(),
		},
		{
			name: "the first of a repeated attribute",
			stream: cat(initiation(), upA(nil, nil),
				rmA(updateMsg(nil, cat(originIGP, asPath, nextHopA, med10, attr(0x40, 1, []byte{2})), hx("18 cb0071")))),
			want: state(peer(keyA, wantUpA(nil, nil), map[Family]*Table{IPv4Unicast: table(false,
				route("203.0.113.0/24", cBase))})),
		},
		{
			name: "extended length is not part of the form",
			stream: cat(initiation(), upA(nil, nil),
				rmA(updateMsg(nil, cat(attrX(0x40, 1, []byte{0}), attrX(0x40, 2, hx("02 02 0000fbf5 0000fde8")), nextHopA, attrX(0x80, 4, be32(10))), hx("18 cb0071")))),
			want: state(peer(keyA, wantUpA(nil, nil), map[Family]*Table{IPv4Unicast: table(false,
				route("203.0.113.0/24", cBase))})),
		},
		{
			name: "statistics, mirroring and an unknown type change nothing",
			stream: cat(initiation(), upA(nil, nil),
				bmpMsg(MsgStatisticsReport, hdrA, be32(2), be16(0), be16(4), be32(5), be16(7), be16(8), hx("0000000000000003")),
				bmpMsg(MsgRouteMirroring, hdrA, be16(0), be16(23), updateMsg(nil, nil, nil), be16(1), be16(2), be16(1)),
				bmpMsg(7, hx("0102"))),
			want: state(peer(keyA, wantUpA(nil, nil), nil)),
			check: func(t *testing.T, s *State) {
				if s.Messages[MsgStatisticsReport] != 1 || s.Messages[MsgRouteMirroring] != 1 || s.Messages[7] != 1 {
					t.Errorf("messages counted: %v", s.Messages)
				}
			},
		},
		{
			name:   "termination",
			stream: cat(initiation(), upA(nil, nil), bmpMsg(MsgTermination, tlv(0, "bye"), tlv(1, "\x00\x01"))),
			want: func() *State {
				s := state(peer(keyA, wantUpA(nil, nil), nil))
				s.Terminated, s.Termination = true, []TLV{{0, "bye"}, {1, "\x00\x01"}}
				return s
			}(),
		},
		{
			name:   "extended messages",
			stream: cat(initiation(), upA(capab(6), capab(6)), rmA(updateMsg(nil, baseAttrs, many))),
			want:   state(peer(keyA, wantUpA(capab(6), capab(6)), map[Family]*Table{IPv4Unicast: table(false, manyRoutes...)})),
		},
		{
			name: "extended optional parameters (RFC 9072)",
			stream: cat(initiation(), peerUpMsg(hdrA, "198.51.100.254", 179, 40001, routerOpen(capAP(1, 1, 1)), extOpen()),
				rmA(updateMsg(nil, baseAttrs, hx("00000003 18 cb0071")))),
			want: state(peer(keyA, PeerUp{LocalAddress: ip("198.51.100.254"), LocalPort: 179, RemotePort: 40001,
				SentOpen: string(routerOpen(capAP(1, 1, 1))), ReceivedOpen: string(extOpen())},
				map[Family]*Table{IPv4Unicast: table(true, kv{RouteKey{Prefix: pfx("203.0.113.0/24"), PathID: 3}, Route{Attrs: cBase}})})),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, p := range []struct {
				name  string
				parse func([]byte) (*State, error)
			}{{"Parse", Parse}, {"ParseAll", ParseAll}} {
				got, err := p.parse(tc.stream)
				if err != nil {
					t.Fatalf("%s: %v", p.name, err)
				}
				mustEqual(t, tc.want, got)
				if tc.check != nil {
					tc.check(t, got)
				}
			}
		})
	}
}

// extOpen is peer A's OPEN with RFC 9072's extended optional parameters:
// lengths of 2 bytes, ADD-PATH Send for IPv4 unicast.
func extOpen() []byte {
	caps := cat(capMP(1, 1), capAS4(64501), capAP(1, 1, 2))
	params := cat([]byte{2}, be16(len(caps)), caps)
	return bgpMsg(1, []byte{4}, be16(64501), be16(90), ip("198.51.100.1").AsSlice(), []byte{255, 255}, be16(len(params)), params)
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestParseErrors(t *testing.T) {
	init := initiation()
	up := upA(nil, nil)
	base := cat(init, up)
	announce := rmA(updateMsg(nil, cat(originIGP, nextHopA), hx("18 cb0071")))
	rmStart := len(base) + 6 + peerHeaderSize // where a Route Monitoring's UPDATE starts
	badMarker := rmA(updateMsg(nil, nil, nil))
	badMarker[6+peerHeaderSize] = 0xfe

	tests := []struct {
		name    string
		stream  []byte
		strict  bool // only Parse refuses it; ParseAll must accept it
		offset  int
		message int
		reason  string
	}{
		{name: "version", stream: hx("02 00000006 04"), reason: "version 2"},
		{name: "length below the header", stream: hx("03 00000005 04"), offset: 1, reason: "shorter than the common header"},
		{name: "length past the end", stream: hx("03 00000010 04 0000"), offset: 6, reason: "needs 10 bytes, 2 left"},
		{name: "incomplete header", stream: cat(init, hx("03 0000")), offset: len(init), message: 1, reason: "common header needs 6 bytes, 3 left"},
		{name: "short per-peer header", stream: cat(init, bmpMsg(MsgPeerUp, hdrA[:40])), offset: len(init) + 6, message: 1, reason: "per-peer header needs 42 bytes, 40 left"},
		{name: "bad marker", stream: cat(base, badMarker), offset: rmStart, message: 2, reason: "bad marker"},
		{name: "not an UPDATE", stream: cat(base, rmA(bgpMsg(4))), offset: rmStart + 19, message: 2, reason: "type 4, not an UPDATE"},
		{name: "bytes after the UPDATE", stream: cat(base, rmA(cat(updateMsg(nil, nil, nil), []byte{0}))), offset: rmStart + 23, message: 2, reason: "1 bytes after the UPDATE"},
		{
			name:   "attribute past the attributes",
			stream: cat(base, rmA(updateMsg(nil, cat(originIGP, hx("40 02 0a 0202")), nil))),
			offset: rmStart + 19 + 4 + 4 + 3, message: 2, reason: "attribute 2 (at offset " + itoa(rmStart+19+4+4) + ") needs 10 bytes, 2 left",
		},
		{
			name:   "attributes past the update",
			stream: cat(base, rmA(bgpMsg(2, be16(0), be16(9), originIGP))),
			offset: rmStart + 19 + 4, message: 2, reason: "path attributes needs 9 bytes, 4 left",
		},
		{
			name:   "ipv4 prefix of 33 bits",
			stream: cat(base, rmA(updateMsg(nil, originIGP, hx("21 cb007101 00")))),
			offset: rmStart + 19 + 4 + 4 + 1, message: 2, reason: "ipv4-unicast prefix length 33 is longer than 32 bits",
		},
		{
			name:   "prefix past the nlri",
			stream: cat(base, rmA(updateMsg(nil, originIGP, hx("18 cb00")))),
			offset: rmStart + 19 + 4 + 4 + 1, message: 2, reason: "ipv4-unicast prefix of length 24 needs 3 bytes, 2 left",
		},
		{
			name:   "a second MP_REACH_NLRI",
			stream: cat(base, rmA(updateMsg(nil, cat(attr(0x80, 14, be16(2), []byte{1, 0, 0}), attr(0x80, 14, be16(2), []byte{1, 0, 0})), nil))),
			offset: rmStart + 19 + 4 + 8, message: 2, reason: "a second attribute 14",
		},
		{
			name:   "label stack past the prefix length",
			stream: cat(init, upA(capMP(1, 4), capMP(1, 4)), rmA(updateMsg(nil, attr(0x80, 14, be16(1), []byte{4, 0, 0}, hx("10 03e8")), nil))),
			offset: len(init) + len(upA(capMP(1, 4), capMP(1, 4))) + 6 + peerHeaderSize + 19 + 4 + 3 + 5 + 1, message: 2,
			reason: "prefix length leaves 16 bits for a label",
		},
		{
			name:   "route monitoring for a peer that is not up",
			stream: cat(init, announce), offset: len(init) + 6 + peerHeaderSize, message: 1, reason: "not up",
		},
		{
			name:   "stats count",
			stream: cat(base, bmpMsg(MsgStatisticsReport, hdrA, be32(1), be16(0), be16(4), be32(5), []byte{9})),
			offset: len(base) + 6 + peerHeaderSize + 12, message: 2, reason: "1 bytes after 1 statistics",
		},
		{
			name:   "after the termination",
			stream: cat(init, bmpMsg(MsgTermination), up), offset: len(init) + 6, message: 2, reason: "after the Termination",
		},
		{
			name:   "bad OPEN capability",
			stream: cat(init, peerUpMsg(hdrA, "198.51.100.254", 179, 1, routerOpen(capab(69, hx("000101"))), peerAOpen())),
			offset: len(init) + 6 + peerHeaderSize + 20 + 19 + 10 + 2 + 6 + 6 + 6 + 2, message: 1, reason: "capability 69 length 3 is not a multiple of 4",
		},
		{name: "first message", strict: true, stream: up, reason: "the first message is not an Initiation"},
		{name: "second initiation", strict: true, stream: cat(init, init), offset: len(init) + 6, message: 1, reason: "a second Initiation"},
		{name: "peer up twice", strict: true, stream: cat(base, up), offset: len(base) + 6 + peerHeaderSize, message: 2, reason: "which is up"},
		{name: "peer down for a peer not up", strict: true, stream: cat(init, bmpMsg(MsgPeerDown, hdrA, []byte{4})), offset: len(init) + 6 + peerHeaderSize + 1, message: 1, reason: "which is not up"},
		{
			name: "withdrawal of an absent route", strict: true,
			stream: cat(base, announce, rmA(updateMsg(hx("18 cb0071 18 cb0072"), nil, nil))),
			offset: len(base) + len(announce) + 6 + peerHeaderSize + 19 + 2 + 4, message: 3, reason: "withdraws ipv4-unicast 203.0.114.0/24, which is not in the table",
		},
		{
			name: "withdrawal of a route twice", strict: true,
			stream: cat(base, announce, rmA(updateMsg(hx("18 cb0071 18 cb0071"), nil, nil))),
			offset: len(base) + len(announce) + 6 + peerHeaderSize + 19 + 2 + 4, message: 3, reason: "which is not in the table",
		},
		{
			name: "an UPDATE too long without extended messages", strict: true,
			stream: cat(base, rmA(updateMsg(nil, originIGP, bytes.Repeat(hx("18 0a0000"), 1100)))),
			offset: rmStart + 19, message: 2, reason: "an UPDATE of 4427 bytes on a session without extended messages",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.stream)
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("Parse: want a *ParseError, got %v", err)
			}
			if pe.Offset != tc.offset || pe.Message != tc.message || !strings.Contains(pe.Reason, tc.reason) {
				t.Errorf("Parse: got offset %d message %d %q, want offset %d message %d %q", pe.Offset, pe.Message, pe.Reason, tc.offset, tc.message, tc.reason)
			}
			if !strings.Contains(err.Error(), "offset "+itoa(tc.offset)) {
				t.Errorf("the error does not give the offset: %v", err)
			}
			_, err = ParseAll(tc.stream)
			if tc.strict && err != nil {
				t.Errorf("ParseAll: %v", err)
			}
			if !tc.strict && (err == nil || err.Error() != pe.Error()) {
				t.Errorf("ParseAll: got %v, want %v", err, pe)
			}
		})
	}
}

// A refused message changes nothing: the state returned with the error is
// that of the messages before it.
func TestParseErrorKeepsState(t *testing.T) {
	good := cat(initiation(), upA(nil, nil), rmA(updateMsg(nil, cat(originIGP, nextHopA), hx("18 cb0071"))))
	want, err := Parse(good)
	if err != nil {
		t.Fatal(err)
	}
	// Announces one route, withdraws the first, then fails on its NLRI.
	bad := rmA(updateMsg(hx("18 cb0071"), cat(originIGP, nextHopA), hx("18 cb0072 21 00")))
	got, err := Parse(cat(good, bad))
	if err == nil {
		t.Fatal("no error")
	}
	mustEqual(t, want, got)
}

// ParseAll's leniency, with the state it results in.
func TestParseAllLenient(t *testing.T) {
	announce := rmA(updateMsg(nil, cat(originIGP, nextHopA), hx("18 cb0071")))
	second := bmpMsg(MsgInitiation, tlv(2, "r1-renamed"))
	got, err := ParseAll(cat(upA(nil, nil), announce, initiation(), second, upA(nil, nil),
		rmA(updateMsg(hx("18 cb0072"), nil, nil)), bmpMsg(MsgPeerDown, hdrB, []byte{4})))
	if err != nil {
		t.Fatal(err)
	}
	want := state(peer(keyA, wantUpA(nil, nil), nil))
	want.Initiation = []TLV{{2, "r1-renamed"}}
	mustEqual(t, want, got)
}

func TestWhole(t *testing.T) {
	msgs := [][]byte{initiation(), upA(nil, nil), rmA(updateMsg(nil, cat(originIGP, nextHopA), hx("18 cb0071")))}
	stream := cat(msgs...)
	for cut := 0; cut <= len(stream); cut++ {
		want := 0
		for _, m := range msgs {
			if want+len(m) > cut {
				break
			}
			want += len(m)
		}
		if got := len(Whole(stream[:cut])); got != want {
			t.Fatalf("cut at %d: %d bytes whole, want %d", cut, got, want)
		}
	}
	if got := Whole(hx("03 00000005 04 03 00000006 04")); len(got) != 0 {
		t.Fatalf("a length below the header: %x", got)
	}
}
