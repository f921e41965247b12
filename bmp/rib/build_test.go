package rib

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/bmpproxy/bmpproxy/bmp"
)

// Builders of BMP and BGP messages for tests. They panic on impossible
// input; the bytes they make are what a router sends.

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

func u16(v int) []byte    { return binary.BigEndian.AppendUint16(nil, uint16(v)) }
func u32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

func bmpMsg(typ bmp.Type, body ...[]byte) []byte {
	b := cat(body...)
	return cat([]byte{bmp.Version}, u32(uint32(len(b)+bmp.HeaderLen)), []byte{byte(typ)}, b)
}

func initiation(name string) []byte { return bmp.EncodeInitiation("test router", name) }

func termination() []byte { return bmpMsg(bmp.TypeTermination, u16(1), u16(2), u16(0)) }

// peerHdr describes a per-peer header.
type peerHdr struct {
	typ   uint8
	flags uint8
	rd    uint64
	addr  string
	as    uint32
	id    string
	ts    uint32
}

func (h peerHdr) bytes() []byte {
	b := make([]byte, perPeerLen)
	b[0], b[1] = h.typ, h.flags
	binary.BigEndian.PutUint64(b[2:], h.rd)
	if h.addr != "" {
		a := netip.MustParseAddr(h.addr)
		if a.Is6() {
			b[1] |= flagV
			copy(b[10:26], a.AsSlice())
		} else {
			copy(b[22:26], a.AsSlice())
		}
	}
	binary.BigEndian.PutUint32(b[26:], h.as)
	if h.id != "" {
		copy(b[30:34], netip.MustParseAddr(h.id).AsSlice())
	}
	binary.BigEndian.PutUint32(b[34:], h.ts)
	return b
}

func (h peerHdr) with(flags uint8) peerHdr { h.flags |= flags; return h }

func bgpMsg(typ byte, body ...[]byte) []byte {
	b := cat(body...)
	m := slices.Repeat([]byte{0xff}, 16)
	return cat(m, u16(len(b)+bgpHdrLen), []byte{typ}, b)
}

// Capabilities.
func capb(code byte, v ...byte) []byte { return append([]byte{code, byte(len(v))}, v...) }
func capAS4(as uint32) []byte          { return capb(65, u32(as)...) }
func capMP(afi int, safi byte) []byte  { return capb(1, byte(afi>>8), byte(afi), 0, safi) }
func capExt() []byte                   { return capb(capExtMessage) }
func capAP(e ...apEntry) []byte {
	var v []byte
	for _, x := range e {
		v = append(v, byte(x.afi>>8), byte(x.afi), x.safi, x.mode)
	}
	return capb(capAddPath, v...)
}
func capML(afi int, safi, count byte) []byte {
	return capb(capMultiLabel, byte(afi>>8), byte(afi), safi, count)
}

type apEntry struct {
	afi  int
	safi byte
	mode byte
}

func openMsg(as uint32, id string, caps ...[]byte) []byte {
	c := cat(caps...)
	var params []byte
	if len(c) > 0 {
		params = cat([]byte{2, byte(len(c))}, c)
	}
	as2 := as
	if as2 > 65535 {
		as2 = 23456
	}
	return bgpMsg(bgpOpen, []byte{4}, u16(int(as2)), u16(90), netip.MustParseAddr(id).AsSlice(),
		[]byte{byte(len(params))}, params)
}

// openMsgExt is an OPEN whose optional parameters use the RFC 9072
// extended encoding (255, 255, 2-byte length; 2-byte parameter lengths).
func openMsgExt(as uint32, id string, caps ...[]byte) []byte {
	c := cat(caps...)
	params := cat([]byte{2}, u16(len(c)), c)
	return bgpMsg(bgpOpen, []byte{4}, u16(int(as)), u16(90), netip.MustParseAddr(id).AsSlice(),
		[]byte{255, 255}, u16(len(params)), params)
}

func peerUpMsg(h peerHdr, sent, recv []byte, tlvs ...[]byte) []byte {
	return bmpMsg(bmp.TypePeerUp, h.bytes(), make([]byte, 16), u16(179), u16(40000), sent, recv, cat(tlvs...))
}

// peerUp is a Peer Up whose two OPENs advertise sent and recv capabilities
// (4-byte AS always).
func peerUp(h peerHdr, sent, recv [][]byte) []byte {
	return peerUpMsg(h,
		openMsg(65000, "203.0.113.254", append([][]byte{capAS4(65000)}, sent...)...),
		openMsg(h.as, "203.0.113.1", append([][]byte{capAS4(h.as)}, recv...)...))
}

func peerDown(h peerHdr) []byte { return bmpMsg(bmp.TypePeerDown, h.bytes(), []byte{2}, u16(0)) }

func rm(h peerHdr, update []byte) []byte { return bmpMsg(bmp.TypeRouteMonitoring, h.bytes(), update) }

func update(withdrawn, attrs, nlri []byte) []byte {
	return bgpMsg(bgpUpdate, u16(len(withdrawn)), withdrawn, u16(len(attrs)), attrs, nlri)
}

// Path attributes.
func attr(flags, typ byte, v ...[]byte) []byte {
	b := cat(v...)
	if len(b) > 255 {
		return cat([]byte{flags | attrExtLen, typ}, u16(len(b)), b)
	}
	return cat([]byte{flags &^ attrExtLen, typ, byte(len(b))}, b)
}
func origin() []byte { return attr(0x40, 1, []byte{0}) }
func asPath(asns ...uint32) []byte {
	b := []byte{2, byte(len(asns))}
	for _, a := range asns {
		b = append(b, u32(a)...)
	}
	return attr(0x40, 2, b)
}
func nextHop(a string) []byte { return attr(0x40, 3, netip.MustParseAddr(a).AsSlice()) }
func med(v uint32) []byte     { return attr(0x80, 4, u32(v)) }
func community(v ...uint32) []byte {
	var b []byte
	for _, c := range v {
		b = append(b, u32(c)...)
	}
	return attr(0xc0, 8, b)
}

func mpReach(afi int, safi byte, nh string, nlri ...[]byte) []byte {
	var h []byte
	for _, s := range strings.Split(nh, ",") {
		if s != "" {
			h = append(h, netip.MustParseAddr(s).AsSlice()...)
		}
	}
	return attr(0x80, attrMPReach, u16(afi), []byte{safi, byte(len(h))}, h, []byte{0}, cat(nlri...))
}

func mpUnreach(afi int, safi byte, nlri ...[]byte) []byte {
	return attr(0x80, attrMPUnrch, u16(afi), []byte{safi}, cat(nlri...))
}

// pfx encodes prefix s as NLRI.
func pfx(s string) []byte {
	p := netip.MustParsePrefix(s)
	return append([]byte{byte(p.Bits())}, p.Addr().AsSlice()[:(p.Bits()+7)/8]...)
}

// pfxID encodes s with ADD-PATH path id.
func pfxID(id uint32, s string) []byte { return append(u32(id), pfx(s)...) }

// label encodes one MPLS label entry; bos sets bottom of stack.
func label(v uint32, bos bool) []byte {
	b := []byte{byte(v >> 12), byte(v >> 4), byte(v << 4)}
	if bos {
		b[2] |= 1
	}
	return b
}

// lpfx encodes s with the label entries ls (RFC 8277) and optionally an RD
// (RFC 4364), as one NLRI.
func lpfx(ls []byte, rd []byte, s string) []byte {
	p := pfx(s)
	return cat([]byte{p[0] + byte(8*len(ls)+8*len(rd))}, ls, rd, p[1:])
}

func rd(admin uint16, n uint32) []byte { return cat(u16(0), u16(int(admin)), u32(n)) }

// dump is a canonical text of r's state: what a collector would hold.
func dump(r *Router) string {
	var b strings.Builder
	fmt.Fprintf(&b, "status %s\n", r.status.State)
	if r.init != nil {
		fmt.Fprintf(&b, "init %x\n", r.init)
	}
	for _, p := range r.order {
		fmt.Fprintf(&b, "peer %s up %x\n", headerOf(p.key), p.up)
		for _, v := range p.views {
			fmt.Fprintf(&b, " view %x\n", v.key)
			for _, t := range v.tables {
				fmt.Fprintf(&b, "  table %s addpath=%v routes=%d\n", t.fam, t.addPath, t.routes)
				for _, l := range tableLines(r, t) {
					fmt.Fprintf(&b, "   %s\n", l)
				}
			}
		}
	}
	return b.String()
}

// tableLines lists t's routes, sorted: prefix, path id, RD, labels and the
// attribute set (next hop, MED, then all bytes in hex).
func tableLines(r *Router, t *table) []string {
	var out []string
	t.rt.each(func(n *nlri, attr, lbl uint32) {
		out = append(out, routeLine(r, t, n, attr, lbl))
	})
	slices.Sort(out)
	return out
}

func routeLine(r *Router, t *table, n *nlri, attr, lbl uint32) string {
	var b strings.Builder
	a := netip.AddrFrom16(n.addr)
	if !t.kind.v6() {
		a = netip.AddrFrom4([4]byte(n.addr[:4]))
	}
	if t.kind.vpn() {
		fmt.Fprintf(&b, "rd=%x ", n.rd)
	}
	fmt.Fprintf(&b, "%s/%d", a, n.plen)
	if t.addPath {
		fmt.Fprintf(&b, "#%d", n.id)
	}
	if t.kind.labeled() {
		fmt.Fprintf(&b, " label=%x", labelBytes(nil, lbl, r.labels.data))
	}
	fmt.Fprintf(&b, " %s", describeAttrs(r.attrs.data[attr]))
	return b.String()
}

// brief lists r's routes as "view family route next-hop [med]", sorted,
// without the attribute bytes: the form table tests compare.
func brief(r *Router) []string {
	var out []string
	for _, p := range r.order {
		for _, v := range p.views {
			for _, t := range v.tables {
				for _, l := range tableLines(r, t) {
					if i := strings.Index(l, " ["); i >= 0 {
						l = l[:i]
					}
					out = append(out, viewName(v.key)+" "+t.fam.String()+" "+l)
				}
			}
		}
	}
	slices.Sort(out)
	return out
}

// viewName is a short name of a view for brief: the peer address (or
// "loc-rib") and its view flags.
func viewName(k pkey) string {
	h := headerOf(k)
	s := h.Address.String()
	if h.Type == peerLocRIB {
		s = "loc-rib"
	}
	if h.Type < peerLocRIB && h.Flags&flagL != 0 {
		s += "/post"
	}
	if isOut(k) {
		s += "/out"
	}
	return s
}

// describeAttrs names an interned attribute set by its next hop and MED and
// shows its bytes.
func describeAttrs(as string) string {
	var nh string
	rest := as[1:]
	if as[0] == tagMPReach {
		l := int(as[1])
		nh = hex.EncodeToString([]byte(as[2 : 2+l]))
		if a, ok := netip.AddrFromSlice([]byte(as[2 : 2+l])); ok {
			nh = a.String()
		} else if l == 32 {
			nh = netip.AddrFrom16([16]byte([]byte(as[2:18]))).String() + "," + netip.AddrFrom16([16]byte([]byte(as[18:34]))).String()
		}
		nh = "mp-nh=" + nh
		rest = as[2+l:]
	}
	var medv string
	for b := []byte(rest); len(b) >= 3; {
		hl := pick(b[0]&attrExtLen != 0, 4, 3)
		if len(b) < hl {
			break
		}
		n := int(b[2])
		if hl == 4 {
			n = int(binary.BigEndian.Uint16(b[2:]))
		}
		if n > len(b)-hl {
			break
		}
		v := b[hl : hl+n]
		switch {
		case b[1] == 3 && as[0] != tagMPReach:
			a, _ := netip.AddrFromSlice(v)
			nh = "nh=" + a.String()
		case b[1] == 4 && n == 4:
			medv = fmt.Sprintf(" med=%d", binary.BigEndian.Uint32(v))
		}
		b = b[hl+n:]
	}
	return fmt.Sprintf("%s%s [%x]", nh, medv, rest)
}

// feedAll feeds msgs as one stream in pieces of at most chunk bytes.
func feedAll(r *Router, chunk int, msgs ...[]byte) {
	s := cat(msgs...)
	for len(s) > 0 {
		n := min(chunk, len(s))
		r.Feed(s[:n])
		s = s[n:]
	}
}
