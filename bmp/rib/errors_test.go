package rib

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/bmpproxy/bmpproxy/bmp"
)

// withBGP returns a Route Monitoring of hdrV4 around the BGP message bgp.
func withBGP(bgp []byte) []byte { return rm(hdrV4, bgp) }

// rawUpdate is a BGP UPDATE with an explicit body, lengths unchecked.
func rawUpdate(body ...[]byte) []byte { return bgpMsg(bgpUpdate, body...) }

func TestMalformed(t *testing.T) {
	const bgpAt = bmp.HeaderLen + perPeerLen // a Route Monitoring's BGP message
	const bodyAt = bgpAt + bgpHdrLen
	badMarker := withBGP(update(nil, cat(attrsA, nhA), pfx("10.0.0.0/8")))
	badMarker[bgpAt+3] = 0
	trailing := withBGP(update(nil, cat(attrsA, nhA), pfx("10.0.0.0/8")))
	trailing = append(trailing, 0)
	trailing[4]++ // BMP length covers the extra byte
	openBadMarker := peerUp(hdrV6, nil, nil)
	openBadMarker[bmp.HeaderLen+perPeerLen+20] = 0
	openOptLen := peerUpMsg(hdrV6, bgpMsg(bgpOpen, []byte{4}, u16(65000), u16(90), u32(1), []byte{3}, []byte{2, 0}), openMsg(65006, "203.0.113.6"))
	capOverflow := peerUpMsg(hdrV6, openMsg(65000, "203.0.113.6", capb(1, 0, 1, 0, 1)[:3]), openMsg(65006, "203.0.113.6"))
	apPeer := peerUp(hdrAP, [][]byte{capAP(apEntry{1, 1, 3})}, [][]byte{capAP(apEntry{1, 1, 3})})

	tests := []struct {
		name   string
		pre    [][]byte // before the bad message, after Initiation and hdrV4's Peer Up
		msg    []byte
		reason string
		pos    int // byte of the problem in msg; -1: a framing problem, no byte
	}{
		{"bmp version", nil, []byte{4, 0, 0, 0, 6, 0}, "BMP version 4 (want 3)", -1},
		{"bmp length too small", nil, []byte{3, 0, 0, 0, 5, 0}, "bad length: BMP message length 5", -1},
		{"bmp length too large", nil, []byte{3, 0, 0x20, 0, 0, 0}, "bad length: BMP message length 2097152", -1},
		{"short for a per-peer header", nil, bmpMsg(bmp.TypeRouteMonitoring, make([]byte, 10)), "too short for a per-peer header", 0},
		{"bad BGP marker", nil, badMarker, "bad BGP marker", bgpAt + 3},
		{"BGP length short of the BMP message", nil, trailing, "bad length: BGP length", bgpAt + 16},
		{"not an UPDATE", nil, withBGP(bgpMsg(4)), "BGP message type 4 (want 2)", bgpAt + 18},
		{"truncated UPDATE", nil, withBGP(rawUpdate(u16(0))), "UPDATE of 21 bytes, too short", bodyAt},
		{"withdrawn length", nil, withBGP(rawUpdate(u16(100), u16(0))), "withdrawn routes length 100, 0 bytes left", bodyAt},
		{"attributes length", nil, withBGP(rawUpdate(u16(0), u16(9), origin())), "path attributes length 9, 4 bytes left", bodyAt + 2},
		{"truncated attribute", nil, withBGP(rawUpdate(u16(0), u16(7), origin(), []byte{0x40, 2, 50})), "truncated attribute: type 2 claims 50 bytes, 0 left", bodyAt + 4 + 4},
		{"truncated attribute header", nil, withBGP(rawUpdate(u16(0), u16(2), []byte{0x50, 2})), "truncated attribute: 2 bytes left for a 4-byte attribute header", bodyAt + 4},
		{"prefix too long", nil, withBGP(update(nil, cat(attrsA, nhA), []byte{33, 10, 0, 0, 0, 0})), "ipv4-unicast NLRI: prefix length 33 exceeds 32", bodyAt + 4 + len(attrsA) + len(nhA)},
		{"truncated prefix", nil, withBGP(update(nil, cat(attrsA, nhA), cat(pfx("10.0.0.0/8"), []byte{24, 10, 1}))), "ipv4-unicast NLRI: truncated prefix", bodyAt + 4 + len(attrsA) + len(nhA) + 2},
		{"truncated withdrawn prefix", nil, withBGP(update([]byte{16, 10}, nil, nil)), "ipv4-unicast withdrawn NLRI: truncated prefix", bodyAt + 2},
		{"mp_reach too short", nil, withBGP(update(nil, attr(0x80, 14, []byte{0, 2, 1}), nil)), "MP_REACH_NLRI of 3 bytes, too short", bodyAt + 4 + 3},
		{"next hop length", nil, withBGP(update(nil, attr(0x80, 14, []byte{0, 2, 1, 40, 0}), nil)), "next hop length 40, 0 bytes left", bodyAt + 4 + 3 + 3},
		{"mp_unreach too short", nil, withBGP(update(nil, attr(0x80, 15, []byte{0, 2}), nil)), "MP_UNREACH_NLRI of 2 bytes, too short", bodyAt + 4 + 3},
		{"mp_reach repeated", nil, withBGP(update(nil, cat(mpReach(2, 1, "2001:db8::1"), mpReach(2, 1, "2001:db8::1")), nil)), "attribute type 14 repeated", bodyAt + 4 + 24},
		{"truncated label", nil, withBGP(update(nil, mpReach(1, 4, "198.51.100.1", []byte{20, 0, 0}), nil)), "ipv4-labeled-unicast NLRI: truncated label", bodyAt + 4 + 3 + 9},
		{"truncated route distinguisher", nil, withBGP(update(nil, mpReach(1, 128, "198.51.100.1", []byte{88, 0, 6, 0x41, 0, 0}), nil)), "ipv4-vpn NLRI: truncated route distinguisher", bodyAt + 4 + 3 + 9},
		{"truncated path id", [][]byte{apPeer}, rm(hdrAP, update(nil, cat(attrsA, nhA), []byte{0, 0, 1})), "ipv4-unicast NLRI: truncated path identifier", bodyAt + 4 + len(attrsA) + len(nhA)},
		{"peer up too short", nil, bmpMsg(bmp.TypePeerUp, hdrV6.bytes(), make([]byte, 10)), "too short for a Peer Up", 0},
		{"peer up OPEN marker", nil, openBadMarker, "bad BGP marker", bmp.HeaderLen + perPeerLen + 20},
		{"peer up OPEN parameters length", nil, openOptLen, "OPEN optional parameters length 3, 2 bytes follow", bmp.HeaderLen + perPeerLen + 20 + bgpHdrLen + 9},
		{"peer up capability length", nil, capOverflow, "capability 1 length 4, 1 bytes left", bmp.HeaderLen + perPeerLen + 20 + bgpHdrLen + 10 + 2},
		{"peer up not an OPEN", nil, peerUpMsg(hdrV6, bgpMsg(4), bgpMsg(4)), "BGP message type 4 (want 1)", bmp.HeaderLen + perPeerLen + 20 + 18},
		{"peer up information TLV", nil, cat(peerUp(hdrV6, nil, nil)[:4], []byte{peerUp(hdrV6, nil, nil)[4] + 5}, peerUp(hdrV6, nil, nil)[5:], []byte{0, 0, 0, 9, 1}), "information TLV length 9, 1 bytes left", len(peerUp(hdrV6, nil, nil))},
		{"peer down too short", nil, bmpMsg(bmp.TypePeerDown, hdrV4.bytes()), "too short for a Peer Down", 0},
		{"initiation TLV", nil, bmpMsg(bmp.TypeInitiation, u16(0), u16(10), []byte("abc")), "malformed TLV", bmp.HeaderLen},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := cat(initiation("r1"), peerUp(hdrV4, allMP, allMP), cat(tt.pre...))
			off := len(base)
			r := NewRouter(nil, "router [2001:db8::1]:40000")
			stream := cat(base, tt.msg, peerUp(hdrV6, nil, nil))
			feedAll(r, 7, stream)
			st := r.Status()
			if st.State != Failed || !errors.Is(st.Err, ErrMalformed) {
				t.Fatalf("status %v, err %v; want failed", st.State, st.Err)
			}
			msg := st.Err.Error()
			if !strings.HasPrefix(msg, "router [2001:db8::1]:40000: malformed BMP message") || !strings.Contains(msg, tt.reason) || !strings.Contains(st.Reason, tt.reason) {
				t.Fatalf("error %q (reason %q), want the router and %q", msg, st.Reason, tt.reason)
			}
			want := fmt.Sprintf("at offset %d:", off)
			if tt.pos >= 0 {
				want = fmt.Sprintf("at offset %d, byte %d:", off, off+tt.pos)
			}
			if !strings.Contains(msg, want) {
				t.Fatalf("error %q, want %q", msg, want)
			}
			checkStopped(t, r, len(stream), ErrMalformed)
		})
	}
}

// checkStopped checks what a Router that stopped keeping does: no state,
// no pending bytes, no memory, a Snapshot error wrapping cause, and Feed
// that still counts bytes.
func checkStopped(t *testing.T, r *Router, fed int, cause error) {
	t.Helper()
	if _, err := r.Snapshot(); !errors.Is(err, ErrNotKeeping) || !errors.Is(err, cause) {
		t.Errorf("Snapshot error %v, want ErrNotKeeping and %v", err, cause)
	}
	r.Feed([]byte{1, 2, 3})
	st := r.Stats()
	if st.Offset != int64(fed)+3 || st.Peers != 0 || st.Routes != 0 || st.Bytes != 0 || r.mem.Used() != 0 {
		t.Errorf("after stopping: %+v, memory %d", st, r.mem.Used())
	}
	if r.Pending() != nil {
		t.Error("Pending not nil")
	}
}

func TestUnkeyable(t *testing.T) {
	evpn := []byte{2, 33, make([]byte, 33)[0]}
	evpn = append(evpn, make([]byte, 32)...)
	tests := []struct {
		name   string
		msgs   [][]byte
		reason string
	}{
		{"evpn routes", [][]byte{rm(hdrV4, update(nil, cat(mpReach(25, 70, "198.51.100.1", evpn), attrsA), nil))}, "l2vpn-evpn routes"},
		{"evpn withdrawal", [][]byte{rm(hdrV4, update(nil, mpUnreach(25, 70, evpn), nil))}, "l2vpn-evpn routes"},
		{"flowspec", [][]byte{rm(hdrV4, update(nil, cat(mpReach(1, 133, "", []byte{5, 1, 24, 10, 0, 0}), attrsA), nil))}, "ipv4-flowspec routes"},
		{"bgp-ls", [][]byte{rm(hdrV4, update(nil, cat(mpReach(16388, 71, "198.51.100.1", []byte{0, 1, 0, 0}), attrsA), nil))}, "bgp-ls routes"},
		{"unknown family", [][]byte{rm(hdrV4, update(nil, cat(mpReach(3, 1, "198.51.100.1", []byte{8, 1}), attrsA), nil))}, "afi-3-safi-1 routes"},
		{"route for a peer not up", [][]byte{rm(hdrV6, update(nil, cat(attrsA, nhA), pfx("10.0.0.0/8")))}, "routes for 2001:db8::2 AS4200000002 id 198.51.100.2 pre-policy, which is not up"},
		{"unknown message type", [][]byte{bmpMsg(7, []byte{1, 2})}, "BMP message type 7"},
		{"unknown peer type", [][]byte{peerUp(peerHdr{typ: 4, addr: "198.51.100.9", as: 1, id: "198.51.100.9"}, nil, nil)}, "peer type 4"},
		{"peer up after its routes were kept under another", [][]byte{
			rm(hdrV4.with(flagL), update(nil, cat(attrsA, nhA), pfx("10.0.0.0/8"))),
			peerUp(hdrV4.with(flagL), nil, nil),
		}, "Peer Up for 198.51.100.1 AS65001 id 198.51.100.1 post-policy after its routes were kept under peer 198.51.100.1 AS65001 id 198.51.100.1 pre-policy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := cat(initiation("r1"), peerUp(hdrV4, allMP, allMP), rm(hdrV4, update(nil, cat(attrsA, nhA), pfx("10.9.0.0/16"))))
			m := NewMemory(0)
			r := NewRouter(m, "router r1")
			stream := cat(base, cat(tt.msgs...),
				// A second reason later does not replace the first.
				rm(hdrV4, update(nil, mpUnreach(25, 65, []byte{1, 2, 3}), nil)))
			r.Feed(stream)
			st := r.Status()
			if st.State != Unkeyable || !errors.Is(st.Err, ErrUnkeyable) || st.Reason != tt.reason {
				t.Fatalf("status %v reason %q err %v; want unkeyable %q", st.State, st.Reason, st.Err, tt.reason)
			}
			off := len(base) + len(cat(tt.msgs[:len(tt.msgs)-1]...))
			if want := fmt.Sprintf("router r1: state cannot be kept: %s (", tt.reason); !strings.HasPrefix(st.Err.Error(), want) ||
				!strings.HasSuffix(st.Err.Error(), fmt.Sprintf(" message at offset %d)", off)) {
				t.Fatalf("error %q, want %q... at offset %d", st.Err, want, off)
			}
			checkStopped(t, r, len(stream), ErrUnkeyable)
		})
	}
}
