package rib

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/bmpproxy/bmpproxy/bmp"
)

// BGP capability codes read from the Peer Up OPENs.
const (
	capMultiLabel = 8  // RFC 8277 Multiple Labels
	capExtMessage = 6  // RFC 8654
	capAddPath    = 69 // RFC 7911
)

// ADD-PATH Send/Receive values (RFC 7911 §4).
const (
	apReceive = 1
	apSend    = 2
)

// caps is what one OPEN advertised that changes how UPDATEs are read or
// written.
type caps struct {
	addPath    []famByte // Send/Receive per family
	multiLabel []famByte // label count per family
	extMsg     bool
}

type famByte struct {
	f Family
	v uint8
}

// lookupFam is the value of f's last entry in l: a later tuple for a
// family replaces an earlier one.
func lookupFam(l []famByte, f Family) uint8 {
	for i := len(l) - 1; i >= 0; i-- {
		if l[i].f == f {
			return l[i].v
		}
	}
	return 0
}

// validAddPath reports whether every Send/Receive value of the ADD-PATH
// capability value v is 1, 2 or 3. RFC 7911 §4: if any other value is
// received, the capability is treated as not understood and ignored.
func validAddPath(v []byte) bool {
	for i := 3; i < len(v); i += 4 {
		if v[i] < apReceive || v[i] > apReceive|apSend {
			return false
		}
	}
	return true
}

// addPath reports whether the NLRI of family f in a view of p carry path
// identifiers. Adj-RIB-In (the peer sends to the router): the peer's OPEN
// (received) says Send and the router's (sent) says Receive; Adj-RIB-Out
// (the O flag): the reverse. Loc-RIB (RFC 9069 §5.3): the capability's
// presence for f in the fabricated sent OPEN is enough.
func (p *peer) addPath(f Family, out bool) bool {
	s, rc := lookupFam(p.sent.addPath, f), lookupFam(p.recv.addPath, f)
	switch {
	case p.key[0] == peerLocRIB:
		return s != 0
	case out:
		return s&apSend != 0 && rc&apReceive != 0
	}
	return rc&apSend != 0 && s&apReceive != 0
}

// multiLabel reports whether both OPENs carry the Multiple Labels
// capability (RFC 8277 §2.1) for f; for Loc-RIB, the sent one.
func (p *peer) multiLabel(f Family) bool {
	s := slices.ContainsFunc(p.sent.multiLabel, func(e famByte) bool { return e.f == f })
	if p.key[0] == peerLocRIB {
		return s
	}
	return s && slices.ContainsFunc(p.recv.multiLabel, func(e famByte) bool { return e.f == f })
}

// maxUpdate is the largest UPDATE the session carries: 65535 bytes when
// both OPENs advertise extended messages (RFC 8654; for Loc-RIB the sent
// one), else 4096.
func (p *peer) maxUpdate() int {
	if p.sent.extMsg && (p.recv.extMsg || p.key[0] == peerLocRIB) {
		return maxBGPLen
	}
	return stdBGPLen
}

// checkBGP checks the BGP header at msg[off:]: marker, a length that fits
// msg (exactly, if whole), and type want. It returns the message length.
func (r *Router) checkBGP(msg []byte, off int, want byte, whole bool) (int, error) {
	b := msg[off:]
	if len(b) < bgpHdrLen {
		return 0, r.malformed(off, "truncated BGP header: %d bytes", len(b))
	}
	for i := range 16 {
		if b[i] != 0xff {
			return 0, r.malformed(off+i, "bad BGP marker")
		}
	}
	n := int(binary.BigEndian.Uint16(b[16:18]))
	switch {
	case n < bgpHdrLen || n > len(b):
		return 0, r.malformed(off+16, "bad length: BGP length %d, %d bytes left in the message", n, len(b))
	case whole && n != len(b):
		return 0, r.malformed(off+16, "bad length: BGP length %d, but the BMP message holds %d bytes", n, len(b))
	case b[18] != want:
		return 0, r.malformed(off+18, "BGP message type %d (want %d)", b[18], want)
	}
	return n, nil
}

// openCaps parses the BGP OPEN at msg[off:] and returns its capabilities
// and length.
func (r *Router) openCaps(msg []byte, off int) (caps, int, error) {
	var c caps
	n, err := r.checkBGP(msg, off, bgpOpen, false)
	if err != nil {
		return c, 0, err
	}
	o := msg[off+bgpHdrLen : off+n]
	at := off + bgpHdrLen
	if len(o) < 10 {
		return c, 0, r.malformed(at, "OPEN of %d bytes, too short", n)
	}
	optLen, p, ext := int(o[9]), 10, false
	if optLen == 255 && len(o) > 10 && o[10] == 255 { // RFC 9072 extended optional parameters
		if len(o) < 13 {
			return c, 0, r.malformed(at+10, "truncated extended optional parameters length")
		}
		optLen, p, ext = int(binary.BigEndian.Uint16(o[11:13])), 13, true
	}
	if p+optLen != len(o) {
		return c, 0, r.malformed(at+9, "OPEN optional parameters length %d, %d bytes follow", optLen, len(o)-p)
	}
	hl := pick(ext, 3, 2)
	for q := p; q < len(o); {
		if len(o)-q < hl {
			return c, 0, r.malformed(at+q, "truncated OPEN optional parameter")
		}
		ty, pl := o[q], int(o[q+1])
		if ext {
			pl = int(binary.BigEndian.Uint16(o[q+1 : q+3]))
		}
		if pl > len(o)-q-hl {
			return c, 0, r.malformed(at+q, "OPEN optional parameter length %d, %d bytes left", pl, len(o)-q-hl)
		}
		if ty == 2 {
			if err := r.capabilities(&c, o[q+hl:q+hl+pl], at+q+hl); err != nil {
				return c, 0, err
			}
		}
		q += hl + pl
	}
	return c, n, nil
}

func (r *Router) capabilities(c *caps, b []byte, at int) error {
	for q := 0; q < len(b); {
		if len(b)-q < 2 {
			return r.malformed(at+q, "truncated capability")
		}
		code, l := b[q], int(b[q+1])
		if l > len(b)-q-2 {
			return r.malformed(at+q, "capability %d length %d, %d bytes left", code, l, len(b)-q-2)
		}
		v := b[q+2 : q+2+l]
		switch code {
		case capExtMessage:
			c.extMsg = true
		case capAddPath, capMultiLabel:
			if l%4 != 0 {
				return r.malformed(at+q, "capability %d length %d is not a multiple of 4", code, l)
			}
			if code == capAddPath && !validAddPath(v) {
				break // RFC 7911 §4: not understood, ignored
			}
			for i := 0; i < l; i += 4 {
				e := famByte{Family{binary.BigEndian.Uint16(v[i:]), v[i+2]}, v[i+3]}
				if code == capAddPath {
					c.addPath = append(c.addPath, e)
				} else {
					c.multiLabel = append(c.multiLabel, e)
				}
			}
		}
		q += 2 + l
	}
	return nil
}

// peerUp keeps the Peer Up of a peer that came up (RFC 7854 §4.10). A Peer
// Up for a peer already up means its session restarted: the old one and its
// routes are dropped.
func (r *Router) peerUp(msg []byte) error {
	const fixed = bmp.HeaderLen + perPeerLen + 20 // local address, ports
	if len(msg) < fixed {
		return r.malformed(0, "bad length: %d bytes, too short for a Peer Up", len(msg))
	}
	ph := msg[bmp.HeaderLen : bmp.HeaderLen+perPeerLen]
	if ph[0] > peerLocRIB {
		return r.unkeyable("peer type %d", ph[0])
	}
	sent, n, err := r.openCaps(msg, fixed)
	if err != nil {
		return err
	}
	recv, m, err := r.openCaps(msg, fixed+n)
	if err != nil {
		return err
	}
	for q := fixed + n + m; q < len(msg); { // information TLVs
		if len(msg)-q < 4 {
			return r.malformed(q, "truncated information TLV")
		}
		if l := int(binary.BigEndian.Uint16(msg[q+2:])); l > len(msg)-q-4 {
			return r.malformed(q, "information TLV length %d, %d bytes left", l, len(msg)-q-4)
		} else {
			q += 4 + l
		}
	}
	k := pkey(ph[:keyLen])
	if old := r.peers[k]; old != nil {
		r.removePeer(old)
	}
	if v := r.views[k]; v != nil {
		return r.unkeyable("Peer Up for %s after its routes were kept under peer %s", headerOf(k), headerOf(v.peer.key))
	}
	p := &peer{key: k, sent: sent, recv: recv, bytes: int64(len(msg)) + peerOverhead}
	if err := r.charge(p.bytes); err != nil {
		return err
	}
	p.up = append([]byte(nil), msg...)
	r.peers[k] = p
	r.order = append(r.order, p)
	return nil
}

// peerDown removes a peer and its routes (RFC 7854 §4.9).
func (r *Router) peerDown(msg []byte) error {
	if len(msg) < bmp.HeaderLen+perPeerLen+1 {
		return r.malformed(0, "bad length: %d bytes, too short for a Peer Down", len(msg))
	}
	k := pkey(msg[bmp.HeaderLen : bmp.HeaderLen+keyLen])
	if p := r.findPeer(k); p != nil {
		r.removePeer(p)
	}
	return nil
}

// viewMask is the flags that name a RIB of a peer rather than the peer:
// post-policy, legacy AS_PATH, Adj-RIB-Out. Peer Up and Peer Down usually
// carry them clear (RFC 8671 §5) while Route Monitoring sets them.
const viewMask = flagL | flagA | flagO

func masked(k pkey) pkey {
	if k[0] < peerLocRIB {
		k[1] &^= viewMask
	}
	return k
}

// findPeer returns the peer whose Peer Up header is k or, failing that, the
// first peer up whose header equals k without the view flags.
func (r *Router) findPeer(k pkey) *peer {
	if p := r.peers[k]; p != nil {
		return p
	}
	m := masked(k)
	for _, p := range r.order {
		if masked(p.key) == m {
			return p
		}
	}
	return nil
}

func (r *Router) removePeer(p *peer) {
	for _, v := range p.views {
		delete(r.views, v.key)
		for _, t := range v.tables {
			r.dropTable(t)
		}
		r.uncharge(viewOverhead)
	}
	delete(r.peers, p.key)
	r.order = slices.DeleteFunc(r.order, func(q *peer) bool { return q == p })
	r.uncharge(p.bytes)
	r.last = nil
}

func (r *Router) dropTable(t *table) {
	t.rt.release(r)
	n := t.rt.bytes() + tableOverhead
	if t.frozen {
		t.dead = true
		r.retired += n
		return
	}
	r.uncharge(n)
}

// viewOf returns the view of per-peer header k (nil if it has no table
// yet) and its peer, or an error if no peer it belongs to is up.
func (r *Router) viewOf(k pkey) (*view, *peer, error) {
	if v := r.last; v != nil && v.key == k {
		return v, v.peer, nil
	}
	if v := r.views[k]; v != nil {
		r.last = v
		return v, v.peer, nil
	}
	if p := r.findPeer(k); p != nil {
		return nil, p, nil
	}
	return nil, nil, r.unkeyable("routes for %s, which is not up", headerOf(k))
}

// isOut reports whether k names an Adj-RIB-Out (RFC 8671).
func isOut(k pkey) bool { return k[0] < peerLocRIB && k[1]&flagO != 0 }

// tableOf returns the table of family f in the view of k, making the view
// and the table if create; nil if absent and not create.
func (r *Router) tableOf(v **view, p *peer, k pkey, f Family, create bool) (*table, error) {
	if *v != nil {
		for _, t := range (*v).tables {
			if t.fam == f {
				return t, nil
			}
		}
	}
	if !create {
		return nil, nil
	}
	if *v == nil {
		if err := r.charge(viewOverhead); err != nil {
			return nil, err
		}
		nv := &view{key: k, peer: p, out: isOut(k)}
		r.views[k] = nv
		p.views = append(p.views, nv)
		*v, r.last = nv, nv
	}
	if err := r.charge(tableOverhead); err != nil {
		return nil, err
	}
	t := newTable(f, p.addPath(f, (*v).out), p.multiLabel(f))
	(*v).tables = append((*v).tables, t)
	return t, nil
}

func newTable(f Family, addPath, multi bool) *table {
	t := &table{fam: f, kind: kindOf(f), addPath: addPath, multiLabel: multi}
	lab := t.kind.labeled()
	switch t.kind {
	case kindV4, kindL4:
		t.rt = pick[rtab](addPath, newRibT[k4p](lab), newRibT[k4](lab))
	case kindV6, kindL6:
		t.rt = pick[rtab](addPath, newRibT[k6p](lab), newRibT[k6](lab))
	case kindVPN4:
		t.rt = newRibT[kv4](lab)
	case kindVPN6:
		t.rt = newRibT[kv6](lab)
	}
	return t
}

// PeerHeader is a per-peer header without its timestamp: a peer's RIB as
// BMP names it.
type PeerHeader struct {
	Type          uint8  // 0 global, 1 RD instance, 2 local instance, 3 Loc-RIB
	Flags         uint8  // V, L, A, O (RFC 7854, 8671); F for Loc-RIB (RFC 9069)
	Distinguisher uint64 // route distinguisher or instance id
	Address       netip.Addr
	AS            uint32
	BGPID         netip.Addr
}

func headerOf(k pkey) PeerHeader {
	h := PeerHeader{
		Type:          k[0],
		Flags:         k[1],
		Distinguisher: binary.BigEndian.Uint64(k[2:10]),
		AS:            binary.BigEndian.Uint32(k[26:30]),
		BGPID:         netip.AddrFrom4([4]byte(k[30:34])),
	}
	if k[0] < peerLocRIB && k[1]&flagV != 0 {
		h.Address = netip.AddrFrom16([16]byte(k[10:26]))
	} else {
		h.Address = netip.AddrFrom4([4]byte(k[22:26]))
	}
	return h
}

// String describes h: "198.51.100.1 AS65001 id 203.0.113.1 post-policy".
func (h PeerHeader) String() string {
	var b strings.Builder
	if h.Type == peerLocRIB {
		b.WriteString("Loc-RIB")
	} else {
		b.WriteString(h.Address.String())
	}
	fmt.Fprintf(&b, " AS%d id %s", h.AS, h.BGPID)
	if h.Type == 1 || h.Type == 2 || (h.Type == peerLocRIB && h.Distinguisher != 0) {
		fmt.Fprintf(&b, " rd %d:%d", h.Distinguisher>>32, h.Distinguisher&0xffffffff)
	}
	if h.Type < peerLocRIB {
		if h.Flags&flagO != 0 {
			b.WriteString(" adj-rib-out")
		}
		if h.Flags&flagL != 0 {
			b.WriteString(" post-policy")
		} else {
			b.WriteString(" pre-policy")
		}
	} else if h.Flags&0x80 != 0 {
		b.WriteString(" filtered")
	}
	return b.String()
}
