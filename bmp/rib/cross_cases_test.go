package rib_test

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/bmpproxy/bmpproxy/bmp/rib"
)

// Streams where bmp/rib and internal/bmpcheck once disagreed, or may
// legitimately differ; crossCheck must pass on each, and the Router must
// end in the State the case names.
func TestReplayMatchesIndependentParserCases(t *testing.T) {
	for _, c := range crossCases() {
		t.Run(c.name, func(t *testing.T) {
			crossCheck(t, c.stream)
			r := rib.NewRouter(nil, "case")
			r.Feed(c.stream)
			if st := r.Status(); st.State != c.state {
				t.Fatalf("status %v (%v), want %v", st.State, st.Err, c.state)
			}
		})
	}
}

type crossCase struct {
	name   string
	stream []byte
	state  rib.State
}

func crossCases() []crossCase {
	v4, post, locRIB := hdr(0, 0, "198.51.100.1", 64501), hdr(0, 0x40, "198.51.100.1", 64501), hdr(3, 0, "0.0.0.0", 64500)
	mp := capab(1, 0, 1, 0, 1)
	routes := rmsg(v4, bgpUpdate(nil, cat(origin, nextHop), pfx(24, 203, 0, 113)))
	return []crossCase{
		{"plain", cat(initiation, peerUp(v4, mp, mp), routes), rib.Keeping},
		{"route monitoring of a view whose peer is up without its flags", cat(initiation, peerUp(v4, mp, mp),
			rmsg(post, bgpUpdate(nil, cat(origin, nextHop), pfx(24, 203, 0, 113)))), rib.Keeping},
		{"peer down naming another view of the peer", cat(initiation, peerUp(post, mp, mp),
			rmsg(post, bgpUpdate(nil, cat(origin, nextHop), pfx(24, 203, 0, 113))), peerDown(v4)), rib.Keeping},
		{"a malformed statistics report", cat(initiation, peerUp(v4, mp, mp), routes,
			bmpMsg(1, v4, []byte{0, 0, 0, 1, 0, 7, 0, 8})), rib.Keeping},
		{"a malformed route mirroring before routes", cat(initiation, peerUp(v4, mp, mp),
			bmpMsg(6, v4, []byte{0, 0, 0, 9}), routes), rib.Keeping},
		{"bytes after the termination", cat(initiation, peerUp(v4, mp, mp), routes, bmpMsg(5), []byte{3, 0}), rib.Keeping},
		{"the last message incomplete", cat(initiation, peerUp(v4, mp, mp), routes[:len(routes)-2]), rib.Keeping},
		{"evpn", cat(initiation, peerUp(v4, mp, mp), rmsg(v4, bgpUpdate(nil,
			cat(attr(0x80, 14, 0, 25, 70, 4, 198, 51, 100, 1, 0, 1, 1, 0), origin), nil))), rib.Unkeyable},
		{"loc-rib add-path with send/receive 0", cat(initiation,
			peerUp(locRIB, cat(mp, capab(69, 0, 1, 1, 0)), cat(mp, capab(69, 0, 1, 1, 0))),
			rmsg(locRIB, bgpUpdate(nil, cat(origin, nextHop), pfx(24, 203, 0, 113)))), rib.Keeping},
		{"add-path with send/receive 7", cat(initiation,
			peerUp(v4, cat(mp, capab(69, 0, 1, 1, 7)), cat(mp, capab(69, 0, 1, 1, 7))), routes), rib.Keeping},
		{"add-path twice for a family", cat(initiation,
			peerUp(v4, cat(mp, capab(69, 0, 1, 1, 2, 0, 1, 1, 1)), cat(mp, capab(69, 0, 1, 1, 2))),
			rmsg(v4, bgpUpdate(nil, cat(origin, nextHop), cat([]byte{0, 0, 0, 7}, pfx(24, 203, 0, 113))))), rib.Keeping},
	}
}

// Wire builders (RFC 7854, 4271, 4760).

var (
	initiation = bmpMsg(4, []byte{0, 2, 0, 2, 'r', '1'})
	origin     = attr(0x40, 1, 0)
	nextHop    = attr(0x40, 3, 198, 51, 100, 1)
)

func cat(b ...[]byte) []byte {
	var out []byte
	for _, x := range b {
		out = append(out, x...)
	}
	return out
}

func bmpMsg(typ byte, body ...[]byte) []byte {
	b := cat(body...)
	return cat([]byte{3}, binary.BigEndian.AppendUint32(nil, uint32(6+len(b))), []byte{typ}, b)
}

// hdr is a per-peer header (timestamp zero) of an IPv4 peer whose BGP ID is
// its address.
func hdr(typ, flags byte, addr string, as uint32) []byte {
	a := netip.MustParseAddr(addr).As4()
	h := []byte{typ, flags, 0, 0, 0, 0, 0, 0, 0, 0}
	h = append(h, make([]byte, 12)...)
	h = append(h, a[:]...)
	h = binary.BigEndian.AppendUint32(h, as)
	h = append(h, a[:]...)
	return append(h, make([]byte, 8)...)
}

func bgpMsg(typ byte, body []byte) []byte {
	m := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	m = binary.BigEndian.AppendUint16(m, uint16(19+len(body)))
	return append(append(m, typ), body...)
}

func capab(code byte, v ...byte) []byte { return append([]byte{code, byte(len(v))}, v...) }

// open is an OPEN of AS 64500, ID 198.51.100.254, with caps in one
// Capabilities parameter.
func open(caps ...[]byte) []byte {
	c := cat(caps...)
	return bgpMsg(1, cat([]byte{4, 0xfb, 0xf4, 0, 90, 198, 51, 100, 254, byte(2 + len(c)), 2, byte(len(c))}, c))
}

func peerUp(h, sent, recv []byte) []byte {
	return bmpMsg(3, h, make([]byte, 16), []byte{0, 179, 0x9c, 0x41}, open(sent), open(recv))
}

func peerDown(h []byte) []byte { return bmpMsg(2, h, []byte{2, 0, 0}) }

func rmsg(h, update []byte) []byte { return bmpMsg(0, h, update) }

func bgpUpdate(withdrawn, attrs, nlri []byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(len(withdrawn)))
	b = append(b, withdrawn...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(attrs)))
	return bgpMsg(2, cat(b, attrs, nlri))
}

func attr(flags, typ byte, v ...byte) []byte { return append([]byte{flags, typ, byte(len(v))}, v...) }

func pfx(bits byte, addr ...byte) []byte { return append([]byte{bits}, addr[:(bits+7)/8]...) }
