package main

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"strconv"
)

// A generator of the full-table-like BMP workload of issue 17: per peer
// v4 IPv4 and v6 IPv6 unicast prefixes, the same prefixes for every peer
// (as in a full table), with attrSets distinct attribute sets shared out
// evenly among the peers. IPv4 routes ride in the NLRI field, IPv6 ones in
// MP_REACH_NLRI; each UPDATE carries the routes of one attribute set,
// packed up to 4096 bytes. Each peer's dump ends with an End-of-RIB per
// family. The streams are deterministic.

// tableSpec sizes the workload.
type tableSpec struct {
	peers, v4, v6, attrSets int
}

func (s tableSpec) String() string {
	return fmt.Sprintf("%d peers × (%s IPv4 + %s IPv6 prefixes), %s attribute sets",
		s.peers, thousands(s.v4), thousands(s.v6), thousands(s.attrSets))
}

// thousands writes n with commas.
func thousands(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// routes is the number of routes the whole workload announces.
func (s tableSpec) routes() int { return s.peers * (s.v4 + s.v6) }

// prefixSet is the prefixes every peer announces, kept compact.
type prefixSet struct {
	v4 []uint64   // address<<8 | length
	v6 [][17]byte // address, then length
}

func (s tableSpec) prefixes() *prefixSet {
	rng := rand.New(rand.NewPCG(17, 4))
	p := &prefixSet{v4: make([]uint64, 0, s.v4), v6: make([][17]byte, 0, s.v6)}
	seen := make(map[uint64]struct{}, s.v4)
	lens4 := []int{24, 24, 24, 24, 24, 23, 22, 22, 21, 20, 19, 18, 16}
	for len(p.v4) < s.v4 {
		bits := lens4[rng.IntN(len(lens4))]
		a := rng.Uint32() &^ (1<<(32-bits) - 1)
		k := uint64(a)<<8 | uint64(bits)
		if _, dup := seen[k]; !dup {
			seen[k] = struct{}{}
			p.v4 = append(p.v4, k)
		}
	}
	seen6 := make(map[[17]byte]struct{}, s.v6)
	lens6 := []int{48, 48, 48, 48, 44, 40, 36, 32, 29, 64}
	for len(p.v6) < s.v6 {
		bits := lens6[rng.IntN(len(lens6))]
		var e [17]byte
		binary.BigEndian.PutUint64(e[:], 0x2000_0000_0000_0000|rng.Uint64()>>4)
		binary.BigEndian.PutUint64(e[8:], rng.Uint64())
		for i := bits; i < 128; i++ {
			e[i/8] &^= 0x80 >> (i % 8)
		}
		e[16] = byte(bits)
		if _, dup := seen6[e]; !dup {
			seen6[e] = struct{}{}
			p.v6 = append(p.v6, e)
		}
	}
	return p
}

// stream is the whole workload as one router's BMP stream: an Initiation,
// then each peer's Peer Up and dump in turn.
func (s tableSpec) stream() []byte {
	ps := s.prefixes()
	out := initiationMsg("bench", "bmpproxy bench full-table workload")
	for i := range s.peers {
		out = s.appendPeer(out, ps, i)
	}
	return out
}

// BMP and BGP wire constants (RFC 7854, RFC 4271, RFC 4760, RFC 6793).
const (
	bmpVersion     = 3
	bmpRouteMon    = 0
	bmpPeerUp      = 3
	bmpInitiation  = 4
	bmpCommonLen   = 6
	bmpPerPeerLen  = 42
	bgpMarkerLen   = 16
	bgpHeaderLen   = 19
	bgpMaxLen      = 4096
	bgpOpenType    = 1
	bgpUpdateType  = 2
	attrOrigin     = 1
	attrASPath     = 2
	attrNextHop    = 3
	attrMED        = 4
	attrCommunity  = 8
	attrMPReach    = 14
	attrMPUnreach  = 15
	flagOptional   = 0x80
	flagTransitive = 0x40
	flagExtLen     = 0x10
	routerAS       = 64500
)

// peerHeader is peer i's per-peer header: a global IPv4 peer, pre-policy
// Adj-RIB-In, timestamp zero.
func peerHeader(i int) []byte {
	h := make([]byte, bmpPerPeerLen)
	// type 0, flags 0, distinguisher 0; the IPv4 address in the last 4
	// bytes of the 16-byte field.
	copy(h[10+12:], peerAddr(i))
	binary.BigEndian.PutUint32(h[26:], peerAS(i))
	copy(h[30:], peerAddr(i))
	return h
}

func peerAddr(i int) []byte { return []byte{198, 51, 100, byte(1 + i%250)} }
func peerAS(i int) uint32   { return uint32(65001 + i) }

func bmpMsg(typ byte, body ...[]byte) []byte {
	n := bmpCommonLen
	for _, b := range body {
		n += len(b)
	}
	out := make([]byte, bmpCommonLen, n)
	out[0] = bmpVersion
	binary.BigEndian.PutUint32(out[1:], uint32(n))
	out[5] = typ
	for _, b := range body {
		out = append(out, b...)
	}
	return out
}

func bgpMsg(typ byte, body []byte) []byte {
	out := make([]byte, bgpHeaderLen, bgpHeaderLen+len(body))
	for i := range bgpMarkerLen {
		out[i] = 0xff
	}
	binary.BigEndian.PutUint16(out[16:], uint16(bgpHeaderLen+len(body)))
	out[18] = typ
	return append(out, body...)
}

func tlv(typ uint16, v string) []byte {
	b := binary.BigEndian.AppendUint16(nil, typ)
	b = binary.BigEndian.AppendUint16(b, uint16(len(v)))
	return append(b, v...)
}

// initiationMsg carries sysName and sysDescr (RFC 7854 §4.3).
func initiationMsg(name, descr string) []byte {
	return bmpMsg(bmpInitiation, tlv(2, name), tlv(1, descr))
}

// openMsg is an OPEN offering IPv4 and IPv6 unicast and 4-byte AS numbers.
func openMsg(as uint32, id []byte) []byte {
	var caps []byte
	for _, afi := range []uint16{1, 2} {
		caps = append(caps, 1, 4) // Multiprotocol
		caps = binary.BigEndian.AppendUint16(caps, afi)
		caps = append(caps, 0, 1)
	}
	caps = append(caps, 65, 4) // 4-octet AS
	caps = binary.BigEndian.AppendUint32(caps, as)
	body := []byte{4}
	body = binary.BigEndian.AppendUint16(body, uint16(min(as, 23456)))
	body = binary.BigEndian.AppendUint16(body, 90)
	body = append(body, id...)
	body = append(body, byte(2+len(caps)), 2, byte(len(caps)))
	return bgpMsg(bgpOpenType, append(body, caps...))
}

// peerUpMsg is peer i's Peer Up: the router's OPEN, then the peer's.
func peerUpMsg(i int) []byte {
	local := make([]byte, 16)
	copy(local[12:], []byte{198, 51, 100, 254})
	ports := binary.BigEndian.AppendUint16(nil, 179)
	ports = binary.BigEndian.AppendUint16(ports, uint16(40000+i))
	return bmpMsg(bmpPeerUp, peerHeader(i), local, ports,
		openMsg(routerAS, []byte{198, 51, 100, 254}), openMsg(peerAS(i), peerAddr(i)))
}

func attr(flags, typ byte, v []byte) []byte {
	if len(v) > 255 {
		b := []byte{flags | flagExtLen, typ}
		b = binary.BigEndian.AppendUint16(b, uint16(len(v)))
		return append(b, v...)
	}
	return append([]byte{flags, typ, byte(len(v))}, v...)
}

// attrSets returns peer i's attribute sets, without next hop: ORIGIN, a
// 4-AS AS_SEQUENCE, MED and two communities.
func attrSets(rng *rand.Rand, i, n int) [][]byte {
	sets := make([][]byte, n)
	for k := range sets {
		path := []byte{2, 4} // AS_SEQUENCE of 4
		for _, as := range []uint32{peerAS(i), uint32(64512 + rng.IntN(1000)), uint32(1 + rng.IntN(400000)), uint32(1 + rng.IntN(400000))} {
			path = binary.BigEndian.AppendUint32(path, as)
		}
		comm := binary.BigEndian.AppendUint32(nil, peerAS(i)<<16|uint32(k))
		comm = binary.BigEndian.AppendUint32(comm, 64512<<16|uint32(rng.IntN(100)))
		var s []byte
		s = append(s, attr(flagTransitive, attrOrigin, []byte{0})...)
		s = append(s, attr(flagTransitive, attrASPath, path)...)
		s = append(s, attr(flagOptional, attrMED, binary.BigEndian.AppendUint32(nil, uint32(k)))...)
		s = append(s, attr(flagOptional|flagTransitive, attrCommunity, comm)...)
		sets[k] = s
	}
	return sets
}

// routeMon is a Route Monitoring of peer i carrying an UPDATE.
func routeMon(i int, withdrawn, attrs, nlri []byte) []byte {
	body := binary.BigEndian.AppendUint16(nil, uint16(len(withdrawn)))
	body = append(body, withdrawn...)
	body = binary.BigEndian.AppendUint16(body, uint16(len(attrs)))
	body = append(body, attrs...)
	body = append(body, nlri...)
	return bmpMsg(bmpRouteMon, peerHeader(i), bgpMsg(bgpUpdateType, body))
}

// appendPeer appends peer i's Peer Up, its dump and its End-of-RIBs.
func (s tableSpec) appendPeer(out []byte, ps *prefixSet, i int) []byte {
	rng := rand.New(rand.NewPCG(uint64(i), 3))
	n := max(1, s.attrSets/s.peers)
	sets := attrSets(rng, i, n)
	out = append(out, peerUpMsg(i)...)
	by4 := make([][]uint32, n)
	for k := range ps.v4 {
		a := rng.IntN(n)
		by4[a] = append(by4[a], uint32(k))
	}
	by6 := make([][]uint32, n)
	for k := range ps.v6 {
		a := rng.IntN(n)
		by6[a] = append(by6[a], uint32(k))
	}
	nh := attr(flagTransitive, attrNextHop, peerAddr(i))
	var nlri []byte
	for a, idx := range by4 {
		attrs := append(append([]byte(nil), sets[a]...), nh...)
		room := bgpMaxLen - bgpHeaderLen - 4 - len(attrs)
		for _, k := range idx {
			p := ps.v4[k]
			bits := int(p & 0xff)
			l := 1 + (bits+7)/8
			if len(nlri)+l > room {
				out = append(out, routeMon(i, nil, attrs, nlri)...)
				nlri = nlri[:0]
			}
			var a4 [4]byte
			binary.BigEndian.PutUint32(a4[:], uint32(p>>8))
			nlri = append(append(nlri, byte(bits)), a4[:l-1]...)
		}
		if len(nlri) > 0 {
			out = append(out, routeMon(i, nil, attrs, nlri)...)
			nlri = nlri[:0]
		}
	}
	nh6 := []byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, byte(1 + i)}
	for a, idx := range by6 {
		// MP_REACH_NLRI (extended length): AFI, SAFI, next hop, reserved.
		mpFixed := 4 + 2 + 1 + 1 + len(nh6) + 1
		room := bgpMaxLen - bgpHeaderLen - 4 - len(sets[a]) - mpFixed
		flush := func() {
			v := binary.BigEndian.AppendUint16(nil, 2)
			v = append(v, 1, byte(len(nh6)))
			v = append(v, nh6...)
			v = append(v, 0)
			v = append(v, nlri...)
			mp := []byte{flagOptional | flagExtLen, attrMPReach}
			mp = binary.BigEndian.AppendUint16(mp, uint16(len(v)))
			mp = append(mp, v...)
			out = append(out, routeMon(i, nil, append(mp, sets[a]...), nil)...)
			nlri = nlri[:0]
		}
		for _, k := range idx {
			e := ps.v6[k]
			bits := int(e[16])
			l := 1 + (bits+7)/8
			if len(nlri)+l > room {
				flush()
			}
			nlri = append(append(nlri, byte(bits)), e[:l-1]...)
		}
		if len(nlri) > 0 {
			flush()
		}
	}
	// End-of-RIB (RFC 4724 §2): an empty UPDATE for IPv4 unicast, an
	// empty MP_UNREACH_NLRI for IPv6 unicast.
	out = append(out, routeMon(i, nil, nil, nil)...)
	out = append(out, routeMon(i, nil, attr(flagOptional, attrMPUnreach, []byte{0, 2, 1}), nil)...)
	return out
}
