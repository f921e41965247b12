package bmpcheck

import (
	"fmt"
	"net/netip"
)

// BGP message types and limits (RFC 4271 4.1, RFC 8654).
const (
	bgpOpen       uint8 = 1
	bgpUpdate     uint8 = 2
	bgpHeaderSize       = 19
	bgpMaxSize          = 4096
	bgpMaxExtSize       = 65535
)

// Capability codes and ADD-PATH Send/Receive bits (RFC 5492, 7911, 8277,
// 8654).
const (
	capMultiprotocol   uint8 = 1
	capExtendedMessage uint8 = 6
	capMultipleLabels  uint8 = 8
	capFourOctetAS     uint8 = 65
	capAddPath         uint8 = 69

	addPathReceive uint8 = 1
	addPathSend    uint8 = 2
)

// readBGP reads one BGP message: it checks the marker and length and
// returns the message's type, its whole bytes, and a cursor on its body.
func readBGP(c *cursor, what string) (uint8, []byte, *cursor, error) {
	start := c.pos
	if err := c.need(bgpHeaderSize, what+" header"); err != nil {
		return 0, nil, nil, err
	}
	marker, _ := c.bytes(16, "")
	for _, b := range marker {
		if b != 0xff {
			c.pos = start
			return 0, nil, nil, c.errorf("%s has a bad marker %x", what, marker)
		}
	}
	length, _ := c.u16("")
	typ, _ := c.u8("")
	if length < bgpHeaderSize {
		return 0, nil, nil, c.errorf("%s length %d is shorter than its header", what, length)
	}
	body, err := c.sub(int(length)-bgpHeaderSize, fmt.Sprintf("%s of length %d", what, length))
	if err != nil {
		return 0, nil, nil, err
	}
	return typ, c.b[start:c.pos], body, nil
}

// openInfo is what an OPEN says about the session.
type openInfo struct {
	addPath    map[Family]uint8 // the Send/Receive bits per family
	multiLabel map[Family]bool
	extended   bool
}

// decodeOpen reads an OPEN's body for the capabilities a state needs.
func decodeOpen(c *cursor) (openInfo, error) {
	info := openInfo{addPath: map[Family]uint8{}, multiLabel: map[Family]bool{}}
	if err := c.need(10, "OPEN"); err != nil {
		return info, err
	}
	c.bytes(9, "") // version, My AS, Hold Time, BGP Identifier
	optLen, _ := c.u8("")
	wide := false // RFC 9072: 2-byte parameter lengths
	paramsLen := int(optLen)
	if optLen == 255 && c.left() > 0 && c.b[c.pos] == 255 {
		c.u8("")
		n, err := c.u16("extended optional parameters length")
		if err != nil {
			return info, err
		}
		paramsLen, wide = int(n), true
	}
	params, err := c.sub(paramsLen, "optional parameters")
	if err != nil {
		return info, err
	}
	if !c.empty() {
		return info, c.errorf("%d bytes after the OPEN's optional parameters", c.left())
	}
	c = params
	for !c.empty() {
		typ, err := c.u8("optional parameter type")
		if err != nil {
			return info, err
		}
		var n uint16
		if wide {
			n, err = c.u16("optional parameter length")
		} else {
			var n8 uint8
			n8, err = c.u8("optional parameter length")
			n = uint16(n8)
		}
		if err != nil {
			return info, err
		}
		param, err := c.sub(int(n), "optional parameter")
		if err != nil {
			return info, err
		}
		if typ == 2 {
			if err := decodeCapabilities(param, &info); err != nil {
				return info, err
			}
		}
	}
	return info, nil
}

func decodeCapabilities(c *cursor, info *openInfo) error {
	for !c.empty() {
		code, _ := c.u8("capability code")
		n, err := c.u8("capability length")
		if err != nil {
			return err
		}
		v, err := c.sub(int(n), "capability")
		if err != nil {
			return err
		}
		switch code {
		case capExtendedMessage:
			info.extended = true
		case capAddPath, capMultipleLabels:
			if n%4 != 0 {
				return v.errorf("capability %d length %d is not a multiple of 4", code, n)
			}
			if code == capAddPath && !validAddPath(v.b) {
				continue // RFC 7911 4: not understood, ignored
			}
			for !v.empty() {
				afi, _ := v.u16("")
				safi, _ := v.u8("")
				last, _ := v.u8("")
				if code == capAddPath {
					info.addPath[FamilyOf(afi, safi)] = last
				} else {
					info.multiLabel[FamilyOf(afi, safi)] = true
				}
			}
		}
	}
	return nil
}

// validAddPath reports whether every Send/Receive value of an ADD-PATH
// capability is 1, 2 or 3; RFC 7911 4 says a capability with any other
// value is treated as not understood and ignored.
func validAddPath(v []byte) bool {
	for i := 3; i < len(v); i += 4 {
		if v[i] < addPathReceive || v[i] > addPathReceive|addPathSend {
			return false
		}
	}
	return true
}

// session is what a peer's two OPENs mean for its Route Monitoring.
type session struct {
	addPath    map[Family]bool
	multiLabel map[Family]bool
	maxUpdate  int
}

// newSession applies the package doc's rules: who sends the routes of the
// peer's RIB, and whether the receiver agreed.
func newSession(key PeerKey, sent, received openInfo) session {
	s := session{addPath: map[Family]bool{}, multiLabel: map[Family]bool{}, maxUpdate: bgpMaxSize}
	if key.Type == PeerLocRIB {
		for f := range sent.addPath {
			s.addPath[f] = true
		}
		for f := range sent.multiLabel {
			s.multiLabel[f] = true
		}
		if sent.extended {
			s.maxUpdate = bgpMaxExtSize
		}
		return s
	}
	sender, receiver := received, sent // Adj-RIB-In: the peer sends
	if key.Flags&FlagO != 0 {
		sender, receiver = sent, received
	}
	for f, mode := range sender.addPath {
		if mode&addPathSend != 0 && receiver.addPath[f]&addPathReceive != 0 {
			s.addPath[f] = true
		}
	}
	for f := range sender.multiLabel {
		if receiver.multiLabel[f] {
			s.multiLabel[f] = true
		}
	}
	if sent.extended && received.extended {
		s.maxUpdate = bgpMaxExtSize
	}
	return s
}

// change is one route an UPDATE withdraws or announces.
type change struct {
	family Family
	key    RouteKey
	route  Route
	offset int // of its NLRI, for errors
}

// update is what an UPDATE does to a peer; decoding it changes nothing.
type update struct {
	withdraw []change // the Withdrawn Routes field, then MP_UNREACH_NLRI
	announce []change // MP_REACH_NLRI, then the NLRI field
	endOfRIB []Family
	unkeyed  []Family
}

type rawAttr struct {
	flags uint8
	typ   uint8
	value *cursor
}

// decodeUpdate reads an UPDATE's body. intern makes attribute and label
// strings that equal ones already held share their memory.
func decodeUpdate(c *cursor, sess session, intern func(string) string) (*update, error) {
	wlen, err := c.u16("withdrawn routes length")
	if err != nil {
		return nil, err
	}
	withdrawn, err := c.sub(int(wlen), "withdrawn routes")
	if err != nil {
		return nil, err
	}
	alen, err := c.u16("path attributes length")
	if err != nil {
		return nil, err
	}
	attrArea, err := c.sub(int(alen), "path attributes")
	if err != nil {
		return nil, err
	}
	nlriField := c.rest()
	attrs, err := decodeAttrs(attrArea)
	if err != nil {
		return nil, err
	}
	u := &update{}
	if wlen == 0 && alen == 0 && nlriField.empty() {
		u.endOfRIB = append(u.endOfRIB, IPv4Unicast)
		return u, nil
	}

	if u.withdraw, err = decodeNLRI(withdrawn, IPv4Unicast, sess, true, Route{}, intern); err != nil {
		return nil, err
	}
	var reach, unreach *cursor
	for _, a := range attrs {
		switch a.typ {
		case attrMPReach:
			reach = a.value
		case attrMPUnreach:
			unreach = a.value
		}
	}
	if unreach != nil {
		f, err := mpFamily(unreach, "MP_UNREACH_NLRI")
		if err != nil {
			return nil, err
		}
		switch {
		case unreach.empty() && len(attrs) == 1 && wlen == 0 && nlriField.empty():
			u.endOfRIB = append(u.endOfRIB, f)
		case !f.Keyed():
			if !unreach.empty() {
				u.unkeyed = append(u.unkeyed, f)
			}
		default:
			ws, err := decodeNLRI(unreach, f, sess, true, Route{}, intern)
			if err != nil {
				return nil, err
			}
			u.withdraw = append(u.withdraw, ws...)
		}
	}
	if reach != nil {
		f, err := mpFamily(reach, "MP_REACH_NLRI")
		if err != nil {
			return nil, err
		}
		nhLen, err := reach.u8("MP_REACH_NLRI next hop length")
		if err != nil {
			return nil, err
		}
		nextHop, err := reach.bytes(int(nhLen), "MP_REACH_NLRI next hop")
		if err != nil {
			return nil, err
		}
		if _, err := reach.u8("MP_REACH_NLRI reserved byte"); err != nil {
			return nil, err
		}
		switch {
		case !f.Keyed():
			if !reach.empty() {
				u.unkeyed = append(u.unkeyed, f)
			}
		default:
			base := Route{Attrs: Attrs(intern(string(canonicalAttrs(attrs, nextHop))))}
			as, err := decodeNLRI(reach, f, sess, false, base, intern)
			if err != nil {
				return nil, err
			}
			u.announce = append(u.announce, as...)
		}
	}
	if !nlriField.empty() {
		base := Route{Attrs: Attrs(intern(string(canonicalAttrs(attrs, nil))))}
		as, err := decodeNLRI(nlriField, IPv4Unicast, sess, false, base, intern)
		if err != nil {
			return nil, err
		}
		u.announce = append(u.announce, as...)
	}
	return u, nil
}

func mpFamily(c *cursor, what string) (Family, error) {
	afi, err := c.u16(what + " AFI")
	if err != nil {
		return 0, err
	}
	safi, err := c.u8(what + " SAFI")
	if err != nil {
		return 0, err
	}
	return FamilyOf(afi, safi), nil
}

// decodeAttrs reads the path attributes: the first of each type (RFC 7606
// 3g); a second MP_REACH_NLRI or MP_UNREACH_NLRI is an error.
func decodeAttrs(c *cursor) ([]rawAttr, error) {
	var out []rawAttr
	var seen [256]bool
	for !c.empty() {
		start := c.offset()
		flags, _ := c.u8("")
		typ, err := c.u8("attribute type")
		if err != nil {
			return nil, err
		}
		var n int
		if flags&attrExtLen != 0 {
			v, err := c.u16(fmt.Sprintf("attribute %d length", typ))
			if err != nil {
				return nil, err
			}
			n = int(v)
		} else {
			v, err := c.u8(fmt.Sprintf("attribute %d length", typ))
			if err != nil {
				return nil, err
			}
			n = int(v)
		}
		value, err := c.sub(n, fmt.Sprintf("attribute %d (at offset %d)", typ, start))
		if err != nil {
			return nil, err
		}
		if seen[typ] {
			if typ == attrMPReach || typ == attrMPUnreach {
				return nil, &fault{offset: start, reason: fmt.Sprintf("a second attribute %d", typ)}
			}
			continue
		}
		seen[typ] = true
		out = append(out, rawAttr{flags: flags, typ: typ, value: value})
	}
	return out, nil
}

// canonicalAttrs is the Attrs of a route: for one in MP_REACH_NLRI (nextHop
// not nil), MP_REACH_NLRI reduced to nextHop and NEXT_HOP dropped; for one in
// the NLRI field, MP_REACH_NLRI dropped; MP_UNREACH_NLRI dropped from both.
func canonicalAttrs(attrs []rawAttr, nextHop []byte) Attrs {
	list := make([]Attr, 0, len(attrs))
	for _, a := range attrs {
		switch {
		case a.typ == attrMPUnreach:
		case a.typ == attrMPReach && nextHop != nil:
			list = append(list, Attr{Flags: a.flags, Type: a.typ, Value: string(nextHop)})
		case a.typ == attrMPReach:
		case a.typ == attrNextHop && nextHop != nil:
		default:
			list = append(list, Attr{Flags: a.flags, Type: a.typ, Value: string(a.value.b)})
		}
	}
	return MakeAttrs(list)
}

// decodeNLRI reads the NLRI of f in c to its end (RFC 4271 4.3, 4760 5,
// 7911 3, 8277 2, 4364 4.3.4, 4659 3.2). Each announced route gets base's
// attributes and its own labels; a withdrawn one's label field is RFC
// 8277's 3-byte compatibility field, whatever its value.
func decodeNLRI(c *cursor, f Family, sess session, withdraw bool, base Route, intern func(string) string) ([]change, error) {
	var out []change
	addPath := sess.addPath[f]
	for !c.empty() {
		ch := change{family: f, route: base, offset: c.offset()}
		if addPath {
			if c.left() < 4 {
				return nil, c.errorf("%s path identifier needs 4 bytes, %d left", f, c.left())
			}
			ch.key.PathID, _ = c.u32("")
		}
		// The error texts are made only on failure: this is the hot path.
		if c.empty() {
			return nil, c.errorf("%s prefix length needs 1 bytes, 0 left", f)
		}
		bits8, _ := c.u8("")
		bits := int(bits8)
		if (bits+7)/8 > c.left() {
			return nil, c.errorf("%s prefix of length %d needs %d bytes, %d left", f, bits, (bits+7)/8, c.left())
		}
		body, _ := c.sub((bits+7)/8, "")
		if f.labeled() {
			labels, err := readLabels(body, &bits, withdraw, sess.multiLabel[f])
			if err != nil {
				return nil, err
			}
			if !withdraw {
				ch.route.Labels = Labels(intern(string(labels)))
			}
		}
		if f.vpn() {
			if bits < 64 {
				return nil, body.errorf("%s prefix length leaves %d bits for a route distinguisher", f, bits)
			}
			rd, _ := body.bytes(8, "")
			ch.key.RD = RD(rd)
			bits -= 64
		}
		if bits > f.addrBits() {
			return nil, body.errorf("%s prefix length %d is longer than %d bits", f, bits, f.addrBits())
		}
		var addr [16]byte
		copy(addr[:], body.b[body.pos:])
		a := netip.AddrFrom16(addr)
		if f.AFI() == 1 {
			a = netip.AddrFrom4([4]byte(addr[:4]))
		}
		ch.key.Prefix = netip.PrefixFrom(a, bits).Masked()
		out = append(out, ch)
	}
	return out, nil
}

// readLabels reads a label stack (or a withdrawal's compatibility field) off
// the front of a labeled prefix, taking its bits from *bits.
func readLabels(c *cursor, bits *int, withdraw, multi bool) ([]byte, error) {
	start := c.pos
	for {
		if *bits < 24 {
			return nil, c.errorf("prefix length leaves %d bits for a label", *bits)
		}
		entry, _ := c.bytes(3, "")
		*bits -= 24
		if withdraw || !multi || entry[2]&1 != 0 {
			break
		}
	}
	labels := append([]byte(nil), c.b[start:c.pos]...)
	if !multi {
		labels[2] |= 1 // RFC 8277 2.2: the S bit is ignored on receipt
	}
	return labels, nil
}
