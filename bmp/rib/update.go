package rib

import (
	"encoding/binary"

	"github.com/bmpproxy/bmpproxy/bmp"
)

// Intern key tags: the first byte of an interned attribute set says how its
// routes are announced.
const (
	tagNLRI    = 0 // in the UPDATE's NLRI field (IPv4 unicast); the rest is the path attributes
	tagMPReach = 1 // in MP_REACH_NLRI; then next hop length, next hop, path attributes
)

// routeMonitoring applies one Route Monitoring message (RFC 7854 §4.6): a
// per-peer header and one BGP UPDATE. Withdrawals (withdrawn routes, then
// MP_UNREACH_NLRI) apply before announcements (MP_REACH_NLRI, then NLRI),
// so a prefix both withdrawn and announced ends up announced.
func (r *Router) routeMonitoring(msg []byte) error {
	const bgpAt = bmp.HeaderLen + perPeerLen
	if len(msg) < bgpAt {
		return r.malformed(0, "bad length: %d bytes, too short for a per-peer header", len(msg))
	}
	k := pkey(msg[bmp.HeaderLen : bmp.HeaderLen+keyLen])
	if _, err := r.checkBGP(msg, bgpAt, bgpUpdate, true); err != nil {
		return err
	}
	v, p, err := r.viewOf(k)
	if err != nil {
		return err
	}
	const at = bgpAt + bgpHdrLen
	body := msg[at:]
	if len(body) < 4 {
		return r.malformed(at, "UPDATE of %d bytes, too short", len(body)+bgpHdrLen)
	}
	wl := int(binary.BigEndian.Uint16(body))
	if wl > len(body)-4 {
		return r.malformed(at, "withdrawn routes length %d, %d bytes left", wl, len(body)-4)
	}
	withdrawn := body[2 : 2+wl]
	al := int(binary.BigEndian.Uint16(body[2+wl:]))
	aAt := 4 + wl
	if al > len(body)-aAt {
		return r.malformed(at+2+wl, "path attributes length %d, %d bytes left", al, len(body)-aAt)
	}
	attrs := body[aAt : aAt+al]
	announced := body[aAt+al:]

	// Find MP_REACH_NLRI and MP_UNREACH_NLRI; the other attributes are
	// kept as they are.
	var reach, unreach []byte
	var reachAt, unreachAt int
	var spans [2][2]int
	nspan := 0
	for off := 0; off < len(attrs); {
		hl := pick(attrs[off]&attrExtLen != 0, 4, 3)
		if len(attrs)-off < hl {
			return r.malformed(at+aAt+off, "truncated attribute: %d bytes left for a %d-byte attribute header", len(attrs)-off, hl)
		}
		typ := attrs[off+1]
		n := int(attrs[off+2])
		if hl == 4 {
			n = int(binary.BigEndian.Uint16(attrs[off+2:]))
		}
		if n > len(attrs)-off-hl {
			return r.malformed(at+aAt+off, "truncated attribute: type %d claims %d bytes, %d left", typ, n, len(attrs)-off-hl)
		}
		val := attrs[off+hl : off+hl+n]
		if typ == attrMPReach || typ == attrMPUnrch {
			if (typ == attrMPReach && reach != nil) || (typ == attrMPUnrch && unreach != nil) {
				return r.malformed(at+aAt+off, "attribute type %d repeated", typ)
			}
			if typ == attrMPReach {
				reach, reachAt = val, at+aAt+off+hl
			} else {
				unreach, unreachAt = val, at+aAt+off+hl
			}
			spans[nspan] = [2]int{off, off + hl + n}
			nspan++
		}
		off += hl + n
	}
	kept := attrs
	if nspan > 0 {
		r.sbuf = r.sbuf[:0]
		prev := 0
		for _, s := range spans[:nspan] {
			r.sbuf = append(r.sbuf, attrs[prev:s[0]]...)
			prev = s[1]
		}
		kept = append(r.sbuf, attrs[prev:]...)
		r.sbuf = kept
	}

	if wl > 0 {
		if err := r.withdraw(&v, p, k, ipv4Unicast, withdrawn, at+2); err != nil {
			return err
		}
	}
	if unreach != nil {
		if len(unreach) < 3 {
			return r.malformed(unreachAt, "MP_UNREACH_NLRI of %d bytes, too short", len(unreach))
		}
		f := Family{binary.BigEndian.Uint16(unreach), unreach[2]}
		w := unreach[3:]
		switch {
		case kindOf(f) == kindNone:
			if len(w) > 0 {
				return r.unkeyable("%s routes", f)
			}
			// End-of-RIB of a family that is not kept: nothing to do.
		case len(w) == 0: // End-of-RIB (RFC 4724 §2)
			if _, err := r.tableOf(&v, p, k, f, true); err != nil {
				return err
			}
		default:
			if err := r.withdraw(&v, p, k, f, w, unreachAt+3); err != nil {
				return err
			}
		}
	}
	if reach != nil {
		if len(reach) < 5 {
			return r.malformed(reachAt, "MP_REACH_NLRI of %d bytes, too short", len(reach))
		}
		f := Family{binary.BigEndian.Uint16(reach), reach[2]}
		nhl := int(reach[3])
		if nhl > len(reach)-5 {
			return r.malformed(reachAt+3, "next hop length %d, %d bytes left", nhl, len(reach)-5)
		}
		w := reach[5+nhl:]
		switch {
		case len(w) == 0:
		case kindOf(f) == kindNone:
			return r.unkeyable("%s routes", f)
		default:
			r.kbuf = append(append(append(r.kbuf[:0], tagMPReach), reach[3:4+nhl]...), kept...)
			if err := r.announce(&v, p, k, f, w, reachAt+5+nhl); err != nil {
				return err
			}
		}
	}
	if len(announced) > 0 {
		r.kbuf = append(append(r.kbuf[:0], tagNLRI), kept...)
		if err := r.announce(&v, p, k, ipv4Unicast, announced, at+aAt+al); err != nil {
			return err
		}
	}
	if wl == 0 && al == 0 && len(announced) == 0 { // IPv4 unicast End-of-RIB
		if _, err := r.tableOf(&v, p, k, ipv4Unicast, true); err != nil {
			return err
		}
	}
	return nil
}

// announce inserts the NLRI of b into family f's table with the attribute
// set in r.kbuf.
func (r *Router) announce(v **view, p *peer, k pkey, f Family, b []byte, at int) error {
	t, err := r.tableOf(v, p, k, f, true)
	if err != nil {
		return err
	}
	attr, err := r.attrs.lookup(r, r.kbuf)
	if err != nil {
		return err
	}
	err = t.rt.announce(r, t, b, attr, at)
	r.attrs.settle(r, attr)
	return err
}

// withdraw removes the NLRI of b from family f's table; with no such table
// it only checks them.
func (r *Router) withdraw(v **view, p *peer, k pkey, f Family, b []byte, at int) error {
	t, err := r.tableOf(v, p, k, f, false)
	if err != nil {
		return err
	}
	if t != nil {
		return t.rt.withdraw(r, t, b, at)
	}
	kd := kindOf(f)
	out := isOut(k)
	ap, ml := p.addPath(f, out), p.multiLabel(f)
	for off := 0; off < len(b); {
		n, why := parseNLRI(b[off:], kd, ap, true, ml, &r.scratch)
		if why != "" {
			return r.malformed(at+off, "%s withdrawn NLRI: %s", f, why)
		}
		off += n
	}
	return nil
}
